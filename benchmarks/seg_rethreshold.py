"""Re-choose the presence threshold of a segmenter cross-validation run on each fold's validation part.

The threshold is chosen after training, on validation predictions only
(:func:`breastai.engine.seg_trainer.choose_presence_threshold`, by the run's ``seg`` settings or
``--set seg.KEY=VALUE`` overrides), so a rule can change without retraining: each fold's
``best.pt`` is re-saved with the new threshold, its held-out part re-scored and ``done`` and the
run's ``cv_summary.json`` / ``oof_predictions.csv`` rewritten. The held-out parts are never looked at
to choose anything.

Usage::

    python benchmarks/seg_rethreshold.py checkpoints/seg_f5 [--set seg.presence_sensitivity=0.95]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.config import apply_overrides, load_config  # noqa: E402
from breastai.core.files import atomic_write_text  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.data.provenance import join_identical_images  # noqa: E402
from breastai.engine.cv import cv_splits, seg_cv_summary  # noqa: E402
from breastai.engine.loaders import build_dataset, make_loader  # noqa: E402
from breastai.engine.seg_trainer import choose_presence_threshold, predict_segmentation, score_segmentation  # noqa: E402
from breastai.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from breastai.reporting.segmentation import segmentation_summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a segmenter's cross-validation run folder")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="seg.* overrides of the run's config")
    args = ap.parse_args()
    cfg = apply_overrides(load_config(args.run / "config.yaml"), args.set)
    torch.set_num_threads(max(1, int(cfg["train"]["threads"] or 0)) if cfg["train"]["threads"] else torch.get_num_threads())
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    splits = cv_splits(records, cfg["train"]["folds"], cfg)
    records = join_identical_images(records, source=cfg["data"]["datalist"])
    per_fold, oof, nb = [], [], int(cfg["eval"]["bootstrap"])
    for i, (_, va, te) in enumerate(splits):
        fold = args.run / f"fold{i}"
        ckpt = load_checkpoint(fold / "best.pt")
        model = model_from_checkpoint(ckpt).eval()

        def predict(idx):
            ds = build_dataset(cfg, [records[j] for j in idx], train=False)
            return predict_segmentation(model, make_loader(ds, cfg, False, None, 0), torch.device("cpu"))

        val, test = predict(va), predict(te)
        old = ckpt.threshold
        ckpt.threshold = choose_presence_threshold(val, cfg, ckpt.temperature)
        ckpt.config = {**ckpt.config, "seg": dict(cfg["seg"])}
        rows = score_segmentation(test, cfg, ckpt.temperature, ckpt.threshold)
        summary = segmentation_summary(rows, nb)
        ckpt.metrics.update({f"test_{k}": v for k, v in summary.items() if v is not None})
        save_checkpoint(fold / "best.pt", ckpt)
        done = json.loads((fold / "done").read_text())
        done.update(test={**summary, "seconds": done["test"].get("seconds")}, test_predictions=rows)
        atomic_write_text(fold / "done", json.dumps(done, default=float))
        print(f"fold {i}: presence threshold {old:.3f} -> {ckpt.threshold:.3f}; held-out Dice mean "
              f"{summary['dice_mean']:.3f}, missed {summary['missed']}/{summary['n_lesion']}, "
              f"false lesions {summary['false_lesion_rate']}")
        per_fold.append({"fold": i, "best_epoch": ckpt.best_epoch, **summary})
        oof += [{**r, "fold": i} for r in rows]
    s = seg_cv_summary(per_fold, oof, cfg, args.run)
    print(json.dumps({k: v for k, v in s["pooled"].items()}, indent=1, default=float))


if __name__ == "__main__":
    main()
