"""The datalist reader/writer: validation errors name the row, relative paths, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.data.datalist import DatalistError, read_datalist, write_datalist


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    for name in ("a.png", "b.png", "a_m1.png", "a_m2.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / name)
    return d


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_relative_paths_resolve_against_datalist(tmp_path, files):
    p = _csv(tmp_path / "l.csv", ["image,mask,label", "img/a.png,img/a_m1.png;img/a_m2.png,benign", "img/b.png,,malignant"])
    recs = read_datalist(p, classes=["benign", "malignant"])
    assert recs[0]["image"] == str(files / "a.png")
    assert recs[0]["mask"] == [str(files / "a_m1.png"), str(files / "a_m2.png")]
    assert recs[1]["mask"] == []
    assert [r["case_id"] for r in recs] == ["a", "b"]  # defaults to the file stem
    assert [r["group"] for r in recs] == ["a", "b"]  # defaults to the case_id
    assert recs[0]["fold"] is None and recs[0]["split"] == ""


@pytest.mark.parametrize(
    "row, message",
    [
        ("img/missing.png,benign,,", "row 3: file not found: .*missing.png"),
        ("img/b.png,cancer,,", "row 3: unknown label 'cancer'"),
        ("img/b.png,benign,x,", "row 3: 'fold' must be an integer, got 'x'"),
        ("img/b.png,benign,,holdout", "row 3: 'split' must be train, val or test, got 'holdout'"),
        (",benign,,", "row 3: empty 'image'"),
        ("img/b.png,,,", "row 3: empty 'label'"),
    ],
)
def test_errors_name_the_row(tmp_path, files, row, message):
    p = _csv(tmp_path / "l.csv", ["image,label,fold,split", "img/a.png,benign,0,train", row])
    with pytest.raises(DatalistError, match=message) as exc:
        read_datalist(p, classes=["benign", "malignant"])
    assert str(p) in str(exc.value)


def test_missing_mask_and_duplicate_case_id(tmp_path, files):
    p = _csv(tmp_path / "l.csv", ["case_id,image,mask,label", "x,img/a.png,img/nomask.png,benign"])
    with pytest.raises(DatalistError, match="row 2: file not found: .*nomask.png"):
        read_datalist(p)
    assert read_datalist(p, check_files=False)[0]["mask"][0].endswith("nomask.png")
    p = _csv(tmp_path / "d.csv", ["case_id,image,label", "x,img/a.png,benign", "x,img/b.png,benign"])
    with pytest.raises(DatalistError, match="row 3: duplicate case_id 'x'"):
        read_datalist(p)


def test_empty_and_unparseable(tmp_path):
    with pytest.raises(DatalistError, match="file not found"):
        read_datalist(tmp_path / "none.csv")
    p = _csv(tmp_path / "e.csv", ["image,label"])
    with pytest.raises(DatalistError, match="no rows"):
        read_datalist(p)
    j = tmp_path / "bad.json"
    j.write_text("{not json")
    with pytest.raises(DatalistError, match="cannot parse"):
        read_datalist(j)


def test_inference_list_without_labels(tmp_path, files):
    p = _csv(tmp_path / "l.csv", ["image", "img/a.png"])
    assert read_datalist(p, require_label=False)[0]["label"] == ""


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip(tmp_path, files, suffix):
    rows = [
        {"case_id": "c1", "image": str(files / "a.png"), "mask": [str(files / "a_m1.png"), str(files / "a_m2.png")],
         "label": "benign", "group": "g1", "fold": 2, "split": "train", "abnormality": "CIRC"},
        {"case_id": "c2", "image": str(files / "b.png"), "mask": "", "label": "malignant", "group": "g1",
         "fold": None, "split": "test"},
    ]
    out = tmp_path / "sub" / f"list{suffix}"
    write_datalist(rows, out)
    text = out.read_text()
    assert str(tmp_path) not in text and "../img/a.png" in text  # relative paths
    recs = read_datalist(out)
    assert [r["case_id"] for r in recs] == ["c1", "c2"]
    assert recs[0]["image"] == str(files / "a.png") and len(recs[0]["mask"]) == 2
    assert (recs[0]["fold"], recs[1]["fold"]) == (2, None)
    assert (recs[0]["split"], recs[1]["split"]) == ("train", "test")
    assert recs[0]["abnormality"] == "CIRC" and recs[1]["abnormality"] == ""
    # Writing what was read gives the same file.
    write_datalist(recs, tmp_path / "sub" / f"again{suffix}")
    assert (tmp_path / "sub" / f"again{suffix}").read_text() == text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # atomic: no temp left


def test_monai_sections(tmp_path, files):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({
        "training": [{"image": "img/a.png", "label": "benign"}],
        "validation": [{"image": "img/b.png", "label": "malignant"}],
    }))
    recs = read_datalist(p)
    assert [r["split"] for r in recs] == ["", "val"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from breastai.core.files import atomic_write, atomic_write_bytes

    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_csv_quotes_case_ids_with_commas(tmp_path):
    import csv

    from breastai.core.files import atomic_write_csv

    atomic_write_csv(tmp_path / "p.csv", ["case_id", "probability", "note"],
                     [{"case_id": "left, upper", "probability": 0.25, "note": None}])
    assert list(csv.DictReader(open(tmp_path / "p.csv"))) == [{"case_id": "left, upper", "probability": "0.250000", "note": ""}]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_byte_order_mark_is_read(tmp_path, files, suffix):
    """Spreadsheet programs save "CSV UTF-8" with a byte-order mark; it is not part of the first column's name."""
    p = tmp_path / f"bom{suffix}"
    text = "image,label\nimg/a.png,benign\n" if suffix == ".csv" else json.dumps([{"image": "img/a.png", "label": "benign"}])
    p.write_bytes(text.encode("utf-8-sig"))
    recs = read_datalist(p, classes=["benign", "malignant"])
    assert [(r["image"], r["label"]) for r in recs] == [(str(files / "a.png"), "benign")]


def test_row_with_more_fields_than_the_header_is_refused(tmp_path, files):
    p = _csv(tmp_path / "l.csv", ["image,label", "img/a.png,benign", "", "img/b.png,malignant,left, upper"])
    with pytest.raises(DatalistError, match=r"row 4: 4 fields but the header names 2 columns \(extra: 'left', ' upper'\)") as exc:
        read_datalist(p)
    assert str(p) in str(exc.value)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_site_and_modality_columns_kept_and_written_first(tmp_path, files, suffix):
    rows = [{"case_id": "c1", "image": str(files / "a.png"), "label": "benign", "note": "x", "modality": "US",
             "site": "busi"},
            {"case_id": "c2", "image": str(files / "b.png"), "label": "benign"}]
    out = write_datalist(rows, tmp_path / f"l{suffix}")
    text = out.read_text()
    if suffix == ".csv":
        assert text.splitlines()[0] == "case_id,image,mask,label,group,fold,split,site,modality,note"
    recs = read_datalist(out)
    assert (recs[0]["site"], recs[0]["modality"], recs[1]["site"]) == ("busi", "US", "")
    # A datalist without them (written before they existed) reads as before, with no such key.
    old = _csv(tmp_path / "old.csv", ["image,label", "img/a.png,benign"])
    assert "site" not in read_datalist(old)[0]
