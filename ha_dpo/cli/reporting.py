"""Logging set-up: wandb that never blocks on a login prompt, and the end-of-run training curves."""

import netrc
import os

from post_decoder.atomic_files import atomic_file

CURVES = (("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))
CURVES_FILE = "training_curves.png"


def configure_wandb(report_to: list[str]) -> str | None:
    """With `--report_to wandb` and no credentials, run wandb offline instead of asking for a key.
    Returns a note to print, or None."""
    if "wandb" not in (report_to or []) or os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if logged_in:
        return None
    os.environ["WANDB_MODE"] = "offline"
    return "wandb: no API key found, logging offline (sync later with `wandb sync`)"


def _logged_rows(log_history: list[dict]) -> list[dict]:
    return [row for row in log_history if "loss" in row and "step" in row]


def plot_training_curves(log_history: list[dict], path: str) -> bool:
    """Loss, reward margin and reward accuracy (those that were logged) against the step, one panel
    each, whatever the number of points (one is drawn as a dot). False when no loss was logged:
    `why_no_curves` says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _logged_rows(log_history)
    curves = [(key, title) for key, title in CURVES if any(key in row for row in rows)]
    if not curves:
        return False
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for axis, (key, title) in zip(axes[0], curves):
        points = [(row["step"], row[key]) for row in rows if key in row]
        axis.plot([step for step, _ in points], [value for _, value in points], marker=".")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    try:
        with atomic_file(path) as temporary:
            figure.savefig(temporary, dpi=120)
    finally:
        plt.close(figure)
    return True


def why_no_curves(log_history: list[dict], logging_steps: float) -> str:
    """One line for a run that logged no loss (a run shorter than --logging_steps logs none)."""
    steps = max((row.get("step", 0) for row in log_history), default=0)
    return (
        f"no training loss was logged in this run's {steps} steps (--logging_steps {logging_steps:g}); "
        "pass a smaller --logging_steps to get curves"
    )
