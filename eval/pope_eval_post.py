"""POPE evaluation of LLaVA-1.5, with or without a post-decoder block.

    torchrun --nproc_per_node 8 eval/pope_eval_post.py --model-path runs/stage1/merged \\
        --pope_path POPE/output/coco --coco_path coco/val2014 --set all \\
        --answers-file runs/stage1/pope.jsonl --metrics-file runs/stage1/pope_metrics.json

Each image's prompt prefix is computed once and shared by all its questions across the sets they
are asked in (the three COCO sets share their 500 images); identical questions are answered once.
Ranks take every world_size-th image; rank 0 merges the answers and scores them.
"""

import argparse
import os
import sys
from collections import defaultdict

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from tqdm import tqdm

from eval.answer_files import AnswerWriter, existing_paths, merge_answers, part_path, read_answers
from eval.answering import PrefixCachedAnswerer
from eval.pope_questions import POPE_SETS, SET_ALIASES, pope_file, read_questions
from eval.pope_report import format_table, mean_f1, plot_chart, write_metrics
from eval.pope_scoring import score_answers
from post_decoder.builder import load_pretrained_model
from post_decoder.image_processing import open_image

LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="POPE evaluation with or without a post-decoder block.")
    parser.add_argument("--model-path", help="any folder or hub id that load_pretrained_model opens")
    parser.add_argument("--model-base", default=None, help="the base, when --model-path holds only a block")
    parser.add_argument("--pope_path", "--pope-path", dest="pope_path", required=True, help="folder of coco_pope_*.json")
    parser.add_argument("--set", default="all", choices=("random", "popular", "adv", "adversarial", "all"))
    parser.add_argument("--coco_path", "--coco-path", dest="coco_path", help="folder of the images the questions name")
    parser.add_argument("--answers-file", required=True, help="JSON-lines answers (written as they come)")
    parser.add_argument("--metrics-file", help="JSON with one entry per set (default: next to --answers-file)")
    parser.add_argument("--chart", help="PNG bar chart (default: next to --metrics-file)")
    parser.add_argument("--prompt-suffix", default="", help=f"HA-DPO's protocol: empty; LLaVA's: {LLAVA_SUFFIX!r}")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="questions continued at once from an image's prefix")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--resume", action="store_true", help="keep the answers already in --answers-file")
    parser.add_argument("--skip-missing", action="store_true", help="count and report missing images instead of stopping")
    parser.add_argument("--score-only", action="store_true", help="score an existing --answers-file")
    args = parser.parse_args(argv)
    if not args.score_only and not (args.model_path and args.coco_path):
        parser.error("--model-path and --coco_path are needed unless --score-only")
    args.metrics_file = args.metrics_file or os.path.splitext(args.answers_file)[0] + "_metrics.json"
    args.chart = args.chart or os.path.splitext(args.metrics_file)[0] + ".png"
    return args


def load_question_sets(pope_path: str, set_choice: str) -> dict[str, list[dict]]:
    names = POPE_SETS if set_choice == "all" else (SET_ALIASES.get(set_choice, set_choice),)
    return {name: read_questions(pope_file(pope_path, name)) for name in names}


def pending_by_image(question_sets, done) -> dict[str, list[tuple[str, dict]]]:
    """image -> [(set, question)] still to answer, in file order."""
    pending = defaultdict(list)
    for set_name, questions in question_sets.items():
        for question in questions:
            if (set_name, question["question_id"]) not in done:
                pending[question["image"]].append((set_name, question))
    return pending


def answer_images(answerer, images, pending, coco_path, writer, model_id, skip_missing, show_progress) -> list[str]:
    """Answer every pending question of `images`; returns the images skipped as missing."""
    missing = []
    for image_name in tqdm(images, desc="POPE images", disable=not show_progress):
        path = os.path.join(coco_path, image_name)
        try:
            image = open_image(path)
        except FileNotFoundError:
            if not skip_missing:
                raise FileNotFoundError(f"image {path} (asked about in the POPE questions) is missing; pass --skip-missing to count and skip such images") from None
            missing.append(image_name)
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
                    "model_id": model_id,
                }
            )
    return missing


def score_sets(question_sets, records, missing_images=()) -> dict[str, dict]:
    results = {}
    for set_name, questions in question_sets.items():
        kept = [question for question in questions if question["image"] not in missing_images]
        answers = {question_id: record["answer"] for (name, question_id), record in records.items() if name == set_name}
        results[set_name] = score_answers(kept, answers).as_dict()
    return results


def report(question_sets, records, args, missing_images=()):
    missing_images = set(missing_images)
    metrics = score_sets(question_sets, records, missing_images)
    write_metrics(metrics, args.metrics_file)
    print(format_table({os.path.basename(os.path.normpath(args.model_path or args.answers_file)): metrics}))
    if len(metrics) > 1:
        print(f"mean F1 over {len(metrics)} sets: {100 * mean_f1(metrics):.2f}")
    if missing_images:
        skipped = sum(q["image"] in missing_images for questions in question_sets.values() for q in questions)
        print(f"skipped {skipped} questions about {len(missing_images)} missing images")
    plot_chart({"run": metrics}, args.chart)
    print(f"metrics: {args.metrics_file}\nchart: {args.chart}")
    return metrics


def main(argv=None):
    args = parse_args(argv)
    question_sets = load_question_sets(args.pope_path, args.set)
    if args.score_only:
        return report(question_sets, read_answers([args.answers_file]), args)

    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    if world_size > 1:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if rank == 0 and existing_paths(args.answers_file):
        if not args.resume:
            raise SystemExit(f"{args.answers_file} (or its parts) exists: pass --resume to continue it, or remove it")
        merge_answers(args.answers_file)  # one clean file (a torn last line dropped) before anyone appends
    _barrier(world_size)

    dtype = DTYPES[args.dtype] if args.dtype else None
    tokenizer, model, image_processor, _ = load_pretrained_model(args.model_path, args.model_base, device=device, dtype=dtype)
    answerer = PrefixCachedAnswerer(model, tokenizer, image_processor, args.max_new_tokens, args.batch_size, args.prompt_suffix)
    done = read_answers(existing_paths(args.answers_file)) if args.resume else {}
    pending = pending_by_image(question_sets, done)
    my_images = sorted(pending)[rank::world_size]
    os.makedirs(os.path.dirname(os.path.abspath(args.answers_file)), exist_ok=True)
    writer = AnswerWriter(part_path(args.answers_file, rank))
    try:
        missing = answer_images(answerer, my_images, pending, args.coco_path, writer, args.model_path, args.skip_missing, rank == 0)
    finally:
        writer.close()
    missing = _gather(missing, world_size)
    if rank == 0:
        records = merge_answers(args.answers_file)
        metrics = report(question_sets, records, args, missing)
    _barrier(world_size)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return metrics if rank == 0 else None


def _barrier(world_size):
    if world_size > 1:
        torch.distributed.barrier()


def _gather(items: list, world_size: int) -> list:
    if world_size == 1:
        return items
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


if __name__ == "__main__":
    main()
