"""End-to-end training on a small synthetic set: artefacts, TensorBoard tags, resume, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from breastai.models.checkpoint import Checkpoint, CheckpointError, ModelArgs, model_from_checkpoint
from breastai.models.checkpoint_io import load_checkpoint
from breastai.engine.run import main as train_main
from conftest import synth_rows, write_rows



def _tb_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert files, "a TensorBoard event file is written"
    tags: set[str] = set()
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for kind in ("scalars", "images"):
            tags |= set(acc.Tags()[kind])
        tags |= {t for t in acc.Tags().get("tensors", [])}
    return tags


@pytest.fixture(scope="module")
def trained(synth_datalist, tmp_path_factory):
    from conftest import _tiny_config as tiny_config

    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(synth_datalist, out, "preprocess.mode=crop")
    res = train_main(cfg)
    return cfg, res, Path(res["run_dir"])


def test_two_epoch_run_writes_everything(trained):
    cfg, res, run = trained
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["preprocess"]["mode"] == "crop"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] in (0, 1)
    assert len(summary["epoch_seconds"]) == 2 and all(t > 0 for t in summary["epoch_seconds"])
    assert not list(run.glob(".*.tmp")), "no temporary checkpoint left behind"
    tags = _tb_tags(run)
    for t in ("loss/train", "loss/val", "auc/val", "lr", "inputs/train_augmented", "best/val_inputs_scored",
              "best/roc", "best/confusion", "best/reliability", "best/val_saliency"):
        assert t in tags, f"TensorBoard tag {t} missing (have {sorted(tags)})"


def test_logged_learning_rate_is_the_epochs_own(trained):
    """Epoch 0 is the linear warm-up (its first step: lr / steps); epoch 1 starts the cosine at lr."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, res, run = trained
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = {e.step: e.value for e in acc.Scalars("lr")}
    assert cfg["train"]["warmup_epochs"] == 1
    assert lrs[1] == pytest.approx(cfg["train"]["lr"], rel=1e-6)
    assert 0 < lrs[0] < lrs[1] / 2


def test_checkpoint_is_self_contained(trained):
    cfg, res, run = trained
    state = torch.load(run / "best.pt", weights_only=True)
    for key in ("model", "weights", "config", "classes", "preprocess", "threshold", "temperature", "metrics", "versions"):
        assert key in state
    assert state["classes"] == ["benign", "malignant"]
    assert 0.0 <= state["threshold"] <= 1.0 and state["temperature"] > 0
    model = model_from_checkpoint(Checkpoint.from_state(state))
    x = torch.rand(1, 1, 64, 64)
    assert torch.isfinite(model(x)).all()
    assert "val_auc" in state["metrics"] and "val_ece" in state["metrics"]


@pytest.mark.parametrize("ema", [0.0, 0.6])
def test_resume_continues_from_saved_epoch(synth_datalist, tmp_path, tiny_config, monkeypatch, ema):
    import breastai.engine.trainer as tr

    straight = train_main(tiny_config(synth_datalist, tmp_path / "straight", f"train.ema={ema}"))

    real = tr.train_one_epoch

    def crash_in_second_epoch(*a, **k):
        if k["epoch"] == 1:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    cfg = tiny_config(synth_datalist, tmp_path / "crashed", f"train.ema={ema}")
    monkeypatch.setattr(tr, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_main(cfg)
    run = Path(cfg["output_dir"]) / "t"
    assert load_checkpoint(run / "last.pt", resume=True).epoch == 0
    monkeypatch.setattr(tr, "train_one_epoch", real)
    again = train_main(cfg, resume=True)
    assert again["run_dir"] == str(run)
    assert load_checkpoint(run / "last.pt", resume=True).epoch == 1
    # Per-epoch seeding makes the resumed run end exactly where the uninterrupted one did.
    assert straight["last_weights_digest"] == again["last_weights_digest"]
    a, b = (load_checkpoint(Path(r["run_dir"]) / "best.pt").weights for r in (straight, again))
    assert all(torch.equal(a[k], b[k]) for k in a), "the selected (with train.ema: averaged) weights match too"


def test_weight_average_is_validated_and_saved(synth_datalist, tmp_path, tiny_config):
    res = train_main(tiny_config(synth_datalist, tmp_path, "train.epochs=1", "train.ema=0.6"))
    run = Path(res["run_dir"])
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt", resume=True)
    averaged = {k[len("module."):]: v for k, v in last.ema.items() if k.startswith("module.")}
    assert averaged.keys() == best.weights.keys()
    assert all(torch.equal(best.weights[k], averaged[k]) for k in averaged), "best.pt holds the averaged weights"
    moved = [k for k, v in last.weights.items() if v.is_floating_point() and not torch.equal(v, averaged[k])]
    assert moved, "the averaged weights differ from the last raw weights"


def test_weight_ema_formula():
    from breastai.engine.loops import weight_ema

    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = weight_ema(net, 0.75)
    w0 = net[0].weight.detach().clone()
    ema.update_parameters(net)  # first update copies
    with torch.no_grad():
        net[0].weight += 1.0
    net.train()(torch.randn(4, 2))  # moves the BatchNorm statistics
    ema.update_parameters(net)
    assert torch.allclose(ema.module[0].weight, 0.75 * w0 + 0.25 * (w0 + 1.0))
    assert torch.allclose(ema.module[1].running_mean, 0.25 * net[1].running_mean), "BatchNorm statistics are averaged too"
    assert weight_ema(net, 0.0) is None
    with pytest.raises(ValueError, match="train.ema"):
        weight_ema(net, 1.0)


def test_fresh_run_never_overwrites(synth_datalist, tmp_path, tiny_config):
    cfg = tiny_config(synth_datalist, tmp_path, "train.epochs=1")
    a = train_main(cfg)
    b = train_main(cfg)
    assert a["run_dir"] != b["run_dir"] and Path(b["run_dir"]).name == "t-2"


def test_cross_validation_writes_summary(synth_datalist, tmp_path, tiny_config):
    cfg = tiny_config(synth_datalist, tmp_path, "train.epochs=1", "train.folds=2", "data.val_fraction=0.25")
    res = train_main(cfg)
    run = Path(res["run_dir"])
    s = json.loads((run / "cv_summary.json").read_text())
    assert len(s["folds"]) == 2 and "auc" in s["mean_sd"]
    assert {"mean", "sd"} <= set(s["mean_sd"]["auc"])
    ids = [p["case_id"] for p in s["oof_predictions"]]
    assert len(ids) == len(set(ids)) == 32, "every case predicted exactly once out of fold"
    assert (run / "oof_predictions.csv").is_file()
    # The synthetic datalist's groups (two views of a lesion) are its exams: the out-of-fold rows are
    # combined per exam by the default rule, and a level rule can be fitted on them.
    import csv

    from breastai.engine.level_scores import fit_rule_on
    from breastai.reporting.metrics import roc_auc

    oof = list(csv.DictReader(open(run / "oof_predictions.csv")))
    exams = {r["exam"] for r in oof}
    assert s["levels"]["exam"]["n"] == len(exams) < 32 and "breast" not in s["levels"]  # no laterality column
    by_exam = {}
    for r in oof:
        by_exam.setdefault(r["exam"], []).append(float(r["calibrated_logit"]))
    y = [int(any(int(r["label"]) for r in oof if r["exam"] == e)) for e in by_exam]
    assert s["levels"]["exam"]["auc"] == pytest.approx(roc_auc(y, [max(v) for v in by_exam.values()]))
    rule = fit_rule_on(run / "oof_predictions.csv", "exam", score=None)
    assert rule.n_fit == len(exams) and rule.source.startswith("fitted on")
    # --resume after the end reuses the finished folds instead of training them again.
    again = train_main(cfg, resume=True)
    assert again["run_dir"] == res["run_dir"]
    assert [f["auc"] for f in again["folds"]] == [f["auc"] for f in s["folds"]]
    # A resume that would split the cases otherwise is refused, by the config or by the folds' own cases.
    from breastai.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"seed: 0 -> 3"):
        train_main({**cfg, "seed": 3}, resume=True)
    done = json.loads((run / "fold0" / "done").read_text())
    done["test_case_ids"] = done["test_case_ids"][::-1]
    (run / "fold0" / "done").write_text(json.dumps(done))
    with pytest.raises(ValueError, match="finished on other held-out cases"):
        train_main(cfg, resume=True)


def test_resume_refuses_other_settings_keeps_run_name_and_an_early_stop(synth_datalist, tmp_path, tiny_config):
    import yaml

    from breastai.core.config import ConfigError

    cfg = tiny_config(synth_datalist, tmp_path, "train.epochs=3", "train.lr=0", "train.early_stop_patience=1")
    first = train_main(cfg)
    second = train_main(cfg)  # the folder t exists: this run goes to t-2, and its config says so
    assert yaml.safe_load((Path(second["run_dir"]) / "config.yaml").read_text())["run_name"] == "t-2"
    run = Path(first["run_dir"])
    stopped_at = load_checkpoint(run / "last.pt", resume=True).epoch
    assert stopped_at < 2, "lr 0: no AUC gain after the first epoch, so patience 1 stops it early"
    with pytest.raises(ConfigError, match=r"preprocess.size: 64 -> 96.*only train.epochs"):
        train_main({**cfg, "preprocess": {**cfg["preprocess"], "size": 96}}, resume=True)
    again = train_main({**cfg, "train": {**cfg["train"], "epochs": 4}}, resume=True)  # epochs may change
    assert again["run_dir"] == str(run)
    assert load_checkpoint(run / "last.pt", resume=True).epoch == stopped_at, "an early stop is not undone"
    assert len(again["epoch_seconds"]) == stopped_at + 1, "the resumed summary still times the epochs run before"


def test_broken_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable breastai checkpoint"):
        load_checkpoint(bad)
    torch.save({"something": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a breastai checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_oof_csv_keeps_the_ranking_of_confident_predictions(tmp_path):
    """Probabilities within 1e-6 of 0 or 1 are common for a good model; rounded to 6 decimals they
    tie and the AUC recomputed from the CSV drifts from the summary's (seen on BUSI: 0.979 vs 0.982)."""
    import csv

    from breastai.reporting.metrics import roc_auc
    from breastai.engine.cv import cv_summary

    probs = [1e-9, 3e-8, 2e-7, 4e-9, 1 - 1e-9, 1 - 2e-8, 5e-8, 1 - 3e-7]
    labels = [0, 1, 0, 0, 1, 1, 0, 0]
    oof = [{"case_id": f"c{i}", "fold": i % 2, "label": y, "logit": 0.0, "probability": p}
           for i, (y, p) in enumerate(zip(labels, probs))]
    s = cv_summary([{"auc": 1.0}, {"auc": 0.5}], oof, {}, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "oof_predictions.csv")))
    assert [float(r["probability"]) for r in rows] == probs
    assert roc_auc([int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]) == s["pooled_oof_auc"]


def test_auc_ranks_calibrated_log_odds_not_saturated_probabilities(tmp_path):
    """A sharp temperature (T = 0.06 was fitted on a separable BUSI validation part) rounds
    probabilities to exactly 1.0 in float64; ranked by them, a negative ties with the positives."""
    import csv

    from breastai.reporting.metrics import roc_auc
    from breastai.engine.cv import cv_summary
    from breastai.engine.scoring import score_part

    logit = np.array([-3.0, 2.5, 3.0, 4.0, 5.0])
    label = np.array([0, 1, 0, 1, 1])
    ckpt = Checkpoint(ModelArgs("small_cnn"), weights={}, config={}, classes=["benign", "malignant"], threshold=0.5,
                      temperature=0.05, logit_offset=0.0)
    pred = {"logit": logit, "label": label, "case_id": np.array([f"c{i}" for i in range(5)])}
    probs, rep, rows = score_part(pred, ckpt, n_boot=50)
    assert np.all(probs[1:] == 1.0) and roc_auc(label, probs) == pytest.approx(4.5 / 6)
    assert rep["auc"] == pytest.approx(5 / 6)  # the negative at 3.0 outranks only the positive at 2.5
    s = cv_summary([rep], [{**r, "fold": 0} for r in rows], {}, tmp_path)
    assert s["pooled_oof_auc"] == pytest.approx(5 / 6)
    on_disk = list(csv.DictReader(open(tmp_path / "oof_predictions.csv")))
    assert [float(r["calibrated_logit"]) for r in on_disk] == pytest.approx(list(logit / 0.05))


def test_a_one_class_test_part_is_refused_before_training(synth_datalist, tmp_path, tiny_config, monkeypatch):
    import breastai.engine.trainer as tr

    rows = synth_rows(synth_datalist)
    groups = sorted({r["group"] for r in rows if r["label"] == "benign"})[:2]
    for r in rows:
        r["split"] = "test" if r["group"] in groups else ""
    dl = write_rows(tmp_path / "one_class_test.csv", rows)
    monkeypatch.setattr(tr, "train_one_epoch", lambda *a, **k: pytest.fail("trained before checking the test part"))
    with pytest.raises(ValueError, match=r"the test part holds only \['benign'\]"):
        train_main(tiny_config(dl, tmp_path / "runs"))


def test_dataloader_workers_draw_their_own_augmentations():
    import copy

    from breastai.core.config import DEFAULTS
    from breastai.engine.loaders import make_loader, build_dataset

    cfg = copy.deepcopy(DEFAULTS)
    cfg["preprocess"].update(mode="whole", size=32)
    cfg["train"]["batch_size"] = 1
    img = np.random.default_rng(0).normal(100, 30, (64, 64)).astype(np.float32)
    recs = [{"image": img, "mask": None, "label": "benign", "case_id": f"c{i}"} for i in range(8)]
    ds = build_dataset(cfg, recs, train=True)
    views = {}
    for workers in (0, 1, 2):
        cfg["data"]["num_workers"] = workers
        ds.transform.set_random_state(seed=123)
        views[workers] = [b["image"][0].numpy().tobytes() for b in make_loader(ds, cfg, True, None, 0)]
    assert len(set(views[2])) == 8, "two workers repeated each other's flips and affines"
    assert views[1] == views[0], "one worker draws exactly what the main process draws"


def test_loader_seed_differs_per_rank_and_keeps_rank_0(monkeypatch):
    """The loader's generator seeds the workers' augmentation: one per rank, rank 0 as before."""
    import breastai.engine.loaders as tr
    from breastai.core.config import load_config

    cfg = load_config(None, ["seed=3"])
    seeds = []
    for r in (0, 1):
        monkeypatch.setattr(tr.dist, "rank", lambda r=r: r)
        seeds.append(tr.make_loader(list(range(10)), cfg, True, None, 2).generator.initial_seed())
    assert seeds[0] == 3 * 1000 + 2 and seeds[1] != seeds[0]


def test_empty_training_part_is_refused_before_training(synth_datalist, tiny_config, tmp_path):
    from breastai.data.datalist import read_datalist
    from breastai.engine.trainer import fit

    cfg = tiny_config(synth_datalist, tmp_path)
    records = read_datalist(synth_datalist, classes=cfg["data"]["classes"])
    split = {"train": np.array([], dtype=int), "val": np.arange(len(records)), "test": np.array([], dtype=int)}
    with pytest.raises(ValueError, match="the training part holds only"):
        fit(cfg, records, split, tmp_path / "run")


def test_a_refused_run_leaves_no_folder_and_the_next_keeps_its_name(synth_datalist, tiny_config, tmp_path):
    dl = write_rows(tmp_path / "benign_only.csv", [r for r in synth_rows(synth_datalist) if r["label"] == "benign"])
    for extra in ((), ("train.folds=2",)):
        with pytest.raises(ValueError, match=r"part holds only \['benign'\]"):
            train_main(tiny_config(dl, tmp_path / "runs", *extra))
        assert not (tmp_path / "runs" / "t").exists(), "a run refused on its data leaves no folder"
    good = train_main(tiny_config(synth_datalist, tmp_path / "runs", "train.epochs=1"))
    assert Path(good["run_dir"]).name == "t", "and the next run is not pushed to t-2"


def test_a_run_failing_before_its_first_epoch_removes_only_its_own_folder(synth_datalist, tiny_config, tmp_path,
                                                                          monkeypatch):
    import breastai.engine.trainer as tr

    cfg = tiny_config(synth_datalist, tmp_path, "train.epochs=1")
    first = Path(train_main(cfg)["run_dir"])
    kept = sorted(p.name for p in first.iterdir())

    def unreadable(*a, **k):
        raise RuntimeError("an image cannot be read")

    monkeypatch.setattr(tr, "build_dataset", unreadable)
    with pytest.raises(RuntimeError, match="cannot be read"):
        train_main(cfg)  # a fresh run: it made t-2, and takes it away again
    assert not (tmp_path / "t-2").exists()
    with pytest.raises(RuntimeError, match="cannot be read"):
        train_main(cfg, resume=True)  # a resumed run never removes the folder it continues
    assert sorted(p.name for p in first.iterdir()) == kept
