"""The two loops: ``train_one_epoch`` and ``predict_loader`` (evaluation forward passes)."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from breastai.core import distributed as dist
from breastai.core.keys import Keys
from breastai.models.ood import FeatureTap, model_features
from breastai.models.tta import mirror_average

__all__ = ["collate", "warmup_cosine", "weight_ema", "train_one_epoch", "predict_loader", "autocast", "seed_everything", "reseed_worker"]


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors a loop needs; keep per-sample extras as lists."""
    out: dict[str, Any] = {
        Keys.IMAGE: torch.stack([b[Keys.IMAGE] for b in batch]),
        Keys.LABEL: torch.tensor([int(b.get(Keys.LABEL, -1)) for b in batch], dtype=torch.float32),
        Keys.CASE_ID: [b.get(Keys.CASE_ID, "") for b in batch],
        Keys.INDEX: torch.tensor([int(b.get(Keys.INDEX, -1)) for b in batch]),
    }
    if all(isinstance(b.get(Keys.MASK), torch.Tensor) for b in batch):  # lesion masks on the input grid
        out[Keys.MASK] = torch.stack([b[Keys.MASK] for b in batch])
    if Keys.RADIOMICS in batch[0]:  # radiomics and fusion models (breastai.models.fusion)
        out[Keys.RADIOMICS] = torch.as_tensor(np.stack([np.asarray(b[Keys.RADIOMICS]) for b in batch]), dtype=torch.float32)
    return out


def _forward(model: nn.Module, x: torch.Tensor, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Image models take ``x``; radiomics and fusion models also get the lesions' feature vectors."""
    if Keys.RADIOMICS in batch:
        return model(x, radiomics=batch[Keys.RADIOMICS].to(device, non_blocking=True))
    return model(x)




def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to ``min_ratio``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def make_optimizer(model: nn.Module, tc: dict[str, Any], steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (norm and bias parameters not decayed, the standard for fine-tuning) and its per-step
    warm-up + cosine schedule, from the ``train`` section of a config."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc["lr"])
    schedule = warmup_cosine(steps_per_epoch * tc["epochs"], steps_per_epoch * tc["warmup_epochs"], tc["min_lr_ratio"])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resume_training(last_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, tc: dict[str, Any],
                    ema: torch.optim.swa_utils.AveragedModel | None = None) -> tuple[int, dict[str, Any], list[float]]:
    """Restore a run from its ``last.pt``: weights, optimiser, schedule (and weight average).

    Returns:
        The epoch to start at, the early-stopping state (``auc``: the best validation score, its
        ``epoch``, ``stale`` epochs since) and the seconds of the epochs done. A run that had stopped
        early starts at ``tc["epochs"]``: training again would undo that decision.

    Raises:
        FileNotFoundError: no ``last.pt``.
        ValueError: the run kept a weight average and this one does not, or the reverse.
    """
    from breastai.models.checkpoint_io import load_checkpoint

    if not last_path.is_file():
        raise FileNotFoundError(f"--resume: no {last_path} to continue from")
    last = load_checkpoint(last_path, map_location=device, resume=True)
    model.load_state_dict(last.weights)
    if ema is not None:
        if last.ema is None:
            raise ValueError(f"--resume: {last_path} was written without train.ema; resume with the same config")
        ema.load_state_dict(last.ema)
    optimizer.load_state_dict(last.optimizer)
    scheduler.load_state_dict(last.scheduler)
    best = dict(last.early_stop)
    start = tc["epochs"] if best["stale"] >= tc["early_stop_patience"] else last.epoch + 1
    return start, best, list(last.epoch_seconds or [])


def weight_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics, or None.

    ``W_ema <- decay * W_ema + (1 - decay) * W`` after every optimiser step (PyTorch's
    ``AveragedModel``). On a few hundred images one epoch's weights move a lot from one epoch to the
    next; the average is a smoother model for selection, calibration and inference.

    Args:
        model: the (unwrapped) model being trained.
        decay: per-step decay in [0, 1); 0 disables the average.
    """
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"train.ema must be in [0, 1), got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain fp32 on CPU."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    channels_last: bool = False,
    grad_clip: float = 0.0,
    epoch: int = 0,
    progress: bool = True,
    aux_loss: Callable[[dict[str, Any], torch.device], torch.Tensor] | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    batch_loss: Callable[[Any, dict[str, Any], torch.device], torch.Tensor] | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss (averaged over ranks).

    The loss is ``loss_fn(logits, labels)``, or ``batch_loss(output, batch, device)`` when given:
    for models whose output is not one logit per image or whose targets are not the labels
    (a segmenter's :class:`~breastai.models.segmenter.SegOutput` against the batch's masks).

    ``aux_loss(batch, device)``, called right after the forward pass, is added to the loss
    (e.g. :class:`breastai.attention.LesionAttentionLoss`). ``ema`` (from :func:`weight_ema`) is
    updated after every optimiser step.
    """
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and dist.is_main()), mininterval=2)
    for batch in bar:
        x = batch[Keys.IMAGE].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch[Keys.LABEL].to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = _forward(model, x, batch, device)
            loss = batch_loss(out, batch, device) if batch_loss is not None else loss_fn(out.float(), y)
            if aux_loss is not None:
                loss = loss + aux_loss(batch, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}; lower train.lr")
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module if hasattr(model, "module") else model)
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    sums = dist.gather_objects((total, count))
    return sum(s for s, _ in sums) / max(1, sum(c for _, c in sums))


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = False,
    flip: bool = False,
    features: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Logits for every sample of ``loader``, gathered across ranks and de-duplicated.

    With ``flip``, a sample's logit is the mean of the logits of its image and of the image
    mirrored left to right (``eval.flip_average``).

    Returns arrays ``index``, ``logit``, ``label`` sorted by dataset index, and ``case_id``; with
    ``features`` (intermediate module names, possibly none) also ``features``: the out-of-distribution
    detector's feature groups of the unmirrored images (:func:`breastai.models.ood.model_features`:
    each layer's channel means, then the embedding the head reads), each (N, D_l).
    """
    model.eval()
    raw = model.module if hasattr(model, "module") else model
    idx, logits, labels, ids, groups = [], [], [], [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not (progress and dist.is_main()), mininterval=2):
        x = batch[Keys.IMAGE].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # The detector's features come from the scoring pass (the first; mirrored views run after it).
        tap = FeatureTap(raw, features) if features is not None else nullcontext()
        with autocast(device, amp):
            with tap:
                z = _forward(model, x, batch, device).float()
                if flip:
                    z = mirror_average(z, lambda v: _forward(model, v, batch, device), x)
            if features is not None:
                r = batch[Keys.RADIOMICS].to(device, non_blocking=True) if Keys.RADIOMICS in batch else None
                groups.append(tap.groups() or model_features(raw, features, x, r))
        idx.append(batch[Keys.INDEX].numpy())
        logits.append(z.cpu().numpy())
        labels.append(batch[Keys.LABEL].numpy())
        ids.extend(batch[Keys.CASE_ID])
    local = (
        np.concatenate(idx) if idx else np.zeros(0, int),
        np.concatenate(logits) if logits else np.zeros(0),
        np.concatenate(labels) if labels else np.zeros(0),
        ids,
        [np.concatenate(g) for g in zip(*groups)] if groups else [],
    )
    parts = dist.gather_objects(local)
    all_idx = np.concatenate([p[0] for p in parts])
    all_logit = np.concatenate([p[1] for p in parts])
    all_label = np.concatenate([p[2] for p in parts])
    all_ids = [i for p in parts for i in p[3]]
    # DistributedSampler pads the last shard by repeating samples: keep the first copy.
    _, first = np.unique(all_idx, return_index=True)
    out = {
        "index": all_idx[first],
        "logit": all_logit[first],
        "label": all_label[first],
        "case_id": np.array([all_ids[i] for i in first], dtype=object),
    }
    if features is not None:
        shards = [p[4] for p in parts if p[4]]
        out["features"] = [np.concatenate(g)[first] for g in zip(*shards)] if shards else []
    return out


def reseed_worker(worker_id: int) -> None:
    """Give each DataLoader worker after the first its own augmentation stream.

    Workers get copies of the transforms' random state; torch and ``random`` are reseeded per
    worker by PyTorch, MONAI's per-transform states are not, so every worker would repeat the
    same draws. Worker 0 keeps the main process's stream (one worker = no worker, exactly).
    """
    info = torch.utils.data.get_worker_info()
    if worker_id > 0 and info is not None and hasattr(info.dataset, "transform"):
        info.dataset.transform.set_random_state(seed=torch.initial_seed() % 2**32)


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch alike."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
