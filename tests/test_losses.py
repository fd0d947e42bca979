"""The classifier's training losses: the focal form against its formula and against cross-entropy."""

from __future__ import annotations

import pytest
import torch

from breastai.core.config import ConfigError, load_config
from breastai.engine.losses import binary_focal_loss, make_loss


def test_focal_loss_follows_its_formula_and_is_weighted_cross_entropy_at_gamma_0():
    z = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    pw = torch.tensor(2.5)
    p = torch.sigmoid(z)
    pt = torch.where(y > 0, p, 1 - p)
    w = torch.where(y > 0, pw, torch.tensor(1.0))
    for gamma in (0.0, 1.0, 3.0):
        expected = (-w * (1 - pt) ** gamma * torch.log(pt)).mean()
        assert binary_focal_loss(z, y, gamma, pw) == pytest.approx(float(expected), rel=1e-5)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(z, y)
    assert binary_focal_loss(z, y, 0.0, pw) == pytest.approx(float(bce), rel=1e-6)


def test_focal_loss_stops_pushing_separated_examples():
    # Once an example is classified with confidence its gradient nearly vanishes under the focal
    # loss, where cross-entropy still pushes the logit up: what keeps focal-trained logits modest.
    z = torch.tensor([3.0], requires_grad=True)
    y = torch.tensor([1.0])
    binary_focal_loss(z, y, 3.0).backward()
    focal = float(z.grad)
    z.grad = None
    torch.nn.functional.binary_cross_entropy_with_logits(z, y).backward()
    assert abs(focal) < 0.01 * abs(float(z.grad))


def test_loss_from_config():
    cfg = load_config(None, ["train.loss=focal", "train.focal_gamma=2"])
    z, y = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0])
    assert make_loss(cfg["train"], None)(z, y) == pytest.approx(float(binary_focal_loss(z, y, 2.0)))
    plain = load_config(None, ["train.label_smoothing=0.1"])["train"]
    assert make_loss(plain, None)(z, y) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(z, y * 0.9 + 0.05)))
    with pytest.raises(ConfigError, match="train.loss"):
        load_config(None, ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="focal_gamma"):
        load_config(None, ["train.focal_gamma=-1"])
    with pytest.raises(ConfigError, match="label_smoothing"):  # it would be silently ignored
        load_config(None, ["train.loss=focal", "train.label_smoothing=0.1"])
