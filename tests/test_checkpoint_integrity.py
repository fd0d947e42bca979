"""Corrupt checkpoints and non-finite scores are refused, never scored as a silent "benign"; an image that
cannot be read during evaluation is named by its datalist row."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.cli import main
from breastai.core.config import load_config
from breastai.engine.ensemble import ensemble_state
from breastai.models.checkpoint import Checkpoint, CheckpointError, ModelArgs
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.registry import create_model


def _small(**fields) -> Checkpoint:
    cfg = load_config(None, ["model.name=small_cnn", "preprocess.mode=whole"])
    model = create_model("small_cnn", in_chans=1, dropout=0.1)
    return Checkpoint(model=ModelArgs("small_cnn", 1, 0.1), weights=dict(model.state_dict()), config=cfg,
                      classes=["benign", "malignant"], **fields)


def flip_weight_bytes(path: Path, n: int = 4096) -> None:
    """XOR ``n`` bytes in the middle of the largest tensor stored in the checkpoint file (the issue's 4 KB)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 2 * n
    raw = bytearray(path.read_bytes())
    # Local file header: 30 bytes, then the name and the extra field, then the stored bytes.
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    mid = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    raw[mid:mid + n] = bytes(b ^ 0xFF for b in raw[mid:mid + n])
    path.write_bytes(bytes(raw))


def _nan(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()}


def _nan_weights(src: Path, dst: Path) -> Path:
    """``src`` re-saved properly (so its digest matches) with every floating weight NaN."""
    c = load_checkpoint(src)
    c.weights = _nan(c.weights)
    save_checkpoint(dst, c)
    return dst


def _no_nan_constants(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def _error_line(stderr: str, command: str) -> str:
    """The one-line error of ``command`` (the progress bar also writes to stderr), checked to be the last."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"breastai {command}: error: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[-1]


# --- the digest ---

def test_flipped_weight_bytes_are_refused_on_load(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, _small(threshold=0.4))
    flip_weight_bytes(path)
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"best\.pt: corrupted: its contents do not match the digest"):
        load_checkpoint(path)


def test_corruption_torch_notices_is_still_a_checkpoint_error(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, _small())
    raw = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable breastai checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    # The pickle of the containers (config, keys, tensor headers) rather than the tensor bytes.
    with zipfile.ZipFile(path) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    bad = bytearray(raw)
    start = pkl.header_offset + 30 + len(pkl.filename.encode())
    bad[start:start + 64] = bytes(b ^ 0xFF for b in bad[start:start + 64])
    (tmp_path / "pkl.pt").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"pkl\.pt: "):
        load_checkpoint(tmp_path / "pkl.pt")


def test_an_unreadable_file_is_named_in_one_line_without_unsafe_advice(tmp_path):
    """torch's own text for a refused file advises ``weights_only=False`` (running the file's code):
    the user gets one line saying what is wrong instead."""
    path = tmp_path / "best.pt"
    save_checkpoint(path, _small())
    raw = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 250)))
    torch.save({"x": __import__("argparse").Namespace(a=1)}, tmp_path / "object.pt")
    for name, why in [("cut.pt", "incomplete or damaged"), ("noise.pt", "safe load refuses"),
                      ("object.pt", "safe load refuses")]:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / name}: not a readable breastai checkpoint") and why in msg
        assert "\n" not in msg and "weights_only" not in msg and len(msg) < 250 + len(str(tmp_path))


def _edit(state: dict, part: str) -> None:
    """Change one part of an on-disk dict without touching its digest."""
    if part == "weights":
        k = next(iter(state["weights"]))
        state["weights"][k] = state["weights"][k].clone()
        state["weights"][k].view(-1)[0] += 1e-6
    elif part == "dtype":
        k = next(k for k, v in state["weights"].items() if v.is_floating_point())
        state["weights"][k] = state["weights"][k].double()
    elif part == "weight_name":
        k = next(iter(state["weights"]))
        state["weights"]["x" + k] = state["weights"].pop(k)
    elif part == "config":
        state["config"]["preprocess"]["size"] += 1
    elif part == "model":
        state["model"]["dropout"] = 0.5
    elif part == "member":
        state["ensemble"]["members"][1]["temperature"] = 9.0
    elif part == "member_weights":
        m = state["ensemble"]["members"][0]["weights"]
        k = next(iter(m))
        m[k] = torch.zeros_like(m[k])
    elif part == "optimizer":
        state["optimizer"]["param_groups"][0]["lr"] = 1.0
    elif part == "metrics":
        state["metrics"]["val_auc"] = 0.99
    elif part == "seen_images":
        state["seen_images"]["train"].append("ff")
    else:
        state[part] = {"classes": ["malignant", "benign"], "threshold": 0.9, "temperature": 0.1,
                       "logit_offset": -2.0}[part]


@pytest.mark.parametrize("part", ["weights", "dtype", "weight_name", "config", "model", "classes", "threshold",
                                  "temperature", "logit_offset", "metrics", "seen_images", "member",
                                  "member_weights", "optimizer"])
def test_the_digest_covers_every_part_of_the_state(tmp_path, part):
    fields = dict(threshold=0.3, temperature=1.5, logit_offset=0.2, metrics={"val_auc": 0.8},
                  seen_images={"train": ["ab"], "val": ["cd"]})
    if part == "optimizer":
        fields = dict(epoch=1, best_epoch=0, optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                      scheduler={}, early_stop={"auc": 0.5, "epoch": 0, "stale": 1}, epoch_seconds=[1.0])
    ckpt = _small(**fields)
    if part.startswith("member"):
        ckpt = ensemble_state([ckpt, _small(temperature=2.0)], np.array([0.5, 0.5]), 0.0, "mean", 0.5, {},
                              ["a", "b"])
    path = tmp_path / "c.pt"
    save_checkpoint(path, ckpt)
    resume = part == "optimizer"
    load_checkpoint(path, resume=resume)  # intact: loads
    state = torch.load(path, weights_only=True)
    assert state["digest"].startswith("sha256:")
    _edit(state, part)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path, resume=resume)


def test_a_loaded_checkpoint_saved_again_gets_a_fresh_digest(tmp_path):
    """The trainer loads best.pt, adds the held-out metrics and saves it again; the config is filled in on load."""
    save_checkpoint(tmp_path / "best.pt", _small())
    kept = load_checkpoint(tmp_path / "best.pt")
    kept.metrics["test_auc"] = 0.7
    save_checkpoint(tmp_path / "best.pt", kept)
    assert load_checkpoint(tmp_path / "best.pt").metrics["test_auc"] == 0.7
    a, b = _small().to_state(), _small().to_state()
    assert a["digest"] != b["digest"], "fresh random weights"
    same = Checkpoint.from_state(a).to_state()
    assert same["digest"] == a["digest"], "the same contents give the same digest"


def test_a_checkpoint_without_a_digest_still_loads(tmp_path):
    state = _small().to_state()
    del state["digest"]
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").classes == ["benign", "malignant"]
    torch.save({**state, "digest": "md5:abc"}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(tmp_path / "odd.pt")


# --- through the commands ---

def test_predict_refuses_a_checkpoint_with_flipped_weight_bytes(ckpt, sample, tmp_path, capsys):
    """The issue's scenario: 4 KB flipped in the middle of a best.pt."""
    bad = tmp_path / "best.pt"
    shutil.copy(ckpt, bad)
    flip_weight_bytes(bad)
    out = tmp_path / "preds"
    assert main(["predict", "--checkpoint", str(bad), str(sample[0]), "--out", str(out), "--saliency", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: corrupted: its contents do not match the digest written with it" in err
    assert not (out / "predictions.csv").exists() and not (out / "predictions.json").exists()


def test_nan_weights_give_error_records_in_predict_and_stop_evaluate(ckpt, sample, synth_datalist, tmp_path, capsys):
    nan = _nan_weights(ckpt, tmp_path / "nan.pt")
    out = tmp_path / "preds"
    assert main(["predict", "--checkpoint", str(nan), str(sample[0]), "--out", str(out), "--saliency", "none"]) == 1
    assert "the checkpoint's weights or this input are corrupt" in capsys.readouterr().err
    recs = _no_nan_constants((out / "predictions.json").read_text())["records"]
    assert recs[0]["probability"] is None and recs[0]["label"] is None and recs[0]["error"]

    rep = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(nan), "--data", str(synth_datalist), "--out", str(rep)]) == 2
    err = _error_line(capsys.readouterr().err, "evaluate")
    first = next(csv.DictReader(open(synth_datalist)))["case_id"]
    assert str(nan) in err and first in err
    assert "non-finite" in err and "weights or the input images are corrupt" in err
    assert not (rep / "metrics.json").exists()


def test_score_part_refuses_non_finite_logits():
    from breastai.engine.scoring import NonFiniteScoreError, score_part

    pred = {"logit": np.array([0.1, np.nan, -0.2, np.inf]), "label": np.array([0.0, 1.0, 0.0, 1.0]),
            "case_id": np.array(["a", "b", "c", "d"], dtype=object)}
    with pytest.raises(NonFiniteScoreError, match=r"2 of 4 cases .*b, d"):
        score_part(pred, _small(), n_boot=10)
    # A temperature of 0 makes every calibrated log-odds infinite.
    with np.errstate(divide="ignore"), pytest.raises(ValueError, match="calibrated"):
        score_part({**pred, "logit": np.array([0.1, 0.2, -0.2, 0.3])}, _small(temperature=0.0), n_boot=10)


def test_an_ensemble_with_a_nan_member_is_refused(tmp_path, synth_datalist):
    from breastai.data.frames import read_samples
    from breastai.engine.scoring import predict_records

    good = _small(temperature=1.0)
    bad = _small()
    bad.weights = _nan(bad.weights)
    ens = ensemble_state([good, bad], np.array([0.5, 0.5]), 0.0, "mean", 0.5, {}, ["good/best.pt", "bad/best.pt"])
    records = read_samples(synth_datalist, good.config["data"])[:3]
    with pytest.raises(ValueError, match=r"member 2 \(small_cnn\).*non-finite.*" + records[0]["case_id"]):
        predict_records(ens, records, torch.device("cpu"))


# --- an unreadable image during evaluation ---

def _with_broken_row(synth_datalist: Path, tmp_path: Path) -> tuple[Path, int]:
    rows = list(csv.DictReader(open(synth_datalist)))[:6]
    base = synth_datalist.parent
    for r in rows:
        r["image"] = str(base / r["image"])
        r["mask"] = ";".join(str(base / m) for m in r["mask"].split(";") if m)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows.insert(3, {**rows[0], "image": str(tmp_path / "broken.png"), "case_id": "broken_case", "group": "g9"})
    dl = tmp_path / "dl.csv"
    with open(dl, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dl, 3 + 2  # the header is row 1


@pytest.mark.parametrize("workers", [0, 1])
def test_evaluate_names_the_datalist_row_of_an_unreadable_image(ckpt, synth_datalist, tmp_path, capsys, workers):
    dl, row = _with_broken_row(synth_datalist, tmp_path)
    c = load_checkpoint(ckpt)
    c.config["data"]["num_workers"] = workers  # a DataLoader worker's error comes back wrapped in its traceback
    save_checkpoint(tmp_path / "best.pt", c)
    rep = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "--data", str(dl), "--out", str(rep)]) == 2
    err = _error_line(capsys.readouterr().err, "evaluate")
    assert f"datalist {dl}, row {row} (case_id broken_case): " in err and "broken.png" in err
    assert "applying transform" not in err and "DataLoader worker" not in err
    assert not (rep / "metrics.json").exists()
