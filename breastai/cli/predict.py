"""``breastai predict``: score new images, write predictions and saliency maps.

The output folder's layout and the way a rerun replaces earlier results are described in
:mod:`breastai.inference.writers`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from breastai.inference.journal import RecordLog
from breastai.inference.segment import NO_LESION
from breastai.inference.writers import MAP_MAX_SIDE, OutputBusyError, run_predict

__all__ = ["add_parser", "run", "site_shift_note"]

log = logging.getLogger("breastai")


def run(args: argparse.Namespace) -> int:
    from breastai.data.datalist import DatalistError
    from breastai.models.checkpoint import CheckpointError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from breastai.data.readers.masks import LesionBox

    if args.mask and args.box:
        print("breastai predict: error: give either --mask or --box, not both", file=sys.stderr)
        return 2
    try:
        masks = [LesionBox.parse(b) for b in args.box] if args.box else args.mask or None
    except ValueError as exc:
        print(f"breastai predict: error: --{exc}", file=sys.stderr)
        return 2
    try:
        from breastai.inference.level_tables import load_level_rule

        rules = [load_level_rule(f) for f in args.level_rule or []]
        checkpoint, writers, segmenter = args.checkpoint, None, args.segmenter
        engine = None
        if args.engine == "ray":  # every actor loads the checkpoint from its path
            from breastai.inference.ray_engine import RayScoring

            engine = RayScoring(args.checkpoint, args.segmenter, args.device, args.ray_address)
        if args.dicom_out:  # the predictor is built here (the DICOM writer needs it), with its segmenter
            checkpoint, writers = _dicom_writers(args, rules)
            segmenter = None
        _, run = run_predict(checkpoint, args.inputs, args.out, masks=masks,
                             saliency=args.saliency, tta=args.tta, keep_identifiers=args.keep_identifiers,
                             find_masks=args.find_masks, device=args.device,
                             saliency_upsample=args.saliency_upsample, writers=writers, level_rules=rules,
                             map_max_side=args.map_max_side, segmenter=segmenter, workers=args.workers,
                             resume=args.resume, keep_records=False, engine=engine)
    except (CheckpointError, DatalistError, ValueError, OutputBusyError) as exc:
        print(f"breastai predict: error: {exc}", file=sys.stderr)
        return 2
    if not run["n"]:
        print(f"breastai predict: no images found in the inputs; {Path(args.out)} left as it was", file=sys.stderr)
        return 1
    if run["n_failed"]:  # read back a record at a time: an archive's records are not held in memory
        for r in RecordLog(Path(args.out) / "predictions.jsonl"):
            if r["error"]:
                print(f"failed: {r['error']}", file=sys.stderr)
    if run.get("resumed"):
        print(f"resumed run {run['run_id']}: kept the {run['resumed']['records']} record(s) of the "
              f"{run['resumed']['inputs']} input(s) it had finished", file=sys.stderr)
    for note in run.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if run.get("n_ood"):
        print(f"warning: {run['n_ood']} of {run['n']} image(s) are unlike the images the model was trained on "
              "(ood true in predictions.csv): their probabilities are not reliable", file=sys.stderr)
    shift = site_shift_note(run)
    if shift:
        print(shift, file=sys.stderr)
    n, bad = run["n"], run["n_failed"]
    if run.get("segmenter"):
        print(f"segmenter: {run['n_no_lesion']} image(s) with no lesion found (label '{NO_LESION}', no lesion "
              "probability; image_probability where the classifier reads the whole image)"
              + (f", outlines in {Path(args.out) / 'outlines' / run['run_id']}" if n > run["n_no_lesion"] + bad else ""))
    unit = "record(s)" if run.get("segmenter") else "image(s)"  # a segmenter's records are lesions
    print(f"predicted {n - bad} of {n} {unit}, {bad} failed, in {run['seconds']:.1f} s "
          f"-> {Path(args.out) / 'predictions.csv'}" + (f", maps in {Path(args.out) / 'saliency' / run['run_id']}" if args.saliency != "none" else "")
          + (f", {run['dicom_out']['n_objects']} DICOM object(s) in {Path(args.dicom_out) / run['run_id']}"
             if args.dicom_out else "")
          + "".join(f", {lv['n']} {name}(s) in {Path(args.out) / lv['file']}" for name, lv in run.get("levels", {}).items()))
    return 1 if bad else 0


def site_shift_note(run: dict[str, Any]) -> str | None:
    """The note for a run whose images mostly lie outside the training site's range, or None.

    Counted over the records that carry an OOD score: a "no lesion found" record has none, and
    counting it would hide a shift in an archive where the segmenter finds few lesions.

    Args:
        run: the run summary of :func:`breastai.inference.writers.run_predict`.

    Returns:
        The note's text when at least 10 records were scored against the detector and at least half
        of them are shifted; None otherwise (or when the checkpoint has no detector).
    """
    scored = run.get("n_ood_scored", 0)
    shifted = run.get("n_shifted", 0)
    if scored < 10 or shifted < scored / 2:
        return None
    # The label's threshold was chosen at the training site too: at BrEaST a BUSI pipeline calls 0.59
    # of the cancers at it (docs/experiments.md), so the note names the threshold method as well.
    return (f"note: {shifted} of {scored} scored images lie outside the range of the training site's images "
            "(another scanner or site?): the probabilities may be miscalibrated here, and the label's threshold "
            "was chosen at the training site; `breastai calibrate` on about 50 labelled local cases refits both "
            "(`--threshold-method sensitivity@0.9` for a threshold that calls 90 % of the local cancers)")


def _dicom_writers(args: argparse.Namespace, rules: list[Any]) -> tuple[Any, list[Any]]:
    """The predictor and the writers of a run with ``--dicom-out``: the defaults plus the DICOM objects."""
    from breastai.inference.dicom_writer import DicomObjects
    from breastai.inference.predictor import Predictor
    from breastai.inference.writers import default_writers

    pred = Predictor.from_checkpoint(args.checkpoint, device=args.device, segmenter=args.segmenter)
    objects = DicomObjects(args.dicom_out, pred, args.checkpoint, saliency=args.saliency)
    # Tables last: they carry the objects' paths and the run's notes.
    return pred, default_writers(args.saliency, rules, objects, map_max_side=args.map_max_side)


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``breastai predict``."""
    p = subparsers.add_parser(
        "predict",
        help="score new images: calibrated malignancy probability, uncertainty, saliency maps",
        description="Score images with a trained checkpoint (preprocessing, calibration and threshold all come "
        "from it). INPUT may be image or DICOM files, folders (searched recursively; non-image and *_mask files are "
        "skipped with a note) or a datalist CSV/JSON (its masks are used). Writes OUT/predictions.csv, .json and .jsonl "
        "(each record appended to OUT/partial/ as it is made, for --resume) and, "
        "with --saliency, maps in the original image geometry (.npy) with PNG overlays under OUT/saliency/RUN_ID/; "
        "a rerun replaces the earlier results as a whole. Exit status: 0 all scored, 1 some input failed, "
        "2 unusable checkpoint or arguments.",
        epilog="example: breastai predict --checkpoint checkpoints/busi/best.pt scans/ --out preds --saliency gradcam++ --tta 8",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image/DICOM files, folders or a datalist CSV/JSON")
    p.add_argument("--checkpoint", required=True, help="best.pt from a training run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mask", action="append", metavar="M",
                   help="lesion mask for an image; repeat once per image, in input order (needed by crop-mode checkpoints)")
    p.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1",
                   help="the lesion's bounding box instead of a mask (pixel columns X0..X1 and rows Y0..Y1, inclusive, "
                   "of the image as stored); repeat once per image, in input order")
    p.add_argument("--find-masks", action="store_true", help="use BUSI-style sibling <name>_mask*.png files as masks")
    p.add_argument("--segmenter", metavar="SEG.pt",
                   help="a lesion segmenter's best.pt (breastai train --config configs/busi_seg.yaml): inputs without "
                   "a mask or box are outlined automatically, one record per lesion found (component 1..n, outline "
                   "PNG/.npy under OUT/outlines/RUN_ID/, size in pixels and, where the pixel spacing is known, mm), "
                   f"each scored as a traced outline would be; an image without a lesion gets one record labelled "
                   f"'{NO_LESION}' and no probability (not a failure); a classifier with whole-image members (an ensemble "
                   "of a lesion crop and a whole-image model) still gives that image an image_probability")
    from breastai.models.saliency import METHODS, UPSAMPLING

    p.add_argument("--saliency", choices=METHODS, default="gradcam++",
                   help="saliency method (default gradcam++; occlusion is slow but model-agnostic; none = scores only)")
    p.add_argument("--saliency-upsample", choices=UPSAMPLING, default="bicubic",
                   help="how the coarse Grad-CAM map is drawn at image resolution (default bicubic: its peak can fall "
                   "between feature-map cells; bilinear peaks at a cell centre)")
    p.add_argument("--map-max-side", type=_count, default=MAP_MAX_SIDE, metavar="N",
                   help=f"store the .npy map and PNG overlay of a larger image reduced to N pixels on its longer side "
                   f"(default {MAP_MAX_SIDE}; 0: full size; the record's saliency_shape is the original size)")
    p.add_argument("--tta", type=_count, default=0, metavar="N",
                   help="test-time augmentations (flips, small affine) for the uncertainty column; 0 disables (default)")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="DICOM: id = file name and add PatientID/SOPInstanceUID columns (default: hashed SOP UID only)")
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also file the results of every scored DICOM input as DICOM objects in its study, under "
                   "DIR/RUN_ID/: a Comprehensive SR (TID 1500: probability, label, uncertainty, lesion size, "
                   "algorithm), a Secondary Capture of the saliency overlay and a SEG of the lesion outline. These "
                   "objects carry the source's patient identifiers (filing into the study needs them): the only "
                   "output that does; tables and logs stay redacted. Non-DICOM inputs get none")
    p.add_argument("--level-rule", action="append", metavar="JSON",
                   help="when the inputs carry exams (DICOM studies; a datalist's exam/group and laterality columns), "
                   "breasts.csv and exams.csv combine each breast's and exam's images by the max of their calibrated "
                   "log-odds at the checkpoint's threshold; give the metrics.json of 'breastai evaluate --level "
                   "breast|exam --fit-on VAL' to use the rule, recalibration and threshold fitted there (repeat per level)")
    p.add_argument("--workers", type=_count, default=0, metavar="N",
                   help="decode and preprocess in N worker processes while the network runs (default 0: in the "
                   "main process; the records are the same); with --engine ray, the number of actors")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: score in this process (default); ray: score on a Ray Data actor pool of --workers "
                   "actors (at least 1), each loading the checkpoint once, on a local Ray instance or the cluster "
                   "at --ray-address; same records (pip install 'breastai[ray]')")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="--engine ray: the Ray cluster to use (e.g. HEAD:6379, or auto); default: start a local one")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was killed or stopped in --out: inputs it finished are skipped and "
                   "their records kept (OUT/partial/ holds them while a run works); refused if the checkpoint or "
                   "options differ. Without an interrupted run, every input is scored")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    p.set_defaults(func=run)
    return p
