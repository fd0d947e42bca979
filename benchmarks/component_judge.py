"""The judgement of ``component_check.py dump`` files (one per fold), by the rule in docs/experiments.md
("A second look at each found lesion"): the segmenter's own presence rule against a logistic check
of each candidate, fitted (A) on the other folds' held-out candidates or (B) on the fold's own
validation part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.reporting.metrics import bootstrap_auc_ci, ece, roc_auc  # noqa: E402
from component_check import FEATURES  # noqa: E402

KEEP = 0.98  # a true candidate kept in this share of the fit set's lesion images that have one


def _matrix(images: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    cands = [c for i in images for c in i["candidates"]]
    return (np.array([[c[f] for f in FEATURES] for c in cands], float).reshape(-1, len(FEATURES)),
            np.array([c["lesion"] for c in cands], int))


def fit_check(images: list[dict]):
    """The logistic check and its threshold, from the candidates of ``images`` alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _matrix(images)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x, y)
    best = []
    for img in images:
        true = [c for c in img["candidates"] if c["lesion"]]
        if true:
            best.append(model.predict_proba(_matrix([{"candidates": true}])[0])[:, 1].max())
    s = np.sort(best)
    return model, float(s[int(np.floor((1 - KEEP) * len(s)))])


def apply(images: list[dict], model, t: float, key: str) -> None:
    for img in images:
        if img["candidates"]:
            p = model.predict_proba(_matrix([img])[0])[:, 1]
            for c, v in zip(img["candidates"], p):
                c[key] = float(v)
                c[f"kept_{key}"] = bool(v >= t)


def summary(images: list[dict], key: str | None) -> dict:
    """Missed, false lesions, Dice, presence AUC and the automatic malignancy figures under one rule
    (``key`` None: the segmenter's own threshold, stored per image as ``kept_own``)."""
    k = "kept_own" if key is None else f"kept_{key}"
    s = "score" if key is None else key
    les = [i for i in images if i["truth_area"]]
    nor = [i for i in images if not i["truth_area"]]
    kept = {id(i): [c for c in i["candidates"] if c[k]] for i in images}
    dice = [2 * sum(c["inter"] for c in kept[id(i)]) / (sum(c["area"] for c in kept[id(i)]) + i["truth_area"]) for i in les]
    lesion_score = [max((c[s] for c in i["candidates"]), default=0.0) for i in images]
    scored = [i for i in les if i["label"] in ("benign", "malignant")]
    y = np.array([int(i["label"] == "malignant") for i in scored])
    z = np.array([max((c["log_odds"] for c in kept[id(i)]), default=-np.inf) for i in scored])
    p = np.where(np.isfinite(z), 1 / (1 + np.exp(-np.clip(z, -30, 30))), 0.0)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=2000)
    return {"lesion_images": len(les), "normal_images": len(nor),
            "missed": sum(1 for i in les if not kept[id(i)]), "false": sum(1 for i in nor if kept[id(i)]),
            "extra_beside_lesion": sum(1 for i in les if sum(not c["lesion"] for c in kept[id(i)]) > 0),
            "dice_mean": float(np.mean(dice)), "dice_median": float(np.median(dice)),
            "presence_auc": roc_auc([int(i["truth_area"] > 0) for i in images], lesion_score),
            "auto_auc": roc_auc(y, p), "auto_ci": [lo, hi], "auto_ece": ece(y, p)}


def tradeoff(images: list[dict], key: str, missed_at: int) -> int:
    """Normal images given a lesion at the highest pooled threshold on ``key`` that misses at most ``missed_at``."""
    top = [max((c[key] for c in i["candidates"]), default=-1.0) for i in images]
    les = sorted(t for t, i in zip(top, images) if i["truth_area"])
    tau = les[missed_at] if missed_at < len(les) else np.inf
    return sum(1 for t, i in zip(top, images) if not i["truth_area"] and t >= tau)


def judge(files: list[Path]) -> None:
    folds = [json.loads(f.read_text()) for f in files]
    for d in folds:
        for img in d["images"]:
            for c in img["candidates"]:
                c["kept_own"] = c["score"] >= d["threshold"]
    thresholds = {}
    for n, d in enumerate(folds):
        test = [i for i in d["images"] if i["part"] == "test"]
        others = [i for m, e in enumerate(folds) if m != n for i in e["images"] if i["part"] == "test"]
        model, t = fit_check(others)
        apply(test, model, t, "check_a")
        model_b, t_b = fit_check([i for i in d["images"] if i["part"] == "val"])
        apply(test, model_b, t_b, "check_b")
        thresholds[d["run"]] = {"own": d["threshold"], "check_a": t, "check_b": t_b,
                                "coef_b": dict(zip(FEATURES, model_b[-1].coef_[0].round(2).tolist()))}
    test = [i for d in folds for i in d["images"] if i["part"] == "test"]
    out = {"thresholds": thresholds}
    for name, key in (("own presence rule", None), ("check A (other folds)", "check_a"), ("check B (own validation)", "check_b")):
        out[name] = summary(test, key)
    own_missed = out["own presence rule"]["missed"]
    out["false at the own rule's missed"] = {k: tradeoff(test, k, own_missed) for k in ("score", "check_a", "check_b")}
    print(json.dumps(out, indent=1, default=float))
