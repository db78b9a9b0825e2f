"""The training CLI end to end on a tiny model and a small HA-DPO-format dataset: `python` and a
two-process `deepspeed` ZeRO-2 run on the CPU; stage 1 -> merge -> stage 2 -> merge -> load."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ha_dpo.trainer.checkpoints import TRAINABLE_WEIGHTS
from post_decoder.builder import load_pretrained_model
from post_decoder.families.llava.tiny import save_llava_hf
from tests.helpers import free_port, named
from tests.helpers.charts import assert_curve_panels
from tests.helpers.data_files import write_hadpo, write_llava

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
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "5e-3",
        "--lr_scheduler_type",
        "constant",
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--evaluation_strategy",
        "no",
        "--model_max_length",
        "512",
        "--dataloader_num_workers",
        "0",
    ]


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-20000:]
    return result.stdout + result.stderr


def merge(stage, model, trained, output):
    run(
        [
            sys.executable,
            REPLACE_BIN,
            "--merge",
            "--tune_stage",
            str(stage),
            "--path_model_state_dict",
            model,
            "--path_non_lora_state_dict",
            trained,
            "--output",
            output,
        ]
    )
    return output


@pytest.mark.slow
def test_stage1_merge_stage2_merge_load_gives_the_trained_model(base_and_data, tmp_path):
    base, data = base_and_data
    stage1 = tmp_path / "stage1"
    output = run(
        [
            sys.executable,
            TRAIN,
            "--model_name_or_path",
            base,
            *data,
            "--tune_post_decoder",
            "True",
            "--freeze_backbone",
            "True",
            "--use_cpu",
            "True",
            *common_flags(stage1),
        ]
    )
    assert "skipped" in output and "missing" in output  # the dataset's bad samples are reported
    assert_curve_panels(stage1 / "training_curves.png", 3)  # loss, reward margin, reward accuracy
    assert (stage1 / "checkpoint-2" / TRAINABLE_WEIGHTS).is_file()
    stage1_weights = load_file(stage1 / TRAINABLE_WEIGHTS)
    assert stage1_weights and all(name.startswith("post_decoder.") for name in stage1_weights)
    merged1 = merge(1, base, str(stage1), str(tmp_path / "merged1"))

    stage2 = tmp_path / "stage2"
    run(
        [
            sys.executable,
            TRAIN,
            "--model_name_or_path",
            merged1,
            *data,
            "--tune_post_decoder",
            "True",
            "--tune_lm_head",
            "True",
            "--use_cpu",
            "True",
            *common_flags(stage2),
        ]
    )
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
@pytest.mark.slow
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
    run(
        [
            "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            TRAIN,
            *flags,
            "--deepspeed",
            os.path.join(ROOT, "scripts", "zero2.json"),
            *per_rank,
        ],
        env=environment,
    )

    assert (distributed / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's optimizer shards
    one, two = load_file(single / TRAINABLE_WEIGHTS), load_file(distributed / TRAINABLE_WEIGHTS)
    assert set(one) == set(two)
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-5, msg=named(name))
    assert any(not torch.equal(tensor, torch.zeros_like(tensor)) for name, tensor in two.items() if "o_proj" in name)


@pytest.mark.slow
def test_supervised_fine_tuning_of_the_block_on_llava_data(base_and_data, tmp_path):
    base, _ = base_and_data
    data_path, image_folder = write_llava(tmp_path / "llava")
    output_dir = tmp_path / "sft"
    output = run(
        [
            sys.executable,
            TRAIN_SFT,
            "--model_name_or_path",
            base,
            "--data_path",
            data_path,
            "--image_folder",
            image_folder,
            "--tune_post_decoder",
            "True",
            "--use_cpu",
            "True",
            *common_flags(output_dir),
        ]
    )
    assert "without an image" in output  # text-only samples are counted, kept by default
    trained = load_file(output_dir / TRAINABLE_WEIGHTS)
    assert trained and all(name.startswith("post_decoder.") for name in trained)
    assert any(tensor.abs().sum() > 0 for name, tensor in trained.items() if "down_proj" in name)  # it learned
    assert_curve_panels(output_dir / "training_curves.png", 1)  # supervised: the loss only


def train_in_process(argv, capsys, script="train_dpo_post.py"):
    """The CLI's entry point as `python ha_dpo/<script>` runs it; returns (exit code or None, stdout, stderr)."""
    from ha_dpo.cli import train_dpo_post, train_llava_post
    from post_decoder.errors import run_command

    main = {"train_dpo_post.py": train_dpo_post.main, "train_llava_post.py": train_llava_post.main}[script]
    code = None
    try:
        run_command(main, argv, program=script)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stage1_flags(base_and_data, output_dir, steps=2):
    base, data = base_and_data
    return ["--model_name_or_path", base, *data, "--tune_post_decoder", "True", "--use_cpu", "True",
            *common_flags(output_dir, steps)]  # fmt: skip


def assert_one_line_error(code, err, script, *phrases):
    """Exit code 2 and the error as the last line of stderr, whole (stderr may hold progress bars before it)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if f"{script}: error: " in line]
    assert len(errors) == 1 and lines[-1].startswith(f"{script}: error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[-1], lines[-1]


def test_an_output_dir_that_is_a_file_is_refused_in_one_line(base_and_data, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    code, _, err = train_in_process(stage1_flags(base_and_data, target), capsys)
    assert_one_line_error(code, err, "train_dpo_post.py", f"--output_dir {target} is a file")
    assert target.read_text() == "not a folder"


def test_an_output_dir_that_cannot_be_written_is_refused_before_training(base_and_data, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code, _, err = train_in_process(stage1_flags(base_and_data, blocker / "run"), capsys)  # a file in the path
    assert_one_line_error(code, err, "train_dpo_post.py", f"--output_dir {blocker / 'run'} cannot be written")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_refused_before_training(base_and_data, tmp_path, capsys):
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    code, _, err = train_in_process(stage1_flags(base_and_data, read_only), capsys)
    assert_one_line_error(code, err, "train_dpo_post.py", "cannot be written (Permission denied)")


def test_a_non_empty_output_dir_needs_overwrite_or_resume(base_and_data, tmp_path, capsys):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "trainable_weights.safetensors").write_bytes(b"another run's")
    code, _, err = train_in_process(stage1_flags(base_and_data, output_dir), capsys)
    assert_one_line_error(code, err, "train_dpo_post.py", "is not empty (trainable_weights.safetensors)",
                          "--overwrite_output_dir True")  # fmt: skip
    code, _, err = train_in_process(
        [*stage1_flags(base_and_data, output_dir), "--resume_from_checkpoint", "latest"], capsys
    )
    assert_one_line_error(code, err, "train_dpo_post.py", "--resume_from_checkpoint latest: no checkpoint-N folder in")
    assert (output_dir / "trainable_weights.safetensors").read_bytes() == b"another run's"

    code, out, err = train_in_process(
        [*stage1_flags(base_and_data, output_dir), "--overwrite_output_dir", "True"], capsys
    )
    assert code is None, err
    assert load_file(output_dir / TRAINABLE_WEIGHTS)  # the new run's result replaced the old file


def test_no_pairs_left_after_skipping_reaches_the_user_as_one_line(base_and_data, tmp_path, capsys):
    from tests.helpers.data_files import pope

    only_missing_images = {"5": {"chosen": ["Gone."], "rejected": ["x"]}}  # VG image 5 is absent
    vg_path, desc_data, pope_data = write_hadpo(tmp_path / "hadpo", only_missing_images, [pope(5, False)])
    flags = stage1_flags(base_and_data, tmp_path / "run")
    flags[flags.index("--vg_path") + 1 : flags.index("--vg_path") + 6 : 2] = [vg_path, desc_data, pope_data]
    code, _, err = train_in_process(flags, capsys)
    assert_one_line_error(code, err, "train_dpo_post.py", "preference pairs")


def test_debug_shows_the_traceback_instead(base_and_data, tmp_path, capsys):
    from ha_dpo.cli import train_dpo_post
    from post_decoder.errors import InputError, run_command

    target = tmp_path / "results.txt"
    target.write_text("")
    with pytest.raises(InputError, match="is a file"):  # --debug reached run_command, not HfArgumentParser
        run_command(
            train_dpo_post.main, [*stage1_flags(base_and_data, target), "--debug"], program="train_dpo_post.py"
        )


class StopAfterDataset(Exception):
    pass


@pytest.mark.parametrize("script, dataset_name", [("train_dpo_post.py", "PreferenceDataset"),
                                                  ("train_llava_post.py", "SupervisedDataset")])  # fmt: skip
def test_conv_mode_picks_the_prompt_template_of_the_samples(
    base_and_data, tmp_path, capsys, monkeypatch, script, dataset_name
):
    from ha_dpo.cli import train_dpo_post, train_llava_post

    module = {"train_dpo_post.py": train_dpo_post, "train_llava_post.py": train_llava_post}[script]
    real, built = getattr(module, dataset_name), []

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        raise StopAfterDataset

    monkeypatch.setattr(module, dataset_name, spy)
    if script == "train_dpo_post.py":
        flags = stage1_flags(base_and_data, tmp_path / "run")
    else:
        data_path, image_folder = write_llava(tmp_path / "llava")
        flags = ["--model_name_or_path", base_and_data[0], "--data_path", data_path, "--image_folder", image_folder,
                 "--tune_post_decoder", "True", "--use_cpu", "True", *common_flags(tmp_path / "run")]  # fmt: skip
    texts = {}
    for mode in ("vicuna_v1", "llava_v1"):
        with pytest.raises(StopAfterDataset):
            train_in_process([*flags, "--conv_mode", mode, "--overwrite_output_dir", "True"], capsys, script)
        dataset = built.pop()
        item = dataset[0]
        ids = item["prompt_input_ids"] if "prompt_input_ids" in item else item["input_ids"]
        texts[mode] = dataset_tokenizer(base_and_data).decode(ids)
    assert "curious user" in texts["vicuna_v1"] and "curious human" in texts["llava_v1"]


def dataset_tokenizer(base_and_data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_and_data[0])


@pytest.mark.slow
def test_beta_reaches_the_trainer_and_the_history_is_saved(base_and_data, tmp_path, capsys):
    import json

    margins = {}
    for beta in ("0.1", "0.5"):
        output_dir = tmp_path / f"beta{beta}"
        code, out, err = train_in_process([*stage1_flags(base_and_data, output_dir), "--save_strategy", "no",
                                           "--adam_epsilon", "1e-30", "--beta", beta], capsys)  # fmt: skip
        assert code is None, err
        history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        step2 = [row for row in history if row.get("step") == 2 and "rewards/margins" in row][0]
        margins[beta] = step2["rewards/margins"]
    # Adam's first step has the same size whatever the loss's scale (with its epsilon ~0, tiny gradients
    # too), so after it both runs' policies moved alike, and the rewards (beta * log-prob change) differ
    # by the ratio of the betas. A --beta that did not reach the loss would give 1.
    assert margins["0.1"] != 0
    assert margins["0.5"] / margins["0.1"] == pytest.approx(5, rel=1e-3)
