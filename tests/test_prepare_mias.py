"""mini-MIAS preparation: Info.txt parsing, flipped coordinates, masks, groups."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.data.datalist import read_datalist
from breastai.data.prepare import prepare_mias
from breastai.data.prepare.mias import MiasParseError, finding_mask, parse_info

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MIAS = DATA / "mias"

SNIPPET = """\
header text that is not a film line
1st column: MIAS database reference number.
mdb001 G CIRC B 100 30 10
mdb002 G CIRC B 50 60 5
mdb003 D NORM
mdb004 F CALC M *NOTE 3*
mdb005 F CIRC B 30 40 6
mdb005 F CIRC B 70 80 4
mdb006 F MISC M 90 10 3
=================================================================
"""


def _synthetic(tmp_path: Path, text: str = SNIPPET, size: int = 128) -> Path:
    root = tmp_path / "mias"
    root.mkdir()
    (root / "Info.txt").write_text(text)
    for k in range(1, 7):
        Image.fromarray(np.full((size, size), 10 * k, np.uint8)).save(root / f"mdb{k:03d}.png")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_parse_snippet(tmp_path):
    f = parse_info(_synthetic(tmp_path) / "Info.txt")
    assert [x.ref for x in f] == ["mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb005", "mdb006"]
    assert (f[0].tissue, f[0].abnormality, f[0].severity, f[0].x, f[0].y, f[0].radius) == ("G", "CIRC", "B", 100, 30, 10)
    assert f[2].severity == "" and not f[2].has_coordinates
    assert f[3].severity == "M" and not f[3].has_coordinates
    assert [x.patient for x in f] == [1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(
    "line, problem",
    [
        ("mdb001 X CIRC B 1 2 3", "tissue"),
        ("mdb001 G BLOB B 1 2 3", "abnormality"),
        ("mdb001 G CIRC 1 2 3", "severity"),
        ("mdb001 G CIRC B 1 2", "three integers"),
    ],
)
def test_parse_errors_name_line(tmp_path, line, problem):
    p = tmp_path / "Info.txt"
    p.write_text("head\n" + line + "\n")
    with pytest.raises(MiasParseError, match=problem) as exc:
        parse_info(p)
    assert "line 2" in str(exc.value) and str(p) in str(exc.value)


def test_mask_flipped_centre_and_area(tmp_path):
    f = parse_info(_synthetic(tmp_path) / "Info.txt")[0]  # x=100, y=30 from the bottom, r=10
    m = finding_mask((1024, 1024), f)
    assert m[1024 - 30, 100] and not m[30, 100]
    rows, cols = np.nonzero(m)
    assert abs(rows.mean() - (1024 - 30)) < 0.5 and abs(cols.mean() - 100) < 0.5
    assert abs(m.sum() - np.pi * 10**2) / (np.pi * 10**2) < 0.05
    box = finding_mask((1024, 1024), f, "box")
    assert box.sum() == 21 * 21


def test_prepare_synthetic(tmp_path):
    root = _synthetic(tmp_path)
    out = tmp_path / "out" / "list.csv"
    rep = prepare_mias(root, out)
    rows = _rows(out)
    assert [r["case_id"] for r in rows] == ["mdb001_1", "mdb002_1", "mdb005_1", "mdb005_2", "mdb006_1"]
    assert rep.counts == {"benign": 4, "malignant": 1}
    assert rep.dropped == [("mdb004_1", "finding without coordinates")]
    # Left/right films of one patient share a group; both findings of mdb005 too.
    g = {r["case_id"]: r["group"] for r in rows}
    assert g["mdb001_1"] == g["mdb002_1"] != g["mdb005_1"] == g["mdb005_2"] == g["mdb006_1"]
    assert rows[0]["mask"] == "masks/mdb001_1.png"  # relative to the datalist, default mask dir
    assert (rows[0]["abnormality"], rows[0]["tissue"], rows[0]["x"], rows[0]["y"], rows[0]["radius"]) == (
        "CIRC", "G", "100", "30", "10")
    assert {(r["site"], r["modality"]) for r in rows} == {("mias", "MG")}
    recs = read_datalist(out)
    m = np.asarray(Image.open(recs[0]["mask"][0])) > 0
    assert m.shape == (128, 128) and m[128 - 30, 100] and not m[30, 100]
    # mdb005 has two findings of different masks; centres flipped: row = 128 - y.
    m1 = np.asarray(Image.open(recs[2]["mask"][0])) > 0
    assert m1[128 - 40, 30] and not m1[40, 30]
    assert abs(m1.sum() - np.pi * 36) / (np.pi * 36) < 0.15
    assert "mdb004_1" in rep.summary() and "benign 4" in rep.summary()
    assert not list((tmp_path / "out" / "masks").glob(".*"))  # no temp files left behind


def test_keep_uncoordinated(tmp_path):
    root = _synthetic(tmp_path)
    out = tmp_path / "list.json"
    rep = prepare_mias(root, out, mask_dir=tmp_path / "m", keep_uncoordinated=True)
    recs = read_datalist(out)
    r4 = [r for r in recs if r["case_id"] == "mdb004_1"][0]
    assert r4["mask"] == [] and r4["label"] == "malignant" and r4["x"] == ""
    assert rep.dropped == [] and rep.counts == {"benign": 4, "malignant": 2}
    assert len(list((tmp_path / "m").glob("*.png"))) == 5


def test_real_info():
    if not (MIAS / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {MIAS} (set BREASTAI_DATA)")
    f = parse_info(MIAS / "Info.txt")
    assert len({x.ref for x in f}) == 322
    abn = [x for x in f if x.severity]
    assert sum(x.severity == "B" for x in abn) == 69 and sum(x.severity == "M" for x in abn) == 54
    assert sorted(x.ref for x in abn if not x.has_coordinates) == ["mdb059", "mdb216", "mdb233", "mdb245"]
    assert [(x.severity, x.x, x.y, x.radius) for x in f if x.ref == "mdb144"] == [("B", 233, 994, 29), ("M", 313, 540, 27)]
    assert len([x for x in f if x.ref == "mdb005"]) == 2


def test_real_prepare(tmp_path):
    if not (MIAS / "Info.txt").is_file():
        pytest.skip(f"mini-MIAS not found at {MIAS} (set BREASTAI_DATA)")
    out = tmp_path / "mias.csv"
    rep = prepare_mias(MIAS, out)
    assert rep.counts == {"benign": 68, "malignant": 51}
    assert len(rep.dropped) == 4
    recs = {r["case_id"]: r for r in read_datalist(out, classes=["benign", "malignant"])}
    assert recs["mdb144_1"]["label"] == "benign" and recs["mdb144_2"]["label"] == "malignant"
    assert recs["mdb001_1"]["group"] == recs["mdb002_1"]["group"]
    # mdb005 finding 1: x=477, y=133 (from the bottom), r=30.
    m = np.asarray(Image.open(recs["mdb005_1"]["mask"][0])) > 0
    rows, cols = np.nonzero(m)
    assert abs(rows.mean() - (1024 - 133)) < 0.5 and abs(cols.mean() - 477) < 0.5
    assert abs(m.sum() - np.pi * 30**2) / (np.pi * 30**2) < 0.03
