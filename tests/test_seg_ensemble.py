"""Segmenters averaged (``breastai ensemble`` over segmenter runs): one checkpoint that outlines with the
mean of its members' mask and presence probabilities, wherever a segmenter is accepted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import blob_image, predict_cli
from PIL import Image
from test_seg_calibrate import local_datalist

from breastai.cli import main
from breastai.engine.bundle import bundle_pipeline
from breastai.engine.seg_ensemble import build_segmenter_ensemble, segmenter_ensemble
from breastai.engine.seg_recalibrate import rethreshold_segmenter
from breastai.inference.predictor import Predictor
from breastai.models.checkpoint import CheckpointError, weights_digest
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.outliner import Outliner


@pytest.fixture(scope="module")
def members(seg_ckpt, tmp_path_factory):
    """The trained segmenter and a second one: its weights nudged, its threshold and seen images its own."""
    folder = tmp_path_factory.mktemp("members")
    other = load_checkpoint(seg_ckpt)
    gen = torch.Generator().manual_seed(0)
    other.weights = {k: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                     and v.numel() > 1 else v for k, v in other.weights.items()}
    other.threshold = 0.3
    other.seen_images = {"train": ["sha256:other"], "val": []}
    return [seg_ckpt, save_checkpoint(folder / "other.pt", other)]


@pytest.fixture(scope="module")
def ens(members, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    build_segmenter_ensemble(members, out)
    return out / "best.pt"


def test_the_ensemble_outlines_with_its_members_mean(members, ens, tmp_path):
    a, b = (Outliner.from_checkpoint(m) for m in members)
    both = Outliner.from_checkpoint(ens)  # loaded with weights_only=True like every checkpoint
    img, _ = blob_image((80, 96), [(40, 50, 12)], seed=3)
    Image.fromarray(img).save(tmp_path / "a.png")
    image, meta = both.read(tmp_path / "a.png")
    ma, mb, mboth = a.maps(image, meta), b.maps(image, meta), both.maps(image, meta)
    assert not np.allclose(ma[0], mb[0], atol=1e-4)  # two different members
    np.testing.assert_allclose(mboth[0], (ma[0] + mb[0]) / 2, atol=1e-6)
    assert mboth[1] == pytest.approx((ma[1] + mb[1]) / 2)
    assert both.threshold == pytest.approx(np.median([0.5, 0.3])) and both.name == "ensemble of 2 unet_small"
    found = both.outline(image, meta)
    assert len(found.lesions) == 1 and found.lesions[0].probability >= both.threshold
    ckpt = load_checkpoint(ens)
    assert ckpt.is_ensemble and ckpt.combine == "mean" and weights_digest(ckpt) != weights_digest(load_checkpoint(members[0]))
    assert "sha256:other" in ckpt.seen_images["train"]  # it has seen what any member has
    assert len(set(ckpt.seen_images["train"])) == len(ckpt.seen_images["train"]) > 1
    summary = json.loads((ens.parent / "summary.json").read_text())
    assert summary["member_thresholds"] == [0.5, 0.3] and summary["threshold"] == pytest.approx(0.4)


def test_members_must_be_segmenters_of_one_recipe(members, ckpt, tmp_path):
    seg = [load_checkpoint(m) for m in members]
    with pytest.raises(CheckpointError, match="at least 2 members"):
        segmenter_ensemble(seg[:1], ["a"])
    with pytest.raises(CheckpointError, match="b.pt: is a classifier"):
        segmenter_ensemble([seg[0], load_checkpoint(ckpt)], ["a.pt", "b.pt"])
    other = load_checkpoint(members[1])
    other.config = {**other.config, "seg": {**other.config["seg"], "pixel_threshold": 0.3}}
    with pytest.raises(CheckpointError, match="b.pt: its lesion rules differ"):
        segmenter_ensemble([seg[0], other], ["a.pt", "b.pt"])
    nested = segmenter_ensemble(seg, ["a", "b"])
    with pytest.raises(CheckpointError, match="c: is an ensemble"):
        segmenter_ensemble([seg[0], nested], ["a", "c"])


def test_cli_builds_from_runs_and_files_and_refuses_classifier_options(members, ckpt, tmp_path, capsys):
    run = members[0].parent  # a run folder (best.pt) beside a checkpoint file
    out = tmp_path / "e"
    assert main(["ensemble", str(run), str(members[1]), "--out", str(out)]) == 0
    assert "segmenter ensemble of 2" in capsys.readouterr().out and (out / "best.pt").is_file()
    assert main(["ensemble", str(run), str(members[1]), "--out", str(tmp_path / "s"), "--combine", "stack"]) == 2
    assert "--combine stack and --segmenter-run are for classifiers" in capsys.readouterr().err
    assert main(["ensemble", str(members[1]), str(ckpt), "--out", str(tmp_path / "m")]) == 2
    assert "mix segmenters and classifiers" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_predict_and_a_pipeline_take_the_ensemble(ens, ckpt, tmp_path):
    crop = load_checkpoint(ckpt)
    crop.config["preprocess"]["mode"] = "crop"
    img, mask = blob_image((80, 96), [(40, 50, 12)], seed=5)
    f = tmp_path / "a.png"
    Image.fromarray(img).save(f)
    pipe = save_checkpoint(tmp_path / "pipe.pt", bundle_pipeline(crop, load_checkpoint(ens)))
    (rec,) = Predictor.from_checkpoint(pipe, device="cpu").predict(f, return_maps=True)
    m = np.asarray(rec["lesion_mask"], bool)
    assert rec["mask_source"] == "segmenter" and 2 * (m & mask).sum() / (m.sum() + mask.sum()) >= 0.85
    save_checkpoint(tmp_path / "crop.pt", crop)
    assert predict_cli(["predict", str(f), "--checkpoint", str(tmp_path / "crop.pt"), "--segmenter", str(ens),
                        "--out", str(tmp_path / "o"), "--saliency", "none"]) == 0
    run = json.loads(next((tmp_path / "o").rglob("predictions.json")).read_text())["run"]
    assert run["segmenter_threshold"] == pytest.approx(0.4)


def test_calibrate_rechooses_the_ensembles_threshold(ens, tmp_path):
    local = local_datalist(tmp_path / "site", 20, 8)
    rec = rethreshold_segmenter(ens, local, tmp_path / "local.pt", sensitivity=0.9, device="cpu")
    new = load_checkpoint(tmp_path / "local.pt")
    assert new.is_ensemble and weights_digest(new) == weights_digest(load_checkpoint(ens))
    assert rec.metrics["found_after"] >= 0.9 and new.threshold == pytest.approx(rec.threshold_after)
    assert Outliner.from_checkpoint(tmp_path / "local.pt").threshold == pytest.approx(rec.threshold_after)
