"""``breastai evaluate``: a checkpoint on a labelled datalist -> metrics, predictions, plots.

The preprocessing, classes, calibration temperature and operating threshold all come from the
checkpoint (chosen on validation data during training), never from the evaluation data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from breastai.core.distributed import resolve_device
from breastai.core.files import atomic_write_csv, atomic_write_text
from breastai.data.frames import read_samples
from breastai.data.provenance import seen_before
from breastai.engine.scoring import NonFiniteScoreError, predict_records, row_names, score_part
from breastai.models.checkpoint import load_checkpoint

__all__ = ["evaluate_checkpoint"]

log = logging.getLogger("breastai")


def evaluate_checkpoint(
    checkpoint: str | Path, data: str | Path, out: str | Path, device: str = "auto", n_boot: int | None = None
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the labelled datalist ``data``; write reports into ``out``.

    Writes ``metrics.json``, ``predictions.csv``, ``roc.png`` and ``calibration.png``, and
    nothing when any case cannot be scored.

    Returns:
        The metrics dict (see :func:`breastai.metrics.evaluation_report`).

    Raises:
        CheckpointError: the checkpoint is missing, corrupted or unusable.
        RecordError: an image or mask of the datalist cannot be read (naming the datalist row).
        NonFiniteScoreError: the checkpoint scores a case NaN or infinity (naming the checkpoint
            and the cases).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():  # found now, not after every image has been scored
        raise ValueError(f"{out} is a file; --out names the report folder")
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    classes = ckpt.classes
    records = read_samples(data, cfg["data"], classes)  # same frame policy as in training
    dev = resolve_device(device)
    n_boot = int(n_boot if n_boot is not None else cfg.get("eval", {}).get("bootstrap", 2000))
    try:
        pred = predict_records(ckpt, records, dev, progress=True,
                               names=row_names(data, records, cfg["data"].get("reader_options")))
        probs, report, _ = score_part(pred, ckpt, n_boot)
    except NonFiniteScoreError as exc:  # the checkpoint's fault, or its inputs': say which checkpoint
        raise NonFiniteScoreError(f"{checkpoint}: {exc}") from exc
    seen = seen_before(ckpt.seen_images, records)
    if seen["train"] is None:
        log.info("note: %s keeps no digests of its training images, so overlap with this data cannot be checked",
                 Path(checkpoint).name)
    elif seen["train"] or seen["val"]:
        log.warning("warning: %d of the %d evaluation images are identical to images this checkpoint was trained on "
                    "and %d to its validation images: these figures are not an independent test",
                    seen["train"], len(records), seen["val"])
    y = pred["label"].astype(int)
    report.update(checkpoint=str(checkpoint), data=str(data), classes=list(classes), temperature=ckpt.temperature,
                  n_seen_in_training=seen["train"], n_seen_in_validation=seen["val"],
                  recalibration=ckpt.recalibration[-1].summary() if ckpt.recalibration else None)
    # The local cases of a recalibration were fitted on, as validation images are.
    refit = seen_before({"val": ckpt.recalibration[-1].image_digests}, records)["val"] if ckpt.recalibration else None
    if refit:
        report["n_seen_in_recalibration"] = refit
        log.warning("warning: %d of the %d evaluation images are local cases %s was recalibrated on: these "
                    "figures are not an independent test", refit, len(records), Path(checkpoint).name)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1, default=float))
    atomic_write_csv(out / "predictions.csv", ["case_id", "label", "probability", "predicted"], (
        {"case_id": c, "label": classes[yy], "probability": float(p), "predicted": classes[int(p >= ckpt.threshold)]}
        for c, yy, p in zip(pred["case_id"], y, probs)), exact=True)
    from breastai.reporting import plots

    plots.plot_roc(y, probs, out / "roc.png", title=f"ROC (AUC {report['auc']:.3f})")
    plots.plot_calibration(y, probs, out / "calibration.png")
    return report
