"""Peak memory of ``breastai predict`` on the largest shared mammogram, and per source pixel.

Each run is a fresh ``python -m breastai predict`` subprocess; its peak resident set size is the
``ru_maxrss`` the kernel reports for that child (``os.wait4``). A 64x64 PNG run gives the fixed
part (Python, torch, the model); the difference over the mammogram's pixels is what each source
pixel costs, the figure behind the readers' default size limit
(:data:`breastai.data.readers.registry.DEFAULT_MAX_PIXELS`). The checkpoint is untrained
(random weights cost the same memory as trained ones) unless ``--checkpoint`` names one.

    python benchmarks/bench_memory.py                       # default model, gradcam++ and none
    python benchmarks/bench_memory.py --saliency none --model small_cnn
    python benchmarks/bench_memory.py --checkpoint checkpoints/busi/best.pt

``--inputs 2000,20000`` measures instead whether memory stays flat with the number of inputs: one
``predict`` over an inputs list (a datalist CSV with a unique ``case_id`` per row) naming
``--distinct`` shared BUSI images (with their masks, for crop checkpoints) again and again, per
count, and prints its peak RSS, time and images/s::

    python benchmarks/bench_memory.py --inputs 2000,20000 --model small_cnn --size 64 --saliency none --threads 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("BREASTAI_DATA", ROOT.parent / "shared" / "data"))
# breastai has no __main__; this is what the ``breastai`` console script runs.
CLI = [sys.executable, "-c", "import sys; from breastai.cli import main; sys.exit(main(sys.argv[1:]))"]


def largest_dicom(folder: Path) -> tuple[Path, int, int]:
    """The DICOM file of ``folder`` with the most pixels (Rows x Columns), then the largest file."""
    import pydicom

    best: tuple[int, int, Path, int, int] | None = None
    for p in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file: not a candidate
            continue
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        key = (rows * cols, p.stat().st_size, p, rows, cols)
        best = key if best is None or key[:2] > best[:2] else best
    if best is None:
        raise SystemExit(f"no DICOM files in {folder}")
    return best[2], best[3], best[4]


def write_untrained_checkpoint(path: Path, model: str, size: int) -> Path:
    from bench_predict import _untrained_state  # the state bench_predict times; this script's folder is on sys.path
    from breastai.models.checkpoint import Checkpoint
    from breastai.models.checkpoint_io import save_checkpoint

    return save_checkpoint(path, Checkpoint.from_state(_untrained_state(model, size)))


def peak_rss(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MiB, wall seconds, exit code) of ``cmd`` run as a child process.

    Linux counts the parent's resident set at the fork into the child's peak, so this process
    stays small: it never imports torch (the checkpoint is written by a child too).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                            "PYTHONPATH": str(ROOT)})
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(f"  exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, proc.returncode  # Linux reports KiB


def write_inputs_list(path: Path, n: int, distinct: int) -> Path:
    """A datalist CSV of ``n`` rows naming ``distinct`` BUSI images (and masks) in turn, ids ``r0000000``...

    Raises:
        SystemExit: the shared BUSI folder is missing.
    """
    import csv

    busi = DATA / "busi" / "Dataset_BUSI_with_GT"
    if not busi.is_dir():
        raise SystemExit(f"BUSI not found at {busi} (set BREASTAI_DATA)")
    images = sorted(p for c in ("benign", "malignant") for p in (busi / c).glob("*.png") if "_mask" not in p.name)
    images = images[:distinct]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "image", "mask"])
        for k in range(n):
            p = images[k % len(images)]
            w.writerow([f"r{k:07d}", p, p.with_name(f"{p.stem}_mask.png")])
    return path


def archive(args: argparse.Namespace, ckpt: Path, tmp: Path) -> None:
    """Peak RSS, seconds and images/s of one predict per count of ``--inputs``."""
    print(f"inputs list: {args.distinct} BUSI images repeated; checkpoint {args.checkpoint or f'untrained {args.model} at {args.size} px'}; "
          f"saliency {args.saliency}; {args.threads} thread(s); {args.workers} worker(s)")
    print(f"{'inputs':>8}{'peak MiB':>10}{'s':>9}{'images/s':>10}")
    for n in (int(v) for v in args.inputs.split(",")):
        inputs = write_inputs_list(tmp / f"inputs{n}.csv", n, args.distinct)
        peak, secs, code = peak_rss([*CLI, "predict", str(inputs), "--checkpoint", str(ckpt), "--out", str(tmp / f"out{n}"),
                                     "--saliency", args.saliency, "--threads", str(args.threads), "--device", "cpu",
                                     "--workers", str(args.workers)])
        print(f"{n:>8}{peak:>10.0f}{secs:>9.1f}{n / secs:>10.1f}" + ("  (failed)" if code else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="best.pt to run (default: an untrained checkpoint of --model)")
    ap.add_argument("--model", default="efficientnet_lite0", help="model of the untrained checkpoint")
    ap.add_argument("--size", type=int, default=224, help="input size of the untrained checkpoint (default 224)")
    ap.add_argument("--saliency", default="gradcam++,none", help="comma-separated saliency methods to measure")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of predict (default 2)")
    ap.add_argument("--data", type=Path, default=DATA / "dicom-mg", help="folder of DICOM mammograms")
    ap.add_argument("--inputs", metavar="N,N", help="measure predict over inputs lists of these lengths instead")
    ap.add_argument("--distinct", type=int, default=8, help="--inputs: distinct BUSI images repeated (default 8)")
    ap.add_argument("--workers", type=int, default=0, help="--inputs: predict --workers (default 0)")
    ap.add_argument("--write-untrained", metavar="PATH", help=argparse.SUPPRESS)  # the child that writes the checkpoint
    args = ap.parse_args(argv)
    if args.write_untrained:
        write_untrained_checkpoint(Path(args.write_untrained), args.model, args.size)
        return 0
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else tmp / "best.pt"
        if not args.checkpoint:
            subprocess.run([sys.executable, __file__, "--write-untrained", str(ckpt), "--model", args.model,
                            "--size", str(args.size)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if args.inputs:
            archive(args, ckpt, tmp)
            return 0
        dicom, rows, cols = largest_dicom(args.data)
        small = tmp / "small.png"
        Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(small)
        print(f"{dicom.name}: {rows} x {cols} = {rows * cols / 1e6:.1f} M pixels, {dicom.stat().st_size / 1e6:.1f} MB; "
              f"checkpoint {args.checkpoint or f'untrained {args.model} at {args.size} px'}; {args.threads} thread(s)")
        print(f"{'saliency':<11}{'64x64 PNG MiB':>14}{'mammogram MiB':>15}{'s':>7}{'bytes/pixel':>13}")
        for method in args.saliency.split(","):
            def run(image: Path, out: str, method: str = method) -> tuple[float, float, int]:
                return peak_rss([*CLI, "predict", str(image), "--checkpoint", str(ckpt),
                                 "--out", str(tmp / out), "--saliency", method, "--threads", str(args.threads),
                                 "--device", "cpu"])

            base, _, _ = run(small, f"small-{method}")
            peak, secs, code = run(dicom, f"mg-{method}")
            per_pixel = (peak - base) * 2**20 / (rows * cols)
            print(f"{method:<11}{base:>14.0f}{peak:>15.0f}{secs:>7.1f}{per_pixel:>13.1f}" + ("  (failed)" if code else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
