"""Robust statistics used across starshift, each defined once.

Constants
---------
MAD_TO_SIGMA : the median absolute deviation of a Gaussian times this is its standard deviation.
FWHM_PER_SIGMA : a Gaussian's full width at half maximum per standard deviation, 2 sqrt(2 ln 2).
"""

from __future__ import annotations

import numpy as np

#: MAD of a normal distribution -> its standard deviation (1 / Phi^-1(3/4)).
MAD_TO_SIGMA = 1.4826
#: FWHM of a Gaussian per sigma, 2 sqrt(2 ln 2) = 2.35482.
FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))


def median(data: np.ndarray, common: float | None = None) -> float:
    """Exact median of an array, NaNs ignored (same value as ``np.nanmedian``).

    One partial sort instead of ``np.median``'s two-point selection: about 6x faster on a
    765 x 510 frame (0.7 ms instead of 4 ms), which matters because every frame needs it for
    the fill value, the background and the seed's centroid.

    ``common`` names a value that many pixels may share, such as the fill value of a shifted
    frame. Partial sorting slows down several-fold on a large block of equal values, so those
    pixels are counted and set aside first; the result is the same.
    """
    a = np.asarray(data).ravel()
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    nan = np.isnan(a)
    a = a[~nan] if nan.any() else a
    n = a.size
    if n == 0:
        return float("nan")
    ks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    n_eq = n_lt = 0
    if common is not None and not np.isnan(common):
        eq = a == common
        n_eq = int(np.count_nonzero(eq))
        if n_eq > n // 16:
            a = a[~eq]
            n_lt = int(np.count_nonzero(a < common))
        else:
            n_eq = 0
    # order statistic k of the whole array: the common value, or one of the rest (index j)
    rest = {k: (k if k < n_lt else k - n_eq) for k in ks if not n_lt <= k < n_lt + n_eq}
    stats = {}
    if rest:
        # one selection at the highest index; the one below it (even sizes) is the maximum
        # of the lower part (numpy's multi-index partition is several times slower)
        j = max(rest.values())
        part = a.copy() if a is data or a.base is not None else a
        part.partition(j)
        stats[j] = part[j]
        if j - 1 in rest.values():
            stats[j - 1] = part[:j].max()
    vals = [float(common) if k not in rest else float(stats[rest[k]]) for k in ks]
    if len(vals) == 1:
        return vals[0]
    return float(np.mean(np.array(vals, dtype=a.dtype), dtype=a.dtype))



def sampled_median(a: np.ndarray, max_n: int = 40000) -> float:
    """Upper median of a regular subsample of at most ``max_n`` values of ``a`` (0 when empty).

    Fast and robust enough for a noise or background level; not the exact median.
    """
    v = a.ravel()
    if v.size > max_n:
        v = v[:: v.size // max_n + 1]
    if v.size == 0:
        return 0.0
    k = v.size // 2
    return float(np.partition(v, k)[k])


def mad_sigma(a: np.ndarray, max_n: int = 40000, bad: np.ndarray | None = None) -> float:
    """Robust (MAD) standard deviation of (a regular subsample of) ``a``, ignoring ``bad``."""
    v = a.ravel() if bad is None else a[~bad]
    if v.size > max_n:
        v = v[:: v.size // max_n + 1]
    med = sampled_median(v)
    return MAD_TO_SIGMA * sampled_median(np.abs(v - med))


def row_medians(a: np.ndarray) -> np.ndarray:
    """Exact median of each row of a small 2-D array (cheaper than ``np.median`` there)."""
    n = a.shape[1]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=1)[:, k]
    part = np.partition(a, (k - 1, k), axis=1)
    return 0.5 * (part[:, k - 1] + part[:, k])


def small_median(v: np.ndarray) -> float:
    """Exact median of a small 1-D array."""
    return float(row_medians(v[None, :])[0])
