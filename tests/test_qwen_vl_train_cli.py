"""The training commands on tiny Qwen-VL folders in the hub's layout (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with the same
HA-DPO and LLaVA-format data as LLaVA's: the same flags, stage 1 -> merge -> stage 2 -> merge -> load, SFT, the LoRA
baseline, the backbone cache, and what is refused. In this process (the tiny models train in seconds)."""

import math
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from ha_dpo.trainer.checkpoints import TRAINABLE_WEIGHTS
from post_decoder.builder import load_pretrained_model
from post_decoder.families.qwen_vl import QwenVLFamily
from post_decoder.family import family_for
from tests.helpers import free_port, named
from tests.helpers.backbone_cache import assert_same_weights
from tests.helpers.data_files import write_hadpo, write_llava
from tests.helpers.qwen_vl import VERSIONS, TinyQwen
from tests.helpers.training_runs import backbone_state, common_flags, merge, train_dpo, train_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "ha_dpo", "train_dpo_post.py")


@pytest.fixture(scope="module", params=VERSIONS)
def world(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"qwen_cli_{request.param}")
    tiny = TinyQwen(request.param, root)
    vg_path, desc_data, pope_data = write_hadpo(root / "hadpo")  # VG images of five sizes, a missing and a bad one
    tiny.hadpo = ["--vg_path", vg_path, "--desc_data_path", desc_data, "--pope_data_path", pope_data]
    tiny.llava = write_llava(root / "llava")
    return tiny


def test_stage1_merge_stage2_merge_load_gives_the_trained_model(world, tmp_path, capsys):
    stage1 = tmp_path / "stage1"
    trainer = train_dpo(world.folder, world.hadpo, stage1, "--tune_post_decoder", "True")
    printed = capsys.readouterr().out
    assert "missing image" in printed  # the dataset's bad samples are reported, as for LLaVA
    history = trainer.state.log_history
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # a new block starts as the identity
    assert history[-2]["loss"] != history[0]["loss"]
    _, base, _, _ = load_pretrained_model(world.folder, device="cpu", dtype=torch.float32)
    trained_model = trainer.model.policy
    for name, tensor in backbone_state(base).items():  # the frozen backbone, bit for bit
        assert torch.equal(trained_model.state_dict()[name], tensor), name
    stage1_weights = load_file(stage1 / TRAINABLE_WEIGHTS)
    assert stage1_weights and all(name.startswith("post_decoder.") for name in stage1_weights)
    assert (stage1 / "checkpoint-2" / TRAINABLE_WEIGHTS).is_file()
    merged1 = merge(1, world.folder, str(stage1), str(tmp_path / "merged1"))

    stage2 = tmp_path / "stage2"
    train_dpo(merged1, world.hadpo, stage2, "--tune_post_decoder", "True", "--tune_lm_head", "True")
    stage2_weights = load_file(stage2 / TRAINABLE_WEIGHTS)
    assert "lm_head.weight" in stage2_weights
    merged2 = merge(2, merged1, str(stage2), str(tmp_path / "merged2"))

    _, model, processor, _ = load_pretrained_model(merged2, device="cpu", dtype=torch.float32)
    assert isinstance(family_for(model), QwenVLFamily) and model.post_decoder is not None
    state = model.state_dict()
    for name, tensor in stage2_weights.items():
        assert torch.equal(state[name], tensor), name
    assert not torch.equal(stage2_weights["lm_head.weight"], base.state_dict()["lm_head.weight"])
    for name, tensor in backbone_state(base).items():  # everything else is the base, bit for bit
        assert torch.equal(state[name], tensor), name


def test_sft_on_llava_format_data_keeps_or_drops_text_only_samples_counted(world, tmp_path, capsys):
    trainer = train_sft(world, tmp_path / "kept")
    printed = capsys.readouterr().out
    assert "samples without an image (kept; the block passes them through): 1" in printed
    assert len(trainer.train_dataset) == 5  # multi, text-only, gpt-first, rgba, palette
    trained = load_file(tmp_path / "kept" / TRAINABLE_WEIGHTS)
    assert any(tensor.abs().sum() > 0 for name, tensor in trained.items() if "down_proj" in name)  # it learned

    trainer = train_sft(world, tmp_path / "dropped", "--keep_text_only", "False")
    printed = capsys.readouterr().out
    assert "samples without an image (left out: keep_text_only is off): 4" in printed  # 3 of them malformed
    assert len(trainer.train_dataset) == 4


def test_the_lora_baseline_trains_adapters_on_the_language_model(world, tmp_path):
    output = tmp_path / "lora"
    train_dpo(world.folder, world.hadpo, output, "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
              steps=2)  # fmt: skip
    trained = load_file(output / TRAINABLE_WEIGHTS)
    assert trained and all("lora_" in name for name in trained)
    assert all("language_model" in name for name in trained)  # never the vision encoder or the merger
    assert any(tensor.abs().sum() > 0 for name, tensor in trained.items() if "lora_B" in name)  # it learned


def assert_close_weights(one, two):
    assert set(one) == set(two)
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-6, rtol=1e-5, msg=named(name))


def test_training_from_the_backbone_cache_equals_training_without_it(world, tmp_path, monkeypatch):
    """Equal to float rounding, not bit for bit as LLaVA's tiny runs: HA-DPO uses each description pair twice an
    epoch, and the cache holds the states of the batch a pair was first built in, while a run without it computes
    them again beside other pairs, whose prompts (their images' own counts) pad the batch to another width."""
    plain = train_dpo(world.folder, world.hadpo, tmp_path / "plain", "--tune_post_decoder", "True", "--save_strategy",
                      "no", steps=4)  # fmt: skip
    cache = str(tmp_path / "cache")
    flags = ["--tune_post_decoder", "True", "--save_strategy", "no", "--backbone_cache", cache]
    train_dpo(world.folder, world.hadpo, tmp_path / "built", *flags, steps=4)
    calls = []
    real = type(plain.model.policy).backbone_forward
    monkeypatch.setattr(type(plain.model.policy), "backbone_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    read = train_dpo(world.folder, world.hadpo, tmp_path / "read", *flags, steps=4)
    assert not calls  # a later run reads the cache instead of running the backbone
    weights = {name: load_file(tmp_path / name / TRAINABLE_WEIGHTS) for name in ("plain", "built", "read")}
    assert_same_weights(weights["built"], weights["read"])
    assert_close_weights(weights["plain"], weights["built"])
    assert any(tensor.abs().sum() > 0 for name, tensor in weights["read"].items() if "o_proj" in name)  # it learned
    assert plain.state.log_history[0]["loss"] == read.state.log_history[0]["loss"]
    monkeypatch.undo()

    sft_plain = load_file(_sft(world, tmp_path / "sft_plain") / TRAINABLE_WEIGHTS)
    sft_cache = ["--backbone_cache", str(tmp_path / "sft_cache")]
    _sft(world, tmp_path / "sft_built", *sft_cache)
    sft_read = load_file(_sft(world, tmp_path / "sft_read", *sft_cache) / TRAINABLE_WEIGHTS)
    assert_close_weights(sft_plain, sft_read)


def _sft(world, output_dir, *extra):
    train_sft(world, output_dir, "--save_strategy", "no", *extra, steps=4)
    return output_dir


def test_llava_only_flags_and_templates_are_refused_in_one_line(world, tmp_path, capsys):
    from ha_dpo.cli import train_dpo_post
    from post_decoder.errors import run_command

    base = ["--model_name_or_path", world.folder, *world.hadpo, "--tune_post_decoder", "True"]
    for extra, phrase in (
        (["--mm_vision_select_layer", "-2"], "has no such setting (a LLaVA-1.5 flag): drop the flag"),
        (["--vision_tower", "openai/clip-vit-large-patch14-336"], "takes images of any size"),
        (["--conv_mode", "vicuna_v1"], f"is not a template of {family_for(world.plain).name} models"),
    ):
        with pytest.raises(SystemExit) as stop:
            argv = [*base, *extra, "--use_cpu", "True", *common_flags(tmp_path / "run")]
            run_command(train_dpo_post.main, argv, program="train_dpo_post.py")
        assert stop.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("train_dpo_post.py: error: ") and phrase in last, last


def test_max_pixels_reaches_the_image_processor_and_the_counts(world, tmp_path):
    counts = {}
    for name, extra in (("default", []), ("smaller", ["--max_pixels", "256"])):
        trainer = train_dpo(world.folder, world.hadpo, tmp_path / name, "--tune_post_decoder", "True", *extra,
                            "--save_strategy", "no", steps=1)  # fmt: skip
        dataset = trainer.train_dataset
        image_id = family_for(world.plain).image_token_id(world.plain.config)
        counts[name] = sorted({int((dataset[i]["prompt_input_ids"] == image_id).sum()) for i in range(len(dataset))})
    assert len(counts["default"]) > 1  # dynamic resolution: the VG images take different counts
    assert max(counts["smaller"]) <= 4 < max(counts["default"])  # at most 16x16 pixels: 2x2 merged patches


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not installed")
@pytest.mark.slow
def test_two_process_deepspeed_zero2_on_the_cpu_matches_one_process(world, tmp_path):
    if world.version != "qwen2_5_vl":
        pytest.skip("one version is enough for the launcher: the code paths are the family's, tested above")
    # SGD: Adam's per-weight normalisation would blow summation-order noise up to full-size steps.
    flags = ["--model_name_or_path", world.folder, *world.hadpo, "--tune_post_decoder", "True", "--optim", "sgd"]
    single = tmp_path / "single"
    train_dpo(world.folder, world.hadpo, single, "--tune_post_decoder", "True", "--optim", "sgd")
    distributed = tmp_path / "zero2"
    per_rank = common_flags(distributed)
    per_rank[per_rank.index("--per_device_train_batch_size") + 1] = "1"  # 2 ranks x 1 = the same global batch
    command = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), TRAIN, *flags,
               "--deepspeed", os.path.join(ROOT, "scripts", "zero2.json"), *per_rank]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-20000:]
    assert (distributed / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's optimizer shards
    one, two = load_file(single / TRAINABLE_WEIGHTS), load_file(distributed / TRAINABLE_WEIGHTS)
    assert set(one) == set(two)
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-5, msg=named(name))
