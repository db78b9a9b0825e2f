"""CHAIR evaluation of LLaVA-1.5, with or without a post-decoder block: describe COCO images, then score.

    torchrun --nproc_per_node 8 eval/chair_eval_post.py --model-path runs/stage1/merged \\
        --coco_path coco/val2014 --annotations coco/annotations --num-images 500 --seed 0 \\
        --answers-file runs/stage1/chair.jsonl            # + --model-base BASE for a block saved alone

Images: a seeded sample of the annotated images of --coco_path (eval/chair_images.py), or the ids of
--image-ids FILE. Descriptions: greedy, many images per `generate` call (eval/description_generation.py),
written as JSON lines as they come; `--resume` continues only the descriptions of the same weights,
prompt, decoding and images (eval/answer_provenance.py). Ranks take every world_size-th image; rank 0
merges the descriptions and scores them as eval.chair_report does (its metrics JSON, table and chart;
`python -m eval.chair_report --compare` puts several runs in one table and one chart).
"""

import argparse
import os
import sys
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from tqdm import tqdm

from eval.answer_files import AnswerWriter, existing_paths, part_path
from eval.answer_provenance import AnswerSettings, check_same_settings, weights_fingerprint, write_settings
from eval.chair_images import (
    absent,
    ids_fingerprint,
    image_pool,
    listed_images,
    read_image_ids,
    read_listed_images,
    sample_images,
)
from eval.chair_report import format_table, plot_chart, score_file, write_details
from eval.description_files import merge_descriptions, read_descriptions
from eval.description_generation import CHAIR_MAX_NEW_TOKENS, DESCRIPTION_PROMPT, BatchedDescriber
from eval.pope_report import write_metrics
from eval.run_helpers import barrier, coco_path_hint, gather, refuse_unasked_resume, start_ranks
from post_decoder.builder import load_pretrained_model
from post_decoder.dtypes import DTYPES
from post_decoder.errors import InputError, run_command
from post_decoder.family import conv_modes
from post_decoder.images import open_image

DEFAULT_NUM_IMAGES, DEFAULT_SEED = 500, 0


@dataclass(frozen=True)
class DescriptionSettings(AnswerSettings):
    """POPE's record of what wrote the answers, with the prompt and the images described."""

    prompt: str = ""
    image_seed: int | None = None  # None: a fixed list (--image-ids)
    image_count: int = 0
    image_list: str = ""  # eval.chair_images.ids_fingerprint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="CHAIR evaluation with or without a post-decoder block.")
    parser.add_argument("--model-path", required=True, help="any folder or hub id that load_pretrained_model opens")
    parser.add_argument("--model-base", default=None, help="the base, when --model-path holds only a block")
    parser.add_argument("--coco_path", "--coco-path", dest="coco_path", required=True, help="the images' folder")
    parser.add_argument(
        "--annotations", nargs="+", required=True, metavar="PATH",
        help="COCO instances and captions files, or a folder of instances_*.json and captions_*.json",
    )  # fmt: skip
    parser.add_argument("--num-images", type=int, default=None, help=f"images sampled (default {DEFAULT_NUM_IMAGES})")
    parser.add_argument("--seed", type=int, default=None, help=f"the sample's seed (default {DEFAULT_SEED})")
    parser.add_argument("--image-ids", metavar="FILE", help="describe these COCO image ids (one a line) instead")
    parser.add_argument("--prompt", default=DESCRIPTION_PROMPT)
    parser.add_argument(
        "--conv-mode",
        choices=tuple(conv_modes()),
        default=None,
        help="the prompt template (default: the model family's own, as the model answers by default)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=CHAIR_MAX_NEW_TOKENS, help="a description stops at </s> anyway"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images described at once")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="default: float16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--answers-file", required=True, help="JSON-lines descriptions (written as they come)")
    parser.add_argument("--metrics-file", help="the metrics JSON (default: next to --answers-file)")
    parser.add_argument("--chart", help="PNG chart (default: next to --metrics-file)")
    parser.add_argument("--details", metavar="JSONL", help="also write each description's objects here")
    parser.add_argument("--resume", action="store_true", help="keep the descriptions already in --answers-file")
    parser.add_argument(
        "--skip-missing", action="store_true", help="count and report missing images instead of stopping"
    )
    args = parser.parse_args(argv)
    if args.image_ids and (args.num_images is not None or args.seed is not None):
        raise InputError("--image-ids names the images: --num-images and --seed are for a sample, give one or other")
    args.num_images = DEFAULT_NUM_IMAGES if args.num_images is None else args.num_images
    args.seed = DEFAULT_SEED if args.seed is None else args.seed
    for flag in ("num_images", "batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.prompt.strip():
        raise InputError("--prompt is empty: pass the question that asks for a description")
    args.metrics_file = args.metrics_file or os.path.splitext(args.answers_file)[0] + "_metrics.json"
    args.chart = args.chart or os.path.splitext(args.metrics_file)[0] + ".png"
    return args


def choose_images(args):
    """(the images to describe, (seed or None, count, fingerprint) for the settings record)."""
    listed = read_listed_images(args.annotations)
    if args.image_ids:
        images = listed_images(listed, read_image_ids(args.image_ids), args.image_ids)
        return images, (None, len(images), ids_fingerprint(images))
    pool = image_pool(listed, args.coco_path)
    if not pool:
        raise InputError(
            f"--coco_path {args.coco_path}: none of the images listed in {', '.join(listed)} is in it"
            f"{coco_path_hint(args.coco_path)}"
        )
    images = sample_images(pool, args.num_images, args.seed)
    return images, (args.seed, len(images), ids_fingerprint(images))


def image_error(image, args, problem: str, others: int = 0) -> InputError:
    more = f" (and {others} more of the chosen images)" if others else ""
    return InputError(
        f"image {os.path.join(args.coco_path, image.file_name)} {problem} (image_id {image.image_id}, listed in "
        f"{image.listed_in}){more}{coco_path_hint(args.coco_path)}; pass --skip-missing to count and skip such images"
    )


def describe_images(describer, images, args, writer, show_progress) -> list:
    """Describe `images` a batch at a time, each description written as it comes; returns the unreadable ones."""
    unreadable = []
    with tqdm(total=len(images), desc="CHAIR images", disable=not show_progress) as progress:
        for start in range(0, len(images), describer.batch_size):
            batch, pictures = [], []
            for image in images[start : start + describer.batch_size]:
                try:
                    pictures.append(open_image(os.path.join(args.coco_path, image.file_name)))
                    batch.append(image)
                except (FileNotFoundError, ValueError) as error:  # gone since the start, or not an image
                    if not args.skip_missing:
                        raise image_error(image, args, f"cannot be read ({error.__cause__ or error})") from None
                    unreadable.append(image)
            for image, text in zip(batch, describer.describe(pictures) if pictures else []):
                record = {"image_id": image.image_id, "image": image.file_name, "prompt": describer.prompt}
                writer.write({**record, "caption": text, "model_id": args.model_path})
            progress.update(len(images[start : start + describer.batch_size]))
    return unreadable


def report(args, skipped) -> dict:
    metrics, scores = score_file(args.answers_file, args.annotations)
    write_metrics(metrics, args.metrics_file)
    if args.details:
        write_details(scores, args.details)
    label = os.path.basename(os.path.normpath(args.model_path))
    print(format_table({label: metrics}))
    if skipped:
        shown = ", ".join(image.file_name for image in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} missing or unreadable images: {shown}")
    plot_chart({label: metrics}, args.chart)
    print(f"descriptions: {args.answers_file}\nmetrics: {args.metrics_file}\nchart: {args.chart}")
    return metrics


def main(argv=None):
    args = parse_args(argv)
    world_size, rank, device = start_ranks()
    # Before the model loads: a refusal should not take minutes.
    resuming = refuse_unasked_resume(args.answers_file, args.resume)
    if not os.path.isdir(args.coco_path):
        raise InputError(f"--coco_path {args.coco_path}: no such folder")
    images, (seed, count, fingerprint) = choose_images(args)
    missing = absent(images, args.coco_path)
    if missing and not args.skip_missing:
        raise image_error(missing[0], args, "is missing", others=len(missing) - 1)

    dtype = DTYPES[args.dtype] if args.dtype else None
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, device=device, dtype=dtype
    )
    describer = BatchedDescriber(
        model, tokenizer, image_processor, args.prompt, args.max_new_tokens, args.batch_size, args.conv_mode
    )
    if rank == 0:
        settings = DescriptionSettings(
            weights=weights_fingerprint(model),
            dtype=str(model.dtype).removeprefix("torch."),
            conv_mode=describer.conv_mode,
            prompt_suffix="",
            max_new_tokens=args.max_new_tokens,
            model_path=args.model_path,
            model_base=args.model_base,
            prompt=args.prompt,
            image_seed=seed,
            image_count=count,
            image_list=fingerprint,
        )
        if resuming:
            check_same_settings(args.answers_file, settings)
            merge_descriptions(args.answers_file)  # one clean file (a torn last line dropped) before anyone appends
        write_settings(args.answers_file, settings)
    barrier(world_size)

    done = read_descriptions(existing_paths(args.answers_file)) if resuming else {}
    left_out = {image.image_id for image in missing} | set(done)
    pending = [image for image in images if image.image_id not in left_out]
    writer = AnswerWriter(part_path(args.answers_file, rank))
    try:
        unreadable = describe_images(describer, pending[rank::world_size], args, writer, rank == 0)
    finally:
        writer.close()
    skipped = missing + gather(unreadable, world_size)
    metrics = None
    if rank == 0:
        merge_descriptions(args.answers_file)
        metrics = report(args, skipped)
    barrier(world_size)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return metrics


def command():
    """The console command (setup.py: post-decoder-chair)."""
    run_command(main)


if __name__ == "__main__":
    command()
