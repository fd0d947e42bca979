"""Calibration fitted on a perturbed validation part: does it keep probabilities honest at a new site?

For each leave-one-site-out run (``breastai train --folds sites``) and each fold, the fold's
``best.pt`` scores its validation part (carved from the training site, as in training) once clean
and once per strength ``s`` with every input perturbed the way another scanner or reader would
(Tomani et al., CVPR 2021): gamma of the image channel exp(±0.4 s), multiplicative speckle of SD
0.3 s, Gaussian blur of sigma 1.5 s px, and the outline channel dilated or eroded by 4 s % of the
crop. The checkpoint's temperature is refitted on the clean and perturbed logits pooled (its own
offset and ``calibration_targets``) and applied to the held-out site's logits (the run's
``oof_predictions.csv``). Printed: held-out ECE as trained and refitted, and both temperatures.
With ``--cv-run`` (a ``--folds K`` run of one site) the same on its held-out folds, pooled.

Usage::

    PYTHONPATH=. python benchmarks/perturbed_calibration.py checkpoints/xs_ema_s0 checkpoints/xs_ema_s1 \
        [--cv-run checkpoints/busi_ema_cv] [--out perturbed.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from breastai.core.keys import Keys  # noqa: E402
from breastai.engine.cv import load_cv_summary, run_folds  # noqa: E402
from breastai.engine.loaders import build_dataset, make_loader  # noqa: E402
from breastai.models.calibration import fit_temperature  # noqa: E402
from breastai.models.checkpoint import model_from_checkpoint  # noqa: E402
from breastai.models.checkpoint_io import load_checkpoint  # noqa: E402
from breastai.reporting.metrics import ece, roc_auc  # noqa: E402

STRENGTHS = (0.5, 1.0, 1.5)


def perturb(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    """The batch ``x`` (N, C, H, W; channel 0 the image, channel 1 the outline if any) perturbed at strength s."""
    x = x.clone()
    n = x.shape[0]
    img = x[:, :1]
    lo = img.amin(dim=(2, 3), keepdim=True)
    hi = img.amax(dim=(2, 3), keepdim=True)
    t = (img - lo) / (hi - lo).clamp_min(1e-6)
    sign = torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    t = t.clamp(0, 1) ** torch.exp(0.4 * s * sign)
    k = 1.0 / (0.3 * s) ** 2  # gamma(k, 1/k): mean 1, SD 0.3 s
    noise = torch.distributions.Gamma(torch.full_like(t, k), torch.full_like(t, k)).sample()
    t = (t * noise).clamp(0, 1)
    sigma = 1.5 * s
    t = gaussian_blur(t, [2 * int(3 * sigma) + 1] * 2, [sigma, sigma])
    x[:, :1] = lo + t * (hi - lo)
    if x.shape[1] > 1:
        r = max(1, round(0.04 * s * x.shape[-1]))
        m = x[:, 1:2]
        grow = F.max_pool2d(m, 2 * r + 1, 1, r)
        shrink = -F.max_pool2d(-m, 2 * r + 1, 1, r)
        dilate = torch.rand(n, 1, 1, 1, generator=g) < 0.5
        shrunk_away = shrink.amax(dim=(2, 3), keepdim=True) <= 0  # a small lesion eroded to nothing: dilate it
        x[:, 1:2] = torch.where(dilate | shrunk_away, grow, shrink)
    return x


@torch.no_grad()
def validation_logits(ckpt, records: list[dict], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the clean and perturbed passes pooled, and their labels."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = model_from_checkpoint(ckpt).eval()
    cfg = {**ckpt.config, "data": {**ckpt.config["data"], "cache": "none"}}
    loader = make_loader(build_dataset(cfg, records, False), cfg, False, None, 0)
    zs, ys = [], []
    for batch in loader:
        x = batch[Keys.IMAGE]
        for s in (0.0, *STRENGTHS):
            zs.append(model(x if s == 0 else perturb(x, s, g)).float().reshape(-1).numpy())
            ys.append(batch[Keys.LABEL].numpy())
    return np.concatenate(zs).astype(np.float64), np.concatenate(ys)


def _oof(run: Path) -> dict[str, dict]:
    return {r["case_id"]: r for r in csv.DictReader(open(run / "oof_predictions.csv"))}


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def score_run(run: Path, folds: str) -> list[dict]:
    oof = _oof(run)
    out = []
    for i, fold_dir, records, (_, va, test_idx), _cfg in run_folds(run, folds):
        ckpt = load_checkpoint(fold_dir / "best.pt")
        off = float(ckpt.logit_offset or 0.0)
        zv, yv = validation_logits(ckpt, [records[j] for j in va])
        t_new = fit_temperature(zv - off, yv, targets=ckpt.config["eval"]["calibration_targets"])
        test = [oof[records[j][Keys.CASE_ID]] for j in test_idx]
        z = np.array([float(r["logit"]) for r in test])
        y = np.array([int(r["label"]) for r in test])
        out.append({"run": run.name, "fold": i, "held_out": records[test_idx[0]].get(Keys.SITE, ""), "n": len(y),
                    "auc": roc_auc(y, z), "T as trained": ckpt.temperature, "T perturbed": t_new,
                    "ece as trained": ece(y, _sig((z - off) / ckpt.temperature)),
                    "ece perturbed": ece(y, _sig((z - off) / t_new)),
                    "_y": y, "_z_old": (z - off) / ckpt.temperature, "_z_new": (z - off) / t_new})
        print(json.dumps({k: v for k, v in out[-1].items() if not k.startswith("_")}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="leave-one-site-out run folders")
    ap.add_argument("--cv-run", type=Path, action="append", default=[], help="a --folds K run: pooled held-out ECE")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r for run in args.runs for r in score_run(run, "sites")]
    pooled = []
    for run in args.cv_run:
        k = len(load_cv_summary(run)["folds"])
        parts = score_run(run, k)
        y = np.concatenate([p["_y"] for p in parts])
        pooled.append({"run": run.name, "n": int(y.size),
                       "pooled ece as trained": ece(y, _sig(np.concatenate([p["_z_old"] for p in parts]))),
                       "pooled ece perturbed": ece(y, _sig(np.concatenate([p["_z_new"] for p in parts])))})
        print(json.dumps(pooled[-1]), flush=True)
    cols = ["run", "held_out", "n", "auc", "T as trained", "T perturbed", "ece as trained", "ece perturbed"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if rows:
        print(f"mean ECE over {len(rows)}: as trained {np.mean([r['ece as trained'] for r in rows]):.4f}, "
              f"perturbed {np.mean([r['ece perturbed'] for r in rows]):.4f}")
    if args.out:
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        args.out.write_text(json.dumps({"rows": clean, "pooled": pooled}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
