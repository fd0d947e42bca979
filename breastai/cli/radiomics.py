"""``breastai radiomics``: one IBSI feature row per datalist lesion."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``radiomics`` command to a ``breastai`` sub-command parser."""
    p = subparsers.add_parser(
        "radiomics",
        help="compute IBSI radiomics features for every lesion of a datalist",
        description="Compute IBSI radiomics features (shape, intensity, texture) for every lesion "
        "(image + mask) of a datalist and write one CSV row per lesion.",
    )
    p.add_argument("--data", required=True, help="datalist (CSV or JSON) with image and mask columns")
    p.add_argument("--out", required=True, help="output CSV (written atomically)")
    p.add_argument("--bins", type=int, default=32, help="fixed bin number discretisation (default 32)")
    p.add_argument("--bin-width", type=float, default=None, help="fixed bin size discretisation instead of --bins")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="lesions per batch (default 64)")
    p.add_argument("--families", default=None, help="comma-separated families (default: all available)")
    p.add_argument("--aggregation", default="2d",
                   help="texture aggregation(s), comma-separated, e.g. 2d, 2d_avg,3d_avg or 3d (default 2d: every 2D one)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 when every row was measured, 1 when some were skipped, 2 on failure."""
    from breastai.data.datalist import DatalistError
    from breastai.radiomics.extract import RadiomicsInputError, features_for_datalist

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda requested but no CUDA device is available", file=sys.stderr)
            return 2
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    aggregation = [a.strip() for a in args.aggregation.split(",") if a.strip()]
    try:
        table, errors = features_for_datalist(
            args.data, args.out, n_bins=args.bins, bin_width=args.bin_width, device=args.device,
            batch_size=args.batch_size, families=families, aggregation=aggregation,
            show_progress=not args.no_progress,
        )
    except (DatalistError, RadiomicsInputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(table)} lesions x {len(table.names)} features to {args.out}"
          + (f"; skipped {len(errors)} rows" if errors else ""))
    return 1 if errors else 0
