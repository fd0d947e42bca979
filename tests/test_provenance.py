"""Checkpoints remember their training and validation images by content digest; evaluate warns on reuse."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import torch

from breastai.data.datalist import read_datalist
from breastai.engine.evaluate import evaluate_checkpoint
from breastai.data.provenance import file_digest, part_digests, seen_before
from breastai.engine.run import main as train_main


def test_digest_follows_content_not_name(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "renamed.png", tmp_path / "c.png"
    a.write_bytes(b"pixels")
    b.write_bytes(b"pixels")
    c.write_bytes(b"other pixels")
    assert file_digest(a) == file_digest(b) != file_digest(c)
    assert len(file_digest(a)) == 16 and file_digest(tmp_path / "missing.png") is None
    assert part_digests([{"image": a}, {"image": b}, {"image": np.zeros(3)}]) == [file_digest(a)]


def test_evaluate_counts_images_the_model_learned_from(synth_datalist, tmp_path, tiny_config, caplog):
    run = Path(train_main(tiny_config(synth_datalist, tmp_path / "run", "train.epochs=1"))["run_dir"])
    state = torch.load(run / "best.pt", weights_only=True)
    seen = state["seen_images"]
    assert seen["train"] and seen["val"] and not set(seen["train"]) & set(seen["val"])
    rows = read_datalist(synth_datalist)
    # Without a test split, every row of the datalist was either trained or validated on.
    counts = seen_before(seen, rows)
    assert counts["train"] == len(seen["train"]) and counts["val"] == len(seen["val"])
    assert counts["train"] + counts["val"] == len(rows)

    # A copy of one training image under another name, plus one image nobody has seen.
    train_row = next(r for r in rows if file_digest(r["image"]) in set(seen["train"]))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(train_row["image"], fresh / "copy_of_training_image.png")
    shutil.copy(train_row["mask"][0], fresh / "copy_mask.png")
    from PIL import Image

    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(fresh / "new.png")
    with open(fresh / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "label"])
        w.writerow(["copy_of_training_image.png", "copy_mask.png", train_row["label"]])
        w.writerow(["new.png", "copy_mask.png", "malignant" if train_row["label"] == "benign" else "benign"])
    with caplog.at_level("WARNING", logger="breastai"):
        rep = evaluate_checkpoint(run / "best.pt", fresh / "list.csv", tmp_path / "ev", device="cpu", n_boot=20)
    assert rep["n_seen_in_training"] == 1 and rep["n_seen_in_validation"] == 0
    assert "1 of the 2 evaluation images are identical to images this checkpoint was trained on" in caplog.text


def test_old_checkpoints_without_digests_say_unknown():
    assert seen_before({}, [{"image": "x.png"}]) == {"train": None, "val": None}, "no digests: unknown, not zero"
    assert seen_before(None, [{"image": "x.png"}]) == {"train": None, "val": None}
