"""The toy world: a generated dataset on which a tiny LLaVA (and a tiny Qwen2.5-VL) really hallucinates (see
world.py, files.py, base_model.py, qwen_base.py, quickstart.py), and what the repository ships from it."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CHECKPOINT = os.path.join(_HERE, "checkpoint")  # the base model, made by scripts/make_toy_base.py
DEFAULT_BLOCK = os.path.join(_HERE, "block")  # the quickstart's stage-1 block at seed 0
DEFAULT_EXAMPLES = os.path.join(_HERE, "examples")  # held-out images for the demo (files.write_examples)
STAGE1_RECIPE = os.path.join(_HERE, "recipe_stage1.json")  # the quickstart's training settings
QWEN_CHECKPOINT = os.path.join(
    _HERE, "qwen_checkpoint"
)  # a tiny Qwen2.5-VL base, made by scripts/make_toy_qwen_base.py
# The quickstart's `--backbone`: the base model it improves (both with the same recipe).
BACKBONES = {"llava": DEFAULT_CHECKPOINT, "qwen2_5_vl": QWEN_CHECKPOINT}
