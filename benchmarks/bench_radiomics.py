"""Throughput of breastai.radiomics on BUSI lesions, and agreement with pyradiomics.

Usage::

    PYTHONPATH=. python benchmarks/bench_radiomics.py [--data DATALIST] [--threads 2] [--limit N]

Without ``--data`` the lesions come from ``../shared/data/busi`` (benign + malignant: image
``X.png`` and the union of ``X_mask*.png``). Loading is excluded from the timings. pyradiomics
(optional) runs per lesion with the matching settings (2D, 32 bins, no resampling).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.data.readers.registry import load_image  # noqa: E402
from breastai.data.readers.masks import load_mask
from breastai.radiomics import extract_features  # noqa: E402

# pyradiomics name -> (breastai name, transform of the breastai value)
AGREEMENT = {
    "original_firstorder_Mean": ("stat_mean", None),
    "original_firstorder_Variance": ("stat_var", None),
    "original_firstorder_Skewness": ("stat_skew", None),
    "original_firstorder_Kurtosis": ("stat_kurt", lambda v: v + 3),  # pyradiomics: not excess
    "original_firstorder_Median": ("stat_median", None),
    "original_firstorder_Minimum": ("stat_min", None),
    "original_firstorder_Maximum": ("stat_max", None),
    "original_firstorder_10Percentile": ("stat_p10", None),
    "original_firstorder_90Percentile": ("stat_p90", None),
    "original_firstorder_InterquartileRange": ("stat_iqr", None),
    "original_firstorder_Range": ("stat_range", None),
    "original_firstorder_MeanAbsoluteDeviation": ("stat_mad", None),
    "original_firstorder_RobustMeanAbsoluteDeviation": ("stat_rmad", None),
    "original_firstorder_Energy": ("stat_energy", None),
    "original_firstorder_RootMeanSquared": ("stat_rms", None),
    "original_firstorder_Entropy": ("ih_entropy", None),
    "original_firstorder_Uniformity": ("ih_uniformity", None),
    "original_shape2D_PixelSurface": ("morph2d_area_approx", None),
    "original_shape2D_MeshSurface": ("morph2d_area", None),
    "original_shape2D_Perimeter": ("morph2d_perimeter", None),
    "original_shape2D_MaximumDiameter": ("morph2d_diam", None),
    "original_shape2D_MajorAxisLength": ("morph2d_pca_maj_axis", None),
    "original_shape2D_MinorAxisLength": ("morph2d_pca_min_axis", None),
    "original_shape2D_Elongation": ("morph2d_pca_elongation", None),
    "original_shape2D_Sphericity": ("morph2d_sphericity", None),
    "original_glcm_Contrast": ("cm_contrast_2d_avg", None),
    "original_glcm_JointEntropy": ("cm_joint_entr_2d_avg", None),
    "original_glcm_JointEnergy": ("cm_energy_2d_avg", None),
    "original_glcm_Idm": ("cm_inv_diff_mom_2d_avg", None),
    "original_glcm_Correlation": ("cm_corr_2d_avg", None),
    "original_glrlm_ShortRunEmphasis": ("rlm_sre_2d_avg", None),
    "original_glrlm_LongRunEmphasis": ("rlm_lre_2d_avg", None),
    "original_glszm_SmallAreaEmphasis": ("szm_sze_2d", None),
    "original_glszm_ZonePercentage": ("szm_z_perc_2d", None),
    "original_ngtdm_Coarseness": ("ngt_coarseness_2d", None),
    "original_gldm_DependenceNonUniformityNormalized": ("ngl_dcnu_norm_2d", None),
}


def busi_lesions(root: Path) -> list[tuple[str, str, list[str]]]:
    out = []
    for cls in ("benign", "malignant"):
        folder = root / "Dataset_BUSI_with_GT" / cls
        for img in sorted(folder.glob("*.png")):
            if "_mask" in img.name:
                continue
            masks = sorted(str(p) for p in folder.glob(img.stem + "_mask*.png")
                           if re.fullmatch(re.escape(img.stem) + r"_mask(_\d+)?\.png", p.name))
            if masks:
                out.append((f"{cls}/{img.stem}", str(img), masks))
    return out


def datalist_lesions(path: Path) -> list[tuple[str, str, list[str]]]:
    from breastai.data.datalist import read_datalist

    return [(r["case_id"], r["image"], r["mask"]) for r in read_datalist(path, require_label=False) if r["mask"]]


def run_pyradiomics(images: list[np.ndarray], masks: list[np.ndarray]) -> tuple[list[dict], float] | None:
    try:
        import SimpleITK as sitk
        from radiomics import featureextractor, logger
    except ImportError as exc:
        print(f"pyradiomics not importable ({exc}); skipping the comparison")
        return None
    logger.setLevel(40)
    ext = featureextractor.RadiomicsFeatureExtractor(binCount=32, force2D=True, force2Ddimension=0, label=1)
    ext.disableAllFeatures()
    for c in ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm"):
        ext.enableFeatureClassByName(c)
    pairs = [(sitk.GetImageFromArray(im[None].astype(np.float64)), sitk.GetImageFromArray(m[None].astype(np.uint8)))
             for im, m in zip(images, masks)]
    out = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for si, sm in pairs:
            try:
                out.append({k: float(v) for k, v in ext.execute(si, sm).items() if k.startswith("original_")})
            except Exception as exc:  # noqa: BLE001 - report and go on, as a batch run would
                out.append({"error": str(exc)})
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="datalist; default: BUSI from the shared data folder")
    p.add_argument("--busi", type=Path, default=REPO.parent / "shared" / "data" / "busi")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="use only the first N lesions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocorr", action="store_true", help="also time the opt-in Moran's I / Geary's C")
    p.add_argument("--no-pyradiomics", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.data is not None:
        lesions = datalist_lesions(args.data)
    else:
        if not args.busi.is_dir():
            print(f"BUSI not found at {args.busi}; pass --data or --busi", file=sys.stderr)
            return 2
        lesions = busi_lesions(args.busi)
    if args.limit:
        lesions = lesions[: args.limit]
    t0 = time.perf_counter()
    images, masks, ids = [], [], []
    for cid, img_path, mask_paths in lesions:
        img, _ = load_image(img_path)
        m = load_mask(mask_paths, img.shape)
        if m.sum() < 2:
            print(f"skipped {cid}: mask has fewer than 2 pixels")
            continue
        images.append(img)
        masks.append(m)
        ids.append(cid)
    print(f"{len(ids)} lesions loaded in {time.perf_counter() - t0:.1f} s; torch threads = {torch.get_num_threads()}")

    from breastai.radiomics.extract import default_families

    fams = default_families() + (["autocorrelation"] if args.autocorr else [])
    extract_features(images[:4], masks[:4], families=fams, device=args.device)  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    table = extract_features(images, masks, ids=ids, families=fams, batch_size=args.batch_size, device=args.device)
    dt = time.perf_counter() - t0
    ours = len(ids) / dt
    print(f"breastai: {len(table.names)} features, families {fams}")
    print(f"breastai: {dt:.2f} s -> {ours:.1f} lesions/s ({1000 * dt / len(ids):.1f} ms/lesion)")
    if args.no_pyradiomics:
        return 0
    res = run_pyradiomics(images, masks)
    if res is None:
        return 0
    rows, pdt = res
    ok = [i for i, r in enumerate(rows) if "error" not in r]
    n_feat = len(rows[ok[0]]) if ok else 0
    print(f"pyradiomics 3.0.1: {n_feat} features, {pdt:.2f} s -> {len(rows) / pdt:.1f} lesions/s "
          f"({1000 * pdt / len(rows):.1f} ms/lesion); failures: {len(rows) - len(ok)}")
    print(f"throughput ratio breastai / pyradiomics: {ours / (len(rows) / pdt):.2f}x")
    print("\nagreement (relative difference |a - b| / max(|b|, 1e-12) over lesions):")
    print(f"{'pyradiomics':48s} {'breastai':28s} {'median':>10s} {'p95':>10s} {'max':>10s}")
    for pname, (bname, fn) in AGREEMENT.items():
        if bname not in table.names or not ok or pname not in rows[ok[0]]:
            continue
        a = table.column(bname)[ok]
        a = fn(a) if fn else a
        b = np.array([rows[i][pname] for i in ok])
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
        print(f"{pname[9:]:48s} {bname:28s} {np.median(rel):10.2e} {np.percentile(rel, 95):10.2e} {rel.max():10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
