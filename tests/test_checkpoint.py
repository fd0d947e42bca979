"""The typed checkpoint: one builder of the on-disk dict (to_state), one reader (from_state), and a
format that files written before and after agree on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from breastai.core.config import load_config
from breastai.engine.ensemble import ensemble_state
from breastai.engine.run import main as train_main
from breastai.models.checkpoint import FORMAT_VERSION, Checkpoint, CheckpointError, ModelArgs, model_from_checkpoint, state_digest
from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint
from breastai.models.registry import create_model

# The top-level keys breastai wrote before checkpoints were typed (read from files it wrote):
# a run's best.pt, its last.pt with train.ema, and an ensemble's best.pt.
OLD_BEST_KEYS = {"format_version", "versions", "model", "weights", "config", "classes", "preprocess", "threshold",
                 "temperature", "epoch", "best_epoch", "metrics", "logit_offset", "seen_images"}
OLD_LAST_KEYS = {"format_version", "versions", "model", "weights", "config", "classes", "preprocess", "threshold",
                 "temperature", "epoch", "best_epoch", "metrics", "optimizer", "scheduler", "early_stop",
                 "epoch_seconds", "ema"}
OLD_ENSEMBLE_KEYS = {"format_version", "versions", "model", "weights", "ensemble", "config", "classes", "preprocess",
                     "threshold", "seen_images", "temperature", "logit_offset", "metrics"}
# Keys added since, which older breastai ignores (it reads the keys above and refuses only format_version > 1).
ADDED_KEYS = {"digest"}


def _small(**fields) -> Checkpoint:
    """A checkpoint of a freshly built small CNN with a complete config."""
    cfg = load_config(None, ["model.name=small_cnn", "preprocess.mode=whole"])
    model = create_model("small_cnn", in_chans=1, dropout=0.1)
    return Checkpoint(model=ModelArgs("small_cnn", 1, 0.1), weights=dict(model.state_dict()), config=cfg,
                      classes=["benign", "malignant"], **fields)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_to_state_from_state_round_trip():
    ckpt = _small(threshold=0.31, temperature=1.7, logit_offset=0.4, epoch=3, best_epoch=2,
                  metrics={"val_auc": 0.9}, seen_images={"train": ["ab"], "val": ["cd"]})
    state = ckpt.to_state()
    assert state["format_version"] == FORMAT_VERSION and state["versions"]["torch"]
    back = Checkpoint.from_state(state)
    assert back.model == ckpt.model and _same_weights(back.weights, ckpt.weights)
    for f in ("config", "classes", "threshold", "temperature", "logit_offset", "epoch", "best_epoch", "metrics",
              "seen_images", "optimizer", "members", "extra"):
        assert getattr(back, f) == getattr(ckpt, f), f
    assert not back.is_ensemble and not back.is_resume
    assert back.calibration == {"temperature": 1.7, "logit_offset": 0.4}
    again = back.to_state()
    assert list(again) == list(state) and again["model"] == state["model"] == {"name": "small_cnn", "in_chans": 1,
                                                                                  "dropout": 0.1}
    assert back.versions == state["versions"], "a re-save keeps the versions it was written with"


def test_saved_file_loads_with_weights_only_and_rebuilds_the_model(tmp_path):
    ckpt = _small(threshold=0.4, epoch=0, best_epoch=0, logit_offset=0.0, seen_images={"train": [], "val": []})
    save_checkpoint(tmp_path / "best.pt", ckpt)
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert set(raw) == OLD_BEST_KEYS | ADDED_KEYS and raw["preprocess"] == raw["config"]["preprocess"]
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded.format_version == FORMAT_VERSION and loaded.threshold == 0.4
    model = model_from_checkpoint(loaded)
    assert _same_weights(model.state_dict(), ckpt.weights) and not model.training
    with pytest.raises(TypeError, match="takes a Checkpoint"):
        save_checkpoint(tmp_path / "x.pt", raw)


def test_an_old_format_dict_still_loads(tmp_path):
    """No format_version, versions, logit_offset or seen_images, and a config missing newer keys."""
    new = _small()
    cfg = {**new.config, "eval": {k: v for k, v in new.config["eval"].items() if k != "flip_average"}}
    old = {"model": {"name": "small_cnn", "in_chans": 1, "dropout": 0.1}, "weights": new.weights, "config": cfg,
           "classes": ["benign", "malignant"], "preprocess": cfg["preprocess"], "threshold": 0.3, "temperature": 1.2,
           "epoch": 4, "best_epoch": 4, "metrics": {"val_auc": 0.8}}
    torch.save(old, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.format_version == 0 and ckpt.versions is None
    assert ckpt.logit_offset is None and ckpt.calibration == {"temperature": 1.2, "logit_offset": 0.0}
    assert ckpt.seen_images is None and (ckpt.epoch, ckpt.best_epoch) == (4, 4)
    assert ckpt.config["eval"]["flip_average"] is False, "a config key added later takes its default"
    assert _same_weights(model_from_checkpoint(ckpt).state_dict(), new.weights)
    # Saved again it gains only what every file now carries, not the keys it never had.
    assert set(ckpt.to_state()) == set(old) | {"format_version", "versions", *ADDED_KEYS}
    # Older still: no temperature, threshold or classes (the readers' defaults, the config's classes).
    oldest = {k: v for k, v in old.items() if k not in ("temperature", "threshold", "classes")}
    ckpt = Checkpoint.from_state(oldest)
    assert (ckpt.temperature, ckpt.threshold, ckpt.classes) == (1.0, 0.5, list(cfg["data"]["classes"]))


def test_unknown_keys_are_kept_and_bad_files_refused(tmp_path):
    state = {**_small().to_state(), "from_the_future": [1, 2]}
    assert Checkpoint.from_state(state).extra == {"from_the_future": [1, 2]}
    assert Checkpoint.from_state(state).to_state()["from_the_future"] == [1, 2]
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this breastai supports"):
        load_checkpoint(tmp_path / "new.pt")
    malformed = {**state, "ensemble": {"weights": [1.0]}}
    torch.save({**malformed, "digest": state_digest(malformed)}, tmp_path / "bad.pt")  # intact, but malformed
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a breastai checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_resume_checkpoint_is_refused_without_resume(tmp_path):
    ckpt = _small(epoch=1, best_epoch=0, optimizer={"state": {}, "param_groups": []}, scheduler={},
                  early_stop={"auc": 0.5, "epoch": 0, "stale": 1}, epoch_seconds=[1.0, 2.0])
    save_checkpoint(tmp_path / "last.pt", ckpt)
    with pytest.raises(CheckpointError, match="resume checkpoint"):
        load_checkpoint(tmp_path / "last.pt")
    last = load_checkpoint(tmp_path / "last.pt", resume=True)
    assert last.is_resume and last.early_stop["stale"] == 1 and last.epoch_seconds == [1.0, 2.0] and last.ema is None


def test_ensemble_round_trip_keeps_members_typed(tmp_path):
    a = _small(temperature=2.0, logit_offset=0.5, seen_images={"train": ["x"], "val": ["y"]})
    b = replace(_small(temperature=0.5), model=ModelArgs("small_cnn", 1, 0.1, {"output_stride": 32}))
    ens = ensemble_state([a, b], np.array([0.7, 0.2]), -0.1, "stack", 0.45, {"val_auc": 0.9},
                         ["a/best.pt", "b/best.pt"])
    assert ens.is_ensemble and ens.model.name == "ensemble" and ens.weights == {}
    save_checkpoint(tmp_path / "ens.pt", ens)
    raw = torch.load(tmp_path / "ens.pt", weights_only=True)
    assert set(raw) == OLD_ENSEMBLE_KEYS | ADDED_KEYS and set(raw["ensemble"]) == {"members", "weights", "bias", "combine"}
    assert [set(m) for m in raw["ensemble"]["members"]] == [set(a.to_state()), set(b.to_state())]
    back = load_checkpoint(tmp_path / "ens.pt")
    assert back.is_ensemble and len(back.members) == 2
    assert all(isinstance(m, Checkpoint) and not m.is_ensemble for m in back.members)
    assert back.member_weights == pytest.approx([0.7, 0.2]) and back.bias == pytest.approx(-0.1)
    assert back.combine == "stack" and back.threshold == 0.45 and back.calibration["temperature"] == 1.0
    assert back.members[0].calibration == {"temperature": 2.0, "logit_offset": 0.5}
    assert back.members[1].model.init_kwargs == {"output_stride": 32}
    assert back.seen_images == {"train": ["x"], "val": ["y"]}
    assert _same_weights(back.members[1].weights, b.weights)
    with pytest.raises(CheckpointError, match="ensemble"):
        model_from_checkpoint(back)


def test_files_written_now_have_the_keys_written_before(synth_datalist, tiny_config, tmp_path):
    """Older breastai reads a file by these keys (and ignores the added ones): a run's best.pt and last.pt and an
    ensemble of them."""
    res = train_main(tiny_config(synth_datalist, tmp_path, "train.epochs=1", "train.ema=0.5", "log.tensorboard=false"))
    run = Path(res["run_dir"])
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    # best.pt also holds the out-of-distribution detector fitted after training (older code ignores it).
    assert set(best) == OLD_BEST_KEYS | ADDED_KEYS | {"ood"} and set(last) == OLD_LAST_KEYS | ADDED_KEYS
    assert set(best["model"]) == set(last["model"]) == {"name", "in_chans", "dropout"}
    member = load_checkpoint(run / "best.pt")
    save_checkpoint(tmp_path / "ens.pt", ensemble_state([member, member], np.ones(2), 0.0, "mean", 0.5,
                                                        {}, ["m0", "m1"]))
    ens = torch.load(tmp_path / "ens.pt", weights_only=True)
    assert set(ens) == OLD_ENSEMBLE_KEYS | ADDED_KEYS and ens["model"] == {"name": "ensemble"}
    assert all(set(m) == OLD_BEST_KEYS | ADDED_KEYS | {"ood"} for m in ens["ensemble"]["members"])

