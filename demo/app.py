"""The demo page from the command line.

    python demo/app.py --model-path runs/stage1/merged [--base-model-path llava-hf/llava-1.5-7b-hf]
    post-decoder-demo --model-path runs/stage1/merged

Binds 127.0.0.1 and makes no public link unless asked (--host, --share).
"""

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image

from demo.loading import load_models
from demo.page import build_page
from demo.toy_world import OUTSIDE_LABEL, PAGE_CSS, TOY_EXAMPLES_LABEL, is_toy_model
from demo.uploads import DEFAULT_MAX_IMAGE_PIXELS
from ha_dpo.toy import DEFAULT_BLOCK, DEFAULT_CHECKPOINT, DEFAULT_EXAMPLES
from post_decoder.block.files import POST_DECODER_CONFIG
from post_decoder.dtypes import DTYPES
from post_decoder.errors import InputError, run_command

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The toy world's base model, the quickstart's block trained on it, and held-out example images.
TOY_CHECKPOINT, TOY_BLOCK, TOY_EXAMPLES = DEFAULT_CHECKPOINT, DEFAULT_BLOCK, DEFAULT_EXAMPLES
SHARED_IMAGES = os.path.join(REPO_ROOT, "..", "shared", "data", "images")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EXAMPLE_QUESTIONS = ("Describe the image in detail.", "Is there a person in the image?")
TOY_LABELS = ("toy base model + trained block", "toy base model")  # (trained, base) as the page names them
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # organisation/name: what from_pretrained may fetch from the Hub


def default_model_paths() -> tuple[str, str]:
    """(block, its base) when no model is given: the toy world's trained block on the toy base
    model; the base column is the same model with its block bypassed, i.e. the toy base model."""
    for path, name in ((TOY_CHECKPOINT, "config.json"), (TOY_BLOCK, POST_DECODER_CONFIG)):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(
                f"no --model-path given and the toy model is incomplete ({path} has no {name}): "
                "the repository ships it, so restore that folder (e.g. with git), or pass --model-path PATH"
            )
    return TOY_BLOCK, TOY_CHECKPOINT


def example_images(folders: list[str], per_folder: int = 8) -> list[str]:
    """Image files of each folder that exists, in name order (at most `per_folder` from each)."""
    images = []
    for folder in folders:
        if os.path.isdir(folder):
            names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
            images += [os.path.abspath(os.path.join(folder, name)) for name in names[:per_folder]]
    return images


def folder_questions(folder: str) -> dict[str, str]:
    """A folder's questions.json (file name -> question), if it has one."""
    path = os.path.join(folder, "questions.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def examples_with_questions(images: list[str]) -> list[list[str]]:
    """Each image with its folder's question for it, else a generic one."""
    examples = []
    for index, image in enumerate(images):
        generic = EXAMPLE_QUESTIONS[index % len(EXAMPLE_QUESTIONS)]
        examples.append([image, folder_questions(os.path.dirname(image)).get(os.path.basename(image), generic)])
    return examples


@dataclass
class ExampleSet:
    label: str
    examples: list[list[str]]  # [image path, question]
    elem_id: str


def example_sets(examples_dirs: list[str], toy: bool) -> list[ExampleSet]:
    """The page's examples. On the toy model: the toy world's held-out images first, and real photos
    apart, labelled as outside its world; on any other model: --examples-dir's images and the photos."""
    yours = examples_with_questions(example_images(examples_dirs))
    photos = examples_with_questions(example_images([SHARED_IMAGES]))
    if toy:
        toy_images = examples_with_questions(example_images([TOY_EXAMPLES]))
        sets = [
            ExampleSet(TOY_EXAMPLES_LABEL, toy_images, "examples"),
            ExampleSet("From --examples-dir", yours, "examples-yours"),
            ExampleSet(OUTSIDE_LABEL, photos, "examples-outside"),
        ]
    else:
        sets = [ExampleSet("Examples", yours + photos, "examples")]
    return [example_set for example_set in sets if example_set.examples]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Base and trained answers side by side, with where the block looked.")
    parser.add_argument(
        "--model-path", help="the trained model (any folder load_pretrained_model opens); default: the toy model"
    )
    parser.add_argument("--model-base", default=None, help="the base, when --model-path holds only a block")
    parser.add_argument(
        "--base-model-path",
        default=None,
        help="the model to compare with; default: the trained model with its block bypassed",
    )
    parser.add_argument("--examples-dir", action="append", default=[], help="a folder of example images (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--max-file-size", default="10mb", help="largest upload, e.g. 10mb")
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="largest image, counted on the square LLaVA-1.5 pads it to (the longer side squared), checked before "
        "decoding; default 40000000",
    )
    for bound in ("min", "max"):
        parser.add_argument(
            f"--{bound}-pixels",
            f"--{bound}_pixels",  # POPE's spelling
            type=positive_int,
            default=None,
            help=f"the {bound}imum pixels the image processor resizes an image to (Qwen-VL, whose token count "
            "follows the image; default: the model folder's own); a model with one image size refuses it",
        )
    parser.add_argument("--queue-size", type=int, default=16, help="requests that may wait for the model")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the page's starting value")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: float16 on cuda, float32 on cpu"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error at start")
    return parser.parse_args(argv)


def check_model_location(flag: str, path: str | None):
    """A local folder, or what may be a Hugging Face Hub id; anything else is a mistyped folder."""
    if path is None:
        return
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", POST_DECODER_CONFIG)):
            raise InputError(
                f"{flag} {path} has no config.json nor {POST_DECODER_CONFIG}: "
                "pass the folder a model or block was saved in"
            )
        return
    if os.path.exists(path):
        raise InputError(f"{flag} {path} is a file: pass the folder that holds config.json")
    if os.path.isabs(path) or path.startswith(".") or not HUB_ID.fullmatch(path):
        raise InputError(f"{flag} {path}: no such folder; pass a saved model's folder or a Hugging Face model id")


def load_page_models(args, model_path: str, model_base: str | None, labels):
    locations = (
        ("--model-path", model_path),
        ("--model-base", model_base),
        ("--base-model-path", args.base_model_path),
    )
    for flag, path in locations:
        check_model_location(flag, path)
    try:
        return load_models(
            model_path,
            model_base,
            args.base_model_path,
            device=args.device,
            dtype=DTYPES.get(args.dtype),
            labels=labels,
            image_options={
                name: value
                for name, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels))
                if value is not None
            },
        )
    except (OSError, ValueError) as error:  # a folder or hub id that is not a loadable model: say which, in one line
        if isinstance(error, InputError):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        given = [(flag, path) for flag, path in locations if path is not None]
        named = ", ".join(
            f"{flag} {path}"
            + ("" if os.path.isdir(path) else " (not a folder here, so tried as a Hugging Face model id)")
            for flag, path in given
        )
        raise InputError(f"cannot load {named}: {first_line}") from error


def create_app(args):
    """(blocks, launch keyword arguments): the page with its models loaded, and how to serve it."""
    model_path, model_base, labels = args.model_path, args.model_base, None
    if model_path is None:
        model_path, model_base = default_model_paths()
        labels = None if args.base_model_path else TOY_LABELS
    trained, base = load_page_models(args, model_path, model_base, labels)
    toy = is_toy_model(model_path, model_base, args.base_model_path)
    blocks = build_page(
        trained, base, example_sets(args.examples_dir, toy), args.max_new_tokens, args.max_image_pixels, toy=toy
    )
    blocks.queue(default_concurrency_limit=1, max_size=args.queue_size)
    launch = dict(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=args.max_file_size,
        css=PAGE_CSS,
    )
    return blocks, launch


def start(blocks, launch: dict, wait: bool = True):
    """Serve the page and say where, in our words (gradio's own start-up lines point to its code)."""
    blocks.launch(quiet=True, prevent_thread_lock=True, **launch)
    print(f"* The page: {blocks.local_url}", flush=True)
    if blocks.share_url:
        print(f"* Public link (anyone who has it can use the page): {blocks.share_url}", flush=True)
    else:
        print("* No public link: start with --share to make one (a gradio.live address anyone can open).", flush=True)
    if wait:
        blocks.block_thread()


def serve(argv=None):
    args = parse_args(argv)
    blocks, launch = create_app(args)
    Image.MAX_IMAGE_PIXELS = args.max_image_pixels  # PIL's own guard follows the flag (in this process only)
    start(blocks, launch)


def main(argv=None):
    return run_command(serve, argv)


if __name__ == "__main__":
    main()
