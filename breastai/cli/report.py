"""``breastai report``: one self-contained HTML page of a predict, evaluate or cross-validation folder."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai report``."""
    r = subparsers.add_parser(
        "report", help="an HTML page of a predict, evaluate or cross-validation folder",
        description="Write one self-contained HTML file (no server, no network) for a folder written by "
        "'breastai predict' (a sortable case table with saliency thumbnails that open full size), 'breastai "
        "evaluate' or 'breastai train --folds K' (ROC with bootstrap band, reliability diagram, confusion matrix "
        "at the threshold, the per-case table).")
    r.add_argument("folder", metavar="RUN_OR_PREDICT_DIR", help="a predict, evaluate or cross-validation output folder")
    r.add_argument("--out", required=True, help="the HTML file to write")
    r.add_argument("--link-images", action="store_true",
                   help="predict: link the full-size images to the files in the folder instead of embedding them "
                   "(a smaller page that needs the folder beside it)")
    r.set_defaults(func=run)
    return r


def run(args: argparse.Namespace) -> int:
    """Write the report and say where it is."""
    from breastai.reporting.report import folder_kind, write_report

    kind = folder_kind(args.folder)
    out = write_report(args.folder, args.out, link_images=args.link_images)
    print(f"{kind} report: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
