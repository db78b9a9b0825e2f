import argparse
import hashlib
import json
import os
import re
import runpy
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from post_decoder import checkpoint_files
from post_decoder.builder import load_pretrained_model
from post_decoder.families.llava.tiny import save_llava_hf, save_original_llava
from post_decoder.saving import load_sharded_state_dict
from post_decoder.stage_weights import StageWeightsError, merge, replace_bin
from tests.helpers import add_noise, image_batch, with_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
replace_bin_main = runpy.run_path(os.path.join(ROOT, "scripts", "replace_bin.py"))["main"]
QUESTIONS = ["Is there a dog in the image?", "Describe the image in detail."]
FORMATS = ("safetensors shards, hub keys", "bin shards, hub keys", "safetensors shards, transformers 5 keys")


# --- checkpoints in the real formats ---


def to_bin_shards(folder):
    """Rewrite a safetensors-sharded folder as `.bin` shards with `pytorch_model.bin.index.json`."""
    with open(os.path.join(folder, "model.safetensors.index.json")) as handle:
        index = json.load(handle)
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        renamed[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(os.path.join(folder, shard)), os.path.join(folder, renamed[shard]))
        os.remove(os.path.join(folder, shard))
    index["weight_map"] = {key: renamed[shard] for key, shard in index["weight_map"].items()}
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as handle:
        json.dump(index, handle)
    os.remove(os.path.join(folder, "model.safetensors.index.json"))


def to_transformers5_keys(folder, model):
    """Rewrite the weights under transformers 5's own names (`model.language_model.*`), in 3 shards."""
    for name in os.listdir(folder):
        if name.startswith("model") and (name.endswith(".safetensors") or name.endswith(".json")):
            os.remove(os.path.join(folder, name))
    names = sorted(model.state_dict())
    weight_map = {}
    for number, start in enumerate(range(0, len(names), len(names) // 3 + 1), 1):
        shard = f"model-{number:05d}-of-00003.safetensors"
        save_file(
            {name: model.state_dict()[name].clone() for name in names[start : start + len(names) // 3 + 1]},
            os.path.join(folder, shard),
        )
        weight_map.update({name: shard for name in names[start : start + len(names) // 3 + 1]})
    total = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle)


def llava_hf_folder(plain, tokenizer, folder, checkpoint_format):
    save_llava_hf(plain, tokenizer, folder)
    os.remove(os.path.join(folder, "model.safetensors"))
    plain.save_pretrained(folder, max_shard_size="50KB")
    if checkpoint_format.startswith("bin"):
        to_bin_shards(folder)
    elif "transformers 5" in checkpoint_format:
        to_transformers5_keys(folder, plain)
    return folder


@pytest.fixture(scope="module")
def bases(plain_llava, llava_tokenizer, text_vocab_size, tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    folders = {
        fmt: llava_hf_folder(plain_llava, llava_tokenizer, str(root / f"hf{i}"), fmt) for i, fmt in enumerate(FORMATS)
    }
    folders["single safetensors file"] = save_llava_hf(plain_llava, llava_tokenizer, str(root / "single"))
    folders["original"] = save_original_llava(plain_llava, text_vocab_size, tokenizer_dir, str(root / "original"))
    return folders


@pytest.fixture
def base_copy(bases, tmp_path):
    def copy(checkpoint_format):
        return shutil.copytree(bases[checkpoint_format], str(tmp_path / "base"))

    return copy


def trainer_checkpoint(folder, model, names, peft_prefix=False):
    """The trainer's output: trainable_weights.safetensors, non_lora_trainables.bin (the same dict)
    and post_decoder_config.json when a block was trained."""
    os.makedirs(folder, exist_ok=True)
    prefix = "base_model.model." if peft_prefix else ""
    state = {
        prefix + name: tensor.detach().clone().contiguous()
        for name, tensor in model.state_dict().items()
        if name in names
    }
    save_file(state, os.path.join(folder, "trainable_weights.safetensors"), metadata={"format": "pt"})
    torch.save(state, os.path.join(folder, "non_lora_trainables.bin"))
    if any(name.startswith("post_decoder.") for name in names):
        model.post_decoder.config.to_json_file(os.path.join(folder, "post_decoder_config.json"))
    return str(folder)


def block_names(model):
    return {name for name in model.state_dict() if name.startswith("post_decoder.")}


def trained_stage(model, seed, with_head):
    """Simulate a training run on `model`: move the block (and the head) away from where they were."""
    add_noise(model.post_decoder, 0.2, seed)
    if with_head:
        add_noise(model.lm_head, 0.05, seed + 1)
    return model


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**image_batch(model, tokenizer, QUESTIONS)).logits


def assert_loads_as(folder, expected_model, tokenizer):
    """load_pretrained_model(folder) has exactly `expected_model`'s weights and logits."""
    _, loaded, _, _ = load_pretrained_model(folder)
    state, expected = loaded.state_dict(), expected_model.state_dict()
    assert set(state) == set(expected)
    different = [name for name in expected if not torch.equal(state[name], expected[name])]
    assert not different
    assert torch.equal(logits(loaded, tokenizer), logits(expected_model, tokenizer))
    return loaded


def command_error(capsys, argv) -> str:
    """replace_bin.py's message for bad input: `replace_bin.py: error: ...`, exit code 2, no traceback;
    its first line says what is wrong (a listing of keys may follow)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        replace_bin_main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("replace_bin.py: error: ") and "Traceback" not in message, message
    assert "weights_only" not in message
    return message


def snapshot(*folders):
    """Every file under `folders` with the hash of its bytes (new or removed files show too)."""
    hashes = {}
    for folder in folders:
        for directory, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(directory, name)
                with open(path, "rb") as handle:
                    hashes[path] = hashlib.sha256(handle.read()).hexdigest()
    return hashes


# --- the stages, on each format ---


@pytest.mark.parametrize("checkpoint_format", FORMATS)
def test_stage_1_then_stage_2_give_the_trained_model(
    plain_llava, llava_tokenizer, base_copy, tmp_path, checkpoint_format
):
    base = base_copy(checkpoint_format)
    stage1 = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    run1 = trainer_checkpoint(tmp_path / "run1", stage1, block_names(stage1))

    replace_bin(1, base, run1, output=str(tmp_path / "stage1"))
    stage1_files = load_sharded_state_dict(str(tmp_path / "stage1"))
    head_key = "lm_head.weight" if "transformers 5" in checkpoint_format else "language_model.lm_head.weight"
    assert torch.equal(stage1_files[head_key], plain_llava.lm_head.weight)  # stage 1 keeps the head
    assert {name for name in stage1_files if name.startswith("post_decoder.")} == block_names(stage1)
    with open(tmp_path / "stage1" / "config.json") as handle:
        config = json.load(handle)
    assert (
        config["model_type"] == "llava_post_decoder" and config["post_decoder_config"]["variant"] == "post_interaction"
    )
    index = "pytorch_model.bin.index.json" if checkpoint_format.startswith("bin") else "model.safetensors.index.json"
    with open(tmp_path / "stage1" / index) as handle:
        total_size = json.load(handle)["metadata"]["total_size"]
    assert total_size == sum(tensor.numel() * tensor.element_size() for tensor in stage1_files.values())
    loaded = assert_loads_as(str(tmp_path / "stage1"), stage1, llava_tokenizer)

    stage2 = trained_stage(loaded, seed=3, with_head=True)  # stage 2 trains from the stage-1 checkpoint
    run2 = trainer_checkpoint(tmp_path / "run2", stage2, block_names(stage2) | {"lm_head.weight"})
    replace_bin(2, str(tmp_path / "stage1"), run2)  # in place this time
    assert_loads_as(str(tmp_path / "stage1"), stage2, llava_tokenizer)
    assert os.path.isfile(tmp_path / "stage1" / (index + ".bak"))  # in place keeps the files it replaced


@pytest.mark.parametrize("checkpoint_format", ["bin shards, hub keys", "single safetensors file"])
def test_stage_0_adds_the_block_and_replaces_the_head(
    plain_llava, llava_tokenizer, base_copy, tmp_path, checkpoint_format
):
    base = base_copy(checkpoint_format)
    trained = trained_stage(with_block(plain_llava, "align_linear", num_layers=2), seed=5, with_head=True)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained) | {"lm_head.weight"})
    report = replace_bin(0, base, os.path.join(run, "non_lora_trainables.bin"))
    assert sorted(report.plan.added) == sorted(block_names(trained)) and report.plan.replaced == ["lm_head.weight"]
    assert_loads_as(base, trained, llava_tokenizer)


def test_stage_2_also_replaces_a_trained_projector_and_strips_the_peft_prefix(
    plain_llava, llava_tokenizer, base_copy, tmp_path
):
    base = base_copy("safetensors shards, hub keys")
    stage1 = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    replace_bin(1, base, trainer_checkpoint(tmp_path / "run1", stage1, block_names(stage1)))
    _, loaded, _, _ = load_pretrained_model(base)
    trained = trained_stage(loaded, seed=2, with_head=True)
    add_noise(trained.model.multi_modal_projector, 0.1, seed=4)
    projector = {name for name in trained.state_dict() if "multi_modal_projector" in name}
    run2 = trainer_checkpoint(
        tmp_path / "run2", trained, block_names(trained) | {"lm_head.weight"} | projector, peft_prefix=True
    )
    report = replace_bin(2, base, run2, overwrite_backup=True)  # stage 1 left its backups
    assert projector <= set(report.plan.replaced)
    assert_loads_as(base, trained, llava_tokenizer)


def test_original_llava_stage_1_in_place_then_stage_2_by_merge(plain_llava, llava_tokenizer, base_copy, tmp_path):
    base = base_copy("original")
    _, converted, _, _ = load_pretrained_model(base)
    converted.attach_post_decoder("post_interaction")
    stage1 = trained_stage(converted, seed=1, with_head=False)
    run1 = trainer_checkpoint(tmp_path / "run1", stage1, block_names(stage1))
    # As the original was used: the shard file is named, and the new tensors go into it.
    replace_bin(1, os.path.join(base, "pytorch_model-00002-of-00002.bin"), run1)
    with open(os.path.join(base, "pytorch_model.bin.index.json")) as handle:
        weight_map = json.load(handle)["weight_map"]
    assert {weight_map[name] for name in block_names(stage1)} == {"pytorch_model-00002-of-00002.bin"}
    loaded = assert_loads_as(base, stage1, llava_tokenizer)  # the original layout now loads its block

    stage2 = trained_stage(loaded, seed=3, with_head=True)
    run2 = trainer_checkpoint(tmp_path / "run2", stage2, block_names(stage2) | {"lm_head.weight"})
    snapshot_before = snapshot(base)
    # The trained head has the converted vocabulary: the original layout cannot take it in place.
    with pytest.raises(
        StageWeightsError,
        match=r"lm_head.weight: trained \(\d+, 64\) vs \(\d+, 64\) in .*pytorch_model-00001-of-00002.bin",
    ):
        replace_bin(2, base, run2)
    assert snapshot(base) == snapshot_before
    merge(2, base, run2, str(tmp_path / "merged"))
    assert_loads_as(str(tmp_path / "merged"), stage2, llava_tokenizer)


def test_merge_command_writes_a_complete_folder_from_each_stage(plain_llava, llava_tokenizer, bases, tmp_path):
    stage1 = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    run1 = trainer_checkpoint(tmp_path / "run1", stage1, block_names(stage1))
    before = snapshot(bases["bin shards, hub keys"], run1)
    replace_bin_main(
        [
            "--merge",
            "--tune_stage",
            "1",
            "--path_model_state_dict",
            bases["bin shards, hub keys"],
            "--path_non_lora_state_dict",
            run1,
            "--output",
            str(tmp_path / "merged1"),
        ]
    )
    assert snapshot(bases["bin shards, hub keys"], run1) == before
    loaded = assert_loads_as(str(tmp_path / "merged1"), stage1, llava_tokenizer)

    stage2 = trained_stage(loaded, seed=3, with_head=True)
    run2 = trainer_checkpoint(tmp_path / "run2", stage2, block_names(stage2) | {"lm_head.weight"})
    replace_bin_main(
        [
            "--merge",
            "--tune_stage",
            "2",
            "--path_model_state_dict",
            str(tmp_path / "merged1"),
            "--path_non_lora_state_dict",
            run2,
            "--output",
            str(tmp_path / "merged2"),
        ]
    )
    assert_loads_as(str(tmp_path / "merged2"), stage2, llava_tokenizer)


# --- bad inputs: an error naming the file and key, and nothing written ---


def edit_trained(run, edit):
    """Apply `edit` to both trained files of a trainer checkpoint."""
    path = os.path.join(run, "trainable_weights.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)
    torch.save(state, os.path.join(run, "non_lora_trainables.bin"))


@pytest.mark.parametrize(
    "stage, edit, message",
    [
        (
            1,
            lambda s: s.pop("post_decoder.layers.0.mlp.up_proj.weight"),
            r"missing block tensors \(1\):\n    post_decoder.layers.0.mlp.up_proj.weight",
        ),
        (
            1,
            lambda s: s.update({"post_decoder.align.linear_1.bias": torch.zeros(3)}),
            r"post_decoder.align.linear_1.bias: trained \(3,\) vs \(64,\) in the block of .*post_decoder_config.json",
        ),
        (
            1,
            lambda s: s.update({"model.language_model.extra.weight": torch.zeros(2)}),
            r"unexpected trained tensors \(1\):\n    model.language_model.extra.weight \(not in the checkpoint\)",
        ),
        (
            1,
            lambda s: s.update({"post_decoder.layers.3.mlp.up_proj.weight": torch.zeros(2)}),
            r"post_decoder.layers.3.mlp.up_proj.weight \(not in the block of .*post_decoder_config.json\)",
        ),
        (
            1,
            lambda s: s.update({"lm_head.weight": torch.zeros(448, 64)}),
            r"stage 1 keeps the checkpoint's head, but the trained weights hold lm_head.weight",
        ),
        (0, lambda s: None, r"stage 0 replaces lm_head.weight, but the trained weights hold none"),
        (2, lambda s: None, r"stage 2 replaces the block, but the checkpoint holds none"),
        (
            1,
            lambda s: s.update({"post_decoder.align.linear_1.bias": s["post_decoder.align.linear_1.bias"].half()}),
            None,
        ),
    ],
)
def test_bad_trained_weights_are_named_and_nothing_is_written(plain_llava, base_copy, tmp_path, stage, edit, message):
    base = base_copy("safetensors shards, hub keys")
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained))
    edit_trained(run, edit)
    before = snapshot(base, run)
    if message is None:  # an added block keeps its trained dtype: nothing to refuse
        replace_bin(stage, base, run, dry_run=True)
    else:
        with pytest.raises(StageWeightsError, match=message) as error:
            replace_bin(stage, base, run)
        assert os.path.join(run, "trainable_weights.safetensors") in str(error.value)
    assert snapshot(base, run) == before


def test_a_missing_block_config_is_named(plain_llava, base_copy, tmp_path):
    base = base_copy("bin shards, hub keys")
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained))
    os.remove(os.path.join(run, "post_decoder_config.json"))
    before = snapshot(base, run)
    with pytest.raises(StageWeightsError, match=r"its config .*run/post_decoder_config.json is missing"):
        replace_bin(1, base, run)
    with pytest.raises(FileNotFoundError, match=r"block config .*nowhere.json does not exist"):
        replace_bin(1, base, run, post_decoder_config=str(tmp_path / "nowhere.json"))
    os.remove(os.path.join(base, "config.json"))
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        replace_bin(1, base, run)
    before.pop(os.path.join(base, "config.json"))
    assert snapshot(base, run) == before


def test_stage_2_dtype_and_shape_differences_are_refused_unless_cast(
    plain_llava, llava_tokenizer, base_copy, tmp_path
):
    base = base_copy("safetensors shards, hub keys")
    stage1 = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    replace_bin(
        1, base, trainer_checkpoint(tmp_path / "run1", stage1, block_names(stage1)), output=str(tmp_path / "s1")
    )
    stage2 = trained_stage(stage1, seed=2, with_head=True)
    run2 = trainer_checkpoint(tmp_path / "run2", stage2, block_names(stage2) | {"lm_head.weight"})
    folder = str(tmp_path / "s1")

    edit_trained(run2, lambda s: s.update({"lm_head.weight": s["lm_head.weight"].to(torch.bfloat16)}))
    before = snapshot(folder)
    with pytest.raises(
        StageWeightsError,
        match=r"lm_head.weight: trained bfloat16 vs float32 in .*model-000\d\d-of-000\d\d.safetensors",
    ):
        replace_bin(2, folder, run2)
    assert snapshot(folder) == before
    replace_bin(2, folder, run2, cast_dtype=True)
    _, loaded, _, _ = load_pretrained_model(folder)
    assert loaded.lm_head.weight.dtype == torch.float32
    assert torch.equal(loaded.lm_head.weight, stage2.lm_head.weight.to(torch.bfloat16).float())

    edit_trained(run2, lambda s: s.pop("post_decoder.layers.0.cross_attn.q_proj.weight"))
    with pytest.raises(
        StageWeightsError,
        match=r"missing block tensors \(1\):\n    post_decoder.layers.0.cross_attn.q_proj.weight \(in .*model-",
    ):
        replace_bin(2, folder, run2, overwrite_backup=True)


def test_stage_1_on_a_checkpoint_that_has_a_block_and_lora_weights_are_refused(plain_llava, base_copy, tmp_path):
    base = base_copy("safetensors shards, hub keys")
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained))
    replace_bin(1, base, run)
    with pytest.raises(StageWeightsError, match=r"already holds a block \(post_decoder.\S+ in .*model-"):
        replace_bin(1, base, run, overwrite_backup=True)
    edit_trained(
        run,
        lambda s: s.update(
            {"base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(2)}
        ),
    )
    with pytest.raises(
        ValueError, match=r"holds LoRA adapter weights \(model.language_model.layers.0.mlp.up_proj.lora_A.weight"
    ):
        replace_bin(2, base, run)


def test_backups_and_outputs_are_never_written_over(plain_llava, base_copy, tmp_path, capsys):
    base = base_copy("safetensors shards, hub keys")
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=True)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained) | {"lm_head.weight"})
    replace_bin(0, base, run)
    before = snapshot(base)
    args = ["--tune_stage", "2", "--path_model_state_dict", base, "--path_non_lora_state_dict", run]
    assert re.search(r"backups from an earlier run are in .*: .*\.bak", command_error(capsys, args))
    assert "exists; name a new folder" in command_error(capsys, args + ["--output", str(tmp_path / "run")])
    assert snapshot(base) == before
    replace_bin_main(args + ["--overwrite_backup"])
    assert "replaced lm_head.weight" in capsys.readouterr().out


# --- a crash while writing leaves the input as it was ---


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("crash_in", ["a weight file", "the index"])
def test_a_crash_while_writing_leaves_the_input_intact(
    plain_llava, base_copy, tmp_path, monkeypatch, in_place, crash_in
):
    base = base_copy("bin shards, hub keys")
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=True)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained) | {"lm_head.weight"})
    before = snapshot(base, run)
    crashed = []

    def crash_half_way(path):
        crashed.append(path)
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    if crash_in == "a weight file":  # the first file written
        monkeypatch.setattr(
            checkpoint_files, "write_weight_file", lambda state, path, metadata=None: crash_half_way(path)
        )
    else:  # after the new weight file is complete
        monkeypatch.setattr(checkpoint_files, "_json_writer", lambda content: crash_half_way)
    output = None if in_place else str(tmp_path / "out")
    with pytest.raises(OSError, match="disk full"):
        replace_bin(0, base, run, output=output)
    assert crashed
    assert snapshot(base, run) == before
    assert not os.path.exists(tmp_path / "out") and sorted(os.listdir(tmp_path)) == ["base", "run"]


# --- bad input through the command: one line naming the file or flag, exit code 2 ---


def stage1_run(plain_llava, tmp_path):
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    return trainer_checkpoint(tmp_path / "run", trained, block_names(trained))


def stage_args(stage, base, run, *more):
    return ["--tune_stage", str(stage), "--path_model_state_dict", base, "--path_non_lora_state_dict", run, *more]


def test_missing_inputs_and_mismatched_keys_are_one_message_without_traceback(
    plain_llava, base_copy, tmp_path, capsys
):
    base = base_copy("safetensors shards, hub keys")
    run = stage1_run(plain_llava, tmp_path)
    missing = str(tmp_path / "nowhere")
    message = command_error(capsys, stage_args(1, base, missing))
    assert message == f"replace_bin.py: error: trained weights {missing} do not exist\n"
    message = command_error(capsys, stage_args(1, missing, run))
    assert message == f"replace_bin.py: error: checkpoint {missing} does not exist\n"
    edit_trained(run, lambda state: state.pop("post_decoder.layers.0.mlp.up_proj.weight"))
    message = command_error(capsys, stage_args(1, base, run))
    first, *rest = message.rstrip("\n").splitlines()
    assert first.startswith("replace_bin.py: error: cannot merge the stage-1 weights") and first.endswith(":")
    assert rest == [
        "  missing block tensors (1):",
        "    post_decoder.layers.0.mlp.up_proj.weight (the block of "
        f"{os.path.join(run, 'post_decoder_config.json')} has it)",
    ]


def test_a_truncated_safetensors_shard_of_the_base_is_named(plain_llava, base_copy, tmp_path, capsys):
    base = base_copy("safetensors shards, hub keys")
    run = stage1_run(plain_llava, tmp_path)
    shard = os.path.join(base, sorted(name for name in os.listdir(base) if name.endswith(".safetensors"))[0])
    os.truncate(shard, os.path.getsize(shard) // 2)
    before = snapshot(base, run)
    message = command_error(capsys, stage_args(1, base, run, "--output", str(tmp_path / "out")))
    assert message.count("\n") == 1 and f"{shard} cannot be read as safetensors" in message and "truncated" in message
    assert snapshot(base, run) == before and not os.path.exists(tmp_path / "out")


def test_trained_weights_that_will_not_unpickle_safely_are_named(plain_llava, base_copy, tmp_path, capsys):
    base = base_copy("bin shards, hub keys")
    run = stage1_run(plain_llava, tmp_path)
    trained = os.path.join(run, "non_lora_trainables.bin")
    torch.save({**torch.load(trained, weights_only=True), "args": argparse.Namespace(lr=1e-4)}, trained)
    message = command_error(capsys, stage_args(1, base, trained))
    assert (
        message.count("\n") == 1 and f"{trained} holds Python objects besides tensors (argparse.Namespace)" in message
    )
    with open(trained, "rb") as handle:
        data = handle.read()
    with open(trained, "wb") as handle:
        handle.write(data[:100])
    message = command_error(capsys, stage_args(1, base, trained))
    assert message.count("\n") == 1 and f"{trained} cannot be read as a PyTorch weight file" in message


@pytest.mark.parametrize("merge_flag", [[], ["--merge"]])
def test_an_output_that_is_a_file_is_refused(plain_llava, base_copy, tmp_path, capsys, merge_flag):
    base = base_copy("single safetensors file")
    run = stage1_run(plain_llava, tmp_path)
    (tmp_path / "taken").write_text("mine")
    message = command_error(capsys, stage_args(1, base, run, "--output", str(tmp_path / "taken"), *merge_flag))
    assert message == f"replace_bin.py: error: --output {tmp_path / 'taken'} is a file; name a new folder\n"
    assert (tmp_path / "taken").read_text() == "mine"


# --- a new folder holds the model, not the base's results ---

RESULT_FILES = {"pope_metrics.json": "{}", "training_summary.json": "{}", "answers.jsonl": "", "train.log": "x"}
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
}


@pytest.mark.parametrize("merge_flag", [[], ["--merge"]])
def test_a_new_folder_holds_the_model_files_and_not_the_bases_results(
    plain_llava, llava_tokenizer, base_copy, tmp_path, merge_flag
):
    base = base_copy("safetensors shards, hub keys")
    for name, text in RESULT_FILES.items():
        (tmp_path / "base" / name).write_text(text)
    os.makedirs(tmp_path / "base" / "checkpoint-500")
    (tmp_path / "base" / "model.safetensors.index.json.bak").write_text("{}")
    trained = trained_stage(with_block(plain_llava, "post_interaction"), seed=1, with_head=False)
    run = trainer_checkpoint(tmp_path / "run", trained, block_names(trained))
    replace_bin_main(stage_args(1, base, run, "--output", str(tmp_path / "out"), *merge_flag))
    written = set(os.listdir(tmp_path / "out"))
    weights = {name for name in written if name.endswith(".safetensors") or name == "model.safetensors.index.json"}
    assert MODEL_FILES <= written and weights and written == MODEL_FILES | weights
    assert_loads_as(str(tmp_path / "out"), trained, llava_tokenizer)


# --- writes are atomic and keep permissions ---


def test_an_in_place_rewrite_keeps_the_permissions_of_the_files_it_replaces(plain_llava, base_copy, tmp_path):
    base = base_copy("single safetensors file")
    for name in ("model.safetensors", "config.json"):
        os.chmod(os.path.join(base, name), 0o640)
    report = replace_bin(1, base, stage1_run(plain_llava, tmp_path))
    assert sorted(report.written) == ["config.json", "model.safetensors"]
    for name in ("model.safetensors", "config.json", "model.safetensors.bak", "config.json.bak"):
        assert stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode) == 0o640, name
    assert not [name for name in os.listdir(base) if name.startswith(".")]  # no temporaries left


def test_a_crash_while_merging_leaves_no_folder_and_no_stray_file(plain_llava, base_copy, tmp_path, monkeypatch):
    import transformers.modeling_utils

    base = base_copy("single safetensors file")
    run = stage1_run(plain_llava, tmp_path)
    real_save, crashed = transformers.modeling_utils.safe_save_file, []

    def crash_half_way(tensors, filename, *args, **kwargs):  # half the weights written, then the disk is full
        crashed.append(filename)
        real_save(dict(list(tensors.items())[: len(tensors) // 2]), filename, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", crash_half_way)
    before = snapshot(base, run)
    with pytest.raises(OSError, match="disk full"):
        merge(1, base, run, str(tmp_path / "merged"))
    assert crashed and snapshot(base, run) == before
    assert sorted(os.listdir(tmp_path)) == ["base", "run"]


def test_a_crash_while_keeping_a_backup_leaves_the_checkpoint_as_it_was(plain_llava, base_copy, tmp_path, monkeypatch):
    base = base_copy("bin shards, hub keys")
    run = stage1_run(plain_llava, tmp_path)
    before = snapshot(base, run)
    real_link, links = os.link, []

    def link_then_fail(source, target):  # the second backup fails: neither the first nor any new file may land
        if links:
            raise OSError("disk full")
        links.append(target)
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_then_fail)
    monkeypatch.setattr(shutil, "copy2", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        replace_bin(1, base, run)
    after = snapshot(base, run)
    backups = {path for path in set(after) - set(before) if path.endswith(".bak")}
    assert {path: digest for path, digest in after.items() if path not in backups} == before
    assert not [name for name in os.listdir(base) if name.startswith(".")]
