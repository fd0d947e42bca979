"""Training: ``fit`` one split, ``cross_validate`` K group-aware folds, ``main`` from a config.

Reads top to bottom like torchvision's reference script: data, model, optimiser, the epoch loop
(``engine.train_one_epoch`` then validation), best-epoch selection on validation AUC with
early stopping, then calibration, the operating threshold and the held-out evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from . import distributed as dist
from .distributed import resolve_device
from .calibration import apply_temperature, calibrated_logit, calibrated_probability, fit_temperature
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import check_resume, dump_config, split_seed
from .data.datalist import atomic_write_csv, atomic_write_text
from .data.frames import read_samples
from .data.splits import carve_validation, fixed_split, group_kfold
from .data.transforms import build_transforms
from .engine import collate, predict_loader, reseed_worker, seed_everything, train_one_epoch, warmup_cosine, weight_ema
from .metrics import choose_threshold, ece, evaluation_report, roc_auc, summarise_folds
from .models import MODELS, create_model
from .provenance import part_digests
from .radiomics.dataset_features import attach_radiomics, needs_radiomics, radiomics_model_kwargs
from .tblog import TBLogger, flat_hparams, log_best_epoch

__all__ = ["resolve_device", "build_dataset", "fit", "cv_splits", "cv_summary", "load_cv_summary", "predict_records", "score_part", "cross_validate", "main"]

log = logging.getLogger("breastai")


def build_dataset(cfg: dict[str, Any], records: Sequence[dict[str, Any]], train: bool) -> Dataset:
    """A MONAI dataset over ``records`` with the train or eval preset; the deterministic prefix is cached."""
    items = [{**r, "index": i} for i, r in enumerate(records)]
    if needs_radiomics(cfg):  # feature vector per row, computed once per dataset and cached
        items = attach_radiomics(cfg, items)
    transform = build_transforms(cfg, train=train)
    mode = cfg["data"]["cache"]
    if mode == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=None, progress=False, copy_cache=False)
    if mode == "disk":
        cache_dir = cfg["data"]["cache_dir"] or str(Path(cfg["output_dir"]) / ".cache")
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    return Dataset(items, transform)


def _loader(ds: Dataset, cfg: dict[str, Any], train: bool, labels: np.ndarray | None, epoch: int) -> DataLoader:
    tc = cfg["train"]
    # Per rank: it seeds the workers (reseed_worker), which would otherwise repeat across ranks.
    g = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch + 7919 * dist.rank())
    sampler = None
    if dist.is_distributed():
        sampler = DistributedSampler(ds, shuffle=train, seed=cfg["seed"], drop_last=False)
        sampler.set_epoch(epoch)
    elif train and tc["class_balance"] == "sampler" and labels is not None:
        w = np.where(labels == 1, 0.5 / max(1, labels.sum()), 0.5 / max(1, (labels == 0).sum()))
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(w), generator=g)
    return DataLoader(
        ds,
        batch_size=tc["batch_size"],
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=g,
        num_workers=cfg["data"]["num_workers"],
        worker_init_fn=reseed_worker if train else None,
        collate_fn=collate,
        drop_last=train and len(ds) > tc["batch_size"] * dist.world_size(),
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Norm and bias parameters are not decayed (standard for AdamW fine-tuning).
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    z = torch.as_tensor(logits, dtype=torch.float64)
    return float(nn.functional.binary_cross_entropy_with_logits(z, torch.as_tensor(labels, dtype=torch.float64)))


def _ckpt_state(cfg, model, *, epoch, best_epoch, metrics, threshold, temperature, extra=None) -> dict[str, Any]:
    raw = model.module if hasattr(model, "module") else model
    return {
        "model": {"name": cfg["model"]["name"], "in_chans": _in_chans(cfg), "dropout": cfg["model"]["dropout"],
                  **getattr(raw, "init_kwargs", {})},
        "weights": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "config": cfg,
        "classes": list(cfg["data"]["classes"]),
        "preprocess": cfg["preprocess"],
        "threshold": float(threshold),
        "temperature": float(temperature),
        "epoch": int(epoch),
        "best_epoch": int(best_epoch),
        "metrics": metrics,
        **(extra or {}),
    }


def _digest(model: nn.Module) -> str:
    """SHA-256 of the weights: equal on every DDP rank when training stayed in sync."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _in_chans(cfg: dict[str, Any]) -> int:
    return 2 if cfg["preprocess"]["mask_channel"] else 1


def fit(
    cfg: dict[str, Any],
    records: Sequence[dict[str, Any]],
    split: dict[str, np.ndarray],
    run_dir: Path,
    resume: bool = False,
) -> dict[str, Any]:
    """Train on ``split['train']``, select on ``split['val']``, evaluate ``split['test']`` if any.

    Returns the validation metrics of the best epoch, test metrics and test predictions.
    """
    tc, device = cfg["train"], resolve_device(cfg["device"])
    main_rank = dist.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])
    train_recs = [records[i] for i in split["train"]]
    val_recs = [records[i] for i in split["val"]]
    if not val_recs:
        raise ValueError("no validation data: set data.val_fraction > 0 or give rows with split=val")
    classes = list(cfg["data"]["classes"])
    y_train = np.array([classes.index(r["label"]) for r in train_recs])
    test_recs = [records[i] for i in split.get("test", [])]
    for name, part in (("training", train_recs), ("validation", val_recs), ("test", test_recs)):
        present = {r["label"] for r in part}
        if (part or name != "test") and len(present) < 2:  # found before training; only the test part may be empty
            raise ValueError(f"the {name} part holds only {sorted(present)}; both classes are needed")

    # Digests of the image files learned from and selected on: evaluate warns when it meets them again.
    seen_images = {"train": part_digests(train_recs), "val": part_digests(val_recs)} if main_rank else {}
    train_ds = build_dataset(cfg, train_recs, train=True)
    val_ds = build_dataset(cfg, val_recs, train=False)

    spec = MODELS[cfg["model"]["name"]] if cfg["model"]["name"] in MODELS else None
    if cfg["model"]["pretrained"] and spec is not None and not spec.pretrained_available and main_rank:
        log.warning("model %s has no bundled pretrained weights: training from scratch", cfg["model"]["name"])
    # Radiomics models: feature selection, scaler (and closed-form weights) fitted on the training part only.
    extra = radiomics_model_kwargs(cfg, train_recs, y_train) if needs_radiomics(cfg) else {}
    model = create_model(cfg["model"]["name"], in_chans=_in_chans(cfg), pretrained=cfg["model"]["pretrained"], dropout=cfg["model"]["dropout"],
                         output_stride=cfg["model"]["output_stride"], mask_init=cfg["model"]["mask_init"], **extra)
    model.to(device)
    channels_last = bool(tc["channels_last"])
    flip = bool(cfg["eval"]["flip_average"])
    if channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model
    # Built before any hook is registered on the model, so the copy carries none.
    ema = weight_ema(raw_model, float(tc["ema"]))
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.AdamW(_param_groups(raw_model, tc["weight_decay"]), lr=tc["lr"])
    steps = len(_loader(train_ds, cfg, True, y_train, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps * tc["epochs"], steps * tc["warmup_epochs"], tc["min_lr_ratio"])
    )
    amp = bool(tc["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    pos_weight = None
    if tc["class_balance"] == "weighted_loss" or (tc["class_balance"] == "sampler" and dist.is_distributed()):
        pos_weight = torch.tensor((y_train == 0).sum() / max(1, (y_train == 1).sum()), dtype=torch.float32, device=device)
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    offset = float(torch.log(pos_weight)) if (pos_weight is not None and cfg["eval"]["calibrate"]) else 0.0
    eps = float(tc["label_smoothing"])
    loss_fn = (lambda z, y: bce(z, y * (1 - eps) + eps / 2)) if eps > 0 else bce

    start_epoch, best, done_seconds = 0, {"auc": -1.0, "epoch": -1, "stale": 0}, []
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to continue from")
        state = load_checkpoint(last_path, map_location=device, resume=True)
        raw_model.load_state_dict(state["weights"])
        if ema is not None:
            if "ema" not in state:
                raise ValueError(f"--resume: {last_path} was written without train.ema; resume with the same config")
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, dict(state["early_stop"])
        done_seconds = list(state.get("epoch_seconds", []))
        if best["stale"] >= tc["early_stop_patience"]:
            start_epoch = tc["epochs"]  # it had stopped early: training again would undo that decision
        if main_rank:
            log.info("resuming %s after epoch %d of %d (best AUC %.4f at epoch %d)", run_dir, state["epoch"] + 1,
                     tc["epochs"], best["auc"], best["epoch"] + 1)

    attention = pointing = None
    if float(tc.get("attention_loss", 0.0)) > 0:
        from .attention import LesionAttentionLoss, PointingGame

        if main_rank and cfg["log"]["pointing_images"]:  # its copy is made before the loss hooks the model
            pointing = PointingGame(raw_model)
        attention = LesionAttentionLoss(raw_model, float(tc["attention_loss"]), tc["attention_cells"])
    tb = TBLogger(run_dir / "tb" if (main_rank and cfg["log"]["tensorboard"]) else None)
    val_loader = _loader(val_ds, cfg, False, None, 0)  # deterministic: built once
    best_val: dict[str, np.ndarray] | None = None
    progress = bool(cfg["log"]["progress"])
    closed_form = bool(getattr(raw_model, "closed_form", False))  # fitted at construction: one pass, no steps
    epoch_seconds: list[float] = list(done_seconds)  # a resumed run's summary still times every epoch
    n_epochs = 1 if closed_form else tc["epochs"]
    for epoch in range(start_epoch, n_epochs):
        t0 = time.time()
        if epoch == start_epoch and tb.writer is not None:
            first = next(iter(_loader(train_ds, cfg, True, y_train, epoch)))
            tb.image_grid("inputs/train_augmented", first["image"][: cfg["log"]["image_grid"]], epoch)
        # Re-seeding per epoch makes --resume replay exactly what an uninterrupted run does.
        # Per rank: ranks see other images but would otherwise draw the same flips, affines and noise.
        epoch_seed = cfg["seed"] * 1000 + epoch + 7919 * dist.rank()
        seed_everything(epoch_seed)
        train_ds.transform.set_random_state(seed=epoch_seed % 2**32)
        train_loader = _loader(train_ds, cfg, True, y_train, epoch)
        lr = optimizer.param_groups[0]["lr"]  # the epoch's first step: afterwards it is the next epoch's
        train_loss = raw_model.fit_loss if closed_form else train_one_epoch(
            model, train_loader, optimizer, scheduler, loss_fn, device, scaler=scaler, amp=amp,
            channels_last=channels_last, grad_clip=tc["grad_clip"], epoch=epoch, progress=progress, aux_loss=attention,
            ema=ema,
        )
        # With train.ema the averaged weights are the model: validated, selected and saved.
        selected = ema.module if ema is not None else model
        val = predict_loader(selected, val_loader, device, amp=amp, channels_last=channels_last, flip=flip)
        val_auc = roc_auc(val["label"], val["logit"])
        val_loss = _bce(val["logit"], val["label"])
        improved = epoch == n_epochs - 1 if tc["select"] == "last" else val_auc > best["auc"] + 1e-6
        if improved:
            best.update(auc=val_auc, epoch=epoch, stale=0)
            best_val = val
        elif tc["select"] == "val_auc":  # train.select=last never stops early
            best["stale"] += 1
        if main_rank:
            hits, n = pointing(ema.module if ema is not None else raw_model, val_ds,
                               val["index"][val["label"] == 1][: cfg["log"]["pointing_images"]], device) if pointing is not None else (0, 0)
            val_pointing = hits / n if n else None  # are the maps on the lesion?
            tb.scalars({"loss/train": train_loss, "loss/val": val_loss, "auc/val": val_auc, "lr": lr,
                        "pointing/val": val_pointing}, epoch)
            log.info(
                "epoch %d/%d  train loss %.4f  val loss %.4f  val AUC %.4f%s%s  lr %.2e  %.0fs",
                epoch + 1, tc["epochs"], train_loss, val_loss, val_auc, " *" if improved else "",
                "" if val_pointing is None else f"  val pointing {val_pointing:.3f} ({hits}/{n})", lr, time.time() - t0,
            )
            if improved:
                temperature = fit_temperature(val["logit"] - offset, val["label"],
                                              targets=cfg["eval"]["calibration_targets"]) if cfg["eval"]["calibrate"] else 1.0
                probs = calibrated_probability(val["logit"], {"temperature": temperature, "logit_offset": offset})
                threshold = choose_threshold(val["label"], probs, method=cfg["eval"]["threshold_method"])
                metrics = {"val_auc": val_auc, "val_loss": val_loss, "train_loss": train_loss,
                           **({"val_pointing": val_pointing} if val_pointing is not None else {})}
                save_checkpoint(best_path, _ckpt_state(cfg, selected, epoch=epoch, best_epoch=epoch, metrics=metrics,
                                                       threshold=threshold, temperature=temperature,
                                                       extra={"logit_offset": offset, "seen_images": seen_images}))
            save_checkpoint(last_path, _ckpt_state(
                cfg, model, epoch=epoch, best_epoch=best["epoch"], metrics={"val_auc": val_auc, "train_loss": train_loss},
                threshold=0.5, temperature=1.0,
                extra={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "early_stop": dict(best),
                       "epoch_seconds": [*epoch_seconds, time.time() - t0],
                       **({"ema": ema.state_dict()} if ema is not None else {})},
            ))
        dist.barrier()
        epoch_seconds.append(time.time() - t0)
        if best["stale"] >= tc["early_stop_patience"]:
            if main_rank:
                log.info("early stop: no validation AUC gain for %d epochs", best["stale"])
            break

    last_digest = _digest(raw_model)
    # Everything below uses the best epoch's weights, on every rank.
    state = load_checkpoint(best_path, map_location=device)
    raw_model.load_state_dict(state["weights"])
    result: dict[str, Any] = {"best_epoch": state["best_epoch"], "val_auc": state["metrics"]["val_auc"],
                              "threshold": state["threshold"], "temperature": state["temperature"],
                              "last_weights_digest": last_digest, "epoch_seconds": epoch_seconds}
    # The best epoch's validation predictions come from these very weights; only a run resumed
    # after its best epoch has to predict them again.
    val = best_val if best_val is not None else predict_loader(model, val_loader, device, amp=amp,
                                                                channels_last=channels_last, flip=flip)
    nb = int(cfg["eval"]["bootstrap"])
    val_probs, val_report, _ = score_part(val, state, nb)
    result["val"] = val_report
    if test_recs:
        test = predict_loader(model, _loader(build_dataset(cfg, test_recs, False), cfg, False, None, 0), device,
                              amp=amp, channels_last=channels_last, flip=flip)
        _, result["test"], result["test_predictions"] = score_part(test, state, nb)
    if main_rank:
        state["metrics"].update({f"val_{k}": v for k, v in val_report.items()})
        if "test" in result:
            state["metrics"].update({f"test_{k}": v for k, v in result["test"].items()})
        save_checkpoint(best_path, state)
    if main_rank and len(epoch_seconds) > len(done_seconds):  # a resume with nothing left to train logs nothing twice
        log_best_epoch(tb, cfg, raw_model, val_ds, val, val_probs, state)
        tb.hparams(flat_hparams(cfg), {"val_auc": result["val_auc"], **({"test_auc": result["test"]["auc"]} if "test" in result else {})})
    tb.close()
    dist.barrier()
    return result


def score_part(pred: dict[str, np.ndarray], state: dict[str, Any], n_boot: int) -> tuple[np.ndarray, dict[str, Any], list[dict]]:
    """Calibrated probabilities, metrics (with ``ece_uncalibrated``) and per-case rows of one scored part.

    ``pred`` is :func:`breastai.engine.predict_loader` output; ``state`` a checkpoint (its
    calibration and operating threshold are applied).
    """
    z_cal = calibrated_logit(pred["logit"], state)
    probs = apply_temperature(z_cal, 1.0)
    rep = evaluation_report(pred["label"], probs, state["threshold"], n_boot=n_boot, scores=z_cal)
    rep["ece_uncalibrated"] = ece(pred["label"], apply_temperature(pred["logit"], 1.0))
    rows = [{"case_id": str(c), "label": int(y), "logit": float(z), "calibrated_logit": float(zc), "probability": float(p)}
            for c, y, z, zc, p in zip(pred["case_id"], pred["label"], pred["logit"], z_cal, probs)]
    return probs, rep, rows


def predict_records(state: dict[str, Any], records: Sequence[dict[str, Any]], device: torch.device,
                    progress: bool = False) -> dict[str, np.ndarray]:
    """Raw logits of a checkpoint's model on ``records``, preprocessed by the checkpoint's own
    (evaluation) preset, exactly as validation and test parts are scored in training. For an
    ensemble checkpoint, the combined log-odds of its members (:mod:`breastai.ensemble`)."""
    if "ensemble" in state:
        from .ensemble import ensemble_predict_records

        return ensemble_predict_records(state, records, device, progress)
    cfg = {**state["config"], "data": {**state["config"]["data"], "cache": "none"}}
    model = model_from_checkpoint(state).to(device)
    return predict_loader(model, _loader(build_dataset(cfg, records, False), cfg, False, None, 0), device,
                          progress=progress, flip=bool(cfg["eval"]["flip_average"]))


def _finished_fold(cfg: dict[str, Any], records: Sequence[dict[str, Any]], test_idx: np.ndarray, fold_dir: Path) -> dict[str, Any]:
    """Results of a fold finished before a ``--resume``: from its ``done`` file, or, for a file
    without predictions, recomputed from the fold's ``best.pt`` on its held-out part."""
    done = json.loads((fold_dir / "done").read_text())
    ids = [str(records[i]["case_id"]) for i in test_idx]
    if "test_case_ids" in done and done["test_case_ids"] != ids:  # (older done files keep no ids)
        raise ValueError(f"--resume: {fold_dir} was finished on other held-out cases than this split gives "
                         "(datalist, folds or seeds changed); start a new run instead")
    if "test_predictions" in done:
        return done
    state = load_checkpoint(fold_dir / "best.pt")
    pred = predict_records(state, [records[i] for i in test_idx], torch.device("cpu"))
    _, rep, preds = score_part(pred, state, int(cfg["eval"]["bootstrap"]))
    rep["seconds"] = done.get("seconds", float("nan"))
    return {"best_epoch": state["best_epoch"], "test": rep, "test_predictions": preds}


def cv_splits(records: Sequence[dict[str, Any]], k: int, cfg: dict[str, Any]
              ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, val, test) index arrays of each fold, exactly as :func:`cross_validate` uses them.

    The folds depend on ``data.val_fraction`` and :func:`breastai.config.split_seed` only.
    """
    seed, out = split_seed(cfg), []
    for i, test_idx in enumerate(group_kfold(records, k, seed=seed)):
        train_all = np.setdiff1d(np.arange(len(records)), test_idx)
        tr, va = carve_validation(records, train_all, cfg["data"]["val_fraction"], seed=seed + i)
        out.append((tr, va, test_idx))
    return out


def cross_validate(cfg: dict[str, Any], records: Sequence[dict[str, Any]], k: int, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Stratified group-aware K-fold CV; writes ``cv_summary.json`` and ``oof_predictions.csv``.

    Each fold's training part gives up a group-aware validation part for model selection;
    the held-out fold is only evaluated.
    """
    per_fold, oof = [], []
    splits = cv_splits(records, k, cfg)
    for i, (tr, va, test_idx) in enumerate(splits):
        if dist.is_main():
            log.info("fold %d/%d: %d train, %d val, %d test", i + 1, len(splits), len(tr), len(va), len(test_idx))
        fold_dir = run_dir / f"fold{i}"
        if resume and (fold_dir / "done").is_file():
            res = _finished_fold(cfg, records, test_idx, fold_dir)
            log.info("fold %d already finished: test AUC %.4f", i + 1, res["test"]["auc"])
        else:
            t0 = time.time()
            res = fit(cfg, records, {"train": tr, "val": va, "test": test_idx}, fold_dir,
                      resume=resume and (fold_dir / "last.pt").is_file())
            res["test"]["seconds"] = time.time() - t0
            if dist.is_main():
                done = {"best_epoch": res["best_epoch"], "test": res["test"], "test_predictions": res["test_predictions"],
                        "test_case_ids": [str(records[j]["case_id"]) for j in test_idx]}
                atomic_write_text(fold_dir / "done", json.dumps(done, default=float))
        per_fold.append({"fold": i, "best_epoch": res["best_epoch"], **res["test"]})
        oof += [{**p, "fold": i} for p in res["test_predictions"]]
    return cv_summary(per_fold, oof, cfg, run_dir if dist.is_main() else None)


def load_cv_summary(run: str | Path) -> dict[str, Any]:
    """The ``cv_summary.json`` of a cross-validation run folder (or the file itself).

    Raises:
        FileNotFoundError: no summary there.
        ValueError: the file is not a cross-validation summary.
    """
    p = Path(run)
    p = p / "cv_summary.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{run}: no cv_summary.json (train with --folds K first)")
    s = json.loads(p.read_text())
    for key in ("folds", "mean_sd", "oof_predictions"):
        if key not in s:
            raise ValueError(f"{p}: not a cross-validation summary (no {key!r})")
    return s


def cv_summary(per_fold: list[dict[str, Any]], oof: list[dict[str, Any]], cfg: dict[str, Any],
               run_dir: Path | None) -> dict[str, Any]:
    """Per-fold metrics, mean ± sd, pooled out-of-fold AUC and predictions; written to
    ``run_dir/cv_summary.json`` and ``oof_predictions.csv`` unless ``run_dir`` is None."""
    y = np.array([p["label"] for p in oof])
    # Calibrated log-odds share one scale across folds and, unlike float probabilities, never tie at 0 or 1.
    # (A fold finished before the column existed, then resumed, has only probabilities.)
    key = "calibrated_logit" if all("calibrated_logit" in p for p in oof) else "probability"
    pooled = np.array([p[key] for p in oof])
    summary = {
        "folds": per_fold,
        "mean_sd": summarise_folds([{k: v for k, v in f.items() if isinstance(v, (int, float))} for f in per_fold]),
        "pooled_oof_auc": roc_auc(y, pooled),
        "oof_predictions": oof,
        "config": cfg,
    }
    if run_dir is not None:
        atomic_write_text(Path(run_dir) / "cv_summary.json", json.dumps(summary, indent=1, default=float))
        atomic_write_csv(Path(run_dir) / "oof_predictions.csv", ["case_id", "fold", "label", "logit", "calibrated_logit",
                                                                         "probability"], oof,
                         exact=True)
    return summary


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
