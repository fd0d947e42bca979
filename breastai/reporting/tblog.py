"""TensorBoard logging for a run: scalars per epoch, curves and image grids at the best epoch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from breastai.models.checkpoint import Checkpoint

__all__ = ["TBLogger", "log_best_epoch", "flat_hparams"]


class TBLogger:
    """A thin wrapper that does nothing when disabled (non-zero ranks, or ``log.tensorboard=false``)."""

    def __init__(self, log_dir: Path | None):
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                if v is not None and np.isfinite(v):
                    self.writer.add_scalar(k, float(v), step)

    def image_grid(self, tag: str, images: torch.Tensor, step: int, scores: list[float] | None = None) -> None:
        """A grid of network inputs (first channel); scores, when given, are drawn as a bar under each tile."""
        if not self.writer or images.numel() == 0:
            return
        from torchvision.utils import make_grid

        x = images[:, :1].float().clamp(0, 1)
        if scores is not None:
            # A bar whose length is the score: readable without text rendering.
            h, w = x.shape[-2:]
            bar = torch.zeros(x.shape[0], 1, max(4, h // 16), w)
            for i, s in enumerate(scores):
                bar[i, :, :, : int(round(w * float(s)))] = 1.0
            x = torch.cat([x, bar], 2)
        self.writer.add_image(tag, make_grid(x, nrow=int(np.ceil(np.sqrt(len(x)))), pad_value=0.5), step)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        if self.writer:
            self.writer.add_figure(tag, fig, step, close=True)

    def pr_curve(self, tag: str, labels: np.ndarray, probs: np.ndarray, step: int) -> None:
        if self.writer:
            self.writer.add_pr_curve(tag, labels.astype(bool), probs, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer:
            clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
            from torch.utils.tensorboard.summary import hparams

            # Written into this run's own event file (add_hparams would open a second writer).
            metric_dict = {f"hparam/{k}": float(v) for k, v in metrics.items()}
            for summary in hparams(clean, metric_dict):
                self.writer.file_writer.add_summary(summary)
            for k, v in metric_dict.items():
                self.writer.add_scalar(k, v)

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()


def log_best_epoch(tb: TBLogger, cfg: dict[str, Any], model: torch.nn.Module, val_ds: Any, val: dict[str, np.ndarray],
                   val_probs: np.ndarray, ckpt: Checkpoint) -> None:
    """Curves, confusion matrix, reliability diagram, a scored input grid and saliency maps at the best epoch.

    Args:
        tb: the run's logger (does nothing when disabled).
        cfg: the resolved config.
        model: the model with the best epoch's weights.
        val_ds: the validation dataset; ``val`` its predictions, ``val_probs`` their calibrated values.
        ckpt: the best checkpoint (threshold, classes, best epoch, model).
    """
    if tb.writer is None:
        return
    from breastai.models.calibration import apply_temperature
    from breastai.reporting import plots
    from breastai.reporting.metrics import binary_metrics, ece

    step, y = ckpt.best_epoch, val["label"].astype(int)
    tb.figure("best/roc", plots.figure_roc(y, val_probs, title="validation ROC"), step)
    tb.pr_curve("best/pr", y, val_probs, step)
    m = binary_metrics(y, val_probs, ckpt.threshold)
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    tb.figure("best/confusion", plots.figure_confusion(cm, ckpt.classes), step)
    raw = apply_temperature(val["logit"], 1.0)
    tb.figure("best/reliability", plots.figure_calibration(y, {"before scaling": raw, "after scaling": val_probs}), step)
    tb.scalars({"ece/val_uncalibrated": ece(y, raw), "ece/val_calibrated": ece(y, val_probs)}, step)
    n = min(cfg["log"]["image_grid"], len(val_ds))
    order = np.argsort(val["index"])[:n]
    imgs = torch.stack([val_ds[int(val["index"][i])]["image"] for i in order])
    tb.image_grid("best/val_inputs_scored", imgs, step, scores=[float(val_probs[i]) for i in order])
    if ckpt.model.saliency_layer:
        from breastai.models.saliency import saliency_grid

        masks = torch.stack([val_ds[int(val["index"][i])]["mask"] for i in order])
        if "radiomics" not in val_ds[int(val["index"][order[0]])]:  # Grad-CAM of a fusion model needs its features
            tb.writer.add_images("best/val_saliency", saliency_grid(model, imgs, masks), step)


def flat_hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config values shown in TensorBoard's hparams table."""
    keys = [("model", "name"), ("preprocess", "mode"), ("preprocess", "size"), ("train", "lr"), ("train", "epochs"),
            ("train", "batch_size"), ("train", "weight_decay"), ("train", "class_balance"), ("train", "ema"),
            ("train", "attention_loss"), ("eval", "flip_average")]
    return {f"{a}.{b}": cfg[a][b] for a, b in keys}
