"""How often a checkpoint's out-of-distribution detector flags inputs of other kinds.

Feeds an ultrasound checkpoint (one with a detector: trained after ``eval.ood_quantile``
existed) with

- every mini-MIAS film (322 screen-film mammograms, PNG),
- the 8 real mammography DICOM files of ``dicom-mg`` (decoded by the DICOM reader and passed as
  arrays, so the header's MG modality, which ``predict`` refuses on its own, does not stop them),
- the lesions of another ultrasound site's datalist (``--ultrasound``, with their masks),

and prints the share flagged (``ood``) for each set. A lesion-crop model needs an outline: the
mammograms get a centred box a quarter of the image's side, the ultrasound lesions their traced
masks. The target (issue 19): >= 95 % of the mammograms flagged, <= 5 % of the other ultrasound
site's lesions.

Usage::

    PYTHONPATH=. python benchmarks/ood_check.py --checkpoint CV_RUN/fold0/best.pt \
        --ultrasound data/breast.csv [--refit data/busi.csv] [--data ../shared/data] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from breastai.data.frames import read_samples  # noqa: E402
from breastai.data.readers.masks import LesionBox  # noqa: E402
from breastai.engine.ood import refit_detector  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.data.readers.registry import load_image  # noqa: E402
from breastai.inference.predictor import Predictor  # noqa: E402


def _centre_box(shape: tuple[int, ...]) -> LesionBox:
    h, w = shape[-2:]
    side = max(8, min(h, w) // 4)
    r0, c0 = (h - side) // 2, (w - side) // 2
    return LesionBox(c0, r0, c0 + side - 1, r0 + side - 1)


def _share(records: list[dict]) -> dict:
    scored = [r for r in records if r["error"] is None]
    scores = np.array([r["ood_score"] for r in scored], dtype=float)
    return {"n": len(records), "n_scored": len(scored), "flagged": float(np.mean(scores > 1)) if len(scores) else None,
            "ood_score_median": float(np.median(scores)) if len(scores) else None,
            "ood_score_min": float(scores.min()) if len(scores) else None,
            "ood_score_quantiles": {q: float(np.quantile(scores, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
            if len(scores) else None,
            "ood_scores": [round(float(v), 4) for v in scores],
            "errors": [r["error"] for r in records if r["error"] is not None][:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--ultrasound", required=True, help="datalist of another ultrasound site (with masks)")
    ap.add_argument("--data", default=os.environ.get("BREASTAI_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--refit", metavar="DATALIST",
                    help="first fit the checkpoint's detector again (the current design) from its training datalist")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()
    data = Path(args.data)
    ckpt = load_checkpoint(args.checkpoint)
    if args.refit:
        ckpt.ood = refit_detector(ckpt, read_samples(args.refit, ckpt.config["data"], ckpt.classes), torch.device("cpu"))
    pred = Predictor.from_state(ckpt, device="cpu", source=args.checkpoint)
    if all(m.ood is None for m in pred.members):
        sys.exit(f"{args.checkpoint} has no out-of-distribution detector (trained before it existed?)")
    crop = pred.scorer.crop_mode
    result: dict = {"checkpoint": args.checkpoint, "crop_mode": crop, "refit": args.refit,
                    "layers": [m.ood.layers for m in pred.members], "margin": [m.ood.margin for m in pred.members]}

    films = sorted((data / "mias").glob("*.png"))
    if not films:
        sys.exit(f"no mini-MIAS films under {data / 'mias'}")
    arrays = [load_image(f, {})[0] for f in films]
    result["mias_films"] = _share(pred.predict(arrays, masks=[_centre_box(a.shape) for a in arrays] if crop else None,
                                               saliency="none"))

    dicoms = sorted(p for p in (data / "dicom-mg").rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
    arrays = [load_image(f, pred.scorer.reader_options)[0] for f in dicoms]
    result["dicom_mg"] = _share(pred.predict(arrays, masks=[_centre_box(a.shape) for a in arrays] if crop else None,
                                             saliency="none"))

    result["other_ultrasound"] = _share(pred.predict(args.ultrasound, saliency="none"))
    result["other_ultrasound"]["datalist"] = args.ultrasound
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
