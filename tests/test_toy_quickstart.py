"""The README's quickstart on fixed seeds, with fewer POPE images: stage 1 of the block really fixes
the toy base model's hallucination, through what the block sees of the image."""

import json
import os

import pytest
import torch
from PIL import Image

from ha_dpo.toy import DEFAULT_BLOCK, DEFAULT_CHECKPOINT
from ha_dpo.toy.quickstart import main, pope
from post_decoder.block import PostInteractionBlock
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image
from post_decoder.images import preprocess_images
from tests.helpers.charts import BLUE, ORANGE, assert_curve_panels, assert_pope_chart

POPE_IMAGES = 60


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quickstart") / "run")
    return out, main(["--out", out, "--pope-images", str(POPE_IMAGES)])


def f1_changes(base: dict, trained: dict) -> dict[str, float]:
    """Per set, in points."""
    return {name: 100 * (trained[name]["f1"] - base[name]["f1"]) for name in base}


@pytest.mark.slow
def test_stage1_raises_adversarial_f1_and_keeps_random_and_popular(quickstart):
    out, results = quickstart
    changes = f1_changes(results["metrics"]["base"], results["metrics"]["stage1"])
    print(changes)
    assert changes["adversarial"] >= 5
    assert changes["random"] >= -1 and changes["popular"] >= -1
    for name in ("results.md", "stage1/post_decoder.safetensors"):
        assert os.path.isfile(os.path.join(out, name)), name
    base, stage1 = results["metrics"]["base"], results["metrics"]["stage1"]
    assert_pope_chart(os.path.join(out, "pope_comparison.png"), {BLUE: base, ORANGE: stage1})
    assert_curve_panels(os.path.join(out, "stage1", "training_curves.png"), 3)  # loss, reward margin and accuracy
    with open(os.path.join(out, "results.json")) as handle:
        assert json.load(handle)["metrics"] == results["metrics"]


@pytest.mark.slow
def test_trained_answers_stay_well_formed(quickstart):
    # DPO can win its loss by making both answers unlikely; the SFT term keeps the template's answers.
    out, _ = quickstart
    with open(os.path.join(out, "stage1", "pope_answers.jsonl")) as handle:
        answers = [json.loads(line)["answer"] for line in handle]
    assert len(answers) == 3 * 6 * POPE_IMAGES
    assert all(answer.startswith(("Yes, there is a", "No, there is no")) for answer in answers), answers[:5]


def blank_image_features() -> torch.Tensor:
    """The toy tower's features of an image with no object in it, as the block receives them."""
    tokenizer, model, image_processor, _ = load_pretrained_model(DEFAULT_CHECKPOINT, device="cpu", dtype=torch.float32)
    config = model.config
    input_ids = torch.tensor(
        [tokenize_with_image(question_prompt("?"), tokenizer, config.image_token_id, config.image_seq_length)]
    )
    pixel_values = preprocess_images([Image.new("RGB", (64, 64), (240, 240, 240))], image_processor)
    with torch.no_grad():
        return model.backbone_forward(input_ids=input_ids, pixel_values=pixel_values).vision_features


@pytest.mark.slow
def test_the_gain_comes_through_what_the_block_sees(quickstart, tmp_path, monkeypatch):
    # The trained block, shown an empty picture while the backbone still sees the real image: its
    # gain must go. A block that cannot see the image (or an untouched identity) would not change.
    out, results = quickstart
    blank = blank_image_features()
    encode_vision = PostInteractionBlock.encode_vision

    def sees_a_blank_image(block, features, mask, batch_size):
        return encode_vision(
            block, None if features is None else blank.expand(features.shape[0], -1, -1), mask, batch_size
        )

    monkeypatch.setattr(PostInteractionBlock, "encode_vision", sees_a_blank_image)
    trained = os.path.join(out, "stage1")
    shown_blank = pope(os.path.join(out, "world"), str(tmp_path), trained, DEFAULT_CHECKPOINT)
    changes = f1_changes(results["metrics"]["stage1"], shown_blank)
    print(changes)
    assert changes["adversarial"] <= -5 and changes["random"] <= -5


@pytest.mark.slow
def test_the_committed_block_is_a_quickstart_block(quickstart, tmp_path):
    # ha_dpo/toy/block (the demo's default) is the quickstart's stage-1 block at seed 0.
    out, results = quickstart
    committed = pope(os.path.join(out, "world"), str(tmp_path), DEFAULT_BLOCK, DEFAULT_CHECKPOINT)
    assert f1_changes(results["metrics"]["base"], committed)["adversarial"] >= 5


def test_quickstart_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        main(["--out", str(tmp_path)])
