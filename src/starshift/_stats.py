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

    On a large array (over ``_BRACKET_MIN`` values, a 1 MP frame) the median is first
    bracketed by two values read off a sorted regular subsample, and only the values between
    them (a few percent) are copied and partially sorted: the counts below and above prove
    the bracket holds the median, else the whole array is sorted as before. Same value,
    without a copy of the whole frame: 0.08 s instead of 0.3 s on a 26 MP frame.

    ``common`` names a value that many pixels may share, such as the fill value of a shifted
    frame. Partial sorting slows down several-fold on a large block of equal values, so those
    pixels are counted and set aside first; the result is the same.
    """
    a = np.asarray(data).ravel()
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    found = _bracketed(a, common) if a.size > _BRACKET_MIN else None
    if found is None:
        nan = np.isnan(a)
        part = a[~nan] if nan.any() else a.copy() if a is data or a.base is not None else a
        found = part, _middle(part.size), 0
    part, ks, offset = found
    if not ks:
        return float("nan")
    vals = _order_stats(part, [k - offset for k in ks], common)
    if len(vals) == 1:
        return vals[0]
    return float(np.mean(np.array(vals, dtype=a.dtype), dtype=a.dtype))


#: arrays larger than this have their median bracketed first (see :func:`median`)
_BRACKET_MIN = 1 << 20

#: bytes of a frame handled at a time by passes that need no whole-frame temporary (reading
#: and writing frames, the median's bracket, counts): a few MB, in the CPU cache's reach
CHUNK_BYTES = 4 << 20


def block_rows(row_bytes: int) -> int:
    """How many rows of ``row_bytes`` each make about :data:`CHUNK_BYTES` (at least one)."""
    return max(CHUNK_BYTES // max(row_bytes, 1), 1)


def blocks(a: np.ndarray):
    """Consecutive pieces (views) of the 1-D array ``a`` of about :data:`CHUNK_BYTES`."""
    step = block_rows(a.itemsize)
    for i in range(0, a.size, step):
        yield a[i: i + step]


def counts(a: np.ndarray, value: float) -> tuple[int, int, int]:
    """How many values of ``a`` are below ``value``, above it, and NaN, a block at a time."""
    below = above = nan = 0
    for c in blocks(np.asarray(a).reshape(-1)):
        below += int(np.count_nonzero(c < value))
        above += int(np.count_nonzero(c > value))
        nan += int(np.count_nonzero(np.isnan(c)))
    return below, above, nan


def _middle(n: int) -> list[int]:
    """The order statistics whose mean is the median of ``n`` values (none when empty)."""
    if n == 0:
        return []
    return [n // 2] if n % 2 else [n // 2 - 1, n // 2]


def _bracketed(a: np.ndarray, common: float | None):
    """(the values of ``a`` between two bounds, the median's order statistics, how many
    values lie below the bounds), or None when the bounds do not hold the median."""
    sample = a[:: a.size // 20000]
    sample = np.sort(sample[~np.isnan(sample)])
    m = sample.size
    if m < 1000:
        return None
    w = int(4.0 * np.sqrt(m)) + 1  # the median's rank in the sample: m/2 +- sqrt(m)/2 (1 sd)
    lo, hi = sample[max(m // 2 - w, 0)], sample[min(m // 2 + w, m - 1)]
    below = above = 0
    parts = []
    for c in blocks(a):  # each block's passes stay in the cache (26 MP: 0.10 s -> 0.07 s)
        below += int(np.count_nonzero(c < lo))
        above += int(np.count_nonzero(c > hi))
        inside = c >= lo
        inside &= c <= hi
        parts.append(c[inside])
    part = np.concatenate(parts)
    ks = _middle(below + part.size + above)
    if not all(below <= k < below + part.size for k in ks):
        return None
    return part, ks, below


def _order_stats(a: np.ndarray, ks: list[int], common: float | None) -> list[float]:
    """Order statistics ``ks`` (one or two neighbours) of ``a`` (no NaN; reordered)."""
    n = a.size
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
        a.partition(j)
        stats[j] = a[j]
        if j - 1 in rest.values():
            stats[j - 1] = a[:j].max()
    return [float(common) if k not in rest else float(stats[rest[k]]) for k in ks]


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
