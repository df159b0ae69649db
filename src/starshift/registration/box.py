"""The seed's measurement: the centroid of one star in a search box (``method=box``).

:func:`box_slices` cuts the square search box, :func:`box_centroid` fits the star in it with
photutils' ``centroid_2dg`` after subtracting the frame median, as the seed analysis did. Pure
functions on arrays. Positions are (x, y) in pixels, 0-based, pixel centres at integers, as in
photutils.

Two errors: :class:`InvalidBox` when the box itself is unusable (too small, or not wholly
inside the image: a setting, the same for every frame), :class:`CentroidFailed` when one
frame's box holds no measurable star.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._stats import median


class CentroidFailed(ValueError):
    """No star could be measured in the box (empty, flat, non-finite, or fit off the box)."""


class InvalidBox(ValueError):
    """The search box cannot be used on an image of this shape: too small, or not wholly
    inside it. The message names the parameters ``box_center`` and ``box_size``."""


def box_slices(shape: tuple[int, int], box_center, box_size: int) -> tuple[slice, slice]:
    """The (y, x) slices of a ``box_size`` square search box centred on ``box_center`` (x, y).

    Raises :class:`InvalidBox` when the box is smaller than 5 px or does not lie wholly inside
    an image of ``shape``: a setting to correct, not a property of one frame.
    """
    box_size = int(box_size)
    if box_size < 5:
        raise InvalidBox(f"box_size={box_size}: the search box needs at least 5 px")
    xc, yc = (float(v) for v in box_center)
    half = box_size // 2
    x0 = int(round(xc)) - half
    y0 = int(round(yc)) - half
    ny, nx = shape
    if x0 < 0 or y0 < 0 or x0 + box_size > nx or y0 + box_size > ny:
        raise InvalidBox(f"box_center=[{xc:g},{yc:g}] with box_size={box_size} reaches outside "
                         f"the {nx} x {ny} px image")
    return slice(y0, y0 + box_size), slice(x0, x0 + box_size)


def box_centroid(data: np.ndarray, box_center, box_size: int, *, subtract_median: bool = True,
                 frame_median: float | None = None) -> tuple[float, float]:
    """Position (x, y) of the star in a search box, by photutils ``centroid_2dg``.

    This is the seed analysis's measurement: subtract the image median, cut a ``box_size``
    square around ``box_center`` (x, y) and fit a 2-D Gaussian (plus constant) to it.

    Parameters
    ----------
    data : 2-D array
        The frame.
    box_center : (x, y)
        Centre of the search box, pixels.
    box_size : int
        Side of the square box, pixels (even sizes allowed, as in the seed).
    subtract_median : bool
        Subtract the median of the whole frame first (the seed did).
    frame_median : float, optional
        That median, when the caller already knows it (it is not computed again).

    Returns
    -------
    x, y : float
        Star position in frame pixel coordinates.

    Raises
    ------
    CentroidFailed
        When the box holds no measurable star (non-finite data, no positive signal, or a fit
        whose centre lies outside the box).
    InvalidBox
        When the box is too small or reaches outside the frame (:func:`box_slices`).
    """
    from photutils.centroids import centroid_2dg

    data = np.asarray(data)
    sy, sx = box_slices(data.shape, box_center, box_size)
    cut = np.asarray(data[sy, sx], dtype=np.float64)
    if subtract_median:
        cut = cut - (median(data) if frame_median is None else frame_median)
    if not np.all(np.isfinite(cut)):
        raise CentroidFailed("non-finite pixels in the search box")
    if np.ptp(cut) <= 0:
        raise CentroidFailed("the search box is flat: no star in it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cx, cy = centroid_2dg(cut)
        except (ValueError, RuntimeError, ArithmeticError) as exc:  # pathological cutouts
            raise CentroidFailed(f"2-D Gaussian fit failed ({exc})") from exc
    if not (np.isfinite(cx) and np.isfinite(cy)):
        raise CentroidFailed("2-D Gaussian fit did not converge")
    if not (0 <= cx <= cut.shape[1] - 1 and 0 <= cy <= cut.shape[0] - 1):
        raise CentroidFailed("no star in the search box (fit centre falls outside it)")
    return float(cx + sx.start), float(cy + sy.start)
