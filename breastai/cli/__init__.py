"""The ``breastai`` command: prepare, train, evaluate, calibrate, adapt, ensemble, bundle, predict, serve, report,
radiomics, demo.

One module per command, each with ``add_parser(subparsers)`` and ``run(args)``; this module
builds the parser from them and turns the errors a user can fix into one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from breastai.cli import adapt, bundle, calibrate, demo, ensemble, evaluate, predict, prepare, radiomics, report, serve, train

__all__ = ["main", "build_parser"]

_EPILOG = "Run 'breastai COMMAND --help' for the options of a command."
# in --help order
_COMMANDS = (prepare, train, evaluate, calibrate, adapt, ensemble, bundle, predict, serve, report, radiomics, demo)


def _setup_logging(verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-parser per command."""
    from breastai import __version__

    p = argparse.ArgumentParser(
        prog="breastai",
        description="Train, evaluate and run breast lesion malignancy classifiers on ultrasound and mammography.",
        epilog=_EPILOG,
    )
    p.add_argument("--version", action="version", version=f"breastai {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``breastai`` console command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options too (train --config C run_name=x --folds 5 a.b=1)
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.parse_args(argv)  # reports the unrecognised arguments and exits 2
    _setup_logging(args.verbose)
    from breastai.core.config import ConfigError
    from breastai.data.datalist import DatalistError
    from breastai.data.readers.registry import ImageReadError
    from breastai.data.transforms import root_cause
    from breastai.models.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DatalistError, ImageReadError, CheckpointError, OSError, ValueError, RuntimeError) as exc:
        if args.verbose:
            raise
        # MONAI datasets wrap a transform's error in RuntimeError("applying transform ..."): say the real one.
        print(f"breastai {args.command}: error: {root_cause(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
