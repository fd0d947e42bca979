"""The stages of a predict input: frames, mask providers, scorers composed into ensembles, writers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image
from test_dicom import US_SOP, write_dicom

from breastai.inference.ensemble import EnsembleScorer
from breastai.inference.predictor import Predictor
from breastai.inference.scorer import ModelScorer
from breastai.inference.writers import PredictionTables, run_predict
from breastai.models.checkpoint import Checkpoint, ModelArgs
from breastai.models.checkpoint_io import load_checkpoint


def _with_frames(state: Checkpoint, frame) -> Checkpoint:
    s = copy.deepcopy(state)
    s.config["data"]["reader_options"] = {"dicom": {"frame": frame}}
    return s


def _cine(tmp_path):
    rng = np.random.default_rng(0)
    cine = np.stack([rng.integers(0, 60 * (k + 1), (64, 72)).astype(np.uint8) for k in range(3)])
    cine[:, 20:40, 20:44] = 250
    return write_dicom(tmp_path / "cine.dcm", cine, modality="US", sop=US_SOP, frames=True)


def test_a_frame_all_checkpoint_scores_every_frame_of_a_dicom(ckpt, sample, tmp_path):
    """Trained with dicom.frame=all (one sample per frame), predict scores one record per frame."""
    state = load_checkpoint(ckpt)
    cine = _cine(tmp_path)
    recs = Predictor.from_state(_with_frames(state, "all"), device="cpu").predict([cine, sample[0]])
    assert [r["error"] for r in recs] == [None] * 4
    ids = [r["id"] for r in recs[:3]]
    assert [i.rsplit("_", 1)[1] for i in ids] == ["f0", "f1", "f2"] and len({i.rsplit("_", 1)[0] for i in ids}) == 1
    assert recs[3]["id"] == sample[0].name  # a PNG is one image, whatever the frame policy
    # Frame k is scored as a checkpoint reading frame k alone scores it.
    for k in range(3):
        alone = Predictor.from_state(_with_frames(state, k), device="cpu").predict(cine)[0]
        assert recs[k]["probability"] == pytest.approx(alone["probability"], abs=1e-7)
    assert len({round(r["probability"], 6) for r in recs[:3]}) > 1
    # The default policy reads the middle frame: one record.
    assert len(Predictor.from_state(state, device="cpu").predict(cine)) == 1


def test_a_mask_provider_outlines_inputs_that_come_without_a_mask(ckpt, sample, synth_datalist):
    """A crop model given no mask asks the providers, with the decoded image on the reader's grid."""
    state = load_checkpoint(ckpt)
    crop = copy.deepcopy(state)
    crop.config["preprocess"]["mode"] = "crop"
    truth = np.asarray(Image.open(sample[1])) > 0
    seen = []

    def provider(item, image, meta):
        seen.append((item.source, image.shape, meta.get("reader")))
        return truth

    plain = Predictor.from_state(crop, device="cpu")
    assert "a lesion mask is needed" in plain.predict(sample[0])[0]["error"]
    rec = Predictor.from_state(crop, device="cpu", mask_providers=[lambda *a: None, provider]).predict(sample[0])[0]
    given = plain.predict(sample[0], masks=[str(sample[1])])[0]
    assert rec["error"] is None and rec["has_mask"] and rec["probability"] == given["probability"]
    assert seen == [(str(sample[0]), truth.shape, "pil")]
    # A mask that comes with the input wins: the provider is not asked.
    seen.clear()
    Predictor.from_state(crop, device="cpu", mask_providers=[provider]).predict(sample[0], masks=[str(sample[1])])
    assert seen == []


def test_an_ensemble_is_a_scorer_of_members_not_a_predictor(ckpt, sample):
    state = load_checkpoint(ckpt)
    ens = Checkpoint(model=ModelArgs("ensemble"), weights={}, config=state.config, classes=state.classes,
                     members=[state, state], member_weights=[0.5, 0.25], bias=0.1)
    pred = Predictor.from_state(ens, device="cpu")
    assert isinstance(pred.scorer, EnsembleScorer) and not isinstance(pred.scorer, Predictor)
    assert all(isinstance(m, ModelScorer) for m in pred.members)
    one = Predictor.from_state(state, device="cpu").predict(sample[0])[0]
    both = pred.predict(sample[0])[0]
    c = (one["logit"] - (state.logit_offset or 0.0)) / state.temperature
    assert both["logit"] == pytest.approx(0.1 + 0.75 * c, abs=1e-9)
    bad = copy.deepcopy(ens)
    bad.members[1] = _with_frames(state, "all")
    with pytest.raises(Exception, match="frame policies"):
        Predictor.from_state(bad, device="cpu")


def test_writers_are_plug_ins(predictor, sample, tmp_path):
    class Spy:
        def __init__(self):
            self.calls = []

        def start(self, out, run_id):
            self.calls.append("start")

        def write_item(self, index, record, maps):
            self.calls.append(("item", index, maps is not None))
            record["spy"] = index

        def finish(self, records, run):
            self.calls.append(("finish", len(records), run["n"]))

        def abort(self):
            self.calls.append("abort")

    spy = Spy()
    records, _ = run_predict(predictor, [sample[0], tmp_path / "missing.png"], tmp_path / "out", saliency="gradcam",
                             writers=[spy, PredictionTables()])
    assert spy.calls == ["start", ("item", 0, True), ("item", 1, False), ("finish", 2, 2)]
    assert (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0].endswith(",spy")
    assert not (tmp_path / "out" / "saliency").exists()  # no map writer asked for

    class Broken(Spy):
        def write_item(self, index, record, maps):
            raise KeyboardInterrupt

    broken = Broken()
    with pytest.raises(KeyboardInterrupt):
        run_predict(predictor, [sample[0]], tmp_path / "out2", saliency="none", writers=[broken])
    assert broken.calls == ["start", "abort"]
