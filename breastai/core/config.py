"""Configuration: the built-in defaults (:mod:`breastai.core.defaults`), a YAML file over them,
``key=value`` overrides over both.

The resolved configuration is a plain nested dict; it is saved in every run folder and in every
checkpoint, so a run can be repeated and a checkpoint rebuilt from itself alone.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from breastai.core.defaults import CHOICES, DEFAULTS

__all__ = ["DEFAULTS", "CHOICES", "RESUMABLE", "ConfigError", "load_config", "apply_overrides", "merge", "dump_config",
           "fill_missing", "check_resume", "split_seed"]


# YAML 1.1 reads ``1e-3`` as a string; configs mean a number. The loader reads such a number as a
# float, and the dumper quotes text that the loader would read as one (a run named ``1e-3``).
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """Safe YAML with ``1e-3`` read as a number."""


class _Dumper(yaml.SafeDumper):
    """Safe YAML that quotes what :class:`_Loader` would read back as a number."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
del _cls


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """An invalid configuration file or override."""


def merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Recursively merge a YAML file's mapping ``over`` into a copy of ``base``.

    Args:
        base: a configuration (the built-in defaults, or a config resolved from them).
        over: the file's mapping; a section left empty (``None``) keeps its defaults.
        path: the dotted key of ``base`` within the whole configuration ("" at the top).

    Returns:
        The merged copy; every value of ``over`` checked against its built-in setting as a
        ``key=value`` override is (:func:`_check`), ``data.reader_options`` taken as it is.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a section given a value.
    """
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        where = f"{path}{k}"
        if k not in out:
            raise ConfigError(f"unknown config key {where!r}")
        if isinstance(out[k], dict) and v is None:
            continue  # a section left empty in the YAML file keeps its defaults
        if isinstance(out[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{where} is a section, got {_shown(v)}: write its keys under it")
            # reader_options is free-form
            out[k] = {**out[k], **v} if where == "data.reader_options" else merge(out[k], v, where + ".")
        else:
            out[k] = _check(where, v)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``1e-3``, ``[a, b]``, ``true``)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node = cfg
        for i, p in enumerate(parts[:-1]):
            if "reader_options" in parts[:i] and p not in node:
                node[p] = {}  # reader options are free-form: data.reader_options.dicom.frame=all
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[p]
        try:
            value = _yaml(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from exc
        if len(parts) > 1 and "reader_options" in parts[:-1]:
            node[parts[-1]] = value
            continue
        if isinstance(_setting(key), dict):
            raise ConfigError(f"{key} is a section: set its keys one by one ({key}.KEY=VALUE)")
        if _kind(key) is str:
            value = _as_typed(raw, value)
        node[parts[-1]] = _check(key, value)
    return cfg


# Settings whose built-in value is None, and the type of value they take instead. Every None in
# DEFAULTS needs its entry here (the defaults go through the check when a saved config is loaded).
_OPTIONAL: dict[str, type] = {"run_name": str, "data.datalist": str, "data.cache_dir": str, "data.split_seed": int,
                             "data.modality": str}


def _setting(key: str) -> Any:
    """The built-in value of the dotted ``key``; a key :data:`DEFAULTS` lacks is an error."""
    node: Any = DEFAULTS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"unknown config key {key!r}")
        node = node[part]
    return node


def _kind(key: str) -> type:
    """The type of value a setting takes: its built-in value's, or its :data:`_OPTIONAL` entry."""
    default = _setting(key)
    return _OPTIONAL[key] if default is None else type(default)


def _shown(value: Any) -> str:
    """A value as an error shows it, YAML's words for None and bools (``null``, ``true``)."""
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).splitlines()[0]
    return repr(value)


def _as_typed(raw: str, value: Any) -> str | None:
    """An override of a text setting: the text as typed, so a path with ``: `` or `` #`` in it, or a
    run name like 2024, stays the text it is; a quoted one is taken as YAML parsed it (``value``),
    and ``null`` or nothing is None."""
    text = raw.strip()
    if text.lower() in ("null", "~", ""):
        return None
    quoted = len(text) > 1 and text[0] == text[-1] and text[0] in "'\""
    return value if quoted and isinstance(value, str) else text


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(key: str, value: Any) -> Any:
    """A setting's value, checked against the type of its built-in setting: the one check of the
    values of a YAML file and of ``key=value`` overrides.

    The type comes from the built-in setting, never from a value a file put there (``ema: 0`` in a
    file must not make ``train.ema=0.999`` "a whole number").

    Args:
        key: the dotted key of a setting of :data:`DEFAULTS` (not a section).
        value: the parsed value (YAML's bools include ``yes``/``no``/``on``/``off``).

    Returns:
        The value, an int made of a whole float for a whole-number setting and floats made of
        ints for number settings (``lr: 1``); ``None`` for a setting whose built-in value is None.

    Raises:
        ConfigError: ``"<key> must be <what it takes>, got <shown>"``.
    """
    kind = _kind(key)
    optional = key in _OPTIONAL
    shown = _shown(value)
    if value is None and optional:
        return None
    if key == "train.folds" and isinstance(value, str):
        # The one word a whole-number setting takes: one fold per site (leave-one-site-out).
        if value.strip().lower() != "sites":
            raise ConfigError(f"train.folds must be a whole number (K folds) or 'sites' (one fold per site), got {shown}")
        return "sites"
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {shown}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a whole number{' or null' if optional else ''}, got {shown}")
        return value
    if kind is float:
        if not _number(value):
            raise ConfigError(f"{key} must be a number, got {shown}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            quote = " (quote it)" if isinstance(value, (int, float)) else ""
            raise ConfigError(f"{key} must be text, got {shown}{quote}")
        return value
    if kind is list:
        default = _setting(key)
        if all(_number(d) for d in default):  # a pair of numbers: percentiles, gamma
            if not isinstance(value, list) or len(value) != len(default) or not all(_number(v) for v in value):
                raise ConfigError(f"{key} must be a list of {len(default)} numbers, got {shown}")
            return [float(v) for v in value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of names, got {shown}")
        return value
    raise TypeError(f"config setting {key} has a built-in value of a type the check does not know: {kind.__name__}")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file, then overrides.

    A relative ``data.datalist`` in the file resolves against the file's folder first and the
    working directory second, so configs can ship beside their data.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = _yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        try:
            cfg = merge(cfg, loaded)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        dl = cfg["data"].get("datalist")
        if dl and not Path(dl).is_absolute() and not Path(dl).exists() and (path.parent / dl).exists():
            cfg["data"]["datalist"] = str((path.parent / dl).resolve())
        if cfg["run_name"] is None:
            cfg["run_name"] = path.stem
    cfg = apply_overrides(cfg, overrides)
    if isinstance(cfg["data"].get("classes"), list):  # datalist labels are text: classes [0, 1] must match "0", "1"
        cfg["data"]["classes"] = [str(c) for c in cfg["data"]["classes"]]
    _validate(cfg)
    return cfg


def _validate(cfg: dict[str, Any]) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        if cfg[section][name] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {cfg[section][name]!r}")
    if int(cfg["preprocess"]["size"]) < 32:
        raise ConfigError("preprocess.size must be at least 32")
    if not 0.0 <= float(cfg["seg"]["presence_sensitivity"]) < 1.0:
        raise ConfigError(f"seg.presence_sensitivity is a fraction in [0, 1) (0: eval.threshold_method), got "
                          f"{cfg['seg']['presence_sensitivity']!r}")
    if not 0.0 <= float(cfg["seg"]["peak_fraction"]) < 1.0:
        raise ConfigError(f"seg.peak_fraction is a fraction of the mask's peak in [0, 1) (0: off), got "
                          f"{cfg['seg']['peak_fraction']!r}")
    for name in ("coarse_outline", "outline_jitter", "calipers", "speckle_prob"):
        if not 0.0 <= float(cfg["augment"][name]) <= 1.0:
            raise ConfigError(f"augment.{name} is a probability in [0, 1], got {cfg['augment'][name]!r}")
    if not float(cfg["train"]["focal_gamma"]) >= 0.0:
        raise ConfigError(f"train.focal_gamma is an exponent >= 0, got {cfg['train']['focal_gamma']!r}")
    if cfg["train"]["loss"] == "focal" and float(cfg["train"]["label_smoothing"]) > 0:
        raise ConfigError("train.label_smoothing smooths the cross-entropy's targets; with train.loss=focal set it to 0")
    if not 0.0 <= float(cfg["preprocess"]["outline_smooth"]) <= 0.5:
        raise ConfigError("preprocess.outline_smooth is a fraction of the lesion's diameter in [0, 0.5], got "
                          f"{cfg['preprocess']['outline_smooth']!r}")
    if not 0.0 <= float(cfg["augment"]["outline_jitter_strength"]) <= 0.5:
        raise ConfigError("augment.outline_jitter_strength is a fraction of the lesion's diameter in [0, 0.5], got "
                          f"{cfg['augment']['outline_jitter_strength']!r}")
    if not 0.0 <= float(cfg["eval"]["ood_quantile"]) <= 1.0:
        raise ConfigError(f"eval.ood_quantile is a quantile in (0, 1] (0 fits no detector), got {cfg['eval']['ood_quantile']!r}")
    if not float(cfg["eval"]["ood_margin"]) >= 1.0:
        raise ConfigError(f"eval.ood_margin is a factor >= 1 over the validation quantile, got {cfg['eval']['ood_margin']!r}")
    if cfg["seg"]["flip_mask"] and cfg["eval"]["flip_average"]:
        raise ConfigError("seg.flip_mask averages the segmenter's mask alone over the mirror image and "
                          "eval.flip_average its mask and presence: set one of them")
    if int(cfg["log"]["pointing_images"]) < 0:
        raise ConfigError(f"log.pointing_images is a count (0 turns it off), got {cfg['log']['pointing_images']!r}")
    # A classifier needs exactly two (checked with the model: models.registry.check_model_config);
    # a segmenter's classes only stratify its folds.
    if len(cfg["data"]["classes"]) < 2 or len(set(cfg["data"]["classes"])) != len(cfg["data"]["classes"]):
        raise ConfigError("data.classes must list at least two distinct classes (a classifier: exactly two, negative first)")


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Save the resolved configuration as YAML, atomically."""
    from breastai.core.files import atomic_write_text

    atomic_write_text(path, yaml.dump(cfg, Dumper=_Dumper, sort_keys=False))


# What may change when a run is resumed: how long it trains and how it runs, not what it learns from.
RESUMABLE = ("train.epochs", "train.threads", "device", "log", "output_dir", "run_name")


def check_resume(saved_path: str | Path, cfg: dict[str, Any]) -> None:
    """Refuse to resume a run with settings other than those it was started with.

    Args:
        saved_path: the run's ``config.yaml``.
        cfg: the resolved configuration of the resuming command.

    Raises:
        ConfigError: a setting outside :data:`RESUMABLE` differs (the weights, folds and cached
            inputs of the run would no longer match its config).
    """
    saved_path = Path(saved_path)
    if not saved_path.is_file():
        return  # a run killed before it wrote its config has nothing to compare with
    saved = fill_missing(yaml.safe_load(saved_path.read_text()) or {})

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and not key.startswith(("data.reader_options",)):
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(saved), flat(cfg)
    changed = sorted(k for k in set(a) | set(b)
                     if a.get(k) != b.get(k) and not any(k == r or k.startswith(r + ".") for r in RESUMABLE))
    if changed:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"--resume: {saved_path.parent} was started with other settings ({shown}"
                          f"{', ...' if len(changed) > 5 else ''}); only {', '.join(RESUMABLE)} may change. "
                          "Resume with the same settings, or start a new run")


def fill_missing(cfg: dict[str, Any], defaults: dict[str, Any] = DEFAULTS) -> dict[str, Any]:
    """A copy of a saved config with every key it lacks taken from ``defaults``.

    A checkpoint written before a key existed behaved as that key's default, so filling it in
    once, where the checkpoint is loaded, lets every reader index the config plainly. Sections the
    config lacks altogether are not invented (their absence means it is not a breastai config).
    """
    out = dict(cfg)
    for k, v in defaults.items():
        if isinstance(v, dict):
            if isinstance(out.get(k), dict):
                out[k] = fill_missing(out[k], v)
        elif k not in out:
            out[k] = copy.deepcopy(v)
    return out


def split_seed(cfg: dict[str, Any]) -> int:
    """The seed of the CV folds and validation carve-out: ``data.split_seed``, else ``seed``."""
    value = cfg["data"].get("split_seed")
    return int(cfg["seed"] if value is None else value)
