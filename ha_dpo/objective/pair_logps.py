"""Sequence log-probs of chosen and rejected answers with the frozen backbone shared by policy and reference.

The backbone is frozen in the post-decoder stages, so policy and reference see the same hidden
states: policy = lm_head(block(h, v)), reference = a frozen snapshot of that head. One backbone
pass serves both, the prompt (576 image tokens + question) runs once with both answers continued
from its KV cache, and the heads run on answer positions only (a token-wise block needs nothing
else; `transformer_block` also sees the prompt's hidden states).
"""

import copy

import torch
from torch import nn

from post_decoder.compat import CACHE_KWARG
from post_decoder.family import family_for

from ..data.token_ids import pad_and_mask
from .dpo_loss import PairLogps


class ReferenceHead(nn.Module):
    """A frozen snapshot of the trainable head, taken at the start of training: the block and,
    when it is trained too, `lm_head` (otherwise the model's own, frozen `lm_head` is used)."""

    def __init__(self, post_decoder: nn.Module | None, lm_head: nn.Module | None):
        super().__init__()
        self.post_decoder = post_decoder
        self.lm_head = lm_head
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def snapshot(cls, model, copy_lm_head: bool) -> "ReferenceHead":
        block = copy.deepcopy(model.post_decoder) if model.post_decoder is not None else None
        return cls(block, copy.deepcopy(model.lm_head) if copy_lm_head else None)


def _interleave(chosen: torch.Tensor, rejected: torch.Tensor, pad_value) -> torch.Tensor:
    """[B, C] and [B, R] -> [2B, max(C, R)], rows chosen_0, rejected_0, chosen_1, ... (right-padded)"""
    return pad_and_mask([row for pair in zip(chosen, rejected, strict=True) for row in pair], pad_value)[0]


def _head_logps(
    post_decoder, lm_head, hidden, vision, vision_mask, targets, target_mask, sequence_mask, prompt_hidden
):
    """Per row: the sum of log p(target) through one head, and the mean logit at the answer tokens' own
    positions (HA-DPO's `logits/chosen`). `hidden` holds the last prompt position, then every answer
    position: position t predicts answer token t, position t + 1 is answer token t's own."""
    if post_decoder is not None:
        state = post_decoder.encode_vision(vision, vision_mask, batch_size=hidden.shape[0])
        if post_decoder.config.uses_self_attention:
            # Not token-wise: the block sees the prompt and the answer (its last prompt position predicts
            # answer token 0).
            sequence = torch.cat([prompt_hidden[:, :-1], hidden], dim=1)
            hidden = post_decoder(sequence, state, attention_mask=sequence_mask)[0][:, prompt_hidden.shape[1] - 1 :]
        else:
            hidden = post_decoder(hidden, state)[0]
    logits = lm_head(hidden).float()
    predicting, own = logits[:, :-1], logits[:, 1:]
    token_logps = torch.gather(predicting.log_softmax(-1), 2, targets.unsqueeze(2)).squeeze(2)
    mask = target_mask.to(logits.dtype)
    mean_logits = (own.detach().mean(-1) * mask).sum(-1) / mask.sum(-1)
    return (token_logps * mask).sum(-1), mean_logits


def shared_pair_logps(model, reference: ReferenceHead, batch: dict) -> PairLogps:
    """batch: `prompt_input_ids`/`prompt_attention_mask` [B, P] (left-padded), `pixel_values`,
    `chosen_input_ids`/`chosen_attention_mask` [B, C] and `rejected_*` [B, R] (right-padded;
    answers end with `</s>`)."""
    prompt_mask, family = batch["prompt_attention_mask"], family_for(model)
    with torch.no_grad():  # the backbone is frozen: no graph through it
        prompt = model.backbone_forward(
            input_ids=batch["prompt_input_ids"],
            pixel_values=batch.get("pixel_values"),
            attention_mask=prompt_mask,
            position_ids=family.position_ids(prompt_mask),
            use_cache=True,
        )
        answers = _interleave(batch["chosen_input_ids"], batch["rejected_input_ids"], pad_value=0)
        answer_mask = _interleave(batch["chosen_attention_mask"], batch["rejected_attention_mask"], pad_value=0)
        cache = prompt.past_key_values  # BackboneOutput's own field (not a transformers output)
        cache.batch_repeat_interleave(2)
        prompt_mask_2 = prompt_mask.repeat_interleave(2, 0)
        sequence_mask = torch.cat([prompt_mask_2, answer_mask], dim=1)
        continued = model.backbone_forward(
            input_ids=answers,
            attention_mask=sequence_mask,
            # Every answer position numbered on from the prompt's end (its right padding too: nothing reads it).
            position_ids=family.position_ids(torch.ones_like(answers), past_attention_mask=prompt_mask_2),
            use_cache=True,
            **{CACHE_KWARG: cache},
        )
    prompt_hidden = prompt.hidden_states.repeat_interleave(2, 0)
    # The last prompt position (predicts answer token 0), then every answer position (the last one is
    # only needed for the logits metric: the head is token-wise, one more position costs little).
    hidden = torch.cat([prompt_hidden[:, -1:], continued.hidden_states], dim=1)
    vision = None if prompt.vision_features is None else prompt.vision_features.repeat_interleave(2, 0)
    vision_mask = None if prompt.vision_mask is None else prompt.vision_mask.repeat_interleave(2, 0)
    inputs = (hidden, vision, vision_mask, answers, answer_mask, sequence_mask, prompt_hidden)

    policy, mean_logits = _head_logps(model.post_decoder, model.lm_head, *inputs)
    with torch.no_grad():
        reference_logps, _ = _head_logps(reference.post_decoder, reference.lm_head or model.lm_head, *inputs)
    return PairLogps.from_interleaved(policy, reference_logps, mean_logits, batch["chosen_attention_mask"].sum(-1))
