"""The quickstart's stage 1 for every block variant and several seeds, on one toy world: POPE F1 per
set as mean +- standard deviation over the seeds, and each set's change over the base model.

    python scripts/toy_ablation.py --out runs/toy_ablation [--seeds 0 1 2] [--learning-rate 1e-3] [--threads 1]

Prints a Markdown table and writes it to `ablation.md`, with every run's metrics in `ablation.json`.
"""

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the project

from ha_dpo.cli.config_files import read_config  # noqa: E402
from ha_dpo.toy import DEFAULT_CHECKPOINT, STAGE1_RECIPE  # noqa: E402
from ha_dpo.toy.quickstart import make_world, pope, train_stage1  # noqa: E402
from post_decoder import VARIANTS  # noqa: E402
from post_decoder.atomic_files import atomic_file  # noqa: E402

SETS = ("random", "popular", "adversarial")


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {deviation:.2f}"


def table(base: dict, runs: dict[str, list[dict]]) -> str:
    """F1 (%) per set, then the change over the base in points, mean ± std over seeds."""
    lines = [
        "| block | " + " | ".join([*(f"{name} F1" for name in SETS), *(f"{name} ΔF1" for name in SETS)]) + " |",
        "|---" * (1 + 2 * len(SETS)) + "|",
        "| (base model) | " + " | ".join(f"{100 * base[name]['f1']:.2f}" for name in SETS) + " |" + " |" * len(SETS),
    ]
    for variant, seeds in runs.items():
        f1 = [spread([100 * metrics[name]["f1"] for metrics in seeds]) for name in SETS]
        gain = [spread([100 * (metrics[name]["f1"] - base[name]["f1"]) for metrics in seeds]) for name in SETS]
        lines.append(f"| {variant} | " + " | ".join(f1 + gain) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Block variants x seeds on the toy world (stage 1, POPE F1).")
    parser.add_argument("--out", required=True, help="a new or empty folder")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dpo-images", type=int, default=None, help="fewer DPO images than the world's 1000")
    parser.add_argument("--pope-images", type=int, default=150)
    parser.add_argument(
        "--learning-rate", type=float, default=read_config(STAGE1_RECIPE)["learning_rate"], help="default: recipe"
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise SystemExit(f"--out {args.out} is not empty: give a new folder")
    if args.threads:
        torch.set_num_threads(args.threads)

    world = make_world(args.out, args.dpo_images, args.pope_images, DEFAULT_CHECKPOINT)
    base = pope(world, os.path.join(args.out, "base"), DEFAULT_CHECKPOINT)
    recipe_changes = {"learning_rate": args.learning_rate, "plot": False, "disable_tqdm": True}
    runs = {}
    for variant in args.variants:
        for seed in args.seeds:
            trained = os.path.join(args.out, f"{variant}-seed{seed}")
            train_stage1(world, trained, DEFAULT_CHECKPOINT, seed, variant, changes=recipe_changes)
            runs.setdefault(variant, []).append(pope(world, trained, trained, DEFAULT_CHECKPOINT))
    report = table(base, runs)
    heading = f"seeds {args.seeds}, learning rate {args.learning_rate:g}, {args.pope_images} POPE images per set"
    with atomic_file(os.path.join(args.out, "ablation.md")) as temporary, open(temporary, "w") as handle:
        handle.write(f"{heading}\n\n{report}\n")
    results = {"seeds": args.seeds, "learning_rate": args.learning_rate, "base": base, "runs": runs}
    with atomic_file(os.path.join(args.out, "ablation.json")) as temporary, open(temporary, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\n{report}")


if __name__ == "__main__":
    main()
