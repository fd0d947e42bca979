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


def synth_rows(datalist: Path) -> list[dict]:
    """The rows of a synthetic datalist with absolute paths, to be edited and written elsewhere."""
    import csv

    rows = list(csv.DictReader(open(datalist)))
    for r in rows:
        r["image"] = str(datalist.parent / r["image"])
        r["mask"] = ";".join(str(datalist.parent / m) for m in r["mask"].split(";") if m)
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a CSV datalist at ``path`` (columns of the first row)."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def tiny_config():
    """A function building a config that trains in seconds on the synthetic set."""
    return _tiny_config


def _tiny_config(datalist: Path, out: Path, *extra: str) -> dict:
    """A config that trains in seconds on the synthetic set."""
    from breastai.core.config import load_config

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


# --- a tiny trained checkpoint shared by the predict tests (test_predict*.py) ---

PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PID-7734521"


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, synth_datalist) -> Path:
    from breastai.engine.run import main

    out = main(_tiny_config(synth_datalist, tmp_path_factory.mktemp("run")))
    return Path(out["run_dir"]) / "best.pt"


@pytest.fixture(scope="session")
def predictor(ckpt):
    from breastai.inference.predictor import Predictor

    return Predictor.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="session")
def sample(synth_datalist) -> tuple[Path, Path]:
    """One synthetic image and its mask."""
    import csv

    row = next(csv.DictReader(open(synth_datalist)))
    base = synth_datalist.parent
    return base / row["image"], base / row["mask"].split(";")[0]


def write_grey_dicom(path: Path, pixels, sop_uid: str = "1.2.826.0.1.3680043.8.498.12345") -> Path:
    """An 8-bit MONOCHROME2 DICOM of ``pixels`` carrying PATIENT_NAME / PATIENT_ID."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.asarray(pixels).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def predict_cli(argv: list[str]) -> int:
    """``breastai predict ...`` through its own parser, returning the exit status."""
    import argparse

    from breastai.cli.predict import add_parser

    p = argparse.ArgumentParser(prog="breastai")
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="session")
def mg_ckpt(tmp_path_factory, synth_datalist) -> Path:
    """A tiny checkpoint that records MG as its training modality (``data.modality=MG``, the setting for a
    datalist without a ``modality`` column), so predict and serve accept mammograms and refuse the rest."""
    from breastai.engine.run import main

    out = main(_tiny_config(synth_datalist, tmp_path_factory.mktemp("run_mg"), "data.modality=MG"))
    return Path(out["run_dir"]) / "best.pt"


# --- a tiny trained lesion segmenter (test_segmentation.py, test_auto_outline.py) ---


def disc(shape, centre, radius):
    """A boolean disc of ``radius`` pixels at ``centre`` (row, col) on a grid of ``shape``."""
    import numpy as np

    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2


def blob_image(size, lesions, seed=0):
    """A noisy grey uint8 image of ``size`` with a bright disc per ``(row, col, radius)`` in ``lesions``, and their mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = (rng.random(size) * 60).astype(np.uint8)
    mask = np.zeros(size, bool)
    for r, c, radius in lesions:
        mask |= disc(size, (r, c), radius)
    img[mask] = 200
    return img, mask


def blob_datalist(folder: Path, n: int = 32, size=(80, 96), pairs: bool = False) -> Path:
    """Bright discs on noise (one image in four without a lesion, empty mask), as a CSV datalist in ``folder``;
    with ``pairs`` one lesion image in three has a second disc, apart from the first."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = (rng.random(size) * 60).astype(np.uint8)
        mask = np.zeros(size, np.uint8)
        label = "normal"
        if i % 4:
            mask[disc(size, (int(rng.integers(25, 55)), int(rng.integers(25, 70))), int(rng.integers(8, 14)))] = 255
            if pairs and i % 3 == 0:  # a second disc in the corner the first one cannot reach
                mask[disc(size, (int(rng.integers(62, 70)), int(rng.integers(80, 88))), int(rng.integers(6, 9)))] = 255
            img[mask > 0] = 200
            label = "benign" if i % 2 else "malignant"
        Image.fromarray(img).save(folder / f"i{i}.png")
        Image.fromarray(mask).save(folder / f"i{i}_mask.png")
        rows.append({"case_id": f"c{i}", "image": f"i{i}.png", "mask": f"i{i}_mask.png", "label": label, "group": f"g{i}"})
    return write_rows(folder / "dl.csv", rows)


def seg_config(folder: Path, *extra: str, n: int = 32, pairs: bool = False) -> dict:
    """A segmenter config that trains unet_small at 64 px on :func:`blob_datalist` in ~5-15 s."""
    from breastai.core.config import load_config

    root = Path(__file__).resolve().parents[1]
    return load_config(root / "configs" / "busi_seg.yaml", [
        f"data.datalist={blob_datalist(folder, n, pairs=pairs)}", "model.name=unet_small", "model.pretrained=false", "preprocess.size=64",
        "train.epochs=20", "train.batch_size=8", "train.lr=1e-2", "train.early_stop_patience=20", "eval.bootstrap=0",
        f"output_dir={folder / 'runs'}", "log.progress=false", "augment.enabled=false", "device=cpu", *extra])


@pytest.fixture(scope="session")
def seg_ckpt(tmp_path_factory) -> Path:
    """A unet_small segmenter trained on :func:`blob_datalist` with pairs of discs (a real one: it finds them).

    Its presence threshold is fixed at 0.5 (lesion images score about 0.85-0.9, empty ones about
    0.2), so that the tests built on it do not depend on where six validation lesions put it.
    """
    from breastai.engine.run import main
    from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint

    out = main(seg_config(tmp_path_factory.mktemp("seg"), "data.val_fraction=0.25", "log.tensorboard=false", pairs=True))
    ckpt = load_checkpoint(Path(out["run_dir"]) / "best.pt")
    ckpt.threshold = 0.5
    return save_checkpoint(Path(out["run_dir"]) / "best.pt", ckpt)
