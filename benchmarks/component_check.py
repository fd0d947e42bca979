"""A second look at each found lesion: can a small model of a candidate's own facts tell a lesion from a false one?

``dump``: for each segmenter run (single runs, fold K held out as ``split=test``), every candidate
component of every validation and held-out image, found at the pixel threshold with no presence
threshold at all (the Outliner's threshold set to 0), with its facts (:func:`features`), whether
it is the traced lesion (:func:`is_lesion`), its overlap with the traced mask (so the Dice of any
subset of candidates can be computed later), and, on the held-out lesion images, the classifier's
calibrated log-odds for it (``--classifier``, one per run, as ``evaluate --auto-outline`` scores a
found lesion). ``judge``: the rule written in docs/experiments.md before the figures
("A second look at each found lesion").

Usage::

    python benchmarks/component_check.py dump --run checkpoints/seg_f2_bal --classifier checkpoints/auto_f2/best.pt --out comp_f2.json
    python benchmarks/component_check.py judge comp_f0.json ... comp_f4.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.config import load_config  # noqa: E402
from breastai.core.keys import Keys  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.data.provenance import join_identical_images  # noqa: E402
from breastai.engine.auto_outline import traced_on_stored  # noqa: E402
from breastai.engine.run import run_splits  # noqa: E402
from breastai.engine.scoring import predict_records  # noqa: E402
from breastai.models.calibration import calibrated_logit  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.models.outliner import Outliner  # noqa: E402

FEATURES = ("presence_logit", "peak", "mean_prob", "log_area", "area_vs_largest", "log_n_candidates",
            "row", "col_offset", "fill", "contrast", "border")


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


def features(mask: np.ndarray, prob: np.ndarray, image: np.ndarray, presence: float, n_cands: int,
             largest: int, diameter: float) -> dict[str, float]:
    """The facts of one candidate on the stored image: the segmenter's confidence, its size, shape,
    place and how much darker it is than a ring around it."""
    from scipy.ndimage import binary_dilation

    area = int(mask.sum())
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    width = max(3, int(round(0.25 * np.sqrt(area))))
    ring = binary_dilation(mask, iterations=width) & ~mask
    inside = float(image[mask].mean())
    around = float(image[ring].mean()) if ring.any() else inside
    edge = np.zeros_like(mask)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    return {"presence_logit": _logit(presence), "peak": float(prob[mask].max()), "mean_prob": float(prob[mask].mean()),
            "log_area": float(np.log(area / mask.size)), "area_vs_largest": area / max(largest, 1),
            "log_n_candidates": float(np.log(n_cands)), "row": float(rows.mean() / h),
            "col_offset": float(abs(cols.mean() / w - 0.5)), "fill": float(area / (np.pi / 4 * max(diameter, 1.0) ** 2)),
            "contrast": inside - around, "border": float((mask & edge).sum() > 0)}


def is_lesion(mask: np.ndarray, truth: np.ndarray) -> bool:
    """The candidate is the traced lesion: half of it lies inside the tracing, or it covers half the tracing."""
    inter = float((mask & truth).sum())
    return bool(truth.any() and (inter >= 0.5 * mask.sum() or inter >= 0.5 * truth.sum()))


def dump_image(outliner: Outliner, rec: dict) -> tuple[dict, list[dict], list[np.ndarray]]:
    image, meta = outliner.read(rec[Keys.IMAGE], rec.get(Keys.FRAME))
    found = outliner.outline(image, meta, str(rec[Keys.IMAGE]))
    truth = traced_on_stored(rec, image, meta, outliner.reader_options)
    truth = np.zeros(found.probability.shape, bool) if truth is None else truth
    lesions = found.lesions
    largest = max((les.area_px for les in lesions), default=0)
    cands = []
    for les in lesions:
        cands.append({"area": int(les.area_px), "inter": int((les.mask & truth).sum()), "score": float(les.probability),
                      "lesion": is_lesion(les.mask, truth),
                      **features(les.mask, found.probability, found.image, found.presence, len(lesions), largest,
                                 les.max_diameter_px)})
    img = {"case_id": str(rec[Keys.CASE_ID]), "label": rec.get(Keys.LABEL), "truth_area": int(truth.sum()),
           "presence": float(found.presence)}
    return img, cands, [les.mask for les in lesions]


def dump(run: Path, classifier: str | None, out: Path) -> None:
    cfg = load_config(run / "config.yaml")
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    parts = run_splits(cfg, records)
    records = join_identical_images(records, source=cfg["data"]["datalist"])
    if len(parts) != 1:
        raise SystemExit(f"{run}: a single run (fold held out as split=test) is expected, got {len(parts)} parts")
    outliner = Outliner.from_checkpoint(run / "best.pt")
    threshold = outliner.threshold
    outliner.threshold = 0.0  # every candidate: the rules below decide
    cls = load_checkpoint(classifier) if classifier else None
    result = {"run": str(run), "threshold": threshold, "images": []}
    for part in ("val", "test"):
        for n, j in enumerate(parts[0][part]):
            rec = records[j]
            img, cands, masks = dump_image(outliner, rec)
            if cls is not None and part == "test" and img["truth_area"] and cands:
                lesions = [{**rec, Keys.MASK: m, Keys.CASE_ID: f"{rec[Keys.CASE_ID]}_l{k}"} for k, m in enumerate(masks, 1)]
                pred = predict_records(cls, lesions, torch.device("cpu"))
                for c, z in zip(cands, calibrated_logit(pred["logit"], cls.calibration)):
                    c["log_odds"] = float(z)
            result["images"].append({**img, "part": part, "candidates": cands})
            if n % 50 == 0:
                print(f"  {part} {n}/{len(parts[0][part])}", flush=True)
    out.write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--run", type=Path, required=True)
    d.add_argument("--classifier")
    d.add_argument("--out", type=Path, required=True)
    j = sub.add_parser("judge")
    j.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args()
    logging.getLogger("breastai").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    if args.cmd == "dump":
        dump(args.run, args.classifier, args.out)
    else:
        from component_judge import judge  # noqa: E402  (benchmarks/component_judge.py)

        judge(args.files)


if __name__ == "__main__":
    main()
