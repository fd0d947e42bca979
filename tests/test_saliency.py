"""Saliency maps: geometry back to the original image, every model, overlays, calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.models.calibration import apply_temperature, fit_temperature
from breastai.data.transforms import LoadSampled, NormalizeIntensityRobustd, SquareBoxd
from breastai.models.registry import MODELS, create_model, list_models
from breastai.models.saliency import SaliencyExplainer, heat_overlay, normalise_map, saliency_grid
from breastai.data.geometry import map_to_original


def _blob_image(shape, centre, radius=4.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * radius**2)).astype(np.float32)
    return img, ((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= (3 * radius) ** 2)


def _network_input(img, mask, mode, size=32):
    d = {"image": img, "mask": mask}
    for t in (LoadSampled(), NormalizeIntensityRobustd("minmax"), SquareBoxd(mode, size, margin=0.3, min_side=16)):
        d = t(d)
    return d


@pytest.mark.parametrize("mode", ["whole", "crop"])
def test_map_of_a_blob_comes_back_at_its_place(mode):
    shape, centre = (60, 100), (20, 80)  # non-square: the whole-image box is padded
    img, lesion = _blob_image(shape, centre)
    d = _network_input(img, lesion, mode)
    net_map = d["image"][0]  # the "saliency" of the blob is the blob itself
    back = map_to_original(net_map, d["box"], shape)
    assert back.shape == shape
    r, c = np.unravel_index(np.argmax(back), shape)
    tol = max(1.5, d["box"][2] / 32)  # one input pixel
    assert abs(r - centre[0]) <= tol and abs(c - centre[1]) <= tol
    if mode == "crop":  # outside the crop box there is no map
        r0, c0, side = d["box"]
        assert back[:, : max(c0, 0)].max() == 0.0


def test_map_goes_back_through_a_dicom_crop_and_flip():
    shape, centre = (80, 120), (30, 100)
    orig, lesion = _blob_image(shape, centre)
    crop = (10, 70, 40, 120)  # (r0, r1, c0, c1) as the DICOM reader records it
    reader_img = orig[crop[0] : crop[1], crop[2] : crop[3]][:, ::-1].copy()  # then mirrored
    reader_mask = lesion[crop[0] : crop[1], crop[2] : crop[3]][:, ::-1].copy()
    meta = {"crop_box": list(crop), "flipped_lr": True, "rows": shape[0], "cols": shape[1]}
    for mode in ("whole", "crop"):
        d = _network_input(reader_img, reader_mask, mode)
        back = map_to_original(d["image"][0], d["box"], reader_img.shape, meta)
        assert back.shape == shape
        r, c = np.unravel_index(np.argmax(back), shape)
        assert abs(r - centre[0]) <= 2 and abs(c - centre[1]) <= 2, (mode, r, c)
        assert back[:, :40].max() == 0.0 and back[:10].max() == 0.0  # outside the reader's crop


@pytest.mark.parametrize("name", list_models("classification"))
def test_every_registered_model_yields_a_map(name):
    torch.manual_seed(0)
    in_chans = 2 if name == "small_cnn" else 1  # the mask-channel variant is covered too
    spec = MODELS[name]
    if not spec.uses_image:
        pytest.skip(f"{name} scores radiomics only: no image feature map to explain")
    b = 2 if name == "small_cnn" else 1  # tiny inputs keep the big models fast on 2 CPU cores
    x = torch.rand(b, in_chans, 32, 40)
    if spec.requires_radiomics:
        from breastai.inference.scorer import _WithRadiomics

        feats = [f"f{i}" for i in range(6)]
        net = create_model(name, in_chans=in_chans, pretrained=False, backbone="small_cnn", feature_names=feats,
                           selected=feats, stats={"mean": np.zeros(6), "scale": np.ones(6)})
        model = _WithRadiomics(net).eval()  # how predict binds a lesion's radiomics vector
        model.radiomics = torch.randn(1, 6)
    else:
        model = create_model(name, in_chans=in_chans, pretrained=False).eval()
    with torch.no_grad():
        ref = model(x)
    for method in ("gradcam", "gradcam++"):
        logits, maps = SaliencyExplainer(model, method)(x)
        assert maps.shape == (b, 32, 40)
        assert torch.isfinite(maps).all() and (maps >= 0).all()
        torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)  # the scores come from the same pass


def test_gradcam_points_at_what_drives_the_logit():
    # A hand-built "model" whose logit is the mean brightness of the top-left quadrant.
    model = create_model("small_cnn", pretrained=False).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.weight[:, :, 1, 1] = 1.0 / m.weight.shape[1]
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_parameters()
                m.eval()
        model.head.weight.fill_(1.0)
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 8:20, 40:52] = 1.0
    for method in ("gradcam", "gradcam++", "occlusion"):
        _, maps = SaliencyExplainer(model, method)(x)
        r, c = np.unravel_index(int(maps[0].argmax()), (64, 64))
        assert 6 <= r <= 22 and 38 <= c <= 54, (method, r, c)


def test_saliency_grid_for_tensorboard_leaves_the_model_alone():
    model = create_model("small_cnn", pretrained=False)
    model.train()
    n_hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    imgs = torch.rand(3, 1, 32, 32)
    masks = torch.zeros(3, 1, 32, 32)
    masks[:, :, 8:20, 8:20] = 1
    grid = saliency_grid(model, imgs, masks)
    assert grid.shape == (3, 3, 32, 32) and grid.min() >= 0 and grid.max() <= 1
    assert model.training
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == n_hooks
    # The lesion outline is drawn in pure green.
    assert torch.allclose(grid[0, :, 8, 10], torch.tensor([0.0, 1.0, 0.0]))


def test_overlay_and_normalisation():
    img = np.full((20, 30), 0.5, np.float32)
    heat = np.zeros((20, 30), np.float32)
    heat[5, 7] = 3.0
    m = normalise_map(heat)
    assert m.max() == 1.0 and m[0, 0] == 0.0
    assert normalise_map(np.zeros((4, 4))).max() == 0.0
    mask = np.zeros((20, 30), bool)
    mask[10:16, 10:20] = True
    rgb = heat_overlay(img, heat, mask)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # no heat: the grey image shows through
    assert tuple(rgb[10, 12]) == (0, 255, 0) and tuple(rgb[12, 14]) != (0, 255, 0)  # outline only
    assert rgb[5, 7, 0] > 180 and rgb[5, 7, 2] < 100  # the hot spot is red


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logit))).astype(float)
    over = 4.0 * true_logit  # an overconfident model: logits 4x too large

    def nll(p):
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    t = fit_temperature(over, y)
    assert 3.0 < t < 5.0
    assert nll(apply_temperature(over, t)) < nll(apply_temperature(over, 1.0)) - 0.1
    # Ranking (hence AUC) unchanged.
    assert np.array_equal(np.argsort(apply_temperature(over, t)), np.argsort(over))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_frozen_weights_shortcut_gives_the_same_map(method):
    # Inference freezes the weights and backpropagates from the target layer only; the map must
    # equal the one from a full backward pass through a trainable copy.
    import copy

    torch.manual_seed(1)
    model = create_model("resnet18", pretrained=False).eval()
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    x = torch.rand(2, 1, 64, 64)
    z1, m1 = SaliencyExplainer(model, method)(x)
    z2, m2 = SaliencyExplainer(frozen, method)(x)
    assert m1.abs().max() > 0
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(m1, m2, rtol=1e-4, atol=1e-6 * float(m1.abs().max()))


def test_bicubic_map_peaks_between_cell_centres_towards_the_stronger_neighbour():
    from breastai.models.saliency import _upsampler

    cam = torch.zeros(1, 1, 7, 7)
    cam[0, 0, 3, 3], cam[0, 0, 3, 4] = 1.0, 0.8  # evidence on cell 3, a little less on cell 4 to its right
    peaks = {}
    for mode in ("bilinear", "bicubic"):
        up = _upsampler(mode)((224, 224))(cam)[0, 0]
        peaks[mode] = np.unravel_index(int(up.argmax()), (224, 224))
    assert peaks["bilinear"][0] in (111, 112) and peaks["bicubic"][0] in (111, 112)  # same row
    assert peaks["bilinear"][1] in (111, 112)  # cell 3's centre: 3.5 cells of 32 px
    assert 112 < peaks["bicubic"][1] < 128  # pulled towards cell 4, still inside cell 3


def test_explainer_upsampling_option():
    torch.manual_seed(0)
    model = create_model("small_cnn", pretrained=False).eval()
    x = torch.rand(2, 1, 64, 64)
    z1, m1 = SaliencyExplainer(model, "gradcam++", upsample="bilinear")(x)
    z2, m2 = SaliencyExplainer(model, "gradcam++")(x)  # bicubic by default
    torch.testing.assert_close(z1, z2)  # the score does not depend on how the map is drawn
    assert m2.shape == m1.shape == (2, 64, 64) and float(m2.min()) >= 0.0
    assert not torch.allclose(m1, m2)
    with pytest.raises(ValueError, match="bicubic, bilinear"):
        SaliencyExplainer(model, "gradcam", upsample="nearest")


def _pointing_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "saliency_pointing.py"
    spec = importlib.util.spec_from_file_location("saliency_pointing", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pointing_stats_hit_miss_distance_and_mass():
    sp = _pointing_benchmark()
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True  # area 400: diameter of the equal-area disc 2*sqrt(400/pi) = 22.57
    inside = np.zeros((100, 100), np.float32)
    inside[50, 50], inside[0, 0] = 3.0, 1.0
    s = sp.pointing_stats(inside, mask)
    assert s["hit"] == 1.0 and s["miss_distance"] == 0.0
    assert s["mass_share"] == pytest.approx(0.75) and s["area_share"] == pytest.approx(0.04)
    outside = np.zeros((100, 100), np.float32)
    outside[50, 70] = 1.0  # 11 pixels right of the nearest mask column (59)
    s = sp.pointing_stats(outside, mask)
    assert s["hit"] == 0.0 and s["mass_share"] == 0.0
    assert s["miss_distance"] == pytest.approx(11 / (2 * np.sqrt(400 / np.pi)))
    assert sp.pointing_stats(np.zeros((100, 100)), mask)["hit"] == 0.0  # an all-zero map points nowhere


def test_wilson_interval_reference_values():
    sp = _pointing_benchmark()
    from scipy.stats import binomtest

    for hits, n in ((153, 203), (517, 609), (3, 40)):
        ref = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = sp.wilson_interval(hits, n)
        assert lo == pytest.approx(ref.low, abs=2e-4) and hi == pytest.approx(ref.high, abs=2e-4)
    assert sp.wilson_interval(0, 10)[0] == 0.0 and sp.wilson_interval(10, 10)[1] == 1.0
    assert sp.wilson_interval(0, 0) == (0.0, 0.0)
