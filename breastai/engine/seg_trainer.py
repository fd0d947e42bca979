"""Training a lesion segmenter: ``fit_segmenter`` one split, as :func:`breastai.engine.trainer.fit` trains a classifier.

Same data, splits, presets, run folders, checkpoints and TensorBoard as the classifiers; what
differs is the target (the traced mask, and whether the image holds a lesion at all), the loss
(MONAI's ``DiceCELoss`` or ``DiceFocalLoss`` on the mask logits plus a presence BCE) and the
validation score (mean Dice over the validation images that hold a lesion). At the best epoch the
presence head is calibrated (temperature) and its threshold chosen on validation; both go into the
checkpoint's ``temperature`` and ``threshold``, which :func:`breastai.models.lesions.find_lesions`
reads at inference.
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
from breastai.core.keys import Keys
from breastai.data.modality import trained_modalities
from breastai.data.provenance import part_digests
from breastai.data.readers.masks import load_mask
from breastai.engine.loaders import build_dataset, make_loader
from breastai.engine.loops import autocast, make_optimizer, resume_training, seed_everything, train_one_epoch, weight_ema
from breastai.models.calibration import apply_temperature, fit_temperature
from breastai.models.checkpoint import Checkpoint, ModelArgs
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.lesions import find_lesions, lesion_rules, lesion_score, mask_edge
from breastai.models.registry import create_model
from breastai.models.segmenter import mirror_mode, segment
from breastai.reporting.metrics import choose_threshold
from breastai.reporting.segmentation import mask_metrics, segmentation_summary
from breastai.reporting.tblog import TBLogger, flat_hparams

__all__ = ["MIN_LESION_IMAGES", "fit_segmenter", "check_seg_parts", "segmentation_loss", "lesion_image_dice_loss", "predict_segmentation", "score_segmentation",
           "segment_records", "choose_presence_threshold", "lesion_free"]

log = logging.getLogger("breastai")


def check_seg_parts(records: Sequence[dict[str, Any]], split: dict[str, np.ndarray]) -> None:
    """Refuse a split a segmenter cannot learn from: no validation part, or a row without a traced mask.

    An image without a lesion needs an empty mask file (BUSI ships them for its normal images):
    a row with no mask at all may be a lesion nobody traced, and would teach "no lesion here".

    Raises:
        ValueError: naming the part or the row.
    """
    if len(split["val"]) == 0:
        raise ValueError("no validation data: set data.val_fraction > 0 or give rows with split=val")
    for key in ("train", "val", "test"):
        for i in split.get(key, []):
            if not records[i].get(Keys.MASK):
                raise ValueError(f"row {records[i][Keys.CASE_ID]!r} has no mask: a segmenter learns from traced masks "
                                 "(give an image without a lesion an empty mask file)")


def lesion_free(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """1 for each row whose traced mask is empty (an image without a lesion), else 0: with
    ``train.class_balance: sampler`` the loader draws these and the lesion images equally often."""
    return np.array([0 if load_mask(r[Keys.MASK]).any() else 1 for r in records], int)


def lesion_image_dice_loss(pixel_loss: str = "dicece"):
    """``loss(logits, target)``: the Dice loss of each image that holds a lesion, averaged over those
    images, plus the pixel term (``dicece``: binary cross-entropy, ``dicefocal``: focal loss) over
    every pixel of every image.

    A missed small lesion then costs its image a whole Dice, as the per-image metric counts it, where
    one Dice over the batch would let the batch's large lesions outweigh it; a batch of normal images
    only (or an image without a lesion) adds nothing to the Dice term, so no 0/0 term arises.
    """
    from monai.losses import DiceLoss, FocalLoss

    dice = DiceLoss(sigmoid=True, batch=False, reduction="none")
    pixel = nn.BCEWithLogitsLoss() if pixel_loss == "dicece" else FocalLoss(use_softmax=False)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_image = dice(logits, target).flatten(1).mean(1)
        lesion = target.flatten(1).amax(1) > 0.5
        d = per_image[lesion].mean() if lesion.any() else logits.sum() * 0.0
        return d + pixel(logits, target)

    return loss


def segmentation_loss(cfg: dict[str, Any]):
    """``loss(output, batch, device)``: the mask loss (``seg.loss``; its Dice per batch, or with
    ``seg.dice: lesion_images`` per lesion image: :func:`lesion_image_dice_loss`) plus ``seg.presence_weight`` times
    the presence BCE, whose target is whether the (augmented) traced mask holds any lesion pixel."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    sc = cfg["seg"]
    if sc["dice"] == "lesion_images":
        mask_loss = lesion_image_dice_loss(sc["loss"])
    else:
        # batch=True: Dice over the whole batch, so an image without a lesion adds no 0/0 term.
        mask_loss = (DiceCELoss if sc["loss"] == "dicece" else DiceFocalLoss)(sigmoid=True, batch=True)
    bce, weight = nn.BCEWithLogitsLoss(), float(sc["presence_weight"])

    def loss(out: Any, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        target = batch[Keys.MASK].to(device)
        present = (target.flatten(1).amax(1) > 0.5).float()
        return mask_loss(out.mask_logits.float(), target) + weight * bce(out.presence_logit.float(), present)

    return loss


@torch.no_grad()
def predict_segmentation(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
                         amp: bool = False, flip: bool | str = False) -> dict[str, Any]:
    """Mask probabilities (float16, network grid), presence logits and traced masks of every sample
    (with ``flip``, of the image and its mirror image averaged, both outputs or the mask alone:
    :func:`~breastai.models.segmenter.segment`).

    Returns ``index``, ``case_id``, ``presence_logit`` (N,), ``prob`` (N, S, S) and ``truth`` (N, S, S) bool,
    sorted by dataset index.
    """
    model.eval()
    idx, ids, z, probs, truth = [], [], [], [], []
    for batch in loader:
        x = batch[Keys.IMAGE].to(device)
        with autocast(device, amp):
            out = segment(model, x, flip)
        idx.append(batch[Keys.INDEX].numpy())
        ids.extend(batch[Keys.CASE_ID])
        z.append(out.presence_logit.float().cpu().numpy())
        probs.append(torch.sigmoid(out.mask_logits.float())[:, 0].cpu().numpy().astype(np.float16))
        truth.append(batch[Keys.MASK][:, 0].numpy() > 0.5)
    parts = dist.gather_objects((idx, ids, z, probs, truth))
    cat = lambda j: np.concatenate([a for p in parts for a in p[j]])  # noqa: E731
    index = cat(0)
    order, keep = np.unique(index, return_index=True)  # DistributedSampler pads with repeats
    return {"index": order, "case_id": [[i for p in parts for i in p[1]][k] for k in keep],
            "presence_logit": cat(2)[keep], "prob": cat(3)[keep], "truth": cat(4)[keep]}


def segment_records(model: nn.Module, cfg: dict[str, Any], records: Sequence[dict[str, Any]], device: torch.device,
                    amp: bool = False) -> dict[str, Any]:
    """:func:`predict_segmentation` of ``records`` with ``cfg``'s evaluation preprocessing and its
    mirror mode (:func:`~breastai.models.segmenter.mirror_mode`), as validation images are scored, so a
    threshold chosen on them fits."""
    loader = make_loader(build_dataset(cfg, records, False), cfg, False, None, 0)
    return predict_segmentation(model, loader, device, amp, mirror_mode(cfg))


def _raw_scores(pred: dict[str, Any], threshold: float) -> dict[str, float]:
    """Mean Dice and IoU and median HD95 of the thresholded masks over the images holding a traced
    lesion (the epoch's figures; Dice is what selects the epoch)."""
    m = [mask_metrics(p.astype(np.float32) >= threshold, t) for p, t in zip(pred["prob"], pred["truth"]) if t.any()]
    if not m:
        return {"dice": float("nan"), "iou": float("nan"), "hd95": float("nan")}
    hd = [r["hd95"] for r in m if np.isfinite(r["hd95"])]
    return {"dice": float(np.mean([r["dice"] for r in m])), "iou": float(np.mean([r["iou"] for r in m])),
            "hd95": float(np.median(hd)) if hd else float("nan")}


def score_segmentation(pred: dict[str, Any], cfg: dict[str, Any], temperature: float, threshold: float) -> list[dict[str, Any]]:
    """Per-image rows: the found lesions (:func:`~breastai.models.lesions.find_lesions`) against the traced mask.

    Each row: ``case_id``, ``has_lesion``, ``presence_logit``, ``presence_probability``, ``lesion_found``,
    ``n_lesions``, and ``dice``, ``iou``, ``hd95`` (network grid pixels) of the union of the found lesions.
    """
    rules, rows = lesion_rules(cfg["seg"]), []
    presence = apply_temperature(pred["presence_logit"], temperature)
    for cid, z, p, prob, truth in zip(pred["case_id"], pred["presence_logit"], presence, pred["prob"], pred["truth"]):
        lesions = find_lesions(prob, float(p), presence_threshold=threshold, **rules)
        found = np.zeros(truth.shape, bool)
        for les in lesions:
            found |= les.mask
        rows.append({"case_id": str(cid), "has_lesion": bool(truth.any()), "presence_logit": float(z),
                     "presence_probability": float(p), "lesion_found": bool(lesions), "n_lesions": len(lesions),
                     **mask_metrics(found, truth)})
    return rows


# Fewer lesion images than this leave a sensitivity of 0.9-0.95 decided by one or two of them:
# `calibrate` refuses to choose a threshold on fewer, and `ensemble --threshold-from` warns.
MIN_LESION_IMAGES = 10


def choose_presence_threshold(pred: dict[str, Any], cfg: dict[str, Any], temperature: float) -> float:
    """The presence threshold, from validation predictions.

    With ``seg.presence_sensitivity`` = q > 0: at least a fraction q of the validation images holding
    a traced lesion get a found lesion (:func:`~breastai.models.lesions.lesion_score`). Of the
    thresholds that do so and find the fewest other validation images, the midpoint of the gap
    between the weakest kept lesion's score and the next lower score of any validation image (0
    when none is lower), not its top edge: at the edge an unseen lesion as confident as the weakest
    kept one falls either side by chance, which on a small validation part misses many.
    A segmenter is a detector in front of the classifier: a lesion it misses is never scored,
    while a false one is scored (most often benign) and shown. With q = 0: ``eval.threshold_method``
    on the presence probability alone. 0.5 when validation holds no lesion image (or, with q = 0,
    one kind of image only).
    """
    sc = cfg["seg"]
    has = np.array([t.any() for t in pred["truth"]], int)
    presence = apply_temperature(pred["presence_logit"], temperature)
    q = float(sc["presence_sensitivity"])
    if q > 0:
        rules = lesion_rules(sc)
        scores = np.array([lesion_score(p, float(z), **rules) for p, z in zip(pred["prob"], presence)])
        s = np.sort(scores[has == 1])
        if not len(s):
            return 0.5
        edge = s[int(np.floor((1.0 - q) * len(s)))]
        below = scores[scores < edge]
        return float(max((edge + (below.max() if len(below) else 0.0)) / 2, 1e-3))
    if len(set(has.tolist())) < 2:
        return 0.5
    return float(choose_threshold(has, presence, method=cfg["eval"]["threshold_method"]))


def _overlays(pred: dict[str, Any], images: torch.Tensor, threshold: float) -> torch.Tensor:
    """RGB tiles: the grey image, the traced outline in green, the predicted one in red."""
    tiles = []
    for img, prob, truth in zip(images, pred["prob"], pred["truth"]):
        rgb = img[:1].repeat(3, 1, 1).clone()
        for ch, m in ((1, truth), (0, prob.astype(np.float32) >= threshold)):
            edge = torch.from_numpy(mask_edge(m))
            rgb[:, edge] = 0.0
            rgb[ch, edge] = 1.0
        tiles.append(rgb)
    return torch.stack(tiles)


def _checkpoint(cfg: dict[str, Any], model: nn.Module, **fields: Any) -> Checkpoint:
    raw = model.module if hasattr(model, "module") else model
    return Checkpoint(model=ModelArgs(cfg["model"]["name"], 1, cfg["model"]["dropout"], dict(raw.init_kwargs)),
                      weights={k: v.detach().cpu() for k, v in raw.state_dict().items()}, config=cfg,
                      classes=["no lesion", "lesion"], **fields)


def fit_segmenter(cfg: dict[str, Any], records: Sequence[dict[str, Any]], split: dict[str, np.ndarray], run_dir: Path,
                  resume: bool = False) -> dict[str, Any]:
    """Train a segmenter on ``split['train']``, select on ``split['val']``, evaluate ``split['test']`` if any.

    Returns ``best_epoch``, ``val`` and ``test`` summaries (:func:`~breastai.reporting.segmentation.segmentation_summary`),
    ``test_predictions`` (per-image rows) and ``epoch_seconds``; ``best.pt`` and ``last.pt`` go to ``run_dir``.
    """
    tc, sc, device = cfg["train"], cfg["seg"], resolve_device(cfg["device"])
    check_seg_parts(records, split)
    main_rank = dist.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])
    train_recs, val_recs = [records[i] for i in split["train"]], [records[i] for i in split["val"]]
    test_recs = [records[i] for i in split.get("test", [])]
    seen_images = {"train": part_digests(train_recs), "val": part_digests(val_recs)} if main_rank else {}
    modalities = trained_modalities([*train_recs, *val_recs], cfg["data"].get("modality"))
    train_ds, val_ds = build_dataset(cfg, train_recs, train=True), build_dataset(cfg, val_recs, train=False)
    balance = lesion_free(train_recs) if tc["class_balance"] == "sampler" else None
    # Stops at the first empty mask: every mask is read only where none is empty (or the sampler read them).
    any_free = balance.any() if balance is not None else any(not load_mask(r[Keys.MASK]).any() for r in train_recs)
    if main_rank and not any_free:
        log.warning("none of the %d training images is without a lesion (an empty mask): the presence "
                    "probability cannot learn what an image without one looks like, so the segmenter will find "
                    "lesions in such images (docs/experiments.md, 'Segmenters trained at the other site'); add "
                    "lesion-free images with empty mask files", len(train_recs))

    model = create_model(cfg["model"]["name"], in_chans=1, pretrained=cfg["model"]["pretrained"],
                         dropout=cfg["model"]["dropout"]).to(device)
    raw_model = model
    ema = weight_ema(raw_model, float(tc["ema"]))  # copied before DDP wraps the model
    if dist.is_distributed():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer, scheduler = make_optimizer(raw_model, tc, len(make_loader(train_ds, cfg, True, balance, 0)))
    amp = bool(tc["amp"]) and device.type == "cuda"
    flip = mirror_mode(cfg)  # validated as inference outlines, so the threshold fits them
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    loss = segmentation_loss(cfg)

    start_epoch, best, done_seconds = 0, {"auc": -1.0, "epoch": -1, "stale": 0}, []
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume:
        start_epoch, best, done_seconds = resume_training(last_path, raw_model, optimizer, scheduler, device, tc, ema)

    tb = TBLogger(run_dir / "tb" if (main_rank and cfg["log"]["tensorboard"]) else None)
    val_loader = make_loader(val_ds, cfg, False, None, 0)
    # Fixed validation images for the overlays: the first ones holding a traced lesion.
    shown = [i for i in range(len(val_ds)) if val_ds[i][Keys.MASK].any()][: int(sc["overlay_images"])]
    shown_images = torch.stack([val_ds[i][Keys.IMAGE] for i in shown]) if shown else None
    best_val, epoch_seconds = None, list(done_seconds)
    for epoch in range(start_epoch, tc["epochs"]):
        t0 = time.time()
        epoch_seed = cfg["seed"] * 1000 + epoch + 7919 * dist.rank()
        seed_everything(epoch_seed)
        train_ds.transform.set_random_state(seed=epoch_seed % 2**32)
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(model, make_loader(train_ds, cfg, True, balance, epoch), optimizer, scheduler, None, device,
                                     scaler=scaler, amp=amp, grad_clip=tc["grad_clip"], epoch=epoch,
                                     progress=bool(cfg["log"]["progress"]), batch_loss=loss, ema=ema)
        # With train.ema the averaged weights are the segmenter: validated, selected and saved.
        selected = ema.module if ema is not None else model
        val = predict_segmentation(selected, val_loader, device, amp, flip)
        scores = _raw_scores(val, sc["pixel_threshold"])
        dice = scores["dice"]
        improved = epoch == tc["epochs"] - 1 if tc["select"] == "last" else dice > best["auc"] + 1e-6
        if improved:
            best.update(auc=dice, epoch=epoch, stale=0)
            best_val = val
        elif tc["select"] == "val_auc":
            best["stale"] += 1
        if main_rank:
            tb.scalars({"loss/train": train_loss, "dice/val": dice, "iou/val": scores["iou"], "hd95/val": scores["hd95"],
                        "lr": lr}, epoch)
            if shown_images is not None and tb.writer is not None:
                pos = np.searchsorted(val["index"], shown)  # val is sorted by dataset index
                tb.writer.add_images("val/outlines", _overlays({k: val[k][pos] for k in ("prob", "truth")}, shown_images,
                                                               sc["pixel_threshold"]), epoch)
            log.info("epoch %d/%d  train loss %.4f  val Dice %.4f  IoU %.4f  HD95 %.1f px%s  lr %.2e  %.0fs", epoch + 1,
                     tc["epochs"], train_loss, dice, scores["iou"], scores["hd95"], " *" if improved else "", lr, time.time() - t0)
            if improved:
                save_checkpoint(best_path, _checkpoint(cfg, selected, epoch=epoch, best_epoch=epoch, metrics={"val_dice": dice},
                                                       seen_images=seen_images, modalities=modalities))
            save_checkpoint(last_path, _checkpoint(
                cfg, model, epoch=epoch, best_epoch=best["epoch"], metrics={"val_dice": dice, "train_loss": train_loss},
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), early_stop=dict(best),
                epoch_seconds=[*epoch_seconds, time.time() - t0], ema=ema.state_dict() if ema is not None else None))
        dist.barrier()
        epoch_seconds.append(time.time() - t0)
        if best["stale"] >= tc["early_stop_patience"]:
            if main_rank:
                log.info("early stop: no validation Dice gain for %d epochs", best["stale"])
            break

    kept = load_checkpoint(best_path, map_location=device)
    raw_model.load_state_dict(kept.weights)
    val = best_val if best_val is not None else predict_segmentation(model, val_loader, device, amp, flip)
    has = np.array([t.any() for t in val["truth"]], int)
    # Presence: calibrated and thresholded on validation; with one kind of image there it stays raw.
    # Platt's targets: lesion against normal images is often separable on validation, where a plain
    # fit drives T -> 0 and every probability to exactly 0 or 1 (and the threshold to 1).
    both = len(set(has.tolist())) == 2
    kept.temperature = fit_temperature(val["presence_logit"], has, targets="platt") if both else 1.0
    kept.threshold = choose_presence_threshold(val, cfg, kept.temperature)
    nb = int(cfg["eval"]["bootstrap"])
    val_rows = score_segmentation(val, cfg, kept.temperature, kept.threshold)
    result: dict[str, Any] = {"best_epoch": kept.best_epoch, "val": segmentation_summary(val_rows, nb),
                              "threshold": kept.threshold, "temperature": kept.temperature, "epoch_seconds": epoch_seconds}
    if test_recs:
        test = segment_records(model, cfg, test_recs, device, amp)
        result["test_predictions"] = score_segmentation(test, cfg, kept.temperature, kept.threshold)
        result["test"] = segmentation_summary(result["test_predictions"], nb)
    if main_rank:
        kept.metrics.update({f"val_{k}": v for k, v in result["val"].items() if v is not None})
        if "test" in result:
            kept.metrics.update({f"test_{k}": v for k, v in result["test"].items() if v is not None})
        save_checkpoint(best_path, kept)
        tb.hparams(flat_hparams(cfg), {"val_dice": result["val"]["dice_mean"] or 0.0,
                                       **({"val_presence_auc": result["val"]["presence_auc"]} if both else {})})
        tb.scalars({"dice/val_best": result["val"]["dice_mean"], "iou/val_best": result["val"]["iou_mean"],
                    "hd95/val_best": result["val"]["hd95_median"], "presence_auc/val_best": result["val"]["presence_auc"]},
                   kept.best_epoch)
    tb.close()
    dist.barrier()
    return result
