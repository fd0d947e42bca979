"""Compare two sets of predict/evaluate output folders, record by record and map by map.

Used to check that a refactor changes nothing a user sees: run the same ``breastai predict`` and
``breastai evaluate`` commands with the same checkpoints from two versions of the code into two
folders, then::

    python benchmarks/compare_outputs.py BEFORE_DIR AFTER_DIR

Each sub-folder of BEFORE_DIR (one per command) is compared with its namesake in AFTER_DIR:
every column of ``predictions.csv`` must be equal as text (so probabilities to the last printed
digit), every saliency ``.npy`` equal bit for bit, and every value of ``metrics.json`` equal
(run times and paths excepted). Prints one line per folder and the number of differences; exits
1 if there is any.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

_VOLATILE = {"seconds", "checkpoint", "created", "data", "versions", "run_id"}


def compare_folder(a: Path, b: Path) -> tuple[int, int, int]:
    """(differences, rows, maps) between two output folders of one command."""
    diffs = 0
    ra = list(csv.DictReader(open(a / "predictions.csv")))
    rb = list(csv.DictReader(open(b / "predictions.csv"))) if (b / "predictions.csv").is_file() else []
    if len(ra) != len(rb):
        print(f"{a.name}: {len(ra)} rows before, {len(rb)} after")
        return 1, len(ra), 0
    maps = 0
    for x, y in zip(ra, rb):
        for k, v in x.items():
            if k not in ("saliency_png", "saliency_npy") and v != y.get(k):
                diffs += 1
                print(f"{a.name}: {x.get('id', x.get('case_id'))}: {k} {v!r} -> {y.get(k)!r}")
        if x.get("saliency_npy"):
            ma, mb = np.load(a / x["saliency_npy"]), np.load(b / y["saliency_npy"])
            maps += 1
            if ma.shape != mb.shape or not np.array_equal(ma, mb):
                diffs += 1
                print(f"{a.name}: {x['id']}: saliency map differs")
    if (a / "metrics.json").is_file():
        ja, jb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
        for k, v in ja.items():
            if k not in _VOLATILE and v != jb.get(k):
                diffs += 1
                print(f"{a.name}: metric {k}: {v!r} -> {jb.get(k)!r}")
    return diffs, len(ra), maps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    total = 0
    for d in sorted(p for p in args.before.iterdir() if (p / "predictions.csv").is_file()):
        n, rows, maps = compare_folder(d, args.after / d.name)
        total += n
        print(f"{d.name}: {rows} records, {maps} maps, {n} differences")
    print(f"differences: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
