"""The preparer registry: every registered preparer is a ``breastai prepare`` sub-command."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest

from breastai.cli import main
from breastai.cli.prepare import add_parser
from breastai.data.prepare import Option, Preparer, PrepareReport, preparers, register_preparer
from breastai.data.prepare import registry

NAMES = [p.name for p in preparers()]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastai")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_the_command_lists_the_datasets_in_registration_order():
    assert NAMES[:3] == ["busi", "mias", "folder"]
    # The registered preparers in order, then merge, the command's own sub-command (datalists in).
    assert list(_subcommands(_subcommands(_prepare_parser())["prepare"])) == [*NAMES, "merge"]


@pytest.mark.parametrize("name", NAMES)
def test_each_preparer_is_a_subcommand_with_root_and_out(name, capsys):
    sub = _subcommands(_subcommands(_prepare_parser())["prepare"])[name]
    actions = {a.dest: a for a in sub._actions}
    assert actions["out"].required and actions["out"].option_strings == ["--out"]
    assert actions["root"].option_strings == []  # the positional dataset folder
    with pytest.raises(SystemExit) as e:
        main(["prepare", name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: breastai prepare {name} ") and "--out OUT" in out


@pytest.mark.parametrize("name", NAMES)
def test_options_are_keywords_of_the_preparer_with_its_defaults(name):
    """The command line and the Python call of a preparer take the same options with the same defaults."""
    prep = next(p for p in preparers() if p.name == name)
    params = inspect.signature(prep.run).parameters
    assert list(params)[:2] == ["root", "out"]
    for option in prep.options:
        assert option.name in params, f"{name}: option {option.flag} is not a keyword of {prep.run.__name__}"
        assert params[option.name].default == (False if option.switch else option.default), option.name
        assert not (option.switch and (option.type or option.choices)), option.name


def test_a_registered_preparer_needs_no_change_in_the_cli(monkeypatch, tmp_path, capsys):
    calls = []

    def prepare_toy(root, out, level: int = 1, loud: bool = False) -> PrepareReport:
        calls.append((root, out, level, loud))
        return PrepareReport("toy", out=out, counts={"benign": level})

    toy = Preparer("toy", prepare_toy, "a toy layout", "Toy rows.", "toy folder",
                   (Option("level", "how many", type=int, default=1), Option("loud", "say more", switch=True)))
    monkeypatch.setitem(registry._PREPARERS, "toy", toy)  # removed again after the test
    args = _prepare_parser().parse_args(["prepare", "toy", "R", "--out", str(tmp_path / "t.csv"), "--level", "3"])
    assert args.func(args) == 0
    assert calls == [(Path("R"), tmp_path / "t.csv", 3, False)]
    assert "toy: 3 rows written" in capsys.readouterr().out


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="'busi' is registered already"):
        register_preparer(Preparer("busi", print, "", "", ""))
