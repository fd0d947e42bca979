import numpy as np
import pytest

from breastai.models.calibration import apply_temperature, calibrated_probability, fit_temperature
from breastai.reporting.metrics import ece


def test_prior_offset_removes_class_weighting_bias():
    # True probabilities p = sigmoid(z); a model trained with pos_weight w outputs z + log(w).
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    w = 2.5
    biased = z + np.log(w)
    t_plain = fit_temperature(biased, y)
    plain = apply_temperature(biased, t_plain)
    t = fit_temperature(biased - np.log(w), y)
    fixed = calibrated_probability(biased, {"temperature": t, "logit_offset": np.log(w)})
    assert abs(t - 1.0) < 0.1
    # A temperature alone cannot undo a shift; temperature after the known offset can.
    assert ece(y, fixed) < 0.03 < ece(y, plain)


def test_calibrated_probability_defaults():
    z = np.array([-1.0, 0.0, 2.0])
    assert np.allclose(calibrated_probability(z, {}), 1 / (1 + np.exp(-z)))


def test_platt_targets_keep_the_temperature_finite_on_separable_data():
    # 25 malignant and 48 benign validation images that the model separates perfectly: the plain
    # NLL fit runs towards T = 0 (probabilities of exactly 0 and 1 for confident cases).
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.uniform(1, 12, 25), rng.uniform(-12, -1, 48)])
    y = np.r_[np.ones(25), np.zeros(48)].astype(int)
    assert fit_temperature(z, y) < 0.15
    t = fit_temperature(z, y, targets="platt")
    p = apply_temperature(z, t)
    assert t > 0.5
    # The most confident cases sit near Platt's targets 26/27 and 1/50, not at 0 and 1.
    assert 0.9 < p.max() < 0.9999 and 1e-4 < p.min() < 0.1


def test_platt_targets_agree_with_plain_fit_when_data_are_plentiful():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z / 2.0))).astype(int)  # true T = 2
    t_hard, t_platt = fit_temperature(z, y), fit_temperature(z, y, targets="platt")
    assert abs(t_hard - 2.0) < 0.15 and abs(t_platt - t_hard) < 0.01


def test_unknown_targets_are_refused():
    import pytest

    with pytest.raises(ValueError, match="platt"):
        fit_temperature(np.array([0.0, 1.0]), np.array([0, 1]), targets="soft")


@pytest.mark.parametrize("scale", [1.0, 5.0, 20.0, 40.0])
def test_separated_validation_gives_the_floor_whatever_the_logit_scale(scale):
    z = scale * np.array([1.0, 2, 3, -1, -2, -3])
    assert fit_temperature(z, [1, 1, 1, 0, 0, 0]) == 0.05
    assert 0.05 < fit_temperature(z, [1, 1, 1, 0, 0, 0], targets="platt") <= 20  # Platt keeps it finite
    # Ranked apart (AUC 1) but with a negative above 0: a finite T is the optimum, not the floor.
    shifted = z + 1.5 * scale
    t = fit_temperature(shifted, [1, 1, 1, 0, 0, 0])
    nll = lambda t: -np.mean(np.log(apply_temperature(shifted[:3], t))) - np.mean(np.log(1 - apply_temperature(shifted[3:], t)))
    assert t > 0.05 and (t == 20.0 or nll(t) <= min(nll(t * 1.1), nll(t / 1.1)) + 1e-9)  # 20: the upper clip
