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


def _nudged(seg_ckpt, path, seed: int, scale: float, **changes):
    """A copy of the trained segmenter with its weights nudged by ``scale`` of each tensor's spread,
    and ``changes`` (threshold, seen images) set on it."""
    other = load_checkpoint(seg_ckpt)
    gen = torch.Generator().manual_seed(seed)
    other.weights = {k: v + scale * v.std().nan_to_num() * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                     and v.numel() > 1 else v for k, v in other.weights.items()}
    for k, v in changes.items():
        setattr(other, k, v)
    return save_checkpoint(path, other)


@pytest.fixture(scope="module")
def members(seg_ckpt, tmp_path_factory):
    """The trained segmenter and a second one: its weights nudged, its threshold and seen images its own."""
    other = _nudged(seg_ckpt, tmp_path_factory.mktemp("members") / "other.pt", 0, 0.05, threshold=0.3,
                    seen_images={"train": ["sha256:other"], "val": []})
    return [seg_ckpt, other]


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


@pytest.fixture(scope="module")
def seed_pair(seg_ckpt, tmp_path_factory):
    """The trained segmenter and a 'second seed' of it: weights nudged, the same training and validation parts."""
    return [seg_ckpt, _nudged(seg_ckpt, tmp_path_factory.mktemp("seeds") / "seed1.pt", 1, 0.1, threshold=0.9)]


def test_a_seed_pairs_threshold_is_chosen_on_its_shared_validation_part(seed_pair, tmp_path, monkeypatch):
    """The same threshold as calibrate chooses on those rows (found independently, from the run's split)."""
    from breastai.engine import seg_recalibrate
    from breastai.data.datalist import read_datalist, write_datalist
    from breastai.data.frames import read_samples
    from breastai.engine.run import run_splits

    first = load_checkpoint(seed_pair[0])
    datalist = first.config["data"]["datalist"]
    records = read_samples(datalist, first.config["data"])
    val = [records[i] for i in run_splits(first.config, records)[0]["val"]]
    s = build_segmenter_ensemble(seed_pair, tmp_path / "pair", threshold_from=datalist, device="cpu")
    chosen = s["threshold_chosen_on"]
    masks = [[r["mask"]] if isinstance(r["mask"], str) else r["mask"] for r in val]
    assert chosen["images"] == len(val)
    assert chosen["lesion_images"] == sum(any(np.asarray(Image.open(m)).any() for m in ms) for ms in masks)
    median = build_segmenter_ensemble(seed_pair, tmp_path / "median")
    assert median["threshold"] == pytest.approx(np.median([0.5, 0.9])) and median["threshold_chosen_on"] is None
    ids, val_csv = {r["case_id"] for r in val}, tmp_path / "val.csv"
    write_datalist([row for row in read_datalist(datalist) if row["case_id"] in ids], val_csv)
    monkeypatch.setattr(seg_recalibrate, "MIN_LESION_IMAGES", 1)  # the tiny run validated on 6 lesion images
    rec = rethreshold_segmenter(tmp_path / "median" / "best.pt", val_csv, tmp_path / "cal.pt", device="cpu")
    assert s["threshold"] == pytest.approx(rec.threshold_after) and s["threshold"] != pytest.approx(median["threshold"])
    assert chosen["found"] >= first.config["seg"]["presence_sensitivity"]
    ens = load_checkpoint(tmp_path / "pair" / "best.pt")
    assert ens.threshold == pytest.approx(s["threshold"]) and "shared validation" in ens.config["ensemble"]["threshold"]
    assert Outliner.from_checkpoint(tmp_path / "pair" / "best.pt").threshold == pytest.approx(s["threshold"])


def test_threshold_from_refuses_members_without_a_shared_part_and_another_datalist(seed_pair, members, tmp_path, capsys):
    datalist = load_checkpoint(seed_pair[0]).config["data"]["datalist"]
    with pytest.raises(CheckpointError, match="keeps no digests of its validation images"):
        build_segmenter_ensemble(members, tmp_path / "a", threshold_from=datalist, device="cpu")
    other = local_datalist(tmp_path / "site", 12, 4)
    with pytest.raises(ValueError, match="0 of its 16 images are in every member's validation part"):
        build_segmenter_ensemble(seed_pair, tmp_path / "b", threshold_from=other, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["ensemble", *map(str, seed_pair), "--out", str(tmp_path / "c"), "--threshold-from", datalist,
                 "--device", "cpu"]) == 0
    assert "chosen on the members' shared validation part: 8 images" in capsys.readouterr().out
    # Without the option the median stays, and the user is told where the threshold could be chosen.
    assert main(["ensemble", *map(str, seed_pair), "--out", str(tmp_path / "d")]) == 0
    assert f"add --threshold-from {datalist}" in capsys.readouterr().out
    assert main(["ensemble", *map(str, members), "--out", str(tmp_path / "e")]) == 0
    assert "--threshold-from" not in capsys.readouterr().out  # members that validated on other images


def test_threshold_from_is_for_segmenters(ckpt, tmp_path, capsys):
    run = ckpt.parent
    assert main(["ensemble", str(run), str(run), "--out", str(tmp_path / "x"), "--threshold-from", "x.csv"]) == 2
    assert "--threshold-from is for segmenter ensembles" in capsys.readouterr().err
