"""Combination of the per-star offsets of the fine step into one shift and its uncertainty.

:func:`_combine` sigma-clips the offsets against their noise model (scaled by the robust
spread of the normalised residuals), refuses matches that scatter too much (a wrong coarse
match), and averages the kept stars with :func:`_fit_errors`: a weighted mean whose star errors
``variance = b^2 background + q^2 Poisson + f^2`` are fitted to the stars' own scatter by
restricted maximum likelihood on a grid of ``(b, q, f)`` (weak priors keep ``b`` and ``q``
near 1, ``f >= sigma_floor``), so the uncertainty of the mean stays honest when the gain is
unknown or the noise model is off. Offsets are ``reference - frame`` in pixels, (axis, star)
arrays with x first.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from .._stats import MAD_TO_SIGMA, row_medians
from ._params import FrameParams

log = logging.getLogger(__name__)


def _combine(d: np.ndarray, m2: np.ndarray, p: FrameParams
             ) -> tuple[float, float, float, float, int, np.ndarray] | None:
    """Combine per-star offsets: sigma clipping, then a weighted mean with fitted star errors.

    ``d`` holds the offsets (axis, star), ``m2`` their noise-model variances (axis, part,
    star; parts: background, Poisson). Stars are clipped against the model plus
    ``sigma_floor**2``, scaled by the robust spread of the normalised residuals; the kept
    stars' offsets are then averaged with weights from :func:`_fit_errors`.

    Returns ``(dx, dy, sigma_dx, sigma_dy, n_used, used)`` (``used``: the stars' mask after
    clipping), or None when fewer than ``min_stars`` survive or they scatter more than
    ``max_star_scatter``.
    """
    v = m2[:, 0] + m2[:, 1]
    v += p.sigma_floor**2
    sd = np.sqrt(v)
    use = None  # all stars
    mu = row_medians(d)
    for _ in range(10):
        z = np.abs(d - mu[:, None])
        z /= sd
        # robust spread of normalised residuals of the kept stars (>= 1: model is a floor)
        spread = MAD_TO_SIGMA * row_medians(z if use is None else z[:, use])
        new = (z <= p.clip_sigma * np.maximum(spread, 1.0)[:, None]).all(axis=0)
        n = int(np.count_nonzero(new))
        if n < p.min_stars:
            return None
        if n == new.size:
            w = 1.0 / v
            mu = (w * d).sum(axis=1) / w.sum(axis=1)
        else:
            w = 1.0 / v[:, new]
            mu = (w * d[:, new]).sum(axis=1) / w.sum(axis=1)
        if (use is None and n == new.size) or (use is not None and np.array_equal(new, use)):
            use = new
            break
        use = new
    # robust absolute scatter: a wrong coarse match gives offsets spread over the search box
    scat = MAD_TO_SIGMA * float(row_medians(np.abs(d[:, use] - mu[:, None])).max())
    if scat > p.max_star_scatter:
        log.debug("star offsets scatter %.2f px > max_star_scatter; not trusted", scat)
        return None
    mean, sdm = _fit_errors(d[:, use], m2[:, :, use], p.sigma_floor)
    return float(mean[0]), float(mean[1]), float(sdm[0]), float(sdm[1]), n, use


_GRID_B = np.exp(np.linspace(np.log(0.35), np.log(3.0), 7))  # scale of the background part
_GRID_P = np.exp(np.linspace(np.log(0.2), np.log(5.0), 7))  # scale of the Poisson part
_PRIOR = (-0.5 * (np.log(_GRID_B) / 0.5) ** 2)[:, None, None] + (
    -0.5 * (np.log(_GRID_P) / 1.2) ** 2)[None, :, None]
_PRIOR_FLAT = np.broadcast_to(_PRIOR, (7, 7, 8)).reshape(-1)  # over (b, q, f), f: 8 floors


@functools.lru_cache(maxsize=8)
def _model_coef(floor: float) -> np.ndarray:
    """(392, 3) float32 ``b^2, q^2, f^2`` of each (b, q, f) model of :func:`_fit_errors`."""
    lo = max(floor, 1e-4)
    floors = np.concatenate([[lo], np.exp(np.linspace(np.log(lo * 1.6), np.log(lo + 0.3), 7))])
    b, q, f = np.meshgrid(_GRID_B**2, _GRID_P**2, floors**2, indexing="ij")
    coef = np.stack([b.ravel(), q.ravel(), f.ravel()], axis=1).astype(np.float32)
    coef.flags.writeable = False  # shared by every call
    return coef


def _fit_errors(d: np.ndarray, m2: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of offsets ``d`` and its 1-sigma error, with star errors fitted to them.

    ``d`` is (axes, n), ``m2`` (axes, 2, n); returns the means and errors per axis. A star's
    variance is modelled as ``b**2 * m2[:, 0] + q**2 * m2[:, 1] + f**2``: the background
    part of the noise model scaled by ``b``, its Poisson part scaled by ``q`` (the gain may be
    unknown or wrong), and a systematic floor ``f >= floor`` (PSF changes, pixel phase, faint
    neighbours). With at least 8 stars ``b, q, f`` are fitted by restricted maximum likelihood
    (REML) on a grid, with weak priors keeping ``b`` within ~1.6x and ``q`` within ~3x of 1;
    with fewer, the model is used with ``f = floor`` and scaled by the Birge ratio shrunk
    towards 1 with 3 pseudo degrees of freedom. The error of the mean is
    ``1 / sqrt(sum(1 / variance))``.
    """
    na, n = d.shape
    if n < 8:
        w = 1.0 / (m2[:, 0] + m2[:, 1] + floor**2)
        sw = w.sum(axis=1)
        mean = (w * d).sum(axis=1) / sw
        chi2 = (w * (d - mean[:, None]) ** 2).sum(axis=1)
        scale2 = (chi2 + 3.0) / (n - 1 + 3.0)
        return mean, np.sqrt(scale2 / sw)
    # every model's star variances by one product, (models, 3) @ (axes, 3, n), in float32 and
    # relative to each star's model variance (ample for comparing likelihoods, and fast): the
    # sums of their logarithms (as logarithms of products of 8, the stars padded with ones)
    # then change by a constant, and the weights are divided by it below
    inv = 1.0 / (m2[:, 0] + m2[:, 1] + floor**2)  # (axes, n)
    n8 = -(-n // 8) * 8
    parts = np.zeros((na, 3, n8), np.float32)
    np.multiply(m2, inv[:, None, :], out=parts[:, :2, :n], casting="same_kind")
    parts[:, 2, :n] = inv
    v = np.matmul(_model_coef(floor), parts)  # (axes, models, n8)
    v[:, :, n:] = 1.0
    prod = v[:, :, 0::2] * v[:, :, 1::2]
    prod = prod[:, :, 0::2] * prod[:, :, 1::2]
    prod = prod[:, :, 0::2] * prod[:, :, 1::2]
    logdet = np.log(prod).sum(axis=2).astype(np.float64)
    np.reciprocal(v, out=v)
    # weighted sums of 1, d and d^2 (d about its median: no cancellation) by one product
    d0 = row_medians(d)
    basis = np.zeros((na, n8, 3), np.float32)
    dc = d - d0[:, None]
    basis[:, :n, 0] = inv
    basis[:, :n, 1] = dc * inv
    basis[:, :n, 2] = dc * basis[:, :n, 1]
    mom = np.matmul(v, basis).astype(np.float64)  # (axes, models, 3)
    sw, s1, s2 = mom[..., 0], mom[..., 1], mom[..., 2]
    mean = s1 / sw
    chi2 = s2 - s1 * mean  # sum of w (d - mean)^2
    loglik = -0.5 * (logdet + chi2 + np.log(sw)) + _PRIOR_FLAT
    i = np.argmax(loglik, axis=1)
    ax = np.arange(na)
    return d0 + mean[ax, i], 1.0 / np.sqrt(sw[ax, i])

