"""The out-of-distribution flag: the detector's formula, its threshold, and what predict does with it."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from breastai.core.config import ConfigError, load_config
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.ood import FeatureDensity, Gaussians, fit_feature_density


def _clusters(rng, n: int, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    return rng.normal(size=(n, d)) + 3.0 * labels[:, None], labels


def test_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    means = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    precision = np.diag([1.0, 0.25]).astype(np.float32)  # variances 1 and 4
    g = Gaussians(means, precision, shrinkage=0.0)
    x = np.array([[3.0, 0.0], [0.0, 4.0], [9.0, 2.0]])
    # sqrt(9) to class 0; sqrt(16 / 4) to class 0; sqrt(1 + 4 / 4) to class 1
    assert g.distance(x) == pytest.approx([3.0, 2.0, np.sqrt(2.0)])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        g.distance(np.zeros((1, 3)))
    # Two groups: the score is the larger scaled distance over the threshold.
    det = FeatureDensity(["layer"], [g, Gaussians(np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32), 0.0)],
                         scales=[2.0, 4.0], threshold=1.5, quantile=0.99, n_fit=10, n_val=5)
    second = np.array([[2.0], [8.0], [0.0]])
    assert det.score([x, second]) == pytest.approx([max(3 / 2, 2 / 4) / 1.5, max(2 / 2, 8 / 4) / 1.5,
                                                     max(np.sqrt(2) / 2, 0.0) / 1.5])
    with pytest.raises(ValueError, match="2 feature groups"):
        det.score([x])


def test_distance_with_a_full_precision_matrix_is_the_quadratic_form():
    """A correlated, wide group (as a network's embedding is): each row's (x - m)^T P (x - m), written out."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(64, 64))
    precision = (a @ a.T / 64 + np.eye(64)).astype(np.float32)
    means = rng.normal(size=(3, 64)).astype(np.float32)
    x = rng.normal(size=(5, 64))
    g = Gaussians(means, precision, shrinkage=0.1)
    p, m = precision.astype(np.float64), means.astype(np.float64)
    want = [min(np.sqrt((r - c) @ p @ (r - c)) for c in m) for r in x]
    np.testing.assert_allclose(g.distance(x), want, rtol=1e-10)
    np.testing.assert_allclose(g.distance(x[:1]), want[:1], rtol=1e-10)  # the cached precision is reused


def test_threshold_is_the_validation_quantile_and_far_points_are_flagged():
    rng = np.random.default_rng(0)
    train, labels = _clusters(rng, 400)
    val, _ = _clusters(rng, 200)
    low = lambda f: f[:, :3] * 0.5  # a second group: some "layer" of the same inputs
    det = fit_feature_density([low(train), train], labels, [low(val), val], quantile=0.95, layers=["low"])
    assert np.mean(det.score([low(val), val]) > 1) <= 0.05 + 1e-9  # the quantile, by construction
    new, _ = _clusters(rng, 1000)  # more of the same distribution
    assert np.mean(det.score([low(new), new]) > 1) < 0.10
    far = rng.normal(size=(100, 8)) + 12.0  # out of range in every dimension
    assert np.all(det.score([low(far), far]) > 1)
    odd_low = new.copy()
    odd_low[:, :3] += 40.0  # out of range in the first group only: still flagged
    assert np.all(det.score([low(odd_low), new]) > 1)
    assert det.n_fit == 400 and det.n_val == 200 and det.layers == ["low"]
    assert all(0 <= g.shrinkage <= 1 for g in det.groups)


def test_state_round_trip_loads_with_weights_only(tmp_path):
    rng = np.random.default_rng(1)
    train, labels = _clusters(rng, 60)
    det = fit_feature_density([train], labels, [train[:10] + 0.1], quantile=0.9)
    torch.save(det.to_state(), tmp_path / "d.pt")
    back = FeatureDensity.from_state(torch.load(tmp_path / "d.pt", weights_only=True))
    assert back.threshold == det.threshold and back.quantile == 0.9 and back.n_fit == 60 and back.layers == []
    x = rng.normal(size=(5, 8))
    assert back.score([x]) == pytest.approx(det.score([x]), rel=1e-5)


def test_refuses_what_it_cannot_fit():
    rng = np.random.default_rng(2)
    train, labels = _clusters(rng, 20)
    with pytest.raises(ValueError, match="quantile"):
        fit_feature_density([train], labels, [train], quantile=1.5)
    with pytest.raises(ValueError, match=">= 4 training and >= 2 validation"):
        fit_feature_density([train[:3]], labels[:3], [train], quantile=0.9)
    with pytest.raises(ValueError, match="feature groups"):
        fit_feature_density([train, train], labels, [train, train], quantile=0.9)  # no layer named
    with pytest.raises(ConfigError, match="eval.ood_quantile"):
        load_config(None, ["eval.ood_quantile=2"])


def _registered() -> list[str]:
    import breastai.models  # noqa: F401  (fills the registry)
    from breastai.models.registry import list_models

    return list_models("classification")


@pytest.mark.parametrize("name", _registered())
def test_every_image_model_names_layers_that_exist_and_give_channel_means(name):
    from breastai.models.ood import model_features
    from breastai.models.registry import create_model, get_spec

    spec = get_spec(name)
    layers = spec.feature_layers()
    if not spec.uses_image:  # radiomics only: the embedding (its standardised features) is the one group
        assert layers == ()
        return
    assert len(layers) == 2
    kw = {"feature_names": ["a", "b"], "selected": ["a", "b"]} if spec.requires_radiomics else {}
    model = create_model(name, in_chans=2, pretrained=False, dropout=0.0, **kw).eval()
    x = torch.rand(3, 2, 64, 64)
    groups = model_features(model, layers, x, torch.zeros(3, 2) if spec.requires_radiomics else None)
    assert len(groups) == 3 and all(g.shape[0] == 3 and g.ndim == 2 for g in groups)
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())  # hooks removed


@pytest.mark.parametrize("name", _registered())
def test_the_scoring_pass_gives_the_same_feature_groups_as_a_separate_pass(name):
    """predict reads the detector's features off the Grad-CAM++ pass (and evaluate off its scoring
    pass) instead of running the network twice: the groups must be those of model_features."""
    from breastai.models.ood import FeatureTap, model_features
    from breastai.models.registry import create_model, get_spec
    from breastai.models.saliency import SaliencyExplainer

    spec = get_spec(name)
    layers = list(spec.feature_layers())
    kw = {"feature_names": ["a", "b"], "selected": ["a", "b"]} if spec.requires_radiomics else {}
    torch.manual_seed(0)
    model = create_model(name, in_chans=2, pretrained=False, dropout=0.5, **kw).eval()
    r = torch.rand(1, 2) if spec.requires_radiomics else None
    x = torch.rand(1, 2, 64, 64)
    want = model_features(model, layers, x, r)
    with FeatureTap(model, layers) as tap:
        model(x, radiomics=r) if r is not None else model(x)
        model(torch.rand(1, 2, 64, 64), radiomics=r) if r is not None else model(torch.rand(1, 2, 64, 64))
    got = tap.groups()
    if not hasattr(model, "head"):  # the radiomics logistic regression: the caller runs model_features
        assert got is None
        return
    assert len(got) == len(want)
    for g, w in zip(got, want):  # the first pass's, not the second's
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # hooks removed
    if spec.uses_image and r is None:  # the Grad-CAM++ pass of predict (the graph starts at the target layer)
        with FeatureTap(model, layers) as tap:
            SaliencyExplainer(model, "gradcam++")(x)
        for g, w in zip(tap.groups(), want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    model.train()
    with FeatureTap(model, layers) as tap:
        model(x, radiomics=r) if r is not None else model(x)
    assert tap.groups() is None  # dropout on the embedding: not the detector's features


def _odd_images() -> dict[str, np.ndarray]:
    """Inputs unlike the synthetic ultrasound lesions: noise, a checkerboard, stripes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    return {"noise": rng.random((64, 64)).astype(np.float32),
            "checker": (((yy // 4) + (xx // 4)) % 2).astype(np.float32),
            "stripes": (np.sin(xx / 2.0) > 0).astype(np.float32)}


def test_training_fits_a_detector_that_passes_the_training_kind_and_flags_others(ckpt, predictor, synth_datalist):
    det = load_checkpoint(ckpt).ood
    assert det is not None and det.quantile == 0.99 and det.threshold > 0 and det.layers == ["backbone.6", "backbone.10"]
    rows = list(csv.DictReader(open(synth_datalist)))
    recs = predictor.predict([str(synth_datalist.parent / r["image"]) for r in rows], saliency="none")
    flagged = [r["id"] for r in recs if r["ood"]]
    assert len(flagged) <= 1, flagged  # the images it learned from (and its validation images)
    assert all(isinstance(r["ood_score"], float) and r["probability"] is not None for r in recs)
    for name, image in _odd_images().items():
        rec = predictor.predict([image], saliency="gradcam++")[0]  # the saliency hooks and the feature hooks coexist
        assert rec["ood"] is True and rec["ood_score"] > 1, name
        assert rec["probability"] is not None  # still scored, but flagged: the warning and the column say so


def test_predict_warns_about_flagged_inputs(ckpt, tmp_path):
    from PIL import Image

    odd = tmp_path / "checker.png"
    Image.fromarray((_odd_images()["checker"] * 255).astype(np.uint8)).save(odd)
    out = subprocess.run([sys.executable, "-c", "from breastai.cli import main; raise SystemExit(main())", "predict",
                          "--checkpoint", str(ckpt), str(odd), "--out", str(tmp_path / "o"), "--saliency", "none"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 of 1 image(s) are unlike the images the model was trained on" in out.stderr
    row = next(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert row["ood"] == "True" and float(row["ood_score"]) > 1


def test_no_detector_when_turned_off(synth_datalist, tiny_config, tmp_path):
    from breastai.engine.run import main
    from breastai.inference.predictor import Predictor

    out = main(tiny_config(synth_datalist, tmp_path, "train.epochs=1", "eval.ood_quantile=0", "log.tensorboard=false"))
    best = out["run_dir"] + "/best.pt"
    assert load_checkpoint(best).ood is None
    rec = Predictor.from_checkpoint(best, device="cpu").predict([_odd_images()["noise"]], saliency="none")[0]
    assert rec["ood"] is None and rec["ood_score"] is None and rec["probability"] is not None


def test_an_ensemble_flags_what_any_member_flags(ckpt):
    from breastai.engine.ensemble import ensemble_state
    from breastai.inference.predictor import Predictor

    member = load_checkpoint(ckpt)
    single = Predictor.from_state(member, device="cpu")
    both = Predictor.from_state(ensemble_state([member, member], np.array([0.5, 0.5]), 0.0, "mean", 0.5, {},
                                               ["a", "b"]), device="cpu")
    image = _odd_images()["stripes"]
    assert both.predict([image], saliency="none")[0]["ood_score"] == pytest.approx(
        single.predict([image], saliency="none")[0]["ood_score"])


def test_evaluate_reports_the_flagged_share(ckpt, synth_datalist, tmp_path):
    from breastai.engine.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(ckpt, synth_datalist, tmp_path / "ev", device="cpu", n_boot=50)
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    scores = np.array([float(r["ood_score"]) for r in rows])
    assert rep["ood_flagged"] == pytest.approx(np.mean(scores > 1)) and rep["ood_flagged"] <= 1 / len(rows)


def test_refit_from_the_training_datalist_gives_the_detector_training_fitted(ckpt, synth_datalist):
    from breastai.data.frames import read_samples
    from breastai.engine.ood import refit_detector
    from breastai.models.checkpoint import CheckpointError

    trained = load_checkpoint(ckpt)
    records = read_samples(synth_datalist, trained.config["data"], trained.classes)
    again = refit_detector(trained, records, torch.device("cpu"))
    assert again.layers == trained.ood.layers and (again.n_fit, again.n_val) == (trained.ood.n_fit, trained.ood.n_val)
    assert again.scales == pytest.approx(trained.ood.scales, rel=1e-4)
    assert again.threshold == pytest.approx(trained.ood.threshold, rel=1e-4)
    with pytest.raises(ValueError, match="give the datalist it was trained on"):
        refit_detector(trained, records[:5], torch.device("cpu"))
    trained.seen_images = None
    with pytest.raises(CheckpointError, match="no digests"):
        refit_detector(trained, records, torch.device("cpu"))


def test_the_first_embedding_only_state_still_loads():
    rng = np.random.default_rng(3)
    train, labels = _clusters(rng, 40)
    det = fit_feature_density([train], labels, [train[:8] + 0.2], quantile=0.9)
    g = det.groups[0]
    old = {"means": torch.from_numpy(g.means), "precision": torch.from_numpy(g.precision), "threshold": 2.5,
           "quantile": 0.9, "shrinkage": g.shrinkage, "n_fit": 40, "n_val": 8}
    back = FeatureDensity.from_state(old)
    assert back.score([train[:3]]) == pytest.approx(g.distance(train[:3]) / 2.5, rel=1e-5)
