"""The command line: help at every level, train.py equivalence, evaluate outputs, clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from breastai.cli import build_parser, main
from breastai.reporting.metrics import roc_auc

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_help_at_every_level(capsys):
    cmds = _commands()
    assert {"prepare", "train", "evaluate", "demo"} <= set(cmds)
    for argv in [[], *[[c] for c in cmds]]:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: breastai" in out


@pytest.fixture(scope="module")
def cli_run(synth_datalist, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    cfg = out / "tiny.yaml"
    cfg.write_text(
        "device: cpu\nmodel: {name: small_cnn, pretrained: false}\npreprocess: {size: 64, min_crop: 16}\n"
        "train: {epochs: 1, batch_size: 8}\nlog: {progress: false}\neval: {bootstrap: 200}\n"
    )
    return cfg, out


def test_train_py_is_breastai_train(cli_run, synth_datalist):
    cfg, out = cli_run
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(cfg), "--data", str(synth_datalist),
                        f"output_dir={out}", "run_name=viatrainpy"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "checkpoint:" in r.stdout and (out / "viatrainpy" / "best.pt").is_file()


def test_evaluate_writes_report(cli_run, synth_datalist, capsys):
    cfg, out = cli_run
    assert main(["train", "--config", str(cfg), "--data", str(synth_datalist), f"output_dir={out}", "run_name=ev"]) == 0
    rep_dir = out / "report"
    assert main(["evaluate", "--checkpoint", str(out / "ev" / "best.pt"), "--data", str(synth_datalist), "--out", str(rep_dir)]) == 0
    m = json.loads((rep_dir / "metrics.json").read_text())
    for k in ("auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "balanced_accuracy", "brier", "ece", "n"):
        assert k in m
    assert m["n"] == 32 and m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]
    rows = list(csv.DictReader(open(rep_dir / "predictions.csv")))
    y = np.array([r["label"] == "malignant" for r in rows], int)
    p = np.array([float(r["probability"]) for r in rows])
    assert m["auc"] == pytest.approx(roc_auc(y, p), abs=1e-6)
    # sensitivity at the checkpoint's stored threshold, recomputed from the CSV
    sens = np.mean(p[y == 1] >= m["threshold"])
    assert m["sensitivity"] == pytest.approx(sens)
    for png in ("roc.png", "calibration.png"):
        assert (rep_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The resume checkpoint beside it is refused (uncalibrated, threshold 0.5), and so is a file as --out.
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "ev" / "last.pt"), "--data", str(synth_datalist),
                 "--out", str(out / "r2")]) == 2
    assert "resume checkpoint" in capsys.readouterr().err and not (out / "r2").exists()
    (out / "afile").write_text("x")
    assert main(["evaluate", "--checkpoint", str(out / "ev" / "best.pt"), "--data", str(synth_datalist),
                 "--out", str(out / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_overrides_after_options_numeric_classes_and_model_names(tmp_path, capsys):
    from breastai.cli import build_parser
    from breastai.core.config import ConfigError, load_config

    p = build_parser()
    args, extra = p.parse_known_args(["train", "--config", "c.yaml", "run_name=cv", "--folds", "2", "eval.bootstrap=50"])
    assert extra == ["eval.bootstrap=50"]
    assert main(["train", "train.nope=1", "--folds", "2", "also.nope=2"]) == 2  # both reach the config check
    assert "unknown config key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "x.pt", "--data", "d.csv", "--out", "o", "stray=1"])
    assert load_config(None, ["data.classes=[0, 1]"])["data"]["classes"] == ["0", "1"]
    from breastai.models.registry import check_model_config

    with pytest.raises(ConfigError, match="model.name must be one of .*efficientnet_lite0"):
        check_model_config(load_config(None, ["model.name=foo"]))
    # A run refuses it before it reads any data.
    assert main(["train", "model.name=foo", f"data.datalist={tmp_path / 'missing.csv'}"]) == 2
    assert "model.name must be one of" in capsys.readouterr().err


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", "x.csv", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err
    assert main(["train", "train.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    bad = tmp_path / "dl.csv"
    bad.write_text("image,label\nmissing.png,benign\n")
    assert main(["train", "--data", str(bad)]) == 2
    assert "row 2" in capsys.readouterr().err


def test_unreadable_image_during_training_names_the_file(tmp_path, capsys):
    from PIL import Image

    for i in range(6):  # six different images: identical ones with two labels would be refused first
        ok = np.zeros((40, 40), np.uint8)
        ok[10:20, 10 + i:20 + i] = 200
        Image.fromarray(ok).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = ["image,label"] + [f"ok{i}.png,{'benign' if i % 2 else 'malignant'}" for i in range(6)] + ["broken.png,benign"]
    (tmp_path / "dl.csv").write_text("\n".join(rows) + "\n")
    assert main(["train", "--data", str(tmp_path / "dl.csv"), f"output_dir={tmp_path}", "model.name=small_cnn",
                 "model.pretrained=false", "preprocess.size=32", "train.epochs=1", "data.val_fraction=0.34"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "applying transform" not in err
