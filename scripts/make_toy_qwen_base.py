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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ha_dpo.toy.files import write_world
from ha_dpo.toy.qwen_base import QwenBaseConfig, train_qwen_base_model
from ha_dpo.toy.world import WorldConfig
from post_decoder.errors import run_command
from scripts.toy_base_args import (
    add_pope_arguments,
    add_training_arguments,
    check_outputs_and_threads,
    evaluate_pope,
    folder_megabytes,
)

DEFAULT_OUT = os.path.join("runs", "toy_qwen_base")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(
        parser,
        DEFAULT_OUT,
        QwenBaseConfig,
        epochs_help="merger + LLM epochs",
        tower_epochs_help="vision encoder pretraining epochs",
    )
    add_pope_arguments(parser, skip_help="no POPE evaluation")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_outputs_and_threads(args)
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
        evaluate_pope(args.out, world, scratch)
        print(f"POPE in {time.perf_counter() - start:.0f} s")
    return summary


if __name__ == "__main__":
    run_command(main)
