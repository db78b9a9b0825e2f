"""Remake the toy world's base model (the committed `ha_dpo/toy/checkpoint/`): world -> train -> save -> POPE.

    python scripts/make_toy_base.py                       # seed 0, 2 threads, into runs/toy_base
    python scripts/make_toy_base.py --out runs/toy_base_1 --world runs/toy_world_1 --seed 1

Seeded and deterministic: the same seed, thread count, machine and library versions give the same
weights (see the README for which transformers versions remake the committed one). --out and --world
must be new or empty folders (`--overwrite` replaces them); the shipped checkpoint is only replaced
when named on purpose. The world is written to --world (a temporary folder if not given); its
hadpo/pope_data.json is answered by the new model. The POPE scores of the new model on the world's
held-out sets go to `{out}/pope_metrics.json`.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval.pope_eval_post import main as pope_eval_main
from ha_dpo.toy.base_model import BaseModelConfig, train_base_model
from ha_dpo.toy.files import check_output_folder, write_pope_data, write_world
from ha_dpo.toy.world import WorldConfig, generate_world
from post_decoder.errors import run_command

DEFAULT_OUT = os.path.join("runs", "toy_base")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="a new or empty folder for the model (default: runs/toy_base)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out and --world if they hold files")
    parser.add_argument("--world", default=None, help="where to write the toy world (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the world and the training")
    parser.add_argument("--threads", type=int, default=BaseModelConfig.threads)
    parser.add_argument("--epochs", type=int, default=BaseModelConfig.epochs, help="LLaVA stage epochs")
    parser.add_argument(
        "--tower-epochs", type=int, default=BaseModelConfig.tower_epochs, help="tower pretraining epochs"
    )
    parser.add_argument(
        "--train-images", type=int, default=None, help="another size for the training split (quick checks)"
    )
    parser.add_argument("--dpo-images", type=int, default=None, help="another size for the DPO split")
    parser.add_argument("--val-images", type=int, default=None, help="another size for the held-out split")
    parser.add_argument(
        "--hallucination-probability",
        type=float,
        default=WorldConfig.hallucination_probability,
        help="P(the training text affirms an absent partner next to its anchor) (default: the world's)",
    )
    parser.add_argument("--pope-images", type=int, default=150)
    parser.add_argument("--skip-pope", action="store_true", help="no POPE evaluation and no pope_data.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_output_folder(args.out, "--out", args.overwrite)
    if args.world:
        check_output_folder(args.world, "--world", args.overwrite)
    torch.set_num_threads(args.threads)
    sizes = {"train": args.train_images, "dpo": args.dpo_images, "val": args.val_images}
    splits = {split: size if sizes[split] is None else sizes[split] for split, size in WorldConfig().splits.items()}
    world_config = WorldConfig(seed=args.seed, splits=splits, hallucination_probability=args.hallucination_probability)
    model_config = BaseModelConfig(
        seed=args.seed, threads=args.threads, epochs=args.epochs, tower_epochs=args.tower_epochs
    )
    with tempfile.TemporaryDirectory() as scratch:
        world = args.world or os.path.join(scratch, "toy_world")
        start = time.perf_counter()
        write_world(world, world_config, args.pope_images)
        print(f"world written to {world} in {time.perf_counter() - start:.1f} s")

        summary = train_base_model(world, args.out, model_config)
        seconds = summary["tower_seconds"] + summary["llava_seconds"]
        print(f"trained in {seconds:.0f} s, saved to {args.out} ({folder_megabytes(args.out):.1f} MB)")
        if args.skip_pope:
            return summary

        stats = write_pope_data(world, generate_world(world_config), args.out, args.seed)
        print(
            f"pope_data: the new model got {stats['pope_data_incorrect']} of "
            f"{stats['pope_data_questions']} questions wrong"
        )
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
    run_command(main)
