"""A training run from a resolved config: the splits checked, the run folder, ``config.yaml``, then
one split or K folds.

Everything that can fail on the configuration or the data (the datalist, its classes and
duplicate images, every part of every split) is checked before the run folder is made, and a
fresh run that still fails before its first epoch takes its folder away again: a refused run
leaves nothing behind, so the next one keeps the plain ``run_name``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastai.core import distributed as dist
from breastai.core.config import check_resume, dump_config, split_seed
from breastai.core.distributed import resolve_device
from breastai.core.files import atomic_write_text
from breastai.data.frames import read_samples
from breastai.data.provenance import join_identical_images
from breastai.data.splits import fixed_split
from breastai.engine.cv import cross_validate, cv_splits
from breastai.engine.seg_trainer import check_seg_parts, fit_segmenter
from breastai.engine.trainer import check_parts, fit
from breastai.models.registry import check_model_config, model_task

__all__ = ["main", "is_cv", "run_splits"]

log = logging.getLogger("breastai")


def _run_dir(cfg: dict[str, Any], resume: bool) -> Path:
    """``output_dir/run_name``; a fresh run never overwrites an earlier one (``-2``, ``-3``, ... appended)."""
    base = Path(cfg["output_dir"]) / (cfg["run_name"] or "run")
    if resume or not base.exists():
        return base
    n = 2
    while Path(f"{base}-{n}").exists():
        n += 1
    log.info("run folder %s exists: writing to %s-%d (use --resume to continue the earlier run)", base, base, n)
    return Path(f"{base}-{n}")


def _remove_if_unused(run_dir: Path) -> None:
    """Remove ``run_dir`` when it holds nothing but ``config.yaml`` (and empty folders): what a fresh
    run leaves when it fails before its first epoch wrote anything."""
    try:
        files = [p for p in run_dir.rglob("*") if not p.is_dir()]
        if files == [run_dir / "config.yaml"]:
            shutil.rmtree(run_dir)
    except OSError as exc:  # the run's own error matters more than a folder left behind
        log.warning("could not remove the unused run folder %s: %s", run_dir, exc)


def is_cv(cfg: dict[str, Any]) -> bool:
    """Whether the config asks for cross-validation (``train.folds``: K > 1, or ``sites``)."""
    k = cfg["train"]["folds"]  # a whole number, or "sites" (leave-one-site-out)
    return k == "sites" or int(k or 0) > 1


def run_splits(cfg: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """The parts training makes of ``records``: each fold's ``train``/``val``/``test`` index arrays
    (:func:`~breastai.engine.cv.cv_splits`), or the one split of a single run (``split`` column,
    validation carved as :func:`~breastai.data.splits.fixed_split` carves it). Deterministic, so a
    later tool re-derives a finished run's parts from its ``config.yaml``."""
    if is_cv(cfg):
        return [{"train": tr, "val": va, "test": te} for tr, va, te in cv_splits(records, cfg["train"]["folds"], cfg)]
    return [fixed_split(records, cfg["data"]["val_fraction"], split_seed(cfg), source=cfg["data"]["datalist"])]


def main(cfg: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Run what the config asks for: one split (train/val[/test]), K-fold or leave-one-site-out CV.

    Raises:
        ValueError: the configuration or the data cannot be trained on (no folder is left behind).
    """
    check_model_config(cfg)
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    device = resolve_device(cfg["device"])
    dist.init_distributed(device)
    try:
        if not cfg["data"]["datalist"]:
            raise ValueError("no datalist: set data.datalist in the config or as an override (data.datalist=FILE)")
        records = read_samples(cfg["data"]["datalist"], cfg["data"])
        splits = run_splits(cfg, records)
        # The splitters joined the groups of byte-identical images to make the parts; training needs
        # the joined groups too (the radiomics head's inner folds are group-aware).
        records = join_identical_images(records, source=cfg["data"]["datalist"])
        segmenter = model_task(cfg) == "segmentation"
        for split in splits:  # every fold, before the first one trains
            (check_seg_parts if segmenter else check_parts)(records, split)
        run_dir = dist.gather_objects(_run_dir(cfg, resume) if dist.is_main() else None)[0]
        if resume:
            check_resume(run_dir / "config.yaml", cfg)
        cfg = {**cfg, "run_name": run_dir.name}  # the folder used (a fresh run may add -2), so config.yaml resumes it
        created = dist.is_main() and not run_dir.exists()
        if dist.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
        try:
            if is_cv(cfg):
                out = cross_validate(cfg, records, cfg["train"]["folds"], run_dir, resume=resume,
                                     splits=[(s["train"], s["val"], s["test"]) for s in splits])
            else:
                out = (fit_segmenter if segmenter else fit)(cfg, records, splits[0], run_dir, resume=resume)
                if dist.is_main():
                    slim = {key: v for key, v in out.items() if key != "test_predictions"}
                    atomic_write_text(run_dir / "summary.json", json.dumps(slim, indent=1, default=float))
        except BaseException:
            if created:  # only a folder this very run made; a resumed run's folder is never touched
                _remove_if_unused(run_dir)
            raise
        out["run_dir"] = str(run_dir)
        return out
    finally:
        dist.cleanup()
