import copy
import os

import pytest
import torch

from ha_dpo.cli.arguments import ModelArguments, PreferenceTrainingArguments, check_arguments, rename_old_flags
from ha_dpo.trainer import trainer as trainer_module
from ha_dpo.trainer.checkpoints import (
    NON_LORA_TRAINABLES,
    TRAINABLE_WEIGHTS,
    gather_trainable_state,
    load_trainable_checkpoint,
    write_trainable_checkpoint,
)
from ha_dpo.trainer.trainer import PreferenceTrainer
from ha_dpo.trainer.training_model import preference_model
from post_decoder.errors import InputError
from tests.helpers import named, pad_rows, with_block
from tests.helpers.charts import assert_curve_panels
from tests.helpers.pairs import make_batch, tokenized_pairs


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
        return {
            "prompt": self.prompts[pick],
            "chosen": self.chosen[pick],
            "rejected": self.rejected[pick],
            "image": image,
        }


def collate(pad_id):
    def collate_rows(rows):
        batch = {"pixel_values": torch.stack([row["image"] for row in rows])}
        batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_rows(
            [r["prompt"] for r in rows], "left", pad_id
        )
        batch["chosen_input_ids"], batch["chosen_attention_mask"] = pad_rows(
            [r["chosen"] for r in rows], "right", pad_id
        )
        batch["rejected_input_ids"], batch["rejected_attention_mask"] = pad_rows(
            [r["rejected"] for r in rows], "right", pad_id
        )
        return batch

    return collate_rows


def make_trainer(model, tokenizer, output_dir, tune_lm_head=False, tune_post_decoder=True, **overrides):
    model_args = ModelArguments(
        model_name_or_path="unused", tune_post_decoder=tune_post_decoder, tune_lm_head=tune_lm_head
    )
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=4,
        save_steps=2,
        logging_steps=1,
        learning_rate=5e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        lr_scheduler_type="constant",
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
    assert trainer.state.log_history[0]["loss"] == pytest.approx(
        0.693147, abs=1e-5
    )  # policy == reference at the start
    assert "rewards/margins" in trainer.state.log_history[0]


def fresh_block(plain):
    torch.manual_seed(0)  # the same block initialisation each time, as a re-run with the same --seed
    return with_block(plain, "post_interaction")


@pytest.mark.slow
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
        torch.testing.assert_close(
            tensor, resumed.post_decoder.state_dict()[name], atol=1e-6, rtol=1e-5, msg=named(name)
        )
    assert straight.post_decoder.layers[0].cross_attn.o_proj.weight.abs().sum() > 0  # it really trained


def test_a_checkpoint_of_another_run_is_refused_with_what_differs(plain_llava, tmp_path):
    block_run = fresh_block(plain_llava).requires_grad_(False)
    block_run.post_decoder.requires_grad_(True)
    write_trainable_checkpoint(str(tmp_path), gather_trainable_state(block_run), block_run)
    head_run = fresh_block(plain_llava).requires_grad_(False)
    head_run.lm_head.requires_grad_(True)  # a stage-2/head run resumed from a stage-1 checkpoint
    with pytest.raises(
        ValueError, match=r"do not fit this run's trainable parameters:\n(.|\n)*missing \(1\):\n    lm_head.weight"
    ):
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
    shared = preference_model(ModelArguments("unused", tune_post_decoder=True), copy.deepcopy(model), llava_tokenizer)(
        **batch
    )
    lora = preference_model(ModelArguments("unused", lora_enable=True), model, llava_tokenizer)
    logps = lora(**batch)
    torch.testing.assert_close(logps.policy_chosen, shared.policy_chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logps.reference_rejected, shared.reference_rejected, atol=1e-5, rtol=1e-5)
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
    with pytest.raises(InputError, match=message):
        check_arguments(ModelArguments("unused", **fields), training_args)


def test_flags_without_work_here_are_reported_and_old_names_accepted(tmp_path):
    training_args = PreferenceTrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True)
    notes = check_arguments(ModelArguments("unused", tune_post_decoder=True), training_args)
    assert any("gradient_checkpointing" in note for note in notes) and not training_args.gradient_checkpointing
    assert rename_old_flags(["--evaluation_strategy", "no", "--evaluation_strategy=no", "--warmup_ratio", "0.03"]) == [
        "--eval_strategy",
        "no",
        "--eval_strategy=no",
        "--warmup_steps",
        "0.03",
    ]


def files_of(folder):
    """Every file under `folder` (hidden ones too) with its bytes: the whole state a crash must keep."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def crash_at_safetensors_write(monkeypatch, call):
    """Make the `call`-th safetensors write of a save leave a torn file and raise: the save stops halfway
    (the trained tensors are written, the block's own file is torn)."""
    from ha_dpo.trainer import checkpoints as checkpoints_module
    from post_decoder.block import files as block_files_module

    real, calls = checkpoints_module.save_file, []

    def save_file(state, path, metadata=None):
        calls.append(path)
        if len(calls) == call:
            with open(path, "wb") as handle:
                handle.write(b"torn")
            raise OSError("disk full")
        return real(state, path, metadata=metadata)

    monkeypatch.setattr(checkpoints_module, "save_file", save_file)  # the trained tensors
    monkeypatch.setattr(block_files_module, "save_file", save_file)  # the block's own file
    return calls


def test_a_crash_halfway_through_a_checkpoint_keeps_the_earlier_checkpoints_and_leaves_no_stray_file(
    plain_llava, llava_tokenizer, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    make_trainer(fresh_block(plain_llava), llava_tokenizer, run, max_steps=2).train()
    before = files_of(run)
    assert "checkpoint-2/" + TRAINABLE_WEIGHTS in before
    calls = crash_at_safetensors_write(monkeypatch, call=2)
    resumed = make_trainer(fresh_block(plain_llava), llava_tokenizer, run)
    with pytest.raises(OSError, match="disk full"):
        resumed.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    assert len(calls) == 2  # it did crash halfway through checkpoint-4
    assert files_of(run) == before


def test_a_crash_halfway_through_the_final_save_keeps_the_previous_result(
    plain_llava, llava_tokenizer, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    first = make_trainer(fresh_block(plain_llava), llava_tokenizer, run, max_steps=2, save_strategy="no")
    first.train()
    first.save_result()
    before = files_of(run)
    assert {TRAINABLE_WEIGHTS, "post_decoder.safetensors", "trainer_state.json", "training_curves.png"} <= set(before)
    second = make_trainer(
        fresh_block(plain_llava), llava_tokenizer, run, max_steps=2, save_strategy="no", learning_rate=1e-2
    )
    second.train()
    calls = crash_at_safetensors_write(monkeypatch, call=2)
    with pytest.raises(OSError, match="disk full"):
        second.save_result()
    assert len(calls) == 2
    assert files_of(run) == before  # no new file beside the old ones, no staging folder left


@pytest.mark.slow
def test_the_final_result_is_one_runs_whole_set_with_its_loss_and_reward_history(
    plain_llava, llava_tokenizer, tmp_path
):
    import json

    from safetensors.torch import load_file

    run = tmp_path / "run"
    stage1 = make_trainer(fresh_block(plain_llava), llava_tokenizer, run, max_steps=2, save_strategy="no")
    stage1.train()
    assert stage1.save_result() == []
    assert (run / "post_decoder.safetensors").is_file()

    head_only = make_trainer(
        fresh_block(plain_llava),
        llava_tokenizer,
        run,
        tune_lm_head=True,
        tune_post_decoder=False,
        max_steps=2,
        save_strategy="no",
        logging_steps=10,
    )
    head_only.train()
    notes = head_only.save_result()
    assert notes == [
        "training_curves.png not written: no training loss was logged in this run's 2 steps (--logging_steps 10); "
        "pass a smaller --logging_steps to get curves"
    ]
    names = set(os.listdir(run))
    # The stage-1 run's block and curves are gone: they would be read as this run's.
    assert not names & {"post_decoder.safetensors", "post_decoder_config.json", "training_curves.png"}
    assert not [name for name in names if name.startswith(".")]
    assert set(load_file(run / TRAINABLE_WEIGHTS)) == {"lm_head.weight"}
    umask = os.umask(0)
    os.umask(umask)
    assert (run / TRAINABLE_WEIGHTS).stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's 0o600
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"] == head_only.state.log_history

    logged = make_trainer(
        fresh_block(plain_llava), llava_tokenizer, tmp_path / "logged", max_steps=2, save_strategy="no"
    )
    logged.train()
    logged.save_result()
    history = json.loads((tmp_path / "logged" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in history if "loss" in row] == [1, 2]
    assert all("rewards/margins" in row and "logits/chosen" in row for row in history if "loss" in row)
    assert_curve_panels(tmp_path / "logged" / "training_curves.png", 3)  # loss, reward margin, reward accuracy


def test_stage2_reference_keeps_its_own_copy_of_the_initial_lm_head(plain_llava, llava_tokenizer, tmp_path):
    model = fresh_block(plain_llava)
    initial = copy.deepcopy(model)
    trainer = make_trainer(
        model, llava_tokenizer, tmp_path / "run", tune_lm_head=True, max_steps=3, save_strategy="no"
    )
    trainer.train()
    wrapper = trainer.model
    assert not torch.equal(wrapper.policy.lm_head.weight, initial.lm_head.weight)  # the policy's head moved
    assert torch.equal(wrapper.reference.lm_head.weight, initial.lm_head.weight)  # the reference's did not

    from ha_dpo.objective.pair_logps import ReferenceHead, shared_pair_logps

    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = make_batch(model, llava_tokenizer, pixel_values)
    with torch.no_grad():
        logps = wrapper(**batch)
        start = shared_pair_logps(initial, ReferenceHead.snapshot(initial, copy_lm_head=True), batch)
    # the reference is the start
    torch.testing.assert_close(logps.reference_chosen, start.policy_chosen, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logps.policy_chosen, start.policy_chosen, atol=1e-3)
