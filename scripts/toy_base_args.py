"""What scripts/make_toy_base.py and scripts/make_toy_qwen_base.py share: their common flags, the checks of the
folders they write, and the POPE evaluation of the model they made."""

import os

import torch

from eval.pope_eval_post import main as pope_eval_main
from ha_dpo.toy.files import check_output_folder


def add_training_arguments(parser, default_out: str, config_class, epochs_help: str, tower_epochs_help: str) -> None:
    """--out, --overwrite, --world, --seed, --threads, --epochs, --tower-epochs, --train-images; the defaults of
    the last four from `config_class` (the model's training config)."""
    parser.add_argument(
        "--out", default=default_out, help=f"a new or empty folder for the model (default: {default_out})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out and --world if they hold files")
    parser.add_argument("--world", default=None, help="where to write the toy world (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the world and the training")
    parser.add_argument("--threads", type=int, default=config_class.threads)
    parser.add_argument("--epochs", type=int, default=config_class.epochs, help=epochs_help)
    parser.add_argument("--tower-epochs", type=int, default=config_class.tower_epochs, help=tower_epochs_help)
    parser.add_argument(
        "--train-images", type=int, default=None, help="another size for the training split (quick checks)"
    )


def add_pope_arguments(parser, skip_help: str) -> None:
    parser.add_argument("--pope-images", type=int, default=150)
    parser.add_argument("--skip-pope", action="store_true", help=skip_help)


def check_outputs_and_threads(args) -> None:
    """Refuse a non-empty --out / --world unless --overwrite (before any work), and set the thread count."""
    check_output_folder(args.out, "--out", args.overwrite)
    if args.world:
        check_output_folder(args.world, "--world", args.overwrite)
    torch.set_num_threads(args.threads)


def evaluate_pope(model: str, world: str, scratch: str) -> None:
    """POPE on the world's held-out sets; the scores go to `{model}/pope_metrics.json`, answers and chart to
    `scratch`."""
    pope_eval_main(
        [
            "--model-path", model,
            "--pope_path", os.path.join(world, "pope"),
            "--coco_path", os.path.join(world, "coco", "val2014"),
            "--answers-file", os.path.join(scratch, "pope_answers.jsonl"),
            "--metrics-file", os.path.join(model, "pope_metrics.json"),
            "--chart", os.path.join(scratch, "pope.png"),
        ]
    )  # fmt: skip


def folder_megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20
