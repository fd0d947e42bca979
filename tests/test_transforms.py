import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from breastai.core.config import load_config
from breastai.data.readers.registry import ImageReadError
from breastai.data.transforms import build_transforms, square_box


def _sample(tmp_path, h=90, w=150, rgb=False):
    rng = np.random.default_rng(0)
    img = (rng.random((h, w)) * 200).astype(np.uint8)
    img[30:50, 100:130] = 255
    mask = np.zeros((h, w), np.uint8)
    mask[30:50, 100:130] = 255
    ip, mp = tmp_path / "i.png", tmp_path / "m.png"
    Image.fromarray(np.stack([img] * 3, -1) if rgb else img).save(ip)
    Image.fromarray(mask).save(mp)
    return {"image": str(ip), "mask": [str(mp)], "label": "malignant", "case_id": "c1", "group": "g"}


@pytest.mark.parametrize("mode", ["whole", "crop"])
@pytest.mark.parametrize("train", [False, True])
def test_keys_shapes_ranges(tmp_path, mode, train):
    cfg = load_config(None, [f"preprocess.mode={mode}", "preprocess.size=96"])
    out = build_transforms(cfg, train=train)(_sample(tmp_path))
    assert out["image"].shape == (1, 96, 96) and out["image"].dtype == torch.float32
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert out["mask"].shape == (1, 96, 96)
    assert out["label"] == 1 and out["case_id"] == "c1"
    assert "group" not in out
    if not train:
        # The lesion keeps its aspect ratio: 20x30 source pixels stay 2:3 after the square box.
        rows = np.flatnonzero(out["mask"][0].numpy().any(1))
        cols = np.flatnonzero(out["mask"][0].numpy().any(0))
        assert (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1) == pytest.approx(20 / 30, abs=0.08)


def test_crop_centres_lesion(tmp_path):
    cfg = load_config(None, ["preprocess.mode=crop", "preprocess.size=64", "preprocess.margin=0.5", "preprocess.min_crop=8"])
    out = build_transforms(cfg, train=False)(_sample(tmp_path))
    m = out["mask"][0].numpy()
    r, c = np.argwhere(m > 0).mean(0)
    assert abs(r - 31.5) < 2 and abs(c - 31.5) < 2
    # 30 px lesion side + 2 * 0.5 * 30 margin = 60 px box
    assert out["box"][2] == 60
    assert m.sum() / m.size == pytest.approx(20 * 30 / 60**2, rel=0.1)


def test_crop_floor_relative_to_image_keeps_lesion_size_visible():
    small, large = np.zeros((200, 300), bool), np.zeros((200, 300), bool)
    small[90:110, 140:160] = True  # 20 px
    large[20:180, 70:230] = True  # 160 px
    # Without the floor both lesions fill the same share of their crop (size is lost) ...
    assert square_box(small, (200, 300), "crop", 0.25, 16)[2] == 30
    assert square_box(large, (200, 300), "crop", 0.25, 16)[2] == 240
    # ... with it, a small lesion keeps a crop of 0.6 x the short side (120 px), centred on it,
    # and a large one is unaffected.
    assert square_box(small, (200, 300), "crop", 0.25, 16, 0.6).tolist() == [40, 90, 120]
    assert square_box(large, (200, 300), "crop", 0.25, 16, 0.6)[2] == 240


def test_whole_image_box_pads_short_side():
    box = square_box(None, (90, 150), "whole", 0.3, 64)
    assert box.tolist() == [-30, 0, 150]


def test_rgb_image_becomes_grey(tmp_path):
    cfg = load_config(None, ["preprocess.size=64"])
    out = build_transforms(cfg, train=False)(_sample(tmp_path, rgb=True))
    assert out["image"].shape == (1, 64, 64)


def test_mask_channel(tmp_path):
    cfg = load_config(None, ["preprocess.mode=crop", "preprocess.size=64", "preprocess.mask_channel=true"])
    out = build_transforms(cfg, train=False)(_sample(tmp_path))
    assert out["image"].shape == (2, 64, 64)
    assert set(torch.unique(out["image"][1]).tolist()) <= {0.0, 1.0}


def test_crop_mode_needs_a_mask(tmp_path):
    s = _sample(tmp_path)
    s["mask"] = []
    cfg = load_config(None, ["preprocess.mode=crop"])
    with pytest.raises(ImageReadError, match="non-empty lesion mask"):
        build_transforms(cfg, train=False)(s)


def test_mask_of_other_size_is_an_error(tmp_path):
    s = _sample(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "m2.png")
    s["mask"] = [str(tmp_path / "m2.png")]
    with pytest.raises(ImageReadError, match="does not match image shape"):
        build_transforms(load_config(), train=False)(s)


def test_normalisation_ignores_few_bright_pixels(tmp_path):
    # Burnt-in text: a handful of saturated pixels must not squash the tissue range.
    rng = np.random.default_rng(1)
    img = (rng.random((100, 100)) * 100).astype(np.uint8)
    img[:3, :3] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    out = build_transforms(load_config(None, ["preprocess.size=100"]), train=False)({"image": str(tmp_path / "a.png"), "label": "benign"})
    assert float(out["image"][0, 50:, :].mean()) > 0.4


def test_augmentation_is_random_but_seeded(tmp_path):
    cfg = load_config(None, ["preprocess.size=64"])
    t = build_transforms(cfg, train=True)
    s = _sample(tmp_path)
    t.set_random_state(seed=1)
    a = t(s)["image"]
    t.set_random_state(seed=1)
    b = t(s)["image"]
    c = t(s)["image"]
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def test_coarse_outline_recovers_an_ellipse_and_a_box():
    from breastai.data.augment import coarse_outline

    yy, xx = np.mgrid[:120, :160]
    ell = ((yy - 50) / 30.0) ** 2 + ((xx - 90) / 55.0) ** 2 <= 1  # axis-aligned
    rot = ((yy - 60 + (xx - 80) * 0.5) / 15.0) ** 2 + ((xx - 80) / 40.0) ** 2 <= 1  # sheared: a tilted ellipse
    for m in (ell, rot):
        e = coarse_outline(m.astype(np.float32), "ellipse") > 0
        assert (e & m).sum() / (e | m).sum() > 0.97
    b = coarse_outline(rot.astype(np.float32), "box")
    ys, xs = np.nonzero(rot)
    assert b.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1) and b[ys.min(), xs.min()] == 1
    assert coarse_outline(np.zeros((8, 8)), "ellipse").sum() == 0


def _star_sample(tmp_path):
    yy, xx = np.mgrid[:120, :160]
    ang, r = np.arctan2(yy - 60, xx - 80), np.hypot(yy - 60, xx - 80)
    star = (r <= 25 + 12 * np.cos(7 * ang)).astype(np.uint8) * 255  # spiculated: far from its ellipse and box
    img = np.full((120, 160), 90, np.uint8)
    img[star > 0] = 40
    ip, mp = tmp_path / "s.png", tmp_path / "s_mask.png"
    Image.fromarray(img).save(ip)
    Image.fromarray(star).save(mp)
    return {"image": str(ip), "mask": [str(mp)], "label": "malignant", "case_id": "s", "group": "g"}


def test_coarse_outline_augmentation_changes_only_the_mask_channel(tmp_path):
    from breastai.data.augment import coarse_outline

    plain = ["augment.hflip=0", "augment.affine=0", "augment.contrast_prob=0", "augment.noise_prob=0",
             "augment.blur_prob=0"]
    base = ["preprocess.mode=crop", "preprocess.size=64", "preprocess.mask_channel=true", *plain]
    s = _star_sample(tmp_path)
    ref = build_transforms(load_config(None, base), train=True)(s)
    assert torch.equal(ref["image"][1], ref["mask"][0])  # coarse_outline defaults to 0: the traced outline
    t = build_transforms(load_config(None, [*base, "augment.coarse_outline=1.0"]), train=True)
    t.set_random_state(seed=0)
    traced = ref["mask"][0].numpy()
    kinds = set()
    for _ in range(8):
        out = t(s)
        assert torch.equal(out["mask"], ref["mask"]) and torch.equal(out["image"][0], ref["image"][0])
        channel = out["image"][1].numpy()
        kind = [k for k in ("ellipse", "box") if np.array_equal(channel, coarse_outline(traced, k))]
        assert len(kind) == 1 and not np.array_equal(channel, traced)
        kinds |= set(kind)
    assert kinds == {"ellipse", "box"}
    # Evaluation and inference never coarsen.
    ev = build_transforms(load_config(None, [*base, "augment.coarse_outline=1.0"]), train=False)(s)
    assert torch.equal(ev["image"][1], ev["mask"][0])


def test_outline_smoothing_makes_a_jagged_and_a_smooth_trace_of_one_lesion_alike(tmp_path):
    from breastai.data.augment import jitter_outline

    yy, xx = np.mgrid[:120, :160]
    smooth = ((yy - 60) ** 2 / 30**2 + (xx - 80) ** 2 / 45**2 <= 1).astype(np.uint8) * 255
    # The same ellipse traced as a rough polygon: its edge pixels randomly in or out.
    edge = (smooth > 0) & ~(np.roll(smooth, 1, 0) > 0) | (smooth > 0) & ~(np.roll(smooth, -1, 1) > 0)
    rng = np.random.default_rng(0)
    ring = np.abs(np.sqrt((yy - 60) ** 2 / 30**2 + (xx - 80) ** 2 / 45**2) - 1) < 0.06
    jagged = np.where(ring, (rng.random(ring.shape) < 0.5) * 255, smooth).astype(np.uint8)
    assert edge.any() and (jagged != smooth).sum() > 200
    img = np.full((120, 160), 90, np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    channels = {}
    for name, m in (("smooth", smooth), ("jagged", jagged)):
        Image.fromarray(m).save(tmp_path / f"{name}.png")
        s = {"image": str(tmp_path / "i.png"), "mask": [str(tmp_path / f"{name}.png")], "label": "benign", "case_id": name}
        base = ["preprocess.mode=crop", "preprocess.size=96", "preprocess.mask_channel=true"]
        plain = build_transforms(load_config(None, base), train=False)(s)
        out = build_transforms(load_config(None, [*base, "preprocess.outline_smooth=0.03"]), train=False)(s)
        assert torch.equal(plain["image"][1], plain["mask"][0])  # off by default: the traced outline
        assert torch.equal(out["mask"], plain["mask"])  # the mask itself stays as traced
        traced = out["mask"][0].numpy()
        d = 2 * np.sqrt(traced.sum() / np.pi)  # the equivalent diameter, written out
        assert np.array_equal(out["image"][1].numpy(), jitter_outline(traced, "smooth", 0.03 * d))
        channels[name] = (plain["image"][1].numpy() > 0.5, out["image"][1].numpy() > 0.5)
    from skimage.measure import perimeter

    # The jagged trace's edge is much longer than the smooth one's; smoothed, about as long.
    raw = perimeter(channels["jagged"][0]) / perimeter(channels["smooth"][0])
    smoothed = perimeter(channels["jagged"][1]) / perimeter(channels["smooth"][1])
    assert raw > 1.15 and smoothed < 1.05


def test_equalisation_makes_two_scanners_grey_curves_alike(tmp_path):
    # One scene (speckled tissue, a dark lesion, the scanner's black border) through two grey curves.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:120, :160]
    lesion = (yy - 60) ** 2 / 25**2 + (xx - 80) ** 2 / 35**2 <= 1
    # Speckle grains of 4x4 pixels, as real speckle is correlated (a resize then mixes few grains).
    scene = np.clip(0.55 + 0.15 * np.kron(rng.standard_normal((30, 40)), np.ones((4, 4))), 0.05, 1.0)
    scene[lesion] *= 0.35
    scene[:, :12] = 0.0
    curves = {"a": scene, "b": 0.8 * scene ** 0.5}  # another scanner: a gamma and a lower gain
    mask = lesion.astype(np.uint8) * 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = {}
    for name, img in curves.items():
        Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp_path / f"{name}.png")
        s = {"image": str(tmp_path / f"{name}.png"), "mask": [str(tmp_path / "m.png")], "label": "benign", "case_id": name}
        base = ["preprocess.mode=crop", "preprocess.size=96", "preprocess.margin=1.0", "preprocess.mask_channel=true"]
        plain = build_transforms(load_config(None, base), train=False)(s)
        eq = build_transforms(load_config(None, [*base, "preprocess.equalize=true"]), train=False)(s)
        assert torch.equal(eq["image"][1], plain["image"][1])  # the outline channel is not touched
        out[name] = (plain["image"][0].numpy(), eq["image"][0].numpy())
    eq_gap = np.abs(out["a"][1] - out["b"][1])
    # Pixels the resize mixed with the black border rank by how the curve bends the mixture: left out.
    inner = binary_erosion(out["a"][0] > 0, np.ones((3, 3), bool))
    plain_gap = np.abs(out["a"][0] - out["b"][0])[inner]
    # Left: 8-bit ties and the resize's mixing at the lesion's edge, a few hundredths at most.
    assert plain_gap.mean() > 0.1 and eq_gap[inner].mean() < 0.02 and np.quantile(eq_gap[inner], 0.95) < 0.04
    img = out["a"][1]
    assert (img[:, :2] == 0).all()  # the black border stays black and is not part of the histogram
    tissue = img[img > 0]
    assert np.median(tissue) == pytest.approx(0.5, abs=0.05) and tissue.max() == pytest.approx(1.0, abs=0.01)
