"""POPE results as a metrics JSON, a printed table and a PNG bar chart; several runs side by side.

python -m eval.pope_report --compare base=runs/base/metrics.json trained=runs/stage1/metrics.json --chart compare.png
"""

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError, run_command

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def mean_f1(metrics_by_set: dict[str, dict]) -> float:
    """The mean F1 over the sets (the number LLaVA reports)."""
    return sum(metrics["f1"] for metrics in metrics_by_set.values()) / len(metrics_by_set)


def write_metrics(metrics_by_set: dict[str, dict], path: str):
    with atomic_file(path) as temporary:
        with open(temporary, "w") as handle:
            json.dump(metrics_by_set, handle, indent=2)


def format_table(runs: dict[str, dict[str, dict]]) -> str:
    """runs: run name -> set -> metrics (fractions). Printed as percentages."""
    width = max([16] + [len(run) + 2 for run in runs])  # long run names (the ablation's) keep their column
    header = f"{'run':<{width}}{'set':<13}" + "".join(f"{name:>11}" for name in METRICS) + f"{'TP/FP/TN/FN':>22}"
    lines = [header, "-" * len(header)]
    for run, metrics_by_set in runs.items():
        for set_name, metrics in metrics_by_set.items():
            counts = "/".join(str(metrics[key]) for key in ("tp", "fp", "tn", "fn"))
            values = "".join(f"{100 * metrics[name]:>11.2f}" for name in METRICS)
            lines.append(f"{run:<{width}}{set_name:<13}{values}{counts:>22}")
        if len(metrics_by_set) > 1:
            lines.append(f"{run:<{width}}{'mean F1':<13}{'':>33}{100 * mean_f1(metrics_by_set):>11.2f}")
    return "\n".join(lines)


def plot_chart(runs: dict[str, dict[str, dict]], path: str):
    """Accuracy and F1 per set, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(next(iter(runs.values())))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    width = 0.8 / len(runs)
    for axis, metric in zip(axes, ("accuracy", "f1")):
        for index, (run, metrics_by_set) in enumerate(runs.items()):
            positions = [position + index * width for position in range(len(sets))]
            values = [100 * metrics_by_set[set_name][metric] for set_name in sets]
            bars = axis.bar(positions, values, width, label=run)
            axis.bar_label(bars, fmt="%.1f", fontsize=7)
        axis.set_xticks([position + width * (len(runs) - 1) / 2 for position in range(len(sets))], sets)
        axis.set_title(f"POPE {metric}")
        axis.set_ylim(0, 105)
    axes[0].set_ylabel("%")
    figure.legend(
        *axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(runs)
    )  # above the bars, not on them
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def read_metrics(path: str) -> dict[str, dict]:
    """A metrics JSON as `write_metrics` writes it: set -> metrics."""
    try:
        with open(path) as handle:
            metrics_by_set = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"--compare: {path}: no such metrics file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"--compare: {path}: not a metrics JSON ({error})") from None
    if not isinstance(metrics_by_set, dict) or not all(
        isinstance(m, dict) and set(METRICS) <= set(m) for m in metrics_by_set.values()
    ):
        raise InputError(f"--compare: {path}: not a POPE metrics file (set -> {', '.join(METRICS)})")
    return metrics_by_set


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compare POPE runs in one table and one chart.")
    parser.add_argument("--compare", nargs="+", required=True, metavar="NAME=METRICS_JSON")
    parser.add_argument("--chart", help="PNG to write")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.compare:
        name, separator, path = item.partition("=")
        if not separator:
            parser.error(f"--compare takes NAME=METRICS_JSON, got {item!r}")
        runs[name] = read_metrics(path)
    print(format_table(runs))
    if args.chart:
        plot_chart(runs, args.chart)
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    run_command(main)
