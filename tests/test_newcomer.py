"""What a newcomer meets first: the two make commands (and CI calling the second), output free of the
libraries' expected messages, the toy world's progress bars, and output folders that follow the umask."""

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import warnings

import pytest

from ha_dpo.toy import DEFAULT_CHECKPOINT
from ha_dpo.toy.files import write_world
from ha_dpo.toy.world import WorldConfig
from post_decoder import quiet
from tests.helpers.data_files import write_hadpo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "ha_dpo", "train_dpo_post.py")
REPLACE_BIN = os.path.join(ROOT, "scripts", "replace_bin.py")
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")

DEEPSPEED_CPU_LINE = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
MISMATCH_LINE = (
    "[RANK 0] Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has 2. "
    "Using DeepSpeed's value."
)
PIN_MEMORY_LINE = (
    "'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used."
)
ALL_GATHER_LINE = (
    "`torch.distributed.all_gather_into_tensor` is deprecated. Please use `torch.distributed.all_gather_single` "
    "instead."
)
EXPECTED = ("Setting accelerator to CPU", "Gradient accumulation steps mismatch", "'pin_memory'", "all_gather_into")


MAKE_SETTINGS = (
    "VENV",
    "PYTHON",
    "TORCH_VERSION",
    "TORCH_INDEX",
    "EXTRAS",
    "PINS",
    "OUT",
    "QUICKSTART_ARGS",
    "PYTEST_ARGS",
)


def dry_run(*arguments: str) -> list[str]:
    """The commands `make -n` would run (nothing is run)."""
    # Under `make test` (CI) the parent make hands its settings down (MAKEFLAGS, exported VENV=...): start clean.
    inherited = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", *MAKE_SETTINGS}
    environment = {name: value for name, value in os.environ.items() if name not in inherited}
    result = subprocess.run(
        [MAKE, "-n", *arguments], cwd=ROOT, env=environment, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def index_of(lines: list[str], pattern: str) -> int:
    matches = [index for index, line in enumerate(lines) if re.search(pattern, line)]
    assert len(matches) == 1, (pattern, lines)
    return matches[0]


@needs_make
def test_make_quickstart_creates_the_environment_torch_first_then_runs_the_quickstart():
    lines = dry_run("quickstart")
    steps = [
        r"^python3 -m venv \.venv$",
        r"^\.venv/bin/python -m pip install -q --upgrade pip$",
        r"^\.venv/bin/python -m pip install -q torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu$",
        r'^\.venv/bin/python -m pip install -q -e "\.\[train,eval,demo\]"\s*$',
        r"^\.venv/bin/python -m ha_dpo\.toy\.quickstart --out runs/toy\s*$",
    ]
    positions = [index_of(lines, step) for step in steps]
    assert positions == sorted(positions)  # in this order: torch before the project, which would pull any build


@needs_make
def test_make_settings_choose_the_torch_build_the_environment_and_the_run():
    cuda = "https://download.pytorch.org/whl/cu128"
    lines = dry_run(
        "quickstart", f"TORCH_INDEX={cuda}", "VENV=/tmp/somewhere", "OUT=runs/mine", "QUICKSTART_ARGS=--threads 1"
    )
    index_of(lines, rf"^/tmp/somewhere/bin/python -m pip install -q torch==2\.13\.0 --index-url {re.escape(cuda)}$")
    index_of(lines, r"^/tmp/somewhere/bin/python -m ha_dpo\.toy\.quickstart --out runs/mine --threads 1$")
    # Empty: pip's own configuration chooses (this machine's local CPU wheel, or PyPI's CUDA build).
    index_of(dry_run("venv", "TORCH_INDEX="), r"^\.venv/bin/python -m pip install -q torch==2\.13\.0\s*$")


@needs_make
def test_make_test_installs_the_test_extra_then_lints_and_runs_the_suite():
    lines = dry_run("test", "PYTEST_ARGS=-m 'not slow'")
    steps = [
        r"^python3 -m venv \.venv$",
        r"pip install -q torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu$",
        r'pip install -q -e "\.\[test\]"\s*$',
        r"^\.venv/bin/python -m ruff check \.$",
        r"^\.venv/bin/python -m ruff format --check \.$",
        # the environment's bin/ first, so the DeepSpeed tests find its launcher (else they skip)
        r"^PATH=\"/\S+/\.venv/bin:\$PATH\" \.venv/bin/python -m pytest -q -m 'not slow' tests$",
    ]
    positions = [index_of(lines, step) for step in steps]
    assert positions == sorted(positions)


def fake_command(folder, name: str, body: str = ""):
    path = folder / name
    path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$CALLS"\n{body}\n')
    path.chmod(0o755)


def test_ci_runs_make_test_then_the_floor_environment(tmp_path):
    """.ci/run with `make`, `chromium` and the floor environment's `python` stood in for: what it calls."""
    bin_folder, calls = tmp_path / "bin", tmp_path / "calls"
    bin_folder.mkdir()
    # `make venv` leaves an environment whose activate script puts a recording `python` first on PATH.
    activate = f'mkdir -p "$v/bin"; printf "PATH={bin_folder}/floor:\\$PATH\\n" > "$v/bin/activate"'
    fake_command(bin_folder, "make", f'for a in "$@"; do case $a in VENV=*) v=${{a#VENV=}};; esac; done; {activate}')
    fake_command(bin_folder, "chromium")
    (bin_folder / "floor").mkdir()
    fake_command(bin_folder / "floor", "python")
    environment = {
        **os.environ,
        "PATH": f"{bin_folder}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "CI_VENV": str(tmp_path / "ci"),
        "CI_FLOOR_VENV": str(tmp_path / "floor"),
    }
    subprocess.run([os.path.join(ROOT, ".ci", "run")], env=environment, check=True, capture_output=True)
    made, floor_venv, *floor_runs = calls.read_text().splitlines()
    assert made == f"make test VENV={tmp_path / 'ci'} TORCH_INDEX="
    floor = re.search(r'"transformers>=([0-9.]+),', open(os.path.join(ROOT, "setup.py")).read()).group(1)
    assert floor_venv == f"make venv VENV={tmp_path / 'floor'} EXTRAS=test PINS=transformers=={floor} TORCH_INDEX="
    assert floor_runs[0].startswith("python -c import transformers")
    assert floor_runs[1].startswith("python -m pytest -q -rs -k not deepspeed and not torchrun tests/test_compat.py")


@pytest.fixture
def filters_restored():
    """Loggers' filters and the warning filters as they were before the test."""
    names = ("DeepSpeed", "accelerate.accelerator")
    before = {name: list(logging.getLogger(name).filters) for name in names}
    with warnings.catch_warnings():
        yield
    for name in names:
        logging.getLogger(name).filters[:] = before[name]


class Collect(logging.Handler):
    def __init__(self, logger_name: str):
        super().__init__()
        self.messages, self.logger = [], logging.getLogger(logger_name)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self.messages

    def __exit__(self, *exception):
        self.logger.removeHandler(self)


def test_the_expected_messages_are_dropped_and_others_from_the_same_places_still_show(filters_restored, monkeypatch):
    monkeypatch.setattr(quiet, "torch_has_gpu_build", lambda: False)
    quiet.quiet_expected_messages()
    quiet.quiet_expected_messages()  # again: nothing doubles
    assert sum(isinstance(f, quiet.DropMessages) for f in logging.getLogger("DeepSpeed").filters) == 1
    with Collect("DeepSpeed") as deepspeed:
        logging.getLogger("DeepSpeed").warning(DEEPSPEED_CPU_LINE)
        logging.getLogger("DeepSpeed").warning(
            "Unable to find hostfile, will proceed with training with local resources"
        )
    assert deepspeed == ["Unable to find hostfile, will proceed with training with local resources"]
    with Collect("accelerate.accelerator") as accelerate:
        logging.getLogger("accelerate.accelerator").warning(MISMATCH_LINE)
        # Not the Trainer's deliberate 1: a user's own accelerate set-up, worth reading
        logging.getLogger("accelerate.accelerator").warning(MISMATCH_LINE.replace("has 1,", "has 4,"))
    assert accelerate == [MISMATCH_LINE.replace("has 1,", "has 4,")]
    with warnings.catch_warnings(record=True) as shown:
        quiet.quiet_expected_messages()  # inside: catch_warnings restores the filters it finds
        warnings.warn(PIN_MEMORY_LINE, UserWarning, stacklevel=1)
        warnings.warn(ALL_GATHER_LINE, FutureWarning, stacklevel=1)
        warnings.warn("'pin_memory_device' is deprecated", UserWarning, stacklevel=1)
        warnings.warn("`torch.distributed.all_reduce_coalesced` is deprecated", FutureWarning, stacklevel=1)
    assert [str(warning.message) for warning in shown] == [
        "'pin_memory_device' is deprecated",
        "`torch.distributed.all_reduce_coalesced` is deprecated",
    ]


@pytest.mark.parametrize(
    "gpu_build, local_rank, shown",
    [(False, "0", False), (True, "0", True), (True, "1", False)],
    ids=["cpu-build", "gpu-build-first-process", "gpu-build-other-rank"],
)
def test_deepspeeds_cpu_line_shows_once_where_a_gpu_was_expected(
    filters_restored, monkeypatch, gpu_build, local_rank, shown
):
    logging.getLogger("DeepSpeed").filters[:] = []
    monkeypatch.setattr(quiet, "torch_has_gpu_build", lambda: gpu_build)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("RANK", local_rank)
    quiet.quiet_expected_messages()
    with Collect("DeepSpeed") as messages:
        logging.getLogger("DeepSpeed").warning(DEEPSPEED_CPU_LINE)
    assert messages == ([DEEPSPEED_CPU_LINE] if shown else [])


def quieted(script: str, folder) -> str:
    """A copy of `script`'s entry that installs the quieting first, as run_command does for every command."""
    wrapper = folder / f"quiet_{os.path.basename(script)}"
    wrapper.write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from post_decoder.quiet import quiet_expected_messages\n"
        "quiet_expected_messages()\n"
        f"sys.argv[0] = {script!r}\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n"
    )
    return str(wrapper)


@pytest.fixture(scope="module")
def tiny_run(plain_llava, llava_tokenizer, tmp_path_factory):
    from post_decoder.families.llava.tiny import save_llava_hf

    root = tmp_path_factory.mktemp("quiet")
    base = save_llava_hf(plain_llava, llava_tokenizer, str(root / "base"))
    vg_path, desc_data, pope_data = write_hadpo(root / "hadpo")
    flags = ["--model_name_or_path", base, "--vg_path", vg_path, "--desc_data_path", desc_data]
    flags += ["--pope_data_path", pope_data, "--tune_post_decoder", "True", "--max_steps", "2", "--logging_steps", "1"]
    flags += ["--per_device_train_batch_size", "1", "--report_to", "none", "--model_max_length", "512"]
    return base, flags


def output_of(command, **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_training_and_merging_on_the_cpu_print_none_of_the_expected_messages(tiny_run, tmp_path):
    """`python train_dpo_post.py` without --use_cpu (as the quickstart trains) and `--merge`: each would
    print DeepSpeed's CPU line, and the training the pin_memory warning."""
    base, flags = tiny_run
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    trained = tmp_path / "trained"
    output = output_of(
        [sys.executable, quieted(TRAIN, tmp_path), *flags, "--output_dir", str(trained)], env=environment
    )
    assert "'loss'" in output  # it trained
    merge = [sys.executable, quieted(REPLACE_BIN, tmp_path), "--merge", "--tune_stage", "1"]
    merge += [
        "--path_model_state_dict",
        base,
        "--path_non_lora_state_dict",
        str(trained),
        "--output",
        str(tmp_path / "m"),
    ]
    output += output_of(merge, env=environment)
    assert "added the block" in output
    assert not [line for line in output.splitlines() if any(expected in line for expected in EXPECTED)]


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not installed")
@pytest.mark.slow
def test_two_deepspeed_ranks_on_the_cpu_print_none_of_the_expected_messages(tiny_run, tmp_path):
    """Each rank would print DeepSpeed's CPU line, the pin_memory and all_gather warnings, and rank 0
    accelerate's mismatch (gradient accumulation 2). The launcher's own two CPU lines are DeepSpeed's
    process, not ours: `DS_ACCELERATOR=cpu deepspeed ...` (README) silences them."""
    from tests.helpers import free_port

    _, flags = tiny_run
    logs = tmp_path / "rank_logs"
    command = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--enable_each_rank_log", str(logs)]
    command += [quieted(TRAIN, tmp_path), *flags, "--output_dir", str(tmp_path / "zero2")]
    command += ["--deepspeed", os.path.join(ROOT, "scripts", "zero2.json"), "--gradient_accumulation_steps", "2"]
    output_of(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks = sorted(logs.iterdir())
    assert len(ranks) == 2
    for rank in ranks:
        text = rank.read_text()
        assert "Traceback" not in text
        assert not [line for line in text.splitlines() if any(expected in line for expected in EXPECTED)], rank.name
    assert "'loss'" in ranks[0].read_text() or "'loss'" in ranks[1].read_text()


def modes(root: str) -> dict[str, set[int]]:
    """The permission bits of every folder and file under `root` (and of root)."""
    folders, files = {stat.S_IMODE(os.stat(root).st_mode)}, set()
    for folder, subfolders, names in os.walk(root):
        folders |= {stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in subfolders}
        files |= {stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in names}
    return {"folders": folders, "files": files}


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_the_toy_worlds_folders_and_files_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        write_world(str(tmp_path / "world"), WorldConfig(seed=3, splits={"train": 6, "dpo": 3, "val": 20}), 8)
    finally:
        os.umask(previous)
    assert modes(str(tmp_path / "world")) == {"folders": {folder_mode}, "files": {file_mode}}


def test_the_toy_world_shows_its_progress(tmp_path, capsys):
    config = WorldConfig(seed=3, splits={"train": 6, "dpo": 3, "val": 20})
    write_world(str(tmp_path / "world"), config, 8, model_path=DEFAULT_CHECKPOINT)
    err = capsys.readouterr().err
    assert re.search(r"toy world: drawing the images: 100%\S* 29/29 ", err)
    assert re.search(r"toy world: base model answers: 100%\S* 3/3 ", err)  # the slow part: one step per DPO image
