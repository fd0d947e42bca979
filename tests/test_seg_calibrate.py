"""``breastai calibrate`` on a segmenter: its presence threshold re-chosen on local traced images, never its weights."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from conftest import blob_image, predict_cli, write_rows
from PIL import Image

from breastai.engine.recalibrate import TooFewCasesError
from breastai.engine.seg_recalibrate import METHOD, MIN_LESION_IMAGES, rethreshold_segmenter
from breastai.models.checkpoint import CheckpointError, weights_digest
from breastai.models.checkpoint_io import load_checkpoint
from breastai.models.outliner import Outliner


def local_datalist(folder, n_lesion: int, n_free: int, seed: int = 100):
    """Images of another 'site' (other noise, other discs): ``n_lesion`` with a disc, ``n_free`` without (empty mask)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    for i in range(n_lesion + n_free):
        lesions = [(int(rng.integers(25, 55)), int(rng.integers(25, 70)), int(rng.integers(7, 14)))] if i < n_lesion else []
        img, mask = blob_image((80, 96), lesions, seed=seed + i)
        Image.fromarray(img).save(folder / f"l{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"l{i}_mask.png")
        rows.append({"case_id": f"l{i}", "image": f"l{i}.png", "mask": f"l{i}_mask.png",
                     "label": "benign" if lesions else "normal", "group": f"l{i}"})
    return write_rows(folder / "local.csv", rows)


def test_threshold_is_rechosen_on_local_images_and_the_weights_stay(seg_ckpt, tmp_path):
    local = local_datalist(tmp_path / "site", 20, 8)
    before = seg_ckpt.read_bytes()
    rec = rethreshold_segmenter(seg_ckpt, local, tmp_path / "local.pt", sensitivity=0.9, device="cpu")
    src, new = load_checkpoint(seg_ckpt), load_checkpoint(tmp_path / "local.pt")
    assert seg_ckpt.read_bytes() == before  # the source is left as it was
    assert weights_digest(new) == weights_digest(src) == rec.weights_digest
    assert (rec.method, rec.threshold_method, rec.n, rec.n_per_class) == (METHOD, "sensitivity@0.9", 28,
                                                                          {"lesion": 20, "no lesion": 8})
    assert rec.threshold_before == 0.5 and new.threshold == rec.threshold_after != 0.5
    assert new.config["seg"]["presence_sensitivity"] == 0.9 and new.recalibration[-1].image_digests == rec.image_digests
    # The training rule, on the local images: at least 90 % of their lesion images keep a found lesion.
    assert rec.metrics["found_after"] >= 0.9
    assert 0.0 <= rec.metrics["false_lesions_after"] <= 1.0 and 0.0 < rec.metrics["dice_after"] <= 1.0
    # What outlines new images uses the new threshold.
    assert Outliner.from_checkpoint(tmp_path / "local.pt").threshold == pytest.approx(rec.threshold_after)


def test_a_lower_sensitivity_never_lowers_the_threshold(seg_ckpt, tmp_path):
    local = local_datalist(tmp_path / "site", 20, 8)
    strict = rethreshold_segmenter(seg_ckpt, local, tmp_path / "a.pt", sensitivity=0.99, device="cpu")
    loose = rethreshold_segmenter(seg_ckpt, local, tmp_path / "b.pt", sensitivity=0.6, device="cpu")
    assert loose.threshold_after >= strict.threshold_after
    assert loose.metrics["found_after"] <= strict.metrics["found_after"]
    assert loose.metrics["false_lesions_after"] <= strict.metrics["false_lesions_after"]


def test_lesion_images_alone_are_enough_and_false_lesions_are_not_guessed(seg_ckpt, tmp_path):
    local = local_datalist(tmp_path / "site", MIN_LESION_IMAGES, 0)
    rec = rethreshold_segmenter(seg_ckpt, local, tmp_path / "l.pt", device="cpu")
    assert rec.threshold_method == "sensitivity@0.95"  # the segmenter's own rule by default
    assert math.isnan(rec.metrics["false_lesions_after"])
    assert load_checkpoint(tmp_path / "l.pt").recalibration[-1].n_per_class == {"lesion": MIN_LESION_IMAGES,
                                                                                 "no lesion": 0}


def test_refusals_name_the_problem_and_write_nothing(seg_ckpt, ckpt, tmp_path):
    few = local_datalist(tmp_path / "few", MIN_LESION_IMAGES - 1, 5)
    with pytest.raises(TooFewCasesError, match=f"{MIN_LESION_IMAGES - 1} image\\(s\\) with a traced lesion"):
        rethreshold_segmenter(seg_ckpt, few, tmp_path / "f.pt", device="cpu")
    local = local_datalist(tmp_path / "site", 12, 2)
    rows = list(csv.DictReader(open(local)))
    rows[3]["mask"] = ""
    with pytest.raises(ValueError, match="row 'l3' has no mask"):
        rethreshold_segmenter(seg_ckpt, write_rows(tmp_path / "site" / "nomask.csv", rows), tmp_path / "g.pt", device="cpu")
    with pytest.raises(ValueError, match="fraction in \\(0, 1\\)"):
        rethreshold_segmenter(seg_ckpt, local, tmp_path / "h.pt", sensitivity=1.0, device="cpu")
    with pytest.raises(CheckpointError, match="not a segmenter's checkpoint"):
        rethreshold_segmenter(ckpt, local, tmp_path / "i.pt", device="cpu")
    assert not any((tmp_path / n).exists() for n in ("f.pt", "g.pt", "h.pt", "i.pt"))


def test_cli_recalibrates_a_segmenter_and_refuses_classifier_options(seg_ckpt, ckpt, tmp_path, capsys):
    from breastai.cli import main

    local = local_datalist(tmp_path / "site", 20, 8)
    assert main(["calibrate", "--checkpoint", str(seg_ckpt), "--data", str(local), "--out", str(tmp_path / "s.pt"),
                 "--lesion-sensitivity", "0.9", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "presence threshold on 28 local images (20 with a lesion, 8 without): 0.5 ->" in said
    assert "(sensitivity@0.9)" in said and "images without a lesion given one" in said and "weights unchanged" in said
    assert main(["calibrate", "--checkpoint", str(seg_ckpt), "--data", str(local), "--out", str(tmp_path / "t.pt"),
                 "--method", "platt"]) == 2
    assert "--method applies to classifiers" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(local), "--out", str(tmp_path / "u.pt"),
                 "--lesion-sensitivity", "0.9"]) == 2
    assert "--lesion-sensitivity is for a segmenter" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists() and not (tmp_path / "u.pt").exists()


def test_predict_names_the_segmenters_local_threshold(seg_ckpt, ckpt, tmp_path):
    import json

    local = local_datalist(tmp_path / "site", 20, 8)
    rec = rethreshold_segmenter(seg_ckpt, local, tmp_path / "local.pt", sensitivity=0.9, device="cpu")
    image = tmp_path / "site" / "l0.png"
    for seg, out in ((seg_ckpt, "home"), (tmp_path / "local.pt", "site_out")):
        assert predict_cli(["predict", "--checkpoint", str(ckpt), "--segmenter", str(seg), str(image),
                            "--out", str(tmp_path / out), "--saliency", "none", "--device", "cpu"]) == 0
    home = json.loads((tmp_path / "home" / "predictions.json").read_text())["run"]
    site = json.loads((tmp_path / "site_out" / "predictions.json").read_text())["run"]
    assert home["segmenter_threshold"] == 0.5 and home["segmenter_recalibration"] is None
    assert site["segmenter_threshold"] == pytest.approx(rec.threshold_after)
    assert site["segmenter_recalibration"]["method"] == METHOD
    assert site["segmenter_recalibration"]["n_per_class"] == {"lesion": 20, "no lesion": 8}
