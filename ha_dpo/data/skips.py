"""Bad samples are never dropped silently: each is counted under its reason with its id, and the
counts are printed at the end of a run. With `strict`, the first bad sample stops the run instead."""

import logging
from collections import Counter

from post_decoder.errors import InputError

logger = logging.getLogger(__name__)


class SkipCounter:
    """Skips per reason (with the first `examples` sample ids) and notes: counts of things done on
    purpose that are not errors (e.g. samples without an image), which never stop a strict run."""

    def __init__(self, name: str, strict: bool = False, examples: int = 5):
        self.name = name
        self.strict = strict
        self.examples = examples
        self.counts: Counter[str] = Counter()
        self.first_ids: dict[str, list[str]] = {}
        self.notes: Counter[str] = Counter()

    def skip(self, sample_id, reason: str, detail: str = "", source: str = "") -> None:
        """Count one skipped sample. `reason` is the short category the summary groups by; `detail`
        (a path, a length) goes with the id; `source` is the file the sample came from."""
        described = f"{sample_id} ({detail})" if detail else str(sample_id)
        if self.strict:
            where = f"{source}: " if source else ""
            raise InputError(
                f"{where}sample {described}: {reason}"
                " (--strict stops here; without it the sample is skipped and counted)"
            )
        self.counts[reason] += 1
        ids = self.first_ids.setdefault(reason, [])
        if len(ids) < self.examples and described not in ids:  # a repeated pair shows its id once
            ids.append(described)

    def note(self, what: str, count: int = 1) -> None:
        self.notes[what] += count

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        lines = [f"{self.name}: {self.total} sample(s) skipped"]
        for reason, count in self.counts.most_common():
            shown = self.first_ids[reason]
            more = ", ..." if count > len(shown) else ""
            lines.append(f"  {reason}: {count} (e.g. {', '.join(shown)}{more})")
        lines.extend(f"  note: {what}: {count}" for what, count in self.notes.items())
        return "\n".join(lines)

    def log(self) -> None:
        (logger.warning if self.total else logger.info)(self.summary())

    def require_some(self, kept: int, what: str, sources) -> None:
        """Stop with one line saying why when nothing is left to train on (instead of a trainer failing
        later on an empty dataset): `what` names the items ("preference pairs"), `sources` their files."""
        if kept:
            return
        files = ", ".join(dict.fromkeys(source for source in sources if source)) or "the data given"
        reasons = "; ".join(
            f"{reason}: {count} (e.g. {self.first_ids[reason][0]})" for reason, count in self.counts.most_common()
        )
        notes = "; ".join(f"{what}: {count}" for what, count in self.notes.items() if count)
        why = f"{self.total} skipped" + (f" ({reasons})" if reasons else "") + (f"; noted: {notes}" if notes else "")
        raise InputError(f"no {what} left to train on in {files}: {why}")
