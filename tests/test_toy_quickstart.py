"""The README's quickstart on fixed seeds, with fewer POPE images: stage 1 of the block really fixes
the toy base model's hallucination, and a block that cannot see the image does not."""

import json
import os

import pytest

from ha_dpo.toy import DEFAULT_BLOCK, DEFAULT_CHECKPOINT
from ha_dpo.toy.quickstart import main, pope, train_stage1

POPE_IMAGES = 60


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quickstart") / "run")
    return out, main(["--out", out, "--pope-images", str(POPE_IMAGES)])


def f1_changes(base: dict, trained: dict) -> dict[str, float]:
    """Per set, in points."""
    return {name: 100 * (trained[name]["f1"] - base[name]["f1"]) for name in base}


def test_stage1_raises_adversarial_f1_and_keeps_random_and_popular(quickstart):
    out, results = quickstart
    changes = f1_changes(results["metrics"]["base"], results["metrics"]["stage1"])
    print(changes)
    assert changes["adversarial"] >= 5
    assert changes["random"] >= -1 and changes["popular"] >= -1
    for name in ("results.md", "pope_comparison.png", "stage1/post_decoder.safetensors", "stage1/training_curves.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "results.json")) as handle:
        assert json.load(handle)["metrics"] == results["metrics"]


def test_trained_answers_stay_well_formed(quickstart):
    # DPO can win its loss by making both answers unlikely; the SFT term keeps the template's answers.
    out, _ = quickstart
    with open(os.path.join(out, "stage1", "pope_answers.jsonl")) as handle:
        answers = [json.loads(line)["answer"] for line in handle]
    assert len(answers) == 3 * 6 * POPE_IMAGES
    assert all(answer.startswith(("Yes, there is a", "No, there is no")) for answer in answers), answers[:5]


def test_a_block_that_cannot_see_the_image_does_not_clear_the_bar(quickstart, tmp_path):
    # The same recipe with the block's cross-attention removed: the +5 bar above must separate them.
    out, results = quickstart
    world, trained = os.path.join(out, "world"), str(tmp_path / "no_cross_attn")
    train_stage1(world, trained, DEFAULT_CHECKPOINT, seed=0, variant="no_cross_attn", extra=["--plot", "False"])
    changes = f1_changes(results["metrics"]["base"], pope(world, trained, trained, DEFAULT_CHECKPOINT))
    print(changes)
    assert changes["adversarial"] < 2


def test_the_committed_block_is_a_quickstart_block(quickstart, tmp_path):
    # ha_dpo/toy/block (the demo's default) is the quickstart's stage-1 block at seed 0.
    out, results = quickstart
    committed = pope(os.path.join(out, "world"), str(tmp_path), DEFAULT_BLOCK, DEFAULT_CHECKPOINT)
    assert f1_changes(results["metrics"]["base"], committed)["adversarial"] >= 5


def test_quickstart_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        main(["--out", str(tmp_path)])
