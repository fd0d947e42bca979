"""``breastai predict`` and the Predictor API: outputs, failure records, exit codes, reruns."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import predict_cli as _cli

from breastai.models.checkpoint_io import load_checkpoint
from breastai.inference.predictor import Predictor
from breastai.inference.writers import run_predict


def test_outputs_maps_in_original_geometry_and_rerun_replaces(ckpt, sample, tmp_path):
    out = tmp_path / "out"
    records, run = run_predict(ckpt, [sample[0]], out, masks=[sample[1]], saliency="gradcam++", tta=4, device="cpu")
    rec = records[0]
    assert rec["error"] is None and rec["has_mask"] and 0 <= rec["uncertainty"] < 0.5
    shape = np.asarray(Image.open(sample[0])).shape[:2]
    smap = np.load(out / rec["saliency_npy"])
    assert smap.shape == shape and smap.dtype == np.float32 and 0 <= smap.min() and smap.max() <= 1
    png = np.asarray(Image.open(out / rec["saliency_png"]))
    assert png.shape == (*shape, 3)
    assert (png == (0, 255, 0)).all(-1).sum() > 10  # the lesion outline is drawn
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    js = json.loads((out / "predictions.json").read_text())
    assert rows[0]["id"] == js["records"][0]["id"] == sample[0].name
    assert float(rows[0]["probability"]) == pytest.approx(rec["probability"], abs=1e-6)
    assert js["run"]["n"] == 1 and js["run"]["n_failed"] == 0
    # A rerun into the same folder: only the new run's maps remain, and every referenced file exists.
    records2, run2 = run_predict(ckpt, [sample[0], sample[0]], out, saliency="gradcam", device="cpu")
    assert run2["run_id"] != run["run_id"]
    assert [d.name for d in (out / "saliency").iterdir()] == [run2["run_id"]]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 2 and all((out / r["saliency_npy"]).is_file() for r in rows)
    assert len({r["saliency_npy"] for r in rows}) == 2  # same file name twice: no overwrite
    assert rows[0]["uncertainty"] == ""  # tta=0: no uncertainty


def test_map_upsampling_is_chosen_and_recorded(ckpt, sample, tmp_path):
    runs = {}
    for mode in ("bicubic", "bilinear"):
        records, run = run_predict(ckpt, [sample[0]], tmp_path / mode, masks=[sample[1]], saliency="gradcam++",
                                   device="cpu", saliency_upsample=mode)
        assert run["saliency_upsample"] == mode
        runs[mode] = (records[0]["probability"], np.load(tmp_path / mode / records[0]["saliency_npy"]))
    _, run = run_predict(ckpt, [sample[0]], tmp_path / "default", masks=[sample[1]], device="cpu")
    assert run["saliency_upsample"] == "bicubic"
    assert runs["bicubic"][0] == runs["bilinear"][0]  # the score does not depend on how the map is drawn
    assert not np.allclose(runs["bicubic"][1], runs["bilinear"][1])
    with pytest.raises(ValueError, match="unknown map upsampling"):
        run_predict(ckpt, [sample[0]], tmp_path / "bad", masks=[sample[1]], device="cpu", saliency_upsample="nearest")


def test_every_failure_kind_gives_a_specific_record(predictor, sample, tmp_path):
    good = sample[0]
    arr = np.asarray(Image.open(good).convert("L"))
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    unsupported = tmp_path / "notes.xyz"
    unsupported.write_text("hello")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(blank)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(arr[:31, :200]).save(tiny)  # one side under MIN_IMAGE_SIDE
    bad_mask = tmp_path / "bad_mask.png"
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(bad_mask)
    empty_mask = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros(arr.shape, np.uint8)).save(empty_mask)
    cases = {
        "missing": (tmp_path / "nope.png", None, "file not found"),
        "truncated": (trunc, None, "truncated or corrupt"),
        "empty file": (empty, None, "file is empty"),
        "unsupported": (unsupported, None, "unsupported file type"),
        "blank": (blank, None, "blank"),
        "too small": (tiny, None, "too small"),
        "mask mismatch": (good, [str(bad_mask)], "does not match image shape"),
        "empty mask": (good, [str(empty_mask)], "mask is empty"),
        "good": (good, None, None),
    }
    recs = predictor.predict([c[0] for c in cases.values()], masks=[c[1] for c in cases.values()], saliency="gradcam")
    for (kind, (path, _, expected)), rec in zip(cases.items(), recs):
        if expected is None:
            assert rec["error"] is None and rec["probability"] is not None, kind
        else:
            assert rec["error"] and expected in rec["error"] and str(path) in rec["error"], (kind, rec["error"])
            assert rec["probability"] is None and rec["label"] is None


def test_cli_exit_codes(ckpt, sample, tmp_path, capsys):
    assert _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), "--out", str(tmp_path / "o1"),
                 "--saliency", "none"]) == 0
    assert "predicted 1 of 1 image(s), 0 failed" in capsys.readouterr().out
    assert _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), str(tmp_path / "missing.png"),
                 "--out", str(tmp_path / "o2"), "--saliency", "none"]) == 1
    assert "1 failed" in capsys.readouterr().out
    assert _cli(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(sample[0]), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err
    bogus = tmp_path / "bogus.pt"
    torch.save({"model": {"name": "no_such_model"}, "weights": {}}, bogus)
    assert _cli(["predict", "--checkpoint", str(bogus), str(sample[0]), "--out", str(tmp_path / "o4")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _cli(["predict", "--help"])
    assert e.value.code == 0 and "--saliency" in capsys.readouterr().out


def test_flip_average_scores_alike_in_training_evaluate_and_predict(synth_datalist, tmp_path):
    """``eval.flip_average``: the run's held-out logits, ``evaluate``'s and ``predict``'s agree, and
    each is the mean of the image's and its mirror's logits."""
    from conftest import _tiny_config

    from breastai.data.frames import read_samples
    from breastai.engine.run import main
    from breastai.engine.scoring import predict_records

    cfg = _tiny_config(synth_datalist, tmp_path, "eval.flip_average=true")
    run_dir = Path(main(cfg)["run_dir"])
    state = load_checkpoint(run_dir / "best.pt")
    records = read_samples(synth_datalist, state.config["data"])[:6]
    flipped = predict_records(state, records, torch.device("cpu"))["logit"]
    plain_state = replace(state, config={**state.config, "eval": {**state.config["eval"], "flip_average": False}})
    plain = predict_records(plain_state, records, torch.device("cpu"))["logit"]
    assert np.abs(flipped - plain).max() > 1e-4  # the toy model is not mirror-symmetric

    pred = Predictor.from_state(state, device="cpu")
    recs = pred.predict([r["image"] for r in records], masks=[r["mask"] for r in records])
    np.testing.assert_allclose([r["logit"] for r in recs], flipped, atol=1e-4)
    # The mirror half: what the plain model gives on left-right mirrored pixels.
    mirrored = [np.asarray(Image.open(r["image"]).convert("L"))[:, ::-1].copy() for r in records]
    mirror_masks = [np.asarray(Image.open(r["mask"][0]).convert("L"))[:, ::-1] > 0 for r in records]
    recs_m = Predictor.from_state(plain_state, device="cpu").predict(mirrored, masks=mirror_masks)
    np.testing.assert_allclose((plain + np.array([r["logit"] for r in recs_m])) / 2, flipped, atol=1e-4)


def test_an_older_checkpoint_takes_defaults_for_newer_config_keys(ckpt, sample, tmp_path):
    """Keys added after a checkpoint was written are filled in from the defaults at load time, so
    the checkpoint scores exactly as before."""
    from breastai.models.checkpoint_io import save_checkpoint

    state = load_checkpoint(ckpt)
    old = replace(state, config={**state.config,
                                 "preprocess": {k: v for k, v in state.config["preprocess"].items() if k != "min_crop_fraction"},
                                 "eval": {k: v for k, v in state.config["eval"].items() if k != "flip_average"}})
    save_checkpoint(tmp_path / "old.pt", old)
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config["preprocess"]["min_crop_fraction"] == 0.0
    assert loaded.config["eval"]["flip_average"] is False
    pred = Predictor.from_state(loaded, device="cpu")
    box = [t for t in pred.scorer.steps if hasattr(t, "min_fraction")][0]
    assert box.min_fraction == 0.0
    a, b = pred.predict([sample[0]], masks=[sample[1]])[0], Predictor.from_state(state, device="cpu").predict([sample[0]], masks=[sample[1]])[0]
    assert a["error"] is None and a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_no_images_leaves_earlier_results_and_outputs_keep_the_umask(ckpt, sample, tmp_path, capsys):
    import os

    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    before = (out / "predictions.csv").read_text()
    maps = sorted(p.name for p in out.rglob("*.npy"))
    assert maps and (out / "predictions.csv").stat().st_mode & 0o777 == 0o644
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.rglob("*.npy"))
    (tmp_path / "empty").mkdir()
    assert _cli(["predict", "--checkpoint", str(ckpt), str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no images found" in capsys.readouterr().err
    assert (out / "predictions.csv").read_text() == before and sorted(p.name for p in out.rglob("*.npy")) == maps
    assert len(list((out / "saliency").iterdir())) == 1
    with pytest.raises(SystemExit):
        _cli(["predict", "--checkpoint", str(ckpt), str(sample[0]), "--out", str(out), "--tta", "-3"])


def test_maps_of_large_images_are_stored_reduced_with_the_original_size_recorded(ckpt, tmp_path):
    """A 1500x900 image: with a 300-pixel limit the .npy map and the overlay are 300x180, and resizing the map
    back to saliency_shape gives what the full-size run stored."""
    from breastai.inference.predictor import Predictor

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:900, :1500]
    image = (0.4 + 0.1 * rng.random((900, 1500)) - 0.3 * ((yy - 450) ** 2 + (xx - 700) ** 2 < 150 ** 2)).astype(np.float32)
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    small, _ = run_predict(pred, [image], tmp_path / "small", saliency="gradcam++", map_max_side=300)
    full, _ = run_predict(pred, [image], tmp_path / "full", saliency="gradcam++", map_max_side=0)
    assert small[0]["saliency_shape"] == full[0]["saliency_shape"] == "900x1500"
    reduced = np.load(tmp_path / "small" / small[0]["saliency_npy"])
    whole = np.load(tmp_path / "full" / full[0]["saliency_npy"])
    assert reduced.shape == (180, 300) and reduced.dtype == np.float32 and whole.shape == (900, 1500)
    assert np.asarray(Image.open(tmp_path / "small" / small[0]["saliency_png"])).shape == (180, 300, 3)
    back = torch.nn.functional.interpolate(torch.from_numpy(reduced)[None, None], size=(900, 1500), mode="bilinear")[0, 0]
    assert np.abs(back.numpy() - whole).mean() < 0.02  # a smooth map loses nothing a reader would see
    row = next(csv.DictReader(open(tmp_path / "small" / "predictions.csv")))
    assert row["saliency_shape"] == "900x1500"
    with pytest.raises(ValueError, match="map size limit"):
        run_predict(pred, [image], tmp_path / "bad", map_max_side=-1)
