"""Shared fixtures: the real-data folder (skipped when absent) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

DATA_ROOT = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def real_data(sub: str) -> Path:
    """Path to a folder of the shared real data, or skip the test with the reason."""
    p = DATA_ROOT / sub
    if not p.exists():
        pytest.skip(f"real data not found at {p} (set BREASTAI_DATA to the shared data folder)")
    return p


@pytest.fixture(scope="session")
def synth_datalist(tmp_path_factory) -> Path:
    """A small synthetic ultrasound lesion dataset on disk (PNG images, masks, datalist)."""
    from breastai.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("synth"), n_per_class=16, size=64, seed=0)


@pytest.fixture
def tiny_config():
    """A function building a config that trains in seconds on the synthetic set."""
    return _tiny_config


def _tiny_config(datalist: Path, out: Path, *extra: str) -> dict:
    """A config that trains in seconds on the synthetic set."""
    from breastai.config import load_config

    return load_config(
        None,
        [
            f"data.datalist={datalist}",
            f"output_dir={out}",
            "run_name=t",
            "device=cpu",
            "preprocess.size=64",
            "preprocess.min_crop=16",
            "train.epochs=2",
            "train.batch_size=8",
            "train.warmup_epochs=1",
            "model.pretrained=false",
            "model.name=small_cnn",
            "log.progress=false",
            "log.image_grid=4",
            "eval.bootstrap=100",
            *extra,
        ],
    )
