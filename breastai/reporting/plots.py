"""Evaluation figures: ROC, precision-recall, reliability diagram, confusion matrix.

``figure_*`` functions return a :class:`matplotlib.figure.Figure` (e.g. for TensorBoard's
``SummaryWriter.add_figure``); ``plot_*`` functions write the same figure to a PNG
atomically. Figures are built on the Agg canvas directly, without pyplot, so nothing
depends on (or changes) the process-wide matplotlib backend and no window ever opens.

Scores may be one array or a mapping ``{name: scores}`` to overlay several models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from breastai.core.files import atomic_write
from breastai.reporting.metrics import (
    bootstrap_auc_ci,
    bootstrap_roc_band,
    check_scores,
    reliability_curve,
    roc_auc,
)

__all__ = [
    "figure_roc",
    "figure_pr",
    "figure_calibration",
    "figure_confusion",
    "plot_roc",
    "plot_pr",
    "plot_calibration",
    "plot_confusion",
    "figure_subgroups",
    "plot_subgroups",
    "save_figure",
]

Scores = Union[Sequence[float], np.ndarray, Mapping[str, Union[Sequence[float], np.ndarray]]]


def _new_figure(w: float = 4.6, h: float = 4.2) -> Figure:
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _series(p: Scores) -> list[tuple[str | None, np.ndarray]]:
    if isinstance(p, Mapping):
        return [(str(k), np.asarray(v, dtype=np.float64)) for k, v in p.items()]
    return [(None, np.asarray(p, dtype=np.float64))]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG via a temporary file in the same folder and a rename."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def figure_roc(y: Sequence[int], p: Scores, title: str = "ROC curve", ci: bool = True, n_boot: int = 1000,
               band: bool = False, point: tuple[float, float] | None = None) -> Figure:
    """ROC curve(s) with the AUC (and its stratified bootstrap 95 % CI) in the legend.

    Args:
        band: shade each curve's pointwise bootstrap 95 % band (:func:`bootstrap_roc_band`).
        point: an operating point ``(1 - specificity, sensitivity)`` to mark.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    series = _series(p)
    for name, s in series:
        yy, ss = check_scores(y, s, both_classes=True)
        fpr, tpr, _ = roc_curve(yy, ss)
        label = f"AUC {roc_auc(yy, ss):.3f}"
        if ci:
            lo, hi = bootstrap_auc_ci(yy, ss, n_boot=n_boot)
            label += f" ({lo:.3f}-{hi:.3f})"
        line = ax.plot(fpr, tpr, lw=1.8, label=f"{name}: {label}" if name else label)[0]
        if band:
            grid, t_lo, t_hi = bootstrap_roc_band(yy, ss, n_boot=n_boot)
            ax.fill_between(grid, t_lo, t_hi, step="post", color=line.get_color(), alpha=0.2, lw=0,
                            label="95% band" if len(series) == 1 else None)
    if point is not None:
        ax.plot(*point, "o", c="black", ms=6, label=f"threshold: sens {point[1]:.2f}, spec {1 - point[0]:.2f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def figure_pr(y: Sequence[int], p: Scores, title: str = "Precision-recall curve") -> Figure:
    """Precision-recall curve(s) with average precision; the dashed line is prevalence."""
    fig = _new_figure()
    ax = fig.add_subplot()
    prevalence = None
    for name, s in _series(p):
        yy, ss = check_scores(y, s, both_classes=True)
        prec, rec, _ = precision_recall_curve(yy, ss)
        label = f"AP {average_precision_score(yy, ss):.3f}"
        ax.step(rec, prec, where="post", lw=1.8, label=f"{name}: {label}" if name else label)
        prevalence = yy.mean()
    ax.axhline(prevalence, ls="--", c="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def figure_calibration(y: Sequence[int], p: Scores, n_bins: int = 10, title: str = "Reliability diagram") -> Figure:
    """Reliability diagram (observed fraction of positives per equal-width bin) above a
    histogram of how many cases fall in each bin."""
    fig = _new_figure(4.6, 5.2)
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    series = _series(p)
    width = 1.0 / n_bins / max(1, len(series))
    for k, (name, s) in enumerate(series):
        r = reliability_curve(y, s, n_bins)
        filled = r["count"] > 0
        ax.plot(r["mean_pred"][filled], r["frac_pos"][filled], marker="o", lw=1.5, label=name or "model")
        left = r["edges"][:-1] + k * width
        hx.bar(left, r["count"], width=width, align="edge", alpha=0.7)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fraction malignant", title=title)
    ax.legend(loc="upper left", fontsize=8)
    hx.set(xlabel="predicted probability", ylabel="cases")
    return fig


def figure_confusion(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Confusion matrix (rows = truth, columns = prediction) with counts and row percentages."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(classes)} classes")
    fig = _new_figure(1.6 + 1.1 * len(classes), 1.3 + 1.1 * len(classes))
    ax = fig.add_subplot()
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    return fig


def figure_subgroups(report: Mapping[str, Mapping[str, Mapping]], title: str = "AUC by subgroup") -> Figure:
    """AUC with its CI bar per subgroup (:func:`breastai.reporting.subgroups.subgroup_report`), one
    row per ``column=value``; a subgroup too small for a CI is named with its counts, without a point."""
    rows = [(f"{col}={val}", f) for col, vals in report.items() for val, f in vals.items()]
    fig = _new_figure(6.0, 1.0 + 0.32 * max(1, len(rows)))
    ax = fig.add_subplot()
    left = min([0.5] + [f["auc_ci_low"] for _, f in rows if f.get("auc") is not None])
    for i, (name, f) in enumerate(rows):
        if f.get("auc") is None:
            ax.text(left + 0.01, i, f"n={f['n']}, {f['n_pos']} malignant: too few for a CI", va="center", fontsize=7, c="grey")
            continue
        ax.errorbar(f["auc"], i, xerr=[[f["auc"] - f["auc_ci_low"]], [f["auc_ci_high"] - f["auc"]]],
                    fmt="o", c="C0", capsize=3, ms=4)
        ax.text(1.0, i, f" n={f['n']}", va="center", fontsize=7)
    ax.axvline(0.5, ls="--", c="grey", lw=0.8)
    ax.set(xlim=(left, 1.0), ylim=(-0.7, len(rows) - 0.3), yticks=range(len(rows)),
           yticklabels=[n for n, _ in rows], xlabel="AUC (95% CI)", title=title)
    ax.invert_yaxis()
    return fig


def plot_subgroups(report: Mapping[str, Mapping[str, Mapping]], path: str | Path, title: str = "AUC by subgroup") -> Path:
    """Write :func:`figure_subgroups` to ``path`` (PNG)."""
    return save_figure(figure_subgroups(report, title), path)


def plot_roc(y: Sequence[int], p: Scores, path: str | Path, title: str = "ROC curve", **kwargs) -> Path:
    """Write :func:`figure_roc` to ``path`` (PNG)."""
    return save_figure(figure_roc(y, p, title, **kwargs), path)


def plot_pr(y: Sequence[int], p: Scores, path: str | Path, title: str = "Precision-recall curve") -> Path:
    """Write :func:`figure_pr` to ``path`` (PNG)."""
    return save_figure(figure_pr(y, p, title), path)


def plot_calibration(y: Sequence[int], p: Scores, path: str | Path, n_bins: int = 10, title: str = "Reliability diagram") -> Path:
    """Write :func:`figure_calibration` to ``path`` (PNG)."""
    return save_figure(figure_calibration(y, p, n_bins, title), path)


def plot_confusion(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Write :func:`figure_confusion` to ``path`` (PNG)."""
    return save_figure(figure_confusion(cm, classes, title), path)
