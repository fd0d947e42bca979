"""Training-only augmentation against site differences: jittered outlines and caliper marks."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from breastai.core.config import load_config
from breastai.data.augment import (JITTER_KINDS, RandCalipersd, RandOutlineJitterd, draw_calipers, jitter_outline,
                                   random_transforms)
from breastai.data.transforms import build_transforms


def _disc(h=96, w=96, r=24, spike=True):
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - 48) ** 2 + (xx - 48) ** 2 <= r * r).astype(np.float32)
    if spike:
        m[46:50, 48:90] = 1.0  # a 4-pixel spicule 18 px beyond the edge
    return m


def test_dilate_and_erode_move_the_edge_by_the_radius():
    m = _disc(spike=False)
    area = m.sum()
    dil, ero = jitter_outline(m, "dilate", 3), jitter_outline(m, "erode", 3)
    # A disc of radius 24 becomes one of about 27 (dilated) and 21 (eroded).
    assert dil.sum() == pytest.approx(np.pi * 27**2, rel=0.04)
    assert ero.sum() == pytest.approx(np.pi * 21**2, rel=0.05)
    assert np.all(dil >= m) and np.all(ero <= m)
    assert jitter_outline(m, "dilate", 0).sum() == area


def test_smoothing_rounds_off_a_spicule_and_keeps_the_body():
    m = _disc()
    out = jitter_outline(m, "smooth", 3)
    assert out[48, 85] == 0 and out[48, 48] == 1  # the spicule's tip goes, the centre stays
    body = _disc(spike=False)
    iou = (out * body).sum() / np.maximum(out, body).sum()
    assert iou > 0.9


def test_jitter_keeps_tiny_and_empty_outlines():
    tiny = np.zeros((32, 32), np.float32)
    tiny[10:13, 10:13] = 1
    assert np.array_equal(jitter_outline(tiny, "erode", 4), tiny)  # nothing would survive: kept as traced
    assert jitter_outline(np.zeros((8, 8)), "smooth", 2).sum() == 0
    with pytest.raises(ValueError, match="kind must be one of dilate, erode, smooth"):
        jitter_outline(tiny, "wobble", 1)


def test_jitter_transform_draws_every_kind_within_the_strength():
    # A square with a notch: smoothing fills the notch and rounds the corners (grows and shrinks),
    # dilation only grows, erosion only shrinks.
    m = np.zeros((96, 96), np.float32)
    m[28:68, 28:68] = 1
    m[28:40, 45:51] = 0
    r0 = np.sqrt(m.sum() / np.pi)
    t = RandOutlineJitterd(prob=1.0, strength=0.1)  # up to 0.1 x 2 r0 = 4.5 px
    t.set_random_state(seed=0)
    seen = set()
    for _ in range(30):
        out = t({"mask": m[None]})
        assert np.array_equal(out["mask"][0], m)  # the traced mask itself is untouched
        o = out["outline"][0]
        grew, shrank = (o > m).sum(), (o < m).sum()
        seen.add("dilate" if grew and not shrank else "erode" if shrank and not grew else "smooth")
        # The edge moves by at most the strength's radius.
        r_eq = np.sqrt(o.sum() / np.pi)
        assert r0 - 5.5 <= r_eq <= r0 + 5.5
    assert seen == set(JITTER_KINDS)


def test_calipers_sit_on_the_lesion_edge_and_leave_the_mask():
    m = _disc(spike=False)
    img = np.full(m.shape, 0.3, np.float32)
    edge_dist = np.abs(ndimage.distance_transform_edt(m) - ndimage.distance_transform_edt(1 - m))
    rng = np.random.RandomState(0)
    near = []
    for _ in range(20):
        out = draw_calipers(img, m, rng)
        changed = out != img
        assert changed.any() and np.all(out[changed] >= 0.75) and np.all(out[changed] <= 1.0)
        near.append((edge_dist[changed] <= 9).mean())
    # The crosses (most of the marked pixels) sit within their arm's length of the edge; the sparse
    # dotted lines cross the lesion.
    assert np.mean(near) > 0.7
    t = RandCalipersd(prob=1.0)
    t.set_random_state(seed=1)
    out = t({"image": img[None], "mask": m[None]})
    assert out["image"].shape == (1, 96, 96) and out["image"].dtype == np.float32
    assert out["mask"] is not None and np.array_equal(out["mask"][0], m)


def test_calipers_without_a_lesion_still_mark_the_centre():
    out = draw_calipers(np.zeros((64, 64), np.float32), np.zeros((64, 64)), np.random.RandomState(0))
    rr, cc = np.nonzero(out)
    assert len(rr) and np.hypot(rr - 32, cc - 32).max() <= 16 + 9


def test_defaults_add_neither_transform():
    # A recipe that leaves them at 0 keeps its transforms, and so its random stream, as before.
    cfg = load_config(None, [])
    kinds = {type(t).__name__ for t in random_transforms(cfg["augment"], 64)}
    assert not kinds & {"RandOutlineJitterd", "RandCalipersd"}
    cfg = load_config(None, ["augment.outline_jitter=0.5", "augment.calipers=0.3"])
    kinds = [type(t).__name__ for t in random_transforms(cfg["augment"], 64)]
    assert kinds.index("RandCalipersd") < kinds.index("RandAdjustContrastd")  # burnt in before the gain changes
    assert kinds[-1] == "RandOutlineJitterd"  # after a coarse outline, so it jitters that too


def test_the_preset_jitters_only_the_mask_channel_and_only_in_training(tmp_path):
    img = np.full((120, 160), 90, np.uint8)
    mask = (_disc(120, 160, 30, spike=False)[:, :] * 255).astype(np.uint8)
    img[mask > 0] = 40
    Image.fromarray(img).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    s = {"image": str(tmp_path / "i.png"), "mask": [str(tmp_path / "m.png")], "label": "benign", "case_id": "c"}
    plain = ["augment.hflip=0", "augment.affine=0", "augment.contrast_prob=0", "augment.noise_prob=0",
             "augment.blur_prob=0", "preprocess.mode=crop", "preprocess.size=64", "preprocess.mask_channel=true"]
    ref = build_transforms(load_config(None, plain), train=True)(s)
    t = build_transforms(load_config(None, [*plain, "augment.outline_jitter=1.0", "augment.outline_jitter_strength=0.2"]),
                         train=True)
    t.set_random_state(seed=0)
    changed = 0
    for _ in range(6):
        out = t(s)
        assert torch.equal(out["image"][0], ref["image"][0]) and torch.equal(out["mask"], ref["mask"])
        changed += not torch.equal(out["image"][1], ref["mask"][0])
    assert changed >= 5
    ev = build_transforms(load_config(None, [*plain, "augment.outline_jitter=1.0", "augment.calipers=1.0"]),
                          train=False)(s)
    assert torch.equal(ev["image"][1], ev["mask"][0]) and torch.equal(ev["image"][0], ref["image"][0])
