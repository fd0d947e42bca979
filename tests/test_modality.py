"""Checkpoints record the modalities they were trained on; predict refuses DICOM of another one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import PATIENT_NAME, _tiny_config, synth_rows, write_rows
from tests.test_dicom import write_dicom

US_SOP = "1.2.840.10008.5.1.4.1.1.6.1"
REAL_MG = Path("/work/shared/data/dicom-mg")


def _with_modalities(ckpt_path: Path, tmp: Path, modalities) -> Path:
    from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint

    c = load_checkpoint(ckpt_path)
    c.modalities = modalities
    return save_checkpoint(tmp / "best.pt", c)


@pytest.fixture(scope="module")
def us_ckpt(ckpt, tmp_path_factory) -> Path:
    return _with_modalities(ckpt, tmp_path_factory.mktemp("us"), ["US"])


@pytest.fixture(scope="module")
def us_predictor(us_ckpt):
    from breastai.inference.predictor import Predictor

    return Predictor.from_checkpoint(us_ckpt, device="cpu")


def _lesion() -> np.ndarray:
    # Tissue to the edges, so a mammogram's breast-region crop keeps the whole frame.
    img = np.full((96, 96), 90, np.uint8)
    img[30:66, 28:70] = 200
    return img


def test_modalities_round_trip_and_digest(us_ckpt, ckpt):
    from breastai.models.checkpoint import CheckpointError, state_digest
    from breastai.models.checkpoint_io import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(us_ckpt)
    assert loaded.modalities == ["US"]
    state = torch.load(us_ckpt, weights_only=True)
    assert state["modalities"] == ["US"] and state["digest"] == state_digest(state)
    state["modalities"] = ["MG"]  # edited after saving: the digest no longer matches
    torch.save(state, us_ckpt.parent / "edited.pt")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(us_ckpt.parent / "edited.pt")
    # A checkpoint that never recorded modalities (older breastai) loads with None and writes no key.
    old = torch.load(ckpt, weights_only=True)
    old.pop("modalities", None)
    old.pop("digest")
    torch.save(old, us_ckpt.parent / "old.pt")
    c = load_checkpoint(us_ckpt.parent / "old.pt")
    assert c.modalities is None and "modalities" not in c.to_state()
    again = save_checkpoint(us_ckpt.parent / "again.pt", load_checkpoint(us_ckpt))
    assert load_checkpoint(again).modalities == ["US"]


def test_us_checkpoint_refuses_mg_dicom_before_decoding(us_predictor, tmp_path, monkeypatch):
    import breastai.inference.predictor as predictor_mod

    folder = tmp_path / PATIENT_NAME.replace("^", "_")  # the message redacts identifying path parts
    folder.mkdir()
    mg = write_dicom(folder / "mg.dcm", _lesion(), modality="MG")

    def no_decode(*a, **k):
        raise AssertionError("pixels decoded for a refused input")

    monkeypatch.setattr(predictor_mod, "decode_item", no_decode)  # the load stage's decode, as the predictor calls it
    rec = us_predictor.predict([mg])[0]
    assert rec["probability"] is None and rec["label"] is None
    assert rec["error"].endswith(": modality MG, but this checkpoint was trained on US images only; it is not scored")
    assert "Doe" not in rec["error"] and "Janet" not in rec["error"]


def test_us_checkpoint_scores_us_dicom_plain_images_and_untagged(us_predictor, tmp_path, sample):
    us = write_dicom(tmp_path / "us.dcm", _lesion(), modality="US", sop=US_SOP)
    # No Modality tag and a SOP class that implies none (Secondary Capture): nothing to refuse on.
    untagged = write_dicom(tmp_path / "sc.dcm", _lesion(), modality=None, sop="1.2.840.10008.5.1.4.1.1.7")
    recs = us_predictor.predict([us, untagged, sample[0]])
    for rec in recs:
        assert rec["error"] is None and 0.0 <= rec["probability"] <= 1.0, rec


def test_untagged_mammography_sop_class_is_refused(us_predictor, tmp_path):
    from tests.test_dicom import MG_SOP

    path = write_dicom(tmp_path / "mg_untagged.dcm", _lesion(), modality=None, sop=MG_SOP)
    assert "modality MG" in us_predictor.predict([path])[0]["error"]


def test_checkpoint_without_modalities_refuses_nothing(predictor, tmp_path):
    assert all(m.modalities is None for m in predictor.members)
    mg = write_dicom(tmp_path / "mg.dcm", _lesion(), modality="MG")
    rec = predictor.predict([mg])[0]
    assert rec["error"] is None and rec["probability"] is not None


def test_ensemble_member_refuses(ckpt, us_ckpt, tmp_path):
    from breastai.engine.ensemble import ensemble_state
    from breastai.inference.predictor import Predictor
    from breastai.models.checkpoint_io import load_checkpoint

    mg = write_dicom(tmp_path / "mg.dcm", _lesion(), modality="MG")
    ens = ensemble_state([load_checkpoint(ckpt), load_checkpoint(us_ckpt)], np.array([0.5, 0.5]), 0.0,
                         "mean", 0.5, {}, ["a.pt", "b.pt"])
    rec = Predictor.from_state(ens, device="cpu").predict([mg])[0]
    assert rec["probability"] is None
    assert "modality MG, but ensemble member 2 was trained on US images only" in rec["error"]


def test_training_records_datalist_modality(synth_datalist, tmp_path):
    from breastai.engine.run import main
    from breastai.models.checkpoint_io import load_checkpoint

    rows = [{**r, "modality": "us"} for r in synth_rows(synth_datalist)]
    out = main(_tiny_config(write_rows(tmp_path / "dl.csv", rows), tmp_path / "run", "train.epochs=1"))
    assert load_checkpoint(Path(out["run_dir"]) / "best.pt").modalities == ["US"]


def test_trained_modalities_rules(tmp_path):
    from breastai.data.modality import trained_modalities

    mg = write_dicom(tmp_path / "mg.dcm", _lesion(), modality="MG")
    png = str(tmp_path / "a.png")
    assert trained_modalities([{"image": png, "modality": "US"}, {"image": str(mg)}]) == ["MG", "US"]
    assert trained_modalities([{"image": png}]) is None  # unknown: refuses nothing
    assert trained_modalities([{"image": png}, {"image": str(mg)}]) is None  # one unknown: none claimed
    assert trained_modalities([{"image": png}], default="US") == ["US"]  # data.modality


def test_config_modality_setting(tmp_path):
    from breastai.core.config import ConfigError, load_config

    assert load_config(None, [])["data"]["modality"] is None
    assert load_config(None, ["data.modality=US"])["data"]["modality"] == "US"
    assert load_config(None, ["data.modality=null"])["data"]["modality"] is None
    (tmp_path / "c.yaml").write_text("data:\n  modality: 3\n")
    with pytest.raises(ConfigError, match="data.modality must be text"):
        load_config(tmp_path / "c.yaml", [])


@pytest.mark.skipif(not REAL_MG.is_dir(), reason="real mammograms not found")
def test_real_mammograms_refused_by_us_checkpoint(us_predictor):
    files = sorted(p for p in REAL_MG.iterdir() if p.is_file())
    recs = us_predictor.predict(files)
    assert len(recs) == 8
    for rec in recs:
        assert rec["probability"] is None
        assert "modality MG, but this checkpoint was trained on US images only; it is not scored" in rec["error"]
