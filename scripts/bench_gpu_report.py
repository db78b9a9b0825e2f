"""bench_gpu.py's results as text: the summary table it prints, and the rows for BENCHMARKS.md (same columns
as its tables, plus peak memory and the exactness checks), each with the date, device, versions and command."""

import json

STAGES = ("1", "2", "head")
METHODS = ("usual", "trl", "ours")  # the tables' column order
EXTERNAL_TITLES = {
    "cached": "Cached-epoch speed-up (bench_train.py --cached)",
    "chair": "CHAIR (bench_chair.py)",
}


def _steps(results) -> dict:
    return {step["name"]: step for step in results["steps"]}


def device_label(results) -> str:
    device = results.get("device")
    if not device:
        return f"{results['settings']['device']} (not described: the environment step failed)"
    if device["type"].startswith("cuda"):
        return f"{device['name']} ({device['memory_gib']} GiB, CUDA {device['cuda']})"
    return f"CPU, {device['cores']} cores, {device['threads']} thread{'s' * (device['threads'] != 1)}"


def shape_label(settings) -> str:
    shape = "7B (LLaVA-1.5-7B, random weights)" if settings["shape"] == "7b" else "tiny"
    return shape + (f", {settings['layers']} layers" if settings["layers"] else "")


def versions_label(results) -> str:
    versions = results.get("versions", {})
    return ", ".join(f"{name} {version or 'absent'}" for name, version in versions.items())


def _by_pairs(step) -> dict:
    return {record["pairs"]: record for record in (step or {}).get("results", [])}


def _train_cell(steps, stage, method, pairs, field, digits=1) -> str:
    step = steps.get(f"train/{stage}/{method}")
    record = _by_pairs(step).get(pairs)
    if record and field in record:
        return f"{record[field]:.{digits}f}"
    if step is None or step["status"] == "skipped":
        return "n/a" if step and "n/a" in step.get("reason", "") else "skipped"
    return "failed" if step["status"] == "failed" else "-"


def _ratio(steps, stage, numerator, denominator, pairs) -> str:
    top = _by_pairs(steps.get(f"train/{stage}/{numerator}")).get(pairs, {}).get("pairs_per_second")
    bottom = _by_pairs(steps.get(f"train/{stage}/{denominator}")).get(pairs, {}).get("pairs_per_second")
    return f"{top / bottom:.2f}x" if top and bottom else "n/a"


def describe(step) -> str:
    """One line: what a step measured, or why it has no numbers."""
    name, records = step["name"], step.get("results", [])
    text = ""
    if name.startswith("train/"):
        text = " | ".join(
            f"{r['pairs']} pairs: "
            + (r["error"] if "error" in r else f"{r['pairs_per_second']:.2f} pairs/s, {r['peak_gib']:.1f} GiB")
            for r in records
        )
    elif name == "pope" and records:
        r = merged(records)
        text = f"{r['questions']} q at {r['questions_per_second']:.1f} q/s (9,000 in {r['seconds_for_9000']:.0f} s)"
        if "speedup" in r:
            text += f", per-question {r['baseline_questions_per_second']:.2f} q/s: {r['speedup']:.1f}x; "
            text += f"identical {r['identical_answers']}/{r['baseline_questions']}"
    elif name == "exact/logps" and records:
        r = records[0]
        text = "max |d logp| per token: " + ", ".join(
            f"{dtype} {diff:.2g} (tol {r['tolerance_per_token'][dtype]:.2g})"
            for dtype, diff in r["max_diff_per_token"].items()
        )
    elif name == "exact/generation" and records:
        r = records[0]
        text = f"{r['identical_answers']}/{r['compared']} cached answers identical to generate ({r['dtype']})"
    elif name == "qwen2.5-vl" and records:
        r = {record["part"]: record for record in records}
        text = " | ".join(
            f"{part}: {r[part][field]:.2f} {unit}"
            for part, field, unit in (
                ("train/1/ours", "pairs_per_second", "pairs/s"),
                ("train/1/usual", "pairs_per_second", "pairs/s"),
                ("pope/ours", "questions_per_second", "q/s"),
                ("pope/per-question generate", "speedup", "x"),
            )
            if part in r
        )
    elif name == "environment" and records:
        text = ", ".join(f"{key} {value}" for key, value in records[0]["device"].items())
    elif records:
        text = json.dumps(records[-1])[:150]
    elif step.get("output_tail"):
        text = step["output_tail"].splitlines()[-1][:150]
    reason = step.get("reason")
    return "; ".join(part for part in (text, reason) if part)


def summary_table(results) -> str:
    settings, steps = results["settings"], _steps(results)
    lines = [
        f"{shape_label(settings)}, {device_label(results)}, {settings['dtype']}; {versions_label(results)}",
        f"{'step':<18}{'status':<9}{'seconds':>8}  result",
    ]
    lines += [f"{s['name']:<18}{s['status']:<9}{s['seconds']:>8.1f}  {describe(s)}" for s in results["steps"]]
    widths = (7, 6, 15, 13, 14, 12, 10)

    def aligned(cells) -> str:  # the first column to the left, numbers to the right
        return f"{cells[0]:<{widths[0]}}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:]))

    lines += [
        "",
        aligned(("stage", "pairs", "usual pairs/s", "TRL pairs/s", "ours pairs/s", "ours/usual", "ours/TRL")),
    ]
    for row in _training_rows(steps, settings, digits=2):
        lines.append(aligned((row["stage"], str(row["pairs"]), *row["rates"], *row["ratios"])))
    failed = [step["name"] for step in results["steps"] if step["status"] == "failed"]
    lines.append(f"failed: {', '.join(failed)}" if failed else "no step failed")
    return "\n".join(lines)


def _training_rows(steps, settings, digits: int):
    for stage in STAGES:
        for pairs in settings["pairs"]:
            yield {
                "stage": stage,
                "pairs": pairs,
                "rates": [_train_cell(steps, stage, m, pairs, "pairs_per_second", digits) for m in METHODS],
                "peaks": [_train_cell(steps, stage, m, pairs, "peak_gib", 1) for m in METHODS],
                "ratios": [_ratio(steps, stage, "ours", "usual", pairs), _ratio(steps, stage, "ours", "trl", pairs)],
            }


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def markdown_rows(results) -> str:
    """BENCHMARKS.md's tables' rows (its columns), then the tables it lacks: peak memory, exactness checks."""
    settings, steps = results["settings"], _steps(results)
    start = [results["date"], device_label(results), shape_label(settings)]
    parts = ["# Rows for BENCHMARKS.md (scripts/bench_gpu.py)", ""]
    parts += [f"Command: `{results['command']}`. Versions: {versions_label(results)}.", ""]
    parts += _training_section(steps, settings, start)
    parts += _pope_section(steps.get("pope", {}), settings, start)
    parts += _exactness_section(steps, start)
    parts += _qwen_section(steps.get("qwen2.5-vl", {}), settings, [*start[:2], qwen_shape_label(settings)])
    for name, title in EXTERNAL_TITLES.items():
        parts += _external_section(steps.get(name, {}), title)
    return "\n".join(parts)


def _training_section(steps, settings, start) -> list[str]:
    rows = list(_training_rows(steps, settings, digits=1))
    header = ["date", "device", "shape", "stage", "pairs/micro-batch", "answer tokens", "usual pairs/s"]
    header += ["TRL pairs/s", "ours pairs/s", "speed-up vs usual", "ours / TRL"]
    rates = [[*start, r["stage"], r["pairs"], settings["answer_tokens"], *r["rates"], *r["ratios"]] for r in rows]
    peaks = [[*start, r["stage"], r["pairs"], *r["peaks"]] for r in rows]
    memory_header = ["date", "device", "shape", "stage", "pairs/micro-batch", "usual peak GiB", "TRL peak GiB"]
    return [
        "## DPO training step",
        "",
        *_table(header, rates),
        "",
        f"{settings['steps']} timed steps after {settings['warmup']} warm-up steps, {settings['dtype']} backbone.",
        "Peak memory (GPU: allocated by torch during the timed steps; CPU: the process's peak RSS):",
        "",
        *_table([*memory_header, "ours peak GiB"], peaks),
        "",
    ]


def _pope_section(pope, settings, start) -> list[str]:
    header = ["date", "device", "shape", "block", "dtype", "per-question q/s", "ours q/s", "speed-up"]
    lines = ["## POPE answering", ""]
    if not pope.get("results"):
        return lines + [f"{pope.get('status', 'not run')}: {pope.get('reason', '')}", ""]
    r = merged(pope["results"])
    baseline_rate = speedup = identical = "-"  # the per-question way ran out of time
    if "speedup" in r:
        baseline_rate, speedup = f"{r['baseline_questions_per_second']:.2f}", f"{r['speedup']:.1f}x"
        identical = f"{r['identical_answers']} / {r['baseline_questions']}"
        identical += f" ({100 * r['identical_answers'] / r['baseline_questions']:.1f}%)"
    row = [*start, "post_interaction", settings["dtype"], baseline_rate, f"{r['questions_per_second']:.1f}", speedup]
    row.append(identical)
    note = (
        f"Ours: {r['questions']} questions ({r['distinct_prompts']} distinct prompts, {r['images']} images; "
        f"{r['question_source']}) in {r['seconds']:.1f} s (all 9,000 at this rate: {r['seconds_for_9000']:.0f} s), "
        f"peak {r['peak_gib']:.1f} GiB; {r['max_new_tokens']} new tokens, batch size {r['batch_size']}; "
        + (
            f"per-question `generate` on the first {r['baseline_questions']} of them."
            if "speedup" in r
            else f"per-question `generate`: {pope.get('reason', 'not measured')}."
        )
    )
    return lines + _table([*header, "identical answers"], [row]) + ["", note, ""]


def merged(records: list[dict]) -> dict:
    """A step's records as one (POPE's: ours, then the per-question way)."""
    return {key: value for record in records for key, value in record.items()}


def _exactness_section(steps, start) -> list[str]:
    rows = []
    for name in ("exact/logps", "exact/generation"):
        step = steps.get(name, {})
        rows += [[*start, *check[:3], "pass" if check[3] else "FAIL"] for check in _checks(step)]
        if not step.get("results"):
            rows.append([*start, name, "-", "-", f"{step.get('status', 'not run')}: {step.get('reason', '')}"])
    header = ["date", "device", "shape", "check", "measured", "tolerance", "result"]
    notes = []
    for r in steps.get("exact/logps", {}).get("results", []):
        error = r["bf16_vs_fp32_per_token"]
        notes.append(
            f"Tolerance: {r['tolerance_rule']}. bf16 against fp32 (nats/token): shared {error['shared']:.2g}, "
            f"two-model {error['two_model']:.2g}; mean log-prob {r['mean_logp_per_token']:.2f} per token."
        )
    return ["## Exactness checks", "", *_table(header, rows), "", *notes, ""]


def qwen_shape_label(settings) -> str:
    shape = "Qwen2.5-VL-7B (published config, random weights)" if settings["shape"] == "7b" else "Qwen2.5-VL tiny"
    return shape + (f", {settings['layers']} layers" if settings["layers"] else "")


def _qwen_section(step, settings, start) -> list[str]:
    """The Qwen2.5-VL step: its training step (stage 1, ours and usual) and POPE rows, in the tables' columns."""
    lines = ["## Qwen2.5-VL shape", ""]
    records = {record["part"]: record for record in step.get("results", [])}
    if not records:
        return lines + [f"{step.get('status', 'not run')}: {step.get('reason', '')}", ""]
    ours, usual = records.get("train/1/ours"), records.get("train/1/usual")
    if ours and usual:
        header = ["date", "device", "shape", "stage", "pairs/micro-batch", "usual pairs/s", "ours pairs/s"]
        header += ["speed-up vs usual", "usual peak GiB", "ours peak GiB"]
        row = [*start, "1", ours["pairs"], f"{usual['pairs_per_second']:.1f}", f"{ours['pairs_per_second']:.1f}"]
        row += [f"{ours['pairs_per_second'] / usual['pairs_per_second']:.2f}x"]
        row += [f"{usual['peak_gib']:.1f}", f"{ours['peak_gib']:.1f}"]
        lines += _table(header, [row])
        lines += ["", f"Prompt {ours['prompt_tokens']} tokens, answers {ours['answer_tokens']} tokens.", ""]
    pope = {**records.get("pope/ours", {}), **records.get("pope/per-question generate", {})}
    if "speedup" in pope:
        header = ["date", "device", "shape", "per-question q/s", "ours q/s", "speed-up", "identical answers"]
        identical = f"{pope['identical_answers']} / {pope['baseline_questions']}"
        row = [*start, f"{pope['baseline_questions_per_second']:.2f}", f"{pope['questions_per_second']:.1f}"]
        row += [f"{pope['speedup']:.1f}x", identical]
        lines += _table(header, [row])
        lines += ["", f"POPE: ours on {pope['questions']} questions ({pope['question_source']}).", ""]
    if step.get("status") != "ok":
        lines += [f"{step['status']}: {step.get('reason', '')}", ""]
    return lines


def _external_section(step, title) -> list[str]:
    lines = [f"## {title}", ""]
    if step.get("status") != "ok":
        return lines + [f"{step.get('status', 'not run')}: {step.get('reason', '')}", ""]
    output = step.get("output_tail") or json.dumps(step["results"])
    return lines + [f"`{step.get('command', '')}`", "", "```", output, "```", ""]


def _checks(step):
    for r in step.get("results", []):
        if "max_diff_per_token" in r:
            for dtype, diff in r["max_diff_per_token"].items():
                yield (
                    f"shared vs two-model log-probs, {dtype} ({r['answers']} answers x {r['answer_tokens']} tokens)",
                    f"{diff:.2g} nats/token",
                    f"<= {r['tolerance_per_token'][dtype]:.2g}",
                    diff <= r["tolerance_per_token"][dtype],
                )
        elif "compared" in r:
            yield (
                f"prefix-cached vs per-question generate, {r['dtype']}",
                f"{r['identical_answers']} / {r['compared']} identical",
                f">= {100 * r['min_identical_share']:.0f}%",
                r["identical_answers"] >= r["min_identical_share"] * r["compared"],
            )
