"""RadiomicsFeaturesd: the lesion features inside the preprocessing preset, cached per row."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastai.data.datalist import read_datalist
from breastai.data.transforms import LoadSampled, NormalizeIntensityRobustd, Preset, build_transforms
from breastai.radiomics import RadiomicsInputError, extract_features
from breastai.radiomics.dataset import radiomics_matrix, radiomics_of_array
from breastai.radiomics.transform import (
    RadiomicsFeaturesd,
    clear_cache,
    lesion_crop,
    radiomics_settings,
    radiomics_transform,
)


@pytest.fixture(scope="module")
def synth12(tmp_path_factory) -> Path:
    from breastai.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("synth12"), n_per_class=6, size=64, seed=5)


def _through_preset(cfg, records):
    """Each row through the eval preset up to and including the transform: (transform, outputs)."""
    rad = radiomics_transform(cfg)
    steps = build_transforms(cfg, train=False, full_image=[rad]).transforms
    prefix = Preset(steps[: steps.index(rad) + 1])
    return rad, [prefix(it) for it in rad.keyed(records)]


def test_vector_is_extract_features_of_the_lesion_crop_bit_for_bit(synth12, tiny_config, tmp_path):
    """The reference is the computation the transform replaced (load, normalise, crop, extract by hand,
    one lesion per extraction); inference's radiomics_of_array gives the same numbers as training."""
    cfg = tiny_config(synth12, tmp_path, "model.name=fusion_gated", "preprocess.mode=crop")
    records = read_datalist(synth12)
    clear_cache()
    rad, out = _through_preset(cfg, records)
    s = radiomics_settings(cfg)
    load, norm = LoadSampled(s["reader_options"]), NormalizeIntensityRobustd(s["normalize"], tuple(s["percentiles"]))
    for rec, d in zip(records, out):
        ref = norm(load({k: rec[k] for k in ("image", "mask")}))
        img, msk = lesion_crop(ref["image"][0], ref["mask"][0] > 0.5)
        table = extract_features([img], [msk], n_bins=s["n_bins"], aggregation=s["aggregation"], families=s["families"])
        assert table.names == rad.names
        assert np.array_equal(rad.cached(rad.keyed([rec])[0]), table.values[0], equal_nan=True)
        assert d["radiomics"].dtype == np.float32 and "radiomics_key" not in d
        assert np.array_equal(d["radiomics"], table.values[0].astype(np.float32), equal_nan=True)
        at_inference = radiomics_of_array(cfg, ref["image"][0], ref["mask"][0] > 0.5, rad.names)
        assert np.array_equal(at_inference, d["radiomics"], equal_nan=True)
    names, x = radiomics_matrix(cfg, records)
    assert names == rad.names and np.array_equal(x.astype(np.float32), np.stack([d["radiomics"] for d in out]),
                                                 equal_nan=True)


def test_fusion_run_decodes_each_image_once_per_dataset_build(synth_datalist, tiny_config, tmp_path, monkeypatch):
    import breastai.data.transforms as tf
    import breastai.engine.scoring as scoring
    import breastai.engine.trainer as trainer
    import breastai.radiomics.transform as rt
    from breastai.engine.run import main as train_main

    decoded, built, extracted = Counter(), Counter(), Counter()
    real_load, real_build, real_extract = tf.load_image, trainer.build_dataset, rt.extract_features

    def load(src, *a, **k):
        decoded[str(src)] += 1
        return real_load(src, *a, **k)

    def build(cfg, records, train):
        built.update(str(r["image"]) for r in records)
        return real_build(cfg, records, train)

    def extract(images, *a, **k):
        extracted.update(k["ids"])
        return real_extract(images, *a, **k)

    monkeypatch.setattr(tf, "load_image", load)
    monkeypatch.setattr(trainer, "build_dataset", build)
    monkeypatch.setattr(scoring, "build_dataset", build)
    monkeypatch.setattr(rt, "extract_features", extract)
    clear_cache()
    cfg = tiny_config(synth_datalist, tmp_path, "model.name=fusion_gated", "model.backbone=small_cnn",
                      "model.fusion_dim=8", "preprocess.mode=crop", "train.epochs=1", "log.tensorboard=false")
    train_main(cfg)
    rows = {str(r["image"]) for r in read_datalist(synth_datalist)}
    assert set(built) == rows, "every row is in some dataset"
    assert decoded == built, "an image is decoded once per dataset build (the radiomics come from that decode)"
    assert len(extracted) == len(rows) and set(extracted.values()) == {1}, "each lesion is measured once"


def test_disk_mode_measures_once_and_the_dataset_serves_the_vectors(synth12, tiny_config, tmp_path):
    from breastai.engine.loaders import build_dataset

    cfg = tiny_config(synth12, tmp_path, "model.name=radiomics_logreg", "data.cache=disk")
    records = read_datalist(synth12, classes=cfg["data"]["classes"])[:5]
    clear_cache()
    ds = build_dataset(cfg, records, train=False)
    assert len(list((tmp_path / ".cache").glob("radiomics-*.npz"))) == 1
    names, x = radiomics_matrix(cfg, records)
    got = np.stack([ds[i]["radiomics"] for i in range(len(records))])
    assert np.array_equal(got, x.astype(np.float32), equal_nan=True)


def test_empty_mask_names_the_row(tmp_path, tiny_config):
    img = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "m.png")
    cfg = tiny_config(tmp_path / "x.csv", tmp_path, "model.name=fusion_concat")
    rec = {"image": str(tmp_path / "a.png"), "mask": [str(tmp_path / "m.png")], "case_id": "c7", "label": "benign"}
    with pytest.raises(RadiomicsInputError, match=r"case 'c7' \(.*a\.png\): the lesion mask is empty; model fusion_concat"):
        _through_preset(cfg, [rec])
    with pytest.raises(RadiomicsInputError, match=r"case 'c7' \(.*a\.png\): no lesion mask; model fusion_concat"):
        radiomics_transform(cfg).keyed([{**rec, "mask": []}])


def test_keys_are_looped_over_and_computed_alone():
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 48, 48)), rng.random((1, 48, 48))
    mask = np.zeros((1, 48, 48), np.float32)
    mask[0, 10:30, 12:25] = 1
    settings = {"n_bins": 16, "aggregation": "2d", "families": ["morphology", "statistics"]}
    both = RadiomicsFeaturesd(settings, keys=("a", "b"), output_keys=("ra", "rb"))({"a": a, "b": b, "mask": mask})
    one = RadiomicsFeaturesd(settings, keys="b")({"b": b, "mask": mask})
    assert np.array_equal(both["rb"], one["radiomics"]) and not np.array_equal(both["ra"], both["rb"])
    assert both["a"] is a, "inputs are left as they are"
