"""eval/chair_eval_post.py: batched descriptions equal per-image `generate` token for token (every block
variant; EOS banned, and stopping at EOS), and the command end to end on the toy base model with a small
COCO-format annotation set: the sample, the descriptions file, the metrics as eval.chair_report scores it,
resume, --image-ids, missing images, bad flags, torchrun."""

import copy
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eval import chair_eval_post
from eval.chair_images import image_pool, read_listed_images, sample_images
from eval.chair_report import main as chair_report_main
from eval.description_generation import BatchedDescriber
from ha_dpo.toy import DEFAULT_BLOCK, DEFAULT_CHECKPOINT, DEFAULT_EXAMPLES
from post_decoder import VARIANTS, PostDecoderConfig
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError, run_command
from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config
from post_decoder.images import open_image, preprocess_images
from tests.helpers import add_noise, eos_banned, free_port, with_block
from tests.helpers.charts import BLUE, assert_bars_show, chart_pixels
from tests.helpers.coco import ANNOTATIONS, write_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "Please describe this image in detail."
VAL_IDS = sorted(ANNOTATIONS)  # 101..105, the images of instances_val2014.json / captions_val2014.json
TRAIN_ANNOTATIONS = {201: (["cat"], ["A cat on a sofa."]), 202: (["car"], ["A red car."])}  # no image files


# --- batched descriptions against per-image generate --------------------------------------------------


def per_image_generate(model, tokenizer, processor, picture, max_new_tokens, conv_mode="vicuna_v1"):
    """The plain way: one image, its whole prompt, `generate`; the new tokens."""
    config = model.config
    prompt = question_prompt(PROMPT, with_image=True, conv_mode=conv_mode)
    ids = torch.tensor([tokenize_with_image(prompt, tokenizer, config.image_token_id, config.image_seq_length)])
    with torch.no_grad():
        output = model.generate(
            input_ids=ids,
            pixel_values=preprocess_images([picture], processor),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return output[0, ids.shape[1] :].tolist()


class RecordedGenerate:
    """Wraps `model.generate` to keep each call's rows of new tokens."""

    def __init__(self, model):
        self.model, self.original, self.rows, self.batch_sizes = model, model.generate, [], []

    def __call__(self, *args, **kwargs):
        output = self.original(*args, **kwargs)
        self.batch_sizes.append(output.shape[0])
        self.rows += output[:, kwargs["input_ids"].shape[1] :].tolist()
        return output

    def __enter__(self):
        self.model.generate = self
        return self

    def __exit__(self, *exc):
        del self.model.generate


def up_to_eos(tokens, eos, pad):
    """A batched row cut after its first EOS; what follows must be padding."""
    if eos not in tokens:
        return tokens
    end = tokens.index(eos) + 1
    assert set(tokens[end:]) <= {pad}, f"tokens after EOS that are not padding: {tokens[end:]}"
    return tokens[:end]


def assert_batched_equals_per_image(model, tokenizer, processor, pictures, max_new_tokens, batch_size):
    """Descriptions in batches of `batch_size` equal per-image generate, token for token; returns the
    per-image token lists."""
    describer = BatchedDescriber(model, tokenizer, processor, PROMPT, max_new_tokens, batch_size)
    with RecordedGenerate(model) as recorded:
        texts = describer.describe(pictures)
    assert recorded.batch_sizes == [
        min(batch_size, len(pictures) - start) for start in range(0, len(pictures), batch_size)
    ]
    expected = [per_image_generate(model, tokenizer, processor, picture, max_new_tokens) for picture in pictures]
    eos, pad = model.generation_config.eos_token_id, tokenizer.pad_token_id
    assert [up_to_eos(row, eos, pad) for row in recorded.rows] == expected
    assert texts == [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in expected]
    return expected


@pytest.fixture(scope="module")
def tiny_processor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(32)))
    return load_image_processor(str(folder))


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_batched_descriptions_equal_per_image_generate_with_eos_banned(
    plain_llava, llava_tokenizer, tiny_processor, variant
):
    model = plain_llava if variant is None else with_block(plain_llava, variant, perturb=0.3)
    # Far-apart images: a random tiny model's output barely depends on the image otherwise.
    pictures = [
        Image.new("RGB", (40, 30 + 7 * k), colour)
        for k, colour in enumerate(((0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 0, 255)))
    ]
    pictures.append(Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)))
    with eos_banned(model):  # every row runs to its limit: whole continuations are compared
        expected = assert_batched_equals_per_image(model, llava_tokenizer, tiny_processor, pictures, 12, batch_size=3)
    assert all(len(tokens) == 12 for tokens in expected)
    assert len({tuple(tokens) for tokens in expected}) > 1  # rows differ: a mix-up of images would show


@pytest.fixture(scope="module")
def toy_model():
    tokenizer, model, processor, _ = load_pretrained_model(DEFAULT_CHECKPOINT)
    return tokenizer, model, processor


@pytest.fixture(scope="module")
def toy_pictures():
    return [open_image(path) for path in sorted(glob.glob(os.path.join(DEFAULT_EXAMPLES, "*.jpg")))]


@pytest.mark.parametrize("variant", [None, "trained", *VARIANTS])
def test_batched_descriptions_equal_per_image_generate_stopping_at_eos(toy_model, toy_pictures, variant):
    """The toy base model describes its images and stops at </s>: rows of one batch end at different steps."""
    tokenizer, model, processor = toy_model
    if variant == "trained":
        tokenizer, model, processor, _ = load_pretrained_model(DEFAULT_BLOCK, model_base=DEFAULT_CHECKPOINT)
    elif variant is not None:  # a new block moved off its identity start: descriptions change, some stop later
        model = copy.deepcopy(model)
        model.attach_post_decoder(PostDecoderConfig(variant=variant))
        add_noise(model.post_decoder, 0.1, seed=0)
    max_new_tokens = 48
    expected = assert_batched_equals_per_image(model, tokenizer, processor, toy_pictures, max_new_tokens, 4)
    eos = model.generation_config.eos_token_id
    stopped = [tokens for tokens in expected if tokens[-1] == eos and len(tokens) < max_new_tokens]
    assert stopped and len({len(tokens) for tokens in expected}) > 1


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """annotations/ with val2014 (5 images, all in val2014/) and train2014 files (2 images, none present);
    val2014/ holds the toy examples under COCO's file names."""
    root = tmp_path_factory.mktemp("chair_cli")
    write_coco(root / "annotations")
    train = write_coco(root / "train", TRAIN_ANNOTATIONS)
    for kind in ("instances", "captions"):
        os.replace(os.path.join(train, f"{kind}_val2014.json"), root / "annotations" / f"{kind}_train2014.json")
    (root / "val2014").mkdir()
    examples = sorted(glob.glob(os.path.join(DEFAULT_EXAMPLES, "*.jpg")))
    for image_id, example in zip(VAL_IDS, examples):
        shutil.copy(example, root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    return root


def cli_args(workspace, answers, *extra, images=None):
    return [
        "--model-path", DEFAULT_CHECKPOINT, "--coco_path", str(images or workspace / "val2014"),
        "--annotations", str(workspace / "annotations"), "--answers-file", str(answers),
        "--max-new-tokens", "32", "--batch-size", "3", *extra,
    ]  # fmt: skip


def read_lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_the_sample_is_seeded_and_drawn_from_the_annotated_images_of_coco_path(workspace):
    listed = read_listed_images([str(workspace / "annotations")])
    pool = image_pool(listed, str(workspace / "val2014"))
    assert [image.image_id for image in pool] == VAL_IDS  # the train2014 files describe no image there
    samples = {seed: [image.image_id for image in sample_images(pool, 3, seed)] for seed in range(6)}
    assert all(samples[seed] == random.Random(seed).sample(VAL_IDS, 3) for seed in samples)
    assert [image.image_id for image in sample_images(pool, 3, 0)] == samples[0]  # again: the same
    assert len({tuple(sample) for sample in samples.values()}) > 1
    with pytest.raises(InputError, match=r"--num-images 6: the annotation files list only 5 images"):
        sample_images(pool, 6, 0)


def test_a_run_describes_the_sample_and_scores_it_as_chair_report_does(workspace, tmp_path, capsys):
    answers = tmp_path / "chair.jsonl"
    metrics = chair_eval_post.main(cli_args(workspace, answers, "--num-images", "4", "--seed", "1"))
    records = read_lines(answers)
    assert [record["image_id"] for record in records] == sorted(random.Random(1).sample(VAL_IDS, 4))
    assert set(records[0]) == {"image_id", "image", "prompt", "caption", "model_id"}
    assert all(record["caption"].startswith("The image shows") and record["prompt"] == PROMPT for record in records)
    assert not glob.glob(f"{answers}.part*")
    written = json.loads((tmp_path / "chair_metrics.json").read_text())
    assert written == metrics and metrics["descriptions"] == 4
    chair_report_main(["--descriptions", str(answers), "--annotations", str(workspace / "annotations"),
                       "--metrics-file", str(tmp_path / "scored.json")])  # fmt: skip
    assert json.loads((tmp_path / "scored.json").read_text()) == written
    table = capsys.readouterr().out
    assert re.search(
        r"checkpoint\s+" + r"\s+".join(f"{100 * metrics[name]:.2f}" for name in ("chair_s", "chair_i")), table
    )
    # the chart: CHAIR_s, CHAIR_i and recall as three bars in the left panel
    rates = chart_pixels(tmp_path / "chair_metrics.png", (1440, 540))[:, :600]
    assert_bars_show(rates, BLUE, [100 * metrics[name] for name in ("chair_s", "chair_i", "recall")], top=70)


def test_image_ids_fix_the_list(workspace, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("105\n\n102\n")
    chair_eval_post.main(cli_args(workspace, tmp_path / "a.jsonl", "--image-ids", str(ids)))
    assert [record["image_id"] for record in read_lines(tmp_path / "a.jsonl")] == [102, 105]
    settings = json.loads((tmp_path / "a.jsonl.settings.json").read_text())
    assert (settings["image_seed"], settings["image_count"]) == (None, 2)
    assert settings["conv_mode"] == "vicuna_v1"  # without --conv-mode: the family's own, recorded as such
    for text, message in (
        ("105\nabc\n", r"ids.txt:2: 'abc' is not a COCO image id"),
        ("105\n105\n", r"ids.txt:2: image id 105 again \(first on line 1\)"),
        ("999\n", r"image id 999 is in none of the annotation files"),
    ):
        ids.write_text(text)
        with pytest.raises(InputError, match=message):
            chair_eval_post.main(cli_args(workspace, tmp_path / "b.jsonl", "--image-ids", str(ids)))
    with pytest.raises(InputError, match="--image-ids names the images: --num-images and --seed are for a sample"):
        chair_eval_post.main(cli_args(workspace, tmp_path / "b.jsonl", "--image-ids", str(ids), "--seed", "3"))
    assert not os.path.exists(tmp_path / "b.jsonl")


def test_an_interrupted_run_resumes_where_it_stopped(workspace, tmp_path, monkeypatch):
    complete = tmp_path / "complete.jsonl"
    chair_eval_post.main(cli_args(workspace, complete, "--num-images", "5"))
    lines = complete.read_text().splitlines(keepends=True)
    interrupted = tmp_path / "interrupted.jsonl"
    shutil.copy(f"{complete}.settings.json", f"{interrupted}.settings.json")
    with open(f"{interrupted}.part0", "w") as handle:  # 2 descriptions written, the 3rd cut off mid-line
        handle.writelines(lines[:2])
        handle.write(lines[2][:15])
    described = []
    original = BatchedDescriber.describe
    monkeypatch.setattr(BatchedDescriber, "describe", lambda self, pictures: described.append(len(pictures))
                        or original(self, pictures))  # fmt: skip
    chair_eval_post.main(cli_args(workspace, interrupted, "--num-images", "5", "--resume"))
    assert interrupted.read_text() == complete.read_text()
    assert sum(described) == 3  # the torn one and the two never started; nothing described twice


def test_resume_refuses_another_model_prompt_or_sample(workspace, tmp_path):
    answers = tmp_path / "chair.jsonl"
    chair_eval_post.main(cli_args(workspace, answers, "--num-images", "3"))
    before = answers.read_text()
    with pytest.raises(InputError, match=r"chair.jsonl \(or its parts\) exists: pass --resume"):
        chair_eval_post.main(cli_args(workspace, answers, "--num-images", "3"))
    another_model = cli_args(workspace, answers, "--num-images", "3", "--resume")
    another_model[1:2] = [DEFAULT_BLOCK, "--model-base", DEFAULT_CHECKPOINT]
    for args, difference in (
        (another_model, f"model '{DEFAULT_CHECKPOINT}' there, '{DEFAULT_BLOCK}' now"),
        (cli_args(workspace, answers, "--num-images", "3", "--resume", "--prompt", "Describe it."),
         f"prompt '{PROMPT}' there, 'Describe it.' now"),
        (cli_args(workspace, answers, "--num-images", "3", "--resume", "--seed", "4"), "image_seed 0 there, 4 now"),
        (cli_args(workspace, answers, "--num-images", "4", "--resume"), "image_count 3 there, 4 now"),
    ):  # fmt: skip
        with pytest.raises(InputError, match="holds answers written with other settings") as error:
            chair_eval_post.main(args)
        assert difference in str(error.value)
    assert answers.read_text() == before


def test_a_missing_image_is_named_or_counted(workspace, tmp_path, capsys):
    images = tmp_path / "val2014"
    images.mkdir()
    with pytest.raises(InputError, match="none of the images listed in .*instances_val2014.json.* is in it"):
        chair_eval_post.main(cli_args(workspace, tmp_path / "a.jsonl", images=images))
    images.rmdir()
    shutil.copytree(workspace / "val2014", images)
    os.remove(images / "COCO_val2014_000000000103.jpg")
    (images / "COCO_val2014_000000000104.jpg").write_bytes(b"not a jpeg")
    expected = (
        f"image {images / 'COCO_val2014_000000000103.jpg'} is missing (image_id 103, listed in "
        f"{workspace / 'annotations' / 'instances_val2014.json'}"
    )
    with pytest.raises(InputError, match=re.escape(expected)):
        chair_eval_post.main(cli_args(workspace, tmp_path / "a.jsonl", "--num-images", "5", images=images))
    metrics = chair_eval_post.main(
        cli_args(workspace, tmp_path / "b.jsonl", "--num-images", "5", "--skip-missing", images=images)
    )
    assert "skipped 2 missing or unreadable images" in capsys.readouterr().out
    assert metrics["descriptions"] == 3
    assert [record["image_id"] for record in read_lines(tmp_path / "b.jsonl")] == [101, 102, 105]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--num-images", "0"], "--num-images must be at least 1, got 0"),
        (["--prompt", "  "], "--prompt is empty"),
        (["--num-images", "9"], "--num-images 9: the annotation files list only 5 images"),
        (["--annotations", "nowhere"], "--annotations: nowhere: no such file or folder"),
        (["--coco_path", "nowhere"], "--coco_path nowhere: no such folder"),
    ],
)
def test_bad_flags_exit_2_in_one_line(workspace, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        run_command(chair_eval_post.main, cli_args(workspace, tmp_path / "a.jsonl", *extra), "chair_eval_post.py")
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("chair_eval_post.py: error: ") and message in error and error.count("\n") == 1
    assert not os.path.exists(tmp_path / "a.jsonl")


@pytest.mark.slow
def test_torchrun_on_two_processes_writes_the_same_descriptions_as_one(workspace, tmp_path):
    one = tmp_path / "one.jsonl"
    chair_eval_post.main(cli_args(workspace, one, "--num-images", "5"))
    two = tmp_path / "two.jsonl"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        os.path.join(ROOT, "eval", "chair_eval_post.py"), *cli_args(workspace, two, "--num-images", "5"),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert two.read_text() == one.read_text()
    assert json.loads((tmp_path / "two_metrics.json").read_text())["descriptions"] == 5


def test_descriptions_default_to_the_template_the_model_answers_in():
    """A Vicuna MiniGPT-4 describes in minigpt4_vicuna0 (`family.default_conv_mode_for`), not its family's first
    template (the Llama-2 version's)."""
    from eval.description_generation import BatchedDescriber
    from post_decoder.families.minigpt4.tiny import make_tiny_minigpt4
    from post_decoder.family import family_for

    vicuna = make_tiny_minigpt4(300, has_qformer=True)
    assert family_for(vicuna).default_conv_mode != "minigpt4_vicuna0"
    assert BatchedDescriber(vicuna, None, None).conv_mode == "minigpt4_vicuna0"
