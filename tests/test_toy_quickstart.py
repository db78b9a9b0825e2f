"""The README's quickstart on fixed seeds, with fewer POPE images: stage 1 of the block really fixes the
toy base model's hallucination, in yes/no answers and in descriptions, through what the block sees of the
image; the block without cross-attention, trained on the same pairs, changes neither."""

import json
import os

import numpy as np
import pytest

from eval.build_pope import article
from ha_dpo.toy import DEFAULT_BLOCK, DEFAULT_CHECKPOINT
from ha_dpo.toy.empty_picture import block_shown_an_empty_picture, empty_picture_features
from ha_dpo.toy.quickstart import chair, main, pope, train_stage1
from ha_dpo.toy.text import ANSWER_STARTS
from post_decoder.errors import InputError
from tests.helpers.charts import (
    BLUE,
    ORANGE,
    assert_bars_show,
    assert_curve_panels,
    assert_pope_chart,
    chart_pixels,
)

POPE_IMAGES = 150  # per POPE set: the quickstart's default
CHAIR_IMAGES = 300  # the quickstart's default, every held-out image: CHAIR is cheap, and few descriptions are noisy
RECALL_DROP_POINTS = 5  # the most recall (in points) the block may lose while it cuts CHAIR_i
CONTROL_F1_CHANGE = 1  # the most F1 or recall (points) the no_cross_attn block may change


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quickstart") / "run")
    return out, main(["--out", out, "--pope-images", str(POPE_IMAGES)])


@pytest.fixture(scope="module")
def control(quickstart, tmp_path_factory):
    """The block without cross-attention, trained as the quickstart's (same world, pairs, recipe, seed and
    backbone cache): its POPE metrics and its CHAIR."""
    out, _ = quickstart
    trained = str(tmp_path_factory.mktemp("control") / "stage1")
    world = os.path.join(out, "world")
    train_stage1(
        world, trained, DEFAULT_CHECKPOINT, 0, "no_cross_attn", {"backbone_cache": os.path.join(out, "backbone_cache")}
    )
    control_pope = pope(world, trained, trained, DEFAULT_CHECKPOINT)
    return control_pope, chair(world, trained, trained, CHAIR_IMAGES, DEFAULT_CHECKPOINT)


def f1_changes(base: dict, trained: dict) -> dict[str, float]:
    """Per set, in points."""
    return {name: 100 * (trained[name]["f1"] - base[name]["f1"]) for name in base}


def relative_change(before: float, after: float) -> float:
    return (after - before) / before


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
        saved = json.load(handle)
    assert saved["metrics"] == results["metrics"] and saved["chair"] == results["chair"]


@pytest.mark.slow
def test_stage1_cuts_chair_i_by_a_third_and_keeps_recall(quickstart):
    out, results = quickstart
    base, stage1 = results["chair"]["base"], results["chair"]["stage1"]
    print({run: (metrics["chair_i"], metrics["recall"]) for run, metrics in results["chair"].items()})
    assert base["descriptions"] == stage1["descriptions"] == CHAIR_IMAGES
    assert base["chair_i"] >= 0.15  # the base names absent partners
    assert relative_change(base["chair_i"], stage1["chair_i"]) <= -1 / 3
    assert 100 * (base["recall"] - stage1["recall"]) <= RECALL_DROP_POINTS
    for run in ("base", "stage1"):
        with open(os.path.join(out, run, "chair_metrics.json")) as handle:
            assert json.load(handle)["chair_i"] == results["chair"][run]["chair_i"]
    assert "CHAIR_i change:" in open(os.path.join(out, "results.md")).read()


@pytest.mark.slow
def test_the_chart_shows_pope_above_chair(quickstart):
    out, results = quickstart
    chair_chart = chart_pixels(os.path.join(out, "chair_comparison.png"), (1440, 540))
    rates = chair_chart[:, : 1440 * 10 // 23]  # the rates panel (1 of the figure's 1 : 1.3 widths)
    for colour, run in ((BLUE, "base"), (ORANGE, "stage1")):
        metrics = results["chair"][run]
        assert_bars_show(rates, colour, [100 * metrics[name] for name in ("chair_s", "chair_i", "recall")], top=60)
    both = chart_pixels(os.path.join(out, "comparison.png"), (1440, 480 + 540))
    pope_chart = chart_pixels(os.path.join(out, "pope_comparison.png"), (1200, 480))
    assert np.array_equal(both[:480, :1200], pope_chart) and np.array_equal(both[480:], chair_chart)


@pytest.mark.slow
def test_the_block_without_cross_attention_does_not_fix_the_yes_no_answers(quickstart, control):
    # The training text names a partner next to its anchor whether or not it is there, and nothing else in the
    # image says whether it is: a block that only re-reads the LLM's state has nothing to go on.
    _, results = quickstart
    control_pope, _ = control
    changes = f1_changes(results["metrics"]["base"], control_pope)
    print({"control": changes})
    assert all(abs(change) <= CONTROL_F1_CHANGE for change in changes.values())


@pytest.mark.slow
def test_the_block_without_cross_attention_leaves_the_descriptions_as_they_were(quickstart, control):
    _, results = quickstart
    _, control_chair = control
    base = results["chair"]["base"]
    print({"control": (control_chair["chair_i"], control_chair["recall"])})
    assert abs(relative_change(base["chair_i"], control_chair["chair_i"])) < 0.1
    assert abs(100 * (base["recall"] - control_chair["recall"])) <= CONTROL_F1_CHANGE


@pytest.mark.slow
def test_trained_answers_stay_well_formed(quickstart):
    # DPO can win its loss by making both answers unlikely; the SFT term keeps the template's answers.
    out, _ = quickstart
    with open(os.path.join(out, "stage1", "pope_answers.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    assert len(records) == 3 * 6 * POPE_IMAGES
    for record in records:
        name = record["prompt"].split()[3]
        named_first = f"{article(name).capitalize()} {name}? "
        assert record["answer"].startswith(tuple(named_first + start for start in ANSWER_STARTS)), record


@pytest.mark.slow
def test_the_gain_comes_through_what_the_block_sees(quickstart, tmp_path):
    # The trained block, shown an empty picture while the backbone still sees the real image: its POPE gain
    # must go, and in descriptions it must stop naming the partners it no longer sees, present ones too
    # (measured at seed 0: recall 98.0 -> 75.0, CHAIR_i 1.3 -> 3.6). A block that cannot see the image (or
    # an untouched identity) would not change.
    out, results = quickstart
    trained, world = os.path.join(out, "stage1"), os.path.join(out, "world")
    with block_shown_an_empty_picture(empty_picture_features(DEFAULT_CHECKPOINT)):
        shown_empty = pope(world, str(tmp_path), trained, DEFAULT_CHECKPOINT)
        chair_shown_empty = chair(world, str(tmp_path), trained, CHAIR_IMAGES, DEFAULT_CHECKPOINT)
    changes = f1_changes(results["metrics"]["stage1"], shown_empty)
    print(changes, {"shown empty": (chair_shown_empty["chair_i"], chair_shown_empty["recall"])})
    assert changes["adversarial"] <= -5 and changes["random"] <= -5
    assert 100 * (results["chair"]["stage1"]["recall"] - chair_shown_empty["recall"]) >= 10


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
