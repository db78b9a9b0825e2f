"""The quickstart's stage 1 for every block variant and several seeds, on one toy world: POPE F1 per
set as mean +- standard deviation over the seeds, each set's change over the base model, CHAIR on the
held-out images (CHAIR_i, its relative change, recall's change), and the empty-picture check (the
adversarial F1 a trained block loses when it is shown an empty picture while the backbone sees the image).

    python scripts/toy_ablation.py --out runs/toy_ablation [--seeds 0 1 2] [--learning-rate 1e-3] [--threads 1]

Every run reads one backbone cache (`--out/backbone_cache`, ha_dpo/cache): the first run computes the frozen
backbone's states once, the other runs read them (with the prompt's states too when transformer_block is
among the variants). Prints a Markdown table and writes it to `ablation.md`, with every run's metrics in
`ablation.json`. The table also gives the share of POPE answers that differ from the base model's: a run
whose answers are all the base's did not move the block enough to change one, which the table says.
"""

import argparse
import json
import os
import statistics
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file: the project

from ha_dpo.cli.config_files import read_config  # noqa: E402
from ha_dpo.toy import DEFAULT_CHECKPOINT, STAGE1_RECIPE  # noqa: E402
from ha_dpo.toy.empty_picture import block_shown_an_empty_picture, empty_picture_features  # noqa: E402
from ha_dpo.toy.quickstart import chair, make_world, pope, train_stage1  # noqa: E402
from post_decoder import VARIANTS  # noqa: E402
from post_decoder.atomic_files import atomic_file  # noqa: E402
from post_decoder.block.files import POST_DECODER_WEIGHTS  # noqa: E402

SETS = ("random", "popular", "adversarial")
ANSWERS = "pope_answers.jsonl"


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {deviation:.2f}"


def answers(folder: str) -> dict[tuple[str, int], str]:
    """(set, question_id) -> answer of a POPE answers file."""
    with open(os.path.join(folder, ANSWERS)) as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    return {(line["set"], line["question_id"]): line["answer"] for line in lines}


def changed_answers(base: str, trained: str) -> float:
    """The share of POPE answers (0..1) that differ from the base model's."""
    before, after = answers(base), answers(trained)
    return sum(after[question] != answer for question, answer in before.items()) / len(before)


def block_update(trained: str) -> float:
    """The largest weight of the block's output projections: they start at zero (the block is the identity), so
    this is how far training moved it; 0 means the block is still exactly the identity."""
    weights = load_file(os.path.join(trained, POST_DECODER_WEIGHTS))
    return max(tensor.abs().max().item() for name, tensor in weights.items() if name.endswith("o_proj.weight")
               or name.endswith("down_proj.weight"))  # fmt: skip


def table(base: dict, runs: dict[str, list[dict]]) -> str:
    """F1 (%) per set, then the change over the base in points, mean ± std over seeds, the POPE answers
    that differ from the base model's (%), the adversarial F1 change when the block is shown an empty
    picture, and CHAIR (CHAIR_i %, its change relative to the base's %, recall's change in points); a note
    names the runs that changed no POPE answer."""
    columns = [*(f"{name} F1" for name in SETS), *(f"{name} ΔF1" for name in SETS), "answers changed (%)",
               "adversarial ΔF1, empty picture", "CHAIR_i", "CHAIR_i change (%)", "recall Δ"]  # fmt: skip
    chair_base = base["chair"]
    base_cells = [f"{100 * base['pope'][name]['f1']:.2f}" for name in SETS] + [""] * (len(SETS) + 2)
    base_cells += [f"{100 * chair_base['chair_i']:.2f}", "", f"recall {100 * chair_base['recall']:.2f}"]
    lines = ["| block | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|",
             "| (base model) | " + " | ".join(base_cells) + " |"]  # fmt: skip
    unmoved = []
    for variant, seeds in runs.items():
        f1 = [spread([100 * run["metrics"][name]["f1"] for run in seeds]) for name in SETS]
        gain = [
            spread([100 * (run["metrics"][name]["f1"] - base["pope"][name]["f1"]) for run in seeds]) for name in SETS
        ]
        changed = spread([100 * run["answers_changed"] for run in seeds])
        empty = spread([100 * (run["empty_picture"]["f1"] - run["metrics"]["adversarial"]["f1"]) for run in seeds])
        chair_i = spread([100 * run["chair"]["chair_i"] for run in seeds])
        relative = spread([relative_change(run["chair"]["chair_i"], chair_base["chair_i"]) for run in seeds])
        recall = spread([100 * (run["chair"]["recall"] - chair_base["recall"]) for run in seeds])
        lines.append(f"| {variant} | " + " | ".join([*f1, *gain, changed, empty, chair_i, relative, recall]) + " |")
        unmoved += [f"{variant} seed {run['seed']}" for run in seeds if run["answers_changed"] == 0]
    if unmoved:
        lines.append(
            f"\nDid not move the block enough to change one POPE answer (too little training for these settings: "
            f"more --dpo-images, epochs or a higher --learning-rate): {', '.join(unmoved)}."
        )
    return "\n".join(lines)


def relative_change(value: float, base: float) -> float:
    """In percent of `base` (0 when both are 0)."""
    return 100 * (value - base) / base if base else 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Block variants x seeds on the toy world (stage 1, POPE F1, CHAIR).")
    parser.add_argument("--out", required=True, help="a new or empty folder")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dpo-images", type=int, default=None, help="fewer DPO images than the world's 1000")
    parser.add_argument("--pope-images", type=int, default=150, help="held-out images per POPE set")
    parser.add_argument("--chair-images", type=int, default=300, help="held-out images CHAIR describes (of 300)")
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
    base_folder = os.path.join(args.out, "base")
    base = {
        "pope": pope(world, base_folder, DEFAULT_CHECKPOINT),
        "chair": chair(world, base_folder, DEFAULT_CHECKPOINT, args.chair_images),
    }
    empty_picture = empty_picture_features(DEFAULT_CHECKPOINT)
    recipe_changes = {
        "learning_rate": args.learning_rate,
        "plot": False,
        "disable_tqdm": True,
        "backbone_cache": os.path.join(args.out, "backbone_cache"),  # one cache for every run
        "cache_prompt_states": "transformer_block" in args.variants,
    }
    runs = {}
    for variant in args.variants:
        for seed in args.seeds:
            trained = os.path.join(args.out, f"{variant}-seed{seed}")
            train_stage1(world, trained, DEFAULT_CHECKPOINT, seed, variant, changes=recipe_changes)
            metrics = pope(world, trained, trained, DEFAULT_CHECKPOINT)
            with block_shown_an_empty_picture(empty_picture):
                shown_empty = pope(world, os.path.join(trained, "empty_picture"), trained, DEFAULT_CHECKPOINT)
            runs.setdefault(variant, []).append(
                {
                    "seed": seed,
                    "metrics": metrics,
                    "empty_picture": shown_empty["adversarial"],
                    "chair": chair(world, trained, trained, args.chair_images, DEFAULT_CHECKPOINT),
                    "answers_changed": changed_answers(base_folder, trained),
                    "block_update": block_update(trained),
                }  # fmt: skip
            )
    report = table(base, runs)
    heading = (
        f"seeds {args.seeds}, learning rate {args.learning_rate:g}, {args.pope_images} POPE images per set "
        f"and {args.chair_images} CHAIR images"
    )
    with atomic_file(os.path.join(args.out, "ablation.md")) as temporary, open(temporary, "w") as handle:
        handle.write(f"{heading}\n\n{report}\n")
    results = {"seeds": args.seeds, "learning_rate": args.learning_rate, "base": base, "runs": runs}
    with atomic_file(os.path.join(args.out, "ablation.json")) as temporary, open(temporary, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\n{report}")


if __name__ == "__main__":
    main()
