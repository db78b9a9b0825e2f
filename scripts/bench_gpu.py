"""Every 7B-shape benchmark in turn, in one command, within a time budget (8 minutes of an H100/H200 by default).

    python scripts/bench_gpu.py --out DIR                                   # on the GPU machine
    python scripts/bench_gpu.py --out DIR --device cpu --shape tiny --questions 200 --steps 1 --warmup 0
    python scripts/bench_gpu.py --out DIR --only train/head,exact           # some steps again

Steps: the environment (versions, device); the DPO training step (bench_train.py's) at stages 1, 2 and
head, at 4 and 8 pairs, ours, the usual recipe and TRL (when installed; head stage only); POPE
(bench_pope.py's comparison: ours on every question, per-question `generate` on a subset, their answers'
agreement); two exactness checks (shared vs two-model log-probs in fp32 and bf16, prefix-cached vs
per-question answers in fp32); the cached-epoch speed-up (bench_train.py --cached) and CHAIR
(bench_chair.py) when this checkout has them; the Qwen2.5-VL shape (Qwen2.5-VL-7B-Instruct's config at 7b):
the stage-1 training step, ours and the usual recipe, and POPE answering.

Each step runs in a process of its own with its own time limit (BUDGETS, --timeout), inside the run's
(--budget): one that fails, runs out of memory or of time is reported with its reason and what it
measured before, and the rest still run. Data, read when present, from --data (default shared/data
inside the checkout, else ../shared/data): pope/ (the official question sets, else a synthetic set of
the same shape, said so) and tokenizers/llama2/ (else a small trained tokenizer). Nothing comes from a
hub (HF_HUB_OFFLINE=1 unless set).

Writes DIR/results.json (after every step), DIR/BENCHMARKS_rows.md and DIR/log.txt (every step's output),
prints a summary table. Exit code 1 when a step failed, 2 on bad flags.
"""

import argparse
import datetime
import json
import os
import shlex
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(SCRIPTS)
sys.path.insert(0, REPOSITORY)
sys.path.insert(0, SCRIPTS)
if __name__ == "__main__":  # nothing from a hub (the GPU machine has no internet: a hub call would only wait)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Imported here, before any step forks, so that each step starts without importing torch again.
import bench_gpu_steps as steps  # noqa: E402
import bench_pope  # noqa: E402, F401
import bench_train  # noqa: E402
from bench_gpu_report import markdown_rows, summary_table  # noqa: E402
from bench_gpu_runner import Outcome, run_function, run_script  # noqa: E402

from eval import answering, pope_eval_post  # noqa: E402, F401
from post_decoder.atomic_files import atomic_file  # noqa: E402
from post_decoder.dtypes import DTYPES  # noqa: E402
from post_decoder.errors import InputError, run_command  # noqa: E402

POPE_FILES = tuple(f"coco_pope_{name}.json" for name in ("random", "popular", "adversarial"))
BUDGETS = {  # seconds per step at 7B shape on an H100/H200 (a model build is ~10 s of each)
    "environment": 60,
    "train": 60,
    "train/head/trl": 90,
    "pope": 210,
    "exact": 60,
    "cached": 90,
    "chair": 120,
    "qwen2.5-vl": 150,  # three model builds: two training methods, POPE
}
# Arguments that fit another script into its budget at 7B shape (its own defaults are for a full run).
EXTRA_ARGUMENTS = {"chair": ["--images", "32", "--baseline-images", "4"]}
EXTERNAL_STEPS = ("cached", "chair")


def parse_arguments(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json, BENCHMARKS_rows.md and log.txt")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--layers", type=int, default=None, help="LLM and vision-tower depth (default: the shape's)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per step (1 on a busy machine)")
    parser.add_argument("--data", default=None, help="folder with pope/ and tokenizers/llama2/ (default: see above)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8], help="pairs per micro-batch (training)")
    parser.add_argument("--answer-tokens", type=int, default=None, help="per answer (default 100 at 7b, 24 at tiny)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps before them")
    parser.add_argument("--questions", type=int, default=9000, help="POPE questions for ours (9,000: all)")
    parser.add_argument("--baseline-questions", type=int, default=100, help="of them, for per-question generate")
    parser.add_argument("--batch-size", type=int, default=64, help="POPE questions per batch (ours)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--exact-pairs", type=int, default=2, help="pairs for the log-prob check")
    parser.add_argument("--exact-images", type=int, default=2, help="images whose questions the generation check asks")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    parser.add_argument(
        "--timeout", action="append", default=[], metavar="STEP=SECONDS", help="a step's (or group's) own limit"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar='STEP="ARGS"',
        help="arguments for another script's step (cached, chair), instead of EXTRA_ARGUMENTS' (e.g. for a short run)",
    )
    parser.add_argument("--only", default=None, help="comma-separated steps or groups (train, train/1, exact, ...)")
    parser.add_argument("--skip", default=None, help="comma-separated steps or groups not to run")
    args = parser.parse_args(argv)
    for name in ("layers", "threads", "answer_tokens", "steps", "questions", "batch_size", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("warmup", "baseline_questions", "exact_pairs", "exact_images"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise InputError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if min(args.pairs) < 1 or args.budget <= 0:
        raise InputError("--pairs must be at least 1 and --budget above 0")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.answer_tokens = args.answer_tokens or (100 if args.shape == "7b" else 24)
    return args


def data_folder(args) -> str | None:
    candidates = (
        [args.data]
        if args.data
        else [os.path.join(REPOSITORY, "shared", "data"), os.path.join(REPOSITORY, "..", "shared", "data")]
    )
    if args.data and not os.path.isdir(args.data):
        raise InputError(f"--data {args.data}: no such folder")
    return next((os.path.abspath(path) for path in candidates if os.path.isdir(path)), None)


def settings_for(args) -> dict:
    data = data_folder(args)
    pope = os.path.join(data, "pope") if data else None
    tokenizer = os.path.join(data, "tokenizers", "llama2") if data else None
    return {
        "shape": args.shape,
        "layers": args.layers,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "pope_path": pope if pope and all(os.path.isfile(os.path.join(pope, name)) for name in POPE_FILES) else None,
        "tokenizer": tokenizer if args.shape == "7b" and tokenizer and os.path.isdir(tokenizer) else None,
        "pairs": args.pairs,
        "answer_tokens": args.answer_tokens,
        "steps": args.steps,
        "warmup": args.warmup,
        "questions": args.questions,
        "baseline_questions": args.baseline_questions,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "exact_pairs": args.exact_pairs,
        "exact_images": args.exact_images,
        "extra": extra_arguments(args.extra),
    }


def extra_arguments(entries: list[str]) -> dict[str, list[str]]:
    extra = dict(EXTRA_ARGUMENTS)
    for entry in entries:
        name, separator, arguments = entry.partition("=")
        if not separator or name not in EXTERNAL_STEPS:
            raise InputError(f"--extra {entry}: expected STEP=ARGS with STEP one of {', '.join(EXTERNAL_STEPS)}")
        try:
            extra[name] = shlex.split(arguments)
        except ValueError as error:
            raise InputError(f"--extra {entry}: {error}") from None
    return extra


def script_command(script: str, arguments: list[str], settings: dict, name: str) -> list[str]:
    """`script` with `arguments`, those of our flags that its source mentions (it may not take --layers, say),
    and the step's extra arguments."""
    with open(os.path.join(SCRIPTS, script)) as handle:
        source = handle.read()
    flags = {"--shape": settings["shape"], "--device": settings["device"], "--dtype": settings["dtype"]}
    flags.update({"--threads": settings["threads"], "--layers": settings["layers"]})
    command = [sys.executable, os.path.join(SCRIPTS, script), *arguments]
    for flag, value in flags.items():
        if value is not None and f'"{flag}"' in source:
            command += [flag, str(value)]
    return command + settings["extra"].get(name, [])


def plan(settings: dict) -> list[dict]:
    """Every step, in order: {name, function + kwargs | command | skip (the reason)}."""
    planned = [{"name": "environment", "function": steps.environment}]
    for stage in bench_train.STAGES:
        for method in bench_train.METHODS:
            step = {
                "name": f"train/{stage}/{method}",
                "function": steps.train,
                "kwargs": {"stage": stage, "method": method},
            }
            if not bench_train.applies(method, stage):
                step["skip"] = bench_train.NOT_APPLICABLE[method]
            elif method == "trl" and steps.package_version("trl") is None:
                step["skip"] = "trl is not installed"
            planned.append(step)
    planned.append({"name": "pope", "function": steps.pope})
    planned.append({"name": "exact/logps", "function": steps.exact_logps})
    planned.append({"name": "exact/generation", "function": steps.exact_generation})

    with open(os.path.join(SCRIPTS, "bench_train.py")) as handle:
        has_cached = '"--cached"' in handle.read()
    cached = {"name": "cached"}
    if has_cached:
        cached["command"] = script_command("bench_train.py", ["--cached"], settings, "cached")
    else:
        cached["skip"] = "not available in this checkout: scripts/bench_train.py has no --cached"
    planned.append(cached)
    chair = {"name": "chair"}
    if os.path.isfile(os.path.join(SCRIPTS, "bench_chair.py")):
        chair["command"] = script_command("bench_chair.py", [], settings, "chair")
    else:
        chair["skip"] = "not available in this checkout: no scripts/bench_chair.py"
    planned.append(chair)
    planned.append({"name": "qwen2.5-vl", "function": steps.qwen2_5_vl})
    return planned


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == pattern or name.startswith(pattern + "/") for pattern in patterns)


def _patterns(text: str | None, names: list[str], flag: str) -> list[str]:
    patterns = [part.strip() for part in (text or "").split(",") if part.strip()]
    for pattern in patterns:
        if not any(_matches(name, [pattern]) for name in names):
            raise InputError(f"{flag} {pattern}: no such step or group; steps: {', '.join(names)}")
    return patterns


def budgets(args, names: list[str]) -> dict[str, float]:
    """Each step's limit: its own --timeout, else its group's, else BUDGETS' (most specific first)."""
    given = {}
    for entry in args.timeout:
        name, _, seconds = entry.partition("=")
        try:
            given[name] = float(seconds)
        except ValueError:
            raise InputError(f"--timeout {entry}: expected STEP=SECONDS, e.g. pope=200") from None
        if not any(_matches(step, [name]) for step in names):
            raise InputError(f"--timeout {entry}: no such step or group; steps: {', '.join(names)}")
    limits = {}
    for step in names:
        for table in (given, BUDGETS):
            prefixes = [step.rsplit("/", depth)[0] for depth in range(step.count("/") + 1)]
            limit = next((table[prefix] for prefix in prefixes if prefix in table), None)
            if limit is not None:
                limits[step] = limit
                break
    return limits


def main(argv=None):
    args = parse_arguments(argv)
    settings = settings_for(args)
    planned = plan(settings)
    names = [step["name"] for step in planned]
    only, skip = _patterns(args.only, names, "--only"), _patterns(args.skip, names, "--skip")
    limits = budgets(args, names)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "log.txt")
    open(log_path, "w").close()  # a fresh log for this run (it is appended to as steps go)
    arguments = sys.argv[1:] if argv is None else argv
    results = {
        "command": shlex.join(["python", os.path.relpath(__file__, os.getcwd()), *arguments]),
        "date": datetime.date.today().isoformat(),
        "settings": settings,
        "budget_s": args.budget,
        "steps": [],
    }
    start = time.perf_counter()
    for index, step in enumerate(planned, 1):
        name = step["name"]
        remaining = args.budget - (time.perf_counter() - start)
        reason = step.get("skip")
        if reason is None and name != "environment":
            if (only and not _matches(name, only)) or _matches(name, skip):
                reason = "not selected (--only / --skip)"
            elif results["steps"][0]["status"] != "ok":
                reason = "the environment step failed"
            elif remaining < 1:
                reason = f"the run's budget ({args.budget:.0f} s) was spent"
        print(f"[{index:>2}/{len(planned)}] {name:<18}", end=" ", flush=True)
        if reason is None:
            outcome = run_step(step, settings, min(limits[name], remaining), log_path)
        else:
            outcome = Outcome("skipped", 0.0, reason=reason)
        print(
            f"{outcome.status} ({outcome.seconds:.1f} s)" + (f": {outcome.reason}" if outcome.reason else ""),
            flush=True,
        )
        results["steps"].append(entry(step, outcome, limits[name]))
        if name == "environment" and outcome.records:
            results.update(outcome.records[0])  # versions and device
        results["elapsed_s"] = round(time.perf_counter() - start, 1)
        write_results(out, results)
    print(summary_table(results))
    print(f"results: {os.path.join(out, 'results.json')}, rows: {os.path.join(out, 'BENCHMARKS_rows.md')}")
    return 1 if any(step["status"] == "failed" for step in results["steps"]) else 0


def run_step(step: dict, settings: dict, timeout: float, log_path: str) -> Outcome:
    with open(log_path, "a") as log:
        log.write(f"\n===== {step['name']} (limit {timeout:.0f} s) =====\n")
    if "command" in step:
        return run_script(step["command"], timeout, log_path)
    kwargs = {"settings": settings, **step.get("kwargs", {})}
    return partial_failure(run_function(step["function"], kwargs, timeout, log_path))


def entry(step: dict, outcome: Outcome, limit: float) -> dict:
    """A step as results.json lists it."""
    listed = {"name": step["name"], "status": outcome.status, "seconds": round(outcome.seconds, 2)}
    listed["results"] = outcome.records
    if outcome.reason:
        listed["reason"] = outcome.reason
    if outcome.status != "skipped":
        listed["budget_s"] = limit
    if "command" in step:  # as a person would type it, from the checkout's root
        shown = [os.path.relpath(part, REPOSITORY) if part.startswith(SCRIPTS) else part for part in step["command"]]
        listed["command"] = shlex.join(["python", *shown[1:]])
        listed["output_tail"] = outcome.output_tail
    return listed


def partial_failure(outcome: Outcome) -> Outcome:
    """A training step that ran out of memory at one pair count is failed, with what it measured."""
    errors = [f"{record['pairs']} pairs: {record['error']}" for record in outcome.records if "error" in record]
    if outcome.status == "ok" and errors:
        outcome.status, outcome.reason = "failed", "; ".join(errors)
    return outcome


def write_results(out: str, results: dict):
    with atomic_file(os.path.join(out, "results.json")) as path, open(path, "w") as handle:
        json.dump(results, handle, indent=1)
    with atomic_file(os.path.join(out, "BENCHMARKS_rows.md")) as path, open(path, "w") as handle:
        handle.write(markdown_rows(results))


if __name__ == "__main__":
    sys.exit(run_command(main))
