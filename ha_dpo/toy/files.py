"""Write the toy world in the real datasets' formats, so the real loaders and CLIs run on it.

    python -m ha_dpo.toy.files --out toy_world            # pope_data.json asks the committed base model
    python -m ha_dpo.toy.files --examples --out ha_dpo/toy/examples --overwrite   # the demo page's examples

--out must be a new or empty folder; `--overwrite` replaces a non-empty one whole (the new folder is
written beside it and renamed over it when complete). Folders and files follow the user's umask.

    toy_world/
      world.json                              the design (categories, pairs, probabilities) and its statistics
      coco/annotations/instances_{train,val}2014.json   COCO instances (pycocotools opens them)
      coco/annotations/captions_{train,val}2014.json    COCO captions, faithful
      coco/{train,val}2014/COCO_{split}2014_{id:012d}.jpg
      llava/toy_instruct.json                 LLaVA-format conversations on train2014 that carry the bias
      vg/image_data.json + vg/VG_100K/{id}.jpg           Visual Genome's layout, for the DPO images
      hadpo/desc_data.json, hadpo/pope_data.json         HA-DPO's preference data on the VG images
      pope/coco_pope_{random,popular,adversarial}.json   POPE on val2014, by eval/build_pope.py

Splits: `train` images teach the base model, `dpo` images (VG layout) carry the preference pairs,
`val` images are held out for POPE. HA-DPO's pairs are built from the ground truth here, not by
GPT-4: desc `chosen` is the faithful description; `rejected` names an absent partner of a present anchor
on as many images as it leaves out a partner seen next to its anchor on others (so a block that blindly
stops naming partners loses as many pairs as it wins), and names a random absent object on images
without an anchor. pope_data asks, per DPO image, about every object
("yes"), every absent partner and one other absent object ("no"); `chosen` is the true answer,
`reject` its opposite, `answer` the base model's greedy answer and `correct` whether that agrees
with the truth. The toy base model errs almost only by affirming absent partners, so the entries
with `correct: false` nearly all prefer "No": trained on those alone (HA-DPO's rule) a block learns
to say "No" to everything; `--pope_correct_pairs True` trains on every entry and keeps the "Yes" side.
"""

import argparse
import json
import os
import random
import time
from dataclasses import asdict

from tqdm import tqdm

from eval.build_pope import build_pope_sets, question_text, write_pope_sets
from post_decoder.atomic_files import atomic_directory, atomic_file
from post_decoder.errors import InputError, run_command

from . import DEFAULT_CHECKPOINT, DEFAULT_EXAMPLES
from .text import (
    faithful_description,
    hallucinated_description,
    no_answer,
    partner_hallucinations,
    partner_omissions,
    present_partners,
    training_conversation,
    yes_answer,
)
from .world import BY_NAME, CATEGORIES, PAIRS, WorldConfig, draw, generate_world

# VG's own url form; loaders keep its last two parts
VG_URL = "https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg"
COCO_SPLITS = {"train": "train2014", "val": "val2014"}
ALL_NAMES = [category.name for category in CATEGORIES]


def coco_file_name(image) -> str:
    return f"COCO_{COCO_SPLITS[image.split]}_{image.image_id:012d}.jpg"


def image_path(root: str, image) -> str:
    if image.split == "dpo":
        return os.path.join(root, "vg", "VG_100K", f"{image.image_id}.jpg")
    return os.path.join(root, "coco", COCO_SPLITS[image.split], coco_file_name(image))


def save_jpeg(picture, path: str):
    # 4:4:4 chroma keeps the small objects' colours; libjpeg is deterministic for the same input.
    picture.save(path, format="JPEG", quality=95, subsampling=0)


def coco_instances(images, size: int) -> dict:
    annotations = []
    for image in images:
        for item in image.objects:
            x, y, w, h = item.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image.image_id,
                    "category_id": BY_NAME[item.name].id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "post-decoder toy world", "version": "1.0"},
        "licenses": [],
        "images": [
            {"id": image.image_id, "file_name": coco_file_name(image), "width": size, "height": size}
            for image in images
        ],
        "annotations": annotations,
        "categories": [{"id": category.id, "name": category.name, "supercategory": "toy"} for category in CATEGORIES],
    }


def coco_captions(images, size: int) -> dict:
    return {
        "info": {"description": "post-decoder toy world: faithful captions", "version": "1.0"},
        "licenses": [],
        "images": [
            {"id": image.image_id, "file_name": coco_file_name(image), "width": size, "height": size}
            for image in images
        ],
        "annotations": [
            {"id": index + 1, "image_id": image.image_id, "caption": faithful_description(image)}
            for index, image in enumerate(images)
        ],
    }


def llava_conversations(images, config: WorldConfig, rng: random.Random) -> list[dict]:
    """LLaVA's instruction format: the image on the first human turn as "<image>\\n"."""
    records = []
    for image in images:
        turns = training_conversation(image, rng, config.partner_text_probability, ALL_NAMES)
        conversation = []
        for index, (question, answer) in enumerate(turns):
            conversation.append({"from": "human", "value": ("<image>\n" if index == 0 else "") + question})
            conversation.append({"from": "gpt", "value": answer})
        records.append({"id": str(image.image_id), "image": coco_file_name(image), "conversations": conversation})
    return records


def vg_image_data(images, size: int) -> list[dict]:
    return [
        {
            "image_id": image.image_id,
            "url": VG_URL.format(image_id=image.image_id),
            "width": size,
            "height": size,
            "coco_id": None,
            "flickr_id": None,
        }
        for image in images
    ]


def desc_data(images, rng: random.Random) -> dict:
    """HA-DPO's desc_data: VG image id -> the faithful description `chosen` and one `rejected` description,
    balanced around the co-occurrence: as many images reject a partner's hallucination (an absent partner
    of a present anchor named) as reject its omission (a partner seen next to its anchor left out), so a
    block that blindly stops naming partners loses as many pairs as it wins. Images that allow both kinds
    make up the difference; images that allow neither reject a random absent object named."""
    hallucinating = [image for image in images if image.absent_partners() and not present_partners(image)]
    omitting = [image for image in images if present_partners(image) and not image.absent_partners()]
    both = [image for image in images if image.absent_partners() and present_partners(image)]
    omissions_needed = min(max((len(hallucinating) + len(both) - len(omitting)) // 2, 0), len(both))
    omitting_ids = {image.image_id for image in omitting + rng.sample(both, omissions_needed)}
    entries = {}
    for image in images:
        if image.image_id in omitting_ids:
            rejected = rng.choice(partner_omissions(image))
        elif image.absent_partners():
            rejected = rng.choice(partner_hallucinations(image))
        else:
            rejected = hallucinated_description(image, rng, ALL_NAMES)
        entries[str(image.image_id)] = {"chosen": [faithful_description(image)], "rejected": [rejected]}
    return entries


def pope_data_questions(images, rng: random.Random) -> list[dict]:
    """Per DPO image: a "yes" question per object, a "no" per absent partner of a present anchor,
    and a "no" about one other absent object. `chosen` states the truth, `reject` its opposite."""
    entries = []
    for image in images:
        absent_partners = image.absent_partners()
        others = [name for name in ALL_NAMES if name not in image.names and name not in absent_partners]
        asked = [(name, True) for name in dict.fromkeys(image.names)]
        asked += [(name, False) for name in absent_partners] + [(rng.choice(others), False)]
        for name, present in asked:
            truth, opposite = (yes_answer(name), no_answer(name)) if present else (no_answer(name), yes_answer(name))
            entries.append(
                {
                    "image_id": image.image_id,
                    "question": question_text(name),
                    "truth": "yes" if present else "no",
                    "chosen": truth,
                    "reject": opposite,
                }
            )
    return entries


def label_with_model(entries: list[dict], image_paths: dict[int, str], model_path: str) -> list[dict]:
    """Ask the model each question (greedy, LLaVA-1.5's prompt) and keep HA-DPO's fields:
    `answer` is its answer, `correct` whether its yes/no agrees with the ground truth."""
    import torch

    from eval.answering import PrefixCachedAnswerer
    from eval.pope_scoring import parse_yes_no
    from post_decoder.builder import load_pretrained_model
    from post_decoder.images import open_image

    tokenizer, model, image_processor, _ = load_pretrained_model(model_path, device="cpu", dtype=torch.float32)
    answerer = PrefixCachedAnswerer(model, tokenizer, image_processor, max_new_tokens=16)
    by_image = {}
    for entry in entries:
        by_image.setdefault(entry["image_id"], []).append(entry)
    labelled = []
    # The slowest part of the world (a minute on one core): a bar shows it moving.
    for image_id, questions in tqdm(by_image.items(), desc="toy world: base model answers", unit="image"):
        answers = answerer.answer(open_image(image_paths[image_id]), [entry["question"] for entry in questions])
        for entry, answer in zip(questions, answers):
            labelled.append(
                {
                    "image_id": image_id,
                    "question": entry["question"],
                    "answer": answer,
                    "chosen": entry["chosen"],
                    "reject": entry["reject"],
                    "correct": parse_yes_no(answer) == entry["truth"],
                }
            )
    return labelled


def write_json(path: str, content):
    """Written whole to a temporary file, then renamed."""
    with atomic_file(path) as temporary, open(temporary, "w") as handle:
        json.dump(content, handle, indent=1)


def write_pope_data(root: str, images, model_path: str, seed: int) -> dict:
    """hadpo/pope_data.json for the DPO images, answered by the model at `model_path`."""
    dpo_images = [image for image in images if image.split == "dpo"]
    entries = pope_data_questions(dpo_images, random.Random(f"{seed}-pope-data"))
    labelled = label_with_model(entries, {image.image_id: image_path(root, image) for image in dpo_images}, model_path)
    write_json(os.path.join(root, "hadpo", "pope_data.json"), labelled)
    wrong = sum(not entry["correct"] for entry in labelled)
    return {"pope_data_questions": len(labelled), "pope_data_incorrect": wrong, "pope_data_model": model_path}


def world_statistics(images) -> dict:
    """Per pair, over the train images: P(partner | anchor) and P(anchor | partner)."""
    train = [set(image.names) for image in images if image.split == "train"]
    pairs = {}
    for anchor, partner in PAIRS.items():
        with_anchor = sum(anchor in names for names in train)
        with_partner = sum(partner in names for names in train)
        both = sum(anchor in names and partner in names for names in train)
        pairs[f"{anchor}->{partner}"] = {
            "p_partner_given_anchor": round(both / max(with_anchor, 1), 3),
            "p_anchor_given_partner": round(both / max(with_partner, 1), 3),
        }
    return {
        "pairs": pairs,
        "images": {split: sum(image.split == split for image in images) for split in ("train", "dpo", "val")},
    }


def write_world(
    out: str, config: WorldConfig = WorldConfig(), pope_images: int = 150, model_path: str | None = None
) -> dict:
    """Generate the world and write every file under `out` (replaced whole, atomically).
    `model_path`: the base model that answers pope_data's questions; None leaves pope_data out."""
    images = generate_world(config)
    rng = random.Random(f"{config.seed}-text")  # text draws apart from the images' stream
    with atomic_directory(out) as root:
        for image in tqdm(images, desc="toy world: drawing the images", unit="image"):
            path = image_path(root, image)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_jpeg(draw(image, config.image_size), path)
        for split, folder in COCO_SPLITS.items():
            chosen = [image for image in images if image.split == split]
            write_json(
                os.path.join(root, "coco", "annotations", f"instances_{folder}.json"),
                coco_instances(chosen, config.image_size),
            )
            write_json(
                os.path.join(root, "coco", "annotations", f"captions_{folder}.json"),
                coco_captions(chosen, config.image_size),
            )
        train = [image for image in images if image.split == "train"]
        write_json(os.path.join(root, "llava", "toy_instruct.json"), llava_conversations(train, config, rng))
        dpo = [image for image in images if image.split == "dpo"]
        write_json(os.path.join(root, "vg", "image_data.json"), vg_image_data(dpo, config.image_size))
        write_json(os.path.join(root, "hadpo", "desc_data.json"), desc_data(dpo, rng))
        sets = build_pope_sets(
            os.path.join(root, "coco", "annotations", "instances_val2014.json"), pope_images, config.seed
        )
        write_pope_sets(sets, os.path.join(root, "pope"))
        summary = {"config": asdict(config), "pope_images": pope_images, **world_statistics(images)}
        if model_path is not None:
            summary.update(write_pope_data(root, images, model_path, config.seed))
        write_json(os.path.join(root, "world.json"), summary)
    return summary


def write_examples(
    folder: str = DEFAULT_EXAMPLES, config: WorldConfig = WorldConfig(), count: int = 6
) -> dict[str, str]:
    """Demo examples from the held-out images: each shows an anchor without its partner and asks
    about the partner (what the base model affirms), with `questions.json` (file -> question)."""
    held_out = [image for image in generate_world(config) if image.split == "val" and image.absent_partners()]
    questions = {}
    with atomic_directory(folder) as root:
        for image in held_out[:count]:
            name = f"toy_{image.image_id}.jpg"
            save_jpeg(draw(image, config.image_size), os.path.join(root, name))
            questions[name] = question_text(image.absent_partners()[0])
        write_json(os.path.join(root, "questions.json"), questions)
    return questions


def check_output_folder(path: str, flag: str = "--out", overwrite: bool = False):
    """A new or empty folder; a non-empty one only with `overwrite` (it is then replaced whole), and
    never the current folder or one that holds it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path} is not a folder; name a new folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise InputError(
            f"{flag} {path} is not empty; name a new folder, or add --overwrite to replace it and all it holds"
        )
    target, here = os.path.realpath(path), os.path.realpath(os.getcwd())
    if os.path.isdir(path) and os.path.commonpath([target, here]) == target:
        raise InputError(f"{flag} {path} is the current folder or holds it; name a folder below it")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write the toy world (images, COCO, LLaVA, VG, HA-DPO and POPE files)."
    )
    parser.add_argument("--out", required=True, help="a new or empty folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it holds files (all of them are lost)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pope-images", type=int, default=150, help="held-out images asked about in each POPE set")
    parser.add_argument(
        "--base-model", default=DEFAULT_CHECKPOINT, help="the model whose answers mark pope_data's `correct`"
    )
    parser.add_argument("--no-pope-data", action="store_true", help="leave hadpo/pope_data.json out (no model is run)")
    parser.add_argument(
        "--examples", action="store_true", help="write only the demo's example images and questions to --out"
    )
    args = parser.parse_args(argv)
    check_output_folder(args.out, "--out", args.overwrite)
    if args.examples:
        print(json.dumps(write_examples(args.out, WorldConfig(seed=args.seed)), indent=1))
        return
    if not args.no_pope_data and not os.path.isfile(os.path.join(args.base_model, "config.json")):
        raise InputError(
            f"--base-model {args.base_model} holds no model (config.json); pass another or --no-pope-data"
        )
    start = time.perf_counter()
    summary = write_world(
        args.out, WorldConfig(seed=args.seed), args.pope_images, None if args.no_pope_data else args.base_model
    )
    print(json.dumps(summary["images"]), f"written to {args.out} in {time.perf_counter() - start:.1f} s")
    if "pope_data_questions" in summary:
        print(
            f"pope_data: the base model got {summary['pope_data_incorrect']} of "
            f"{summary['pope_data_questions']} questions wrong"
        )


if __name__ == "__main__":
    run_command(main, program="ha_dpo.toy.files")
