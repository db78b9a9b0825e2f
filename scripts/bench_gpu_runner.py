"""Running one benchmark step so that nothing it does can stop the others: out of memory, a crash, a hang.

A step is either a function, run in a forked child (it inherits the parent's imported torch and
transformers, so a step starts in milliseconds instead of the seconds a fresh interpreter takes), or
another script's command line. Either runs in a session of its own, killed with everything it started
when it overruns its time. Results come back as they are made (a function's `emit`, or a script's
JSON-object lines on stdout), so a step that dies late keeps its early numbers. The step's output goes
to one shared log file.

Fork needs a parent that has not touched CUDA: bench_gpu.py itself never does (Linux only).
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field


@dataclass
class Outcome:
    status: str  # "ok" or "failed"
    seconds: float
    records: list = field(default_factory=list)
    reason: str | None = None
    output_tail: str | None = None  # a script's last lines of stdout


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _died(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer?)" if name == "SIGKILL" else ""
        return f"the process was killed by {name}{hint}"
    return f"the process exited with code {exitcode} before finishing"


def _kill_group(pid: int):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _child(target, kwargs, connection, log_path: str):
    os.setsid()  # its own process group: a timeout kills whatever it started too
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # Python's own streams too (they may not be the file descriptors, under pytest say).
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        target(emit=lambda record: connection.send(("record", record)), **kwargs)
        connection.send(("done", None))
    except BaseException as error:  # reported, not raised: the parent decides what a failure means
        traceback.print_exc()
        connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_function(target, kwargs: dict, timeout: float, log_path: str) -> Outcome:
    """`target(emit=..., **kwargs)` in a forked child, for at most `timeout` seconds."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a forked child could not use it
        raise RuntimeError("CUDA was initialized before forking a step: do CUDA work in steps only")
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, kwargs, sending, log_path))
    start = time.perf_counter()
    process.start()
    sending.close()  # the child holds the only writing end: its exit ends the reads below
    records, reason, finished = [], None, False
    try:
        while not finished and reason is None:
            remaining = start + timeout - time.perf_counter()
            if remaining <= 0:
                reason = f"ran out of its time budget ({timeout:.0f} s)"
            elif receiving.poll(min(remaining, 1.0)):
                try:
                    kind, value = receiving.recv()
                except EOFError:
                    process.join()
                    reason = _died(process.exitcode)
                    continue
                if kind == "record":
                    records.append(value)
                elif kind == "done":
                    finished = True
                else:
                    reason = _one_line(value)
    finally:
        if process.is_alive():
            process.join(timeout=5 if reason is None else 0.1)
        if process.is_alive():
            _kill_group(process.pid)
        process.join()
        receiving.close()
    return Outcome("ok" if finished else "failed", time.perf_counter() - start, records, reason)


def run_script(command: list[str], timeout: float, log_path: str) -> Outcome:
    """Another benchmark script as a command line; records are the JSON objects it prints, one a line."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        reason = None
        if process.returncode != 0:
            last = stderr.strip().splitlines()[-1:] or [""]
            reason = _one_line(f"{_died(process.returncode)}: {last[0]}")
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        stdout, stderr = process.communicate()
        reason = f"ran out of its time budget ({timeout:.0f} s)"
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n{stdout}{stderr}")
    records = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    tail = "\n".join(stdout.strip().splitlines()[-30:])
    return Outcome("ok" if reason is None else "failed", time.perf_counter() - start, records, reason, tail)
