"""BUSI preparation on the real data: masks, RGBA masks, duplicates and label conflicts.

The duplicate tests run the detector on a handful of files chosen by eye (fast); the full
preparation of all images is marked slow.
"""

from __future__ import annotations

import csv
from collections import Counter
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.data.datalist import read_datalist
from breastai.data.dedup import DedupResult, find_duplicates, union_find_groups
from breastai.data.readers.masks import load_mask
from breastai.data.prepare import prepare_busi
from breastai.data.prepare.busi import scan_busi

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
BUSI = DATA / "busi" / "Dataset_BUSI_with_GT"

needs_busi = pytest.mark.skipif(not (BUSI / "benign").is_dir(), reason=f"BUSI not found at {BUSI} (set BREASTAI_DATA)")


def _img(name: str) -> Path:
    return BUSI / name.split(" ")[0] / f"{name}.png"


@needs_busi
def test_scan_masks_union_and_rgba():
    rows, notes = scan_busi(BUSI.parent)  # the folder above Dataset_BUSI_with_GT works too
    assert notes == []
    assert len(rows) == 437 + 210 and {r["label"] for r in rows} == {"benign", "malignant"}
    by_id = {r["case_id"]: r for r in rows}
    r100 = by_id["benign_100"]
    assert [Path(m).name for m in r100["mask"]] == ["benign (100)_mask.png", "benign (100)_mask_1.png"]
    union = load_mask(r100["mask"])
    parts = [load_mask(m) for m in r100["mask"]]
    assert union.sum() == (parts[0] | parts[1]).sum() > max(p.sum() for p in parts)
    # The two RGBA masks of BUSI: opaque alpha everywhere, the lesion in the colour channels.
    for case, name, expected in (("benign_4", "benign (4)_mask_1.png", 624), ("benign_54", "benign (54)_mask_1.png", 1609)):
        path = next(m for m in by_id[case]["mask"] if Path(m).name == name)
        assert Image.open(path).mode == "RGBA"
        assert load_mask(path).sum() == expected
    rows_n, _ = scan_busi(BUSI, include_normal=True)
    assert len(rows_n) == 780 and sum(r["label"] == "normal" for r in rows_n) == 133


# Pairs verified by eye (montages of both images): same frame re-cropped/re-scaled, or
# adjacent frames of one lesion.
SAME = [
    ("benign (433)", "malignant (145)"),  # byte-identical, conflicting labels
    ("benign (275)", "benign (297)"),  # same frame, re-scaled by 0.84
    ("benign (42)", "malignant (51)"),  # same frame, re-cropped, conflicting labels
    ("malignant (4)", "malignant (9)"),  # adjacent frames of one lesion
    ("benign (125)", "benign (126)"),  # adjacent frames
]
# Distinct lesions, checked by eye, that score highest among non-copies: large dark cysts
# fool a plain NCC (whole-template NCC 0.72-0.79), and similar cysts give block scores near
# the threshold.
DISTINCT = [
    ("benign (98)", "benign (330)"),
    ("benign (13)", "benign (98)"),
    ("benign (36)", "benign (188)"),
    ("benign (23)", "benign (325)"),
    ("benign (72)", "benign (168)"),
    ("benign (26)", "benign (98)"),
]


@needs_busi
def test_known_duplicates_and_distinct_lesions():
    names = sorted({n for pair in SAME + DISTINCT for n in pair})
    res = find_duplicates([_img(n) for n in names])
    g = dict(zip(names, res.groups))
    for a, b in SAME:
        assert g[a] == g[b], f"{a} and {b} should be grouped"
    for a, b in DISTINCT:
        assert g[a] != g[b], f"{a} and {b} are distinct lesions"
    exact = [(names[p.i], names[p.j]) for p in res.pairs if p.kind == "exact"]
    assert exact == [("benign (433)", "malignant (145)")]
    scale = next(p.scale for p in res.pairs if {names[p.i], names[p.j]} == {"benign (275)", "benign (297)"})
    assert scale == pytest.approx(467 / 556, rel=0.03)


@needs_busi
def test_conflicting_group_dropped_or_flagged(tmp_path):
    rows, _ = scan_busi(BUSI)
    # Dedup result stubbed to the two known copies so the test stays fast.
    ids = [r["case_id"] for r in rows]
    pairs = [(ids.index("benign_433"), ids.index("malignant_145")), (ids.index("benign_275"), ids.index("benign_297"))]
    stub = DedupResult(groups=union_find_groups(len(rows), pairs), pairs=[])
    out = tmp_path / "busi.csv"
    rep = prepare_busi(BUSI, out, dedup=stub)
    assert rep.counts == {"benign": 436, "malignant": 209}
    assert sorted(rep.dropped) == [
        ("benign_433", "duplicate group with conflicting labels (benign/malignant)"),
        ("malignant_145", "duplicate group with conflicting labels (benign/malignant)"),
    ]
    # The written datalist's groups: the dropped conflicting pair is not one of them.
    assert rep.duplicate_groups == 1 and rep.images_in_groups == 2
    recs = {r["case_id"]: r for r in read_datalist(out, classes=["benign", "malignant"])}
    assert recs["benign_275"]["group"] == recs["benign_297"]["group"] != recs["benign_1"]["group"]
    assert recs["benign_1"]["group"] == "g0001" and recs["benign_275"]["group_size"] == "2"
    assert len(recs["benign_100"]["mask"]) == 2
    assert {(r["site"], r["modality"]) for r in recs.values()} == {("busi", "US")}
    with open(out, newline="") as fh:
        first = next(csv.DictReader(fh))
    assert first["image"].startswith("../") or not os.path.isabs(first["image"])  # relative paths
    assert "benign_433" in rep.summary() and "benign 436" in rep.summary()

    kept = prepare_busi(BUSI, tmp_path / "keep.json", keep_conflicts=True, dedup=stub)
    assert kept.dropped == [] and kept.counts == {"benign": 437, "malignant": 210}
    assert kept.duplicate_groups == 2 and kept.images_in_groups == 4
    recs = {r["case_id"]: r for r in read_datalist(tmp_path / "keep.json")}
    assert recs["benign_433"]["conflict"] == "benign/malignant" and recs["benign_1"]["conflict"] == ""


@needs_busi
@pytest.mark.slow
def test_full_busi(tmp_path):
    """Whole BUSI lesion set (about a minute or two on one core)."""
    rep = prepare_busi(BUSI, tmp_path / "busi.csv")
    assert 100 <= rep.duplicate_groups <= 135
    assert 230 <= rep.images_in_groups <= 290
    conflicts = {c for c, r in rep.dropped if "conflicting" in r}
    assert {"benign_433", "malignant_145", "benign_42", "malignant_51"} <= conflicts
    assert 10 <= len(conflicts) <= 20
    assert rep.counts["benign"] + rep.counts["malignant"] == 647 - len(rep.dropped)
    # The summary describes the datalist written, not the groups before conflicting ones were dropped.
    sizes = Counter(r["group"] for r in read_datalist(tmp_path / "busi.csv", classes=["benign", "malignant"]))
    assert rep.duplicate_groups == sum(n > 1 for n in sizes.values())
    assert rep.images_in_groups == sum(n for n in sizes.values() if n > 1)
    assert np.isclose(sum(rep.counts.values()), len(read_datalist(tmp_path / "busi.csv")))
