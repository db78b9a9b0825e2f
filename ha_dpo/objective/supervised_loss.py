"""The supervised (SFT) loss of the block and/or `lm_head` on a frozen backbone, on label positions only.

The hidden state at position t predicts token t + 1, so only the positions whose next token is an
answer token (label != IGNORE_INDEX) enter the loss: with a token-wise block, the block and `lm_head`
run on those rows alone (not on the image positions), and a backbone cache (ha_dpo/cache) stores
exactly them. The loss is the mean cross-entropy over those tokens, as transformers' causal-LM loss.
`transformer_block` reads every position: its model keeps the full forward (`needs_every_position`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..data.collators import SUPERVISED_TEXT_KEYS, image_inputs_of
from ..data.token_ids import IGNORE_INDEX
from .pair_logps import frozen_backbone_mode

STATES_KEY = "label_hidden_states"  # a batch that carries it holds the backbone's states, read from a cache


@dataclass
class LabelStates:
    """hidden [B, M, D]: each sample's predicting positions, right-padded with zeros; targets [B, M]: the
    tokens they predict (IGNORE_INDEX on the padding); vision [B, L, Dv] + mask, or None (no image)."""

    hidden: torch.Tensor
    targets: torch.Tensor
    vision: torch.Tensor | None
    vision_mask: torch.Tensor | None


def needs_every_position(model) -> bool:
    return model.post_decoder is not None and model.post_decoder.config.uses_self_attention


def predicting_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sample: the hidden states [n, D] of the positions that predict an answer token, and those tokens [n]."""
    predicting = labels[:, 1:] != IGNORE_INDEX
    rows = [sample[:-1][keep] for sample, keep in zip(hidden, predicting, strict=True)]
    targets = [sample[1:][keep] for sample, keep in zip(labels, predicting, strict=True)]
    return rows, targets


def padded_label_states(rows, targets, vision=None, vision_mask=None) -> LabelStates:
    return LabelStates(
        pad_sequence(rows, batch_first=True),
        pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX),
        vision,
        vision_mask,
    )


def backbone_label_states(model, batch: dict) -> LabelStates:
    """The frozen backbone's part (no graph). Positions are numbered as the model's own forward numbers
    them (no position ids: LLaVA's are 0, 1, 2, ... under right padding; Qwen-VL's its M-RoPE positions from the
    image tokens and grids, as `prompt_position_ids`)."""
    with torch.no_grad(), frozen_backbone_mode(model):
        output = model.backbone_forward(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **image_inputs_of(batch, SUPERVISED_TEXT_KEYS),
        )
    rows, targets = predicting_rows(output.hidden_states, batch["labels"])
    return padded_label_states(rows, targets, output.vision_features, output.vision_mask)


def cached_label_states(batch: dict) -> LabelStates:
    """`LabelStates` of a batch from a backbone cache's collator (ha_dpo/cache/supervised.py)."""
    return LabelStates(
        batch[STATES_KEY], batch["label_targets"], batch.get("vision_features"), batch.get("vision_mask")
    )


def supervised_loss_from_states(model, states: LabelStates) -> torch.Tensor:
    hidden = states.hidden
    if model.post_decoder is not None:
        state = model.post_decoder.encode_vision(states.vision, states.vision_mask, batch_size=hidden.shape[0])
        hidden = model.post_decoder(hidden, state)[0]
    logits = model.lm_head(hidden).float()
    return F.cross_entropy(logits.flatten(0, 1), states.targets.flatten(), ignore_index=IGNORE_INDEX)


def supervised_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a batch (ids + labels + pixels, or cached states)."""
    states = cached_label_states(batch) if STATES_KEY in batch else backbone_label_states(model, batch)
    return supervised_loss_from_states(model, states)
