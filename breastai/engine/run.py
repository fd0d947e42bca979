"""A training run from a resolved config: the run folder, ``config.yaml``, then one split or K folds."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from breastai.core import distributed as dist
from breastai.core.config import check_resume, dump_config, split_seed
from breastai.core.distributed import resolve_device
from breastai.core.files import atomic_write_text
from breastai.data.frames import read_samples
from breastai.data.splits import fixed_split
from breastai.engine.cv import cross_validate
from breastai.engine.trainer import fit
from breastai.models.registry import check_model_config

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


def main(cfg: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Run what the config asks for: one split (train/val[/test]) or K-fold CV."""
    check_model_config(cfg)
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    device = resolve_device(cfg["device"])
    dist.init_distributed(device)
    try:
        if not cfg["data"]["datalist"]:
            raise ValueError("no datalist: set data.datalist in the config or as an override (data.datalist=FILE)")
        records = read_samples(cfg["data"]["datalist"], cfg["data"])
        run_dir = dist.gather_objects(_run_dir(cfg, resume) if dist.is_main() else None)[0]
        if resume:
            check_resume(run_dir / "config.yaml", cfg)
        cfg = {**cfg, "run_name": run_dir.name}  # the folder used (a fresh run may add -2), so config.yaml resumes it
        if dist.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
        if cfg["train"]["folds"] and int(cfg["train"]["folds"]) > 1:
            out = cross_validate(cfg, records, int(cfg["train"]["folds"]), run_dir, resume=resume)
        else:
            out = fit(cfg, records, fixed_split(records, cfg["data"]["val_fraction"], split_seed(cfg)), run_dir, resume=resume)
            if dist.is_main():
                slim = {k: v for k, v in out.items() if k != "test_predictions"}
                atomic_write_text(run_dir / "summary.json", json.dumps(slim, indent=1, default=float))
        out["run_dir"] = str(run_dir)
        return out
    finally:
        dist.cleanup()
