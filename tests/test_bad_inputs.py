"""A corpus of bad inputs, made here, run through every command that reads images.

Each case must give a specific message naming the file and the problem; a batch (predict,
radiomics) must finish the good inputs and report every bad one; a command that fails as a whole
must leave earlier outputs as they were. docs/usage.md ("What is refused") lists the same cases.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import write_grey_dicom
from PIL import Image

from breastai.cli import main

_RNG = np.random.default_rng(7)


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _good(path: Path) -> Path:
    return _png(path, _RNG.integers(0, 255, (96, 96)))


def _truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(_RNG.integers(0, 255, (96, 96)).astype(np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _truncated_dicom(path: Path) -> Path:
    full = write_grey_dicom(path.with_suffix(".full.dcm"), _RNG.integers(0, 255, (96, 96)))
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _huge_png(path: Path) -> Path:
    Image.new("1", (13000, 13000)).save(path)  # a few KB on disk, 169 M pixels declared
    return path


def _nan_tiff(path: Path) -> Path:
    arr = _RNG.random((96, 96)).astype(np.float32)
    arr[10, 10] = np.nan
    Image.fromarray(arr, mode="F").save(path)
    return path


def _dicom_header_lies(path: Path) -> Path:
    import pydicom

    write_grey_dicom(path, _RNG.integers(0, 255, (96, 96)))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 7, 18  # the pixel data holds 96x96
    # Name parts are redacted wherever they occur in a message ("Doe" in "does"): another name keeps the text whole.
    ds.PatientName = "Roe^Mary"
    ds.save_as(path)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# name -> (make the file, the phrase its error must carry). Masks of the right shape come with each.
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing.png": (lambda p: p, "file not found"),
    "empty.png": (lambda p: (p.write_bytes(b""), p)[1], "file is empty"),
    "garbage.png": (lambda p: (p.write_bytes(bytes(_RNG.integers(0, 255, 500, dtype=np.uint8))), p)[1],
                    "not a readable image"),
    "truncated.png": (_truncated_png, "truncated or corrupt image"),
    "tiny.png": (lambda p: _png(p, _RNG.integers(0, 255, (8, 8))), "too small"),
    "fifo.png": (_fifo, "not a regular file"),
    "truncated.dcm": (_truncated_dicom, "truncated or corrupt DICOM"),
    "huge.png": (_huge_png, "over the limit of"),
    "nan.tif": (_nan_tiff, "not finite"),
    "header_lies.dcm": (_dicom_header_lies, "the header does not describe its pixel data"),
}


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[Path], Path]:
    """The bad files, one good image and a mask that fits every 96x96 image."""
    folder = tmp_path / "in"
    folder.mkdir()
    mask = np.zeros((96, 96), np.uint8)
    mask[30:60, 30:60] = 255
    mask_path = _png(tmp_path / "mask.png", mask)
    bad = [make(folder / name) for name, (make, _) in CASES.items()]
    return _good(folder / "good.png"), bad, mask_path


def _phrase(source: str, command: str = "predict") -> str:
    name = Path(source).name
    if command == "radiomics" and name == "tiny.png":  # radiomics needs no 32-pixel input: the 96x96 mask misfits
        return "does not match"
    return CASES[name][1]


def test_predict_scores_the_good_input_and_names_every_bad_one(ckpt, corpus, tmp_path, capsys):
    good, bad, mask = corpus
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(good), *map(str, bad), "--out", str(out),
                 "--saliency", "none", "--device", "cpu"]) == 1
    rows = {Path(r["source"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert rows["good.png"]["error"] == "" and 0 <= float(rows["good.png"]["probability"]) <= 1
    for p in bad:
        err = rows[p.name]["error"]
        assert p.name in err and _phrase(p.name) in err, err
        assert rows[p.name]["probability"] == "" and rows[p.name]["label"] == ""
    assert f"{len(bad)} failed" in capsys.readouterr().out


def test_a_mask_that_does_not_fit_is_named(ckpt, corpus, tmp_path):
    good, _, _ = corpus
    small = _png(tmp_path / "small_mask.png", np.full((40, 40), 255))
    rec_out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(good), "--mask", str(small), "--out", str(rec_out),
                 "--saliency", "none", "--device", "cpu"]) == 1
    err = next(csv.DictReader(open(rec_out / "predictions.csv")))["error"]
    assert "small_mask.png" in err and "does not match" in err


def test_predict_that_fails_as_a_whole_leaves_earlier_results(ckpt, corpus, tmp_path):
    good, bad, _ = corpus
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(good), "--out", str(out), "--saliency", "gradcam",
                 "--device", "cpu"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    empty = tmp_path / "no_images"
    empty.mkdir()
    assert main(["predict", "--checkpoint", str(broken), str(good), "--out", str(out), "--device", "cpu"]) == 2
    assert main(["predict", "--checkpoint", str(ckpt), str(empty), "--out", str(out), "--device", "cpu"]) == 1
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def _datalist(path: Path, images: list[Path], mask: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "mask", "label", "case_id"])
        for k, img in enumerate(images):
            w.writerow([str(img), str(mask), "benign" if k % 2 else "malignant", img.name])
    return path


def test_radiomics_measures_the_good_rows_and_names_every_bad_one(corpus, tmp_path, capsys):
    good, bad, mask = corpus
    bad = [p for p in bad if p.name != "missing.png"]  # a datalist with a missing file is refused as a whole (below)
    dl = _datalist(tmp_path / "dl.csv", [good, *bad], mask)
    out = tmp_path / "features.csv"
    assert main(["radiomics", "--data", str(dl), "--out", str(out), "--no-progress"]) == 1
    rows = list(csv.DictReader(open(out)))
    assert [r["case_id"] for r in rows] == ["good.png"]
    err = capsys.readouterr().err
    for p in bad:
        assert any(p.name in line and _phrase(p.name, "radiomics") in line for line in err.splitlines()), (p.name, err)


@pytest.mark.parametrize("name", [n for n in CASES if n != "missing.png"])
def test_evaluate_stops_on_a_bad_image_naming_it_and_keeps_the_earlier_report(ckpt, corpus, tmp_path, name,
                                                                             capsys):
    good, bad, mask = corpus
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    dl = _datalist(tmp_path / "dl.csv", [good, next(p for p in bad if p.name == name), _good(tmp_path / "g2.png")],
                   mask)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(dl), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert name in err and _phrase(name) in err and "Traceback" not in err
    assert (out / "metrics.json").read_text() == "{}"


def test_a_datalist_naming_a_missing_file_is_refused_before_any_work(ckpt, corpus, tmp_path, capsys):
    good, bad, mask = corpus
    dl = _datalist(tmp_path / "dl.csv", [good, bad[0]], mask)
    assert main(["train", f"data.datalist={dl}", f"output_dir={tmp_path / 'runs'}", "model.name=small_cnn",
                 "model.pretrained=false"]) == 2
    err = capsys.readouterr().err
    assert "row 3" in err and "missing.png" in err and "file not found" in err
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(dl), "--out", str(tmp_path / "r"),
                 "--device", "cpu"]) == 2
    assert "missing.png" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
