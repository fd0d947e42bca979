"""Speed of ``breastai predict``: images/s and ms/image with and without saliency maps.

File decoding, preprocessing, the forward pass, calibration and (for the saliency rows) the map
sent back to the original geometry are all timed; ``--write`` adds the .npy/PNG output files.
Images: BUSI PNGs from the shared data when present, else synthetic 500x600 PNGs. Checkpoints that
need a lesion mask (crop models, ensembles with a crop member) read BUSI's ``_mask`` files, also timed.

    python benchmarks/bench_predict.py --checkpoint checkpoints/busi/best.pt --n 50
    python benchmarks/bench_predict.py --model efficientnet_lite0 --n 50      # untrained weights, same speed
    python benchmarks/bench_predict.py --model efficientnet_lite0 --device cuda

``--workers 0,1,2`` times each setting of ``predict --workers`` (decoding and preprocessing in that
many worker processes while the network runs); ``--images jpeg2000`` scores the largest shared
mammograms (the 5355x4915 JPEG 2000 DICOMs of ``dicom-mg``, in turn, ``--n`` times in all) instead
of BUSI (give a whole-image checkpoint that accepts MG, e.g. ``--model``)::

    python benchmarks/bench_predict.py --checkpoint checkpoints/busi/best.pt --n 200 --methods none --workers 0,1,2 --threads 1
    python benchmarks/bench_predict.py --model efficientnet_lite0 --images jpeg2000 --n 6 --methods none --workers 0,1,2 --threads 1

``--engine ray`` times ``run_predict`` on a local Ray instance's actor pool instead (``--workers``
actors; a checkpoint file is needed, the actors load it; each timing includes starting the pool)::

    python benchmarks/bench_predict.py --checkpoint checkpoints/busi/best.pt --n 200 --methods none --workers 1,2 --engine ray --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from breastai.inference.predictor import Predictor  # noqa: E402

DATA = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _jpeg2000(n: int) -> tuple[list[Path], str]:
    """The largest JPEG 2000 mammograms of ``dicom-mg``, in turn, ``n`` in all."""
    import pydicom

    found = []
    for p in sorted((DATA / "dicom-mg").glob("*")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if "2000" in ds.file_meta.TransferSyntaxUID.name:
            found.append((int(ds.Rows) * int(ds.Columns), p, f"{ds.Rows}x{ds.Columns}"))
    if not found:
        raise SystemExit(f"no JPEG 2000 DICOMs in {DATA / 'dicom-mg'}")
    most = max(f[0] for f in found)
    largest = [f for f in found if f[0] == most]
    return [largest[k % len(largest)][1] for k in range(n)], f"{len(largest)} JPEG 2000 mammograms of {largest[0][2]} in turn"


def _images(n: int, tmp: Path) -> tuple[list[Path], str]:
    busi = DATA / "busi" / "Dataset_BUSI_with_GT"
    if busi.is_dir():
        files = sorted(p for c in ("benign", "malignant") for p in (busi / c).glob("*.png") if "_mask" not in p.name)
        rng = np.random.default_rng(0)
        return [files[i] for i in rng.permutation(len(files))[:n]], f"BUSI PNGs from {busi}"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp / f"synthetic{i}.png"
        Image.fromarray((rng.random((500, 600)) * 255).astype(np.uint8)).save(p)
        out.append(p)
    return out, "synthetic 500x600 PNGs (BUSI not found)"


def _untrained_state(model: str, size: int) -> dict:
    from breastai.core.config import load_config
    from breastai.models.registry import create_model

    cfg = load_config(None, [f"model.name={model}", f"preprocess.size={size}", "model.pretrained=false"])
    net = create_model(model, pretrained=False)
    return {"model": {"name": model, "in_chans": 1, "dropout": 0.2}, "weights": net.state_dict(), "config": cfg,
            "classes": list(cfg["data"]["classes"]), "threshold": 0.5, "temperature": 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="best.pt to time")
    src.add_argument("--model", help="time an untrained checkpoint of this registered model instead")
    ap.add_argument("--size", type=int, default=224, help="input size for --model (default 224)")
    ap.add_argument("--n", type=int, default=50, help="images to time (default 50)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--methods", default="none,gradcam,gradcam++", help="comma-separated saliency methods")
    ap.add_argument("--write", action="store_true", help="also write predictions and map files (run_predict)")
    ap.add_argument("--workers", default="0", help="comma-separated predict --workers settings to time (default 0)")
    ap.add_argument("--images", choices=("busi", "jpeg2000"), default="busi",
                    help="BUSI PNGs (default) or the largest JPEG 2000 mammograms")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local (default) or ray: run_predict on a local Ray instance's actor pool (needs --checkpoint)")
    args = ap.parse_args(argv)
    if args.engine == "ray" and not args.checkpoint:
        ap.error("--engine ray needs --checkpoint (every actor loads the file)")
    if args.threads:
        torch.set_num_threads(args.threads)
    state = _untrained_state(args.model, args.size) if args.model else None
    pred = Predictor.from_state(state, device=args.device, source=args.model) if state else Predictor.from_checkpoint(args.checkpoint, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        files, what = _jpeg2000(args.n) if args.images == "jpeg2000" else _images(args.n, Path(tmp))
        size = pred.pre.get("size") or "+".join(str(m.pre["size"]) for m in getattr(pred, "members", []))
        print(f"model {pred.cfg['model']['name']} ({pred.pre['mode']}) at {size} px, device {pred.device}, "
              f"{torch.get_num_threads()} thread(s); {len(files)} images: {what}")
        masks = pred.crop_mode  # crop models (and ensembles with one) read BUSI's sibling mask files
        print(f"{'saliency':<12}{'workers':>8}{'images/s':>10}{'ms/image':>10}")
        for method in args.methods.split(","):
            pred.predict(files[:1], saliency=method, find_masks=masks)  # warm-up (allocator, hooks, lazy imports)
            for workers in (int(w) for w in args.workers.split(",")):
                if pred.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                if args.write or args.engine == "ray":
                    from breastai.inference.writers import run_predict

                    engine = None
                    if args.engine == "ray":
                        from breastai.inference.ray_engine import RayScoring

                        engine = RayScoring(args.checkpoint, device=args.device)
                    recs, _ = run_predict(pred, files, Path(tmp) / "out", saliency=method, find_masks=masks,
                                          workers=workers, engine=engine)
                else:
                    recs = pred.predict(files, saliency=method, find_masks=masks, workers=workers)
                if pred.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                bad = sum(r["error"] is not None for r in recs)
                print(f"{method:<12}{workers:>8}{len(files) / dt:>10.2f}{1000 * dt / len(files):>10.1f}"
                      + (f"  ({bad} failed)" if bad else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
