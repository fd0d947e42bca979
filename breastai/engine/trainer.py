"""Training: ``fit`` one split, ``cross_validate`` K group-aware folds, ``main`` from a config.

Reads top to bottom like torchvision's reference script: data, model, optimiser, the epoch loop
(``engine.train_one_epoch`` then validation), best-epoch selection on validation AUC with
early stopping, then calibration, the operating threshold and the held-out evaluation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from breastai.core import distributed as dist
from breastai.core.distributed import resolve_device
from breastai.data.modality import trained_modalities
from breastai.data.provenance import part_digests
from breastai.engine.loaders import build_dataset, make_loader
from breastai.engine.losses import make_loss
from breastai.engine.ood import fit_detector
from breastai.engine.loops import (
    make_optimizer,
    predict_loader,
    resume_training,
    seed_everything,
    train_one_epoch,
    weight_ema,
)
from breastai.engine.scoring import score_part
from breastai.models.calibration import calibrated_probability, fit_temperature
from breastai.models.checkpoint import Checkpoint, ModelArgs
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.radiomics_fit import needs_radiomics, radiomics_model_kwargs
from breastai.models.registry import create_model, get_spec
from breastai.reporting.metrics import choose_threshold, roc_auc
from breastai.reporting.tblog import TBLogger, flat_hparams, log_best_epoch

__all__ = ["fit", "check_parts"]

log = logging.getLogger("breastai")


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    z = torch.as_tensor(logits, dtype=torch.float64)
    return float(nn.functional.binary_cross_entropy_with_logits(z, torch.as_tensor(labels, dtype=torch.float64)))


def _checkpoint(cfg: dict[str, Any], model: nn.Module, *, epoch: int, best_epoch: int, metrics: dict[str, Any],
                threshold: float, temperature: float, **extra: Any) -> Checkpoint:
    """The checkpoint of ``model`` (a DDP wrapper is looked through); ``extra``: more Checkpoint fields."""
    raw = model.module if hasattr(model, "module") else model
    return Checkpoint(
        model=ModelArgs(cfg["model"]["name"], _in_chans(cfg), cfg["model"]["dropout"], dict(raw.init_kwargs)),
        weights={k: v.detach().cpu() for k, v in raw.state_dict().items()},
        config=cfg,
        classes=list(cfg["data"]["classes"]),
        threshold=float(threshold),
        temperature=float(temperature),
        epoch=int(epoch),
        best_epoch=int(best_epoch),
        metrics=metrics,
        **extra,
    )


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


def check_parts(records: Sequence[dict[str, Any]], split: dict[str, np.ndarray]) -> None:
    """Refuse a split that cannot be trained: no validation part, or a part with one class only.

    Called by :func:`fit`, and by the run on every split before its run folder is made.

    Raises:
        ValueError: naming the part.
    """
    if len(split["val"]) == 0:
        raise ValueError("no validation data: set data.val_fraction > 0 or give rows with split=val")
    for name, key in (("training", "train"), ("validation", "val"), ("test", "test")):
        idx = split.get(key, [])
        present = {records[i]["label"] for i in idx}
        if (len(idx) or name != "test") and len(present) < 2:  # only the test part may be empty
            raise ValueError(f"the {name} part holds only {sorted(present)}; both classes are needed")


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
    check_parts(records, split)
    main_rank = dist.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])
    train_recs = [records[i] for i in split["train"]]
    val_recs = [records[i] for i in split["val"]]
    classes = list(cfg["data"]["classes"])
    y_train = np.array([classes.index(r["label"]) for r in train_recs])
    test_recs = [records[i] for i in split.get("test", [])]

    # Digests of the image files learned from and selected on: evaluate warns when it meets them again.
    seen_images = {"train": part_digests(train_recs), "val": part_digests(val_recs)} if main_rank else {}
    # What the model learned from, so predict can refuse DICOM of another modality (None: unknown).
    modalities = trained_modalities([*train_recs, *val_recs], cfg["data"].get("modality"))
    train_ds = build_dataset(cfg, train_recs, train=True)
    val_ds = build_dataset(cfg, val_recs, train=False)

    spec = get_spec(cfg["model"]["name"])
    if cfg["model"]["pretrained"] and not spec.pretrained_available and main_rank:
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

    optimizer, scheduler = make_optimizer(raw_model, tc, len(make_loader(train_ds, cfg, True, y_train, 0)))
    amp = bool(tc["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    pos_weight = None
    if tc["class_balance"] == "weighted_loss" or (tc["class_balance"] == "sampler" and dist.is_distributed()):
        pos_weight = torch.tensor((y_train == 0).sum() / max(1, (y_train == 1).sum()), dtype=torch.float32, device=device)
    offset = float(torch.log(pos_weight)) if (pos_weight is not None and cfg["eval"]["calibrate"]) else 0.0
    loss_fn = make_loss(tc, pos_weight)

    start_epoch, best, done_seconds = 0, {"auc": -1.0, "epoch": -1, "stale": 0}, []
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume:
        start_epoch, best, done_seconds = resume_training(last_path, raw_model, optimizer, scheduler, device, tc, ema)
        if main_rank:
            log.info("resuming %s after epoch %d of %d (best AUC %.4f at epoch %d)", run_dir, len(done_seconds),
                     tc["epochs"], best["auc"], best["epoch"] + 1)

    attention = pointing = None
    if float(tc.get("attention_loss", 0.0)) > 0:
        from breastai.engine.attention import LesionAttentionLoss, PointingGame

        if main_rank and cfg["log"]["pointing_images"]:  # its copy is made before the loss hooks the model
            pointing = PointingGame(raw_model)
        attention = LesionAttentionLoss(raw_model, float(tc["attention_loss"]), tc["attention_cells"],
                                        layer=spec.saliency_layer(cfg["model"]["backbone"]))
    tb = TBLogger(run_dir / "tb" if (main_rank and cfg["log"]["tensorboard"]) else None)
    val_loader = make_loader(val_ds, cfg, False, None, 0)  # deterministic: built once
    best_val: dict[str, np.ndarray] | None = None
    progress = bool(cfg["log"]["progress"])
    closed_form = spec.closed_form  # fitted at construction: one pass, no steps
    epoch_seconds: list[float] = list(done_seconds)  # a resumed run's summary still times every epoch
    n_epochs = 1 if closed_form else tc["epochs"]
    for epoch in range(start_epoch, n_epochs):
        t0 = time.time()
        if epoch == start_epoch and tb.writer is not None:
            first = next(iter(make_loader(train_ds, cfg, True, y_train, epoch)))
            tb.image_grid("inputs/train_augmented", first["image"][: cfg["log"]["image_grid"]], epoch)
        # Re-seeding per epoch makes --resume replay exactly what an uninterrupted run does.
        # Per rank: ranks see other images but would otherwise draw the same flips, affines and noise.
        epoch_seed = cfg["seed"] * 1000 + epoch + 7919 * dist.rank()
        seed_everything(epoch_seed)
        train_ds.transform.set_random_state(seed=epoch_seed % 2**32)
        train_loader = make_loader(train_ds, cfg, True, y_train, epoch)
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
                save_checkpoint(best_path, _checkpoint(cfg, selected, epoch=epoch, best_epoch=epoch, metrics=metrics,
                                                       threshold=threshold, temperature=temperature,
                                                       logit_offset=offset, seen_images=seen_images,
                                                       modalities=modalities))
            save_checkpoint(last_path, _checkpoint(
                cfg, model, epoch=epoch, best_epoch=best["epoch"], metrics={"val_auc": val_auc, "train_loss": train_loss},
                threshold=0.5, temperature=1.0, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                early_stop=dict(best), epoch_seconds=[*epoch_seconds, time.time() - t0],
                ema=ema.state_dict() if ema is not None else None,
            ))
        dist.barrier()
        epoch_seconds.append(time.time() - t0)
        if best["stale"] >= tc["early_stop_patience"]:
            if main_rank:
                log.info("early stop: no validation AUC gain for %d epochs", best["stale"])
            break

    last_digest = _digest(raw_model)
    # Everything below uses the best epoch's weights, on every rank.
    kept = load_checkpoint(best_path, map_location=device)
    raw_model.load_state_dict(kept.weights)
    result: dict[str, Any] = {"best_epoch": kept.best_epoch, "val_auc": kept.metrics["val_auc"],
                              "threshold": kept.threshold, "temperature": kept.temperature,
                              "last_weights_digest": last_digest, "epoch_seconds": epoch_seconds}
    # The best epoch's validation predictions come from these very weights; only a run resumed
    # after its best epoch has to predict them again.
    val = best_val if best_val is not None else predict_loader(model, val_loader, device, amp=amp,
                                                                channels_last=channels_last, flip=flip)
    nb = int(cfg["eval"]["bootstrap"])
    val_probs, val_report, _ = score_part(val, kept, nb)
    result["val"] = val_report
    run_kw = {"amp": amp, "channels_last": channels_last, "flip": flip}
    if float(cfg["eval"]["ood_quantile"]) > 0:
        train_eval = make_loader(build_dataset(cfg, train_recs, False), cfg, False, None, 0)
        kept.ood = fit_detector(cfg, model, train_eval, val_loader, device, **run_kw)
        if main_rank:
            log.info("OOD detector: %d training images, %d feature groups (validation quantile %.3g)",
                     kept.ood.n_fit, len(kept.ood.groups), kept.ood.quantile)
    if test_recs:
        test = predict_loader(model, make_loader(build_dataset(cfg, test_recs, False), cfg, False, None, 0), device,
                              features=None if kept.ood is None else kept.ood.layers, **run_kw)
        _, result["test"], result["test_predictions"] = score_part(test, kept, nb)
    if main_rank:
        kept.metrics.update({f"val_{k}": v for k, v in val_report.items()})
        if "test" in result:
            kept.metrics.update({f"test_{k}": v for k, v in result["test"].items()})
        save_checkpoint(best_path, kept)
    if main_rank and len(epoch_seconds) > len(done_seconds):  # a resume with nothing left to train logs nothing twice
        log_best_epoch(tb, cfg, raw_model, val_ds, val, val_probs, kept)
        tb.hparams(flat_hparams(cfg), {"val_auc": result["val_auc"], **({"test_auc": result["test"]["auc"]} if "test" in result else {})})
    tb.close()
    dist.barrier()
    return result
