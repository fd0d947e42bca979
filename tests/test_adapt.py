"""Batch-norm statistics from a new site's images (``breastai.engine.adapt``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from breastai.data.frames import read_samples
from breastai.engine.adapt import _even_batch_size, adapted_checkpoint, batchnorm_statistics
from breastai.engine.loaders import build_dataset
from breastai.engine.loops import collate
from breastai.models.checkpoint import model_from_checkpoint
from breastai.models.checkpoint_io import load_checkpoint


def test_batches_are_split_evenly():
    assert _even_batch_size(33, 32) == 17  # 17 + 16, not 32 + 1
    assert _even_batch_size(64, 32) == 32
    assert _even_batch_size(5, 32) == 5


@pytest.fixture(scope="module")
def site(ckpt, synth_datalist):
    c = load_checkpoint(ckpt)
    return c, read_samples(synth_datalist, c.config["data"], c.classes)


def test_statistics_are_those_of_the_site_and_nothing_else_changes(site):
    c, records = site
    stats = batchnorm_statistics(c, records, torch.device("cpu"), batch_size=len(records))  # one batch: exact
    model = model_from_checkpoint(c).eval()
    first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    first[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    batch = collate([build_dataset(c.config, records, False)[i] for i in range(len(records))])
    with torch.no_grad():
        model(batch["image"])
    x = seen[0].transpose(0, 1).reshape(seen[0].shape[1], -1).double()
    np.testing.assert_allclose(stats[f"{first[0]}.running_mean"].double(), x.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[f"{first[0]}.running_var"].double(), x.var(1, unbiased=True), rtol=1e-3, atol=1e-5)
    # the site's statistics differ from the training ones, and only the buffers move
    assert not torch.allclose(stats[f"{first[0]}.running_mean"], c.weights[f"{first[0]}.running_mean"])
    adapted = adapted_checkpoint(c, stats)
    changed = {k for k in c.weights if not torch.equal(c.weights[k], adapted.weights[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert set(stats) == {k for k in c.weights if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_labels_are_not_read(site):
    c, records = site
    a = batchnorm_statistics(c, records, torch.device("cpu"))
    flipped = [{**r, "label": 1 - r["label"] if isinstance(r["label"], int) else r["label"]} for r in records]
    b = batchnorm_statistics(c, flipped, torch.device("cpu"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refusals(site):
    c, records = site
    with pytest.raises(ValueError, match="at least 2 images"):
        batchnorm_statistics(c, records[:1], torch.device("cpu"))
    with pytest.raises(KeyError, match="does not have"):
        adapted_checkpoint(c, {"nope.running_mean": torch.zeros(1)})


# --- breastai adapt: the command, its record and its refusals ---------------------------------------------------


def _adapt_cli(argv: list[str]) -> int:
    from breastai.cli import main

    return main(["adapt", *argv])


@pytest.fixture(scope="module")
def new_site(synth_datalist, tmp_path_factory):
    """The synthetic images as another scanner shows them (gamma 0.5: brighter mid-greys, which the
    percentile normalisation does not undo), in an unlabeled datalist (no label column at all)."""
    from PIL import Image

    from conftest import synth_rows, write_rows

    out = tmp_path_factory.mktemp("site")
    rows = synth_rows(synth_datalist)
    for r in rows:
        img = np.asarray(Image.open(r["image"]).convert("L"), dtype=np.float64) / 255.0
        r["image"] = str(out / Path(r["image"]).name)
        Image.fromarray((255 * img ** 0.5).round().astype(np.uint8)).save(r["image"])
        del r["label"]
    return write_rows(out / "site.csv", rows), rows


@pytest.fixture(scope="module")
def adapted(ckpt, new_site, tmp_path_factory):
    """``breastai adapt`` of the tiny checkpoint on ``new_site``: (path, printed summary)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("adapted") / "local.pt"
    buf = io.StringIO()
    # the detector's refit on a site this small (32 images) is allowed here to test it; by default
    # it needs MIN_DETECTOR_IMAGES (see test_too_few_images_for_the_detector_leave_none)
    with contextlib.redirect_stdout(buf), pytest.MonkeyPatch.context() as mp:
        mp.setattr("breastai.engine.adapt.MIN_DETECTOR_IMAGES", 16)
        assert _adapt_cli(["--checkpoint", str(ckpt), "--data", str(new_site[0]), "--out", str(out),
                           "--device", "cpu", "--threads", "1"]) == 0
    return out, buf.getvalue()


def test_adapt_writes_a_checkpoint_that_records_what_it_did(ckpt, new_site, adapted):
    from breastai.core.files import file_sha256
    from breastai.data.provenance import part_digests
    from breastai.models.adaptation import batchnorm_layers, is_batchnorm_buffer, learnt_weights_digest
    from breastai.models.checkpoint import Checkpoint, weights_digest

    path, printed = adapted
    src, new = load_checkpoint(ckpt), load_checkpoint(path)  # intact: its own integrity digest matches
    state = torch.load(path, weights_only=True)
    assert Checkpoint.from_state(state).adaptation[0] == new.adaptation[0]
    assert src.adaptation is None and len(new.adaptation) == 1 and new.recalibration is None
    rec = new.adaptation[0]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model_from_checkpoint(src).modules())
    assert rec.method == "adabn" and rec.n == len(new_site[1]) == 32 and rec.layers == n_bn == len(batchnorm_layers(src.weights))
    records = read_samples(new_site[0], src.config["data"], src.classes, require_label=False)
    assert rec.image_digests == part_digests(records) and len(rec.image_digests) == 32
    assert rec.source_checkpoint == file_sha256(ckpt)
    assert 0.0 <= rec.ood_flagged_before <= 1.0 and 0.0 <= rec.ood_flagged_after <= 1.0
    # no learnt weight moved; every batch-norm mean and variance did
    assert rec.learnt_weights_digest == learnt_weights_digest(src.weights) == learnt_weights_digest(new.weights)
    assert weights_digest(new) != weights_digest(src)
    changed = {k for k in src.weights if not torch.equal(src.weights[k], new.weights[k])}
    assert {k for k in src.weights if k.endswith(("running_mean", "running_var"))} <= changed
    assert all(is_batchnorm_buffer(k) for k in changed)
    # calibration and threshold are the source's; the detector is refitted on the local images (half, half)
    assert (new.temperature, new.logit_offset, new.threshold) == (src.temperature, src.logit_offset, src.threshold)
    assert (new.ood.layers, new.ood.quantile, new.ood.margin) == (src.ood.layers, src.ood.quantile, src.ood.margin)
    assert (new.ood.n_fit, new.ood.n_val) == (16, 16) and new.ood.threshold != src.ood.threshold
    assert rec.ood_flagged_after <= 0.1  # its own images: at most the quantile's share, and the margin on top
    assert f"{n_bn} layers re-estimated on 32 local images" in printed and str(path) in printed
    assert f"the source's flags {rec.ood_flagged_before:.0%} of these images" in printed
    assert f"refitted on them, it flags {rec.ood_flagged_after:.0%}" in printed and "breastai calibrate" in printed


def test_predict_with_the_adapted_checkpoint_scores_otherwise(ckpt, new_site, adapted):
    from breastai.inference.predictor import Predictor

    before = Predictor.from_checkpoint(ckpt, device="cpu").predict(new_site[0])
    after = Predictor.from_checkpoint(adapted[0], device="cpu").predict(new_site[0])
    p0, p1 = (np.array([r["probability"] for r in recs]) for recs in (before, after))
    assert len(p1) == 32 and all(r["error"] is None for r in after) and np.isfinite(p1).all()
    assert np.abs(p1 - p0).max() > 1e-3


def test_run_records_name_the_adaptation(adapted, new_site, synth_datalist, tmp_path):
    """predict's run record and evaluate's metrics say the statistics were adapted, and on which images."""
    from breastai.engine.evaluate import evaluate_checkpoint
    from breastai.inference.writers import run_predict
    from conftest import synth_rows, write_rows

    rec = load_checkpoint(adapted[0]).adaptation[-1]
    _, run = run_predict(adapted[0], [str(new_site[0])], tmp_path / "pred", saliency="none", device="cpu")
    assert run["adaptation"]["n"] == rec.n == 32 and "image_digests" not in run["adaptation"]
    labels = [r["label"] for r in synth_rows(synth_datalist)]
    labelled = write_rows(tmp_path / "labelled.csv", [{**r, "label": y} for r, y in zip(new_site[1], labels)])
    report = evaluate_checkpoint(adapted[0], labelled, tmp_path / "ev", device="cpu", n_boot=10)
    assert report["adaptation"]["source_checkpoint"] == rec.source_checkpoint and report["n_seen_in_adaptation"] == 32


def test_calibrate_after_adapt_keeps_both_records(adapted, synth_datalist):
    from breastai.engine.recalibrate import recalibrate_checkpoint
    from breastai.models.checkpoint import weights_digest

    out = adapted[0].parent / "local_cal.pt"
    rec = recalibrate_checkpoint(adapted[0], synth_datalist, out, device="cpu")
    a, c = load_checkpoint(adapted[0]), load_checkpoint(out)
    assert [r.source_checkpoint for r in c.adaptation] == [r.source_checkpoint for r in a.adaptation]
    assert c.adaptation[0] == a.adaptation[0] and c.recalibration == [rec]
    assert rec.weights_digest == weights_digest(a) == weights_digest(c)  # the adapted statistics stay


def test_unlabeled_datalists_only_where_no_label_is_read(ckpt, new_site):
    from breastai.data.datalist import DatalistError

    c = load_checkpoint(ckpt)
    with pytest.raises(DatalistError, match="empty 'label'"):
        read_samples(new_site[0], c.config["data"], c.classes)  # training and calibrate still need labels
    assert len(read_samples(new_site[0], c.config["data"], c.classes, require_label=False)) == 32


def _refused(argv: list[str], capsys) -> str:
    assert _adapt_cli(argv) == 2
    return capsys.readouterr().err


def test_too_few_images_for_the_detector_leave_none(ckpt, new_site, tmp_path, capsys):
    """32 images adapt the statistics but are too few to refit the detector: the adapted checkpoint has
    none (a loose one would call a mammogram ultrasound), and the command says so."""
    from breastai.engine.adapt import MIN_DETECTOR_IMAGES

    assert len(new_site[1]) < MIN_DETECTOR_IMAGES
    out = tmp_path / "few.pt"
    assert _adapt_cli(["--checkpoint", str(ckpt), "--data", str(new_site[0]), "--out", str(out), "--device", "cpu"]) == 0
    new = load_checkpoint(out)
    assert load_checkpoint(ckpt).ood is not None and new.ood is None
    rec = new.adaptation[-1]
    assert rec.ood_flagged_before is not None and rec.ood_flagged_after is None
    assert "so the adapted checkpoint has none" in capsys.readouterr().out


def test_refusals_of_the_command(ckpt, new_site, tmp_path, capsys, monkeypatch):
    from breastai.models.checkpoint import ModelArgs
    from breastai.models.checkpoint_io import save_checkpoint
    from conftest import write_rows

    def args(src: Path, dl: Path, out: Path) -> list[str]:
        return ["--checkpoint", str(src), "--data", str(dl), "--out", str(out), "--device", "cpu"]

    data, rows = new_site
    c = load_checkpoint(ckpt)
    err = _refused(args(ckpt, data, ckpt), capsys)
    assert "is the source checkpoint" in err
    ens = save_checkpoint(tmp_path / "ens.pt", dataclasses.replace(
        c, model=ModelArgs("ensemble"), weights={}, members=[c, c], member_weights=[0.5, 0.5], combine="mean"))
    # an ensemble: each member adapted with its own preset, the combination kept
    monkeypatch.setattr("breastai.engine.adapt.MIN_DETECTOR_IMAGES", 16)  # each member's detector refitted too
    from breastai.models.adaptation import batchnorm_layers

    assert _adapt_cli(args(ens, data, tmp_path / "ens_local.pt")) == 0
    e0, e1 = load_checkpoint(ens), load_checkpoint(tmp_path / "ens_local.pt")
    assert (e1.member_weights, e1.combine) == (e0.member_weights, e0.combine)
    for m0, m1 in zip(e0.members, e1.members):
        moved = [k for k in m0.weights if k.endswith("running_mean") and not torch.equal(m0.weights[k], m1.weights[k])]
        assert moved and m1.ood is not None and m1.ood.n_fit == 16
    assert e1.adaptation[-1].layers == 2 * len(batchnorm_layers(c.weights)) and e1.adaptation[-1].ood_flagged_after is None
    plain = dataclasses.replace(c, weights={k: v for k, v in c.weights.items() if "running" not in k})
    no_bn = save_checkpoint(tmp_path / "ens_nobn.pt", dataclasses.replace(
        c, model=ModelArgs("ensemble"), weights={}, members=[plain, plain], member_weights=[0.5, 0.5], combine="mean"))
    err = _refused(args(no_bn, data, tmp_path / "o.pt"), capsys)
    assert "no member of this ensemble has a batch-norm layer" in err
    few = write_rows(tmp_path / "few.csv", rows[:19])
    err = _refused(args(ckpt, few, tmp_path / "o.pt"), capsys)
    assert "19 image(s)" in err and "at least 20" in err
    crop = save_checkpoint(tmp_path / "crop.pt", dataclasses.replace(
        c, config={**c.config, "preprocess": {**c.config["preprocess"], "mode": "crop"}}))
    holes = write_rows(tmp_path / "holes.csv", [{**r, "mask": "" if i in (3, 7) else r["mask"]} for i, r in enumerate(rows)])
    err = _refused(args(crop, holes, tmp_path / "o.pt"), capsys)
    assert "crops the lesion" in err and "2 of 32 have none" in err
    assert f"{holes}, row 5 (case_id {rows[3]['case_id']})" in err and f"row 9 (case_id {rows[7]['case_id']})" in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    # an unreadable image is named and left out, the others adapt the model (a batch goes on past one bad file)
    broken = write_rows(tmp_path / "broken.csv", [*rows[:24], {**rows[24], "image": str(bad)}])
    capsys.readouterr()
    assert _adapt_cli(args(ckpt, broken, tmp_path / "o.pt")) == 0
    printed = capsys.readouterr().out
    rec = load_checkpoint(tmp_path / "o.pt").adaptation[-1]
    assert rec.n == 24 and len(rec.skipped) == 1 and f"{broken}, row 26 (case_id {rows[24]['case_id']})" in rec.skipped[0]
    assert "1 row(s) could not be read" in printed and rec.skipped[0] in printed
    # with too few readable images left, nothing is written
    err = _refused(args(ckpt, write_rows(tmp_path / "broken20.csv", [*rows[:19], {**rows[24], "image": str(bad)}]),
                        tmp_path / "o20.pt"), capsys)
    assert "19 image(s) readable (1 unreadable, skipped)" in err and not (tmp_path / "o20.pt").exists()


def test_a_model_without_batch_norm_is_refused(site):
    from breastai.engine.adapt import check_adaptable
    from breastai.models.checkpoint import CheckpointError

    c, _ = site
    plain = dataclasses.replace(c, weights={k: v for k, v in c.weights.items() if "running" not in k})
    with pytest.raises(CheckpointError, match="no batch-norm layer with running statistics"):
        check_adaptable(plain, "x.pt")


def test_a_segmenter_adapts_on_raw_images_without_masks_or_labels(seg_ckpt, tmp_path):
    """A segmenter reads whole images: a site's raw images are all it needs (no mask, no label)."""
    from PIL import Image

    from breastai.models.adaptation import learnt_weights_digest
    from breastai.models.outliner import Outliner
    from conftest import blob_datalist, synth_rows, write_rows

    src = tmp_path / "src"
    src.mkdir()
    rows = synth_rows(blob_datalist(src, 24))
    for r in rows:  # another scanner: brighter and lower in contrast
        img = np.asarray(Image.open(r["image"]), dtype=np.float32)
        Image.fromarray((80 + 0.5 * img).astype(np.uint8)).save(r["image"])
    raw = write_rows(tmp_path / "raw.csv", [{"case_id": r["case_id"], "image": r["image"]} for r in rows])
    out = tmp_path / "seg_local.pt"
    assert _adapt_cli(["--checkpoint", str(seg_ckpt), "--data", str(raw), "--out", str(out), "--device", "cpu"]) == 0
    before, after = load_checkpoint(seg_ckpt), load_checkpoint(out)
    assert learnt_weights_digest(after.weights) == learnt_weights_digest(before.weights)
    moved = [k for k in before.weights if k.endswith("running_mean") and not torch.equal(before.weights[k], after.weights[k])]
    assert moved and after.adaptation[-1].n == 24 and after.adaptation[-1].ood_flagged_after is None
    assert after.adaptation[-1].task == "segmentation"
    image, meta = Outliner.from_checkpoint(out).read(rows[1]["image"])
    assert Outliner.from_checkpoint(out).outline(image, meta).presence >= 0.0  # the adapted segmenter runs


def test_a_pipeline_adapts_its_classifier_and_its_segmenter(ckpt, seg_ckpt, new_site, tmp_path):
    from breastai.engine.bundle import bundle_pipeline
    from breastai.models.checkpoint_io import save_checkpoint

    pipe = save_checkpoint(tmp_path / "pipe.pt", bundle_pipeline(load_checkpoint(ckpt), load_checkpoint(seg_ckpt)))
    out = tmp_path / "pipe_local.pt"
    assert _adapt_cli(["--checkpoint", str(pipe), "--data", str(new_site[0]), "--out", str(out), "--device", "cpu"]) == 0
    before, after = load_checkpoint(pipe), load_checkpoint(out)  # the integrity check covers the nested segmenter

    def moved(a, b):
        return [k for k in a.weights if k.endswith("running_mean") and not torch.equal(a.weights[k], b.weights[k])]

    assert moved(before, after) and moved(before.segmenter, after.segmenter)


def _blob_site(tmp_path: Path, n: int = 28) -> tuple[list[dict], Path]:
    """A site's raw images (discs on noise, some with two), in a datalist with no mask and no label."""
    from conftest import blob_datalist, synth_rows, write_rows

    src = tmp_path / "src"
    src.mkdir()
    rows = synth_rows(blob_datalist(src, n, pairs=True))
    return rows, write_rows(tmp_path / "raw.csv", [{"case_id": r["case_id"], "image": r["image"]} for r in rows])


def _crop_and_whole_pipeline(ckpt: Path, seg_ckpt: Path, tmp_path: Path):
    """A pipeline of an ensemble (a lesion-crop member and a whole-image one) with the test segmenter."""
    from breastai.engine.bundle import bundle_pipeline
    from breastai.engine.ensemble import ensemble_state
    from breastai.models.checkpoint_io import save_checkpoint

    whole = load_checkpoint(ckpt)  # a whole-image model; the same network on the lesion's crop reads the mask
    crop = dataclasses.replace(whole, config={**whole.config, "preprocess": {**whole.config["preprocess"], "mode": "crop"}})
    ens = ensemble_state([crop, whole], np.ones(2), 0.0, "mean", 0.5, {}, ["crop", "whole"])
    return save_checkpoint(tmp_path / "pipe.pt", bundle_pipeline(ens, load_checkpoint(seg_ckpt))), crop, whole


def test_a_pipeline_adapts_on_raw_images_its_segmenter_first(ckpt, seg_ckpt, tmp_path, capsys):
    """A site with no tracing: the segmenter adapts on the raw images, then the member that reads the
    lesion on the lesions the *adapted* segmenter outlines, the whole-image member on the whole images;
    the segmenter of a pipeline whose classifier is an ensemble is adapted too."""
    from breastai.engine.adapt import batchnorm_statistics
    from breastai.engine.auto_outline import lesion_records
    from breastai.models.outliner import Outliner
    from breastai.engine.scoring import row_names
    from breastai.models.checkpoint import reads_mask

    rows, raw = _blob_site(tmp_path)
    pipe_path, crop, whole = _crop_and_whole_pipeline(ckpt, seg_ckpt, tmp_path)
    pipe = load_checkpoint(pipe_path)
    assert reads_mask(crop) and not reads_mask(whole)
    out = tmp_path / "local.pt"
    assert _adapt_cli(["--checkpoint", str(pipe_path), "--data", str(raw), "--out", str(out),
                       "--device", "cpu"]) == 0
    assert "finds a lesion in" in capsys.readouterr().out  # the mix is counted by the segmenter as it was
    after, cpu = load_checkpoint(out), torch.device("cpu")
    records = read_samples(raw, pipe.config["data"], pipe.classes, require_label=False)
    names = row_names(raw, records, {})

    def same(adapted, stats):
        return all(torch.allclose(adapted.weights[k], v, atol=1e-6) for k, v in stats.items())

    seg_stats = batchnorm_statistics(pipe.segmenter, records, cpu, 32, names)
    assert same(after.segmenter, seg_stats) and not same(pipe.segmenter, seg_stats)
    lesions, row_of, infos = lesion_records(records, [Outliner(after.segmenter, cpu)] * len(records), names, False)
    lesion_names = [names[i] for i in row_of]
    outlined, empty = sum(i["n_lesions"] for i in infos), sum(i["n_lesions"] == 0 for i in infos)
    assert outlined == len(lesions) >= 20 and empty <= 10  # 21 images with a disc, 7 of them with two; 7 empty
    assert all(isinstance(r["mask"], np.ndarray) and r["mask"].any() for r in lesions)
    assert same(after.members[0], batchnorm_statistics(crop, lesions, cpu, 32, lesion_names))
    assert same(after.members[1], batchnorm_statistics(whole, records, cpu, 32, names))
    assert after.adaptation[-1].n == 28 and pipe.adaptation is None


def test_segmenter_only_adapts_a_pipelines_segmenter_and_keeps_its_classifier(ckpt, seg_ckpt, tmp_path, capsys):
    """``--segmenter-only``: the bundled segmenter gets the site's statistics, every classifier weight and
    buffer (and its detector) stays the source's; a checkpoint that is no pipeline is refused, naming it."""
    from breastai.engine.adapt import batchnorm_statistics
    from breastai.engine.scoring import row_names

    rows, raw = _blob_site(tmp_path)
    pipe_path, _, _ = _crop_and_whole_pipeline(ckpt, seg_ckpt, tmp_path)
    pipe = load_checkpoint(pipe_path)
    out = tmp_path / "seg_only.pt"
    assert _adapt_cli(["--checkpoint", str(pipe_path), "--data", str(raw), "--out", str(out), "--device", "cpu",
                       "--segmenter-only"]) == 0
    after, cpu = load_checkpoint(out), torch.device("cpu")
    records = read_samples(raw, pipe.config["data"], pipe.classes, require_label=False)
    stats = batchnorm_statistics(pipe.segmenter, records, cpu, 32, row_names(raw, records, {}))
    assert all(torch.allclose(after.segmenter.weights[k], v, atol=1e-6) for k, v in stats.items())
    for m_before, m_after in zip(pipe.members, after.members):
        assert all(torch.equal(m_before.weights[k], m_after.weights[k]) for k in m_before.weights)
        assert (m_before.ood is None) == (m_after.ood is None)
    assert after.adaptation[-1].n == len(records) and after.adaptation[-1].task == "segmentation"
    assert "classifier kept as it was" in capsys.readouterr().out
    assert _adapt_cli(["--checkpoint", str(ckpt), "--data", str(raw), "--out", str(tmp_path / "x.pt"),
                       "--device", "cpu", "--segmenter-only"]) != 0
    assert "is not a pipeline" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_adapt_counts_where_the_source_segmenter_finds_a_lesion_and_warns_outside_the_band(
        ckpt, seg_ckpt, tmp_path, capsys, monkeypatch):
    """The share of images holding a lesion is counted by the segmenter as it was before adapting, recorded,
    printed, and warned about only outside the band where adapting helped."""
    import breastai.engine.adapt as adapt
    from breastai.engine.auto_outline import outline_row
    from breastai.models.outliner import Outliner

    rows, raw = _blob_site(tmp_path)
    pipe_path, _, _ = _crop_and_whole_pipeline(ckpt, seg_ckpt, tmp_path)
    pipe = load_checkpoint(pipe_path)
    outliner = Outliner(pipe.segmenter, torch.device("cpu"))
    records = read_samples(raw, pipe.config["data"], pipe.classes, require_label=False)
    found = np.mean([outline_row(r, outliner, r["case_id"])[1]["n_lesions"] > 0 for r in records])
    assert 0.5 < found < 1.0  # 21 of the 28 images hold a disc
    out = tmp_path / "a.pt"
    monkeypatch.setattr(adapt, "LESION_SHARE_BAND", (0.0, found - 0.1))
    assert _adapt_cli(["--checkpoint", str(pipe_path), "--data", str(raw), "--out", str(out), "--device", "cpu",
                       "--segmenter-only"]) == 0
    printed = capsys.readouterr()
    assert load_checkpoint(out).adaptation[-1].lesion_share == pytest.approx(found)
    assert f"finds a lesion in {found:.0%} of these images: OUTSIDE" in printed.out
    assert "add lesion-free images" in printed.out + printed.err
    monkeypatch.setattr(adapt, "LESION_SHARE_BAND", (found + 0.1, 1.0))
    assert _adapt_cli(["--checkpoint", str(seg_ckpt), "--data", str(raw), "--out", str(tmp_path / "b.pt"),
                       "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "add images with a lesion" in printed.out + printed.err
    monkeypatch.setattr(adapt, "LESION_SHARE_BAND", (0.0, 1.0))
    assert _adapt_cli(["--checkpoint", str(seg_ckpt), "--data", str(raw), "--out", str(tmp_path / "c.pt"),
                       "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert ": within" in printed.out and "warning: the segmenter" not in printed.out + printed.err
    assert load_checkpoint(tmp_path / "c.pt").adaptation[-1].lesion_share == pytest.approx(found)


def test_a_pipeline_skips_a_row_whose_own_mask_is_unreadable(ckpt, seg_ckpt, tmp_path, capsys):
    """A row with its own mask is read by the lesion-reading member (the segmenter does not outline it):
    a corrupt mask there is skipped and named, and the rest adapts."""
    from conftest import write_rows

    rows, _ = _blob_site(tmp_path)
    (tmp_path / "bad_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    data = write_rows(tmp_path / "mixed.csv", [{"case_id": r["case_id"], "image": r["image"], "mask": ""} for r in rows]
                      + [{"case_id": "badmask", "image": rows[1]["image"], "mask": str(tmp_path / "bad_mask.png")}])
    pipe_path, _, _ = _crop_and_whole_pipeline(ckpt, seg_ckpt, tmp_path)
    out = tmp_path / "local.pt"
    assert _adapt_cli(["--checkpoint", str(pipe_path), "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "skipped:" in printed.out + printed.err and "badmask" in printed.out + printed.err
    assert load_checkpoint(out).adaptation[-1].n == 28 and len(load_checkpoint(out).adaptation[-1].skipped) == 1
