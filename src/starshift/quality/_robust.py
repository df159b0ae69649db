"""Iterative sigma clipping, shared by the metrics and the rules of :mod:`starshift.quality`.

Functions
---------
clipped
    Median and floored MAD sigma of finite values after iterative sigma clipping.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._stats import MAD_TO_SIGMA, median

__all__ = ["clipped"]


def clipped(v: np.ndarray, clip: float, floor: float | Callable[[float], float] = 0.0,
            max_iter: int = 10) -> tuple[float, float, np.ndarray]:
    """Median and MAD sigma of the finite values of ``v`` after iterative sigma clipping.

    Values farther than ``clip`` spreads from the median are left out and both statistics are
    computed again, until the kept set no longer changes. The spread is floored at ``floor``
    (a number, or a function of the median), so identical values do not make everything else
    an outlier. Returns ``(median, spread, kept)``, ``kept`` a boolean mask over ``v`` (NaN
    statistics and an empty mask when no value is finite).
    """
    v = np.asarray(v, dtype=float)
    finite = np.isfinite(v)
    if not finite.any():
        return float("nan"), float("nan"), finite

    def stats(keep: np.ndarray) -> tuple[float, float]:
        kv = v[keep]
        med = median(kv)
        return med, max(MAD_TO_SIGMA * median(np.abs(kv - med)),
                        floor(med) if callable(floor) else floor)

    keep = finite
    for _ in range(max_iter):
        med, spread = stats(keep)
        new = finite & (np.abs(v - med) <= clip * spread)
        if np.array_equal(new, keep) or not new.any():
            return med, spread, keep
        keep = new
    return (*stats(keep), keep)
