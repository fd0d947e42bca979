"""Bytes written per image by ``breastai predict``'s saliency outputs, full size against reduced.

Scores the real mammography DICOMs of ``dicom-mg`` (up to 5355x4915) with an untrained
whole-image checkpoint recording MG (the bytes do not depend on training), Grad-CAM++, once with
``--map-max-side 0`` (every map at full size, as before) and once with the default limit, and
prints the mean bytes of the ``.npy`` map and the PNG overlay per image, and the largest image's.

Usage::

    PYTHONPATH=. python benchmarks/bench_map_bytes.py [--data ../shared/data] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_predict import _untrained_state  # noqa: E402

from breastai.inference.predictor import Predictor  # noqa: E402
from breastai.inference.writers import MAP_MAX_SIDE, run_predict  # noqa: E402
from breastai.models.checkpoint import Checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("BREASTAI_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    files = sorted(p for p in (Path(args.data) / "dicom-mg").rglob("*") if p.suffix.lower() == ".dcm")
    if not files:
        sys.exit(f"no DICOM files under {Path(args.data) / 'dicom-mg'}")
    pred = Predictor.from_state(Checkpoint.from_state({**_untrained_state(args.model, 224), "modalities": ["MG"]}),
                                device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for limit in (0, MAP_MAX_SIDE):
            out = Path(tmp) / f"side{limit}"
            records, _ = run_predict(pred, files, out, saliency="gradcam++", map_max_side=limit)
            done = [r for r in records if r["saliency_npy"]]
            sizes = [((out / r["saliency_npy"]).stat().st_size, (out / r["saliency_png"]).stat().st_size) for r in done]
            largest = max(range(len(done)), key=lambda i: sizes[i][0])
            name = "full size" if limit == 0 else f"reduced to {limit} px"
            print(f"{name:>20}: {len(done)} images, mean .npy {sum(s[0] for s in sizes) / len(sizes) / 1e6:.2f} MB, "
                  f"mean .png {sum(s[1] for s in sizes) / len(sizes) / 1e6:.2f} MB; largest image "
                  f"({done[largest]['saliency_shape']}): .npy {sizes[largest][0] / 1e6:.2f} MB, "
                  f".png {sizes[largest][1] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
