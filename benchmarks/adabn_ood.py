"""What re-estimated batch-norm statistics (``breastai adapt``) do to a checkpoint's out-of-distribution detector.

The detector (:class:`breastai.models.ood.FeatureDensity`) models the training part's features
under the statistics the checkpoint was trained with. This scores a new site's images and a sample
of the training site's own images with the checkpoint's detector, each time with the source's
statistics and with statistics re-estimated on those same images
(:func:`breastai.engine.adapt.batchnorm_statistics`, as ``breastai adapt`` does; no labels read).
If the training site's own images are flagged once their statistics are re-estimated, the detector
answers to the statistics rather than to the images. Printed per set: images, share flagged
(``ood_score > 1``), median ``ood_score`` and each feature group's median scaled distance.

Usage::

    PYTHONPATH=. python benchmarks/adabn_ood.py checkpoints/xs_ema_s0/fold0/best.pt \\
        --site data/breast.csv --train data/busi.csv --n-train 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.keys import Keys  # noqa: E402
from breastai.data.frames import read_samples  # noqa: E402
from breastai.engine.adapt import adapted_checkpoint, batchnorm_statistics  # noqa: E402
from breastai.engine.scoring import predict_records  # noqa: E402
from breastai.models.checkpoint import Checkpoint  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402


def detector_view(ckpt: Checkpoint, records: list[dict], device: torch.device) -> dict[str, float]:
    """Share flagged, median score and each group's median scaled distance of ``records`` under ``ckpt``."""
    features = predict_records(ckpt, records, device)["features"]
    score = ckpt.ood.score(features)
    row = {"n": len(records), "flagged": float(np.mean(score > 1.0)), "median score": float(np.median(score))}
    for i, (g, f, t) in enumerate(zip(ckpt.ood.groups, features, ckpt.ood.scales)):
        name = ckpt.ood.layers[i] if i < len(ckpt.ood.layers) else "embedding"
        row[name] = float(np.median(g.distance(f) / t))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a single classifier's best.pt with a detector")
    ap.add_argument("--site", type=Path, required=True, help="datalist of the new site's images")
    ap.add_argument("--train", type=Path, required=True, help="datalist of the training site's images")
    ap.add_argument("--n-train", type=int, default=100, help="training-site images used (every k-th with a mask)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.ood is None:
        ap.error(f"{args.checkpoint} has no out-of-distribution detector")
    site = read_samples(args.site, ckpt.config["data"], ckpt.classes, require_label=False)
    train = [r for r in read_samples(args.train, ckpt.config["data"], ckpt.classes, require_label=False)
             if r.get(Keys.MASK)]
    train = train[:: max(1, len(train) // args.n_train)][: args.n_train]
    rows = []
    for name, records in ((args.site.stem, site), (f"{args.train.stem} (training site)", train)):
        own = adapted_checkpoint(ckpt, batchnorm_statistics(ckpt, records, device))
        for stats, c in (("source", ckpt), ("re-estimated on these images", own)):
            rows.append({"images": name, "statistics": stats, **detector_view(c, records, device)})
            print(rows[-1], flush=True)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
