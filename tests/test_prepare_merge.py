"""``breastai prepare merge``: groups and sites kept apart, case_id collisions prefixed, paths valid."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.cli.prepare import add_parser
from breastai.data.datalist import read_datalist, write_datalist
from breastai.data.prepare import merge_datalists, prepare_folder


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    for site in ("siteA", "siteB"):
        _png(tmp_path / site / "benign" / "x.png")
        _png(tmp_path / site / "malignant" / f"{site}.png")
    a = tmp_path / "lists" / "a.csv"
    prepare_folder(tmp_path / "siteA", a)
    # Another folder depth and no site column: paths must be re-based, the site filled in.
    b = tmp_path / "other" / "deeper" / "b.json"
    rows = [dict(r, group="g1") for r in read_datalist(prepare_folder(tmp_path / "siteB", b).out)]
    for r in rows:
        r.pop("site")
    write_datalist(rows, b)
    return a, b


def test_merge_keeps_groups_and_sites_apart(tmp_path):
    a, b = _inputs(tmp_path)
    out = tmp_path / "merged" / "both.csv"
    rep = merge_datalists([a, b], out)
    recs = {r["case_id"]: r for r in read_datalist(out, classes=["benign", "malignant"])}
    # benign_x is in both inputs: prefixed; the unique case_ids are kept.
    assert sorted(recs) == ["a/benign_x", "b/benign_x", "malignant_siteA", "malignant_siteB"]
    assert recs["a/benign_x"]["group"] == "a/benign_x" and recs["malignant_siteA"]["group"] == "a/malignant_siteA"
    assert recs["b/benign_x"]["group"] == recs["malignant_siteB"]["group"] == "b/g1"
    assert {r["site"] for r in recs.values()} == {"siteA", "b"}
    assert recs["b/benign_x"]["image"] == str((tmp_path / "siteB" / "benign" / "x.png").resolve())
    assert all(Path(r["image"]).is_file() for r in recs.values())
    assert not Path(out.read_text().splitlines()[1].split(",")[1]).is_absolute()
    assert rep.counts == {"benign": 2, "malignant": 2} and rep.duplicate_groups == 1
    assert "2 rows had a case_id found in more than one input" in rep.summary()
    assert "2 rows without a site" in rep.summary()


def test_merge_errors_and_same_stems(tmp_path):
    a, b = _inputs(tmp_path)
    with pytest.raises(ValueError, match="at least two"):
        merge_datalists([a], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="one of the inputs"):
        merge_datalists([a, b], a)
    a2 = tmp_path / "copy" / "a.csv"
    write_datalist(read_datalist(a), a2)
    recs = read_datalist(merge_datalists([a, a2], tmp_path / "aa.csv").out)
    assert {r["group"].split("/")[0] for r in recs} == {"a", "a-2"}


def test_cli_merge(tmp_path, capsys):
    a, b = _inputs(tmp_path)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "both.json"
    args = parser.parse_args(["prepare", "merge", str(a), str(b), "--out", str(out)])
    assert args.func(args) == 0
    assert "merge: 4 rows written" in capsys.readouterr().out
    assert len(read_datalist(out)) == 4
