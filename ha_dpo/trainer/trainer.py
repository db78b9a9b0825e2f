"""Trainers: transformers' Trainer (DeepSpeed, accelerate, logging, checkpoints) with checkpoints
of the trained tensors only, each checkpoint folder complete or absent, and a final result that
replaces the previous one only once it is complete (`save_result`).

- `PreferenceTrainer`: our DPO loss and HA-DPO's metric names; it trains a `preference_model`
  wrapper whose forward returns `PairLogps`.
- `TrainableOnlyTrainer` itself, for LLaVA instruction data: it trains a `SupervisedModel`, whose
  forward is the model's own (labels in, loss out).
Both wrappers keep the model being trained as `.policy`.
"""

import os
import shutil
from collections import defaultdict

from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from post_decoder.atomic_files import atomic_directory

from ..cli.reporting import CURVES_FILE, plot_training_curves, why_no_curves
from ..objective.dpo_loss import preference_loss
from ..objective.supervised_loss import STATES_KEY as SUPERVISED_STATES_KEY
from ..objective.supervised_loss import needs_every_position, supervised_loss
from .checkpoints import (
    TRAINER_STATE,
    gather_trainable_state,
    load_trainable_checkpoint,
    publish_result,
    write_trainable_checkpoint,
)

# Fixed names (every rank must agree on them): checkpoints and the final result are written here,
# then renamed into the run folder.
PARTIAL_CHECKPOINTS = ".partial"
PARTIAL_RESULT = ".partial-result"


class SupervisedModel(nn.Module):
    """The supervised loss on the label positions only (`objective.supervised_loss`; `transformer_block`,
    which reads every position, keeps the model's own forward); only its trainable part is checkpointed."""

    def __init__(self, model):
        super().__init__()
        self.policy = model

    @property
    def config(self):
        return self.policy.config

    def forward(self, input_ids=None, attention_mask=None, labels=None, **images_or_cached_states):
        """`images_or_cached_states`: the collator's image inputs (the family's: `pixel_values`, ...), or a
        backbone cache's states (`objective.supervised_loss.STATES_KEY` among them)."""
        if needs_every_position(self.policy) and SUPERVISED_STATES_KEY not in images_or_cached_states:
            output = self.policy(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **images_or_cached_states
            )
            return {"loss": output.loss}
        batch = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return {"loss": supervised_loss(self.policy, {**batch, **images_or_cached_states})}


class TrainableOnlyTrainer(Trainer):
    """Checkpoints hold the trained tensors only (never a gather of the whole model) and are
    written under a temporary folder, then renamed: a crash never leaves half a checkpoint."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        policy = self.accelerator.unwrap_model(self.model).policy
        state = gather_trainable_state(policy)  # every rank takes part under ZeRO-3
        if self.args.should_save:
            write_trainable_checkpoint(output_dir, state, policy)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_deepspeed_enabled:
            # DeepSpeed's own checkpoint (optimizer shards) without the frozen backbone's weights.
            self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        else:
            super()._save_optimizer_and_scheduler(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_dir = os.path.join(run_dir, PARTIAL_CHECKPOINTS)
        self._clear(staging_dir)  # a killed run's half-written checkpoint
        self.args.output_dir = staging_dir  # Trainer writes the checkpoint under args.output_dir
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging_dir, ignore_errors=True)
            raise
        finally:
            self.args.output_dir = run_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # Every rank wrote under the agreed staging name; the complete checkpoint then takes the place of
            # any folder of the same step (a re-run over it), which goes only once the new one is in.
            written = os.path.join(staging_dir, name)
            with atomic_directory(os.path.join(run_dir, name)) as final:
                for entry in os.listdir(written):
                    os.rename(os.path.join(written, entry), os.path.join(final, entry))
            shutil.rmtree(staging_dir, ignore_errors=True)
            rotate_checkpoints(run_dir, save_total_limit=self.args.save_total_limit, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_result(self, plot: bool = True) -> list[str]:
        """The run's result in `output_dir`: the trained tensors (save_model's files), the tokenizer,
        `trainer_state.json` (loss and reward history, as LLaVA's `trainer.save_state()`) and, with
        `plot`, the training curves. All of it is written to a staging folder first and moved in only
        when complete, so a crash leaves the previous result as it was. Returns notes to print."""
        output_dir = self.args.output_dir
        staging = os.path.join(output_dir, PARTIAL_RESULT)
        self._clear(staging)
        notes = []
        try:
            self.save_model(staging)  # every rank takes part (gather under ZeRO-3); the main one writes
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, TRAINER_STATE))
                if plot and not plot_training_curves(self.state.log_history, os.path.join(staging, CURVES_FILE)):
                    notes.append(
                        f"{CURVES_FILE} not written: {why_no_curves(self.state.log_history, self.args.logging_steps)}"
                    )
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.args.should_save:
            publish_result(staging, output_dir)
        self.accelerator.wait_for_everyone()
        return notes

    def _clear(self, staging: str) -> None:
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def first_epoch_batches(self) -> list[list[int]]:
        """This process's micro-batches of the first epoch, as dataset indices in training order: the Trainer's
        own data loader (sampler, seed, sharding over ranks) run over the indices instead of the items. A data
        loader draws from the global generators: the caller puts them back (`ha_dpo.cache.build.random_state_kept`)."""
        dataset, collator = self.train_dataset, self.data_collator
        self.train_dataset, self.data_collator = _Indices(len(dataset)), list
        try:
            return [[int(index) for index in batch] for batch in self.get_train_dataloader()]
        finally:
            self.train_dataset, self.data_collator = dataset, collator

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_trainable_checkpoint(self.accelerator.unwrap_model(model or self.model).policy, resume_from_checkpoint)


class _Indices(Dataset):
    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


class PreferenceTrainer(TrainableOnlyTrainer):
    def __init__(self, *args, beta: float = 0.1, loss_type: str = "sigmoid", gamma: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.loss_type, self.gamma = beta, loss_type, gamma
        self._metrics = defaultdict(list)  # averaged into the next log line, as TRL does

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = model(**inputs)
        loss, metrics = preference_loss(logps, self.beta, self.loss_type, self.gamma)
        for name, value in metrics.items():
            self._metrics[name].append(
                self.accelerator.gather_for_metrics(value.detach().reshape(1)).float().mean().item()
            )
        return (loss, logps) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            logs.update({name: sum(values) / len(values) for name, values in self._metrics.items()})
            self._metrics.clear()
        super().log(logs, start_time)
