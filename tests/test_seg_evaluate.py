"""``breastai evaluate`` of a segmentation checkpoint: its outlines and lesion presence on a datalist.

The segmenter (``seg_ckpt``, conftest) is a real unet_small trained on bright discs on noise; the
evaluation datalist is new discs (other seed) with one image in four lesion-free (empty mask).
Bounds: Dice >= 0.85 on every disc (as tests/test_auto_outline.py), presence separates perfectly.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import blob_image, write_rows
from PIL import Image

from breastai.engine.evaluate import evaluate_checkpoint
from breastai.engine.scoring import RecordError

DICE = 0.85


def _datalist(folder, with_masks=True):
    rows = []
    for i, lesions in enumerate([[(40, 50, 12)], [(30, 30, 10)], [], [(50, 60, 11)], [], [(35, 70, 9)]]):
        img, mask = blob_image((80, 96), lesions, seed=10 + i)
        Image.fromarray(img).save(folder / f"e{i}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"e{i}_mask.png")
        rows.append({"case_id": f"e{i}", "image": f"e{i}.png", "mask": f"e{i}_mask.png" if with_masks else "",
                     "label": "normal" if not lesions else "benign"})
    return write_rows(folder / "eval.csv", rows)


def test_a_segmenter_is_measured_on_its_own_outlines_and_lesion_presence(seg_ckpt, tmp_path, capsys):
    dl = _datalist(tmp_path)
    from breastai.cli import main

    assert main(["evaluate", "--checkpoint", str(seg_ckpt), "--data", str(dl), "--out", str(tmp_path / "ev"),
                        "--device", "cpu"]) == 0
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert rep["task"] == "segmentation" and (rep["n_images"], rep["n_lesion"], rep["n_normal"]) == (6, 4, 2)
    assert rep["missed"] == 0 and rep["false_lesion_rate"] == 0.0 and rep["presence_auc"] == 1.0
    assert rep["presence_threshold"] == 0.5 and rep["n_seen_in_training"] == 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert [r["case_id"] for r in rows] == [f"e{i}" for i in range(6)]
    lesion = [r for r in rows if r["has_lesion"] == "True"]
    assert len(lesion) == 4 and all(float(r["dice"]) >= DICE for r in lesion)
    assert rep["dice_mean"] == pytest.approx(np.mean([float(r["dice"]) for r in lesion]))
    assert all(r["lesion_found"] == "False" and r["n_lesions"] == "0" for r in rows if r["has_lesion"] == "False")
    assert (tmp_path / "ev" / "roc.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "segmenter on 6 image(s), 4 with a traced lesion, 2 without" in printed and "0 lesion image(s) missed" in printed


def test_rows_without_a_mask_and_classifier_options_are_refused(seg_ckpt, tmp_path):
    dl = _datalist(tmp_path, with_masks=False)
    with pytest.raises(RecordError, match=r"e0.*no traced mask.*6 of 6"):
        evaluate_checkpoint(seg_ckpt, dl, tmp_path / "ev", device="cpu")
    assert not (tmp_path / "ev").exists()  # nothing written
    with pytest.raises(ValueError, match="is a segmenter.*--level, --by"):
        evaluate_checkpoint(seg_ckpt, dl, tmp_path / "ev", device="cpu", level="image", by=["label"])
