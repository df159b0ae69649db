"""Star rendering: Gaussian point-spread functions integrated over the pixels.

Pure functions: positions and fluxes in, an image out. Pixel centres are at integer
coordinates, 0-based, x first (numpy indexes ``[y, x]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import erf

#: stamp half-sides tried in turn: a star gets the smallest that holds its profile down to
#: 0.05 image units (the last one holds every star that is left)
_STAMP_RADII = (4, 7, 11, 16)

#: one image of each star, where it is, with all its flux
SINGLE = ((0.0, 0.0, 1.0),)


def render_stars(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                 sigma_x: float, sigma_y: float) -> np.ndarray:
    """An image of Gaussian stars, each integrated over the pixels, added as small stamps.

    Parameters
    ----------
    shape : (ny, nx)
        Image shape.
    x, y : 1-D arrays
        Star positions, pixels (0-based, pixel centres at integers).
    flux : 1-D array
        Total flux of each star (image units).
    sigma_x, sigma_y : float
        Gaussian widths along x and y, pixels.

    Returns
    -------
    2-D float64 array of ``shape``. Stars whose stamp misses the image are skipped; stamps are
    cut at the image edges.
    """
    ny, nx = shape
    x, y, flux = (np.asarray(v, dtype=float).ravel() for v in (x, y, flux))
    out = np.zeros(ny * nx)
    if x.size == 0:
        return out.reshape(shape)
    smax = max(sigma_x, sigma_y)
    peak = flux / (2 * np.pi * sigma_x * sigma_y)
    # radius where the profile drops below 0.05 ADU
    need = smax * np.sqrt(2 * np.log(np.maximum(peak / 0.05, 1.0 + 1e-9)))
    done = np.zeros(x.size, bool)
    for radius in _STAMP_RADII:
        sel = ~done & ((need <= radius) | (radius == _STAMP_RADII[-1]))
        done |= sel
        sel &= (x > -radius - 1) & (x < nx + radius) & (y > -radius - 1) & (y < ny + radius)
        if not sel.any():
            continue
        xs, ys, fs = x[sel], y[sel], flux[sel]
        off = np.arange(-radius, radius + 1)
        cols = np.rint(xs).astype(int)[:, None] + off[None, :]
        rows = np.rint(ys).astype(int)[:, None] + off[None, :]
        gx = _pixel_integrated(cols, xs, sigma_x)
        gy = _pixel_integrated(rows, ys, sigma_y)
        stamps = fs[:, None, None] * gy[:, :, None] * gx[:, None, :]
        ok = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        flat = rows[:, :, None] * nx + cols[:, None, :]
        out += np.bincount(flat[ok], weights=stamps[ok], minlength=ny * nx)
    return out.reshape(shape)


def _pixel_integrated(pix: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    """Fraction of a 1-D Gaussian (``centre``, ``sigma``) falling in each pixel of ``pix``."""
    s = math.sqrt(2.0) * sigma
    c = centre[:, None]
    return 0.5 * (erf((pix + 0.5 - c) / s) - erf((pix - 0.5 - c) / s))


def render_field(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                 size: np.ndarray, sigma_x: float, sigma_y: float,
                 images: Sequence[tuple[float, float, float]] = SINGLE) -> np.ndarray:
    """Objects of several PSF scales, each imaged once or several times (trails, jumps).

    Parameters
    ----------
    shape : (ny, nx)
        Image shape.
    x, y, flux : 1-D arrays
        Positions (pixels) and total fluxes of the objects.
    size : 1-D array
        Each object's PSF width relative to a star's (1 for stars, more for a nebula).
    sigma_x, sigma_y : float
        A star's Gaussian widths, pixels.
    images : sequence of (dx, dy, fraction)
        Where the light of each object lands, relative to its position, and the fraction of its
        flux there: one image with all the flux for a steady exposure, a row of images for a
        trail, two for a tracking jump.

    Returns
    -------
    2-D float64 array of ``shape``.
    """
    out = np.zeros(shape)
    for scale in np.unique(size):
        sel = size == scale
        for ox, oy, frac in images:
            out += render_stars(shape, x[sel] + ox, y[sel] + oy, flux[sel] * frac,
                                sigma_x * scale, sigma_y * scale)
    return out


def trail_images(length: float, angle: float, n: int | None = None
                 ) -> tuple[tuple[float, float, float], ...]:
    """Images along a straight trail of ``length`` pixels centred on the star (for
    :func:`render_field`): ``n`` equal parts, by default one every 0.4 px.

    ``angle`` is in radians from the +x axis toward +y. The trail's light-weighted centre is the
    star's position.
    """
    n = n or max(2, math.ceil(length / 0.4) + 1)
    ux, uy = math.cos(angle), math.sin(angle)
    return tuple((float(t * ux), float(t * uy), 1.0 / n)
                 for t in np.linspace(-length / 2, length / 2, n))
