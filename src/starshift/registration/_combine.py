"""Combination of the per-star offsets of the fine step into one shift and its uncertainty.

:func:`_combine` sigma-clips the offsets against their noise model (scaled by the robust
spread of the normalised residuals), refuses matches that scatter too much (a wrong coarse
match), and averages the kept stars with :func:`_fit_errors`: a weighted mean whose star errors
``variance = b^2 background + q^2 Poisson + f^2`` are fitted to the stars' own scatter by
restricted maximum likelihood on a grid of ``(b, q, f)`` (weak priors keep ``b`` and ``q``
near 1, ``f >= sigma_floor``), so the uncertainty of the mean stays honest when the gain is
unknown or the noise model is off. Offsets are ``reference - frame`` in pixels, (axis, star)
arrays with x first.

Two systematic terms, added to that uncertainty by the caller, say how well the shift of the
pair of images is defined at all: :func:`_window_systematic` (the offsets move with the
centroid's window: a PSF asymmetry that changes) and :func:`_field_systematic` (the offsets
vary over the field: a rotation or scale change). Both are 0 unless the stars show them
significantly, so frames that are shifted copies of each other keep the noise-only sigma.
"""

from __future__ import annotations

import functools
import logging
import math

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



def _window_systematic(delta: np.ndarray, var: np.ndarray, min_stars: int = 5) -> np.ndarray:
    """The systematic error of a shift that moves with the centroid's window, per axis.

    ``delta`` (axis, star) holds each star's offset measured with the wide window minus that
    with the normal one (NaN: no wide centroid), ``var`` the stars' noise variances (their
    weights; only their ratios matter). For stars whose PSF is point-symmetric in both images
    the two agree to the noise; when the PSF's asymmetry changes from one image to the other
    (coma, tracking, focus, an undersampled core), every centroid definition gives another
    shift, and the shift of the pair is only defined to about their difference.

    The stars' weighted mean difference ``D`` (one 4-sigma clipping pass) and its error ``s``,
    from the stars' own scatter, give the systematic ``sqrt(max(0, D**2 - 4 s**2)) / 2``: 0
    unless the difference is significant (beyond 2 sigma), then about half of it (the shift is
    taken with the normal window; another reasonable definition, between the two windows or
    beyond, may well differ by half the distance between them). With fewer than
    ``min_stars`` stars: 0.
    """
    keep = np.isfinite(delta) & np.isfinite(var) & (var > 0)
    w = np.where(keep, 1.0 / np.where(keep, var, 1.0), 0.0)
    d = np.where(keep, delta, 0.0)
    for clip in (True, False):
        n = keep.sum(axis=1)
        if n.max() < min_stars:
            return np.zeros(delta.shape[0])
        sw = np.maximum(w.sum(axis=1), 1e-300)
        mean = (w * d).sum(axis=1) / sw
        # the error of the weighted mean from the scatter (its weights' scale cancels)
        scale2 = (w * (d - mean[:, None]) ** 2).sum(axis=1) / np.maximum(n - 1, 1)
        if clip:  # a neighbour in the wide window, a cosmic ray: one 4-sigma clipping pass
            keep &= (d - mean[:, None]) ** 2 * w <= 16.0 * scale2[:, None]
            w = np.where(keep, w, 0.0)
    excess = np.maximum(mean**2 - 4.0 * scale2 / sw, 0.0)
    return np.where(n >= min_stars, 0.5 * np.sqrt(excess), 0.0)


#: A similarity field (rotation, scale) counts when its chi-square for 2 degrees of freedom
#: exceeds this (3 sigma)
_FIELD_CHI2 = 11.83


def _field_systematic(d: np.ndarray, var: np.ndarray, xy: np.ndarray, centre: np.ndarray,
                      min_stars: int = 6) -> np.ndarray:
    """The systematic error of a shift under a field rotation or scale change, per axis.

    When the frame is rotated or rescaled relative to the reference, the stars' offsets ``d``
    (axis, star; noise variances ``var``) vary linearly over the field and no single shift
    holds everywhere. The estimate (the stars' weighted mean offset, per axis) is the shift at
    the stars' weighted mean position, which depends on which stars happen to be used. A
    similarity transform (shift, rotation and scale: ``d = s + G (p - p0)``, ``G = [[a, -b],
    [b, a]]``) fitted by weighted least squares to the offsets and reference positions ``xy``
    ((star, 2)) gives the two parts of that ambiguity, added in quadrature: the difference
    between the shift at the frame's ``centre`` and at the stars' mean position, and the
    scatter of the stars' mean position itself (the field's spread over the stars, divided
    by their effective number).

    Zero unless the rotation/scale is significant (its chi-square, with the parameters'
    errors scaled by the fit's Birge ratio, above ``_FIELD_CHI2``), or with fewer than
    ``min_stars`` stars.
    """
    n = d.shape[1]
    out = np.zeros(2)
    if n < min_stars or not np.all(np.isfinite(var)):
        return out
    x0, y0 = xy.mean(axis=0)
    u, v = xy[:, 0] - x0, xy[:, 1] - y0
    one, zero = np.ones(n), np.zeros(n)
    # the design of the x and y offsets (columns: s_x, s_y, a, b), and the normal equations
    rx = np.stack([one, zero, u, -v])
    ry = np.stack([zero, one, v, u])
    wx, wy = 1.0 / var[0], 1.0 / var[1]
    normal = (rx * wx) @ rx.T + (ry * wy) @ ry.T
    try:
        normal_inv = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return out
    theta = normal_inv @ ((rx * wx) @ d[0] + (ry * wy) @ d[1])
    chi2 = float(wx @ (d[0] - theta @ rx) ** 2 + wy @ (d[1] - theta @ ry) ** 2)
    a, b = theta[2:]
    cov = normal_inv[2:, 2:] * max(1.0, chi2 / (2 * n - 4))
    det = cov[0, 0] * cov[1, 1] - cov[0, 1] ** 2
    if not det > 0:
        return out
    # chi-square of (a, b) against 0, with the 2 x 2 inverse written out
    significance = (cov[1, 1] * a * a - 2.0 * cov[0, 1] * a * b + cov[0, 0] * b * b) / det
    if not significance > _FIELD_CHI2:
        return out
    cu, cv = centre[0] - x0, centre[1] - y0
    for axis, w, f, fc in ((0, wx, a * u - b * v, a * cu - b * cv),
                           (1, wy, b * u + a * v, b * cu + a * cv)):
        w = w / w.sum()
        mean = float(w @ f)  # the field's part of the estimate (at the stars' mean position)
        out[axis] = math.sqrt((fc - mean) ** 2 + float(w**2 @ (f - mean) ** 2))
    return out
