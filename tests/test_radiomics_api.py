"""extract_features / features_for_datalist / CLI behaviour of breastai.radiomics."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.radiomics import (
    FeatureTable,
    RadiomicsInputError,
    available_families,
    default_families,
    extract_features,
    features_for_datalist,
)
from breastai.cli.radiomics import add_parser


def _lesion(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1
    img = np.clip(rng.normal(120, 25, (h, w)) - 40 * mask, 0, 255).round()
    return img, mask


def test_feature_table_shape_names_and_order() -> None:
    les = [_lesion(30 + 7 * i, 40 + 3 * i, i) for i in range(6)]
    t = extract_features([l[0] for l in les], [l[1] for l in les], ids=list("abcdef"), batch_size=4,
                         families=["morphology", "statistics", "histogram", "ivh", "local"])
    assert isinstance(t, FeatureTable)
    assert t.values.shape == (6, len(t.names)) and len(t) == 6
    assert t.ids == list("abcdef")
    assert len(set(t.names)) == len(t.names)
    assert {"morph2d_area", "stat_mean", "ih_entropy", "ivh_v10", "loc_peak_glob"} <= set(t.names)
    assert np.isfinite(t.values).all()
    # rows follow the input order although batches are sorted by size
    np.testing.assert_allclose(t.column("stat_mean"), [l[0][l[1]].mean() for l in les])
    with pytest.raises(KeyError):
        t.column("nope")
    text = t.to_csv_text()
    rows = list(csv.reader(text.splitlines()))
    assert rows[0][0] == "case_id" and rows[1][0] == "a" and len(rows) == 7


def test_families_registry_and_defaults() -> None:
    assert "autocorrelation" in available_families()
    assert "autocorrelation" not in default_families()
    img, m = _lesion(30, 30, 0)
    with pytest.raises(ValueError, match="unknown or unavailable"):
        extract_features([img], [m], families=["glcmx"])
    t = extract_features([img], [m], families=["autocorrelation"])
    assert t.names == ["morph2d_moran_i", "morph2d_geary_c"]


def test_fbs_and_resegmentation() -> None:
    les = [_lesion(30, 30, i) for i in range(3)]
    t = extract_features([l[0] for l in les], [l[1] for l in les], bin_width=10.0, families=["histogram"])
    for i, (img, m) in enumerate(les):
        v = img[m]
        lv = np.floor((v - v.min()) / 10) + 1
        assert t.column("ih_mean")[i] == pytest.approx(lv.mean())
    t = extract_features([les[0][0]], [les[0][1]], resegment_range=(60.0, 100.0), families=["statistics"])
    v = les[0][0][les[0][1]]
    assert t.column("stat_mean")[0] == pytest.approx(v[(v >= 60) & (v <= 100)].mean())
    with pytest.raises(RadiomicsInputError, match="re-segmentation"):
        extract_features([les[0][0]], [les[0][1]], resegment_range=(1000.0, None), families=["statistics"])


def test_texture_families_when_present() -> None:
    texture = pytest.importorskip("breastai.radiomics.texture")
    if not getattr(texture, "FAMILIES", None):
        pytest.skip("texture registry not available yet")
    img, m = _lesion(40, 40, 1)
    t = extract_features([img], [m], aggregation="2d")
    fam = next(iter(texture.FAMILIES))
    _, feats, aggs = texture.FAMILIES[fam]
    agg = next(a for a in aggs if a.startswith("2d"))
    assert f"{next(iter(feats))}_{agg}" in t.names


def _write(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path.name


@pytest.fixture()
def datalist(tmp_path: Path) -> Path:
    rows = []
    for i in range(3):
        img, m = _lesion(40 + 5 * i, 50, i)
        rows.append({"case_id": f"ok{i}", "image": _write(tmp_path / f"ok{i}.png", img),
                     "mask": _write(tmp_path / f"ok{i}_mask.png", m * 255), "label": "benign"})
    img, _ = _lesion(40, 50, 9)
    rows.append({"case_id": "empty", "image": _write(tmp_path / "e.png", img),
                 "mask": _write(tmp_path / "e_mask.png", np.zeros((40, 50))), "label": "benign"})
    one = np.zeros((40, 50))
    one[10, 10] = 255
    rows.append({"case_id": "onepx", "image": _write(tmp_path / "o.png", img),
                 "mask": _write(tmp_path / "o_mask.png", one), "label": "benign"})
    rows.append({"case_id": "size", "image": _write(tmp_path / "s.png", img),
                 "mask": _write(tmp_path / "s_mask.png", np.ones((30, 30)) * 255), "label": "benign"})
    rows.append({"case_id": "nomask", "image": _write(tmp_path / "n.png", img), "mask": "", "label": "benign"})
    p = tmp_path / "list.csv"
    with open(p, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case_id", "image", "mask", "label"])
        w.writeheader()
        w.writerows(rows)
    return p


def test_features_for_datalist_reports_bad_rows_and_goes_on(datalist: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "features.csv"
    table, errors = features_for_datalist(datalist, out, show_progress=False, families=["morphology", "statistics"])
    assert table.ids == ["ok0", "ok1", "ok2"]
    joined = "\n".join(errors)
    assert len(errors) == 4
    assert "'empty'" in joined and "mask is empty" in joined
    assert "'onepx'" in joined and "single pixel" in joined
    assert "'size'" in joined and "does not match" in joined
    assert "'nomask'" in joined and "no mask" in joined
    assert "skipped" in capsys.readouterr().err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["ok0", "ok1", "ok2"]
    assert float(rows[0]["stat_mean"]) == pytest.approx(table.column("stat_mean")[0])
    assert not [p for p in out.parent.iterdir() if p.name != "features.csv"]  # no temp file left


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="breastai")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes(datalist: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    code = _cli(["radiomics", "--data", str(datalist), "--out", str(out), "--bins", "16",
                 "--families", "statistics,histogram", "--no-progress"])
    assert code == 1 and out.is_file()  # written, but rows were skipped
    good = tmp_path / "good.csv"
    lines = datalist.read_text().splitlines()[:4]
    good.write_text("\n".join(lines) + "\n")
    assert _cli(["radiomics", "--data", str(good), "--out", str(out), "--families", "statistics",
                 "--no-progress", "--batch-size", "2"]) == 0
    assert _cli(["radiomics", "--data", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2


def test_aggregations_are_checked_and_a_comma_list_is_split(datalist: Path, tmp_path: Path, capsys) -> None:
    img, m = _lesion(40, 40, 1)
    with pytest.raises(ValueError, match="unknown texture aggregation.*offered: .*2d_avg"):
        extract_features([img], [m], families=["glcm"], aggregation="foo")
    with pytest.raises(ValueError, match="unknown texture aggregation"):
        extract_features([img], [m], families=["statistics"], aggregation=["2d", "foo"])  # not silently ignored
    # A datalist run is refused before any image is read (its only row here could not be read anyway).
    from breastai.radiomics.extract import features_for_datalist

    missing = tmp_path / "missing.csv"
    missing.write_text("case_id,image,mask,label\nc1,nowhere.png,nowhere_mask.png,benign\n")
    with pytest.raises(ValueError, match="unknown texture aggregation"):
        features_for_datalist(missing, tmp_path / "x.csv", families=["glcm"], aggregation="foo", show_progress=False)
    with pytest.raises(ValueError, match="unknown or unavailable feature families"):
        features_for_datalist(missing, tmp_path / "x.csv", families=["nope"], show_progress=False)
    from breastai.radiomics.extract import _check_aggregations

    fake = {"a": (None, {}, ("2d",)), "b": (None, {}, ("3d_avg",))}  # no shipped family lacks a 2D or 3D form
    with pytest.raises(ValueError, match="family b offers none of the aggregations"):
        _check_aggregations(["2d"], ["a", "b"], fake)
    both = extract_features([img], [m], families=["glcm", "glszm"], aggregation=["2d_avg", "3d"])
    # "3d" names every 3D form (glcm: 3d_avg and 3d_merged; glszm: 3d); "2d_avg" gives glszm its one 2D form.
    assert any(n.endswith("_2d_avg") for n in both.names) and any(n.endswith("_3d_merged") for n in both.names)
    assert not any(n.endswith("_2d_merged") or n.endswith("2.5d") for n in both.names)
    good = tmp_path / "good.csv"
    good.write_text("\n".join(datalist.read_text().splitlines()[:3]) + "\n")
    out = tmp_path / "f.csv"
    assert _cli(["radiomics", "--data", str(good), "--out", str(out), "--families", "glcm",
                 "--aggregation", "2d_avg,3d_avg", "--no-progress"]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert any(h.endswith("_2d_avg") for h in header) and any(h.endswith("_3d_avg") for h in header)
    assert _cli(["radiomics", "--data", str(good), "--out", str(out), "--aggregation", "foo", "--no-progress"]) == 2
    assert "unknown texture aggregation" in capsys.readouterr().err


def test_out_naming_a_folder_fails_before_any_work(datalist: Path, tmp_path: Path, capsys) -> None:
    assert _cli(["radiomics", "--data", str(datalist), "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "skipped" not in err  # refused before a single lesion was read
