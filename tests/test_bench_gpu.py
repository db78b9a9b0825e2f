"""scripts/bench_gpu.py: every benchmark step in one command, each step isolated with its own time limit.

The reduced CPU run (tiny shape) proves the command end to end: results.json names every step with a
status and numbers for those that ran, and the markdown rows are written. The runner's tests show that
a step that raises, dies or overruns is reported with its reason while the others still run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import bench_gpu  # noqa: E402
from bench_gpu_runner import run_function, run_script  # noqa: E402

from post_decoder.errors import run_command  # noqa: E402

STEPS = [
    "environment",
    *(f"train/{stage}/{method}" for stage in ("1", "2", "head") for method in ("ours", "usual", "trl")),
    "pope",
    "exact/logps",
    "exact/generation",
    "cached",
    "chair",
    "qwen2.5-vl",
]
REDUCED = ["--device", "cpu", "--shape", "tiny", "--layers", "2", "--threads", "1", "--steps", "1", "--warmup", "0"]


def bench(out, *flags):
    command = [sys.executable, os.path.join(SCRIPTS, "bench_gpu.py"), "--out", str(out), *REDUCED, *flags]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    with open(os.path.join(out, "results.json")) as handle:
        return completed, json.load(handle)


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu")
    chair = "chair=--images 2 --baseline-images 1 --max-new-tokens 4"  # a short run when the script is there
    completed, results = bench(out, "--questions", "200", "--baseline-questions", "20", "--extra", chair)
    return out, completed, results


def numbers(record) -> list[float]:
    """Every number in a record, nested ones too."""
    if isinstance(record, dict):
        return [number for value in record.values() for number in numbers(value)]
    return [record] if isinstance(record, (int, float)) and not isinstance(record, bool) else []


@pytest.mark.slow
def test_the_reduced_run_lists_every_step_with_a_status_and_numbers_for_those_that_ran(reduced_run):
    _, completed, results = reduced_run
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert [step["name"] for step in results["steps"]] == STEPS
    for step in results["steps"]:
        assert step["status"] in ("ok", "skipped"), (step["name"], step.get("reason"))
        if step["status"] == "ok" and "command" in step:  # another script: its JSON lines, else its table
            assert step["results"] or any(character.isdigit() for character in step["output_tail"]), step
        elif step["status"] == "ok":
            assert step["results"] and all(numbers(record) for record in step["results"]), step["name"]
        else:
            assert step["reason"], step["name"]
    for name in ("cached", "chair"):  # present or not, depending on the checkout
        step = next(step for step in results["steps"] if step["name"] == name)
        assert step["status"] == "ok" or step["reason"].startswith("not available in this checkout"), step
    assert results["versions"]["torch"] and results["versions"]["transformers"]
    assert results["device"]["type"] == "cpu" and results["device"]["threads"] == 1
    assert "--questions 200" in results["command"]


@pytest.mark.slow
def test_the_reduced_run_measures_training_at_each_pair_count_and_pope_on_the_questions_asked(reduced_run):
    _, _, results = reduced_run
    steps = {step["name"]: step for step in results["steps"]}
    for stage in ("1", "2", "head"):
        for method in ("ours", "usual"):
            records = steps[f"train/{stage}/{method}"]["results"]
            assert [record["pairs"] for record in records] == [4, 8]
            assert all(record["pairs_per_second"] > 0 and record["peak_gib"] > 0 for record in records)
        if stage != "head":
            assert "n/a" in steps[f"train/{stage}/trl"]["reason"]
    trl = steps["train/head/trl"]
    assert trl["status"] == "ok" if bench_gpu.steps.package_version("trl") else "not installed" in trl["reason"]

    pope = {key: value for record in steps["pope"]["results"] for key, value in record.items()}
    assert pope["questions"] == 200 and pope["baseline_questions"] == 20
    assert 0 <= pope["identical_answers"] <= 20 and pope["speedup"] > 0
    official = os.path.isdir(os.path.join(SCRIPTS, "..", "..", "shared", "data", "pope"))
    assert pope["question_source"].startswith("official" if official else "synthetic")
    assert (
        steps["exact/generation"]["results"][0]["identical_answers"]
        == steps["exact/generation"]["results"][0]["compared"]
    )
    logps = steps["exact/logps"]["results"][0]
    assert logps["max_diff_per_token"]["float32"] <= logps["tolerance_per_token"]["float32"]

    qwen = {record["part"]: record for record in steps["qwen2.5-vl"]["results"]}
    assert [qwen[f"train/1/{method}"]["pairs"] for method in ("ours", "usual")] == [4, 4]  # the first pair count
    assert all(qwen[f"train/1/{method}"]["pairs_per_second"] > 0 for method in ("ours", "usual"))
    assert qwen["train/1/ours"]["prompt_tokens"] > 16  # the tiny shape's 16 image tokens and the chat template
    assert qwen["pope/ours"]["questions"] == 200
    assert qwen["pope/per-question generate"]["identical_answers"] == 20  # fp32: cached = per-question generate


@pytest.mark.slow
def test_the_reduced_run_writes_markdown_rows_and_a_log(reduced_run):
    out, completed, results = reduced_run
    rows = (out / "BENCHMARKS_rows.md").read_text()
    assert results["command"] in rows and results["date"] in rows
    training = [line for line in rows.splitlines() if line.startswith(f"| {results['date']} ") and "| 24 |" in line]
    assert len(training) == 6  # 3 stages x 2 pair counts
    assert "| post_interaction | float32 |" in rows and "| pass |" in rows and "FAIL" not in rows
    assert "| Qwen2.5-VL tiny, 2 layers | 1 | 4 |" in rows and "| 20 / 20 |" in rows  # training, POPE
    assert "===== pope" in (out / "log.txt").read_text()
    assert "train/head/ours" in completed.stdout and "no step failed" in completed.stdout


@pytest.mark.slow
def test_a_step_out_of_time_is_reported_and_the_next_still_runs(tmp_path):
    completed, results = bench(tmp_path, "--only", "pope,exact/logps", "--timeout", "pope=0.001")
    assert completed.returncode == 1
    steps = {step["name"]: step for step in results["steps"]}
    assert steps["pope"]["status"] == "failed" and "time budget" in steps["pope"]["reason"]
    assert steps["exact/logps"]["status"] == "ok"
    assert steps["train/1/ours"]["status"] == "skipped" and "not selected" in steps["train/1/ours"]["reason"]


def emit_then_raise(emit):
    emit({"value": 1})
    raise ValueError("the model did not fit")


def emit_then_sleep(emit, pid_file):
    emit({"value": 2})
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pid_file, "w") as handle:
        handle.write(str(grandchild.pid))
    time.sleep(60)


def kill_itself(emit):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_step_that_raises_keeps_what_it_measured_and_says_why(tmp_path):
    outcome = run_function(emit_then_raise, {}, timeout=60, log_path=str(tmp_path / "log.txt"))
    assert (outcome.status, outcome.records) == ("failed", [{"value": 1}])
    assert outcome.reason == "ValueError: the model did not fit"
    assert "Traceback" in (tmp_path / "log.txt").read_text()


def test_a_step_over_its_time_is_killed_with_what_it_started(tmp_path):
    pid_file = tmp_path / "grandchild"
    start = time.perf_counter()
    outcome = run_function(emit_then_sleep, {"pid_file": str(pid_file)}, timeout=3, log_path=str(tmp_path / "log"))
    assert time.perf_counter() - start < 20
    assert (outcome.status, outcome.records) == ("failed", [{"value": 2}])
    assert outcome.reason == "ran out of its time budget (3 s)"
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with its group; reaped by init
        if not os.path.exists(f"/proc/{grandchild}") or "zombie" in open(f"/proc/{grandchild}/status").read():
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's own child outlived its timeout")


def test_a_step_killed_by_a_signal_is_reported(tmp_path):
    outcome = run_function(kill_itself, {}, timeout=60, log_path=str(tmp_path / "log"))
    assert outcome.status == "failed" and "killed by SIGKILL" in outcome.reason


def test_a_script_step_reports_its_json_lines_and_its_error(tmp_path):
    code = "import json, sys; print(json.dumps({'speedup': 3.5})); print('table'); sys.exit('bench: error: no GPU')"
    outcome = run_script([sys.executable, "-c", code], timeout=60, log_path=str(tmp_path / "log"))
    assert outcome.status == "failed" and outcome.records == [{"speedup": 3.5}]
    assert outcome.reason.endswith("bench: error: no GPU") and outcome.output_tail.endswith("table")
    slow = run_script([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1, log_path=str(tmp_path / "log"))
    assert slow.status == "failed" and "time budget" in slow.reason


def test_a_script_present_in_the_checkout_is_run_with_the_flags_it_takes(tmp_path, monkeypatch):
    script = tmp_path / "bench_chair.py"
    script.write_text(
        'import json, sys\n# parser.add_argument("--device")\nprint(json.dumps({"argv": sys.argv[1:]}))\n'
    )
    (tmp_path / "bench_train.py").write_text('parser.add_argument("--cached")  # "--shape"\n')
    monkeypatch.setattr(bench_gpu, "SCRIPTS", str(tmp_path))
    settings = {"shape": "tiny", "device": "cpu", "dtype": "float32", "threads": 1, "layers": None}
    settings["extra"] = bench_gpu.extra_arguments(["cached=--epochs 2"])
    planned = {step["name"]: step for step in bench_gpu.plan(settings)}
    expected = [str(tmp_path / "bench_train.py"), "--cached", "--shape", "tiny", "--epochs", "2"]
    assert planned["cached"]["command"][1:] == expected
    outcome = run_script(planned["chair"]["command"], timeout=60, log_path=str(tmp_path / "log"))
    assert outcome.status == "ok" and outcome.records == [
        {"argv": ["--device", "cpu", *bench_gpu.EXTRA_ARGUMENTS["chair"]]}
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--timeout", "pope"], "--timeout pope: expected STEP=SECONDS"),
        (["--timeout", "popes=3"], "--timeout popes=3: no such step"),
        (["--only", "training"], "--only training: no such step"),
        (["--pairs", "0"], "--pairs must be at least 1"),
        (["--data", "/nonexistent"], "--data /nonexistent: no such folder"),
        (["--extra", "pope=--fast"], "--extra pope=--fast: expected STEP=ARGS"),
    ],
)
def test_bad_flags_exit_2_with_one_line_naming_the_flag(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_command(bench_gpu.main, ["--out", str(tmp_path), "--device", "cpu", *flags], program="bench_gpu.py")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("bench_gpu.py: error: ") and message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "results.json").exists()


def test_without_the_device_asked_for_the_environment_step_fails_and_the_rest_are_skipped(tmp_path, capsys):
    assert bench_gpu.main(["--out", str(tmp_path), "--device", "cuda:99"]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    environment, *others = results["steps"]
    assert environment["status"] == "failed" and "cuda:99" in environment["reason"]
    assert {step["status"] for step in others} == {"skipped"}
    assert all(step["reason"] for step in others)
    assert "failed: environment" in capsys.readouterr().out
    assert "environment step failed" in (tmp_path / "BENCHMARKS_rows.md").read_text()
