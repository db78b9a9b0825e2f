"""The training CLI end to end on a tiny model and a small HA-DPO-format dataset: `python` and a
two-process `deepspeed` ZeRO-2 run on the CPU; stage 1 -> merge -> stage 2 -> merge -> load."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ha_dpo.checkpoints import TRAINABLE_WEIGHTS
from post_decoder.builder import load_pretrained_model
from post_decoder.tiny import save_llava_hf
from tests.data_files import write_hadpo, write_llava

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "ha_dpo", "train_dpo_post.py")
TRAIN_SFT = os.path.join(ROOT, "ha_dpo", "train_llava_post.py")
REPLACE_BIN = os.path.join(ROOT, "scripts", "replace_bin.py")


@pytest.fixture(scope="module")
def base_and_data(plain_llava, llava_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    base = save_llava_hf(plain_llava, llava_tokenizer, str(root / "base"))
    vg_path, desc_data, pope_data = write_hadpo(root / "hadpo")
    return base, ["--vg_path", vg_path, "--desc_data_path", desc_data, "--pope_data_path", pope_data]


def common_flags(output_dir, steps=3):
    return [
        "--output_dir", str(output_dir), "--max_steps", str(steps), "--per_device_train_batch_size", "2",
        "--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1",
        "--save_steps", "2", "--report_to", "none", "--seed", "0", "--evaluation_strategy", "no",
        "--model_max_length", "512", "--dataloader_num_workers", "0",
    ]


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def merge(stage, model, trained, output):
    run([sys.executable, REPLACE_BIN, "--merge", "--tune_stage", str(stage), "--path_model_state_dict", model,
         "--path_non_lora_state_dict", trained, "--output", output])
    return output


def test_stage1_merge_stage2_merge_load_gives_the_trained_model(base_and_data, tmp_path):
    base, data = base_and_data
    stage1 = tmp_path / "stage1"
    output = run([sys.executable, TRAIN, "--model_name_or_path", base, *data, "--tune_post_decoder", "True",
                  "--freeze_backbone", "True", "--use_cpu", "True", *common_flags(stage1)])
    assert "skipped" in output and "missing" in output  # the dataset's bad samples are reported
    assert (stage1 / "training_curves.png").stat().st_size > 5000
    assert (stage1 / "checkpoint-2" / TRAINABLE_WEIGHTS).is_file()
    stage1_weights = load_file(stage1 / TRAINABLE_WEIGHTS)
    assert stage1_weights and all(name.startswith("post_decoder.") for name in stage1_weights)
    merged1 = merge(1, base, str(stage1), str(tmp_path / "merged1"))

    stage2 = tmp_path / "stage2"
    run([sys.executable, TRAIN, "--model_name_or_path", merged1, *data, "--tune_post_decoder", "True",
         "--tune_lm_head", "True", "--use_cpu", "True", *common_flags(stage2)])
    stage2_weights = load_file(stage2 / TRAINABLE_WEIGHTS)
    assert "lm_head.weight" in stage2_weights
    merged2 = merge(2, merged1, str(stage2), str(tmp_path / "merged2"))

    _, model, _, _ = load_pretrained_model(merged2, device="cpu", dtype=torch.float32)
    _, original, _, _ = load_pretrained_model(base, device="cpu", dtype=torch.float32)
    state, base_state = model.state_dict(), original.state_dict()
    for name, tensor in stage2_weights.items():
        assert torch.equal(state[name], tensor), name
    assert not torch.equal(stage2_weights["lm_head.weight"], base_state["lm_head.weight"])
    for name, tensor in base_state.items():  # everything else is the base, bit for bit
        if name != "lm_head.weight":
            assert torch.equal(state[name], tensor), name


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not installed")
def test_two_process_deepspeed_zero2_on_the_cpu_matches_one_process(base_and_data, tmp_path):
    base, data = base_and_data
    # SGD: Adam's per-weight normalisation would blow summation-order noise up to full-size steps.
    flags = ["--model_name_or_path", base, *data, "--tune_post_decoder", "True", "--optim", "sgd"]
    single = tmp_path / "single"
    run([sys.executable, TRAIN, *flags, "--use_cpu", "True", *common_flags(single)])

    distributed = tmp_path / "zero2"
    per_rank = common_flags(distributed)
    per_rank[per_rank.index("--per_device_train_batch_size") + 1] = "1"  # 2 ranks x 1 = the same global batch
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    run(["deepspeed", "--num_gpus", "2", "--master_port", "29561", TRAIN, *flags,
         "--deepspeed", os.path.join(ROOT, "scripts", "zero2.json"), *per_rank], env=environment)

    assert (distributed / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's optimizer shards
    one, two = load_file(single / TRAINABLE_WEIGHTS), load_file(distributed / TRAINABLE_WEIGHTS)
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
    assert any(not torch.equal(tensor, torch.zeros_like(tensor)) for name, tensor in two.items() if "o_proj" in name)


def test_supervised_fine_tuning_of_the_block_on_llava_data(base_and_data, tmp_path):
    base, _ = base_and_data
    data_path, image_folder = write_llava(tmp_path / "llava")
    output_dir = tmp_path / "sft"
    output = run([sys.executable, TRAIN_SFT, "--model_name_or_path", base, "--data_path", data_path,
                  "--image_folder", image_folder, "--tune_post_decoder", "True", "--use_cpu", "True",
                  *common_flags(output_dir)])
    assert "without an image" in output  # text-only samples are counted, kept by default
    trained = load_file(output_dir / TRAINABLE_WEIGHTS)
    assert trained and all(name.startswith("post_decoder.") for name in trained)
    assert any(tensor.abs().sum() > 0 for name, tensor in trained.items() if "down_proj" in name)  # it learned
    assert (output_dir / "training_curves.png").is_file()
