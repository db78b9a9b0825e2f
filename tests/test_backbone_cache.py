"""The backbone cache (`--backbone_cache DIR`) with DPO: training from it equals training without it, later
runs never run the backbone, it refuses what it was not built for, an interrupted build resumes, and the
cache's dtype, prompt states and content keys do what they say. Multi-process runs: the last two tests."""

import copy
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ha_dpo.cache import run as cache_run
from ha_dpo.cache import store as store_module
from ha_dpo.cache.identity import MANIFEST, backbone_fingerprint, config_digest
from ha_dpo.trainer.checkpoints import TRAINABLE_WEIGHTS
from post_decoder.families.llava.tiny import save_llava_hf
from tests.helpers import add_noise, free_port, named, with_block
from tests.helpers.backbone_cache import BackboneCalls, assert_same_weights
from tests.helpers.data_files import write_hadpo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "ha_dpo", "train_dpo_post.py")
STAGES = {"1": ["--tune_post_decoder", "True"], "2": ["--tune_post_decoder", "True", "--tune_lm_head", "True"],
          "head": ["--tune_lm_head", "True"]}  # fmt: skip


@pytest.fixture(scope="module")
def base_and_data(plain_llava, llava_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone_cache")
    base = save_llava_hf(plain_llava, llava_tokenizer, str(root / "base"))
    vg_path, desc_data, pope_data = write_hadpo(root / "hadpo")
    return base, ["--vg_path", vg_path, "--desc_data_path", desc_data, "--pope_data_path", pope_data]


def flags(base_and_data, output_dir, *extra, stage="1", steps=4):
    base, data = base_and_data
    return ["--model_name_or_path", base, *data, *STAGES[stage], "--use_cpu", "True", "--output_dir", str(output_dir),
            "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--learning_rate", "5e-3",
            "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--seed", "0", "--model_max_length", "512", "--disable_tqdm", "True", "--plot", "False",
            *extra]  # fmt: skip


def train(argv, capsys=None):
    """The training command in this process; returns (trained tensors, what it printed)."""
    from ha_dpo.cli.train_dpo_post import main

    main(argv)
    output = capsys.readouterr().out if capsys is not None else ""
    output_dir = argv[argv.index("--output_dir") + 1]
    return load_file(os.path.join(output_dir, TRAINABLE_WEIGHTS)), output


def assert_close_updates(one, two, relative):
    """The zero-initialised projections hold exactly what training added: `one`'s within `relative` of `two`'s
    (under SGD, which keeps a small difference in a gradient small; Adam's per-weight normalisation would blow
    it up where a gradient is near zero)."""
    updates = [name for name in two if "o_proj" in name or "down_proj" in name]
    assert updates
    for name in updates:
        scale = two[name].abs().max()
        assert scale > 0, f"{name} did not move"
        assert (one[name] - two[name]).abs().max() <= relative * scale, name


def cache_bytes(directory) -> int:
    return sum(os.path.getsize(path) for path in glob.glob(os.path.join(directory, store_module.SHARD_GLOB)))


@pytest.mark.parametrize("stage", ["1", "2", "head"])
def test_training_from_the_cache_equals_training_without_it_bit_for_bit(
    base_and_data, tmp_path, capsys, monkeypatch, stage
):
    plain, _ = train(flags(base_and_data, tmp_path / "plain", stage=stage))
    cache = tmp_path / "cache"
    built, printed = train(
        flags(base_and_data, tmp_path / "built", "--backbone_cache", str(cache), stage=stage), capsys
    )
    estimate = re.search(r"building 7 pairs and 4 images: about ([\d.]+) KiB on disk", printed)
    assert estimate, printed  # the disk it will take is said before the build
    assert abs(float(estimate.group(1)) * 1024 - cache_bytes(cache)) < 0.1 * cache_bytes(cache)  # headers aside

    calls = BackboneCalls(monkeypatch)
    read, printed = train(flags(base_and_data, tmp_path / "read", "--backbone_cache", str(cache), stage=stage), capsys)
    assert calls.count == 0  # a later run reads the cache instead of running the backbone
    assert "all 7 pairs are there" in printed
    assert_same_weights(plain, built)  # the run that builds the cache trains on exactly its own states
    assert_same_weights(plain, read)
    moved = [name for name in plain if "o_proj" in name or name == "lm_head.weight"]
    base = load_file(os.path.join(base_and_data[0], "model.safetensors"))
    assert moved and all(not torch.equal(plain[name], base.get(name, torch.zeros_like(plain[name]))) for name in moved)


def test_bf16_runs_and_data_loader_workers_read_the_cache_bit_for_bit(base_and_data, tmp_path):
    settings = ["--bf16", "True", "--dataloader_num_workers", "2"]  # bf16 autocast; the store opened in workers
    plain, _ = train(flags(base_and_data, tmp_path / "plain", *settings))
    cache = tmp_path / "cache"
    built, _ = train(flags(base_and_data, tmp_path / "built", *settings, "--backbone_cache", str(cache)))
    read, _ = train(flags(base_and_data, tmp_path / "read", *settings, "--backbone_cache", str(cache)))
    assert_same_weights(plain, built)
    assert_same_weights(plain, read)
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["identity"]["compute_dtype"] == "bfloat16"


def test_training_starts_from_the_random_state_it_would_have_without_a_cache(base_and_data, tmp_path, monkeypatch):
    from ha_dpo.trainer.trainer import PreferenceTrainer

    states, real_train = [], PreferenceTrainer.train

    def train_recording(trainer, *args, **kwargs):
        states.append((torch.get_rng_state(), random.getstate(), np.random.get_state()[1]))
        return real_train(trainer, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "train", train_recording)
    train(flags(base_and_data, tmp_path / "plain", steps=1))
    train(flags(base_and_data, tmp_path / "cached", "--backbone_cache", str(tmp_path / "cache"), steps=1))
    (torch_plain, python_plain, numpy_plain), (torch_cached, python_cached, numpy_cached) = states
    assert torch.equal(torch_plain, torch_cached) and python_plain == python_cached
    assert (numpy_plain == numpy_cached).all()


def test_pairs_the_first_epoch_leaves_out_are_built_too(base_and_data, tmp_path, capsys, monkeypatch):
    """--dataloader_drop_last drops the first epoch's last, short batch; a later epoch may serve its pairs."""
    from ha_dpo.trainer.trainer import TrainableOnlyTrainer

    base, data = base_and_data
    pope_only = (base, data[:2] + data[4:])  # the 3 usable pope pairs, each once: a batch of 2, 1 left out
    first_epoch, real_batches = [], TrainableOnlyTrainer.first_epoch_batches

    def recorded(trainer):
        first_epoch.append(real_batches(trainer))
        return first_epoch[-1]

    monkeypatch.setattr(TrainableOnlyTrainer, "first_epoch_batches", recorded)
    dropping = ["--dataloader_drop_last", "True", "--per_device_train_batch_size", "2", "--max_steps", "-1",
                "--num_train_epochs", "2", "--backbone_cache", str(tmp_path / "cache")]  # fmt: skip
    train(flags(pope_only, tmp_path / "run", *dropping), capsys)
    assert [len(batch) for batch in first_epoch[0]] == [2]
    _, printed = train(flags(pope_only, tmp_path / "again", "--backbone_cache", str(tmp_path / "cache")), capsys)
    assert "all 3 pairs are there" in printed


@pytest.mark.slow
def test_transformer_block_reads_the_prompt_states_a_cache_stores_for_it(base_and_data, tmp_path, capsys):
    variant = ["--post_decoder_variant", "transformer_block"]
    plain, _ = train(flags(base_and_data, tmp_path / "plain", *variant))
    answers_only = tmp_path / "answers_only"
    train(flags(base_and_data, tmp_path / "block", "--backbone_cache", str(answers_only)))
    with pytest.raises(ValueError, match="transformer_block's self-attention also reads every prompt position"):
        train(flags(base_and_data, tmp_path / "refused", "--backbone_cache", str(answers_only), *variant))

    with_prompts = tmp_path / "with_prompts"
    cached, _ = train(flags(base_and_data, tmp_path / "cached", "--backbone_cache", str(with_prompts), *variant))
    assert_same_weights(plain, cached)
    assert json.loads((with_prompts / MANIFEST).read_text())["prompt_states"] is True
    assert cache_bytes(with_prompts) > 2 * cache_bytes(answers_only)  # every prompt position: the cost
    token_wise, _ = train(flags(base_and_data, tmp_path / "token_wise", "--backbone_cache", str(with_prompts)))
    assert_same_weights(train(flags(base_and_data, tmp_path / "plain_token_wise"))[0], token_wise)


def test_a_cache_of_another_backbone_or_template_is_refused_naming_what_differs(
    base_and_data, plain_llava, llava_tokenizer, tmp_path
):
    cache = tmp_path / "cache"
    train(flags(base_and_data, tmp_path / "built", "--backbone_cache", str(cache), steps=1))
    other = save_llava_hf(add_noise(copy.deepcopy(plain_llava), 0.01), llava_tokenizer, str(tmp_path / "other_base"))
    other_flags = flags(base_and_data, tmp_path / "other", "--backbone_cache", str(cache), steps=1)
    other_flags[other_flags.index("--model_name_or_path") + 1] = other
    with pytest.raises(ValueError, match=r"was built for another run \(backbone_weights '[0-9a-f]+' there"):
        train(other_flags)
    with pytest.raises(ValueError, match=r"conv_mode 'vicuna_v1' there, 'llava_v1' now"):
        train(flags(base_and_data, tmp_path / "mode", "--backbone_cache", str(cache), "--conv_mode", "llava_v1"))
    with pytest.raises(ValueError, match=r"compute_dtype 'float32' there, 'bfloat16' now"):
        train(flags(base_and_data, tmp_path / "bf16", "--backbone_cache", str(cache), "--bf16", "True"))


def test_a_block_and_a_new_head_leave_the_backbones_identity_as_it_was(plain_llava):
    """Stage 1, stage 2 (from the merged stage 1, which has a block) and head-only runs of one base share a cache."""
    with_a_block = with_block(plain_llava, "post_interaction")
    add_noise(with_a_block.post_decoder, 0.1), add_noise(with_a_block.lm_head, 0.1)
    without = with_block(plain_llava, "post_interaction")
    without.post_decoder, without.config.post_decoder_config = None, None
    assert backbone_fingerprint(with_a_block) == backbone_fingerprint(without)
    assert config_digest(with_a_block.config) == config_digest(plain_llava.config)
    add_noise(without.model.multi_modal_projector, 0.01)  # any change to the backbone is seen
    assert backbone_fingerprint(with_a_block) != backbone_fingerprint(without)


def test_lora_and_the_cache_flags_without_a_cache_are_refused(base_and_data, tmp_path):
    lora = flags(base_and_data, tmp_path / "lora", "--backbone_cache", str(tmp_path / "cache"))
    lora[lora.index("--tune_post_decoder") : lora.index("--tune_post_decoder") + 2] = ["--lora_enable", "True"]
    with pytest.raises(ValueError, match="LoRA trains the backbone, so its outputs change at every step"):
        train(lora)
    with pytest.raises(ValueError, match="--cache_dtype needs --backbone_cache DIR"):
        train(flags(base_and_data, tmp_path / "dtype", "--cache_dtype", "bfloat16"))


def test_zero3_is_refused_a_cache_before_anything_is_built(base_and_data, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_run, "is_deepspeed_zero3_enabled", lambda: True)  # as under scripts/zero3.json
    with pytest.raises(ValueError, match="ZeRO-3 partitions its weights as the model loads; use scripts/zero2.json"):
        train(flags(base_and_data, tmp_path / "run", "--backbone_cache", str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists()


def test_an_interrupted_build_keeps_its_shards_and_resumes(base_and_data, tmp_path, monkeypatch):
    plain, _ = train(flags(base_and_data, tmp_path / "plain"))
    monkeypatch.setattr(cache_run, "SHARD_BYTES", 1)  # a shard per batch
    real_flush, flushes = store_module.ShardWriter.flush, []

    def flush_then_crash(writer):
        real_flush(writer)
        flushes.append(writer.written)
        if len(flushes) == 2:
            raise KeyboardInterrupt  # killed after its second shard

    monkeypatch.setattr(store_module.ShardWriter, "flush", flush_then_crash)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        train(flags(base_and_data, tmp_path / "killed", "--backbone_cache", str(cache)))
    assert len(glob.glob(str(cache / store_module.SHARD_GLOB))) == 2
    assert not [name for name in os.listdir(cache) if name.startswith(".")]  # no torn file left
    monkeypatch.setattr(store_module.ShardWriter, "flush", real_flush)
    calls = BackboneCalls(monkeypatch)
    train(flags(base_and_data, tmp_path / "fresh", "--backbone_cache", str(tmp_path / "fresh_cache")))
    fresh, calls.count = calls.count, 0
    resumed, _ = train(flags(base_and_data, tmp_path / "resumed", "--backbone_cache", str(cache)))
    # The 2 batches built before the kill are not run again (2 backbone passes each), nor those whose pairs they
    # held (HA-DPO's description pairs come twice).
    assert 0 < calls.count <= fresh - 2 * 2
    assert_same_weights(plain, resumed)


@pytest.mark.slow
def test_a_run_resumed_from_a_checkpoint_reads_the_cache_to_the_same_result(base_and_data, tmp_path, monkeypatch):
    cache = ["--backbone_cache", str(tmp_path / "cache")]
    saving = ["--save_strategy", "steps", "--save_steps", "2"]
    straight, _ = train(flags(base_and_data, tmp_path / "straight", *cache, *saving))
    train(flags(base_and_data, tmp_path / "interrupted", *cache, *saving, steps=2))
    calls = BackboneCalls(monkeypatch)
    resume = ["--resume_from_checkpoint", str(tmp_path / "interrupted" / "checkpoint-2")]
    resumed, _ = train(flags(base_and_data, tmp_path / "interrupted", *cache, *saving, *resume))
    assert calls.count == 0
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-5, msg=named(name))


@pytest.mark.slow
def test_a_cache_in_another_dtype_is_read_back_in_the_runs_dtype(base_and_data, tmp_path):
    sgd, cache = ["--optim", "sgd"], tmp_path / "cache"
    plain, _ = train(flags(base_and_data, tmp_path / "plain", *sgd))
    half, _ = train(
        flags(base_and_data, tmp_path / "half", *sgd, "--backbone_cache", str(cache), "--cache_dtype", "bfloat16")
    )
    for path in glob.glob(str(cache / store_module.SHARD_GLOB)):
        with safe_open(path, framework="pt") as shard:
            assert {shard.get_tensor(key).dtype for key in shard.keys()} == {torch.bfloat16}
    assert_close_updates(half, plain, relative=0.02)  # the states lost their last 16 bits: close, not equal
    assert any(not torch.equal(half[name], plain[name]) for name in plain)
    with pytest.raises(ValueError, match=r"cache_dtype 'bfloat16' there, 'float16' now"):
        train(flags(base_and_data, tmp_path / "other", "--backbone_cache", str(cache), "--cache_dtype", "float16"))
    again, _ = train(flags(base_and_data, tmp_path / "again", *sgd, "--backbone_cache", str(cache)))  # its dtype
    assert_same_weights(half, again)


@pytest.mark.slow
def test_another_seed_adds_only_its_own_pairs_and_a_second_epoch_reads_the_first(base_and_data, tmp_path, capsys):
    """HA-DPO's description pairs are drawn with the seed: seed 1 shares the pope pairs with seed 0 and adds its
    own draws. A pair's states computed in another batch (another run's, or the first epoch's) differ from a
    recomputation in the last bits (padding changes the attention's op order): close, not equal."""
    sgd, cache = ["--optim", "sgd", "--per_device_train_batch_size", "4"], ["--backbone_cache", str(tmp_path / "c")]
    train(flags(base_and_data, tmp_path / "seed0", *sgd, *cache), capsys)
    seed1 = ["--seed", "1", *sgd]
    cached, printed = train(flags(base_and_data, tmp_path / "seed1", *seed1, *cache), capsys)
    shared, total = map(int, re.search(r"(\d+) of (\d+) distinct pairs there", printed).groups())
    assert 0 < shared < total
    plain, _ = train(flags(base_and_data, tmp_path / "seed1_plain", *seed1))
    assert_close_updates(cached, plain, relative=1e-5)

    epochs = ["--num_train_epochs", "3", "--max_steps", "-1", *sgd]
    plain, _ = train(flags(base_and_data, tmp_path / "epochs_plain", *epochs))
    cached, _ = train(flags(base_and_data, tmp_path / "epochs", *epochs, "--backbone_cache", str(tmp_path / "e")))
    assert_close_updates(cached, plain, relative=1e-5)


class FakeSource:
    """Pairs 0..n-1, each its own entry key and no image."""

    entry_keys = [f"pair/{index}" for index in range(100)]

    def keys_of(self, index):
        return [self.entry_keys[index]]


def test_a_batch_mostly_missing_runs_whole_and_the_few_missing_pairs_of_other_batches_run_together():
    from ha_dpo.cache.build import batches_to_run

    held = {f"pair/{index}" for index in (0, 1, 2, 4, 5, 6, 9, 10, 12, 13, 14, 15)}
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [3, 16, 17, 18]]
    # [8, 9, 10, 11] and [3, 16, 17, 18] miss half or more: they run as training runs them; 3 (in the last
    # one too) and 7, alone in their batches, would run together: 7 does; [12 .. 15] runs nothing.
    assert batches_to_run(batches, FakeSource(), held) == [[8, 9, 10, 11], [3, 16, 17, 18], [7]]


def run(command):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-20000:]
    return result.stdout + result.stderr


LAUNCHERS = {
    "torchrun": lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", str(port), TRAIN],
    "deepspeed": lambda port: ["deepspeed", "--num_gpus", "2", "--master_port", str(port), TRAIN,
                               "--deepspeed", os.path.join(ROOT, "scripts", "zero2.json")],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_processes_build_their_shares_and_train_as_one_process_does(base_and_data, tmp_path, launcher):
    if launcher == "deepspeed" and shutil.which("deepspeed") is None:
        pytest.skip("the deepspeed launcher is not installed")
    sgd = ["--optim", "sgd"]  # Adam would blow the ranks' summation-order noise up to full-size steps
    cache = tmp_path / "cache"
    single, _ = train(flags(base_and_data, tmp_path / "single", *sgd))
    per_rank = flags(base_and_data, tmp_path / "two", *sgd, "--backbone_cache", str(cache))
    per_rank[per_rank.index("--per_device_train_batch_size") + 1] = "1"  # 2 ranks x 1 = the same global batch
    if launcher == "deepspeed":  # DeepSpeed's own CPU accelerator (gloo), as tests/test_train_cli.py runs it
        del per_rank[per_rank.index("--use_cpu") : per_rank.index("--use_cpu") + 2]
    output = run([*LAUNCHERS[launcher](free_port()), *per_rank])
    assert output.count("building 7 pairs") == 1  # said once, by the first process
    shards = glob.glob(str(cache / store_module.SHARD_GLOB))
    assert {re.search(r"-r(\d)-", path).group(1) for path in shards} == {"0", "1"}  # each rank built its share
    two = load_file(tmp_path / "two" / TRAINABLE_WEIGHTS)
    for name in single:
        torch.testing.assert_close(two[name], single[name], atol=1e-5, rtol=1e-5, msg=named(name))

    per_rank[per_rank.index("--output_dir") + 1] = str(tmp_path / "again")
    output = run([*LAUNCHERS[launcher](free_port()), *per_rank])
    assert "all 7 pairs are there" in output and glob.glob(str(cache / store_module.SHARD_GLOB)) == shards
    assert_same_weights(two, load_file(tmp_path / "again" / TRAINABLE_WEIGHTS))
