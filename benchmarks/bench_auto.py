"""Speed of the automatic pipeline: segment + classify + Grad-CAM++, milliseconds per image.

Each BUSI image (benign and malignant PNGs from the shared data; no mask is read) goes through
``Predictor.predict`` with a segmenter, one image at a time: decode, the segmenter's preset and
forward pass, its mask back on the stored image and the lesions found there, then for every lesion
the classifier's preset (crop, outline channel), forward pass, calibration and Grad-CAM++ map sent
back to the stored image. The segmenter alone (``Outliner.outline`` on the decoded image) is timed
on the same images, so the classifier's share is the difference. Median and 90th percentile over
the images after two warm-up images; no files are written.

    python benchmarks/bench_auto.py --checkpoint checkpoints/busi/best.pt --segmenter checkpoints/busi_seg/best.pt --n 50
    python benchmarks/bench_auto.py --checkpoint pipeline.pt --n 50                # a bundled pipeline
    python benchmarks/bench_auto.py ... --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from breastai.data.readers.registry import load_image  # noqa: E402
from breastai.inference.predictor import Predictor  # noqa: E402

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _busi(n: int) -> list[Path]:
    busi = DATA / "busi" / "Dataset_BUSI_with_GT"
    if not busi.is_dir():
        raise SystemExit(f"BUSI not found at {busi} (set BREASTAI_DATA to the shared data folder)")
    files = sorted(p for c in ("benign", "malignant") for p in (busi / c).glob("*.png") if "_mask" not in p.name)
    rng = np.random.default_rng(0)
    return [files[i] for i in rng.permutation(len(files))[: n + 2]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the classifier's best.pt (or a pipeline checkpoint)")
    ap.add_argument("--segmenter", help="the segmenter's best.pt (default: the pipeline checkpoint's own)")
    ap.add_argument("--n", type=int, default=50, help="images to time (default 50)")
    ap.add_argument("--saliency", default="gradcam++", help="saliency method (default gradcam++; none: scores only)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pred = Predictor.from_checkpoint(args.checkpoint, args.device, segmenter=args.segmenter)
    if pred.segmenter is None:
        raise SystemExit(f"{args.checkpoint} carries no segmenter: give --segmenter")
    files = _busi(args.n)
    seg = pred.segmenter
    print(f"classifier {pred.cfg['model']['name']} ({pred.pre['mode']}, {pred.pre.get('size')} px), segmenter "
          f"{seg.cfg['model']['name']} ({seg.cfg['preprocess']['size']} px), saliency {args.saliency}, device "
          f"{pred.device}, {torch.get_num_threads()} thread(s); {len(files) - 2} BUSI images (+2 warm-up)")
    total, seg_only, lesions, none_found = [], [], [], 0
    for i, f in enumerate(files):
        _sync(pred.device)
        t0 = time.perf_counter()
        recs = pred.predict(f, saliency=args.saliency)
        _sync(pred.device)
        t1 = time.perf_counter()
        image, meta = load_image(f, seg.reader_options)
        seg.outline(image, meta, str(f))
        _sync(pred.device)
        t2 = time.perf_counter()
        if i < 2:
            continue
        bad = [r["error"] for r in recs if r["error"]]
        if bad:
            raise SystemExit(f"{f}: {bad[0]}")
        total.append(1000 * (t1 - t0))
        seg_only.append(1000 * (t2 - t1))  # decode + segment, as inside predict
        found = [r for r in recs if r["component"] is not None]
        lesions.append(len(found))
        none_found += not found
    total_a, seg_a = np.array(total), np.array(seg_only)
    print(f"{'':<28}{'median ms':>10}{'p90 ms':>10}")
    for name, a in (("segment + classify + map", total_a), ("decode + segment only", seg_a)):
        print(f"{name:<28}{np.median(a):>10.1f}{np.percentile(a, 90):>10.1f}")
    print(f"lesions per image: mean {np.mean(lesions):.2f}, max {max(lesions)}; no lesion found: {none_found} of "
          f"{len(total)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
