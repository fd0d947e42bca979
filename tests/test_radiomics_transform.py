"""RadiomicsFeaturesd: the lesion features inside the preprocessing preset, cached per row."""

from __future__ import annotations

import numpy as np
import pytest

from breastai.data.datalist import read_datalist
from breastai.data.transforms import build_transforms
from breastai.radiomics.transform import clear_cache, radiomics_transform


@pytest.fixture(scope="module")
def synth12(tmp_path_factory):
    from breastai.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("synth12"), n_per_class=6, size=64, seed=5)


def _prefix_features(cfg, records):
    """Each row through the eval preset up to and including the transform: (N, F) float32."""
    rad = radiomics_transform(cfg)
    steps = build_transforms(cfg, train=False, full_image=[rad]).transforms
    prefix = steps[: steps.index(rad) + 1]
    rows = []
    for d in rad.keyed(records):
        for t in prefix:
            d = t(d)
        rows.append(d["radiomics"])
    return rad, np.stack(rows)


def test_same_vectors_as_the_old_per_row_computation(synth12, tiny_config, tmp_path):
    from breastai.radiomics.dataset import attach_radiomics, compute_radiomics
    from breastai.radiomics.dataset import clear_cache as clear_old

    cfg = tiny_config(synth12, tmp_path, "model.name=fusion_gated", "preprocess.mode=crop")
    records = read_datalist(synth12)
    clear_cache()
    rad, new32 = _prefix_features(cfg, records)
    new64 = np.stack([rad.cached(it) for it in rad.keyed(records)])
    # One lesion per extraction, as the transform does: bit for bit, names too.
    clear_old()
    names, old1 = compute_radiomics(cfg, records, chunk=1)
    assert names == rad.names
    assert np.array_equal(new64, old1, equal_nan=True)
    # Today's batches pad lesions to a common box, which reorders sums: the float64 values move in
    # the last bits only, and the float32 vectors the models are given do not move at all here.
    clear_old()
    _, old64 = compute_radiomics(cfg, records)
    np.testing.assert_allclose(new64, old64, rtol=1e-14, atol=0)
    clear_old()
    old32 = np.stack([it["radiomics"] for it in attach_radiomics(cfg, records)])
    assert np.array_equal(new32, old32, equal_nan=True)
