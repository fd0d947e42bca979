"""IBSI intensity features, batched over lesions: statistics, intensity histogram,
intensity-volume histogram and local intensity.

Every function takes padded batches (``(B, D, H, W)`` tensors plus a bool ROI mask) and returns
``dict[tag, Tensor(B)]``. ``*_FEATURES`` dicts document each feature as
``"IBSI name (IBSI id): formula"``; X are the ROI intensities, N their count, mu their mean,
P_q the q-th percentile (linear interpolation between order statistics, as numpy's default).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "STAT_FEATURES",
    "IH_FEATURES",
    "IVH_FEATURES",
    "LOCAL_FEATURES",
    "statistics_features",
    "histogram_features",
    "ivh_features",
    "local_intensity_features",
]

STAT_FEATURES: dict[str, str] = {
    "stat_mean": "Mean (Q4LE): mu = 1/N sum X",
    "stat_var": "Variance (ECT3): 1/N sum (X - mu)^2 (no bias correction)",
    "stat_skew": "Skewness (KE2A): m3 / m2^(3/2), m_k = 1/N sum (X - mu)^k; 0 when m2 = 0",
    "stat_kurt": "(Excess) kurtosis (IPH6): m4 / m2^2 - 3; 0 when m2 = 0",
    "stat_median": "Median (Y12H): P_50",
    "stat_min": "Minimum (1GSF): min X",
    "stat_p10": "10th percentile (QG58): P_10",
    "stat_p90": "90th percentile (8DWT): P_90",
    "stat_max": "Maximum (84IY): max X",
    "stat_iqr": "Interquartile range (SALO): P_75 - P_25",
    "stat_range": "Range (2OJQ): max X - min X",
    "stat_mad": "Mean absolute deviation (4FUA): 1/N sum |X - mu|",
    "stat_rmad": "Robust mean absolute deviation (1128): mean |X' - mean(X')| over X' = {P_10 <= X <= P_90}",
    "stat_medad": "Median absolute deviation (N72L): 1/N sum |X - P_50|",
    "stat_cov": "Coefficient of variation (7TET): sqrt(var) / mu",
    "stat_qcod": "Quartile coefficient of dispersion (9S40): (P_75 - P_25) / (P_75 + P_25)",
    "stat_energy": "Energy (N8CA): sum X^2",
    "stat_rms": "Root mean square (5ZWQ): sqrt(1/N sum X^2)",
}

_IH_IDS = {
    "ih_mean": "X6K6", "ih_var": "CH89", "ih_skew": "88K1", "ih_kurt": "C3I7", "ih_median": "WIFQ",
    "ih_min": "1PR8", "ih_p10": "GPMT", "ih_p90": "OZ0C", "ih_max": "3NCY", "ih_iqr": "WR0O",
    "ih_range": "5Z3W", "ih_mad": "D2ZX", "ih_rmad": "WRZB", "ih_medad": "4RNL", "ih_cov": "CWYJ",
    "ih_qcod": "SLWD",
}


def _ih_doc(stat_doc: str, ident: str) -> str:
    name, formula = stat_doc.split(" (", 1)[0], stat_doc.split("): ", 1)[1]
    return f"Intensity histogram {name[0].lower() + name[1:]} ({ident}): {formula}, over discretised intensities"


IH_FEATURES: dict[str, str] = {k: _ih_doc(STAT_FEATURES["stat_" + k[3:]], i) for k, i in _IH_IDS.items()}
IH_FEATURES.update({
    "ih_mode": "Intensity histogram mode (AMMC): most frequent X_d (lowest on ties)",
    "ih_entropy": "Intensity histogram entropy (TLU2): -sum_i p_i log2 p_i, p_i = n_i / N",
    "ih_uniformity": "Intensity histogram uniformity (BJ5W): sum_i p_i^2",
    "ih_max_grad": "Maximum histogram gradient (12CE): max_i H'(i), H'(i) = (n_{i+1} - n_{i-1}) / 2, "
    "one-sided at both ends of the range",
    "ih_max_grad_g": "Maximum histogram gradient intensity (8E6O): argmax_i H'(i)",
    "ih_min_grad": "Minimum histogram gradient (VQB3): min_i H'(i)",
    "ih_min_grad_g": "Minimum histogram gradient intensity (RHQZ): argmin_i H'(i)",
})

IVH_FEATURES: dict[str, str] = {
    "ivh_v10": "Volume fraction at 10% intensity (BC2M): largest nu_i with gamma_i >= 0.10, "
    "nu_i = 1 - 1/N sum [X_d < i], gamma_i = (i - min G) / (max G - min G)",
    "ivh_v90": "Volume fraction at 90% intensity (BC2M): largest nu_i with gamma_i >= 0.90",
    "ivh_i10": "Intensity at 10% volume (GBPN): min i with nu_i <= 0.10 (max G + w_d if none)",
    "ivh_i90": "Intensity at 90% volume (GBPN): min i with nu_i <= 0.90",
    "ivh_diff_v10_v90": "Volume fraction difference between 10% and 90% intensity (DDTU): V_10 - V_90",
    "ivh_diff_i10_i90": "Intensity difference between 10% and 90% volume (CNV2): I_10 - I_90",
    "ivh_auc": "Area under the IVH curve (9CMM): trapezoidal integral of nu over gamma "
    "(no IBSI reference value)",
}

LOCAL_FEATURES: dict[str, str] = {
    "loc_peak_loc": "Local intensity peak (VJGA): mean intensity of all image voxels whose centres lie within "
    "r = (3 / (4 pi))^(1/3) cm of the ROI's maximum-intensity voxel (highest over ties)",
    "loc_peak_glob": "Global intensity peak (0F91): maximum over ROI voxels of that 1 cm^3 spherical mean",
}


class _Support:
    """Each lesion's ROI values as a weighted support: values ``v`` (B, K) with counts ``c``.

    Integral values spanning at most ``2**16`` steps (8/16-bit images, grey levels) become a
    histogram over ``min..max`` of the batch, so every statistic costs O(K) per lesion rather than
    O(voxels); other values are sorted (count 1 per ROI voxel, 0 on padding). Both are exact.
    """

    _MAX_RANGE = 1 << 16

    def __init__(self, x: torch.Tensor, m: torch.Tensor) -> None:
        dt = x.dtype
        sel = x[m]
        if sel.numel():
            lo, hi = sel.min(), sel.max()
            if hi - lo < self._MAX_RANGE and bool(torch.all(sel == torch.round(sel))):
                idx = torch.where(m, x - lo, torch.zeros_like(x)).long()
                counts = torch.zeros(x.shape[0], int(hi - lo) + 1, dtype=dt, device=x.device)
                counts.scatter_add_(1, idx, m.to(dt))
                self.v = (lo + torch.arange(counts.shape[1], device=x.device, dtype=dt)).expand_as(counts)
                self.c = counts
                self._finish()
                return
        inf = torch.tensor(float("inf"), dtype=dt, device=x.device)
        srt = torch.where(m, x, inf).sort(dim=1).values
        self.c = torch.isfinite(srt).to(dt)
        self.v = torch.where(self.c > 0, srt, torch.zeros_like(srt))
        self._finish()

    def _finish(self) -> None:
        self.n = self.c.sum(1)
        self.cum = torch.cumsum(self.c, 1)

    def sum(self, f: torch.Tensor) -> torch.Tensor:
        """Count-weighted sum of ``f`` (a function of ``v``, shape (B, K))."""
        return (self.c * f).sum(1)

    def order(self, k: torch.Tensor) -> torch.Tensor:
        """The (k+1)-th smallest ROI value of each lesion (``k`` 0-based, shape ``(B,)``)."""
        pos = torch.searchsorted(self.cum, (k.to(self.cum.dtype) + 0.5)[:, None].contiguous())[:, 0]
        return self.v.gather(1, pos.clamp_max(self.v.shape[1] - 1)[:, None])[:, 0]

    def quantile(self, q: float) -> torch.Tensor:
        """Percentile by linear interpolation between order statistics (numpy's default)."""
        pos = q * (self.n - 1)
        lo = pos.floor()
        vlo, vhi = self.order(lo), self.order(pos.ceil())
        return vlo + (vhi - vlo) * (pos - lo)


def _flat(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.flatten(1), mask.flatten(1)


def _moment_features(sup: _Support, prefix: str) -> dict[str, torch.Tensor]:
    """Distribution statistics shared by the statistics and histogram families."""
    v, n = sup.v, sup.n
    mu = sup.sum(v) / n
    d = v - mu[:, None]
    d2 = d * d
    m2 = sup.sum(d2) / n
    m3 = sup.sum(d2 * d) / n
    m4 = sup.sum(d2 * d2) / n
    flat = m2 <= 1e-12 * (mu.abs() + 1) ** 2
    safe = torch.where(flat, torch.ones_like(m2), m2)
    p10, p25, p50, p75, p90 = (sup.quantile(q) for q in (0.10, 0.25, 0.50, 0.75, 0.90))
    lo, hi = sup.order(torch.zeros_like(n)), sup.order(n - 1)
    rw = sup.c * ((v >= p10[:, None]) & (v <= p90[:, None]))
    rmu = (rw * v).sum(1) / rw.sum(1)
    out = {
        "mean": mu,
        "var": m2,
        "skew": torch.where(flat, torch.zeros_like(m2), m3 / safe**1.5),
        "kurt": torch.where(flat, torch.zeros_like(m2), m4 / safe**2 - 3.0),
        "median": p50,
        "min": lo,
        "p10": p10,
        "p90": p90,
        "max": hi,
        "iqr": p75 - p25,
        "range": hi - lo,
        "mad": sup.sum(d.abs()) / n,
        "rmad": (rw * (v - rmu[:, None]).abs()).sum(1) / rw.sum(1),
        "medad": sup.sum((v - p50[:, None]).abs()) / n,
        "cov": m2.sqrt() / mu,
        "qcod": (p75 - p25) / (p75 + p25),
    }
    return {f"{prefix}_{k}": v for k, v in out.items()}


def statistics_features(values: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """IBSI intensity-based statistical features (family UHIW), see :data:`STAT_FEATURES`.

    Args:
        values: float ``(B, ...)`` intensities (not discretised).
        mask: bool ``(B, ...)`` ROI intensity mask; every lesion needs at least one voxel.
    """
    x, m = _flat(values, mask)
    sup = _Support(x, m)
    out = _moment_features(sup, "stat")
    e = sup.sum(sup.v * sup.v)
    out["stat_energy"] = e
    out["stat_rms"] = (e / sup.n).sqrt()
    return out


def histogram_features(
    levels: torch.Tensor, mask: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> dict[str, torch.Tensor]:
    """IBSI intensity histogram features (family ZVCW), see :data:`IH_FEATURES`.

    Args:
        levels: discretised intensities ``(B, ...)`` (integer valued, any dtype).
        mask: bool ROI mask.
        lo, hi: ``(B,)`` first and last grey level of each lesion's histogram range; the
            gradient features run over every level in ``lo..hi`` including empty ones.
    """
    x, m = _flat(levels.to(torch.float64), mask)
    out = _moment_features(_Support(x, m), "ih")
    lo = lo.to(torch.float64)
    hi = hi.to(torch.float64)
    n_bins = int((hi - lo).max().item()) + 1
    idx = (x - lo[:, None]).clamp(0, n_bins - 1).long()
    counts = torch.zeros(x.shape[0], n_bins, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, idx, m.to(torch.float64))
    n = counts.sum(1, keepdim=True)
    p = counts / n
    out["ih_mode"] = lo + counts.argmax(1).to(torch.float64)  # argmax returns the first maximum
    out["ih_entropy"] = -(torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(1)
    out["ih_uniformity"] = (p**2).sum(1)
    # Central differences inside each lesion's own range, one-sided at its two ends.
    nb = (hi - lo).long() + 1  # (B,)
    ar = torch.arange(n_bins, device=x.device)[None, :]
    padded = torch.cat([counts[:, :1], counts, counts[:, -1:]], 1)
    grad = (padded[:, 2:] - padded[:, :-2]) / 2
    first = counts[:, 1:2] - counts[:, 0:1] if n_bins > 1 else torch.zeros_like(counts[:, :1])
    last_i = (nb - 1).clamp_min(0)[:, None]
    prev_i = (nb - 2).clamp_min(0)[:, None]
    last = counts.gather(1, last_i) - counts.gather(1, prev_i)
    grad = torch.where(ar == 0, first.expand_as(grad), grad)
    grad = torch.where(ar == last_i, last.expand_as(grad), grad)
    grad = torch.where(nb[:, None] == 1, torch.zeros_like(grad), grad)
    inside = ar < nb[:, None]
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
    gmax = torch.where(inside, grad, -inf)
    gmin = torch.where(inside, grad, inf)
    out["ih_max_grad"] = gmax.amax(1)
    out["ih_max_grad_g"] = lo + gmax.argmax(1).to(torch.float64)
    out["ih_min_grad"] = gmin.amin(1)
    out["ih_min_grad_g"] = lo + gmin.argmin(1).to(torch.float64)
    return out


def ivh_features(
    values: torch.Tensor,
    mask: torch.Tensor,
    g_lo: torch.Tensor,
    g_hi: torch.Tensor,
    step: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """IBSI intensity-volume histogram features (family P88C), see :data:`IVH_FEATURES`.

    Args:
        values: discretised intensities ``X_d,gl`` ``(B, ...)`` (bin numbers, bin centres or raw
            integer intensities, see :class:`~breastai.radiomics.discretise.Discretised`).
        mask: bool ROI mask.
        g_lo, g_hi, step: ``(B,)`` range ``G`` and interval ``w_d`` of each lesion.
    """
    x, m = _flat(values.to(torch.float64), mask)
    g_lo, g_hi, step = (t.to(torch.float64) for t in (g_lo, g_hi, step))
    n_int = torch.round((g_hi - g_lo) / step).long() + 1  # (B,)
    K = int(n_int.max().item())
    k = torch.arange(K, device=x.device, dtype=torch.float64)[None, :]
    inten = g_lo[:, None] + k * step[:, None]  # (B, K)
    valid = k < n_int[:, None]
    # Bin index of each voxel so that nu_i = 1 - (#voxels with X_d < i) / N via a cumulative sum.
    idx = torch.round((x - g_lo[:, None]) / step[:, None]).clamp(0, K - 1).long()
    counts = torch.zeros(x.shape[0], K, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, idx, m.to(torch.float64))
    n = counts.sum(1, keepdim=True)
    below = torch.cumsum(counts, 1) - counts
    nu = 1.0 - below / n
    span = (g_hi - g_lo)[:, None]
    gamma = torch.where(span > 0, (inten - g_lo[:, None]) / torch.where(span > 0, span, 1.0), torch.ones_like(inten))
    out: dict[str, torch.Tensor] = {}
    for pct in (10, 90):
        f = pct / 100.0
        ok = valid & (gamma >= f - 1e-12)
        out[f"ivh_v{pct}"] = torch.where(ok, nu, torch.zeros_like(nu)).amax(1)
        okv = valid & (nu <= f + 1e-12)
        big = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
        ix = torch.where(okv, inten, big).amin(1)
        out[f"ivh_i{pct}"] = torch.where(torch.isinf(ix), g_hi + step, ix)
    out["ivh_diff_v10_v90"] = out["ivh_v10"] - out["ivh_v90"]
    out["ivh_diff_i10_i90"] = out["ivh_i10"] - out["ivh_i90"]
    # Trapezoidal area under nu(gamma) over the valid range.
    dg = (gamma[:, 1:] - gamma[:, :-1]) * (valid[:, 1:]).to(torch.float64)
    out["ivh_auc"] = (dg * (nu[:, 1:] + nu[:, :-1]) / 2).sum(1)
    return out


def _sphere_rows(spacing: tuple[float, float, float], radius: float, depth: int) -> list[tuple[int, int, int]]:
    """Rows ``(dz, dy, half_width_x)`` of the voxel-centre sphere of ``radius`` mm.

    Slices further than ``depth - 1`` away can never hold image voxels and are left out.
    """
    sz, sy, sx = spacing
    rz, ry = int(math.floor(radius / sz + 1e-9)), int(math.floor(radius / sy + 1e-9))
    rz = min(rz, depth - 1)
    rows = []
    for dz in range(-rz, rz + 1):
        for dy in range(-ry, ry + 1):
            rem = radius**2 - (dz * sz) ** 2 - (dy * sy) ** 2
            if rem < -1e-9:
                continue
            rows.append((dz, dy, int(math.floor(math.sqrt(max(rem, 0.0)) / sx + 1e-9))))
    return rows


def _sphere_sum(x: torch.Tensor, rows: list[tuple[int, int, int]]) -> torch.Tensor:
    """Sum of ``x`` (B, D, H, W) over a sphere given as rows of x-runs, via prefix sums along x."""
    B, D, H, W = x.shape
    rz = max(abs(r[0]) for r in rows)
    ry = max(abs(r[1]) for r in rows)
    rx = max(r[2] for r in rows)
    p = torch.nn.functional.pad(x, (rx + 1, rx, ry, ry, rz, rz))
    c = torch.cumsum(p, dim=-1)
    out = torch.zeros_like(x)
    for dz, dy, hw in rows:
        zs, ys = rz + dz, ry + dy
        blk = c[:, zs : zs + D, ys : ys + H]
        # sum over x-hw..x+hw = C[x+hw] - C[x-hw-1] in padded coordinates (offset rx+1)
        out += blk[..., rx + 1 + hw : rx + 1 + hw + W] - blk[..., rx - hw : rx - hw + W]
    return out


def local_intensity_features(
    values: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    spacing: tuple[float, float, float],
    radius_mm: float = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0),
) -> dict[str, torch.Tensor]:
    """IBSI local intensity features (family 9ST6), see :data:`LOCAL_FEATURES`.

    Neighbourhoods draw on every image voxel (inside the ROI or not) but never on padding.

    Args:
        values: float ``(B, D, H, W)`` intensities.
        mask: bool ROI intensity mask.
        valid: bool, True where a voxel belongs to the image (False on batch padding).
        spacing: voxel spacing ``(z, y, x)`` in mm, shared by the batch.
        radius_mm: sphere radius (1 cm^3 sphere by default).
    """
    rows = _sphere_rows(spacing, radius_mm, values.shape[1])
    vf = valid.to(torch.float64)
    x = values.to(torch.float64) * vf
    mean = _sphere_sum(x, rows) / _sphere_sum(vf, rows).clamp_min(1.0)
    xf, mf = x.flatten(1), mask.flatten(1)
    mean = mean.flatten(1)
    ninf = torch.tensor(float("-inf"), dtype=torch.float64, device=x.device)
    top = torch.where(mf, xf, ninf).amax(1, keepdim=True)
    at_top = mf & (xf == top)
    return {
        "loc_peak_loc": torch.where(at_top, mean, ninf).amax(1),
        "loc_peak_glob": torch.where(mf, mean, ninf).amax(1),
    }
