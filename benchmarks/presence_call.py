"""Calls (`label`) on presence x probability against probability, from evaluate folder pairs.

Each pair: ``breastai evaluate --auto-outline`` of a pipeline (per-image ``probability`` p, its
threshold t in metrics.json) and ``breastai evaluate`` of the segmenter on the same datalist
(``presence_probability`` q). Prints, per pair and pooled, the sensitivity over malignant images, the
benign images and normal images called malignant, by ``p >= t`` and by ``q x p >= t``; the
"product" columns leave out images where no lesion was found (predict labels them "no lesion
found"). Rule and outcome: docs/experiments.md, "The call (`label`) on the image's probability of
cancer".

    python benchmarks/presence_call.py ev_p3_f0 ev_seg0 ev_p3_f1 ev_seg1 ...
"""

import argparse
import csv
import json

import numpy as np


def load(pe: str, se: str) -> list[tuple]:
    """(label, p, q, t, scored_on, predicted) per image of one pair, joined on case_id."""
    q = {r["case_id"]: float(r["presence_probability"]) for r in csv.DictReader(open(f"{se}/predictions.csv"))}
    t = json.load(open(f"{pe}/metrics.json"))["threshold"]
    rows = list(csv.DictReader(open(f"{pe}/predictions.csv")))
    return [(r["label"], float(r["probability"]), q[r["case_id"]], t, r["scored_on"], r["predicted"]) for r in rows]


def figs(rows: list[tuple], name: str) -> None:
    lab = np.array([r[0] for r in rows]); p = np.array([r[1] for r in rows]); q = np.array([r[2] for r in rows])
    t = np.array([r[3] for r in rows]); on = np.array([r[4] for r in rows])
    for nm, s in (("p", p), ("qp", q * p)):
        c = s >= t
        m, b, n = lab == "malignant", lab == "benign", lab == "normal"
        cp = c & (on != "image")
        print(f"{name} {nm}: sens {c[m].mean():.3f} ({c[m].sum()}/{m.sum()}) spec_benign {1-c[b].mean():.3f} "
              f"({c[b].sum()}/{b.sum()} called) normal called {c[n].sum()}/{n.sum()} | product: sens {cp[m].mean():.3f} "
              f"normal {cp[n].sum()} benign called {cp[b].sum()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="pairs: PIPELINE_EVAL SEGMENTER_EVAL ...")
    a = ap.parse_args()
    if len(a.folders) % 2:
        raise SystemExit("give the folders in pairs: a pipeline's evaluate folder, then its segmenter's")
    parts = [load(a.folders[i], a.folders[i + 1]) for i in range(0, len(a.folders), 2)]
    for i, part in enumerate(parts):
        figs(part, a.folders[2 * i])
    figs(sum(parts, []), "pooled")


if __name__ == "__main__":
    main()
