"""``breastai serve``: a DICOM node that scores the breast images sent to it and forwards the results.

The node, its queue and its restart rules are described in :mod:`breastai.inference.serve` and
:mod:`breastai.inference.serve_queue`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    from breastai.inference.serve import Destination, DicomNode, ServeOptions
    from breastai.inference.writers import OutputBusyError
    from breastai.models.checkpoint import CheckpointError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        forward = Destination.parse(args.forward) if args.forward else None
        options = ServeOptions(ae_title=args.ae_title, host=args.host, port=args.port, forward=forward,
                               quiet_seconds=args.quiet_seconds, send_attempts=args.send_attempts,
                               retry_delay=args.retry_delay, retry_max_delay=args.retry_max_delay,
                               saliency=args.saliency, device=args.device)
        node = DicomNode(args.checkpoint, args.out, options, segmenter=args.segmenter)
        node.start()
    except (CheckpointError, ValueError, OutputBusyError) as exc:
        print(f"breastai serve: error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (service managers) and SIGINT (Ctrl-C) stop it cleanly: the worker finishes its step.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.request_stop())
    try:
        node.wait()
    finally:
        node.stop()
    return 0


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def _ae_title(text: str) -> str:
    from breastai.inference.serve import check_ae_title

    try:
        return check_ae_title(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai serve``."""
    from breastai.models.saliency import METHODS

    p = subparsers.add_parser(
        "serve",
        help="DICOM node: receive MG/US images (C-STORE), score each study, send SR/SC/SEG to a PACS",
        description="A DICOM storage SCP that accepts breast images (Digital Mammography, Ultrasound; others are "
        "refused), queues them on disk under OUT, scores a study once it has been quiet for --quiet-seconds "
        "(as `predict --dicom-out` does) and C-STOREs the SR, saliency SC and SEG of every image to --forward, "
        "retrying with backoff. A restart loses no received image and sends no result twice. C-ECHO is answered. "
        "Logs name studies by hash only. Stops cleanly on SIGTERM or Ctrl-C.",
        epilog="example: breastai serve --checkpoint best.pt --ae-title BREASTAI --port 11112 "
        "--forward PACS@10.0.0.5:104 --out /var/lib/breastai",
    )
    p.add_argument("--checkpoint", required=True, help="best.pt from a training run")
    p.add_argument("--out", required=True, help="queue folder: received images, results, sent state")
    p.add_argument("--ae-title", type=_ae_title, default="BREASTAI", help="this node's AE title (default BREASTAI)")
    p.add_argument("--port", type=int, default=11112, help="port to listen on (default 11112; 0 = any free port)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1 = this machine)")
    p.add_argument("--forward", metavar="AE@HOST:PORT",
                   help="where results are C-STOREd (without it they stay in the queue)")
    p.add_argument("--quiet-seconds", type=_positive(float), default=30.0,
                   help="score a study once no image of it arrived for this long (default 30)")
    p.add_argument("--send-attempts", type=_positive(int), default=5,
                   help="C-STORE attempts per pass before waiting --retry-max-delay (default 5)")
    p.add_argument("--retry-delay", type=_positive(float), default=1.0,
                   help="first wait between attempts in seconds; doubles each time (default 1)")
    p.add_argument("--retry-max-delay", type=_positive(float), default=60.0,
                   help="longest wait between attempts, and the pause after a failed pass (default 60)")
    p.add_argument("--saliency", choices=METHODS, default="gradcam++",
                   help="saliency method of the SC overlay (default gradcam++; none = no SC)")
    p.add_argument("--segmenter", metavar="SEG.pt",
                   help="a lesion segmenter's best.pt: every image's lesions are outlined and scored one by one, "
                   "each with its SR, SEG (automatic outline) and lesion size; an image without a lesion gets none")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    p.set_defaults(func=run)
    return p
