"""Archive-scale predict: records streamed to a journal, --resume after a kill or an error, --workers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import predict_cli, synth_rows

from breastai.inference.journal import PARTIAL, ResumeError, RunJournal
from breastai.inference.writers import default_writers, run_predict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(synth_datalist, tmp_path_factory) -> list[str]:
    """Seven inputs: five images, one of them listed twice, and a missing file (a failure record)."""
    images = [r["image"] for r in synth_rows(synth_datalist)[:5]]
    missing = str(tmp_path_factory.mktemp("gone") / "missing.png")
    return [images[0], images[1], missing, images[2], images[1], images[3], images[4]]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


class Flaky:
    """A writer that stops the run (an error) when it is given record ``fail_at``."""

    fail_at: int | None = None

    def start(self, out, run_id):
        pass

    def write_item(self, index, record, maps):
        if index == self.fail_at:
            raise RuntimeError("disk full")

    def finish(self, records, run):
        pass

    def abort(self):
        pass


def test_records_are_streamed_and_final_files_agree(ckpt, inputs, tmp_path):
    out = tmp_path / "out"
    seen = []

    class Peek(Flaky):  # what the journal holds when each record is handed to the writers
        def write_item(self, index, record, maps):
            seen.append(len(_lines(out / PARTIAL / "predictions.jsonl")))
            assert len(_lines(out / PARTIAL / "manifest.jsonl")) == index  # one record per input here
            assert len(_lines(out / PARTIAL / "predictions.csv")) == index + 1  # and the header

    records, run = run_predict(ckpt, inputs, out, saliency="none", device="cpu",
                               writers=[Peek(), *default_writers("none")])
    assert seen == list(range(len(inputs)))  # every earlier record was on disk before the next input
    assert not (out / PARTIAL).exists()  # the journal goes once the final files are in
    final = json.loads((out / "predictions.json").read_text())
    assert final["run"] == run and run["n"] == 7 and run["n_failed"] == 1
    jsonl = [json.loads(line) for line in _lines(out / "predictions.jsonl")]
    assert jsonl == final["records"] and [r["id"] for r in jsonl] == [r["id"] for r in records]
    assert [r["probability"] for r in jsonl] == [r["probability"] for r in records]
    # Written a record at a time, yet exactly what json.dumps of the whole makes.
    assert (out / "predictions.json").read_text() == json.dumps({"run": run, "records": final["records"]}, indent=1)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["id"] for r in rows] == [r["id"] for r in records] and rows[2]["error"].endswith("file not found")


def test_killed_run_resumes_to_the_uninterrupted_records(ckpt, inputs, tmp_path):
    """A real SIGKILL after 3 finished inputs and a half-written last line in every journal file:
    --resume ends with exactly the records of an uninterrupted run, none twice."""
    args = ["predict", *inputs, "--checkpoint", str(ckpt), "--saliency", "none", "--device", "cpu", "--threads", "2"]
    assert predict_cli([*args, "--out", str(tmp_path / "whole")]) == 1  # the missing file fails
    out = tmp_path / "killed"
    killer = ("import os, signal, sys\n"
              "import breastai.inference.journal as j\n"
              "add = j.RunJournal.add\n"
              "def killing_add(self, *a):\n"
              "    add(self, *a)\n"
              "    if self.n_inputs == 3:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "j.RunJournal.add = killing_add\n"
              "from breastai.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", killer, *args, "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == -9, proc.stderr
    partial = out / PARTIAL
    assert len(_lines(partial / "manifest.jsonl")) == 3 and not (out / "predictions.csv").exists()
    for name, half in (("predictions.jsonl", '{"id": "half a rec'), ("predictions.csv", "half,a,ro"),
                       ("manifest.jsonl", '{"key": "sha256:0')):
        with open(partial / name, "a") as fh:  # as if killed in the middle of the next input's lines
            fh.write(half)
    assert predict_cli([*args, "--out", str(out), "--resume"]) == 1
    assert not partial.exists()
    for name in ("predictions.jsonl", "predictions.csv"):
        assert _lines(out / name) == _lines(tmp_path / "whole" / name)
    resumed = json.loads((out / "predictions.json").read_text())
    assert resumed["run"]["resumed"] == {"inputs": 3, "records": 3} and resumed["run"]["n"] == 7
    ids = [r["id"] for r in resumed["records"]]
    assert ids.count(Path(inputs[1]).name) == 2 and len(set(ids)) == 6  # the repeated input twice, no others


def test_a_run_stopped_by_an_error_resumes_with_its_maps(predictor, inputs, tmp_path):
    whole, _ = run_predict(predictor, inputs, tmp_path / "whole", saliency="gradcam", writers=[
        Flaky(), *default_writers("gradcam")])
    out = tmp_path / "out"
    flaky = Flaky()
    flaky.fail_at = 4
    with pytest.raises(RuntimeError, match="disk full"):
        run_predict(predictor, inputs, out, saliency="gradcam", writers=[flaky, *default_writers("gradcam")])
    (maps,) = (out / "saliency").iterdir()
    assert len(list(maps.glob("*.npy"))) == 3  # inputs 0..3 kept with the journal (the missing file has none)
    assert len(_lines(out / PARTIAL / "manifest.jsonl")) == 4
    records, run = run_predict(predictor, inputs, out, saliency="gradcam", resume=True,
                               writers=[Flaky(), *default_writers("gradcam")])
    assert run["run_id"] == maps.name and [d.name for d in (out / "saliency").iterdir()] == [maps.name]
    assert [r["id"] for r in records] == [r["id"] for r in whole]
    assert [r["probability"] for r in records] == [r["probability"] for r in whole]
    for r, w in zip(records, whole):  # same file names as the uninterrupted run's, every one there
        assert (r["saliency_npy"] is None) == (w["saliency_npy"] is None)
        if r["saliency_npy"]:
            assert Path(r["saliency_npy"]).name == Path(w["saliency_npy"]).name
            assert np.array_equal(np.load(out / r["saliency_npy"]), np.load(tmp_path / "whole" / w["saliency_npy"]))


def test_resume_is_refused_on_other_settings_or_inputs(ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    flaky = Flaky()
    flaky.fail_at = 2
    with pytest.raises(RuntimeError):
        run_predict(ckpt, inputs, out, saliency="none", device="cpu", writers=[flaky, *default_writers("none")])
    journal = sorted(p.name for p in (out / PARTIAL).iterdir())
    again = [Flaky(), *default_writers("none")]
    with pytest.raises(ResumeError, match=r"tta: 0 then, 2 now"):
        run_predict(ckpt, inputs, out, saliency="none", tta=2, device="cpu", resume=True, writers=again)
    with pytest.raises(ResumeError, match="the outputs"):  # another map size limit
        run_predict(ckpt, inputs, out, saliency="none", device="cpu", resume=True,
                    writers=[Flaky(), *default_writers("none", map_max_side=64)])
    with pytest.raises(ResumeError, match="1 of the 2 input"):  # input 1 is listed again later, input 0 is not
        run_predict(ckpt, inputs[2:], out, saliency="none", device="cpu", resume=True, writers=again)
    from breastai.inference.predictor import Predictor

    other = Predictor.from_checkpoint(ckpt, device="cpu")
    other.threshold += 0.1
    with pytest.raises(ResumeError, match="the checkpoint"):
        run_predict(other, inputs, out, saliency="none", resume=True, writers=again)
    assert predict_cli(["predict", *inputs, "--checkpoint", str(ckpt), "--out", str(out), "--saliency", "gradcam",
                        "--resume", "--device", "cpu"]) == 2
    assert "saliency: 'none' then, 'gradcam' now" in capsys.readouterr().err
    assert sorted(p.name for p in (out / PARTIAL).iterdir()) == journal  # a refusal touches nothing
    records, run = run_predict(ckpt, inputs, out, saliency="none", device="cpu", resume=True, writers=again)
    assert run["resumed"]["inputs"] == 2 and len(records) == 7


def test_the_journal_drops_half_written_lines(tmp_path, sample):
    from breastai.inference.inputs import PredictItem

    items = [PredictItem(str(sample[0]), source=str(sample[0]), case_id=f"c{k}") for k in range(4)]
    out = tmp_path / "out"
    out.mkdir()
    journal = RunJournal.open(out, {"a": 1}, ["id", "probability"])
    assert [p for p, _ in journal.pending(items)] == [0, 1, 2, 3]
    for k in range(3):
        journal.add(k, [{"id": f"c{k}", "probability": k / 10}], [float(k)])
    journal.close()
    partial = out / PARTIAL
    sizes = {p.name: p.stat().st_size for p in partial.iterdir()}
    with open(partial / "manifest.jsonl", "a") as fh:  # a whole line that points past the records' end,
        fh.write(json.dumps({"key": "sha256:x", "n": 1, "jsonl": 10**6, "csv": 10**6, "z": [0.0]}) + "\n")
        fh.write('{"key": "sha')  # then half a line
    with open(partial / "predictions.jsonl", "a") as fh:
        fh.write('{"id": "c3", "proba')
    with pytest.raises(ResumeError, match="other settings"):
        RunJournal.open(out, {"a": 2}, ["id", "probability"], resume=True)
    again = RunJournal.open(out, {"a": 1}, ["id", "probability"], resume=True)
    assert again.n_inputs == again.resumed == 3 and again.run_id == journal.run_id
    assert {p.name: p.stat().st_size for p in partial.iterdir()} == sizes  # cut back to the last whole input
    assert [(r["id"], r["_calibrated_logit"]) for r in again.restored()] == [("c0", 0.0), ("c1", 1.0), ("c2", 2.0)]
    assert [p for p, _ in again.pending(items)] == [3]
    again.add(3, [{"id": "c3", "probability": 0.3}], [3.0])
    assert [r["id"] for r in again.records()] == ["c0", "c1", "c2", "c3"]
    assert _lines(partial / "predictions.csv") == ["id,probability", "c0,0.000000", "c1,0.100000", "c2,0.200000",
                                                   "c3,0.300000"]
    again.remove()
    fresh = RunJournal.open(out, {"a": 1}, ["id"], resume=True)  # nothing left to resume: a fresh run
    assert fresh.n_inputs == 0 and fresh.run_id != journal.run_id


def _same(alone: list[dict], pooled: list[dict]) -> None:
    arrays = ("saliency_map", "image", "lesion_mask")
    assert len(alone) == len(pooled)
    for a, b in zip(alone, pooled):
        assert {k: v for k, v in a.items() if k not in arrays} == {k: v for k, v in b.items() if k not in arrays}
        for k in arrays:
            assert (a.get(k) is None) == (b.get(k) is None) and (a.get(k) is None or np.array_equal(a[k], b[k]))


def test_workers_give_the_same_records_and_maps(ckpt, predictor, inputs, sample):
    masks = [sample[1] if k in (0, 3) else None for k in range(len(inputs))]
    kwargs = dict(masks=masks, saliency="gradcam", tta=2, return_maps=True)
    alone = predictor.predict(inputs, workers=0, **kwargs)
    _same(alone, predictor.predict(inputs, workers=2, **kwargs))
    assert len(alone) == 7 and alone[2]["error"].endswith("file not found") and alone[0]["has_mask"]
    # Inputs a mask provider outlines: decoded in the workers, outlined and preprocessed here.
    from breastai.inference.predictor import Predictor

    def corner(item, image, meta):
        m = np.zeros(image.shape[-2:], bool)
        m[8:30, 10:40] = True
        return m

    outlined = Predictor.from_checkpoint(ckpt, device="cpu", mask_providers=[corner])
    alone = outlined.predict(inputs, workers=0, saliency="gradcam", return_maps=True)
    _same(alone, outlined.predict(inputs, workers=2, saliency="gradcam", return_maps=True))
    assert alone[0]["mask_source"] == "provider" and alone[0]["area_px"] == 22 * 30
