"""Decode and decode+preprocess time per real DICOM file (median of a few runs).

Usage:
    PYTHONPATH=. python benchmarks/bench_dicom.py [--runs 5] [--data ../shared/data]

Wall time and process CPU time are both printed: on a shared machine the CPU time is the
steadier figure. "decode" is header parse + pixel decode (pydicom + pylibjpeg); "full" is
:func:`breastai.data.readers.dicom.read_dicom` with default options (LUTs, inversion, breast crop,
canonical orientation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from breastai.data.readers import dicom as D
from breastai.data.readers.dicom_pixels import decode as decode_pixels


def _timed(fn, runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    default = Path(os.environ.get("BREASTAI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    files = sorted((args.data / "dicom-mg").glob("*"))
    if not files:
        raise SystemExit(f"no DICOM files in {args.data / 'dicom-mg'}")
    D.read_dicom(files[0])  # warm imports and decoder plugins
    print(f"{'file':<44} {'size':>11} {'ts':<22} {'decode s (wall/cpu)':>20} {'full s (wall/cpu)':>18} {'out shape':>12}")
    for p in files:
        def decode(p: Path = p) -> None:
            ds = D._open(p)
            decode_pixels(ds, p, 0)

        img = D.read_dicom(p)
        dw, dc = _timed(decode, args.runs)
        fw, fc = _timed(lambda p=p: D.read_dicom(p), args.runs)
        m = img.meta
        print(f"{p.name[:44]:<44} {m['rows']:>5}x{m['cols']:<5} {m['transfer_syntax'][:22]:<22} "
              f"{dw:>9.3f}/{dc:<9.3f} {fw:>8.3f}/{fc:<8.3f} {str(img.pixels.shape):>12}")


if __name__ == "__main__":
    main()
