"""The module the trainer trains: a batch of preference pairs in, `PairLogps` out.

Wrapping policy and reference in one `nn.Module` lets DeepSpeed, DDP and accelerate wrap it like
any model (transformers' Trainer calls its forward), while the log-prob code stays ours. TRL's
`DPOTrainer` would skip the block: in trl 1.16 it patches the model with `add_fused_lm_head`
(trl/trainer/utils.py) and scores every sequence with `model(..., fused_lm_head=True)`, whose forward
runs `model.base_model` (the backbone) and then the model's `lm_head` in tiles, so the model's own
forward, and a block in it before `lm_head`, never runs (tests/test_trl_skips_the_block.py shows it).

- `SharedBackbonePreferenceModel`: the post-decoder stages. The backbone is frozen and runs once
  per pair for both policy (block + `lm_head`) and reference (a frozen snapshot of them).
- `LoraPreferenceModel`: HA-DPO's LoRA baseline. The backbone itself changes, so nothing can be
  shared: full chosen and rejected sequences through the policy, then again with the adapters off.
"""

import torch
from torch import nn

from .dpo_loss import PairLogps
from .full_sequence_logps import full_sequence_logps
from .pair_logps import ReferenceHead, shared_pair_logps


class _PreferenceModel(nn.Module):
    """Common to both: `policy` is the model being trained; checkpoints hold its trainable tensors only."""

    policy: nn.Module

    @property
    def config(self):
        """The model's config: DeepSpeed's `auto` bucket sizes are read from its hidden size."""
        return self.policy.config

    def trainable_names(self) -> list[str]:
        """Names in `policy.state_dict()` of the trained parameters."""
        return [name for name, parameter in self.policy.named_parameters() if parameter.requires_grad]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts a checkpoint of the trainable parameters alone (what DeepSpeed saves with
        `exclude_frozen_parameters=True`): every trainable tensor must be there, nothing else."""
        trainable = {"policy." + name for name in self.trainable_names()}
        if strict and trainable <= set(state_dict) <= set(self.state_dict()):
            return super().load_state_dict(state_dict, strict=False, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class SharedBackbonePreferenceModel(_PreferenceModel):
    def __init__(self, model, tune_lm_head: bool):
        super().__init__()
        self.policy = model
        # Taken before the first step: policy == reference at the start.
        self.reference = ReferenceHead.snapshot(model, copy_lm_head=tune_lm_head)

    def forward(self, **batch) -> PairLogps:
        return shared_pair_logps(self.policy, self.reference, batch)


class LoraPreferenceModel(_PreferenceModel):
    def __init__(self, peft_model, pad_token_id: int):
        super().__init__()
        self.policy = peft_model
        self.pad_token_id = pad_token_id

    def forward(self, **batch) -> PairLogps:
        policy, mean_logits = full_sequence_logps(self.policy, batch, self.pad_token_id)
        with torch.no_grad(), self.policy.disable_adapter():
            reference, _ = full_sequence_logps(self.policy, batch, self.pad_token_id)
        return PairLogps.from_interleaved(policy, reference, mean_logits, batch["chosen_attention_mask"].sum(-1))
