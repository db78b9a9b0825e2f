"""The training benchmark's TRL method trains on the same pairs as ours: same sequence log-probs,
first loss ln 2 (policy == reference), and the same loss after one identical AdamW step."""

import copy
import math
import os
import sys

import pytest
import torch

pytest.importorskip("trl")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

from bench_models import build_model, picture_size
from bench_train import pairs_batch, step_function
from bench_trl import PairsCollator, plain_llava, trl_trainer

PAIRS = 2


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokenizer, image_processor = build_model("tiny", "cpu", torch.float32, with_block=False)
    batch = pairs_batch(model, tokenizer, image_processor, PAIRS, 6, "cpu", picture_size("tiny", model))
    return model, tokenizer, image_processor, batch


def test_collator_lays_out_chosen_then_rejected_with_the_answers_marked(setup):
    _, tokenizer, _, batch = setup
    out = PairsCollator(batch, tokenizer.pad_token_id)([{"pair": 1}, {"pair": 0}])
    prompt = batch["prompt_input_ids"].shape[1]
    assert out["input_ids"].shape[0] == 2 * PAIRS
    # Row order: chosen of pairs 1 and 0, then their rejected answers.
    assert torch.equal(out["input_ids"][0, prompt:], batch["chosen_input_ids"][1])
    assert torch.equal(out["input_ids"][3, prompt:], batch["rejected_input_ids"][0])
    assert out["completion_mask"][:, :prompt].sum() == 0
    assert torch.equal(out["completion_mask"][:, prompt:], torch.ones(2 * PAIRS, 6, dtype=torch.long))
    assert torch.equal(out["pixel_values"][1], batch["pixel_values"][0])
    assert torch.equal(out["pixel_values"][2], batch["pixel_values"][1])


def test_plain_llava_refuses_a_model_with_a_block():
    torch.manual_seed(0)
    model, _, _ = build_model("tiny", "cpu", torch.float32, with_block=True)
    with pytest.raises(ValueError, match="skip the block"):
        plain_llava(model)


def test_trl_and_ours_take_the_same_step_on_the_same_pairs(setup, tmp_path):
    model, tokenizer, image_processor, batch = setup
    ours = step_function("ours", copy.deepcopy(model), tokenizer, "head")
    ours_first, ours_second = ours(batch), ours(batch)

    trainer = trl_trainer(model, tokenizer, image_processor, batch, steps=1, output_dir=str(tmp_path))
    assert [name for name, p in trainer.model.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    inputs = trainer.data_collator([{"pair": pair} for pair in range(PAIRS)])
    with torch.no_grad():
        trl_first = trainer.compute_loss(trainer.model, inputs).item()
    mode = "train" if trainer.model.training else "eval"
    trl_logps = trainer._metrics[mode]["logps/chosen"][-1], trainer._metrics[mode]["logps/rejected"][-1]

    assert trl_first == pytest.approx(math.log(2), abs=1e-6)
    assert ours_first["loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    # The same tokens scored under the same weights: TRL's sums of log-probs are ours.
    assert trl_logps[0] == pytest.approx(ours_first["logps/chosen"].item(), rel=1e-4)
    assert trl_logps[1] == pytest.approx(ours_first["logps/rejected"].item(), rel=1e-4)

    trainer.train()
    with torch.no_grad():
        trl_second = trainer.compute_loss(trainer.model, inputs).item()
    ours_moved = ours_second["loss"].item() - math.log(2)
    assert abs(ours_moved) > 1e-5  # the step changed something measurable
    assert trl_second - math.log(2) == pytest.approx(ours_moved, rel=0.05)
