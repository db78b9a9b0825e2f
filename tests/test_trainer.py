import copy
import os

import pytest
import torch

from ha_dpo import trainer as trainer_module
from ha_dpo.arguments import ModelArguments, PreferenceTrainingArguments, check_arguments, rename_old_flags
from ha_dpo.checkpoints import (
    NON_LORA_TRAINABLES,
    TRAINABLE_WEIGHTS,
    gather_trainable_state,
    load_trainable_checkpoint,
    write_trainable_checkpoint,
)
from ha_dpo.trainer import PreferenceTrainer
from ha_dpo.training_model import preference_model
from tests.conftest import pad_rows, with_block
from tests.test_pair_logps import make_batch, tokenized_pairs


class PairsDataset(torch.utils.data.Dataset):
    """The two test pairs of test_pair_logps, repeated, each with its own seeded image."""

    def __init__(self, model, tokenizer, size=8):
        self.prompts, self.chosen, self.rejected = tokenized_pairs(model, tokenizer)
        self.image_size = model.config.vision_config.image_size
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        pick = index % len(self.prompts)
        image = torch.randn(3, self.image_size, self.image_size, generator=torch.Generator().manual_seed(index))
        return {"prompt": self.prompts[pick], "chosen": self.chosen[pick], "rejected": self.rejected[pick], "image": image}


def collate(pad_id):
    def collate_rows(rows):
        batch = {"pixel_values": torch.stack([row["image"] for row in rows])}
        batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_rows([r["prompt"] for r in rows], "left", pad_id)
        batch["chosen_input_ids"], batch["chosen_attention_mask"] = pad_rows([r["chosen"] for r in rows], "right", pad_id)
        batch["rejected_input_ids"], batch["rejected_attention_mask"] = pad_rows([r["rejected"] for r in rows], "right", pad_id)
        return batch

    return collate_rows


def make_trainer(model, tokenizer, output_dir, tune_lm_head=False, **overrides):
    model_args = ModelArguments(model_name_or_path="unused", tune_post_decoder=True, tune_lm_head=tune_lm_head)
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=4, save_steps=2, logging_steps=1,
        learning_rate=5e-3, report_to=[], use_cpu=True, seed=0, data_seed=0, lr_scheduler_type="constant",
    )
    settings.update(overrides)
    return PreferenceTrainer(
        model=preference_model(model_args, model, tokenizer),
        args=PreferenceTrainingArguments(**settings),
        train_dataset=PairsDataset(model, tokenizer),
        data_collator=collate(tokenizer.pad_token_id),
        beta=0.1,
    )


def test_training_changes_only_the_trained_part_and_checkpoints_hold_only_it(plain_llava, llava_tokenizer, tmp_path):
    model = with_block(plain_llava, "post_interaction")
    before = copy.deepcopy(model.state_dict())
    trainer = make_trainer(model, llava_tokenizer, tmp_path / "run", tune_lm_head=True)
    trainer.train()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("post_decoder.") or name == "lm_head.weight" for name in changed)
    assert "lm_head.weight" in changed
    untouched = [name for name in before if not name.startswith("post_decoder.") and name != "lm_head.weight"]
    assert all(torch.equal(before[name], after[name]) for name in untouched)  # the backbone is bit-identical

    from safetensors.torch import load_file

    checkpoint = tmp_path / "run" / "checkpoint-4"
    saved = load_file(checkpoint / TRAINABLE_WEIGHTS)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert set(saved) == trained
    assert all(torch.equal(saved[name], after[name]) for name in saved)
    assert set(torch.load(checkpoint / NON_LORA_TRAINABLES, weights_only=True)) == trained
    assert not (tmp_path / "run" / trainer_module.PARTIAL_CHECKPOINTS).exists()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at the start
    assert "rewards/margins" in trainer.state.log_history[0]


def fresh_block(plain):
    torch.manual_seed(0)  # the same block initialisation each time, as a re-run with the same --seed
    return with_block(plain, "post_interaction")


def test_resume_from_a_checkpoint_continues_to_the_same_result(plain_llava, llava_tokenizer, tmp_path):
    straight = fresh_block(plain_llava)
    make_trainer(straight, llava_tokenizer, tmp_path / "straight").train()

    interrupted = fresh_block(plain_llava)
    make_trainer(interrupted, llava_tokenizer, tmp_path / "interrupted", max_steps=2).train()
    resumed = fresh_block(plain_llava)  # a new process starts from the base again
    make_trainer(resumed, llava_tokenizer, tmp_path / "interrupted").train(
        resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-2")
    )
    for name, tensor in straight.post_decoder.state_dict().items():
        assert torch.allclose(tensor, resumed.post_decoder.state_dict()[name], atol=1e-6), name
    assert straight.post_decoder.layers[0].cross_attn.o_proj.weight.abs().sum() > 0  # it really trained


def test_a_checkpoint_of_another_run_is_refused_with_what_differs(plain_llava, tmp_path):
    block_run = fresh_block(plain_llava).requires_grad_(False)
    block_run.post_decoder.requires_grad_(True)
    write_trainable_checkpoint(str(tmp_path), gather_trainable_state(block_run), block_run)
    head_run = fresh_block(plain_llava).requires_grad_(False)
    head_run.lm_head.requires_grad_(True)  # a stage-2/head run resumed from a stage-1 checkpoint
    with pytest.raises(ValueError, match=r"do not fit this run's trainable parameters:\n(.|\n)*missing \(1\):\n    lm_head.weight"):
        load_trainable_checkpoint(head_run, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=TRAINABLE_WEIGHTS):
        load_trainable_checkpoint(head_run, str(tmp_path / "elsewhere"))


def test_a_crash_while_saving_leaves_no_checkpoint_folder(plain_llava, llava_tokenizer, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trainer_module, "write_trainable_checkpoint", crash)
    trainer = make_trainer(with_block(plain_llava, "post_interaction"), llava_tokenizer, tmp_path / "run", max_steps=2)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith("checkpoint-")]


def test_lora_baseline_starts_at_the_shared_paths_log_probs(plain_llava, llava_tokenizer):
    pytest.importorskip("peft")
    model = with_block(plain_llava, "post_interaction", perturb=0.1)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = make_batch(model, llava_tokenizer, pixel_values)
    shared = preference_model(ModelArguments("unused", tune_post_decoder=True), copy.deepcopy(model), llava_tokenizer)(**batch)
    lora = preference_model(ModelArguments("unused", lora_enable=True), model, llava_tokenizer)
    logps = lora(**batch)
    assert torch.allclose(logps.policy_chosen, shared.policy_chosen, atol=1e-5)
    assert torch.allclose(logps.reference_rejected, shared.reference_rejected, atol=1e-5)
    trained = lora.trainable_names()
    assert trained and all("lora_" in name and "language_model" in name for name in trained)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(), "nothing to train"),
        (dict(tune_post_decoder=True, freeze_backbone=False), "--freeze_backbone False"),
        (dict(tune_post_decoder=True, tune_mm_mlp_adapter=True), "--tune_mm_mlp_adapter"),
        (dict(tune_post_decoder=True, lora_enable=True), "--lora_enable with"),
        (dict(tune_post_decoder=True, lora_r=8), "--lora_r is for --lora_enable"),
        (dict(tune_post_decoder=True, version="v0"), "--version v0"),
        (dict(tune_post_decoder=True, post_decoder_variant="unknown"), "--post_decoder_variant unknown"),
        (dict(tune_lm_head=True, post_decoder_variant="align_linear"), "needs --tune_post_decoder"),
    ],
)
def test_flags_that_would_be_silently_ignored_are_refused(fields, message, tmp_path):
    training_args = PreferenceTrainingArguments(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(SystemExit, match=message):
        check_arguments(ModelArguments("unused", **fields), training_args)


def test_flags_without_work_here_are_reported_and_old_names_accepted(tmp_path):
    training_args = PreferenceTrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True)
    notes = check_arguments(ModelArguments("unused", tune_post_decoder=True), training_args)
    assert any("gradient_checkpointing" in note for note in notes) and not training_args.gradient_checkpointing
    assert rename_old_flags(["--evaluation_strategy", "no", "--evaluation_strategy=no", "--warmup_ratio", "0.03"]) == [
        "--eval_strategy", "no", "--eval_strategy=no", "--warmup_steps", "0.03",
    ]
