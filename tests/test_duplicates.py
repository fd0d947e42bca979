"""Byte-identical images under two case ids: one group in every split, refused when they disagree."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from breastai.core.config import DEFAULTS
from breastai.data.datalist import DatalistError
from breastai.data.splits import fixed_split
from breastai.engine.cv import cv_splits
from breastai.engine.run import main as train_main
from conftest import synth_rows, write_rows


def _records(tmp_path: Path, n: int = 40, copies: int = 8) -> list[dict]:
    """``n`` distinct image files, then ``copies`` rows whose files repeat the bytes of rows 0, 1, ...
    under another case id and another group (as a re-exported dataset lists them)."""
    recs = []
    for i in range(n):
        f = tmp_path / f"img{i}.png"
        f.write_bytes(f"pixels {i}".encode())
        recs.append({"image": str(f), "case_id": f"c{i}", "group": f"g{i}", "label": ("benign", "malignant")[i % 2],
                     "split": "", "fold": None})
    for j in range(copies):
        f = tmp_path / f"copy{j}.png"
        shutil.copy(recs[j]["image"], f)
        recs.append({**recs[j], "image": str(f), "case_id": f"copy{j}", "group": f"h{j}"})
    return recs


def _pairs(recs: list[dict]) -> list[tuple[int, int]]:
    """(original, copy) row indices: ``copyJ`` repeats ``cJ``."""
    index = {r["case_id"]: i for i, r in enumerate(recs)}
    return [(index["c" + r["case_id"][4:]], i) for i, r in enumerate(recs) if r["case_id"].startswith("copy")]


def _cfg(**data) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(data)
    return cfg


def _part_of(split: dict[str, np.ndarray], i: int) -> str:
    return next(name for name, idx in split.items() if i in set(np.asarray(idx).tolist()))


def test_copies_under_two_case_ids_share_a_part_in_every_fold(tmp_path, caplog):
    recs = _records(tmp_path)
    with caplog.at_level("INFO", logger="breastai"):
        folds = cv_splits(recs, 5, _cfg(val_fraction=0.25))
    assert "16 rows joined" in caplog.text, "the log says how many rows were joined with their copies"
    for tr, va, te in folds:
        split = {"train": tr, "val": va, "test": te}
        for a, b in _pairs(recs):
            assert _part_of(split, a) == _part_of(split, b), f"{recs[a]['case_id']} and its copy were split"
    # The regrouping depends on the files only: a resumed run finds the very same folds.
    again = cv_splits(copy.deepcopy(recs), 5, _cfg(val_fraction=0.25))
    assert [[p.tolist() for p in f] for f in again] == [[p.tolist() for p in f] for f in folds]
    assert [r["group"] for r in recs][-1] == "h7", "the caller's records are not changed"


def test_copies_share_a_part_in_a_single_split(tmp_path):
    recs = _records(tmp_path)
    split = fixed_split(recs, 0.3, seed=0, source="list.csv")
    for a, b in _pairs(recs):
        assert _part_of(split, a) == _part_of(split, b)


def test_a_fixed_split_with_copies_in_train_and_test_is_refused(tmp_path):
    recs = _records(tmp_path, copies=1)
    recs[-1]["split"] = "test"
    named = r"datalist list\.csv: row 2 \(case 'c0'\) in split 'train' and row 42 \(case 'copy0'\) in split 'test'"
    with pytest.raises(DatalistError, match=named):
        fixed_split(recs, 0.3, seed=0, source="list.csv")


def test_a_fold_column_with_copies_in_two_folds_is_refused(tmp_path):
    recs = _records(tmp_path, copies=1)
    for i, r in enumerate(recs):
        r["fold"] = i % 2
    recs[-1]["fold"] = 1 - recs[0]["fold"]
    with pytest.raises(DatalistError, match=r"\(case 'c0'\) in fold 0 and \(case 'copy0'\) in fold 1"):
        cv_splits(recs, 2, _cfg())


def test_conflicting_copies_are_refused_before_the_first_epoch_naming_both_rows(synth_datalist, tmp_path,
                                                                                  tiny_config, monkeypatch):
    import breastai.engine.trainer as tr

    rows = synth_rows(synth_datalist)
    shutil.copy(rows[3]["image"], tmp_path / "renamed.png")
    flipped = "benign" if rows[3]["label"] == "malignant" else "malignant"
    rows.append({**rows[3], "case_id": "renamed", "image": str(tmp_path / "renamed.png"), "label": flipped,
                 "group": "other"})
    dl = write_rows(tmp_path / "list.csv", rows)
    monkeypatch.setattr(tr, "train_one_epoch", lambda *a, **k: pytest.fail("trained on conflicting copies"))
    for extra in ((), ("train.folds=2",)):
        with pytest.raises(DatalistError) as err:
            train_main(tiny_config(dl, tmp_path / "runs", *extra))
        msg = str(err.value)
        assert str(dl) in msg and "row 5 (case 'case0003')" in msg and "row 34 (case 'renamed')" in msg
        assert rows[3]["label"] in msg and flipped in msg
        assert not (tmp_path / "runs" / "t").exists(), "a refused run leaves no run folder"


def test_frames_of_one_file_are_one_row_but_two_rows_of_it_are_copies(tmp_path):
    from breastai.data.provenance import join_identical_images

    f = tmp_path / "cine.dcm"
    f.write_bytes(b"one multi-frame acquisition")
    frames = [{"image": str(f), "case_id": f"a_f{k}", "group": "a", "label": "benign", "frame": k} for k in range(3)]
    assert join_identical_images(frames) == frames, "frames share their file by design"
    again = [{**r, "case_id": f"b_f{r['frame']}", "group": "b", "label": "malignant"} for r in frames]
    with pytest.raises(DatalistError, match=r"'a_f0'.*'b_f0'"):
        join_identical_images(frames + again)
    same = [{**r, "label": "benign"} for r in again]
    assert {r["group"] for r in join_identical_images(frames + same)} == {"a"}
    arrays = [{"image": np.zeros((4, 4)), "case_id": f"x{i}", "group": f"x{i}", "label": "benign"} for i in range(2)]
    assert join_identical_images(arrays) == arrays, "array inputs have no file to compare"


def test_a_resumed_cv_run_with_copies_keeps_its_folds(synth_datalist, tmp_path, tiny_config):
    rows = synth_rows(synth_datalist)
    for j in range(4):
        shutil.copy(rows[j]["image"], tmp_path / f"copy{j}.png")
        rows.append({**rows[j], "case_id": f"copy{j}", "image": str(tmp_path / f"copy{j}.png"), "group": f"copy{j}"})
    dl = write_rows(tmp_path / "list.csv", rows)
    cfg = tiny_config(dl, tmp_path / "runs", "train.epochs=1", "train.folds=2", "data.val_fraction=0.25")
    res = train_main(cfg)
    fold = {p["case_id"]: p["fold"] for p in res["oof_predictions"]}
    assert all(fold[f"copy{j}"] == fold[rows[j]["case_id"]] for j in range(4))
    again = train_main(cfg, resume=True)  # the finished folds are found again, held-out cases and all
    assert [f["auc"] for f in again["folds"]] == [f["auc"] for f in res["folds"]]
    assert json.loads((Path(res["run_dir"]) / "fold0" / "done").read_text())["test_case_ids"]


def test_two_findings_of_one_film_may_differ_in_label_and_stay_together(tmp_path):
    # mini-MIAS mdb144: one film, a benign and a malignant finding, each with its own mask.
    recs = _records(tmp_path, n=30, copies=0)
    for k, label in ((1, "benign"), (2, "malignant")):
        m = tmp_path / f"film_mask{k}.png"
        m.write_bytes(f"mask {k}".encode())
        recs.append({"image": recs[0]["image"], "mask": [str(m)], "case_id": f"film_{k}", "group": f"f{k}",
                     "label": label, "split": "", "fold": None})
    folds = cv_splits(recs, 3, _cfg(val_fraction=0.25))
    for tr, va, te in folds:
        split = {"train": tr, "val": va, "test": te}
        assert _part_of(split, 30) == _part_of(split, 31) == _part_of(split, 0)
    # The same finding (one mask file's bytes) under two labels is still refused.
    shutil.copy(tmp_path / "film_mask1.png", tmp_path / "film_mask2.png")
    with pytest.raises(DatalistError, match="labelled 'benign'.*labelled 'malignant'.*hold identical image files"):
        cv_splits(recs, 3, _cfg(val_fraction=0.25))
