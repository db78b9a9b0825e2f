"""The fact the preference wrapper rests on (ha_dpo/objective/preference_model.py): TRL's `DPOTrainer`
(trl 1.16) scores sequences through `add_fused_lm_head`'s forward, which runs `model.base_model` and
then `lm_head`, never the model's own forward: a block before `lm_head` is skipped."""

import pytest
import torch

from tests.helpers import with_block
from tests.helpers.pairs import tokenized_pairs

pytest.importorskip("trl")


def token_logps(logits, labels):
    """log p(label) of each position's next token, 0 where the label is -100 (as the fused head returns them)."""
    labels, logits = labels[:, 1:], logits[:, :-1].float()
    picked = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return picked * (labels != -100)


def test_trls_fused_lm_head_runs_the_backbone_and_lm_head_but_not_the_block(plain_llava, llava_tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    model = with_block(plain_llava, "post_interaction", perturb=0.1)
    prompts, chosen, _ = tokenized_pairs(model, llava_tokenizer)
    input_ids = torch.tensor([prompts[0] + chosen[0]])
    labels = torch.tensor([[-100] * len(prompts[0]) + chosen[0]])
    size = model.config.vision_config.image_size
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
    }
    with torch.no_grad():
        with_the_block = token_logps(model(**inputs).logits, labels)
        without_the_block = token_logps(model.lm_head(model.base_model(**inputs).last_hidden_state), labels)
        add_fused_lm_head(model)  # what DPOTrainer does to the model it trains
        trl = model(**inputs, labels=labels, fused_lm_head=True).log_probs

    torch.testing.assert_close(trl, without_the_block, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trl, with_the_block, atol=1e-3)  # the block changes the answer's log-probs
