"""The multi-frame policy of datalists: 'all' expands frames into samples of one group."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_dicom import US_SOP, write_dicom

from breastai.core.config import load_config
from breastai.data.frames import expand_frames
from breastai.data.transforms import LoadSampled, build_transforms


def _rows(tmp_path):
    cine = np.stack([np.full((40, 48), 10 * (k + 1), np.uint8) for k in range(3)])
    cine[:, 10:20, 10:20] = 250
    p = write_dicom(tmp_path / "cine.dcm", cine, modality="US", sop=US_SOP, frames=True)
    Image.fromarray(np.zeros((40, 48), np.uint8) + 7).save(tmp_path / "still.png")
    return [
        {"image": str(p), "mask": [], "label": "benign", "case_id": "cine", "group": "g1"},
        {"image": str(tmp_path / "still.png"), "mask": [], "label": "malignant", "case_id": "still", "group": "g2"},
    ]


def test_all_frames_become_samples_of_one_group(tmp_path):
    rows = expand_frames(_rows(tmp_path), {"dicom": {"frame": "all"}})
    assert [r["case_id"] for r in rows] == ["cine_f0", "cine_f1", "cine_f2", "still"]
    assert {r["group"] for r in rows[:3]} == {"g1"}
    load = LoadSampled()
    # Each expanded row reads its own frame: frame k is uniform grey 10*(k+1) outside the square.
    corners = [float(load(r)["image"][0, 0, 0]) for r in rows[:3]]
    assert np.allclose(np.array(corners) * 255, [10, 20, 30], atol=1e-3)  # 8-bit without VOI: value / 255
    cfg = load_config(None, ["preprocess.size=48"])
    assert build_transforms(cfg, train=False)(rows[1])["image"].shape == (1, 48, 48)


def test_default_policy_leaves_rows_alone(tmp_path):
    rows = _rows(tmp_path)
    assert expand_frames(rows, {}) == rows
    with pytest.raises(ValueError, match="stack"):
        expand_frames(rows, {"dicom": {"frame": "stack"}})


def test_radiomics_cache_keys_frames_apart(tmp_path):
    """Frame rows of one multi-frame file must not share a cached radiomics vector."""
    from breastai.radiomics.transform import RadiomicsFeaturesd

    rad = RadiomicsFeaturesd({"n_bins": 32})
    row = {"image": str(tmp_path / "cine.dcm"), "mask": [str(tmp_path / "m.png")]}
    keys = {rad.row_key({**row, "frame": k}) for k in range(3)}
    assert len(keys) == 3 and rad.row_key(row) not in keys
