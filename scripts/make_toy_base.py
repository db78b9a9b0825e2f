"""Reproduce the toy world's base model, `ha_dpo/toy/checkpoint/`: world -> train -> save -> POPE.

    python scripts/make_toy_base.py                       # the committed checkpoint (seed 0, 2 threads)
    python scripts/make_toy_base.py --out runs/toy_base --world runs/toy_world --seed 1

Seeded and deterministic: the same seed and thread count on the same machine give the same
weights (other CPUs may round differently). The world is written to --world (a temporary folder
if not given); its hadpo/pope_data.json is answered by the new model. The POPE scores of the new
model on the world's held-out sets go to `{out}/pope_metrics.json`.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval.pope_eval_post import main as pope_eval_main
from ha_dpo.toy.base_model import BaseModelConfig, train_base_model
from ha_dpo.toy.files import DEFAULT_CHECKPOINT, write_pope_data, write_world
from ha_dpo.toy.world import WorldConfig, generate_world


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_CHECKPOINT, help="the model folder to write (replaced)")
    parser.add_argument("--world", default=None, help="where to write the toy world (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the world and the training")
    parser.add_argument("--threads", type=int, default=BaseModelConfig.threads)
    parser.add_argument("--epochs", type=int, default=BaseModelConfig.epochs)
    parser.add_argument("--train-images", type=int, default=None, help="cut the training split (for quick checks)")
    parser.add_argument("--pope-images", type=int, default=150)
    parser.add_argument("--skip-pope", action="store_true", help="no POPE evaluation and no pope_data.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    world_config = WorldConfig(seed=args.seed)
    if args.train_images is not None:
        world_config = WorldConfig(seed=args.seed, splits={**world_config.splits, "train": args.train_images})
    model_config = BaseModelConfig(seed=args.seed, threads=args.threads, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as scratch:
        world = args.world or os.path.join(scratch, "toy_world")
        start = time.perf_counter()
        write_world(world, world_config, args.pope_images)
        print(f"world written to {world} in {time.perf_counter() - start:.1f} s")

        summary = train_base_model(world, args.out, model_config)
        print(f"trained in {summary['train_seconds']:.0f} s, saved to {args.out} ({folder_megabytes(args.out):.1f} MB)")
        if args.skip_pope:
            return summary

        stats = write_pope_data(world, generate_world(world_config), args.out, args.seed)
        print(f"pope_data: the new model got {stats['pope_data_incorrect']} of {stats['pope_data_questions']} questions wrong")
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
    return summary


def folder_megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20


if __name__ == "__main__":
    main()
