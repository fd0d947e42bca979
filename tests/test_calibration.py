import numpy as np

from breastai.calibration import apply_temperature, calibrated_probability, fit_temperature
from breastai.metrics import ece


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
