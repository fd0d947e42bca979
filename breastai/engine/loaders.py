"""Datasets and loaders of a run: MONAI datasets over the train or eval preset, samplers and seeding per rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from breastai.core import distributed as dist
from breastai.data.transforms import build_transforms
from breastai.engine.loops import collate, reseed_worker
from breastai.models.radiomics_fit import needs_radiomics
from breastai.radiomics.dataset import radiomics_matrix
from breastai.radiomics.transform import radiomics_transform


def build_dataset(cfg: dict[str, Any], records: Sequence[dict[str, Any]], train: bool) -> Dataset:
    """A MONAI dataset over ``records`` with the train or eval preset; the deterministic prefix is cached.

    Radiomics models get the lesion's feature vector (``radiomics``) from the preset itself, measured
    on the image the dataset decodes (cached per row, so folds and epochs reuse it).
    """
    items = [{**r, "index": i} for i, r in enumerate(records)]
    full_image = []
    mode = cfg["data"]["cache"]
    if needs_radiomics(cfg):
        rad = radiomics_transform(cfg)
        items = rad.keyed(items)  # a row without a mask is refused before any image is read
        full_image.append(rad)
        if mode != "memory":
            # These datasets run the preset in loader workers, whose cache dies with them: measure
            # here, once, where the model's feature selection and the .npz can see the result.
            radiomics_matrix(cfg, records)
    transform = build_transforms(cfg, train=train, full_image=full_image)
    if mode == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=None, progress=False, copy_cache=False)
    if mode == "disk":
        cache_dir = cfg["data"]["cache_dir"] or str(Path(cfg["output_dir"]) / ".cache")
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    return Dataset(items, transform)


def make_loader(ds: Dataset, cfg: dict[str, Any], train: bool, labels: np.ndarray | None, epoch: int) -> DataLoader:
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
