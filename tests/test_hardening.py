"""No silent wrong answers: corrupt scores, concurrent runs, inputs that are not regular files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from breastai.data.readers.registry import ImageReadError, load_image
from breastai.inference.predictor import Predictor
from breastai.inference.writers import OutputBusyError, output_lock, run_predict
from breastai.models.checkpoint_io import load_checkpoint


def test_a_model_that_scores_nan_gives_an_error_record_not_a_benign_call(ckpt, sample, tmp_path):
    state = load_checkpoint(ckpt)
    state.weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                     for k, v in state.weights.items()}
    records, run = run_predict(Predictor.from_state(state, device="cpu"), [sample[0]], tmp_path / "out",
                               saliency="none", tta=2)
    assert records[0]["error"] and "not a number" in records[0]["error"]
    assert records[0]["probability"] is None and records[0]["label"] is None and run["n_failed"] == 1
    json_text = (tmp_path / "out" / "predictions.json").read_text()
    assert "NaN" not in json_text  # predictions.json stays valid JSON


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(predictor, sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    entered, release = threading.Event(), threading.Event()

    def hold():
        with output_lock(out):
            entered.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert entered.wait(30)
        with pytest.raises(OutputBusyError, match="another breastai predict run"):
            run_predict(predictor, [sample[0]], out, saliency="none")
        assert not (out / "predictions.csv").exists()
    finally:
        release.set()
        t.join()
    records, _ = run_predict(predictor, [sample[0]], out, saliency="none")  # free again
    assert records[0]["error"] is None


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys, time; from pathlib import Path; from breastai.inference.writers import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError):
            with output_lock(out):
                pass
    finally:
        proc.kill()
        proc.wait()
    with output_lock(out):  # the kernel released it with the process
        pass


def test_a_fifo_input_is_refused_without_blocking(predictor, tmp_path):
    fifo = tmp_path / "scan.dcm"  # a DICOM suffix too: nothing may sniff its header
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(fifo)
    rec = predictor.predict(fifo)[0]  # would block forever if anything opened it
    assert "not a regular file" in rec["error"]
