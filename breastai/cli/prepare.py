"""``breastai prepare``: public dataset layouts into a datalist, one sub-command per preparer.

The preparers (BUSI, mini-MIAS, one folder per class, ...) and their options are declared in
:mod:`breastai.data.prepare`, as plain data beside the functions they feed; this module is the
only place that turns them into argparse sub-commands, so a new preparer needs no change here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from breastai.data.prepare import Option, get_preparer, preparers
from breastai.data.prepare.merge import merge_datalists

__all__ = ["add_parser", "run", "run_merge"]

# Every preparer takes the dataset folder and the datalist to write: their arguments are the command's.
_OUT_HELP = "datalist to write (.csv or .json)"


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    if option.switch:
        parser.add_argument(option.flag, action="store_true", help=option.help)
    else:
        parser.add_argument(option.flag, type=option.type, default=option.default, choices=option.choices, help=option.help)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``prepare`` command and one sub-command per registered preparer to an argparse subparsers object."""
    p = subparsers.add_parser(
        "prepare",
        help="build a datalist from a dataset folder",
        description="Build a datalist (CSV or JSON by the suffix of --out, paths relative to it) "
        "from a public dataset layout, with groups that keep related rows together.",
    )
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for preparer in preparers():
        s = sub.add_parser(preparer.name, help=preparer.help, description=preparer.description)
        s.add_argument("root", type=Path, help=preparer.root_help)
        s.add_argument("--out", type=Path, required=True, help=_OUT_HELP)
        for option in preparer.options:
            _add_option(s, option)
        s.set_defaults(func=run)
    # Merge reads datalists, not a dataset folder, so it is no registered preparer (see merge.py).
    m = sub.add_parser(
        "merge",
        help="concatenate datalists (e.g. of several sites)",
        description="Concatenate datalists: paths stay valid relative to --out, groups are prefixed "
        "with each input's name so they never join across inputs, case_ids found in several inputs "
        "are prefixed likewise, and an empty site is filled with the input's name.",
    )
    m.add_argument("inputs", type=Path, nargs="+", metavar="DATALIST", help="datalists to concatenate (two or more)")
    m.add_argument("--out", type=Path, required=True, help=_OUT_HELP)
    m.add_argument("--no-check-files", dest="check_files", action="store_false", help="do not check that images exist")
    m.set_defaults(func=run_merge)
    return p


def run_merge(args: argparse.Namespace) -> int:
    """Merge the datalists named on the command line and print the report."""
    print(merge_datalists(args.inputs, args.out, check_files=args.check_files).summary())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the preparer named by the sub-command and print its report."""
    preparer = get_preparer(args.dataset)
    options = {option.name: getattr(args, option.name) for option in preparer.options}
    print(preparer.run(args.root, args.out, **options).summary())
    return 0
