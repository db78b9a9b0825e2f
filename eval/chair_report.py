"""CHAIR results as a metrics JSON, a printed table and a PNG chart; several runs side by side.

Score a JSON-lines file of descriptions, one {"image_id": ..., "caption" or "text": ...} a line, against
COCO's instance and caption annotations (files, or folders holding instances_*.json and captions_*.json):

python -m eval.chair_report --descriptions runs/base/chair_descriptions.jsonl \\
    --annotations coco/annotations/instances_val2014.json coco/annotations/captions_val2014.json \\
    --metrics-file runs/base/chair_metrics.json --chart runs/base/chair.png

Compare runs (metrics JSONs as written above) in one table and one chart:

python -m eval.chair_report --compare base=runs/base/chair_metrics.json trained=runs/stage1/chair_metrics.json \\
    --chart chair_comparison.png
"""

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval.chair_objects import read_ground_truth
from eval.chair_scoring import score_descriptions
from eval.pope_report import write_metrics
from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError, run_command

RATES = ("chair_s", "chair_i", "recall")  # fractions, shown as percentages
RATE_NAMES = {"chair_s": "CHAIR_s", "chair_i": "CHAIR_i", "recall": "recall"}
REQUIRED = (*RATES, "avg_length", "descriptions", "mentions", "hallucinated_mentions", "hallucinations_by_object")
TOP_OBJECTS = 10


def read_descriptions(path: str) -> tuple[list[tuple[int, str]], dict[int, int]]:
    """((image_id, text) per line of a JSON-lines file, image_id -> its line number); the text is "caption"
    or "text". Blank lines are skipped; anything else wrong is an InputError naming file:line."""
    descriptions, lines_of = [], {}
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--descriptions: {path}: no such file") from None
    with handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not UTF-8 text ({error})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object with image_id and caption (or text)")
        image_id = record.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise InputError(f"{where}: image_id must be an integer (a COCO image id), got {image_id!r}")
        texts = [record[key] for key in ("caption", "text") if key in record]
        if not texts:
            raise InputError(f"{where}: no caption or text")
        if len(texts) == 2 and texts[0] != texts[1]:
            raise InputError(f"{where}: both caption and text, and they differ: keep one")
        if not isinstance(texts[0], str):
            raise InputError(f"{where}: the description is {type(texts[0]).__name__}, not a string")
        if image_id in lines_of:
            raise InputError(
                f"{where}: image_id {image_id} is described again (first on line {lines_of[image_id]}); CHAIR"
                " scores one description an image"
            )
        lines_of[image_id] = number
        descriptions.append((image_id, texts[0]))
    if not descriptions:
        raise InputError(f"{path}: no descriptions")
    return descriptions, lines_of


def score_file(descriptions_path: str, annotation_paths: list[str]) -> tuple[dict, list]:
    """The metrics (as a dict for the JSON) and the per-description scores of a descriptions file."""
    descriptions, lines_of = read_descriptions(descriptions_path)
    ground_truth, files = read_ground_truth(annotation_paths, {image_id for image_id, _ in descriptions})
    missing = [image_id for image_id, _ in descriptions if image_id not in ground_truth]
    if missing:
        more = f" (and {len(missing) - 1} more described images)" if len(missing) > 1 else ""
        raise InputError(
            f"{descriptions_path}:{lines_of[missing[0]]}: image_id {missing[0]} is in none of the annotation"
            f" files ({', '.join(files)}){more}"
        )
    metrics, scores = score_descriptions(descriptions, ground_truth)
    return {**metrics.as_dict(), "scored": provenance(descriptions_path, files)}, scores


def provenance(descriptions_path: str, annotation_files: list[str]) -> dict:
    from importlib.metadata import version

    return {
        "descriptions": descriptions_path,
        "annotations": annotation_files,
        "singularizer": f"inflect {version('inflect')}",
    }


def write_details(scores: list, path: str):
    """One JSON line per description: its mentions, hallucinations, recalled and ground-truth objects."""
    with atomic_file(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            for score in scores:
                handle.write(json.dumps(score.as_dict()) + "\n")


def format_table(runs: dict[str, dict]) -> str:
    """runs: run name -> metrics. Rates as percentages, then the objects each run invents most."""
    header = (
        f"{'run':<16}" + "".join(f"{RATE_NAMES[name]:>10}" for name in RATES)
        + f"{'avg words':>11}{'descriptions':>14}{'hallucinated/mentions':>23}"
    )  # fmt: skip
    lines = [header, "-" * len(header)]
    for run, metrics in runs.items():
        values = "".join(f"{100 * metrics[name]:>10.2f}" for name in RATES)
        counts = f"{metrics['hallucinated_mentions']}/{metrics['mentions']}"
        lines.append(f"{run:<16}{values}{metrics['avg_length']:>11.1f}{metrics['descriptions']:>14}{counts:>23}")
    objects = top_objects(runs)
    if objects:
        lines += ["", "hallucinated mentions of the objects invented most:"]
        lines.append(f"{'object':<16}" + "".join(f"{run[:14]:>16}" for run in runs))
        for name in objects:
            counts = "".join(f"{metrics['hallucinations_by_object'].get(name, 0):>16}" for metrics in runs.values())
            lines.append(f"{name:<16}{counts}")
    return "\n".join(lines)


def top_objects(runs: dict[str, dict], count: int = TOP_OBJECTS) -> list[str]:
    """The objects with the most hallucinated mentions over all runs together, most first."""
    totals = {}
    for metrics in runs.values():
        for name, hallucinated in metrics["hallucinations_by_object"].items():
            totals[name] = totals.get(name, 0) + hallucinated
    return [name for name, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:count]]


def plot_chart(runs: dict[str, dict], path: str):
    """CHAIR_s, CHAIR_i and recall, one bar per run; beside them the most invented objects per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objects = top_objects(runs)
    figure, (rates_axis, objects_axis) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(1, 1.3))
    width = 0.8 / len(runs)
    for index, (run, metrics) in enumerate(runs.items()):
        positions = [position + index * width for position in range(len(RATES))]
        bars = rates_axis.bar(positions, [100 * metrics[name] for name in RATES], width, label=run)
        rates_axis.bar_label(bars, fmt="%.1f", fontsize=7)
        if objects:
            rows = [position + index * width for position in range(len(objects))]
            counts = [metrics["hallucinations_by_object"].get(name, 0) for name in objects]
            bars = objects_axis.barh(rows, counts, width, label=run)
            objects_axis.bar_label(bars, fontsize=7)
    rates_axis.set_xticks(
        [position + width * (len(runs) - 1) / 2 for position in range(len(RATES))], [RATE_NAMES[n] for n in RATES]
    )
    rates_axis.set_ylabel("%")
    rates_axis.set_ylim(0, 105)
    rates_axis.set_title("CHAIR (lower is better; recall: higher)")
    if objects:
        objects_axis.set_yticks([row + width * (len(runs) - 1) / 2 for row in range(len(objects))], objects)
        objects_axis.invert_yaxis()
        objects_axis.set_xlabel("hallucinated mentions")
        objects_axis.set_title("objects invented most")
    else:
        objects_axis.set_axis_off()
        objects_axis.text(0.5, 0.5, "no hallucinated object", ha="center", va="center")
    figure.legend(*rates_axis.get_legend_handles_labels(), loc="upper center", ncol=len(runs))
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def read_metrics(path: str) -> dict:
    """A metrics JSON as --metrics-file writes it."""
    try:
        with open(path, encoding="utf-8") as handle:
            metrics = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"--compare: {path}: no such metrics file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"--compare: {path}: not a metrics JSON ({error})") from None
    if not isinstance(metrics, dict) or not set(REQUIRED) <= set(metrics):
        raise InputError(f"--compare: {path}: not a CHAIR metrics file ({', '.join(REQUIRED)})")
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="CHAIR: score descriptions against COCO annotations, or compare scored runs."
    )
    parser.add_argument("--descriptions", metavar="JSONL", help='{"image_id", "caption" or "text"} per line')
    parser.add_argument(
        "--annotations", nargs="+", metavar="PATH",
        help="COCO instances and captions files (e.g. instances_val2014.json captions_val2014.json) or folders",
    )  # fmt: skip
    parser.add_argument("--metrics-file", help="the metrics JSON to write")
    parser.add_argument("--details", metavar="JSONL", help="also write each description's objects here")
    parser.add_argument("--name", default="run", help="the run's name in the table and chart")
    parser.add_argument("--compare", nargs="+", metavar="NAME=METRICS_JSON", help="compare scored runs")
    parser.add_argument("--chart", metavar="PNG", help="PNG to write")
    args = parser.parse_args(argv)
    if args.compare:
        if args.descriptions or args.annotations or args.metrics_file or args.details:
            parser.error("--compare takes metrics files only (no --descriptions, --annotations, --metrics-file)")
        runs = {}
        for item in args.compare:
            name, separator, path = item.partition("=")
            if not separator or not name:
                parser.error(f"--compare takes NAME=METRICS_JSON, got {item!r}")
            runs[name] = read_metrics(path)
    else:
        if not (args.descriptions and args.annotations and args.metrics_file):
            parser.error("give --descriptions, --annotations and --metrics-file (or --compare)")
        metrics, scores = score_file(args.descriptions, args.annotations)
        write_metrics(metrics, args.metrics_file)
        if args.details:
            write_details(scores, args.details)
        runs = {args.name: metrics}
    print(format_table(runs))
    if not args.compare:
        print(f"metrics: {args.metrics_file}")
    if args.chart:
        plot_chart(runs, args.chart)
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    run_command(main)
