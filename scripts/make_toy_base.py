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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ha_dpo.toy.base_model import BaseModelConfig, train_base_model
from ha_dpo.toy.files import write_pope_data, write_world
from ha_dpo.toy.world import WorldConfig, generate_world
from post_decoder.errors import run_command
from scripts.toy_base_args import (
    add_pope_arguments,
    add_training_arguments,
    check_outputs_and_threads,
    evaluate_pope,
    folder_megabytes,
)

DEFAULT_OUT = os.path.join("runs", "toy_base")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(
        parser,
        DEFAULT_OUT,
        BaseModelConfig,
        epochs_help="LLaVA stage epochs",
        tower_epochs_help="tower pretraining epochs",
    )
    parser.add_argument("--dpo-images", type=int, default=None, help="another size for the DPO split")
    parser.add_argument("--val-images", type=int, default=None, help="another size for the held-out split")
    parser.add_argument(
        "--partner-text-probability",
        type=float,
        default=WorldConfig.partner_text_probability,
        help="P(the training text names a partner next to its anchor, present or not) (default: the world's)",
    )
    add_pope_arguments(parser, skip_help="no POPE evaluation and no pope_data.json")
    args = parser.parse_args(argv)
    if not 0 <= args.partner_text_probability <= 1:
        parser.error(f"--partner-text-probability {args.partner_text_probability} is not a probability (0 to 1)")
    return args


def main(argv=None):
    args = parse_args(argv)
    check_outputs_and_threads(args)
    sizes = {"train": args.train_images, "dpo": args.dpo_images, "val": args.val_images}
    splits = {split: size if sizes[split] is None else sizes[split] for split, size in WorldConfig().splits.items()}
    world_config = WorldConfig(seed=args.seed, splits=splits, partner_text_probability=args.partner_text_probability)
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
        evaluate_pope(args.out, world, scratch)
    return summary


if __name__ == "__main__":
    run_command(main)
