"""TRL's `DPOTrainer` on the training benchmark's pairs: a plain LLaVA, `lm_head` trained, all else frozen.

TRL never calls the model's forward (its fused head runs `model.base_model`, then `lm_head` itself),
so it cannot train a block before `lm_head`: it is benchmarked at the head-only stage alone.
TRL's vision collator tokenizes text and processes PIL images; the benchmark's pairs are token ids
and pixel tensors, so `PairsCollator` lays them out in the collator's format instead (prompt +
chosen rows, then prompt + rejected rows; `completion_mask` on the answers; each image twice).
"""

import copy
import tempfile
import time

import torch
from datasets import Dataset
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    TrainerCallback,
)
from trl import DPOConfig, DPOTrainer

from ha_dpo.objective.full_sequence_logps import concatenated_pairs
from post_decoder.compat import activation_checkpointing_field


def plain_llava(model) -> LlavaForConditionalGeneration:
    """`LlavaForConditionalGeneration` with the weights of our model (which must have no block)."""
    if model.post_decoder is not None:
        raise ValueError("TRL would skip the block: give it a model without one")
    values = model.config.to_dict()
    values.pop("post_decoder_config", None)
    with torch.device(model.device):
        plain = LlavaForConditionalGeneration(LlavaConfig(**values))
    plain.load_state_dict(model.state_dict())
    return plain.to(model.dtype).eval()


class PairsCollator:
    """Rows of `batch` (the benchmark's pairs) in the layout of TRL's `DataCollatorForVisionPreference`."""

    def __init__(self, batch: dict, pad_id: int):
        self.batch = batch
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict:
        rows = torch.tensor([example["pair"] for example in examples], device=self.batch["prompt_input_ids"].device)
        batch = {key: value.index_select(0, rows) for key, value in self.batch.items()}
        input_ids, attention_mask, labels = concatenated_pairs(batch, self.pad_id)  # chosen_0, rejected_0, ...

        def chosen_then_rejected(tensor):
            return torch.cat([tensor[0::2], tensor[1::2]])

        return {
            "input_ids": chosen_then_rejected(input_ids),
            "attention_mask": chosen_then_rejected(attention_mask),
            "completion_mask": chosen_then_rejected((labels != -100).long()),
            "pixel_values": torch.cat([batch["pixel_values"], batch["pixel_values"]]),
        }


class StepTimer(TrainerCallback):
    """Wall time of the steps after the first `warmup` (CUDA synchronised; its peak memory reset there)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.seconds = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.warmup == 0:
            self._mark(args, start=True)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._mark(args, start=True)
        elif state.global_step == state.max_steps:
            self._mark(args, start=False)

    def _mark(self, args, start: bool):
        if args.device.type == "cuda":
            torch.cuda.synchronize()
            if start:
                torch.cuda.reset_peak_memory_stats()
        if start:
            self.start = time.perf_counter()
        else:
            self.seconds = time.perf_counter() - self.start


def trl_trainer(model, tokenizer, image_processor, batch: dict, steps: int, output_dir: str, callbacks=()):
    """A `DPOTrainer` for `steps` steps of all of `batch`'s pairs at once: sigmoid loss, beta 0.1, AdamW
    at 1e-5 (constant), no clipping, no gradient checkpointing: as the benchmark's other methods."""
    policy = plain_llava(model).requires_grad_(False)
    policy.lm_head.to(torch.float32).requires_grad_(True)  # fp32 master weights, as ours
    reference = copy.deepcopy(policy).requires_grad_(False)
    pairs = batch["prompt_input_ids"].shape[0]
    cuda = model.device.type == "cuda"
    config = DPOConfig(
        output_dir=output_dir,  # Trainer needs one; nothing is saved there
        loss_type=["sigmoid"],
        beta=0.1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        weight_decay=0.01,  # torch's AdamW default, which the other methods use
        max_grad_norm=0.0,
        optim="adamw_torch",
        **{activation_checkpointing_field(): False},  # TRL turns it on by default
        bf16=model.dtype == torch.bfloat16,
        use_cpu=not cuda,
        per_device_train_batch_size=pairs,
        max_steps=steps,
        max_length=None,  # no truncation: the sequences are the other methods' in full
        train_sampling_strategy="sequential",
        remove_unused_columns=False,  # the collator reads the "pair" column
        dataloader_pin_memory=False,  # the batch already lies on the device
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    # "images" marks the rows as vision data: TRL then leaves all preprocessing to the collator.
    dataset = Dataset.from_dict({"pair": list(range(pairs)), "images": [[] for _ in range(pairs)]})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        data_collator=PairsCollator(batch, tokenizer.pad_token_id),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=list(callbacks),
    )


def time_trl_steps(model, tokenizer, image_processor, batch: dict, warmup: int, steps: int) -> float:
    """Seconds for `steps` DPOTrainer steps after `warmup` untimed ones."""
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as folder:
        trl_trainer(model, tokenizer, image_processor, batch, warmup + steps, folder, callbacks=[timer]).train()
    return timer.seconds
