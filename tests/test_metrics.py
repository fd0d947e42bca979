"""Tests for breastai.reporting.metrics and breastai.reporting.plots, with hand-computed reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from breastai.reporting.auc_compare import delong_auc_variance, delong_test
from breastai.reporting.metrics import MetricError, binary_metrics, bootstrap_auc_ci, brier, choose_threshold, ece, evaluation_report, nll, reliability_curve, roc_auc, summarise_folds
from breastai.reporting.plots import figure_calibration, figure_confusion, figure_roc, plot_calibration, plot_confusion, plot_pr, plot_roc

# The small worked example used throughout.
Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_auc_hand_example():
    # Positive-negative pairs: (0.35>0.1) yes, (0.35>0.4) no, (0.8>0.1) yes, (0.8>0.4) yes -> 3/4.
    assert roc_auc(Y, P) == pytest.approx(0.75)


def test_auc_ties_and_sklearn_agreement():
    # A tie between a positive and a negative counts one half: pairs 1, 0.5, 1, 1 -> 0.875.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert roc_auc(y.astype(bool), p) == pytest.approx(roc_auc_score(y, p))


def test_brier_ece_nll_hand_example():
    # Brier: (0.1^2 + 0.4^2 + 0.65^2 + 0.2^2) / 4 = (0.01 + 0.16 + 0.4225 + 0.04) / 4 = 0.158125
    assert brier(Y, P) == pytest.approx(0.158125)
    # ECE, 10 bins: each case alone in its bin (bins 1, 4, 3, 8), so ECE = mean |y - p|
    # = (0.1 + 0.4 + 0.65 + 0.2) / 4 = 0.3375
    assert ece(Y, P, n_bins=10) == pytest.approx(0.3375)
    # ECE, 2 bins: [0, .5) holds p = .1, .4, .35 with y = 0, 0, 1: mean p = 0.85/3, observed 1/3,
    # gap 0.05, weight 3/4 -> 0.0375; [.5, 1] holds p = .8, y = 1: gap 0.2, weight 1/4 -> 0.05.
    # Total 0.0875.
    assert ece(Y, P, n_bins=2) == pytest.approx(0.0875)
    # NLL: -(ln .9 + ln .6 + ln .35 + ln .8) / 4 = (0.1053605 + 0.5108256 + 1.0498221 + 0.2231436) / 4
    assert nll(Y, P) == pytest.approx(0.4722880, abs=1e-6)
    # Confident mistakes are clipped rather than infinite.
    assert nll([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_reliability_curve_bins():
    r = reliability_curve(Y, P, n_bins=2)
    np.testing.assert_allclose(r["edges"], [0, 0.5, 1])
    np.testing.assert_array_equal(r["count"], [3, 1])
    np.testing.assert_allclose(r["mean_pred"], [0.85 / 3, 0.8])
    np.testing.assert_allclose(r["frac_pos"], [1 / 3, 1.0])
    # p == 1 goes into the last bin; empty bins are NaN.
    r = reliability_curve([1, 0], [1.0, 0.0], n_bins=4)
    np.testing.assert_array_equal(r["count"], [1, 0, 0, 1])
    assert np.isnan(r["frac_pos"][1])


def test_perfectly_calibrated_has_small_ece():
    rng = np.random.default_rng(1)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert ece(y, p) < 0.02
    assert ece(y, np.clip(p + 0.2, 0, 1)) > 0.15


def test_binary_metrics_hand_example():
    # At threshold 0.35 (positive when p >= 0.35): predictions 0, 1, 1, 1 -> tp 2, fp 1, tn 1, fn 0.
    m = binary_metrics(Y, P, 0.35)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    assert m["balanced_accuracy"] == 0.75 and m["accuracy"] == 0.75
    assert m["ppv"] == pytest.approx(2 / 3) and m["npv"] == 1.0
    assert m["f1"] == pytest.approx(0.8)
    # No positive predictions: PPV undefined (NaN), not an error.
    m = binary_metrics(Y, P, 0.9)
    assert math.isnan(m["ppv"]) and m["specificity"] == 1.0 and m["sensitivity"] == 0.0
    # One class only is fine here: specificity is defined, sensitivity is not.
    m = binary_metrics([0, 0], [0.2, 0.7], 0.5)
    assert m["specificity"] == 0.5 and math.isnan(m["sensitivity"])


def test_choose_threshold():
    # Separable: Youden picks the lowest positive score, giving sensitivity = specificity = 1.
    y, p = [0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.9]
    t = choose_threshold(y, p, "youden")
    assert t == 0.7
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert choose_threshold(y, p, "closest") == 0.7
    # Worked example: J = 0.5 at both 0.8 and 0.35; ties go to the higher threshold.
    assert choose_threshold(Y, P, "youden") == 0.8
    # sensitivity@0.9 needs both positives -> threshold 0.35 (the best specificity there).
    assert choose_threshold(Y, P, "sensitivity@0.9") == 0.35
    # specificity@0.9 needs both negatives below -> lowest such threshold is 0.8.
    assert choose_threshold(Y, P, "specificity@0.9") == 0.8
    # specificity@0.5 -> lowest threshold leaving at least one negative below: 0.35.
    assert choose_threshold(Y, P, "specificity@0.5") == 0.35
    with pytest.raises(MetricError, match="unknown threshold method"):
        choose_threshold(Y, P, "f2")


def test_sensitivity_target_on_larger_data():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(200), np.ones(100)].astype(int)
    p = np.r_[rng.normal(0, 1, 200), rng.normal(1.5, 1, 100)]
    for target in (0.8, 0.9, 0.95):
        t = choose_threshold(y, p, f"sensitivity@{target}")
        assert binary_metrics(y, p, t)["sensitivity"] >= target
        # The next higher score would fall below the target: t is the highest such threshold.
        higher = p[p > t].min()
        assert binary_metrics(y, p, higher)["sensitivity"] < target


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([1, 1, 1], [0.2, 0.5, 0.9], "one class"),
        ([0, 0], [0.2, 0.5], "one class"),
        ([], [], "empty"),
        ([0, 1], [0.2, np.nan], "NaN"),
        ([0, 1, 1], [0.2, 0.5], "length mismatch"),
        ([0, 2], [0.2, 0.5], "0 or 1"),
    ],
)
def test_degenerate_input_raises(y, p, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(y, p)


def test_degenerate_calibration_input():
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        brier([0, 1], [-0.1, 0.5])
    with pytest.raises(MetricError, match="one class"):
        bootstrap_auc_ci([1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="one class"):
        evaluation_report([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="n_bins"):
        ece(Y, P, n_bins=0)


def _gauss(n_pos: int, n_neg: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    return y, np.r_[rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)]


def test_bootstrap_ci_contains_auc_and_narrows():
    y, p = _gauss(20, 30, 1.0, 3)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=1000)
    assert lo < roc_auc(y, p) < hi
    assert bootstrap_auc_ci(y, p, n_boot=1000) == (lo, hi)  # deterministic with the seed
    y2, p2 = _gauss(200, 300, 1.0, 3)
    lo2, hi2 = bootstrap_auc_ci(y2, p2, n_boot=1000)
    assert lo2 < roc_auc(y2, p2) < hi2
    # Width shrinks roughly as 1/sqrt(n): 10x the cases, about 1/3 the width.
    assert (hi2 - lo2) < 0.5 * (hi - lo)
    # Bootstrap SD agrees with the DeLong SE (both estimate the same sampling spread).
    _, var = delong_auc_variance(y2, p2)
    assert (hi2 - lo2) / (2 * 1.96) == pytest.approx(math.sqrt(var), rel=0.15)


def test_bootstrap_is_stratified():
    # One positive among 30: an unstratified bootstrap would often draw no positive at all
    # (probability (29/30)^30, about 36 %) and fail or bias the interval.
    y, p = _gauss(1, 29, 2.0, 4)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=500)
    assert 0 <= lo <= roc_auc(y, p) <= hi <= 1


def _brute_force_components(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components by explicit pairwise comparison, O(m n)."""
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(1), psi.mean(0)  # V10 (per positive), V01 (per negative)


def test_delong_against_brute_force():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(37), np.zeros(51)].astype(int)
    p1 = np.round(np.r_[rng.normal(1.0, 1, 37), rng.normal(0, 1, 51)], 1)  # with ties
    p2 = np.round(0.6 * p1 + rng.normal(0, 0.8, 88), 1)  # correlated second model
    m, n = 37, 51
    a10, a01 = _brute_force_components(y, p1)
    b10, b01 = _brute_force_components(y, p2)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    var_diff = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z_ref = (a10.mean() - b10.mean()) / math.sqrt(var_diff)

    auc1, auc2, z, pval = delong_test(y, p1, p2)
    assert auc1 == pytest.approx(roc_auc_score(y, p1)) and auc2 == pytest.approx(roc_auc_score(y, p2))
    assert z == pytest.approx(z_ref, rel=1e-10)
    assert pval == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z_ref) / math.sqrt(2)))), rel=1e-9)

    auc, var = delong_auc_variance(y, p1)
    assert auc == pytest.approx(a10.mean())
    assert var == pytest.approx(s10[0, 0] / m + s01[0, 0] / n, rel=1e-10)


def test_delong_hand_example():
    # Worked example: psi matrix (rows positives 0.35, 0.8; columns negatives 0.1, 0.4)
    # = [[1, 0], [1, 1]]: V10 = [0.5, 1], V01 = [1, 0.5];
    # var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125.
    auc, var = delong_auc_variance(Y, P)
    assert auc == 0.75 and var == pytest.approx(0.125)
    # Identical models: no difference, z = 0, p = 1.
    assert delong_test(Y, P, P)[2:] == (0.0, 1.0)


def test_delong_size_under_null():
    # Two equally good, correlated models: the test rejects at about the nominal 5 %.
    rng = np.random.default_rng(6)
    rejections = 0
    for _ in range(400):
        y = np.r_[np.ones(40), np.zeros(40)].astype(int)
        latent = rng.normal(0, 1, 80) + 1.0 * y
        p1, p2 = latent + rng.normal(0, 1, 80), latent + rng.normal(0, 1, 80)
        rejections += delong_test(y, p1, p2)[3] < 0.05
    assert 0.02 <= rejections / 400 <= 0.09


def test_delong_detects_a_better_model():
    y, p = _gauss(100, 100, 1.5, 7)
    noisy = p + np.random.default_rng(8).normal(0, 2.0, 200)
    auc1, auc2, z, pval = delong_test(y, p, noisy)
    assert auc1 > auc2 and z > 0 and pval < 0.01


def test_summarise_folds():
    folds = [
        {"auc": 0.8, "sensitivity": 0.7, "name": "fold0", "ppv": float("nan")},
        {"auc": 0.9, "sensitivity": 0.9, "name": "fold1", "ppv": 0.5},
        {"auc": 0.7, "sensitivity": 0.8, "name": "fold2", "ppv": 0.7},
    ]
    s = summarise_folds(folds)
    assert "name" not in s
    assert s["auc"]["mean"] == pytest.approx(0.8) and s["auc"]["sd"] == pytest.approx(0.1)  # ddof=1
    assert s["sensitivity"]["sd"] == pytest.approx(0.1)
    assert s["ppv"] == pytest.approx({"mean": 0.6, "sd": math.sqrt(0.02), "n": 2})
    assert math.isnan(summarise_folds([{"auc": 0.8}])["auc"]["sd"])
    with pytest.raises(MetricError):
        summarise_folds([])


def test_evaluation_report():
    r = evaluation_report(Y, P, threshold=0.35, n_boot=200)
    for key in ("auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "balanced_accuracy",
                "brier", "ece", "n", "n_pos", "threshold"):
        assert key in r
    assert r["auc"] == 0.75 and r["n"] == 4 and r["n_pos"] == 2 and r["threshold"] == 0.35
    assert r["sensitivity"] == 1.0 and r["brier"] == pytest.approx(0.158125)
    assert r["threshold_source"] == "given"
    r = evaluation_report(Y, P, n_boot=200)
    assert r["threshold"] == 0.8 and r["threshold_source"] == "youden_on_these_data"


# ---- plots -------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs_atomically(tmp_path):
    y, p = _gauss(30, 40, 1.0, 9)
    prob = 1 / (1 + np.exp(-p))
    paths = [
        plot_roc(y, prob, tmp_path / "roc.png", title="test", n_boot=100),
        plot_roc(y, {"a": prob, "b": prob[::-1]}, tmp_path / "roc2.png", n_boot=100),
        plot_pr(y, prob, tmp_path / "pr.png"),
        plot_calibration(y, prob, tmp_path / "sub" / "cal.png", n_bins=5),
        plot_confusion([[30, 10], [5, 25]], ["benign", "malignant"], tmp_path / "cm.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert not list(tmp_path.rglob("*.tmp"))


def test_figures_for_tensorboard():
    fig = figure_roc(Y, P, title="t", n_boot=100)
    assert isinstance(fig, Figure)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("AUC 0.750")
    fig = figure_calibration(Y, P, n_bins=2)
    bars = [b.get_height() for b in fig.axes[1].patches]
    assert bars == [3, 1]  # the counts histogram
    fig.canvas.draw()  # renders without a display
    with pytest.raises(ValueError, match="does not match"):
        figure_confusion([[1, 2], [3, 4]], ["a", "b", "c"])


def test_ece_noise_floor_of_a_calibrated_model():
    from breastai.reporting.metrics import ece_noise_floor

    p = np.linspace(0.02, 0.98, 126)
    small, large = ece_noise_floor(p, n_draws=400), ece_noise_floor(np.tile(p, 8), n_draws=400)
    # Sampling noise alone: ~0.09 for mid-range probabilities at n=126, shrinking ~1/sqrt(n).
    assert 0.06 < small["mean"] < 0.12 and small["q95"] > small["mean"]
    assert large["mean"] < small["mean"] / 2 and large["n"] == 1008
    assert ece_noise_floor(np.zeros(50), n_draws=50)["mean"] == 0.0


def test_youden_ties_go_to_the_highest_threshold_exactly():
    from breastai.reporting.metrics import choose_threshold

    # J = 1/3 at thresholds 0.6 and 0.5; in floats tpr - fpr differs in the last bit between them.
    assert choose_threshold([0, 1, 1, 0, 1, 0], [0.8, 0.5, 0.6, 0.5, 0.8, 0.2]) == 0.6


def test_paired_auc_difference_ci_resamples_cases_jointly():
    """The difference of two scorings' AUCs on the same cases, inside its own paired interval; a scoring
    against itself differs by exactly 0; the interval is deterministic by seed."""
    from breastai.reporting.auc_compare import paired_auc_difference_ci
    from breastai.reporting.metrics import roc_auc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    a, b = y + rng.normal(0, 1, 200), y + rng.normal(0, 1.3, 200)
    d, lo, hi = paired_auc_difference_ci(y, a, b, 500)
    assert d == pytest.approx(roc_auc(y, a) - roc_auc(y, b)) and lo < d < hi and hi - lo < 0.25
    assert paired_auc_difference_ci(y, a, b, 500) == (d, lo, hi)
    assert paired_auc_difference_ci(y, a, a, 200) == (0.0, 0.0, 0.0)
    with pytest.raises(Exception, match="n_boot"):
        paired_auc_difference_ci(y, a, b, 0)
