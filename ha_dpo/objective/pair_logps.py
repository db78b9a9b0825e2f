"""Sequence log-probs of chosen and rejected answers with the frozen backbone shared by policy and reference.

The backbone is frozen in the post-decoder stages, so policy and reference see the same hidden
states: policy = lm_head(block(h, v)), reference = a frozen snapshot of that head. One backbone
pass serves both, the prompt (576 image tokens + question) runs once with both answers continued
from its KV cache, and the heads run on answer positions only (a token-wise block needs nothing
else; `transformer_block` also sees the prompt's hidden states).

Two halves: `backbone_pair_states` (the frozen backbone: what the heads read, `PairStates`) and
`pair_logps_from_states` (the heads). A backbone cache (ha_dpo/cache) stores the first half's
output and rebuilds the same `PairStates` from disk, so the heads get the same tensors either way.
"""

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from post_decoder.compat import CACHE_KWARG
from post_decoder.family import family_for

from ..data.collators import PREFERENCE_TEXT_KEYS, image_inputs_of
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


@dataclass
class PairStates:
    """What the heads read for a batch of B pairs, rows interleaved chosen_0, rejected_0, chosen_1, ...

    hidden:         [2B, 1 + W, D] the last prompt position, then every answer position (right-padded)
    vision:         [2B, L, Dv] or None (no image in the batch), and its mask [2B, L]
    answers:        [2B, W] the answer ids (the targets), `answer_mask` [2B, W]
    sequence_mask:  [2B, P + W] prompt (left-padded) then answer mask: `transformer_block`'s self-attention
    prompt_hidden:  [2B, P, D] every prompt position, or None where the block does not read it
    """

    hidden: torch.Tensor
    vision: torch.Tensor | None
    vision_mask: torch.Tensor | None
    answers: torch.Tensor
    answer_mask: torch.Tensor
    sequence_mask: torch.Tensor
    prompt_hidden: torch.Tensor | None


def interleave(chosen: torch.Tensor, rejected: torch.Tensor, pad_value) -> torch.Tensor:
    """[B, C] and [B, R] -> [2B, max(C, R)], rows chosen_0, rejected_0, chosen_1, ... (right-padded)"""
    return pad_and_mask([row for pair in zip(chosen, rejected, strict=True) for row in pair], pad_value)[0]


def answers_and_masks(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(answers [2B, W], answer_mask [2B, W], sequence_mask [2B, P + W]) of a collated batch of pairs."""
    answers = interleave(batch["chosen_input_ids"], batch["rejected_input_ids"], pad_value=0)
    answer_mask = interleave(batch["chosen_attention_mask"], batch["rejected_attention_mask"], pad_value=0)
    prompt_mask_2 = batch["prompt_attention_mask"].repeat_interleave(2, 0)
    return answers, answer_mask, torch.cat([prompt_mask_2, answer_mask], dim=1)


@contextlib.contextmanager
def frozen_backbone_mode(model):
    """The frozen backbone runs in eval mode, whatever the trainer set: no dropout (the BLIP families' Q-Former has
    some; LLaVA's and Qwen-VL's backbones none), so its states are the same in every step and run, and equal to
    those a backbone cache stores (built in eval mode). The block's own mode is put back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def backbone_pair_states(model, batch: dict) -> PairStates:
    """The frozen backbone's part: batch as `shared_pair_logps` takes it. Runs without a graph.

    Positions come from the family: the prompt's own (`prompt_position_ids`: 1-D for LLaVA, M-RoPE from the
    image grids for Qwen-VL), the answers' numbered on from them (`continued_position_ids`)."""
    prompt_ids, prompt_mask, family = batch["prompt_input_ids"], batch["prompt_attention_mask"], family_for(model)
    image_inputs = image_inputs_of(batch, PREFERENCE_TEXT_KEYS)
    answers, answer_mask, sequence_mask = answers_and_masks(batch)
    with torch.no_grad(), frozen_backbone_mode(model):  # the backbone is frozen: no graph, no dropout
        prompt_positions = family.prompt_position_ids(model, prompt_ids, prompt_mask, image_inputs or None)
        prompt = model.backbone_forward(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=prompt_positions,
            use_cache=True,
            **image_inputs,
        )
        cache = prompt.past_key_values  # BackboneOutput's own field (not a transformers output)
        cache.batch_repeat_interleave(2)
        prompt_mask_2 = prompt_mask.repeat_interleave(2, 0)
        # Every answer position numbered on from the prompt's (its right padding too: nothing reads it).
        answer_positions = family.continued_position_ids(
            torch.ones_like(answers), prompt_positions.repeat_interleave(2, dim=-2), prompt_mask_2
        )
        continued = model.backbone_forward(
            input_ids=answers,
            attention_mask=sequence_mask,
            position_ids=answer_positions,
            use_cache=True,
            **{CACHE_KWARG: cache},
        )
    prompt_hidden = prompt.hidden_states.repeat_interleave(2, 0)
    # The last prompt position (predicts answer token 0), then every answer position (the last one is
    # only needed for the logits metric: the head is token-wise, one more position costs little).
    hidden = torch.cat([prompt_hidden[:, -1:], continued.hidden_states], dim=1)
    vision = None if prompt.vision_features is None else prompt.vision_features.repeat_interleave(2, 0)
    vision_mask = None if prompt.vision_mask is None else prompt.vision_mask.repeat_interleave(2, 0)
    return PairStates(hidden, vision, vision_mask, answers, answer_mask, sequence_mask, prompt_hidden)


def _head_logps(post_decoder, lm_head, states: PairStates):
    """Per row: the sum of log p(target) through one head, and the mean logit at the answer tokens' own
    positions (HA-DPO's `logits/chosen`). `states.hidden` holds the last prompt position, then every answer
    position: position t predicts answer token t, position t + 1 is answer token t's own."""
    hidden = states.hidden
    if post_decoder is not None:
        state = post_decoder.encode_vision(states.vision, states.vision_mask, batch_size=hidden.shape[0])
        if post_decoder.config.uses_self_attention:
            # Not token-wise: the block sees the prompt and the answer (its last prompt position predicts
            # answer token 0).
            prompt_hidden = states.prompt_hidden
            sequence = torch.cat([prompt_hidden[:, :-1], hidden], dim=1)
            hidden = post_decoder(sequence, state, attention_mask=states.sequence_mask)[0][
                :, prompt_hidden.shape[1] - 1 :
            ]
        else:
            hidden = post_decoder(hidden, state)[0]
    logits = lm_head(hidden).float()
    predicting, own = logits[:, :-1], logits[:, 1:]
    token_logps = torch.gather(predicting.log_softmax(-1), 2, states.answers.unsqueeze(2)).squeeze(2)
    mask = states.answer_mask.to(logits.dtype)
    mean_logits = (own.detach().mean(-1) * mask).sum(-1) / mask.sum(-1)
    return (token_logps * mask).sum(-1), mean_logits


def pair_logps_from_states(model, reference: ReferenceHead, states: PairStates, chosen_tokens) -> PairLogps:
    """The heads' part: policy (the model's block and lm_head, with a graph) and reference (no graph)."""
    policy, mean_logits = _head_logps(model.post_decoder, model.lm_head, states)
    with torch.no_grad():
        reference_logps, _ = _head_logps(reference.post_decoder, reference.lm_head or model.lm_head, states)
    return PairLogps.from_interleaved(policy, reference_logps, mean_logits, chosen_tokens)


STATES_KEY = "hidden_states"  # a batch that carries it holds the backbone's states, read from a cache


def cached_pair_states(batch: dict) -> PairStates:
    """`PairStates` of a batch that carries the backbone's states instead of prompt ids and pixels (a backbone
    cache's collator, ha_dpo/cache/preference.py): `hidden_states` [2B, 1 + W, D] as `PairStates.hidden`,
    `vision_features` [B, L, Dv] + `vision_mask` (absent: no image), `prompt_hidden_states` [B, P, D] (only
    for `transformer_block`), `prompt_attention_mask` [B, P], and the answers' ids and masks."""
    answers, answer_mask, sequence_mask = answers_and_masks(batch)
    vision, vision_mask, prompt_hidden = batch.get("vision_features"), batch.get("vision_mask"), None
    if vision is not None:
        vision, vision_mask = vision.repeat_interleave(2, 0), vision_mask.repeat_interleave(2, 0)
    if "prompt_hidden_states" in batch:
        prompt_hidden = batch["prompt_hidden_states"].repeat_interleave(2, 0)
    return PairStates(batch[STATES_KEY], vision, vision_mask, answers, answer_mask, sequence_mask, prompt_hidden)


def shared_pair_logps(model, reference: ReferenceHead, batch: dict) -> PairLogps:
    """batch: `prompt_input_ids`/`prompt_attention_mask` [B, P] (left-padded), the image inputs (`pixel_values`,
    and Qwen-VL's `image_grid_thw`),
    `chosen_input_ids`/`chosen_attention_mask` [B, C] and `rejected_*` [B, R] (right-padded;
    answers end with `</s>`); or, from a backbone cache, the states in their place (`cached_pair_states`)."""
    states = cached_pair_states(batch) if STATES_KEY in batch else backbone_pair_states(model, batch)
    return pair_logps_from_states(model, reference, states, batch["chosen_attention_mask"].sum(-1))
