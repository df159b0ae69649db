"""Per-frame quality metrics and the rules that reject frames. Pure functions on arrays.

A frame spoiled by a tracking jump or wind shake has doubled or trailed stars: its stars are
elongated and broader than the night's. :func:`star_shapes` measures, at known star positions
(the reference's isolated stars, in an aligned frame), the second moments of each star's light
above the local background, and returns the median FWHM and elongation ``1 - b/a``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def star_shapes(data: np.ndarray, positions: np.ndarray, radius: int = 10,
                threshold: float = 3.0, min_peak_snr: float = 15.0, min_stars: int = 5
                ) -> tuple[float, float, int]:
    """Median FWHM (px) and elongation (1 - b/a) of the stars at ``positions``.

    Parameters
    ----------
    data : 2-D array
        An image (aligned onto the reference, so reference positions apply).
    positions : (N, 2) array
        Star positions (x, y), pixels.
    radius : int
        Half-size of the square cutout in which moments are measured; it must reach beyond a
        doubled star's second image (a tracking jump of up to ``radius`` px is caught).
    threshold : float
        Only pixels this many noise sigmas above the cutout's border median count.
    min_peak_snr : float
        A star counts only if its brightest pixel is this many noise sigmas above the background
        (faint stars' moments are dominated by noise).
    min_stars : int
        Fewer measurable stars than this give NaN: no verdict rather than a noisy one.

    Returns
    -------
    fwhm, elongation : float
        Medians over the stars that could be measured (NaN when none could).
    n : int
        Number of stars measured.
    """
    data = np.asarray(data, dtype=float)
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    ny, nx = data.shape
    ix, iy = np.rint(pos[:, 0]).astype(int), np.rint(pos[:, 1]).astype(int)
    inside = (ix >= radius) & (iy >= radius) & (ix < nx - radius) & (iy < ny - radius)
    ix, iy = ix[inside], iy[inside]
    if ix.size == 0:
        return float("nan"), float("nan"), 0
    off = np.arange(-radius, radius + 1)
    stack = data[iy[:, None, None] + off[None, :, None], ix[:, None, None] + off[None, None, :]]
    # a 3x3 median removes hot pixels and cosmic rays, which would dominate second moments
    stack = ndimage.median_filter(stack, size=(1, 3, 3), mode="nearest")
    # background per cutout row, from the columns outside the star's core: row banding (a
    # common fixed pattern of small cameras) would otherwise make every star look elongated
    outer = np.abs(off) > radius // 2
    bkg = np.nanmedian(stack[:, :, outer], axis=2)  # (n, rows)
    flat = stack - bkg[:, :, None]
    noise = 1.4826 * np.nanmedian(np.abs(flat[:, :, outer]).reshape(len(flat), -1), axis=1)
    w = flat
    w = np.where(np.isfinite(w) & (w > threshold * noise[:, None, None]), w, 0.0)
    m = w.sum(axis=(1, 2))
    peak = w.max(axis=(1, 2))
    ok = (m > 0) & ((w > 0).sum(axis=(1, 2)) >= 3) & (peak > min_peak_snr * noise)
    if ok.sum() < min_stars:
        return float("nan"), float("nan"), 0
    w, m = w[ok], m[ok]
    yy, xx = np.meshgrid(off, off, indexing="ij")
    mx = (w * xx).sum(axis=(1, 2)) / m
    my = (w * yy).sum(axis=(1, 2)) / m
    dx, dy = xx[None] - mx[:, None, None], yy[None] - my[:, None, None]
    sxx = (w * dx * dx).sum(axis=(1, 2)) / m
    syy = (w * dy * dy).sum(axis=(1, 2)) / m
    sxy = (w * dx * dy).sum(axis=(1, 2)) / m
    half_trace = (sxx + syy) / 2
    d = np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    major = np.maximum(half_trace + d, 1e-12)
    minor = np.clip(half_trace - d, 0.0, None)
    fwhm = FWHM_PER_SIGMA * np.sqrt(half_trace)
    elong = 1.0 - np.sqrt(minor / major)
    return float(np.median(fwhm)), float(np.median(elong)), int(ok.sum())


def shape_rejection(fwhm: float, elongation: float, night_fwhm: float | None,
                    max_elongation: float | None, max_fwhm_ratio: float | None) -> str:
    """Why a frame's star shapes disqualify it ('' when they do not)."""
    if max_elongation is not None and np.isfinite(elongation) and elongation > max_elongation:
        return (f"stars elongated ({elongation:.2f} > {max_elongation:g}): trailed or doubled, "
                "e.g. a tracking jump")
    if (max_fwhm_ratio is not None and night_fwhm and np.isfinite(fwhm)
            and np.isfinite(night_fwhm) and fwhm > max_fwhm_ratio * night_fwhm):
        return (f"stars broad (FWHM {fwhm:.1f} px > {max_fwhm_ratio:g} x night median "
                f"{night_fwhm:.1f} px)")
    return ""
