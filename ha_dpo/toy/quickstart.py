"""The project's main job on the toy world, in one command, on a CPU:

    python -m ha_dpo.toy.quickstart --out runs/toy
    python -m ha_dpo.toy.quickstart --out runs/toy_qwen --backbone qwen2_5_vl    # the tiny Qwen2.5-VL base

the toy world -> POPE and CHAIR on the committed base model -> stage-1 DPO of the block on the toy
HA-DPO pairs (`train_dpo`, the library function under ha_dpo/train_dpo_post.py) -> POPE and CHAIR on
base + block -> before/after tables (printed and in `results.md`), `comparison.png` (POPE's chart above
CHAIR's; each also on its own) and `results.json`, all under `--out`:

    world/            the toy world's files (see ha_dpo/toy/files.py)
    base/             POPE answers and metrics, descriptions and CHAIR metrics of the base model
    stage1/           the training run (the block, training_curves.png), its POPE and CHAIR files
    backbone_cache/   the frozen backbone's states of the DPO pairs (ha_dpo/cache), built once, read by training

CHAIR describes all 300 held-out images (or a seeded sample of `--chair-images` of them; eval/chair_eval_post.py,
greedy, "Describe the image.") and scores the descriptions against the world's COCO annotations.

The recipe (ha_dpo/toy/recipe_stage1.json, which the training script also reads as `--config`) is
HA-DPO's stage 1 at lr 1e-3 for 5 epochs (HA-DPO: one epoch at 1e-4, which leaves this block almost where it
started: it has to learn which object was asked and whether the image shows it, from the identity start) with
three changes that the toy base model needs: `pope_correct_pairs` true (the base model errs only by affirming
absent objects, so HA-DPO's wrong-answers-only pairs all prefer "No" and teach the block to deny everything),
`gamma` 1.0 (an SFT term on the chosen answer keeps the answers fluent) and `beta` 1.0 (HA-DPO: 0.1; DPO moves an
answer's log-odds by about logit(how sure the block's input makes it) / beta, so at 0.1 the faint trace of the
image in the LLM's state overturned answers too; at 1.0 only what the block sees clearly does; see the README).
"""

import argparse
import os
import time
from contextlib import contextmanager

import torch
from PIL import Image

from eval.chair_eval_post import main as chair_eval_main
from eval.chair_report import format_table as chair_table
from eval.chair_report import plot_chart as plot_chair_chart
from eval.pope_eval_post import main as pope_eval_main
from eval.pope_report import format_table, plot_chart
from post_decoder import VARIANTS
from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError, run_command

from ..cli.config_files import arguments_from, read_config
from ..cli.train_dpo_post import ARGUMENT_TYPES, train_dpo
from . import BACKBONES, DEFAULT_CHECKPOINT, STAGE1_RECIPE
from .files import write_json, write_world
from .text import TOY_DESCRIPTION_PROMPTS
from .world import WorldConfig

RUN_NAMES = {"base": "base", "stage1": "base + block"}
CHAIR_PROMPT = TOY_DESCRIPTION_PROMPTS[0]  # a prompt the base model learned descriptions for
CHAIR_MAX_NEW_TOKENS = 48  # a toy description is under 30 tokens and ends at </s>
CHAIR_SAMPLE_SEED = 0


def make_world(out: str, dpo_images: int | None, pope_images: int, base_model: str) -> str:
    """The default world (the one the base model learned from), with `dpo_images` DPO images (the
    held-out images, drawn after them, then change too); pope_data.json is answered by
    `base_model`, as HA-DPO asks its own model."""
    splits = WorldConfig().splits
    if dpo_images is not None:
        splits = {**splits, "dpo": dpo_images}
    world = os.path.join(out, "world")
    write_world(world, WorldConfig(splits=splits), pope_images, model_path=base_model)
    return world


def pope(world: str, out: str, model_path: str, model_base: str | None = None) -> dict:
    """POPE random/popular/adversarial on the world's held-out images; metrics per set."""
    return pope_eval_main(
        ["--model-path", model_path, "--pope_path", os.path.join(world, "pope"),
         "--coco_path", os.path.join(world, "coco", "val2014"),
         "--answers-file", os.path.join(out, "pope_answers.jsonl"),
         "--metrics-file", os.path.join(out, "pope_metrics.json")]
        + (["--model-base", model_base] if model_base else [])
    )  # fmt: skip


def chair(world: str, out: str, model_path: str, images: int, model_base: str | None = None) -> dict:
    """CHAIR on `images` held-out images (a seeded sample of val2014): descriptions and metrics under `out`."""
    annotations = os.path.join(world, "coco", "annotations")
    return chair_eval_main(
        ["--model-path", model_path, "--coco_path", os.path.join(world, "coco", "val2014"),
         "--annotations", os.path.join(annotations, "instances_val2014.json"),
         os.path.join(annotations, "captions_val2014.json"),
         "--num-images", str(images), "--seed", str(CHAIR_SAMPLE_SEED), "--prompt", CHAIR_PROMPT,
         "--max-new-tokens", str(CHAIR_MAX_NEW_TOKENS), "--batch-size", "32",
         "--answers-file", os.path.join(out, "descriptions.jsonl"),
         "--metrics-file", os.path.join(out, "chair_metrics.json"),
         "--chart", os.path.join(out, "chair_metrics.png")]
        + (["--model-base", model_base] if model_base else [])
    )  # fmt: skip


def train_stage1(world: str, out: str, base_model: str, seed: int, variant: str, changes: dict | None = None):
    """Stage 1 with the recipe (and `changes` to it, by setting name): the block alone, on the world's
    HA-DPO files."""
    settings = {
        **read_config(STAGE1_RECIPE),
        "model_name_or_path": base_model,
        "post_decoder_variant": variant,
        "vg_path": os.path.join(world, "vg"),
        "desc_data_path": os.path.join(world, "hadpo", "desc_data.json"),
        "pope_data_path": os.path.join(world, "hadpo", "pope_data.json"),
        "output_dir": out,
        "seed": seed,
        **(changes or {}),
    }
    train_dpo(*arguments_from(ARGUMENT_TYPES, settings))


def comparison(metrics: dict[str, dict]) -> str:
    """The before/after table and each set's F1 change, in points."""
    table = format_table({RUN_NAMES[run]: by_set for run, by_set in metrics.items()})
    gains = {name: 100 * (metrics["stage1"][name]["f1"] - metrics["base"][name]["f1"]) for name in metrics["base"]}
    changes = ", ".join(f"{name} {gain:+.2f}" for name, gain in gains.items())
    return f"{table}\n\nF1 change (points): {changes}"


def chair_comparison(chair_metrics: dict[str, dict]) -> str:
    """CHAIR's before/after table, then CHAIR_i's relative change and recall's change in points."""
    table = chair_table({RUN_NAMES[run]: metrics for run, metrics in chair_metrics.items()})
    before, after = chair_metrics["base"], chair_metrics["stage1"]
    relative = f"{100 * (after['chair_i'] / before['chair_i'] - 1):+.0f}%" if before["chair_i"] else "n/a"
    return (
        f"{table}\n\nCHAIR_i change: {100 * before['chair_i']:.1f} -> {100 * after['chair_i']:.1f} ({relative}), "
        f"recall {100 * before['recall']:.1f} -> {100 * after['recall']:.1f} "
        f"({100 * (after['recall'] - before['recall']):+.1f} points)"
    )


def stack_charts(paths: list[str], out: str):
    """One PNG: the charts at `paths` one above the other, on white."""
    pictures = []
    for path in paths:
        with Image.open(path) as picture:
            pictures.append(picture.convert("RGB"))
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    with atomic_file(out) as temporary:
        canvas.save(temporary, format="PNG")


class Steps:
    """Numbered progress headers and each step's seconds."""

    def __init__(self, total: int):
        self.total, self.seconds = total, {}

    @contextmanager
    def step(self, title: str):
        print(f"\n[{len(self.seconds) + 1}/{self.total}] {title}", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[title] = round(time.perf_counter() - start, 1)


def run(out: str, seed: int = 0, variant: str = "post_interaction", dpo_images: int | None = None,
        pope_images: int = 150, base_model: str = DEFAULT_CHECKPOINT, chair_images: int = 300) -> dict:  # fmt: skip
    if os.path.isdir(out) and os.listdir(out):
        raise InputError(f"--out {out} is not empty: give a new folder")
    os.makedirs(out, exist_ok=True)
    steps, metrics, chair_metrics, trained = Steps(6), {}, {}, os.path.join(out, "stage1")
    with steps.step("toy world"):
        world = make_world(out, dpo_images, pope_images, base_model)
    with steps.step("POPE on the base model"):
        metrics["base"] = pope(world, os.path.join(out, "base"), base_model)
    with steps.step("CHAIR on the base model"):
        chair_metrics["base"] = chair(world, os.path.join(out, "base"), base_model, chair_images)
    with steps.step(f"stage-1 DPO of the block ({variant})"):
        cache = {"backbone_cache": os.path.join(out, "backbone_cache")}
        train_stage1(world, trained, base_model, seed, variant, cache)
    with steps.step("POPE on base + block"):
        metrics["stage1"] = pope(world, trained, trained, base_model)
    with steps.step("CHAIR on base + block"):
        chair_metrics["stage1"] = chair(world, trained, trained, chair_images, base_model)
    summary = f"{comparison(metrics)}\n\n{chair_comparison(chair_metrics)}"
    charts = [os.path.join(out, "pope_comparison.png"), os.path.join(out, "chair_comparison.png")]
    plot_chart({RUN_NAMES[run]: by_set for run, by_set in metrics.items()}, charts[0])
    plot_chair_chart({RUN_NAMES[run]: by_run for run, by_run in chair_metrics.items()}, charts[1])
    stack_charts(charts, os.path.join(out, "comparison.png"))
    markdown = os.path.join(out, "results.md")
    with atomic_file(markdown) as temporary, open(temporary, "w") as handle:
        handle.write(f"# Toy-world quickstart (seed {seed}, block {variant})\n\n```\n{summary}\n```\n")
    results = {"seed": seed, "variant": variant, "dpo_images": dpo_images, "pope_images": pope_images,
               "chair_images": chair_images, "base_model": base_model,
               "seconds": steps.seconds, "metrics": metrics, "chair": chair_metrics}  # fmt: skip
    write_json(os.path.join(out, "results.json"), results)
    took = f"took {sum(steps.seconds.values()):.0f} s"
    print(f"\n{summary}\n\n{took}; results in {out} (results.md, results.json, comparison.png)")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Toy world -> POPE and CHAIR -> stage-1 DPO of the block -> POPE and CHAIR, before and after."
    )
    parser.add_argument("--out", required=True, help="a new or empty folder for everything the run writes")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (block initialisation, pair order)")
    parser.add_argument("--variant", default="post_interaction", choices=VARIANTS, help="the block to train")
    parser.add_argument(
        "--dpo-images", type=int, default=None, help="fewer DPO images than the world's 1000 (quicker)"
    )
    parser.add_argument("--pope-images", type=int, default=150, help="held-out images per POPE set (POPE uses 500)")
    parser.add_argument("--chair-images", type=int, default=300, help="held-out images CHAIR describes (of 300)")
    parser.add_argument(
        "--backbone",
        default="llava",
        choices=BACKBONES,
        help="the committed toy base to improve: tiny LLaVA-1.5 (default) or tiny Qwen2.5-VL (same recipe)",
    )
    parser.add_argument("--base-model", default=None, help="another model to improve (default: --backbone's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_model = args.base_model or BACKBONES[args.backbone]
    return run(args.out, args.seed, args.variant, args.dpo_images, args.pope_images, base_model, args.chair_images)


if __name__ == "__main__":
    run_command(main)
