"""Photometry and sky of a frame: transparency against the reference, sky level and noise.

Functions
---------
transparency
    The clipped median of ``flux / ref_flux`` over matched stars (clouds lower it).
sky_stats
    The sky level and the pixel-to-pixel sky noise, robust to stars and gradients.
"""

from __future__ import annotations

import math

import numpy as np

from ._robust import clipped

__all__ = ["sky_stats", "transparency"]

#: Floor of the per-star spread of ln(flux / ref_flux): 0.1%, below any photometric precision,
#: so identical ratios (noise-free data) are not clipped for rounding errors.
_MIN_LOG_FLUX_SPREAD = 1e-3


def transparency(ref_flux: np.ndarray, flux: np.ndarray, used: np.ndarray | None = None,
                 clip: float = 3.0, min_stars: int = 3) -> tuple[float, int]:
    """A frame's transparency relative to the reference: the clipped median of flux ratios.

    Parameters
    ----------
    ref_flux, flux : (N,) arrays
        Each matched star's flux above the local background in the reference and in the frame,
        measured the same way (same aperture or window).
    used : (N,) bool array, optional
        Only these stars count (e.g. those that survived the shift's clipping).
    clip : float
        Stars whose ``ln(flux / ref_flux)`` is beyond ``clip`` MAD sigmas of the median are left
        out, iteratively: variable stars, cosmic rays, a star on a bad column do not matter.
    min_stars : int
        Fewer usable stars (positive, finite fluxes) than this give NaN.

    Returns
    -------
    transparency : float
        ``exp(median ln(flux / ref_flux))`` over the kept stars (1.0: as clear as the
        reference). A broader PSF lowers it for a fixed window.
    n : int
        Number of stars kept.
    """
    ref_flux = np.asarray(ref_flux, dtype=float)
    flux = np.asarray(flux, dtype=float)
    ok = np.isfinite(ref_flux) & np.isfinite(flux) & (ref_flux > 0) & (flux > 0)
    if used is not None:
        ok &= np.asarray(used, dtype=bool)
    if ok.sum() < min_stars:
        return float("nan"), int(ok.sum())
    med, _, keep = clipped(np.log(flux[ok] / ref_flux[ok]), clip, _MIN_LOG_FLUX_SPREAD)
    n = int(keep.sum())
    return (math.exp(med) if n >= min_stars else float("nan")), n


def sky_stats(data: np.ndarray, mask: np.ndarray | None = None, clip: float = 3.0,
              max_n: int = 40000) -> tuple[float, float]:
    """Sky level and sky noise of a frame, robust to stars, from a regular subsample.

    The level is the clipped median of at most ``max_n`` pixels; the noise is the clipped MAD
    sigma of the differences between those pixels and their right-hand neighbours, divided by
    ``sqrt(2)``: the pixel-to-pixel noise that limits a star's signal-to-noise ratio, without
    the large-scale structure of the background (vignetting, gradients, row banding) that the
    scatter of the pixels themselves would include. Stars, hot pixels and cosmic rays (a small
    fraction of the pixels and pairs) are clipped at ``clip`` MAD sigmas, iteratively. About
    2 ms for a 1-megapixel frame.

    Parameters
    ----------
    data : 2-D array
        The frame, as read: interpolation (a sub-pixel shift) correlates neighbouring pixels
        and would make the noise look lower.
    mask : 2-D bool array, optional
        True for pixels to ignore (a filled border, saturated stars). Non-finite pixels are
        always ignored.
    clip : float
        Clipping threshold, in MAD sigmas.
    max_n : int
        Size of the subsample.

    Returns
    -------
    sky, noise : float
        Data units; NaN when no pixel (no pair of neighbours, for the noise) is usable.
    """
    a = np.asarray(data)
    if a.ndim != 2:
        raise ValueError(f"sky_stats: expected a 2-D image, got shape {a.shape}")
    nx = a.shape[1]
    v = a.ravel()
    bad = None if mask is None else np.asarray(mask, dtype=bool).ravel()
    step = v.size // max_n + 1
    if step > 1 and nx % step == 0:
        step += 1  # a stride that divides the row length would sample the same columns only
    i = np.arange(0, v.size, step)
    level = v[i].astype(float)
    ok = np.isfinite(level) if bad is None else np.isfinite(level) & ~bad[i]
    sky = clipped(level[ok], clip)[0] if ok.any() else float("nan")
    pair = (i % nx) != nx - 1  # the right-hand neighbour is on the same row
    i, ok = i[pair], ok[pair]
    diff = v[i + 1].astype(float) - level[pair]
    ok &= np.isfinite(diff) if bad is None else np.isfinite(diff) & ~bad[i + 1]
    noise = clipped(diff[ok], clip)[1] / math.sqrt(2.0) if ok.any() else float("nan")
    return sky, noise
