"""The toy world on Qwen2.5-VL: the committed tiny base (ha_dpo/toy/qwen_checkpoint, made by
scripts/make_toy_qwen_base.py) sees each toy object as one merged token, hallucinates absent partners, and the
quickstart's stage-1 DPO of the block (the same recipe as LLaVA's) fixes that on POPE's adversarial set without
costing the random and popular sets."""

import json
import os
import subprocess
import sys

import pytest
import torch

from eval.build_pope import question_text
from eval.pope_scoring import parse_yes_no
from ha_dpo.toy.quickstart import main as quickstart_main
from ha_dpo.toy.qwen_base import (
    QWEN_CHECKPOINT,
    QwenBaseConfig,
    image_tokens,
    toy_image_processor,
)
from ha_dpo.toy.world import WorldConfig, draw, generate_world
from post_decoder.builder import load_pretrained_model
from post_decoder.family import family_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POPE_IMAGES = 150  # per POPE set: the quickstart's default


def test_every_toy_image_gets_one_merged_token_per_cell():
    config = QwenBaseConfig()
    processor = toy_image_processor(config)
    picture = draw(generate_world(WorldConfig(splits={"train": 1, "dpo": 0, "val": 0}))[0], config.image_size)
    grid = processor(images=[picture], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8]]  # 8-pixel patches; 2x2 merges: 4x4 tokens of 16 pixels, the world's cells
    assert image_tokens(config) == (WorldConfig().image_size // WorldConfig().cell) ** 2 == 16


def test_the_committed_base_is_a_small_plain_qwen2_5_vl():
    tokenizer, model, processor, _ = load_pretrained_model(QWEN_CHECKPOINT, device="cpu", dtype=torch.float32)
    assert family_for(model).name == "Qwen2.5-VL"
    assert model.post_decoder is None
    with open(os.path.join(QWEN_CHECKPOINT, "config.json")) as handle:
        assert json.load(handle)["model_type"] == "qwen2_5_vl"  # the hub's model type, no block
    assert processor.size["shortest_edge"] == processor.size["longest_edge"] == 64 * 64
    megabytes = sum(os.path.getsize(os.path.join(QWEN_CHECKPOINT, name)) for name in os.listdir(QWEN_CHECKPOINT))
    assert megabytes / 2**20 < 2.5


def test_the_script_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    script = os.path.join(ROOT, "scripts", "make_toy_qwen_base.py")
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "not empty" in done.stderr
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`python -m ha_dpo.toy.quickstart --backbone qwen2_5_vl`: the world (pope_data answered by the Qwen base), POPE,
    stage 1 (LLaVA's recipe), POPE (CHAIR on a few images: not asserted here)."""
    out = str(tmp_path_factory.mktemp("toy_qwen") / "run")
    results = quickstart_main(
        ["--out", out, "--backbone", "qwen2_5_vl", "--pope-images", str(POPE_IMAGES), "--chair-images", "30"]
    )
    assert results["base_model"] == QWEN_CHECKPOINT
    return out, os.path.join(out, "world"), results["metrics"]


def yes_rates_on_absent_objects(world: str, answers_path: str, question_set: str) -> tuple[float, float]:
    """(P(yes | an absent partner of a present anchor), P(yes | any other absent object)) in one set's answers."""
    val = {image.image_id: image for image in generate_world(WorldConfig()) if image.split == "val"}
    with open(os.path.join(world, "pope", f"coco_pope_{question_set}.json")) as handle:
        questions = {question["question_id"]: question for question in map(json.loads, handle)}
    partners, others = [], []
    with open(answers_path) as handle:
        for answer in map(json.loads, handle):
            question = questions[answer["question_id"]]
            if answer["set"] != question_set or question["label"] != "no":
                continue
            image = val[int(question["image"].rsplit("_", 1)[1].split(".")[0])]
            asked_partner = any(question["text"] == question_text(name) for name in image.absent_partners())
            (partners if asked_partner else others).append(parse_yes_no(answer["answer"]) == "yes")
    assert partners and others
    return sum(partners) / len(partners), sum(others) / len(others)


@pytest.mark.slow
def test_the_base_hallucinates_absent_partners(quickstart):
    out, world, metrics = quickstart
    answers = os.path.join(out, "base", "pope_answers.jsonl")
    partner_yes, other_yes = yes_rates_on_absent_objects(world, answers, "adversarial")
    print({"partner_yes": partner_yes, "other_yes": other_yes, "base": metrics["base"]})
    assert partner_yes >= 0.5 and other_yes <= 0.1
    assert metrics["base"]["adversarial"]["f1"] <= metrics["base"]["random"]["f1"] - 0.05


@pytest.mark.slow
def test_stage1_raises_adversarial_f1_and_keeps_random_and_popular(quickstart):
    _, _, metrics = quickstart
    changes = {name: 100 * (metrics["stage1"][name]["f1"] - metrics["base"][name]["f1"]) for name in metrics["base"]}
    print(changes)
    assert changes["adversarial"] >= 5
    assert changes["random"] >= -1 and changes["popular"] >= -1


@pytest.mark.slow
def test_the_script_is_seeded(tmp_path):
    # A short run twice: the same seed writes the same weights (the committed base is the full-length run).
    script = os.path.join(ROOT, "scripts", "make_toy_qwen_base.py")
    quick = ["--train-images", "64", "--tower-epochs", "1", "--epochs", "1", "--skip-pope"]
    weights = []
    for run in ("first", "second"):
        subprocess.run([sys.executable, script, "--out", str(tmp_path / run), *quick], check=True, capture_output=True)
        weights.append((tmp_path / run / "model.safetensors").read_bytes())
        assert (tmp_path / run / "preprocessor_config.json").is_file()
    assert weights[0] == weights[1]
