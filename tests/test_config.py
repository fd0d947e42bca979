import re
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
        ("", ["augment.calipers=-0.1"], r"augment.calipers is a probability in \[0, 1\]"),
        ("", ["augment.outline_jitter=2"], r"augment.outline_jitter is a probability in \[0, 1\]"),
        ("", ["augment.outline_jitter_strength=0.9"], r"augment.outline_jitter_strength is a fraction"),
        ("", ["preprocess.outline_smooth=-1"], r"preprocess.outline_smooth is a fraction"),
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
    with pytest.raises(ConfigError, match="train.epochs must be a whole number, got 1.5"):
        load_config(f, ["train.epochs=1.5"])


@pytest.mark.parametrize(
    "text, msg",
    [
        ("train:\n  lr: fast\n", "train.lr must be a number, got 'fast'"),
        ('train:\n  epochs: "two"\n', "train.epochs must be a whole number, got 'two'"),
        ("preprocess:\n  size: big\n", "preprocess.size must be a whole number, got 'big'"),
        ('train:\n  amp: "no"\n', "train.amp must be true or false, got 'no'"),
        ("train:\n  amp: 1\n", "train.amp must be true or false, got 1"),
        ("train:\n  epochs: 1.5\n", "train.epochs must be a whole number, got 1.5"),
        ("train:\n  lr:\n", "train.lr must be a number, got null"),
        ("preprocess:\n  percentiles: [1, x]\n", r"preprocess.percentiles must be a list of 2 numbers, got \[1, 'x'\]"),
        ("augment:\n  gamma: 0.7\n", "augment.gamma must be a list of 2 numbers, got 0.7"),
        ("data:\n  classes: benign\n", "data.classes must be a list of names, got 'benign'"),
        ("data:\n  split_seed: abc\n", "data.split_seed must be a whole number or null, got 'abc'"),
        ("device: 3\n", "device must be text, got 3"),
        ("run_name: 2024\n", "run_name must be text, got 2024 .quote it"),
        ("trian:\n  lr: 1\n", "unknown config key 'trian'"),
        ("train: 5\n", "train is a section"),
    ],
)
def test_file_values_are_checked_like_overrides(tmp_path: Path, text, msg):
    """A bad value in a YAML file is a ConfigError naming the file and the key, never a traceback."""
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(f))}: {msg}"):
        load_config(f)


@pytest.mark.parametrize("key, value", [("train.lr", "fast"), ("train.epochs", "two"), ("preprocess.size", "big"),
                                        ("train.amp", "maybe"), ("data.split_seed", "abc"), ("augment.gamma", "0.7")])
def test_file_and_override_share_one_check(tmp_path: Path, key, value):
    section, name = key.split(".")
    f = tmp_path / "x.yaml"
    f.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(f)
    with pytest.raises(ConfigError) as from_override:
        load_config(None, [f"{key}={value}"])
    assert str(from_file.value) == f"{f}: {from_override.value}"


def test_file_values_that_legitimately_work(tmp_path: Path):
    f = tmp_path / "ok.yaml"
    f.write_text("run_name: '2024'\ndevice: cpu\n"
                 "data:\n  split_seed: 7\n  cache_dir: null\n  classes: [0, 1]\n"
                 "  reader_options: {dicom: {frame: all}, anything: [1, 2]}\n"
                 "preprocess:\n  size: 96.0\n  percentiles: [1, 99]\n"
                 "augment:\n  gamma: [0.8, 1.2]\n"
                 "train:\n  lr: 1\n  weight_decay: 2e-2\n  amp: no\n  channels_last: off\n  ema: .5\n"
                 "eval:\n")
    cfg = load_config(f)
    assert cfg["run_name"] == "2024" and cfg["device"] == "cpu"
    assert cfg["data"]["split_seed"] == 7 and cfg["data"]["cache_dir"] is None and cfg["data"]["classes"] == ["0", "1"]
    assert cfg["data"]["reader_options"] == {"dicom": {"frame": "all"}, "anything": [1, 2]}
    assert cfg["preprocess"]["size"] == 96 and isinstance(cfg["preprocess"]["size"], int)
    assert cfg["preprocess"]["percentiles"] == [1.0, 99.0] and cfg["augment"]["gamma"] == [0.8, 1.2]
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float) and cfg["train"]["weight_decay"] == 0.02
    assert cfg["train"]["amp"] is False and cfg["train"]["channels_last"] is False and cfg["train"]["ema"] == 0.5
    assert cfg["eval"] == DEFAULTS["eval"]  # an empty section keeps its defaults
    f.write_text("data:\n  split_seed: null\n")
    assert load_config(f, ["data.split_seed=3"])["data"]["split_seed"] == 3


def test_text_that_reads_as_a_number_survives_a_dump(tmp_path: Path):
    """A run named ``1e-3`` is saved quoted, so the saved config loads back as the text it is."""
    cfg = load_config(None, ["run_name=1e-3", "output_dir=0x10"])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again["run_name"] == "1e-3" and again["output_dir"] == "0x10"
