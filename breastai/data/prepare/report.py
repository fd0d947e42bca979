"""What a preparer wrote and what it left out: :class:`PrepareReport`, the summary ``breastai prepare`` prints."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable

__all__ = ["PrepareReport", "label_counts"]


@dataclass
class PrepareReport:
    """What a preparer wrote and what it left out.

    Attributes:
        dataset: dataset name (``busi``, ``mias``, ``folder``).
        out: datalist written.
        counts: rows written per label.
        duplicate_groups: groups of more than one row found by duplicate detection (or the
            patient grouping), before any were dropped.
        images_in_groups: images in those groups.
        dropped: ``(case_id, reason)`` for each row left out.
        notes: further remarks (e.g. groups kept despite conflicting labels).
        seconds: run time.
    """

    dataset: str
    out: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    duplicate_groups: int = 0
    images_in_groups: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def write(self, rows: list[dict[str, Any]], out: Path, t0: float, empty: str) -> "PrepareReport":
        """Write ``rows`` as the datalist ``out`` and fill ``out``, ``counts`` and ``seconds``.

        Args:
            t0: ``time.perf_counter()`` at the start of the preparation.
            empty: the error message when no row is left to write.
        """
        from breastai.data.datalist import write_datalist

        if not rows:
            raise ValueError(empty)
        write_datalist(rows, out)
        self.out, self.counts = out, label_counts(rows)
        self.seconds = time.perf_counter() - t0
        return self

    def count_groups(self, groups: Iterable[Hashable]) -> None:
        """``duplicate_groups`` and ``images_in_groups`` from one group key per row."""
        sizes = [n for n in Counter(groups).values() if n > 1]
        self.duplicate_groups, self.images_in_groups = len(sizes), sum(sizes)

    @property
    def n_rows(self) -> int:
        """Rows written."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """Human-readable multi-line summary (what the CLI prints)."""
        lines = [f"{self.dataset}: {self.n_rows} rows written to {self.out}"]
        lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))
        lines.append(f"  groups with more than one row: {self.duplicate_groups} ({self.images_in_groups} rows in them)")
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} rows:")
            reasons = Counter(r for _, r in self.dropped)
            for reason, count in reasons.most_common():
                ids = [c for c, r in self.dropped if r == reason]
                shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
                lines.append(f"    {count} x {reason}: {shown}")
        else:
            lines.append("  dropped: none")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  time: {self.seconds:.1f} s")
        return "\n".join(lines)


def label_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per label."""
    return dict(Counter(str(r.get("label", "")) for r in rows))
