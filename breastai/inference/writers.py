"""Writing a predict run: ``predictions.csv``/``.json`` and the saliency maps of one run.

Output folder layout (a rerun never mixes old and new results)::

    OUT/predictions.csv, OUT/predictions.json     replaced atomically at the END of a run
    OUT/saliency/<run_id>/NNNNN_<id>.npy|.png       maps of that run only

Each run writes its maps into a fresh ``saliency/<run_id>/`` folder; the prediction files,
which reference only that folder, are swapped in when the run has finished, and only then are
the folders of earlier runs (marked by a ``.breastai-run`` file) deleted. A crashed run
leaves the previous predictions and their maps intact.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class MapWriter:
    """Stores each record's map as ``.npy`` (float32, original geometry) and a PNG overlay."""

    def __init__(self, out: Path, run_id: str):
        from breastai.inference.inputs import RUN_MARKER

        self.out = out
        self.rel = Path("saliency") / run_id
        self.dir = out / self.rel
        self.dir.mkdir(parents=True, exist_ok=False)
        (self.dir / RUN_MARKER).write_text(run_id)

    def __call__(self, index: int, rec: dict[str, Any], smap: np.ndarray, image: np.ndarray, mask: np.ndarray | None):
        from PIL import Image

        from breastai.core.files import atomic_write_bytes
        from breastai.inference.inputs import _safe_stem
        from breastai.models.saliency import heat_overlay

        stem = f"{index:05d}_{_safe_stem(str(rec['id']))}"
        buf = io.BytesIO()
        np.save(buf, smap.astype(np.float32))
        atomic_write_bytes(self.dir / f"{stem}.npy", buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(heat_overlay(image, smap, mask)).save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(self.dir / f"{stem}.png", buf.getvalue())
        return str(self.rel / f"{stem}.png"), str(self.rel / f"{stem}.npy")


def write_predictions(records: Sequence[dict[str, Any]], out: str | Path, run: dict[str, Any]) -> None:
    """``predictions.csv`` and ``predictions.json`` (``{"run": ..., "records": [...]}``), atomically."""
    from breastai.core.files import atomic_write_csv, atomic_write_text
    from breastai.inference.predictor import RECORD_FIELDS

    out = Path(out)
    fields = list(RECORD_FIELDS) + sorted({k for r in records for k in r} - set(RECORD_FIELDS) - {"saliency_map", "image"})
    rows = [{k: r.get(k) for k in fields} for r in records]
    atomic_write_text(out / "predictions.json", json.dumps({"run": run, "records": rows}, indent=1))
    atomic_write_csv(out / "predictions.csv", fields, rows)


def _remove_old_runs(out: Path, keep: str | None) -> None:
    from breastai.inference.inputs import RUN_MARKER

    sal = out / "saliency"
    if not sal.is_dir():
        return
    for d in sal.iterdir():
        if d.is_dir() and d.name != keep and (d / RUN_MARKER).is_file():
            shutil.rmtree(d, ignore_errors=True)


def run_predict(
    checkpoint: Any,
    inputs: Sequence[Any],
    out: str | Path,
    masks: Sequence[Any] | None = None,
    saliency: str = "gradcam++",
    tta: int = 0,
    keep_identifiers: bool = False,
    find_masks: bool = False,
    device: str = "auto",
    saliency_upsample: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict ``inputs`` with ``checkpoint`` (a path or a :class:`~breastai.predict.Predictor`) into ``out``.

    Returns:
        The records and the run summary (also stored in ``predictions.json``).
    """
    from breastai.inference.predictor import Predictor

    pred = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(checkpoint, device=device)
    if saliency_upsample is not None:  # else the predictor's own setting (bicubic unless changed)
        pred.set_saliency_upsample(saliency_upsample)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    writer = MapWriter(out, run_id) if saliency != "none" else None
    t0 = time.time()
    try:
        records = pred.predict(inputs, masks=masks, saliency=saliency, tta=tta, keep_identifiers=keep_identifiers,
                               find_masks=find_masks, map_writer=writer)
    except BaseException:
        if writer is not None:
            shutil.rmtree(writer.dir, ignore_errors=True)
        raise
    if not records:  # nothing scored: the earlier results stay as they were
        if writer is not None:
            shutil.rmtree(writer.dir, ignore_errors=True)
        return records, {"run_id": None, "n": 0, "n_failed": 0, "seconds": round(time.time() - t0, 3)}
    n_failed = sum(r["error"] is not None for r in records)
    run = {
        "run_id": run_id, "checkpoint": pred.source, "saliency": saliency, "saliency_upsample": pred.saliency_upsample,
        "tta": tta,
        "temperature": pred.temperature, "threshold": pred.threshold, "classes": pred.classes,
        "preprocess_mode": pred.pre["mode"], "n": len(records), "n_failed": n_failed,
        "seconds": round(time.time() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_predictions(records, out, run)
    _remove_old_runs(out, keep=run_id if writer is not None else None)
    return records, run
