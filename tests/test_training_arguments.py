"""The training scripts' arguments: each dataclass checks itself when built (in Python as on the command
line), every field says what it is for, recipes load from `--config FILE` with flags overriding them, and
the console commands are installed."""

import os
import subprocess
import sys
from dataclasses import fields
from importlib.metadata import entry_points

import pytest

from ha_dpo.cli import train_dpo_post, train_llava_post
from ha_dpo.cli.arguments import (
    ModelArguments,
    PostDecoderTrainingArguments,
    PreferenceDataArguments,
    PreferenceTrainingArguments,
    SupervisedDataArguments,
    check_arguments,
)
from ha_dpo.cli.config_files import arguments_from, config_flags, read_config
from ha_dpo.cli.training_run import parse
from ha_dpo.toy import STAGE1_RECIPE
from post_decoder.errors import InputError

DPO = train_dpo_post.ARGUMENT_TYPES
COMMANDS = ("post-decoder-train-dpo", "post-decoder-train-sft", "post-decoder-pope", "post-decoder-replace-bin")


def dpo_settings(tmp_path, **changes):
    return {
        "model_name_or_path": "unused",
        "tune_post_decoder": True,
        "vg_path": "vg",
        "desc_data_path": "desc_data.json",
        "output_dir": str(tmp_path / "run"),
        "report_to": "none",
        **changes,
    }


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelArguments("unused"), "nothing to train"),
        (lambda: ModelArguments("unused", tune_post_decoder=True, lora_alpha=8), "--lora_alpha is for --lora_enable"),
        (lambda: ModelArguments("unused", tune_post_decoder=True, vision_tower="my-tower"), "--vision_tower my-tower"),
        (lambda: PreferenceDataArguments(desc_data_path="d.json"), "--vg_path is required"),
        (lambda: PreferenceDataArguments(vg_path="vg"), "give --desc_data_path, --pope_data_path or both"),
        (
            lambda: PreferenceDataArguments(vg_path="vg", pope_data_path="p", lazy_preprocess=False),
            "--lazy_preprocess",
        ),
        (lambda: SupervisedDataArguments("d.json", image_aspect_ratio="square"), "--image_aspect_ratio square"),
        (lambda: SupervisedDataArguments("d.json", is_multimodal=False), "--is_multimodal False"),
        (lambda: PreferenceTrainingArguments(output_dir="out", loss_type="kto"), "--loss_type kto"),
        (lambda: PostDecoderTrainingArguments(output_dir="out", group_by_modality_length=True), "group_by_modality"),
    ],
)
def test_arguments_built_in_python_refuse_what_the_command_line_refuses(build, message):
    with pytest.raises(InputError, match=message):
        build()


def test_refusals_of_one_dataclass_come_in_one_message():
    with pytest.raises(InputError, match="^refused: --version v0: .*; --mm_projector_type linear: "):
        ModelArguments("unused", tune_post_decoder=True, version="v0", mm_projector_type="linear")


def test_the_flags_hadpo_passes_are_accepted():
    ModelArguments("unused", tune_post_decoder=True, vision_tower="openai/clip-vit-large-patch14-336")
    PreferenceDataArguments(vg_path="vg", pope_data_path="p", lazy_preprocess=True)
    SupervisedDataArguments("d.json", lazy_preprocess=True, is_multimodal=True)


def test_every_field_of_our_arguments_has_help():
    ours = (ModelArguments, PreferenceDataArguments, SupervisedDataArguments, PreferenceTrainingArguments)
    own_names = {
        name for cls in (*ours, PostDecoderTrainingArguments) for name in vars(cls).get("__annotations__", {})
    }
    missing = [
        item.name for cls in ours for item in fields(cls) if item.name in own_names and not item.metadata.get("help")
    ]
    assert not missing


def test_check_arguments_says_what_it_turns_off(tmp_path):
    training_args = PreferenceTrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True)
    notes = check_arguments(ModelArguments("unused", tune_post_decoder=True), training_args)
    assert notes == [
        "--gradient_checkpointing True: turned off for this run (the block and lm_head train on a frozen "
        "backbone, which keeps no activations to recompute)"
    ]
    lora_args = PreferenceTrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True)
    assert check_arguments(ModelArguments("unused", lora_enable=True), lora_args) == []
    assert lora_args.gradient_checkpointing  # LoRA runs keep it


def test_the_vision_tower_flag_is_checked_against_the_checkpoint(plain_llava):
    from ha_dpo.trainer.training_model import _check_matches_checkpoint

    vision = plain_llava.config.vision_config
    same = f"tiny-clip-patch{vision.patch_size}-{vision.image_size}"
    _check_matches_checkpoint(ModelArguments("tiny", tune_post_decoder=True, vision_tower=same), plain_llava)
    hadpo = ModelArguments("tiny", tune_post_decoder=True, vision_tower="openai/clip-vit-large-patch14-336")
    with pytest.raises(InputError, match="--vision_tower openai/clip-vit-large-patch14-336, but tiny's tower"):
        _check_matches_checkpoint(hadpo, plain_llava)


def test_the_command_line_reads_a_recipe_and_its_flags_override_it(tmp_path):
    recipe = read_config(STAGE1_RECIPE)
    required = ["--model_name_or_path", "m", "--vg_path", "vg", "--desc_data_path", "d", "--output_dir", "out"]
    model_args, data_args, training_args = parse(DPO, ["--config", STAGE1_RECIPE, *required, "--beta", "0.5"])
    assert training_args.beta == 0.5  # the flag, not the recipe's 0.1
    assert training_args.gamma == recipe["gamma"] and data_args.pope_correct_pairs and model_args.tune_post_decoder
    assert training_args.learning_rate == recipe["learning_rate"]
    # --config=FILE works too, and the recipe's settings come first whatever the order
    assert config_flags([*required, f"--config={STAGE1_RECIPE}"], DPO)[:2] == ["--tune_post_decoder", "True"]


def test_the_library_and_the_command_line_build_the_same_arguments_from_the_recipe(tmp_path):
    changes = dpo_settings(tmp_path, seed=3)
    built = arguments_from(DPO, {**read_config(STAGE1_RECIPE), **changes, "warmup_ratio": 0.1})  # an old name
    argv = ["--config", STAGE1_RECIPE, "--warmup_ratio", "0.1"]
    for name, value in changes.items():
        argv += [f"--{name}", str(value)]
    parsed = parse(DPO, argv)
    for from_python, from_flags in zip(built, parsed, strict=True):
        for item in fields(from_python):
            if item.name != "logging_dir":  # transformers dates it when it is built
                assert getattr(from_python, item.name) == getattr(from_flags, item.name), item.name
    assert built[2].warmup_steps == 0.1 and built[2].seed == 3


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "expected a JSON object of settings, found list"),
        ('{"beta": null}', "beta is null"),
        ("{not json", "not a JSON file"),
        ('{"betta": 0.2}', "unknown setting 'betta'"),
    ],
)
def test_a_bad_recipe_is_refused_in_one_line(tmp_path, content, message):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(content)
    with pytest.raises(InputError, match=message):
        parse(DPO, ["--config", str(recipe), "--model_name_or_path", "m", "--output_dir", "out"])
    with pytest.raises(InputError, match="no such file"):
        read_config(str(tmp_path / "missing.json"))


def test_unknown_settings_are_refused_by_the_library_too(tmp_path):
    with pytest.raises(InputError, match="unknown setting 'learning_rat'"):
        arguments_from(DPO, dpo_settings(tmp_path, learning_rat=1e-3))


def test_a_run_built_in_python_stops_before_the_model_is_loaded(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("")
    arguments = arguments_from(
        DPO, dpo_settings(tmp_path, model_name_or_path="/no/such/model", output_dir=str(target))
    )
    with pytest.raises(InputError, match="is a file"):  # the output folder's check, not the missing model
        train_dpo_post.train_dpo(*arguments)


def test_the_console_commands_are_installed():
    installed = {point.name: point for point in entry_points(group="console_scripts")}
    for name in COMMANDS:
        assert name in installed, f"{name}: run `pip install -e .` again"
        assert callable(installed[name].load())
    assert installed["post-decoder-train-dpo"].load() is train_dpo_post.command
    assert installed["post-decoder-train-sft"].load() is train_llava_post.command


def test_replace_bins_command_names_itself_in_its_errors(tmp_path, capsys, monkeypatch):
    from ha_dpo.cli.replace_bin import main

    monkeypatch.setattr(sys, "argv", ["post-decoder-replace-bin"])
    argv = ["--tune_stage", "1", "--path_model_state_dict", str(tmp_path), "--path_non_lora_state_dict", "/none"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("post-decoder-replace-bin: error: ")


@pytest.mark.slow
def test_post_decoder_train_dpo_help_runs(tmp_path):
    command = os.path.join(os.path.dirname(sys.executable), "post-decoder-train-dpo")
    if not os.path.exists(command):
        pytest.fail("post-decoder-train-dpo is not installed: run `pip install -e .`")
    shown = subprocess.run([command, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "--config FILE" in shown.stdout and "--vision_tower" in shown.stdout
    refused = subprocess.run(
        [command, "--model_name_or_path", "m", "--output_dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert refused.returncode == 2
    assert (
        refused.stderr.strip().splitlines()[-1].startswith("post-decoder-train-dpo: error: refused: nothing to train")
    )
