from pathlib import Path

import pytest
import torch
import yaml

from breastai.core.config import DEFAULTS, ConfigError, apply_overrides, dump_config, load_config


def test_defaults_without_file():
    cfg = load_config()
    assert cfg == {**DEFAULTS} or cfg["model"]["name"] == DEFAULTS["model"]["name"]
    assert cfg["preprocess"]["mode"] == "whole"


def test_yaml_then_overrides_win(tmp_path: Path):
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  lr: 3e-4\n  epochs: 5\npreprocess:\n  mode: crop\n")
    cfg = load_config(f, ["train.epochs=7", "data.classes=[a, b]"])
    assert cfg["train"]["lr"] == pytest.approx(3e-4)  # "3e-4" is a number, not YAML 1.1's string
    assert cfg["train"]["epochs"] == 7
    assert cfg["preprocess"]["mode"] == "crop"
    assert cfg["data"]["classes"] == ["a", "b"]
    assert cfg["run_name"] == "exp"
    assert cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]


def test_relative_datalist_resolves_against_config_folder(tmp_path: Path):
    (tmp_path / "dl.csv").write_text("image,label\n")
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  datalist: dl.csv\n")
    assert Path(load_config(f)["data"]["datalist"]) == (tmp_path / "dl.csv").resolve()


@pytest.mark.parametrize(
    "text,override,msg",
    [
        ("trian:\n  lr: 1\n", [], "unknown config key 'trian'"),
        ("", ["train.nope=1"], "unknown config key 'train.nope'"),
        ("", ["train.lr"], "not of the form key=value"),
        ("", ["preprocess.mode=sideways"], "preprocess.mode must be one of whole, crop, got 'sideways'"),
        ("", ["model.mask_init=blue"], "model.mask_init must be one of zero, grey"),
        ("", ["eval.calibration_targets=soft"], "eval.calibration_targets must be one of hard, platt"),
        ("", ["augment.coarse_outline=1.5"], r"augment.coarse_outline is a probability in \[0, 1\]"),
        ("- a\n", [], "top level must be a mapping"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, text, override, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text or "{}\n")
    with pytest.raises(ConfigError, match=msg):
        load_config(f, override)


def test_dump_roundtrip(tmp_path: Path):
    cfg = apply_overrides(load_config(), ["seed=3"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == cfg
    assert load_config(tmp_path / "c.yaml")["seed"] == 3


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "configs/ holds the shipped configurations"
    for f in files:
        load_config(f)


def test_fill_missing_adds_only_absent_keys_of_present_sections():
    from breastai.core.config import DEFAULTS, fill_missing

    saved = {"preprocess": {"mode": "crop", "margin": 0.5}, "data": {"reader_options": {"frame": 2}}, "seed": 7}
    out = fill_missing(saved)
    assert out["preprocess"]["margin"] == 0.5 and out["preprocess"]["min_crop_fraction"] == 0.0
    assert out["seed"] == 7 and out["data"]["reader_options"] == {"frame": 2}
    assert out["data"]["val_fraction"] == DEFAULTS["data"]["val_fraction"]
    assert "eval" not in out and "flip_average" not in saved.get("eval", {})  # no section invented, input untouched
    assert "min_crop_fraction" not in saved["preprocess"]


def test_every_admitted_word_loads_and_runs():
    from breastai.models.calibration import fit_temperature
    from breastai.core.config import CHOICES
    from breastai.models.registry import create_model

    for key, words in CHOICES.items():
        for w in words:
            section, name = key.split(".")
            assert load_config(None, [f"{key}={w}"])[section][name] == w
    for t in CHOICES["eval.calibration_targets"]:
        assert fit_temperature([-2.0, -1.0, 1.0, 2.5], [0, 0, 1, 1], targets=t) > 0
    for m in CHOICES["model.mask_init"]:
        assert create_model("resnet18", in_chans=2, mask_init=m)(torch.zeros(1, 2, 64, 64)).shape == (1,)


def test_override_values_keep_their_setting_type(tmp_path):
    from breastai.core.config import ConfigError, load_config

    c = load_config(None, ["run_name=2024", "output_dir=/tmp/x #1", "data.datalist=/d/a: b.csv", "train.lr=1e-3",
                           "train.epochs=3.0", "data.reader_options.dicom.frame=all", "data.cache=none",
                           "data.datalist='quoted.csv'"])
    assert c["run_name"] == "2024" and c["output_dir"] == "/tmp/x #1" and c["data"]["datalist"] == "quoted.csv"
    assert c["train"]["lr"] == 1e-3 and c["train"]["epochs"] == 3 and isinstance(c["train"]["epochs"], int)
    assert c["data"]["reader_options"] == {"dicom": {"frame": "all"}} and c["data"]["cache"] == "none"
    for bad, why in (("train.epochs=1.5", "whole number"), ("train.lr=abc", "a number"), ("log.progress=maybe", "true or false"),
                     ("preprocess={size: 64}", "is a section"), ("model=x", "is a section")):
        with pytest.raises(ConfigError, match=why):
            load_config(None, [bad])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\ntrain: {epochs: 2}\n")  # a section left empty keeps its defaults
    assert load_config(cfg)["model"]["name"] == "efficientnet_lite0"


def test_override_types_come_from_the_built_in_settings_not_the_yaml_file(tmp_path):
    """A YAML `ema: 0` or `split_seed: 7` must not make a float override or a reset to null fail."""
    from breastai.core.config import ConfigError, load_config

    f = tmp_path / "c.yaml"
    f.write_text("train: {ema: 0, attention_loss: 1}\ndata: {split_seed: 7}\n")
    cfg = load_config(f, ["train.ema=0.999", "train.attention_loss=0.5", "data.split_seed=null"])
    assert cfg["train"]["ema"] == 0.999 and cfg["train"]["attention_loss"] == 0.5 and cfg["data"]["split_seed"] is None
    with pytest.raises(ConfigError, match="train.epochs is a whole number"):
        load_config(f, ["train.epochs=1.5"])
