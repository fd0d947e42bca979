"""Predict inputs: folders, datalists, arrays, masks found or given, boxes, image modes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import predict_cli as _cli

from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.inference.predictor import Predictor
from breastai.inference.inputs import expand_inputs
from breastai.models.tta import tta_views
from breastai.inference.writers import run_predict


def test_crop_mode_checkpoint_needs_a_mask(ckpt, sample):
    state = load_checkpoint(ckpt)
    state.config["preprocess"]["mode"] = "crop"
    p = Predictor.from_state(state, device="cpu")
    no_mask, with_mask = p.predict([sample[0], sample[0]], masks=[None, [str(sample[1])]])
    assert "lesion mask is needed" in no_mask["error"]
    assert with_mask["error"] is None and with_mask["has_mask"]


def test_numpy_input_folder_input_and_tta(predictor, sample, tmp_path):
    arr = np.asarray(Image.open(sample[0]).convert("L"))
    rec = predictor.predict(arr, saliency="gradcam++", return_maps=True, tta=6)[0]
    assert rec["id"] == "array0" and rec["saliency_map"].shape == arr.shape
    rec2 = predictor.predict(arr, saliency="none", tta=6)[0]
    assert rec2["probability"] == pytest.approx(rec["probability"], abs=1e-6)
    assert rec2["uncertainty"] == pytest.approx(rec["uncertainty"], abs=1e-9)  # seeded: reproducible
    # Folders: recursive, mask files and non-images skipped with a note.
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "a" / "b" / "x.png")
    Image.fromarray(arr).save(tmp_path / "a" / "x_mask.png")
    (tmp_path / "a" / "readme.txt").write_text("hi")
    items, notes = expand_inputs(tmp_path / "a", find_masks=True)
    assert [Path(i.source).name for i in items] == ["x.png"]
    assert any("x_mask.png: skipped" in n for n in notes) and any("readme.txt: skipped" in n for n in notes)
    # TTA views: the right shape, and a binary mask channel stays binary.
    x = torch.rand(1, 2, 16, 16)
    x[:, 1] = (x[:, 1] > 0.5).float()
    v = tta_views(x, 5, {"hflip": 0.5})
    assert v.shape == (5, 2, 16, 16) and set(v[:, 1].unique().tolist()) <= {0.0, 1.0}


def test_a_bounding_box_stands_in_for_a_mask(ckpt, sample, tmp_path, capsys):
    from breastai.data.readers.masks import LesionBox

    state = load_checkpoint(ckpt)
    state.config["preprocess"]["mode"] = "crop"
    p = Predictor.from_state(state, device="cpu")
    m = np.asarray(Image.open(sample[1]).convert("L")) > 0
    ys, xs = np.nonzero(m)
    box = LesionBox(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    filled = np.zeros_like(m)
    filled[box.y0:box.y1 + 1, box.x0:box.x1 + 1] = True
    Image.fromarray(filled.astype(np.uint8) * 255).save(tmp_path / "box_mask.png")
    as_box, as_png = p.predict([sample[0], sample[0]], masks=[box, str(tmp_path / "box_mask.png")])
    assert as_box["error"] is None and as_box["has_mask"]
    assert as_box["probability"] == pytest.approx(as_png["probability"], abs=1e-7)
    # From the command line; a box outside the image fails that image only.
    ckpt_crop = tmp_path / "crop.pt"
    save_checkpoint(ckpt_crop, state)
    spec = f"{box.x0},{box.y0},{box.x1},{box.y1}"
    assert _cli(["predict", "--checkpoint", str(ckpt_crop), str(sample[0]), str(sample[0]), "--box", spec,
                 "--box", "5000,5000,5010,5010", "--out", str(tmp_path / "o"), "--saliency", "none"]) == 1
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert float(rows[0]["probability"]) == pytest.approx(as_box["probability"], abs=1e-6)
    assert "lies outside the image" in rows[1]["error"] and str(sample[0]) in rows[1]["error"]
    capsys.readouterr()
    for bad, msg in ((["--box", "1,2,3"], "four integers"), (["--box", "9,2,3,4"], "X1 must be >= X0"),
                     (["--box", spec, "--mask", str(sample[1])], "either --mask or --box")):
        assert _cli(["predict", "--checkpoint", str(ckpt_crop), str(sample[0]), *bad, "--out", str(tmp_path / "o2")]) == 2
        assert msg in capsys.readouterr().err


def test_folder_search_skips_hidden_folders_and_earlier_outputs(ckpt, sample, tmp_path):
    src = tmp_path / "in"
    (src / ".ipynb_checkpoints").mkdir(parents=True)
    shutil.copy(sample[0], src / "a.png")
    shutil.copy(sample[0], src / ".ipynb_checkpoints" / "a-checkpoint.png")  # a hidden copy
    for _ in range(2):  # the second run finds the first run's overlays inside the input folder
        records, _ = run_predict(ckpt, [src], src / "preds", saliency="gradcam", device="cpu")
        assert [r["id"] for r in records] == ["a.png"]


def test_sibling_masks_any_image_suffix_and_glob_characters(tmp_path):
    from breastai.inference.inputs import expand_inputs

    img = np.full((40, 40), 90, np.uint8)
    for name, mask in (("img[1].png", "img[1]_mask.png"), ("up.PNG", "up_mask.png"), ("j.jpg", "j_mask.png"),
                       ("k.png", "k_mask_1.png")):
        Image.fromarray(img).save(tmp_path / name)
        Image.fromarray(img).save(tmp_path / mask)
    Image.fromarray(img).save(tmp_path / "k_1_mask.png")  # another image's mask (k_1), not k's
    (tmp_path / "n.nii.gz").touch()  # a double suffix: the mask is n_mask.nii.gz, not n.nii_mask...
    (tmp_path / "n_mask.nii.gz").touch()
    items, _ = expand_inputs([tmp_path], find_masks=True)
    got = {Path(it.image).name: [Path(m).name for m in it.mask or []] for it in items}
    assert got == {"img[1].png": ["img[1]_mask.png"], "up.PNG": ["up_mask.png"], "j.jpg": ["j_mask.png"],
                   "k.png": ["k_mask_1.png"], "n.nii.gz": ["n_mask.nii.gz"]}


def test_masks_as_arrays_and_tensors_for_a_crop_checkpoint(ckpt, sample):
    state = load_checkpoint(ckpt)
    state.config["preprocess"]["mode"] = "crop"
    p = Predictor.from_state(state, device="cpu")
    img = np.asarray(Image.open(sample[0]).convert("L"))
    mask = np.asarray(Image.open(sample[1])) > 0
    by_file, by_array, by_tensor = p.predict([sample[0]] * 3, masks=[[str(sample[1])], mask, torch.from_numpy(mask)])
    assert by_file["error"] is None and by_array["error"] is None and by_tensor["error"] is None
    assert by_array["probability"] == pytest.approx(by_file["probability"], abs=1e-6)
    assert by_tensor["probability"] == pytest.approx(by_file["probability"], abs=1e-6)
    assert p.predict(img, masks=[mask])[0]["error"] is None


def test_an_empty_mask_found_beside_an_image_is_no_error_for_a_whole_image_model(predictor, sample, tmp_path):
    shutil.copy(sample[0], tmp_path / "normal.png")
    Image.fromarray(np.zeros(Image.open(sample[0]).size[::-1], np.uint8)).save(tmp_path / "normal_mask.png")
    found = predictor.predict(tmp_path / "normal.png", find_masks=True)[0]
    assert found["error"] is None and found["has_mask"] is False
    given = predictor.predict(tmp_path / "normal.png", masks=[str(tmp_path / "normal_mask.png")])[0]
    assert "mask is empty" in given["error"]  # given explicitly, an empty mask is still a mistake


def test_alpha_masks_and_cmyk_images(tmp_path):
    from breastai.data.readers.registry import load_image
    from breastai.data.readers.masks import load_mask

    lesion = np.zeros((40, 50), bool)
    lesion[10:20, 15:30] = True
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 3] = lesion * 255  # drawn in black on a transparent layer
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha_mask.png")
    opaque = np.zeros((40, 50, 4), np.uint8)
    opaque[..., 3] = 255  # opaque black background, white lesion
    opaque[lesion, :3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque_mask.png")
    white_bg = np.full((40, 50, 4), 255, np.uint8)
    white_bg[..., 3] = lesion * 255  # white everywhere, but only the lesion visible
    Image.fromarray(white_bg, "RGBA").save(tmp_path / "white_mask.png")
    # A palette mask whose white background index is transparent (tRNS): the red lesion only.
    pal = np.zeros((40, 50), np.uint8)
    pal[lesion] = 1
    im = Image.fromarray(pal, "P")
    im.putpalette([255, 255, 255, 255, 0, 0])
    im.save(tmp_path / "palette_mask.png", transparency=0)
    for name in ("alpha_mask.png", "opaque_mask.png", "white_mask.png", "palette_mask.png"):
        np.testing.assert_array_equal(load_mask(str(tmp_path / name)), lesion, err_msg=name)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB")
    rgb.save(tmp_path / "rgb.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.tif")
    np.testing.assert_allclose(load_image(tmp_path / "cmyk.tif")[0], load_image(tmp_path / "rgb.png")[0], atol=1e-3)


def test_one_bare_mask_for_one_image(predictor, sample):
    bare = predictor.predict(sample[0], masks=str(sample[1]))[0]  # as in the README's Python example
    listed = predictor.predict(sample[0], masks=[str(sample[1])])[0]
    assert bare["error"] is None and bare["has_mask"] and bare["probability"] == listed["probability"]
    as_tuple = predictor.predict([sample[0]], masks=[(str(sample[1]),)])[0]  # one image's mask files as a tuple
    assert as_tuple["error"] is None and as_tuple["probability"] == listed["probability"]
