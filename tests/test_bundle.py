"""Pipeline checkpoints: a classifier carrying its segmenter in one file (``breastai bundle``)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.cli import main
from breastai.core.config import load_config
from breastai.engine.bundle import bundle_files, bundle_pipeline
from breastai.engine.ensemble import ensemble_state
from breastai.models.checkpoint import Checkpoint, CheckpointError, ModelArgs, checkpoint_task, is_segmenter, model_from_checkpoint, state_digest, weights_digest
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.registry import create_model
from tests.test_checkpoint import _same_weights
from tests.test_checkpoint_integrity import _small


def _seg(**fields) -> Checkpoint:
    """A checkpoint of a freshly built small U-Net segmenter with a complete config."""
    cfg = load_config(None, ["model.name=unet_small", "preprocess.mode=whole"])
    model = create_model("unet_small", in_chans=1, pretrained=False)
    return Checkpoint(model=ModelArgs("unet_small", 1, cfg["model"]["dropout"], dict(model.init_kwargs)),
                      weights=dict(model.state_dict()), config=cfg, classes=["no lesion", "lesion"], **fields)


def _flip_tensor_bytes(path: Path, tensor: torch.Tensor, n: int = 256) -> None:
    """XOR ``n`` bytes in the middle of ``tensor``'s stored bytes in the file (found by their contents)."""
    data = tensor.detach().contiguous().numpy().tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0, "the tensor's bytes are stored once in the file"
    mid = at + len(data) // 2 - n // 2
    raw[mid:mid + n] = bytes(b ^ 0xFF for b in raw[mid:mid + n])
    path.write_bytes(bytes(raw))


def test_kinds_of_checkpoint():
    seg, cls = _seg(), _small()
    assert is_segmenter(seg) and checkpoint_task(seg) == "segmentation"
    assert not is_segmenter(cls) and checkpoint_task(cls) == "classification"
    ens = ensemble_state([cls, _small()], np.ones(2), 0.0, "mean", 0.5, {}, ["a", "b"])
    assert not is_segmenter(ens) and not ens.is_pipeline
    unknown = _small()
    unknown.model = ModelArgs("from_the_future", 1, 0.1)
    with pytest.raises(CheckpointError, match="'from_the_future' is not registered"):
        is_segmenter(unknown)


def test_pipeline_round_trips_with_weights_only(tmp_path):
    seg = _seg(threshold=0.42, temperature=1.3, epoch=5, best_epoch=4, metrics={"val_dice_mean": 0.81},
               modalities=["US"], seen_images={"train": ["aa"], "val": ["bb"]})
    cls = _small(threshold=0.37, temperature=1.6, logit_offset=0.2, modalities=["US"])
    pipe = bundle_pipeline(cls, seg)
    assert pipe.is_pipeline and pipe.segmenter is seg and not cls.is_pipeline, "the classifier given is left as it is"
    save_checkpoint(tmp_path / "pipe.pt", pipe)
    raw = torch.load(tmp_path / "pipe.pt", weights_only=True)
    assert raw["digest"] == state_digest(raw) and raw["model"]["name"] == "small_cnn"
    assert set(raw["segmenter"]) == set(seg.to_state()) and "segmenter" not in raw["segmenter"]

    back = load_checkpoint(tmp_path / "pipe.pt")
    assert back.is_pipeline and not back.segmenter.is_pipeline and is_segmenter(back.segmenter)
    for part, orig in ((back, cls), (back.segmenter, seg)):
        assert part.model == orig.model and _same_weights(part.weights, orig.weights)
        for f in ("config", "classes", "threshold", "temperature", "logit_offset", "epoch", "best_epoch", "metrics",
                  "modalities", "seen_images"):
            assert getattr(part, f) == getattr(orig, f), f
    assert weights_digest(back) == weights_digest(cls) and weights_digest(back.segmenter) == weights_digest(seg)
    # The segmenter rebuilds from the file alone and outlines as the original does.
    x = torch.rand(1, 1, 64, 64)
    a, b = model_from_checkpoint(back.segmenter)(x), model_from_checkpoint(seg)(x)
    assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.presence_logit, b.presence_logit)
    # Loaded and saved again, the same contents give the same digest.
    assert back.to_state()["digest"] == raw["digest"]


def test_a_byte_flipped_in_the_segmenters_weights_is_refused(tmp_path):
    seg = _seg()
    path = tmp_path / "pipe.pt"
    save_checkpoint(path, bundle_pipeline(_small(), seg))
    _flip_tensor_bytes(path, max(seg.weights.values(), key=torch.numel))
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"pipe\.pt: corrupted: its contents do not match the digest"):
        load_checkpoint(path)


@pytest.mark.parametrize("edit", ["threshold", "config", "weights"])
def test_the_digest_covers_the_segmenter(tmp_path, edit):
    path = tmp_path / "pipe.pt"
    save_checkpoint(path, bundle_pipeline(_small(), _seg(threshold=0.5)))
    state = torch.load(path, weights_only=True)
    seg = state["segmenter"]
    if edit == "threshold":
        seg["threshold"] = 0.1
    elif edit == "config":
        seg["config"]["seg"]["pixel_threshold"] = 0.9
    else:
        k = next(k for k, v in seg["weights"].items() if v.is_floating_point())
        seg["weights"][k] = seg["weights"][k].clone()
        seg["weights"][k].view(-1)[0] += 1e-6
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_checkpoints_without_a_segmenter_load_and_save_as_before(tmp_path):
    cls = _small()
    save_checkpoint(tmp_path / "best.pt", cls)
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert "segmenter" not in raw
    back = load_checkpoint(tmp_path / "best.pt")
    assert back.segmenter is None and not back.is_pipeline
    assert set(back.to_state()) == set(raw)
    # A pipeline written before digests existed: the segmenter's own digest is still checked.
    state = bundle_pipeline(_small(), _seg()).to_state()
    del state["digest"]
    state["segmenter"]["threshold"] = 0.99
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: segmenter: corrupted"):
        load_checkpoint(tmp_path / "old.pt")


def test_an_ensemble_carries_a_segmenter(tmp_path):
    a, b = _small(temperature=2.0, modalities=["US"]), _small(modalities=["US"])
    ens = ensemble_state([a, b], np.array([0.6, 0.3]), -0.2, "stack", 0.4, {"val_auc": 0.9}, ["a", "b"])
    seg = _seg(threshold=0.3, modalities=["US"])
    save_checkpoint(tmp_path / "pipe.pt", bundle_pipeline(ens, seg))
    back = load_checkpoint(tmp_path / "pipe.pt")
    assert back.is_ensemble and back.is_pipeline and len(back.members) == 2
    assert back.member_weights == pytest.approx([0.6, 0.3]) and back.bias == pytest.approx(-0.2)
    assert all(not m.is_pipeline for m in back.members)
    assert _same_weights(back.members[0].weights, a.weights) and _same_weights(back.segmenter.weights, seg.weights)
    assert back.segmenter.threshold == 0.3 and back.segmenter.config["seg"] == seg.config["seg"]


def test_the_wrong_kinds_are_refused():
    cls, seg = _small(), _seg()
    with pytest.raises(CheckpointError, match=r"^C: a segmenter \(unet_small\), not a classifier; give it as the "
                                              r"segmenter \(--segmenter\)$"):
        bundle_pipeline(seg, seg, names=("C", "S"))
    with pytest.raises(CheckpointError, match=r"^S: a classifier \(small_cnn\), not a segmenter"):
        bundle_pipeline(cls, _small(), names=("C", "S"))
    with pytest.raises(CheckpointError, match=r"^S: a pipeline \(small_cnn with the segmenter unet_small\), not a"):
        bundle_pipeline(cls, bundle_pipeline(_small(), seg), names=("C", "S"))
    ens = ensemble_state([cls, _small()], np.ones(2), 0.0, "mean", 0.5, {}, ["a", "b"])
    with pytest.raises(CheckpointError, match=r"^S: an ensemble classifier, not a segmenter"):
        bundle_pipeline(cls, ens, names=("C", "S"))
    pipe = bundle_pipeline(cls, seg)
    with pytest.raises(CheckpointError, match=r"^C: already carries a segmenter \(unet_small\); pass --replace"):
        bundle_pipeline(pipe, _seg(), names=("C", "S"))
    other = _seg(threshold=0.2)
    assert bundle_pipeline(pipe, other, replace=True).segmenter is other


def _resume_seg() -> Checkpoint:
    return _seg(optimizer={"state": {}, "param_groups": []})


@pytest.mark.parametrize("outer, inner, why", [
    (_seg, _seg, "a segmenter cannot carry a segmenter"),
    (_small, _small, r"its segmenter is a classifier \(small_cnn\)"),
    (_small, lambda: _seg(segmenter=_seg()), "a segmenter cannot carry a segmenter"),
    (_small, _resume_seg, r"its segmenter is a resume checkpoint"),
])
def test_a_checkpoint_never_carries_a_segmenter_it_cannot(tmp_path, outer, inner, why):
    """Whatever built it, such a checkpoint is neither written nor read."""
    bad = outer(segmenter=inner())
    with pytest.raises(CheckpointError, match=why):
        save_checkpoint(tmp_path / "bad.pt", bad)
    # Written by other means (its digest intact), it is refused on load, naming the file.
    inner_state = bad.segmenter.to_state() if bad.segmenter.segmenter is None else {
        **_seg().to_state(), "segmenter": _seg().to_state()}
    state = {**outer().to_state(), "segmenter": inner_state}
    state["digest"] = state_digest(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"bad\.pt: not a valid pipeline checkpoint: {why}"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("cls_mods, seg_mods, warned", [
    (["US"], ["US"], False), (["US"], ["MG"], True), (None, ["MG"], False), (["MG"], None, False),
    (["MG", "US"], ["US"], True),
])
def test_a_modality_mismatch_is_warned(caplog, cls_mods, seg_mods, warned):
    with caplog.at_level(logging.WARNING, logger="breastai"):
        bundle_pipeline(_small(modalities=cls_mods), _seg(modalities=seg_mods))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(msgs) == warned, msgs
    if warned:
        assert f"the classifier was trained on {', '.join(cls_mods)} images and the segmenter on {seg_mods[0]}" in msgs[0]


def test_an_ensemble_member_of_another_modality_is_warned(caplog):
    ens = ensemble_state([_small(modalities=["US"]), _small(modalities=["MG"])], np.ones(2), 0.0, "mean", 0.5, {},
                         ["a", "b"])
    with caplog.at_level(logging.WARNING, logger="breastai"):
        bundle_pipeline(ens, _seg(modalities=["US"]))
    assert any("trained on MG, US images" in r.getMessage() for r in caplog.records)


# --- the command, with a trained classifier and a trained segmenter ---

@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory) -> Path:
    """A segmenter trained for two epochs on a few synthetic blobs (only its file matters here)."""
    from breastai.engine.run import main as train_main
    from conftest import blob_datalist

    tmp = tmp_path_factory.mktemp("seg")
    cfg = load_config("configs/busi_seg.yaml", [
        f"data.datalist={blob_datalist(tmp, 12)}", "model.name=unet_small", "model.pretrained=false",
        "preprocess.size=64", "train.epochs=2", "train.batch_size=4", "eval.bootstrap=0", "data.val_fraction=0.34",
        f"output_dir={tmp / 'runs'}", "log.progress=false", "log.tensorboard=false", "augment.enabled=false",
        "device=cpu"])
    return Path(train_main(cfg)["run_dir"]) / "best.pt"


def _one_line_error(capsys, command: str = "bundle") -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"breastai {command}: error: "), err
    return err[0]


def test_bundle_command_end_to_end(ckpt, seg_ckpt, sample, synth_datalist, tmp_path, capsys):
    out = tmp_path / "pipeline.pt"
    assert main(["bundle", "--classifier", str(ckpt), "--segmenter", str(seg_ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pipeline: classifier small_cnn" in printed and "segmenter unet_small" in printed
    assert f"written: {out}" in printed
    pipe, cls, seg = load_checkpoint(out), load_checkpoint(ckpt), load_checkpoint(seg_ckpt)
    assert weights_digest(pipe) == weights_digest(cls) and weights_digest(pipe.segmenter) == weights_digest(seg)
    assert pipe.threshold == cls.threshold and pipe.segmenter.threshold == seg.threshold
    assert pipe.segmenter.classes == ["no lesion", "lesion"] and pipe.segmenter.modalities == seg.modalities
    assert not list(tmp_path.glob(".*.tmp")), "written atomically: no temporary file left"

    # The file scores as the classifier alone does (a given mask wins over the bundled segmenter).
    preds = {}
    for name, c in (("alone", ckpt), ("pipe", out)):
        assert main(["predict", "--checkpoint", str(c), str(sample[0]), "--mask", str(sample[1]),
                     "--out", str(tmp_path / name), "--saliency", "none"]) == 0
        preds[name] = next(csv.DictReader(open(tmp_path / name / "predictions.csv")))["probability"]
    capsys.readouterr()
    assert preds["pipe"] == preds["alone"]
    # Recalibrated, it stays a pipeline: the segmenter goes along unchanged.
    local = tmp_path / "local.pt"
    assert main(["calibrate", "--checkpoint", str(out), "--data", str(synth_datalist), "--out", str(local),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert weights_digest(load_checkpoint(local).segmenter) == weights_digest(seg)

    # Refusals: one line each, nothing written.
    refused = tmp_path / "refused.pt"
    assert main(["bundle", "--classifier", str(seg_ckpt), "--segmenter", str(ckpt), "--out", str(refused)]) == 2
    assert f"{seg_ckpt}: a segmenter (unet_small), not a classifier" in _one_line_error(capsys)
    assert main(["bundle", "--classifier", str(ckpt), "--segmenter", str(out), "--out", str(refused)]) == 2
    assert f"{out}: a pipeline (small_cnn with the segmenter unet_small), not a segmenter" in _one_line_error(capsys)
    assert main(["bundle", "--classifier", str(out), "--segmenter", str(seg_ckpt), "--out", str(refused)]) == 2
    assert "already carries a segmenter (unet_small); pass --replace" in _one_line_error(capsys)
    assert main(["bundle", "--classifier", str(ckpt), "--segmenter", str(seg_ckpt), "--out", str(ckpt)]) == 2
    assert "is one of the sources" in _one_line_error(capsys)
    assert not refused.exists()
    assert main(["bundle", "--classifier", str(out), "--segmenter", str(seg_ckpt), "--out", str(refused),
                 "--replace"]) == 0
    assert load_checkpoint(refused).is_pipeline
