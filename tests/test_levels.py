"""Breast- and exam-level scores (reporting.levels) and subgroup figures (reporting.subgroups), by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from breastai.reporting.levels import (
    NO_LESION_LOG_ODDS,
    ImageScore,
    LevelError,
    LevelRule,
    aggregate,
    combine_log_odds,
    default_rule,
    fit_level_rule,
    level_rows,
)
from breastai.reporting.subgroups import MIN_PER_CLASS, subgroup_report


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# One screening exam: four views with known calibrated log-odds.
FOUR = {("L", "CC"): -1.0, ("L", "MLO"): 0.5, ("R", "CC"): 2.0, ("R", "MLO"): -3.0}


def four_view_exam(exam: str = "e1", drop: tuple[str, str] | None = None, label: int | None = None) -> list[ImageScore]:
    return [ImageScore(case_id=f"{exam}_{lat}{view}", log_odds=z, label=label, exam=exam, laterality=lat, view=view)
            for (lat, view), z in FOUR.items() if (lat, view) != drop]


def by_id(groups):
    return {g.id: g for g in groups}


def test_four_view_exam_gives_exactly_the_documented_scores():
    scores = four_view_exam()
    breasts, left = aggregate(scores, default_rule("breast"))
    exams, _ = aggregate(scores, default_rule("exam"))
    assert left == []
    b = by_id(breasts)
    # max: the left breast is its MLO (0.5), the right its CC (2.0); the exam is the right CC
    assert b["e1_L"].log_odds == 0.5 and b["e1_L"].driver == "e1_LMLO"
    assert b["e1_R"].log_odds == 2.0 and b["e1_R"].driver == "e1_RCC"
    assert b["e1_L"].probability == pytest.approx(sigmoid(0.5), abs=1e-15)
    assert b["e1_L"].members == ("e1_LCC", "e1_LMLO") and b["e1_L"].views_present == ("CC", "MLO")
    (e,) = exams
    assert (e.id, e.log_odds, e.driver, e.n_images, e.views_present) == ("e1", 2.0, "e1_RCC", 4, ("CC", "MLO"))
    # mean and noisy-OR by their formulas
    mean, _ = aggregate(scores, LevelRule("breast", rule="mean"))
    assert by_id(mean)["e1_L"].log_odds == pytest.approx(-0.25) and by_id(mean)["e1_R"].log_odds == pytest.approx(-0.5)
    (em,), _ = aggregate(scores, LevelRule("exam", rule="mean"))
    assert em.log_odds == pytest.approx(-0.375) and em.driver == "e1_RCC"
    p_or = 1 - np.prod([1 - sigmoid(z) for z in FOUR.values()])
    (eo,), _ = aggregate(scores, LevelRule("exam", rule="noisy_or"))
    assert eo.probability == pytest.approx(p_or, rel=1e-12)
    # recalibration: z = slope * s + bias
    (ec,), _ = aggregate(scores, LevelRule("exam", slope=0.5, bias=-1.0))
    assert ec.log_odds == pytest.approx(0.0) and ec.raw == 2.0


def test_exam_missing_a_view_is_scored_with_what_is_there():
    scores = four_view_exam(drop=("R", "CC"))
    (e,), _ = aggregate(scores, default_rule("exam"))
    assert e.n_images == 3 and e.log_odds == 0.5 and e.driver == "e1_LMLO"
    breasts, _ = aggregate(scores, default_rule("breast"))
    r = by_id(breasts)["e1_R"]
    assert r.n_images == 1 and r.views_present == ("MLO",) and r.log_odds == -3.0


def test_images_without_exam_or_side_are_left_out_and_named():
    scores = [*four_view_exam(), ImageScore("loose", 1.0, exam="e1"), ImageScore("nowhere", 1.0)]
    breasts, left = aggregate(scores, default_rule("breast"))
    assert left == ["loose", "nowhere"] and len(breasts) == 2
    exams, left = aggregate(scores, default_rule("exam"))
    assert left == ["nowhere"] and exams[0].n_images == 5


def lesion_exam() -> list[ImageScore]:
    """One exam: the left CC has two lesions (two records of one image), the left MLO none; the right
    breast's two images had no lesion found; a film with two traced findings (two rows, one file) in e2."""
    def row(cid, z, lat, view, image, n=1):
        return ImageScore(cid, z, exam="e1" if image != "film" else "e2", laterality=lat, view=view, image=image,
                          n_lesions=n)

    return [row("lcc_l1", 1.5, "L", "CC", "lcc"), row("lcc_l2", -0.5, "L", "CC", "lcc"),
            row("lmlo", None, "L", "MLO", "lmlo", 0), row("rcc", None, "R", "CC", "rcc", 0),
            row("rmlo", None, "R", "MLO", "rmlo", 0),
            row("f1", -2.0, "L", "CC", "film"), row("f2", -1.0, "L", "CC", "film")]


def test_levels_count_images_and_lesions_and_leave_no_lesion_breasts_unscored():
    scores = lesion_exam()
    breasts = by_id(aggregate(scores, default_rule("breast"))[0])
    left, right, film = breasts["e1_L"], breasts["e1_R"], breasts["e2_L"]
    assert (left.n_images, left.n_lesions, left.log_odds, left.driver) == (2, 2, 1.5, "lcc_l1")
    assert left.members == ("lcc_l1", "lcc_l2", "lmlo")
    # Nothing found anywhere in the breast: no score, no driver, no probability posing as one.
    assert (right.n_images, right.n_lesions, right.raw, right.log_odds, right.probability, right.driver) == (
        2, 0, None, None, None, None)
    assert (film.n_images, film.n_lesions, film.log_odds) == (1, 2, -1.0)  # two findings of one film: one image
    (exam,) = [g for g in aggregate(scores, default_rule("exam"))[0] if g.id == "e1"]
    assert (exam.n_images, exam.n_lesions, exam.log_odds) == (4, 2, 1.5)
    # The mean runs over the scored records only: an image without a lesion does not pull it down.
    (mean,) = [g for g in aggregate(scores, LevelRule("exam", rule="mean"))[0] if g.id == "e1"]
    assert mean.log_odds == pytest.approx(0.5)
    rows = {r["id"]: r for r in level_rows(list(breasts.values()), 0.5, ["benign", "malignant"], "no lesion found")}
    right_row = rows["e1_R"]
    assert (right_row["predicted"], right_row["probability"], right_row["n_lesions"]) == ("no lesion found", None, 0)
    assert rows["e1_L"]["predicted"] == "malignant" and rows["e1_L"]["probability"] == pytest.approx(sigmoid(1.5))
    # Where every group needs a number (evaluate, fitting): below every scored group, probability 0.
    ranked = by_id(aggregate(scores, LevelRule("breast", slope=2.0, bias=1.0), unscored_last=True)[0])
    assert ranked["e1_R"].raw == NO_LESION_LOG_ODDS and ranked["e1_R"].log_odds == 2.0 * NO_LESION_LOG_ODDS + 1.0
    assert ranked["e1_R"].probability < 1e-12 and ranked["e1_L"] == replace(breasts["e1_L"], log_odds=2.0 * 1.5 + 1.0)
    low = [ImageScore("deep", -40.0, exam="e3", laterality="L"), ImageScore("none", None, exam="e4", laterality="L",
                                                                           n_lesions=0)]
    assert by_id(aggregate(low, default_rule("breast"), unscored_last=True)[0])["e4_L"].raw == -41.0


def test_noisy_or_stays_finite_for_confident_images():
    assert combine_log_odds([-50.0, -50.0], "noisy_or") == pytest.approx(-50 + math.log(2))
    assert combine_log_odds([40.0, 3.0], "noisy_or") >= 40.0
    with pytest.raises(LevelError, match="finite"):
        combine_log_odds([float("nan")], "max")


def test_fitted_rule_recalibrates_and_thresholds_on_validation_exams():
    rng = np.random.default_rng(0)
    scores = []
    for k in range(60):
        y = int(k % 3 == 0)
        # a malignant exam has one suspicious image; the others look benign
        zs = rng.normal(-2, 1, 4) + (np.array([4.0, 0, 0, 0]) if y else 0)
        scores += [ImageScore(f"x{k}_{i}", float(z), label=y if i == 0 else 0, exam=f"x{k}", laterality="LR"[i % 2])
                   for i, z in enumerate(zs)]
    rule = fit_level_rule(scores, "exam")
    assert rule.rule == "max" and rule.n_fit == 60 and rule.source.startswith("fitted on")
    groups, _ = aggregate(scores, rule)
    y = np.array([g.label for g in groups])
    p = np.array([g.probability for g in groups])
    # Platt targets: the mean probability matches the corrected prevalence to the optimiser's precision
    assert p.mean() == pytest.approx((y.sum() + 1) / (y.sum() + 2) * y.mean() + (1 - y.mean()) / (60 - y.sum() + 2),
                                     abs=1e-3)
    assert rule.threshold in set(p.tolist())  # chosen on these probabilities
    assert LevelRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(LevelError, match="benign and malignant"):
        fit_level_rule([s for s in scores if s.label == 0], "exam")
    with pytest.raises(LevelError, match="unknown level"):
        LevelRule("patient")


def test_subgroup_figures_equal_scikit_learn_on_the_same_rows():
    rng = np.random.default_rng(1)
    n = 80
    y = (rng.random(n) < 0.4).astype(int)
    z = rng.normal(0, 1, n) + 1.5 * y
    p = 1 / (1 + np.exp(-z))
    vendor = np.where(rng.random(n) < 0.5, "GE", "Hologic")
    vendor[:6] = "Siemens"
    y[:6] = [1, 0, 0, 0, 0, 0]  # too few malignant for a CI
    rep = subgroup_report(y, p, 0.5, {"Manufacturer": vendor.tolist()}, scores=z, n_boot=200)
    assert list(rep["Manufacturer"]) == ["GE", "Hologic", "Siemens"]
    for name in ("GE", "Hologic"):
        idx = vendor == name
        f = rep["Manufacturer"][name]
        assert f["n"] == idx.sum() and f["n_pos"] == y[idx].sum()
        assert f["prevalence"] == pytest.approx(y[idx].mean())
        assert f["auc"] == pytest.approx(roc_auc_score(y[idx], z[idx]), abs=1e-12)
        assert f["auc_ci_low"] <= f["auc"] <= f["auc_ci_high"]
        assert f["sensitivity"] == pytest.approx(np.mean(p[idx][y[idx] == 1] >= 0.5))
        assert f["specificity"] == pytest.approx(np.mean(p[idx][y[idx] == 0] < 0.5))
    small = rep["Manufacturer"]["Siemens"]
    assert small["auc"] is None and small["auc_ci_low"] is None
    assert f"at least {MIN_PER_CLASS} of each" in small["auc_note"] and "1 malignant and 5 benign" in small["auc_note"]
    assert small["sensitivity"] == pytest.approx(float(p[0] >= 0.5))
