"""Forward and inverse geometry agree: a map on the network input lands where its pixels came from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from breastai.data.geometry import crop_resize, map_to_original, to_reader_grid
from breastai.data.transforms import LoadSampled, SquareBoxd

SIZE = 64
STORED = (180, 260)
LESION = (50, 90, 120, 170)  # r0, r1, c0, c1 on the image as stored
# DICOM-like: the reader kept rows 10..169 and columns 100..259 (the breast), then mirrored them.
# The lesion is off the crop's centre line, so a flip left undone would move it.
DICOM_META = {"crop_box": [10, 170, 100, 260], "flipped_lr": True, "rows": STORED[0], "cols": STORED[1]}


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.mark.parametrize("meta", [None, DICOM_META], ids=["plain", "dicom_crop_flip"])
@pytest.mark.parametrize("mode", ["whole", "crop"])
def test_a_lesion_box_on_the_input_maps_back_onto_the_stored_lesion(mode, meta):
    r0, r1, c0, c1 = LESION
    stored_mask = np.zeros(STORED, np.float32)
    stored_mask[r0:r1, c0:c1] = 1.0
    stored_image = np.random.default_rng(0).random(STORED, dtype=np.float32)
    reader_image = to_reader_grid(stored_image, meta) if meta else stored_image
    # The predictor's path: an array the reader returned, its meta, a mask drawn on the stored image.
    sample = {"image": reader_image, "mask": stored_mask, "reader_meta": dict(meta) if meta else None}
    d = SquareBoxd(mode, SIZE, margin=0.3, min_side=16)(LoadSampled()(sample))
    assert d["mask"].shape == (1, SIZE, SIZE) and d["mask"].any()

    on_input = np.zeros((SIZE, SIZE), np.float32)  # 1 inside the lesion's box on the network input
    ir0, ir1, ic0, ic1 = _bbox(d["mask"][0] > 0.5)
    on_input[ir0:ir1, ic0:ic1] = 1.0
    back = map_to_original(on_input, d["box"], tuple(d["orig_shape"]), meta)

    assert back.shape == STORED
    # One input pixel covers side / SIZE stored pixels: an edge may move by that much, plus one for rounding.
    tol = math.ceil(int(d["box"][2]) / SIZE) + 1
    got = _bbox(back > 0.5)
    assert np.abs(np.subtract(got, LESION)).max() <= tol, (got, LESION, tol)
    grown = np.zeros(STORED, bool)
    grown[max(r0 - tol, 0):r1 + tol, max(c0 - tol, 0):c1 + tol] = True
    assert not back[~grown].any()  # nothing lands away from the lesion


def test_a_box_off_the_image_cuts_padding_and_maps_back_to_fill():
    x = np.ones((1, 20, 30), np.float32)
    box = np.array([25, -40, 16])  # below the image and left of it
    assert not crop_resize(x, box, 8, "bilinear").any()
    np.testing.assert_array_equal(map_to_original(np.ones((8, 8)), box, (20, 30), fill=-1.0), np.full((20, 30), -1.0))


def test_a_box_past_the_edge_keeps_the_image_part_in_place():
    x = np.arange(6 * 8, dtype=np.float32).reshape(1, 6, 8)
    box = np.array([-2, 4, 6])  # rows -2..3, cols 4..9: the image's rows 0..3, cols 4..7
    cut = crop_resize(x, box, 6, "nearest")  # side == size: no resampling
    np.testing.assert_array_equal(cut[0, 2:, :4], x[0, 0:4, 4:8])
    assert not cut[0, :2].any() and not cut[0, :, 4:].any()
    back = map_to_original(cut[0], box, (6, 8), fill=-1.0)
    np.testing.assert_array_equal(back[0:4, 4:8], x[0, 0:4, 4:8])
    assert (back[4:] == -1).all() and (back[:, :4] == -1).all()
