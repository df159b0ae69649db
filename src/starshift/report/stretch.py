"""Display stretches and block means for the report's images. Pure functions on arrays.

An asinh stretch shows faint sky noise and bright star cores in one image: linear near the sky,
logarithmic far above it, so a star's core is graded up to its peak instead of a saturated
disk. Its softening is chosen from the data so that one sky-noise sigma spans a stated number of
grey levels: that number sets how the sky looks, and how well a GIF or PNG of it compresses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._stats import MAD_TO_SIGMA, median

#: Grey levels per sky-noise sigma at the sky (of 256): the sky's texture is visible, and the
#: noise costs few bits per pixel in a GIF.
NOISE_LEVELS = 3.0
#: The black point, in sky-noise sigmas below the sky.
BELOW_SKY = 2.0


@dataclass(frozen=True)
class AsinhStretch:
    """``t = asinh((v - lo) / soft) / asinh((hi - lo) / soft)``, clipped to [0, 1].

    ``lo`` maps to black (0), ``hi`` to white (1); ``soft`` (data units) is where the stretch
    turns from linear to logarithmic. NaN stays NaN.
    """

    lo: float
    hi: float
    soft: float

    @property
    def _norm(self) -> float:
        return math.asinh((self.hi - self.lo) / self.soft)

    def __call__(self, values) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        with np.errstate(invalid="ignore"):
            t = np.arcsinh((v - self.lo) / self.soft) / self._norm
            return np.where(np.isnan(t), np.nan, np.clip(t, 0.0, 1.0))

    def inverse(self, t) -> np.ndarray:
        """The data value shown at stretched value ``t`` (0..1)."""
        return self.lo + self.soft * np.sinh(np.asarray(t, dtype=float) * self._norm)


def robust_sky(data: np.ndarray) -> tuple[float, float]:
    """Median and MAD sigma of the finite values of ``data`` (the sky of a star field)."""
    v = np.asarray(data, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    med = median(v)
    sigma = MAD_TO_SIGMA * median(np.abs(v - med))
    return med, sigma if sigma > 0 else max(float(np.std(v)), 1e-12)


def asinh_stretch(data: np.ndarray, *, hi: float | None = None,
                  noise_levels: float = NOISE_LEVELS, below: float = BELOW_SKY,
                  grey_levels: int = 256) -> AsinhStretch:
    """An asinh stretch for ``data``: black ``below`` sky sigmas under the sky (its median;
    negative: above it), white at ``hi`` (default: the largest finite value), and a softening
    such that, just above the black point, one sky sigma spans ``noise_levels`` of
    ``grey_levels`` grey levels (or as close as the stretch can: at most linear).
    """
    sky, sigma = robust_sky(data)
    v = np.asarray(data, dtype=float)
    top = float(np.nanmax(v)) if hi is None and np.isfinite(v).any() else hi
    lo = sky - below * sigma
    if top is None or not top > lo + sigma:
        top = lo + 10.0 * sigma
    span = top - lo

    def levels(k: float) -> float:  # grey levels of one sigma above lo, softening k sigma
        return (grey_levels - 1) / (k * math.asinh(span / (k * sigma)))  # decreasing in k

    k_lo, k_hi = 1e-3, 1e6 * max(1.0, span / sigma)
    if levels(k_lo) <= noise_levels:
        k = k_lo
    elif levels(k_hi) >= noise_levels:
        k = k_hi
    else:
        for _ in range(80):  # bisection in log k: deterministic, ample precision
            mid = math.sqrt(k_lo * k_hi)
            k_lo, k_hi = (mid, k_hi) if levels(mid) > noise_levels else (k_lo, mid)
        k = math.sqrt(k_lo * k_hi)
    return AsinhStretch(lo, top, k * sigma)


def _area_mean(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """``a`` averaged along ``axis`` onto ``n_out`` equal bins: each output value is the
    integral of the piecewise-constant pixels over its bin, divided by the bin's width."""
    n = a.shape[axis]
    a = np.moveaxis(a, axis, 0)
    cum = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0)])  # S at integers
    edges = np.arange(n_out + 1) * (n / n_out)
    k = np.minimum(np.floor(edges).astype(int), n - 1)
    frac = (edges - k)[(...,) + (None,) * (a.ndim - 1)]
    s = cum[k] + frac * a[k]  # the integral from 0 to each edge
    return np.moveaxis((s[1:] - s[:-1]) / (n / n_out), 0, axis)


def block_mean(data: np.ndarray, width: int) -> np.ndarray:
    """``data`` resampled to ``width`` columns (rows in proportion) by area averaging: each
    output pixel is the area-weighted mean of the input pixels it covers (a block mean, for a
    non-integer block too; the mean of the image is kept). NaN pixels count as the median of
    the finite ones. Never enlarges.
    """
    a = np.asarray(data, dtype=float)
    ny, nx = a.shape
    width = int(min(max(1, width), nx))
    height = max(1, int(round(ny * width / nx)))
    if (height, width) == a.shape:
        return a.copy()
    bad = ~np.isfinite(a)
    if bad.any():
        a = np.where(bad, median(a[~bad]) if (~bad).any() else 0.0, a)
    return _area_mean(_area_mean(a, height, 0), width, 1)
