"""Generic class-folder preparation on synthetic files."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.data.datalist import read_datalist
from breastai.cli.prepare import add_parser
from breastai.data.prepare import prepare_folder


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _tree(root: Path) -> None:
    _png(root / "benign" / "a.png")
    _png(root / "benign" / "a_mask.png", 255)
    _png(root / "benign" / "a_mask_1.png", 255)
    _png(root / "benign" / "sub" / "b.png")
    _png(root / "malignant" / "c.png")
    _png(root / "malignant" / "deep" / "er" / "c.png")  # same stem, other folder
    (root / "malignant" / "notes.txt").write_text("not an image")
    _png(root / ".hidden" / "x.png")
    _png(root / "benign" / ".ipynb_checkpoints" / "a-checkpoint.png")  # a copy of a.png, hidden


def test_prepare_folder_rows(tmp_path):
    root = tmp_path / "data"
    _tree(root)
    out = tmp_path / "lists" / "folder.csv"
    rep = prepare_folder(root, out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["benign_a", "benign_sub_b", "malignant_c", "malignant_deep_er_c"]
    assert rows[0]["mask"] == "../data/benign/a_mask.png;../data/benign/a_mask_1.png"
    assert rows[1]["mask"] == "" and rows[1]["image"] == "../data/benign/sub/b.png"
    assert all(r["group"] == r["case_id"] for r in rows)
    assert rep.counts == {"benign": 2, "malignant": 2} and rep.n_rows == 4
    recs = read_datalist(out, classes=["benign", "malignant"])
    assert len(recs[0]["mask"]) == 2 and Path(recs[0]["mask"][1]).is_file()


def test_no_mask_suffix_lists_masks_as_images(tmp_path):
    root = tmp_path / "data"
    _tree(root)
    rep = prepare_folder(root, tmp_path / "f.json", mask_suffix="")
    assert rep.counts == {"benign": 4, "malignant": 2}


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        prepare_folder(tmp_path / "missing", tmp_path / "x.csv")
    (tmp_path / "empty" / "benign").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        prepare_folder(tmp_path / "empty", tmp_path / "x.csv")
    _png(tmp_path / "twice" / "benign" / "y.png")
    _png(tmp_path / "twice" / "benign" / "y.jpg")
    with pytest.raises(ValueError, match=r"y.jpg and y.png: two images with one name"):
        prepare_folder(tmp_path / "twice", tmp_path / "x.csv")
    _png(tmp_path / "orph" / "benign" / "z_mask.png")
    with pytest.raises(ValueError, match="z_mask.png: mask file without a matching image"):
        prepare_folder(tmp_path / "orph", tmp_path / "x.csv")


def test_cli_parser(tmp_path, capsys):
    root = tmp_path / "data"
    _tree(root)
    parser = argparse.ArgumentParser(prog="breastai")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", "folder", str(root), "--out", str(tmp_path / "o.csv")])
    assert args.func(args) == 0
    assert "malignant 2" in capsys.readouterr().out
    assert (tmp_path / "o.csv").is_file()
    busi = parser.parse_args(["prepare", "busi", "R", "--out", "o.csv", "--include-normal", "--threshold", "0.7"])
    assert busi.include_normal and busi.threshold == 0.7 and not busi.keep_conflicts
    mias = parser.parse_args(["prepare", "mias", "R", "--out", "o.csv", "--shape", "box", "--keep-uncoordinated"])
    assert mias.shape == "box" and mias.keep_uncoordinated and mias.mask_dir is None
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "mias", "R", "--out", "o.csv", "--shape", "star"])


def test_only_image_files_count_gzip_included(tmp_path):
    """``.nii.gz`` is an image suffix; any other ``.gz`` (notes.csv.gz) is not."""
    from breastai.data.readers.registry import IMAGE_SUFFIXES, image_suffix

    assert image_suffix(tmp_path / "a.NII.GZ") == ".nii.gz" and ".gz" not in IMAGE_SUFFIXES
    for cls in ("benign", "malignant"):
        _png(tmp_path / "root" / cls / "a.png")
        (tmp_path / "root" / cls / "notes.csv.gz").write_bytes(b"\x1f\x8b")
    report = prepare_folder(tmp_path / "root", tmp_path / "dl.csv")
    assert report.counts == {"benign": 1, "malignant": 1}


def test_site_and_modality_columns(tmp_path):
    root = tmp_path / "clinicA"
    _tree(root)
    prepare_folder(root, tmp_path / "a.csv")
    with open(tmp_path / "a.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    # Written right after the core columns, so datalists of several preparers line up.
    assert reader.fieldnames[7:9] == ["site", "modality"]
    assert {(r["site"], r["modality"]) for r in rows} == {("clinicA", "")}
    prepare_folder(root, tmp_path / "b.json", site="hospital-b", modality="US")
    recs = read_datalist(tmp_path / "b.json")
    assert {(r["site"], r["modality"]) for r in recs} == {("hospital-b", "US")}
