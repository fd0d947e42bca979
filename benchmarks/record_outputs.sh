#!/usr/bin/env bash
# Record what users see from a set of checkpoints: predict (probabilities, labels, uncertainty,
# saliency maps) on BUSI images and on the 8 real mammography DICOMs, and evaluate (metrics).
# Run it from two versions of the code with the same checkpoints, then compare the two folders
# with benchmarks/compare_outputs.py (docs/results.md, "Refactor check").
#
#   benchmarks/record_outputs.sh CKDIR EVAL_CSV OUT
#
# CKDIR holds crop/ whole/ fusion/ rad/ (each best.pt) and ens/fold0/best.pt; EVAL_CSV is a labelled
# datalist with masks. The code that runs is whichever breastai Python imports (PYTHONPATH=...).
set -euo pipefail
CK=$1; DL=$2; O=$3
DCM="$(cd "${BREASTAI_DATA:-$(dirname "$0")/../../shared/data}/dicom-mg" && pwd)"  # one spelling: records keep the path
mkdir -p "$O"
B=(python -c "import sys; from breastai.cli import main; sys.exit(main(sys.argv[1:]))")
for m in crop whole fusion rad; do
  "${B[@]}" predict --checkpoint "$CK/$m/best.pt" "$DL" --out "$O/$m-busi" --saliency gradcam++ --tta 4 --threads 2 > "$O/$m-busi.log" 2>&1 || true
  "${B[@]}" evaluate --checkpoint "$CK/$m/best.pt" --data "$DL" --out "$O/$m-eval" --device cpu > "$O/$m-eval.log" 2>&1 || true
done
"${B[@]}" predict --checkpoint "$CK/whole/best.pt" "$DCM" --out "$O/whole-dicom" --saliency gradcam++ --threads 2 > "$O/whole-dicom.log" 2>&1 || true
BOXES=(); for _ in 1 2 3 4 5 6 7 8; do BOXES+=(--box 1000,1000,1400,1500); done
"${B[@]}" predict --checkpoint "$CK/crop/best.pt" "$DCM" "${BOXES[@]}" --out "$O/crop-dicom" --saliency gradcam++ --threads 2 > "$O/crop-dicom.log" 2>&1 || true
"${B[@]}" predict --checkpoint "$CK/ens/fold0/best.pt" "$DL" --out "$O/ens-busi" --saliency gradcam++ --tta 3 --threads 2 > "$O/ens-busi.log" 2>&1 || true
"${B[@]}" evaluate --checkpoint "$CK/ens/fold0/best.pt" --data "$DL" --out "$O/ens-eval" --device cpu > "$O/ens-eval.log" 2>&1 || true
echo "recorded into $O"
