"""A small POPE world for the evaluator's tests: a saved tiny model with a block, 4 images, and
three small POPE sets sharing them (the shape of the official COCO sets), and the evaluator's
command line on it."""

import json

import numpy as np
from PIL import Image

from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config
from post_decoder.saving import save_model_folder
from tests.helpers import with_block

OBJECTS = ["dog", "cat", "apple", "car"]


def save_model(plain_llava, llava_tokenizer, root, name, seed=0):
    """A tiny model with a perturbed block saved as a full folder `root/name`."""
    processor = root / "processor"
    if not processor.exists():
        processor.mkdir()
        (processor / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(32)))
    model = with_block(plain_llava, "post_interaction", perturb=0.3, seed=seed)
    save_model_folder(model, llava_tokenizer, load_image_processor(str(processor)), str(root / name))
    return root / name


def build_pope_workspace(plain_llava, llava_tokenizer, root):
    """A saved tiny model with a block, 4 images, and three small POPE sets sharing them, in `root`
    (conftest's `pope_workspace` fixture)."""
    save_model(plain_llava, llava_tokenizer, root, "model")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        pixels = rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img{index}.png")
    (root / "pope").mkdir()
    for offset, set_name in enumerate(("random", "popular", "adversarial")):
        lines = []
        for index in range(4):
            for k, label in enumerate(("yes", "no")):
                name = OBJECTS[(index + k * (offset + 1)) % 4]
                question = {
                    "question_id": len(lines) + 1,
                    "image": f"img{index}.png",
                    "text": f"Is there a {name} in the image?",
                }
                lines.append({**question, "label": label})
        (root / "pope" / f"coco_pope_{set_name}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def cli_args(workspace, answers, *extra):
    return [
        "--model-path",
        str(workspace / "model"),
        "--pope_path",
        str(workspace / "pope"),
        "--coco_path",
        str(workspace / "images"),
        "--set",
        "all",
        "--answers-file",
        str(answers),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "3",
        *extra,
    ]


def read_lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]
