"""How rough each site's readers trace: the traced outline's edge length over that of the same
outline smoothed, per site and class.

Each lesion mask goes through a config's evaluation preset (the crop the model sees, 224 px for
``configs/busi.yaml``); roughness = perimeter(traced) / perimeter(traced smoothed by a Gaussian of
``--sigma`` times its equivalent diameter, thresholded at 1/2), perimeters by scikit-image. A
reader who follows the edge pixel by pixel or with a rough polygon scores above 1.05, a smooth
trace about 1.01. Also the share of masks made of several parts.

Usage::

    PYTHONPATH=. python benchmarks/outline_roughness.py data/busi.csv data/breast.csv [--config configs/busi.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import perimeter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.config import load_config  # noqa: E402
from breastai.data.augment import smooth_outline  # noqa: E402
from breastai.data.datalist import read_datalist  # noqa: E402
from breastai.data.transforms import build_transforms  # noqa: E402


def roughness(mask: np.ndarray, sigma: float) -> float:
    """Edge length of ``mask`` over that of its smoothed self (see the module docstring)."""
    m = mask > 0.5
    return float(perimeter(m) / max(perimeter(smooth_outline(m, sigma) > 0.5), 1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datalists", nargs="+")
    ap.add_argument("--config", default=str(REPO / "configs" / "busi.yaml"))
    ap.add_argument("--sigma", type=float, default=0.03, help="smoothing, fraction of the equivalent diameter")
    args = ap.parse_args(argv)
    preset = build_transforms(load_config(args.config, []), train=False)
    print("| datalist | class | n | roughness, median (IQR) | masks with several parts |")
    print("|---|---|---|---|---|")
    for path in args.datalists:
        by_class: dict[str, list[tuple[float, int]]] = {}
        for row in read_datalist(path):
            m = preset(dict(row))["mask"][0].numpy()
            by_class.setdefault(row["label"], []).append((roughness(m, args.sigma), ndimage.label(m > 0.5)[1]))
        for label, values in sorted(by_class.items()):
            a = np.array(values)
            q1, med, q3 = np.percentile(a[:, 0], [25, 50, 75])
            print(f"| {path} | {label} | {len(a)} | {med:.3f} ({q1:.3f}-{q3:.3f}) | {100 * (a[:, 1] > 1).mean():.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
