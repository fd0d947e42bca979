"""Cross-site evaluation: leave-one-site-out folds, site-stratified K-fold, per-site summary."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from breastai.core.config import ConfigError, DEFAULTS, load_config
from breastai.data.datalist import DatalistError
from breastai.data.splits import group_kfold, site_folds, site_strata
from breastai.engine.cv import cv_splits
from breastai.engine.run import main as train_main
from conftest import synth_rows, write_rows


def _records(sites=("a", "b", "c"), n=180):
    """Groups of three rows; each group at one site (groups are prefixed per site, as merge does)."""
    recs = []
    for i in range(n):
        g = i // 3
        site = sites[g % len(sites)] if sites else None
        rec = {"case_id": f"c{i}", "label": "malignant" if (g // len(sites or "x")) % 3 == 0 else "benign",
               "group": f"{site}/g{g}", "split": "", "fold": None, "image": None}
        if site is not None:
            rec["site"] = site
        recs.append(rec)
    np.random.default_rng(0).shuffle(recs)
    return recs


def _cfg(**data):
    return {"data": {**DEFAULTS["data"], "val_fraction": 0.2, **data}, "seed": 0}


def test_site_folds_hold_out_one_site_and_carve_validation_from_the_others():
    recs = _records()
    splits = cv_splits(recs, "sites", _cfg())
    assert len(splits) == 3
    for (tr, va, te), site in zip(splits, ["a", "b", "c"]):
        assert {recs[i]["site"] for i in te} == {site}
        assert len(te) == sum(r["site"] == site for r in recs)  # every row of the site
        assert site not in {recs[i]["site"] for i in np.concatenate([tr, va])}
        assert {recs[i]["site"] for i in va} == {"a", "b", "c"} - {site}  # stratified by site: both others
        assert not {recs[i]["group"] for i in tr} & {recs[i]["group"] for i in va}
        assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(recs)))
    # Deterministic (a resumed run finds the same folds).
    again = cv_splits(recs, "sites", _cfg())
    assert all((a == b).all() for s, t in zip(splits, again) for a, b in zip(s, t))


@pytest.mark.parametrize("edit, message", [
    (lambda rs: [{**r, "site": "a"} for r in rs], "at least 2 sites"),
    (lambda rs: [{k: v for k, v in r.items() if k != "site"} for r in rs], "needs a 'site' column"),
    (lambda rs: [{**r, "site": ""} if i == 0 else r for i, r in enumerate(rs)], "without a site"),
    (lambda rs: [{**r, "label": "benign"} if r["site"] == "b" else r for r in rs], "site 'b' has only 'benign'"),
    (lambda rs: [{**r, "group": "shared"} if r["case_id"] in ("c0", "c3") else r for r in rs], "a group must belong"),
])
def test_site_folds_refusals(edit, message):
    recs = edit(_records(sites=("a", "b")))
    with pytest.raises(ValueError, match=message):
        site_folds(recs)


def test_identical_images_in_two_sites_are_refused(synth_datalist, tmp_path):
    rows = synth_rows(synth_datalist)
    for r in rows:
        r["site"] = "a" if int(r["group"][-1]) % 2 else "b"
    copy = tmp_path / "copy.png"
    shutil.copy(rows[0]["image"], copy)
    other = "a" if rows[0]["site"] == "b" else "b"  # the copy, under its own case and group, at the other site
    rows[1] = {**rows[1], "image": str(copy), "label": rows[0]["label"], "group": "copy", "site": other}
    from breastai.data.frames import read_samples

    recs = read_samples(write_rows(tmp_path / "d.csv", rows), DEFAULTS["data"])
    with pytest.raises(DatalistError, match=r"in site '[ab]'"):
        cv_splits(recs, "sites", _cfg())


def test_mixed_site_kfold_stratifies_by_site():
    recs = _records()
    folds = group_kfold(recs, 4, seed=1, strata=site_strata(recs))
    for f in folds:
        assert {recs[i]["site"] for i in f} == {"a", "b", "c"}
        for s in "abc":
            share = np.mean([recs[i]["site"] == s for i in f])
            assert abs(share - 1 / 3) < 0.1
    groups = [{recs[i]["group"] for i in f} for f in folds]
    assert all(not groups[a] & groups[b] for a in range(4) for b in range(a + 1, 4))
    tr, va, te = cv_splits(recs, 4, _cfg())[0]
    assert {recs[i]["site"] for i in va} == {"a", "b", "c"}


def test_kfold_without_sites_is_unchanged():
    recs = _records(sites=None)
    assert site_strata(recs) is None
    labels = np.array([r["label"] for r in recs])
    groups = np.array([r["group"] for r in recs])
    before = [te for _, te in StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=3)
              .split(np.zeros(len(recs)), labels, groups)]  # the label-only folds of earlier versions
    assert all((a == b).all() for a, b in zip(group_kfold(recs, 5, seed=3), before))
    one_site = [{**r, "site": "only"} for r in recs]  # one site: nothing to stratify by
    assert all((a == b).all() for a, b in zip(group_kfold(one_site, 5, seed=3, strata=site_strata(one_site)), before))
    cfg = _cfg()
    assert all((a == b).all() for s, t in zip(cv_splits(recs, 5, cfg), cv_splits(one_site, 5, cfg)) for a, b in zip(s, t))


def test_folds_setting_takes_a_number_or_sites():
    assert load_config(None, ["train.folds=sites"])["train"]["folds"] == "sites"
    assert load_config(None, ["train.folds=5"])["train"]["folds"] == 5
    with pytest.raises(ConfigError, match="whole number .* or 'sites'"):
        load_config(None, ["train.folds=site"])


def test_leave_one_site_out_run_reports_per_site(synth_datalist, tmp_path, tiny_config):
    rows = synth_rows(synth_datalist)
    by_label = {}
    for r in rows:  # alternate each class's groups over the sites, so every site has both classes
        by_label.setdefault(r["label"], []).append(r["group"])
    site_of = {g: "ab"[i % 2] for gs in by_label.values() for i, g in enumerate(dict.fromkeys(gs))}
    for r in rows:
        r["site"] = site_of[r["group"]]
    data = write_rows(tmp_path / "two_sites.csv", rows)
    cfg = tiny_config(data, tmp_path, "train.epochs=1", "train.folds=sites", "data.val_fraction=0.25")
    out = train_main(cfg)
    s = json.loads((tmp_path / "t" / "cv_summary.json").read_text())
    assert [f["site"] for f in s["folds"]] == ["a", "b"]
    assert set(s["per_site"]) == {"a", "b"}
    for site, m in s["per_site"].items():
        assert m["n"] == sum(r["site"] == site for r in rows)
        assert 0 <= m["auc"] <= 1 and m["auc_ci_low"] <= m["auc_ci_high"] and 0 <= m["ece"] <= 1
        assert 0 <= m["ood_flagged"] <= 1  # the held-out site's share the OOD detector calls unlike training
    header = (tmp_path / "t" / "oof_predictions.csv").read_text().splitlines()[0].split(",")
    assert "site" in header and "ood_score" in header
    assert out["per_site"] == s["per_site"]
    # --resume reuses the finished folds (the folds are deterministic).
    again = train_main(cfg, resume=True)
    assert [f["auc"] for f in again["folds"]] == [f["auc"] for f in s["folds"]]
    # scripts rebuild the same folds from the run folder alone
    from breastai.engine.cv import run_folds

    rebuilt = list(run_folds(tmp_path / "t", "sites"))
    assert [d.name for _, d, *_ in rebuilt] == ["fold0", "fold1"]
    assert [{recs[j]["site"] for j in test} for _, _, recs, (_, _, test), _ in rebuilt] == [{"a"}, {"b"}]
    with pytest.raises(ValueError, match="not 5"):
        next(run_folds(tmp_path / "t", 5))


def test_ensemble_of_leave_one_site_out_runs_reports_per_site(synth_datalist, tmp_path, tiny_config, capsys):
    from breastai.cli import main

    rows = synth_rows(synth_datalist)
    for i, g in enumerate(dict.fromkeys(r["group"] for r in rows)):
        for r in rows:
            if r["group"] == g:
                r["site"] = "ab"[i % 2]
    data = write_rows(tmp_path / "two_sites.csv", rows)
    runs = []
    for name, extra in (("crop", "preprocess.mode=crop"), ("whole", "preprocess.mode=whole")):
        cfg = tiny_config(data, tmp_path, f"run_name={name}", extra, "train.epochs=1", "train.folds=sites",
                          "data.val_fraction=0.25")
        train_main(cfg)
        runs.append(tmp_path / name)
    # The members' folds are the two sites, not a 2-fold split: built as such, and reported per site.
    assert main(["ensemble", *map(str, runs), "--out", str(tmp_path / "ens"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "site a: n" in printed and "site b: n" in printed
    s = json.loads((tmp_path / "ens" / "cv_summary.json").read_text())
    assert [f["site"] for f in s["folds"]] == ["a", "b"]
    assert set(s["per_site"]) == {"a", "b"}
    members = [json.loads((r / "cv_summary.json").read_text()) for r in runs]
    for f in members:
        assert {p["case_id"]: p["fold"] for p in f["oof_predictions"]} == {
            p["case_id"]: p["fold"] for p in s["oof_predictions"]}
    for site, m in s["per_site"].items():
        held = [p for p in s["oof_predictions"] if p["site"] == site]
        assert m["n"] == len(held) == sum(r["site"] == site for r in rows)
        assert {p["fold"] for p in held} == {"ab".index(site)}


def test_train_cli_takes_folds_sites():
    from breastai.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--folds", "sites"]).folds == "sites"
    assert parser.parse_args(["train", "--folds", "5"]).folds == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--folds", "site"])
