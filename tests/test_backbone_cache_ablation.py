"""scripts/toy_ablation.py: every run reads one backbone cache (with the prompt states when transformer_block is
among the variants), and its table says which runs did not move the block enough to change a POPE answer."""

import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import toy_ablation  # noqa: E402

METRICS = {name: {"f1": f1} for name, f1 in (("random", 0.95), ("popular", 0.97), ("adversarial", 0.85))}

CHAIR = {"chair_i": 0.25, "recall": 0.99}


@pytest.fixture(autouse=True)
def no_chair_and_no_empty_picture(monkeypatch):
    """The stubbed worlds have no images to describe nor a base model to draw an empty picture with."""
    monkeypatch.setattr(toy_ablation, "chair", lambda *args: CHAIR)
    monkeypatch.setattr(toy_ablation, "empty_picture_features", lambda base_model: None)


def write_answers(folder, answers: list[str]):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, toy_ablation.ANSWERS), "w") as handle:
        for number, answer in enumerate(answers):
            handle.write(json.dumps({"set": "random", "question_id": number, "answer": answer}) + "\n")


def test_every_run_reads_one_cache_and_an_unmoved_block_is_named(tmp_path, monkeypatch, capsys):
    trained_with = []

    def train_stage1(world, out, base_model, seed, variant, changes):
        trained_with.append(changes)
        moved = not (variant == "no_cross_attn" and seed == 1)  # this run changes no answer and leaves the block
        write_answers(out, ["Yes.", "No." if moved else "Yes."])
        save_file({"layers.0.mlp.down_proj.weight": torch.full((2, 2), 0.01 if moved else 0.0)},
                  os.path.join(out, "post_decoder.safetensors"))  # fmt: skip

    def pope(world, out, model_path, model_base=None):
        if model_base is None:
            write_answers(out, ["Yes.", "Yes."])
        return METRICS

    monkeypatch.setattr(toy_ablation, "make_world", lambda out, *args: os.path.join(out, "world"))
    monkeypatch.setattr(toy_ablation, "train_stage1", train_stage1)
    monkeypatch.setattr(toy_ablation, "pope", pope)
    out = tmp_path / "ablation"
    toy_ablation.main(["--out", str(out), "--variants", "post_interaction", "no_cross_attn", "transformer_block",
                       "--seeds", "0", "1"])  # fmt: skip

    caches = {(changes["backbone_cache"], changes["cache_prompt_states"]) for changes in trained_with}
    assert caches == {(str(out / "backbone_cache"), True)} and len(trained_with) == 6
    report = (out / "ablation.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("|")]
    assert len({row.count("|") for row in rows}) == 1  # every row has the header's columns
    assert "| no_cross_attn |" in report and "| 25.00 ± 35.36 |" in report  # 50% and 0% of the answers changed
    assert report.rstrip().endswith("Did not move the block enough to change one POPE answer (too little training "
                                    "for these settings: more --dpo-images, epochs or a higher --learning-rate): "
                                    "no_cross_attn seed 1.")  # fmt: skip
    results = json.loads((out / "ablation.json").read_text())
    assert [run["block_update"] for run in results["runs"]["no_cross_attn"]] == [pytest.approx(0.01), 0.0]


def test_without_transformer_block_the_cache_holds_the_answers_states_only(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(toy_ablation, "make_world", lambda out, *args: os.path.join(out, "world"))
    monkeypatch.setattr(toy_ablation, "train_stage1", lambda *args, changes: seen.append(changes) or stub(args[1]))
    monkeypatch.setattr(toy_ablation, "pope", lambda world, out, *args: stub(out, answers_only=True) or METRICS)
    toy_ablation.main(["--out", str(tmp_path / "run"), "--variants", "post_interaction", "--seeds", "0"])
    assert [changes["cache_prompt_states"] for changes in seen] == [False]


def stub(folder, answers_only=False):
    write_answers(folder, ["Yes."])
    if not answers_only:
        save_file(
            {"layers.0.cross_attn.o_proj.weight": torch.ones(1, 1)}, os.path.join(folder, "post_decoder.safetensors")
        )
