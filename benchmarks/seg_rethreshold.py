"""Re-choose the presence threshold of a segmenter run on its validation part (each fold's, for a CV run).

The threshold is chosen after training, on validation predictions only
(:func:`breastai.engine.seg_trainer.choose_presence_threshold`, by the run's ``seg`` settings or
``--set seg.KEY=VALUE`` overrides), so a lesion rule can change without retraining: ``best.pt`` is
re-saved with the new rules and threshold, its held-out part re-scored and ``done`` (and, for a CV
run, ``cv_summary.json`` / ``oof_predictions.csv``) rewritten; with ``--out`` into a new run folder,
the original left as it was (a paired comparison of the same weights). The held-out parts are never
looked at to choose anything.

Usage::

    python benchmarks/seg_rethreshold.py checkpoints/seg_f5 [--set seg.presence_sensitivity=0.95]
    python benchmarks/seg_rethreshold.py checkpoints/seg_f0 --set seg.peak_fraction=0.5 --out checkpoints/seg_f0_peak
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.config import apply_overrides, dump_config, load_config  # noqa: E402
from breastai.core.files import atomic_write_text  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.data.provenance import join_identical_images  # noqa: E402
from breastai.engine.cv import seg_cv_summary  # noqa: E402
from breastai.engine.run import is_cv, run_splits  # noqa: E402
from breastai.engine.seg_trainer import choose_presence_threshold, score_segmentation, segment_records  # noqa: E402
from breastai.models.checkpoint import model_from_checkpoint  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint  # noqa: E402
from breastai.reporting.segmentation import segmentation_summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a segmenter's run folder (single or cross-validation)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="seg.* overrides of the run's config")
    ap.add_argument("--out", type=Path, help="write the re-thresholded run here (default: in place)")
    args = ap.parse_args()
    cfg = apply_overrides(load_config(args.run / "config.yaml"), args.set)
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    records = read_samples(cfg["data"]["datalist"], cfg["data"])
    parts = run_splits(cfg, records)  # the parts training made, re-derived from the run's config
    records = join_identical_images(records, source=cfg["data"]["datalist"])
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    per_fold, oof, nb = [], [], int(cfg["eval"]["bootstrap"])
    for i, part in enumerate(parts):
        name, va, te = f"fold{i}" if is_cv(cfg) else "", part["val"], part["test"]
        src, dst = args.run / name, out / name
        dst.mkdir(parents=True, exist_ok=True)
        ckpt = load_checkpoint(src / "best.pt")
        model = model_from_checkpoint(ckpt).eval()

        def predict(idx):  # with the run's flip setting, as training scored its validation part
            return segment_records(model, cfg, [records[j] for j in idx], torch.device("cpu"))

        val, test = predict(va), predict(te)
        old = ckpt.threshold
        ckpt.threshold = choose_presence_threshold(val, cfg, ckpt.temperature)
        ckpt.config = {**ckpt.config, "seg": dict(cfg["seg"])}
        rows = score_segmentation(test, cfg, ckpt.temperature, ckpt.threshold) if len(te) else []
        summary = segmentation_summary(rows, nb) if rows else {}
        ckpt.metrics.update({f"test_{k}": v for k, v in summary.items() if v is not None})
        save_checkpoint(dst / "best.pt", ckpt)
        if (src / "done").exists():
            done = json.loads((src / "done").read_text())
            done.update(test={**summary, "seconds": (done.get("test") or {}).get("seconds")}, test_predictions=rows)
            atomic_write_text(dst / "done", json.dumps(done, default=float))
        if out != args.run and (src / "tb").is_dir() and not (dst / "tb").exists():
            shutil.copytree(src / "tb", dst / "tb")
        print(f"{name or 'run'}: presence threshold {old:.3f} -> {ckpt.threshold:.3f}" + (
            f"; held-out Dice mean {summary['dice_mean']:.3f}, missed {summary['missed']}/{summary['n_lesion']}, "
            f"false lesions {summary['false_lesion_rate']}" if summary else ""))
        per_fold.append({"fold": i, "best_epoch": ckpt.best_epoch, **summary})
        oof += [{**r, "fold": i} for r in rows]
    if is_cv(cfg):
        s = seg_cv_summary(per_fold, oof, cfg, out)
        print(json.dumps({k: v for k, v in s["pooled"].items()}, indent=1, default=float))


if __name__ == "__main__":
    main()
