"""Geometry of a frame against the reference: fitted transforms and what a shift leaves.

The positions of the stars matched between a frame and the reference give the rotation, scale
and translation that map one onto the other (:func:`similarity_fit`, :func:`affine_fit`, both
sigma-clipped); :func:`corner_misalignment` is the largest misalignment that a pure shift
leaves inside the frame when it is in fact rotated or scaled. Conventions (x first, the sign of
the rotation) are those of :mod:`starshift.quality`.

Classes
-------
Transform
    A fitted 2-D linear transform, ``ref = matrix @ frame + translation``.

Functions
---------
similarity_fit
    Rotation, scale and translation, sigma-clipped.
affine_fit
    A general 2 x 2 matrix and translation, sigma-clipped.
corner_misalignment
    The largest misalignment (px) a pure shift leaves at the frame's corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._stats import MAD_TO_SIGMA, median

__all__ = ["Transform", "affine_fit", "corner_misalignment", "similarity_fit"]


@dataclass(frozen=True, eq=False)
class Transform:
    """A 2-D linear transform fitted to star positions: ``ref = matrix @ frame + translation``.

    Attributes
    ----------
    matrix : (2, 2) ndarray
        Linear part acting on ``(x, y)`` column vectors (NaN when the fit failed).
    translation : (2,) ndarray
        Where the frame's origin ``(0, 0)`` lands in the reference, ``(tx, ty)`` px.
    rms : float
        Root mean square distance (px) between the reference positions and the transformed
        frame positions, over the points kept by the clipping.
    n : int
        Number of points the fit was made from (after clipping).
    used : ndarray of bool
        Which input points the fit kept (all False when it failed).
    """

    matrix: np.ndarray
    translation: np.ndarray
    rms: float
    n: int
    used: np.ndarray

    @property
    def ok(self) -> bool:
        """True when the fit succeeded (finite matrix and translation)."""
        return bool(np.isfinite(self.matrix).all() and np.isfinite(self.translation).all())

    @property
    def rotation(self) -> float:
        """Rotation in degrees, positive from +x towards +y (conventions: :mod:`starshift.quality`).

        For an affine matrix, the rotation of the closest similarity,
        ``atan2(m10 - m01, m00 + m11)``.
        """
        m = self.matrix
        return math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))

    @property
    def scale(self) -> float:
        """Scale factor (reference px per frame px): ``sqrt(|det matrix|)``."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix))))

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Reference positions of frame positions ``xy`` ((N, 2) or (2,), x first)."""
        xy = np.asarray(xy, dtype=float)
        return xy @ self.matrix.T + self.translation

    def displacement(self, xy: np.ndarray) -> np.ndarray:
        """``apply(xy) - xy``: the local shift (dx, dy) that moves each point onto the reference."""
        xy = np.asarray(xy, dtype=float)
        return self.apply(xy) - xy


def _solve_similarity(p: np.ndarray, q: np.ndarray, w: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Weighted least-squares similarity ``q = [[a, -b], [b, a]] p + t`` (closed form)."""
    sw = w.sum()
    pc, qc = (w @ p) / sw, (w @ q) / sw
    dp, dq = p - pc, q - qc
    norm = float(w @ (dp * dp).sum(axis=1))
    if not norm > 0:
        return None
    a = float(w @ (dp * dq).sum(axis=1)) / norm
    b = float(w @ (dp[:, 0] * dq[:, 1] - dp[:, 1] * dq[:, 0])) / norm
    m = np.array([[a, -b], [b, a]])
    return m, qc - m @ pc


def _solve_affine(p: np.ndarray, q: np.ndarray, w: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Weighted least-squares affine ``q = M p + t``."""
    sw = w.sum()
    pc, qc = (w @ p) / sw, (w @ q) / sw
    sq = np.sqrt(w)[:, None]
    sol, _, rank, _ = np.linalg.lstsq((p - pc) * sq, (q - qc) * sq, rcond=None)
    if rank < 2:
        return None
    m = sol.T
    return m, qc - m @ pc


def _robust_fit(ref_xy, frame_xy, weights, solve, min_points: int, clip: float,
                min_sigma: float, max_iter: int) -> Transform:
    """Fit ``solve`` to the points, iteratively dropping outliers beyond ``clip`` sigmas.

    The residual sigma is the MAD sigma of the residual components (normalised by the square
    root of the relative weights), floored at ``min_sigma``; a point is an outlier when its
    normalised residual distance is as improbable as a ``clip``-sigma deviation in one
    dimension (for 2-D Gaussian residuals, beyond ``sqrt(-2 ln erfc(clip / sqrt 2))`` sigmas:
    3.44 for ``clip = 3``). Clipping never goes below ``min_points``.
    """
    radius = math.sqrt(-2.0 * math.log(math.erfc(clip / math.sqrt(2.0))))
    q = np.asarray(ref_xy, dtype=float).reshape(-1, 2)
    p = np.asarray(frame_xy, dtype=float).reshape(-1, 2)
    if p.shape != q.shape:
        raise ValueError(f"ref_xy and frame_xy differ in shape: {q.shape} and {p.shape}")
    w = (np.ones(len(p)) if weights is None
         else np.broadcast_to(np.asarray(weights, dtype=float), (len(p),)).copy())
    good = np.isfinite(p).all(axis=1) & np.isfinite(q).all(axis=1) & np.isfinite(w) & (w > 0)
    nan = np.full(2, np.nan)
    failed = Transform(np.full((2, 2), np.nan), nan, float("nan"), int(good.sum()),
                       np.zeros(len(p), dtype=bool))
    if good.sum() < min_points:
        return failed
    w = np.where(good, w, 0.0)
    zscale = np.sqrt(w / median(w[good]))
    use = good
    fit = None
    for _ in range(max_iter):
        fit = solve(p[use], q[use], w[use])
        if fit is None:
            return failed
        r = q - (p @ fit[0].T + fit[1])
        z = r * zscale[:, None]
        sigma = max(MAD_TO_SIGMA * median(np.abs(z[use])), min_sigma)
        new = good & (np.hypot(z[:, 0], z[:, 1]) <= radius * sigma)
        if new.sum() < min_points or np.array_equal(new, use):
            break
        use = new
    else:  # did not converge: the last clipped set, refitted
        fit = solve(p[use], q[use], w[use])
        if fit is None:
            return failed
    m, t = fit
    r = q[use] - (p[use] @ m.T + t)
    rms = float(np.sqrt(np.mean((r * r).sum(axis=1))))
    return Transform(m, t, rms, int(use.sum()), use)


def similarity_fit(ref_xy: np.ndarray, frame_xy: np.ndarray, weights: np.ndarray | None = None,
                   clip: float = 3.0, min_sigma: float = 1e-3, max_iter: int = 10,
                   min_points: int = 3) -> Transform:
    """Least-squares 2-D similarity (rotation, scale, translation) of frame onto reference.

    Fits ``ref = s R(theta) frame + t`` to matched star positions, iteratively sigma-clipping
    outliers (mismatched stars, a cosmic ray on a centroid, a variable star's blend).

    Parameters
    ----------
    ref_xy : (N, 2) array
        Star positions in the reference, x first, px.
    frame_xy : (N, 2) array
        The same stars in the frame (frame pixel coordinates).
    weights : (N,) array, optional
        Relative weights, e.g. ``1 / sigma**2`` of each star's position; points with a
        non-positive or non-finite weight or position are ignored.
    clip : float
        A point is an outlier when its residual distance is as improbable as a ``clip``-sigma
        deviation in one dimension (3.44 robust residual sigmas for 3; the sigma is the MAD
        sigma of the residual components).
    min_sigma : float
        Floor of the residual sigma, px: 0.001 px is far below any centroid's precision, so
        noise-free positions are not clipped for rounding errors.
    max_iter : int
        Maximum number of clipping iterations.
    min_points : int
        Fewer usable points than this (default 3: two determine a similarity, the third checks
        it) give a failed fit; clipping never goes below it.

    Returns
    -------
    Transform
        ``rotation`` (deg, positive from +x towards +y: counter-clockwise with row 0 at the
        bottom of the display), ``scale``, ``translation`` (where the frame's origin lands),
        ``rms`` (px), ``n`` and ``used``. All NaN (``ok`` False) when it cannot be fitted.

    Notes
    -----
    The translation is that of the frame's origin; the shift at another point ``(x, y)`` is
    ``transform.displacement((x, y))``. For a frame rotated by ``theta`` about its centre, the
    fitted rotation is ``-theta`` (the rotation that brings it back).
    """
    return _robust_fit(ref_xy, frame_xy, weights, _solve_similarity, min_points, clip,
                       min_sigma, max_iter)


def affine_fit(ref_xy: np.ndarray, frame_xy: np.ndarray, weights: np.ndarray | None = None,
               clip: float = 3.0, min_sigma: float = 1e-3, max_iter: int = 10,
               min_points: int = 4) -> Transform:
    """Least-squares 2-D affine transform of frame onto reference, sigma-clipped.

    As :func:`similarity_fit`, with a general 2 x 2 matrix (adds shear and unequal scales,
    e.g. differential refraction). ``rotation`` and ``scale`` of the result are those of the
    closest similarity. ``min_points`` defaults to 4 (three determine an affine transform).
    """
    return _robust_fit(ref_xy, frame_xy, weights, _solve_affine, min_points, clip, min_sigma,
                       max_iter)


def corner_misalignment(shape: tuple[int, int], transform: Transform,
                        shift: tuple[float, float] | None = None) -> float:
    """The largest misalignment (px) that a pure shift leaves inside the frame.

    Compares, at the frame's four corner pixels, where ``transform`` puts them in the reference
    with where the shift ``(dx, dy)`` puts them, and returns the largest distance. The
    misalignment ``|transform(p) - (p + shift)|`` is the norm of an affine function of ``p``,
    hence convex: over the frame (a rectangle) it is largest at a corner, so edge midpoints or
    interior points never exceed it.

    Parameters
    ----------
    shape : (ny, nx)
        The frame's shape (numpy order).
    transform : Transform
        Fitted frame -> reference transform (:func:`similarity_fit` or :func:`affine_fit`).
    shift : (dx, dy), optional
        The pure shift applied (``reference - frame``). Default: the transform's displacement at
        the frame's centre, the shift that makes this misalignment smallest for a similarity.

    Returns
    -------
    float
        Pixels; NaN when the transform failed. For a rotation by ``theta`` about the frame's
        centre with the centre's shift, ``r * theta`` with ``r`` the centre-corner distance.
    """
    ny, nx = shape
    corners = np.array([[0.0, 0.0], [nx - 1.0, 0.0], [0.0, ny - 1.0], [nx - 1.0, ny - 1.0]])
    if shift is None:
        shift = transform.displacement(np.array([(nx - 1) / 2, (ny - 1) / 2]))
    d = transform.displacement(corners) - np.asarray(shift, dtype=float)
    return float(np.hypot(d[:, 0], d[:, 1]).max())
