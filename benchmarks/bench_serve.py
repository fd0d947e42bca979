"""Latency of ``breastai serve`` through a real PACS: from the last image of a study acknowledged to every
result of that study stored in Orthanc.

The 8 real mammograms of ``shared/data/dicom-mg`` (6 studies) are sent study by study, each after the
previous one's results have arrived, to a node (in this process) that forwards to a throw-away Orthanc
(``tests/orthanc.py``; Debian package ``orthanc``). The latency includes the node's quiet time
(``--quiet``), reported apart; the rest is decoding, scoring, the saliency map, building the SR and SC
(full source resolution) and the C-STOREs. Checkpoint: ``--checkpoint`` (it must accept MG), else an
untrained ``--model`` at ``--size`` that records MG (same speed as a trained one).

    python benchmarks/bench_serve.py --model efficientnet_lite0 --threads 2
    python benchmarks/bench_serve.py --checkpoint checkpoints/mg/best.pt --quiet 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench_predict import _untrained_state  # noqa: E402
from orthanc import orthanc  # noqa: E402  (the tests' throw-away Orthanc)

from breastai.inference.serve import Destination, DicomNode, ServeOptions, store_files  # noqa: E402
from breastai.models.checkpoint import Checkpoint  # noqa: E402
from breastai.models.checkpoint_io import save_checkpoint  # noqa: E402

DATA = Path(os.environ.get("BREASTAI_DATA", REPO.parent / "shared" / "data"))


def _mg_checkpoint(model: str, size: int, path: Path) -> Path:
    ckpt = Checkpoint.from_state({**_untrained_state(model, size), "modalities": ["MG"]})
    return save_checkpoint(path, ckpt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="best.pt that accepts MG")
    src.add_argument("--model", help="an untrained checkpoint of this registered model, recording MG")
    ap.add_argument("--size", type=int, default=224, help="input size for --model (default 224)")
    ap.add_argument("--quiet", type=float, default=1.0, help="the node's --quiet-seconds (default 1)")
    ap.add_argument("--saliency", default="gradcam++", help="saliency of the SC overlay (default gradcam++)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args(argv)
    import pydicom

    folder = DATA / "dicom-mg"
    if not folder.is_dir():
        print(f"real mammograms not found at {folder} (set BREASTAI_DATA)", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    studies: dict[str, list[Path]] = {}
    for f in files:
        studies.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID), []).append(f)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = Path(args.checkpoint) if args.checkpoint else _mg_checkpoint(args.model, args.size, tmp / "mg.pt")
        (tmp / "orthanc").mkdir()
        with orthanc(tmp / "orthanc") as pacs:
            opts = ServeOptions(host="127.0.0.1", port=0, quiet_seconds=args.quiet, device="cpu", poll_seconds=0.05,
                                forward=Destination(pacs.ae_title, "127.0.0.1", pacs.dicom_port),
                                saliency=args.saliency)
            with DicomNode(ckpt, tmp / "q", opts) as node:
                per = 1 + (args.saliency != "none")  # SR (+ SC) per image; no SEG without a segmenter
                print(f"model {node.predictor.cfg['model']['name']} at {node.predictor.pre.get('size')} px, "
                      f"{torch.get_num_threads()} thread(s), quiet {args.quiet:g} s; {len(files)} mammograms in "
                      f"{len(studies)} studies")
                print(f"{'study':<8}{'images':>7}{'max px':>14}{'latency s':>11}{'minus quiet':>13}")
                lat = []
                for k, (uid, group) in enumerate(studies.items()):
                    dest = Destination(opts.ae_title, "127.0.0.1", node.port)
                    assert all(s == 0 for _, s in store_files(dest, "BENCHSCU", group))
                    t0 = time.perf_counter()
                    while pacs.study_instances(uid) < per * len(group):
                        time.sleep(0.05)
                    dt = time.perf_counter() - t0
                    lat.append(dt)
                    px = max((int(h.Rows), int(h.Columns)) for h in
                             (pydicom.dcmread(f, stop_before_pixels=True) for f in group))
                    print(f"{k + 1:<8}{len(group):>7}{f'{px[0]}x{px[1]}':>14}{dt:>11.2f}{dt - args.quiet:>13.2f}")
        per_image = sum(lat) / len(files)
        print(f"median {statistics.median(lat):.2f} s per study, {per_image:.2f} s per image (mean), "
              f"total {sum(lat):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
