"""POPE evaluation of any registered family's model (LLaVA-1.5, Qwen-VL), with or without a post-decoder block.

    torchrun --nproc_per_node 8 eval/pope_eval_post.py --model-path runs/stage1/merged \\
        --pope_path POPE/output/coco --coco_path coco/val2014 --set all \\
        --answers-file runs/stage1/pope.jsonl --metrics-file runs/stage1/pope_metrics.json

Each image's prompt prefix is computed once and shared by all its questions across the sets they
are asked in (the three COCO sets share their 500 images); identical questions are answered once.
Ranks take every world_size-th image; rank 0 merges the answers and scores them.

Protocols: LLaVA's own (scripts/v1_5/eval/pope.sh) is `--conv-mode vicuna_v1` with the suffix
LLAVA_SUFFIX; HA-DPO's (ha_dpo/models/llava-v1_5/pope_eval.py) is `--conv-mode llava_v1` with none.
Without --conv-mode the model's own template is used (`family.default_conv_mode_for`: LLaVA-1.5: vicuna_v1;
Qwen-VL: its chat template; InstructBLIP: the question itself; MiniGPT-4: minigpt4_llama2, or minigpt4_vicuna0 for
the Vicuna version).
`--min_pixels` / `--max_pixels` reach a dynamic-resolution family's image processor (Qwen-VL's).
`--resume` continues only the answers of the same weights and settings (eval/answer_provenance.py).
"""

import argparse
import os
import sys
from collections import defaultdict

if __package__ in (None, ""):  # run as a file (installed, the command is post-decoder-pope): the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from tqdm import tqdm

from eval.answer_files import AnswerWriter, existing_paths, merge_answers, part_path, read_answers
from eval.answer_provenance import (
    AnswerSettings,
    check_same_settings,
    read_settings,
    weights_fingerprint,
    write_settings,
)
from eval.answering import LLAVA_MAX_NEW_TOKENS, PrefixCachedAnswerer
from eval.pope_questions import POPE_SETS, SET_ALIASES, pope_file, read_questions
from eval.pope_report import format_table, mean_f1, plot_chart, write_metrics
from eval.pope_scoring import score_answers
from eval.run_helpers import barrier, coco_path_hint, gather, refuse_unasked_resume, start_ranks
from post_decoder.builder import load_pretrained_model
from post_decoder.dtypes import DTYPES
from post_decoder.errors import InputError, run_command
from post_decoder.family import conv_modes
from post_decoder.images import open_image

LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
SET_CHOICES = ("random", "popular", "adv", "adversarial", "all")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="POPE evaluation with or without a post-decoder block.")
    parser.add_argument("--model-path", help="any folder or hub id that load_pretrained_model opens")
    parser.add_argument("--model-base", default=None, help="the base, when --model-path holds only a block")
    parser.add_argument(
        "--pope_path", "--pope-path", dest="pope_path", required=True, help="folder of coco_pope_*.json"
    )
    parser.add_argument("--set", default="all", choices=SET_CHOICES)
    parser.add_argument("--coco_path", "--coco-path", dest="coco_path", help="folder of the images the questions name")
    parser.add_argument(
        "--answers-file", action="append", required=True, metavar="[SET=]FILE",
        help="JSON-lines answers (written as they come). With --score-only it may be LLaVA's or HA-DPO's answer "
        "file, and may be given once per set as SET=FILE (their files do not name the set)",
    )  # fmt: skip
    parser.add_argument("--metrics-file", help="JSON with one entry per set (default: next to --answers-file)")
    parser.add_argument("--chart", help="PNG bar chart (default: next to --metrics-file)")
    parser.add_argument(
        "--conv-mode",
        choices=tuple(conv_modes()),
        default=None,
        help="the prompt template (default: the model family's own). LLaVA-1.5: vicuna_v1 (LLaVA's own POPE "
        "script, the default) or llava_v1 (HA-DPO's)",
    )
    for bound in ("min", "max"):
        parser.add_argument(
            f"--{bound}_pixels",
            f"--{bound}-pixels",
            dest=f"{bound}_pixels",
            type=int,
            default=None,
            help=f"Qwen-VL: the image processor's {bound}imum pixels per image (default: the model folder's)",
        )
    parser.add_argument("--prompt-suffix", default="", help=f"HA-DPO's protocol: empty; LLaVA's: {LLAVA_SUFFIX!r}")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=LLAVA_MAX_NEW_TOKENS,
        help="a row stops at </s> anyway; LLaVA's default (HA-DPO's: 512)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="questions continued at once from an image's prefix"
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="default: float16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--resume", action="store_true", help="keep the answers already in --answers-file")
    parser.add_argument(
        "--skip-missing", action="store_true", help="count and report missing images instead of stopping"
    )
    parser.add_argument("--score-only", action="store_true", help="score an existing --answers-file")
    args = parser.parse_args(argv)
    if not args.score_only and not (args.model_path and args.coco_path):
        parser.error("--model-path and --coco_path are needed unless --score-only")
    for flag in ("min_pixels", "max_pixels"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    args.answer_files = [_set_and_path(spec, args.score_only) for spec in args.answers_file]
    args.answers_file = args.answer_files[0][1]
    args.metrics_file = args.metrics_file or os.path.splitext(args.answers_file)[0] + "_metrics.json"
    args.chart = args.chart or os.path.splitext(args.metrics_file)[0] + ".png"
    return args


def _set_and_path(spec: str, score_only: bool) -> tuple[str | None, str]:
    """`FILE` or `SET=FILE` (the set of the file's answers that do not name theirs)."""
    name, separator, path = spec.partition("=")
    if not separator or name not in SET_CHOICES[:-1]:
        return None, spec
    if not score_only:
        raise InputError(
            f"--answers-file {spec}: SET=FILE is for --score-only; a run writes one file for all its sets"
        )
    return SET_ALIASES.get(name, name), path


def load_question_sets(pope_path: str, set_choice: str) -> dict[str, list[dict]]:
    return {name: read_questions(pope_file(pope_path, name)) for name in _set_names(set_choice)}


def _set_names(set_choice: str) -> tuple[str, ...]:
    return POPE_SETS if set_choice == "all" else (SET_ALIASES.get(set_choice, set_choice),)


def pending_by_image(question_sets, done) -> dict[str, list[tuple[str, dict]]]:
    """image -> [(set, question)] still to answer, in file order."""
    pending = defaultdict(list)
    for set_name, questions in question_sets.items():
        for question in questions:
            if (set_name, question["question_id"]) not in done:
                pending[question["image"]].append((set_name, question))
    return pending


def absent_images(question_sets, coco_path: str) -> list[str]:
    """The images the questions name that are not in `coco_path`: found before the model loads."""
    names = sorted({question["image"] for questions in question_sets.values() for question in questions})
    return [name for name in names if not os.path.isfile(os.path.join(coco_path, name))]


def image_error(args, question_sets, image_name: str, problem: str) -> InputError:
    set_name, question = next(
        (set_name, question) for set_name, questions in question_sets.items() for question in questions
        if question["image"] == image_name
    )  # fmt: skip
    return InputError(
        f"image {os.path.join(args.coco_path, image_name)} {problem} (question_id {question['question_id']} of "
        f"{pope_file(args.pope_path, set_name)} asks about it){coco_path_hint(args.coco_path)}; "
        "pass --skip-missing to count and skip such images"
    )


def answer_images(answerer, images, pending, args, writer, show_progress, question_sets) -> list[str]:
    """Answer every pending question of `images`; returns the images skipped as unreadable."""
    unreadable = []
    for image_name in tqdm(images, desc="POPE images", disable=not show_progress):
        try:
            image = open_image(os.path.join(args.coco_path, image_name))
        except (FileNotFoundError, ValueError) as error:  # gone since the start, or not an image
            if not args.skip_missing:
                cause = error.__cause__ or error  # open_image's own message repeats the path
                raise image_error(args, question_sets, image_name, f"cannot be read ({cause})") from None
            unreadable.append(image_name)
            continue
        entries = pending[image_name]
        texts = list(dict.fromkeys(question["text"] for _, question in entries))  # each distinct question once
        answers = dict(zip(texts, answerer.answer(image, texts)))
        for set_name, question in entries:
            writer.write(
                {
                    "set": set_name,
                    "question_id": question["question_id"],
                    "image": image_name,
                    "prompt": question["text"] + answerer.prompt_suffix,
                    "answer": answers[question["text"]],
                    "model_id": args.model_path,
                }
            )
    return unreadable


def score_sets(question_sets, answers, missing_images=(), pope_path=None) -> dict[str, dict]:
    """Metrics per set; each answer must answer its set's question of the same id."""
    results = {}
    for set_name, questions in question_sets.items():
        by_id = {question["question_id"]: question for question in questions}
        source = pope_file(pope_path, set_name) if pope_path else f"the {set_name} set"
        texts = {}
        for (name, question_id), line in answers.items():
            if name == set_name:
                check_answers_its_question(line, by_id.get(question_id), source)
                texts[question_id] = line.text
        kept = [question for question in questions if question["image"] not in missing_images]
        results[set_name] = score_answers(kept, texts).as_dict()
    return results


def check_answers_its_question(line, question: dict | None, source: str):
    """The answer's id is a question of `source`, and the question it recorded (if it did) starts
    with that question's text: answers to another question file under the same ids are caught."""
    if question is None:
        raise InputError(
            f"{line.where}: question_id {line.question_id!r} is not in {source}: is it another file's answer?"
        )
    if isinstance(line.asked, str) and not line.asked.startswith(question["text"]):
        raise InputError(
            f"{line.where}: question_id {line.question_id} answers {line.asked!r}, but question {line.question_id} of "
            f"{source} is {question['text']!r}: the file answers other questions (another numbering?)"
        )


def report(question_sets, answers, args, label, missing_images=()):
    missing_images = set(missing_images)
    metrics = score_sets(question_sets, answers, missing_images, args.pope_path)
    write_metrics(metrics, args.metrics_file)
    print(format_table({label: metrics}))
    if len(metrics) > 1:
        print(f"mean F1 over {len(metrics)} sets: {100 * mean_f1(metrics):.2f}")
    if missing_images:
        skipped = sum(q["image"] in missing_images for questions in question_sets.values() for q in questions)
        print(f"skipped {skipped} questions about {len(missing_images)} missing images")
    plot_chart({label: metrics}, args.chart)
    print(f"metrics: {args.metrics_file}\nchart: {args.chart}")
    return metrics


def score_only(args, question_sets):
    default_set = None if args.set == "all" else _set_names(args.set)[0]
    answers = {}
    for set_name, path in args.answer_files:
        if not os.path.isfile(path):
            raise InputError(f"--answers-file {path}: no such file")
        answers.update(read_answers([path], set_name or default_set))
    recorded = read_settings(args.answers_file) or {}
    label = os.path.basename(os.path.normpath(recorded.get("model_path") or args.answers_file))
    return report(question_sets, answers, args, label)


def main(argv=None):
    args = parse_args(argv)
    question_sets = load_question_sets(args.pope_path, args.set)
    if args.score_only:
        return score_only(args, question_sets)
    if len(args.answer_files) > 1:
        raise InputError("--answers-file is given once when answering (several are for --score-only)")

    world_size, rank, device = start_ranks()
    # Before the model loads: a refusal should not take minutes.
    resuming = refuse_unasked_resume(args.answers_file, args.resume)
    missing = absent_images(question_sets, args.coco_path)
    if missing and not args.skip_missing:
        raise image_error(args, question_sets, missing[0], "is missing")

    dtype = DTYPES[args.dtype] if args.dtype else None
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        args.model_base,
        device=device,
        dtype=dtype,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )
    answerer = PrefixCachedAnswerer(
        model, tokenizer, image_processor, args.max_new_tokens, args.batch_size, args.prompt_suffix, args.conv_mode
    )
    if rank == 0:
        settings = AnswerSettings(
            weights=weights_fingerprint(model),
            dtype=str(model.dtype).removeprefix("torch."),
            conv_mode=answerer.conv_mode,
            prompt_suffix=args.prompt_suffix,
            max_new_tokens=args.max_new_tokens,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            model_path=args.model_path,
            model_base=args.model_base,
        )
        if resuming:
            check_same_settings(args.answers_file, settings)
            merge_answers(args.answers_file)  # one clean file (a torn last line dropped) before anyone appends
        write_settings(args.answers_file, settings)
    barrier(world_size)

    done = read_answers(existing_paths(args.answers_file)) if resuming else {}
    pending = pending_by_image(question_sets, done)
    my_images = sorted(set(pending) - set(missing))[rank::world_size]
    writer = AnswerWriter(part_path(args.answers_file, rank))
    try:
        unreadable = answer_images(answerer, my_images, pending, args, writer, rank == 0, question_sets)
    finally:
        writer.close()
    missing = missing + gather(unreadable, world_size)
    if rank == 0:
        answers = merge_answers(args.answers_file)
        metrics = report(question_sets, answers, args, os.path.basename(os.path.normpath(args.model_path)), missing)
    barrier(world_size)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return metrics if rank == 0 else None


def command():
    """The console command `post-decoder-pope`."""
    run_command(main)


if __name__ == "__main__":
    command()
