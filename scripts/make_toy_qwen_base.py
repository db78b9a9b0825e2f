"""Remake the toy world's Qwen2.5-VL base model (the committed `ha_dpo/toy/qwen_checkpoint/`): world -> train -> save
-> POPE.

    python scripts/make_toy_qwen_base.py                          # seed 0, 1 thread, into runs/toy_qwen_base
    python scripts/make_toy_qwen_base.py --out runs/toy_qwen_base_1 --seed 1

Seeded and deterministic: the same seed, thread count, machine and library versions give the same weights.
--out and --world must be new or empty folders (`--overwrite` replaces them). The world is written to --world
(a temporary folder if not given); the new model's POPE scores on the world's held-out sets go to
`{out}/pope_metrics.json`.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval.pope_eval_post import main as pope_eval_main
from ha_dpo.toy.files import check_output_folder, write_world
from ha_dpo.toy.qwen_base import QwenBaseConfig, train_qwen_base_model
from ha_dpo.toy.world import WorldConfig
from post_decoder.errors import run_command

DEFAULT_OUT = os.path.join("runs", "toy_qwen_base")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"a new or empty folder for the model (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out and --world if they hold files")
    parser.add_argument("--world", default=None, help="where to write the toy world (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the world and the training")
    parser.add_argument("--threads", type=int, default=QwenBaseConfig.threads)
    parser.add_argument("--epochs", type=int, default=QwenBaseConfig.epochs, help="merger + LLM epochs")
    parser.add_argument(
        "--tower-epochs", type=int, default=QwenBaseConfig.tower_epochs, help="vision encoder pretraining epochs"
    )
    parser.add_argument(
        "--train-images", type=int, default=None, help="another size for the training split (quick checks)"
    )
    parser.add_argument("--pope-images", type=int, default=150)
    parser.add_argument("--skip-pope", action="store_true", help="no POPE evaluation")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_output_folder(args.out, "--out", args.overwrite)
    if args.world:
        check_output_folder(args.world, "--world", args.overwrite)
    torch.set_num_threads(args.threads)
    splits = WorldConfig().splits
    if args.train_images is not None:
        splits = {**splits, "train": args.train_images}
    world_config = WorldConfig(seed=args.seed, splits=splits)
    model_config = QwenBaseConfig(
        seed=args.seed, threads=args.threads, epochs=args.epochs, tower_epochs=args.tower_epochs
    )
    with tempfile.TemporaryDirectory() as scratch:
        world = args.world or os.path.join(scratch, "toy_world")
        write_world(world, world_config, args.pope_images)
        summary = train_qwen_base_model(world, args.out, model_config)
        seconds = summary["encoder_seconds"] + summary["llm_seconds"]
        print(f"trained in {seconds:.0f} s, saved to {args.out} ({folder_megabytes(args.out):.1f} MB)")
        if args.skip_pope:
            return summary
        start = time.perf_counter()
        pope_eval_main(
            [
                "--model-path", args.out,
                "--pope_path", os.path.join(world, "pope"),
                "--coco_path", os.path.join(world, "coco", "val2014"),
                "--answers-file", os.path.join(scratch, "pope_answers.jsonl"),
                "--metrics-file", os.path.join(args.out, "pope_metrics.json"),
                "--chart", os.path.join(scratch, "pope.png"),
            ]
        )  # fmt: skip
        print(f"POPE in {time.perf_counter() - start:.0f} s")
    return summary


def folder_megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20


if __name__ == "__main__":
    run_command(main)
