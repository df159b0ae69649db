"""Star shapes of an aligned frame: the median FWHM and elongation at known star positions.

A tracking jump or wind shake doubles or trails a frame's stars: they come out elongated and
broader than the night's. :func:`star_shapes` measures, at known positions (the reference's
stars, in a frame aligned onto it), the second moments of each star's light above the local
background.

Functions
---------
star_shapes
    Median FWHM (px), elongation ``1 - b/a`` and number of stars measured.
"""

from __future__ import annotations

import numpy as np

from .._lazy import ndimage
from .._stats import FWHM_PER_SIGMA, MAD_TO_SIGMA

__all__ = ["star_shapes"]


def _own_light(flat: np.ndarray, above: np.ndarray) -> np.ndarray:
    """Of the ``above``-threshold pixels of each cutout, those connected (8-neighbours) to the
    star's peak: the brightest 3x3 box sum within 2 px of the cutout's centre."""
    n, h, _ = flat.shape
    c = h // 2
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a cutout, never across cutouts
    labels, _ = ndimage.label(above, structure=structure)
    box = ndimage.uniform_filter(np.where(above, flat, 0.0), size=(1, 3, 3), mode="constant")
    core = np.where(above, box, -np.inf)[:, c - 2: c + 3, c - 2: c + 3].reshape(n, -1)
    peak = labels[:, c - 2: c + 3, c - 2: c + 3].reshape(n, -1)[np.arange(n), core.argmax(1)]
    return (labels == peak[:, None, None]) & (peak > 0)[:, None, None]


def star_shapes(data: np.ndarray, positions: np.ndarray, radius: int = 10,
                threshold: float = 3.0, min_peak_snr: float = 15.0, min_stars: int = 5,
                isolate: bool = False, stacked: bool = False) -> tuple[float, float, int]:
    """Median FWHM (px) and elongation (1 - b/a) of the stars at ``positions``.

    The second moments of each star's light above the local background are measured in a
    cutout around the given position; a doubled or trailed star (tracking jump, wind shake)
    comes out elongated and broad.

    Parameters
    ----------
    data : 2-D array
        An image (aligned onto the reference, so reference positions apply).
    positions : (N, 2) array
        Star positions (x, y), pixels.
    radius : int
        Half-size of the square cutout in which moments are measured; it must reach beyond a
        doubled star's second image (a tracking jump of up to ``radius`` px is caught).
    threshold : float
        Only pixels this many noise sigmas above the cutout's border median count.
    min_peak_snr : float
        A star counts only if its brightest pixel is this many noise sigmas above the background
        (faint stars' moments are dominated by noise).
    min_stars : int
        Fewer measurable stars than this give NaN: no verdict rather than a noisy one.
    isolate : bool
        Measure each star's own light only: the pixels above ``threshold`` connected to its
        peak, so that neighbours inside the cutout (a crowded field) do not count, while a
        doubled or trailed star's second image does wherever its light joins the first's
        above the threshold. Hot pixels and cosmic rays away from the star are then left out
        as well, so the cutouts are not 3 x 3 median-filtered (which broadens a star of FWHM
        ~3 px by ~5% and flattens FWHM ratios); one on a star changes that star only, and the
        median over stars ignores it. The default (False) keeps the original measurement.
    stacked : bool
        Measure the frame's median star image instead of each star: every measurable star's
        cutout, background-subtracted and scaled to unit flux, is combined pixel by pixel with
        a median, and the moments of that image above ``threshold`` (its own noise) give the
        FWHM and elongation. Neighbours sit at random places around each star and vanish in
        the median, while what every star shares stays: a tracking jump's second image, a
        trail, a defocused core. This is the measurement for judging frames; it needs
        ``min_stars`` measurable stars, and cosmic rays or hot pixels on single stars do not
        matter (the median).

    Returns
    -------
    fwhm, elongation : float
        Medians over the stars that could be measured (NaN when none could).
    n : int
        Number of stars measured.

    Notes
    -----
    Measured on a sample night's crowded cluster outskirts (FWHM 2.6-3.4 px, 40 reference
    stars), the default gives FWHM 4.6-6.7 px and elongation 0.3-0.5 for round stars (their
    neighbours count), so that a 1.3x defocused, a trailed and a doubled frame fall inside the
    good frames' range; with ``isolate=True``, FWHM within 0.05 px of the truth, elongation
    0.05-0.12 for the good frames and 0.51-0.56 for the trailed and doubled ones, and the
    defocused frame (1.3 x) at 1.27-1.29 x the night's median. Stars blended with a neighbour
    above the threshold (closer than ~2.5 FWHM for bright stars) still include it. A tracking
    jump of 8-14 px with a faint trail is caught by both (elongation 0.73-0.75).
    """
    data = np.asarray(data)  # only the cutouts become float64 (exact), not the whole frame
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    ny, nx = data.shape
    ix, iy = np.rint(pos[:, 0]).astype(int), np.rint(pos[:, 1]).astype(int)
    inside = (ix >= radius) & (iy >= radius) & (ix < nx - radius) & (iy < ny - radius)
    ix, iy = ix[inside], iy[inside]
    if ix.size == 0:
        return float("nan"), float("nan"), 0
    off = np.arange(-radius, radius + 1)
    stack = data[iy[:, None, None] + off[None, :, None],
                 ix[:, None, None] + off[None, None, :]].astype(float, copy=False)
    if not (isolate or stacked):
        # a 3x3 median removes hot pixels and cosmic rays, which would dominate second moments
        stack = ndimage.median_filter(stack, size=(1, 3, 3), mode="nearest")
    # background per cutout row, from the columns outside the star's core: row banding (a
    # common fixed pattern of small cameras) would otherwise make every star look elongated
    outer = np.abs(off) > radius // 2
    bkg = np.nanmedian(stack[:, :, outer], axis=2)  # (n, rows)
    flat = stack - bkg[:, :, None]
    noise = MAD_TO_SIGMA * np.nanmedian(np.abs(flat[:, :, outer]).reshape(len(flat), -1), axis=1)
    above = np.isfinite(flat) & (flat > threshold * noise[:, None, None])
    if isolate:
        above &= _own_light(flat, above)
    w = np.where(above, flat, 0.0)
    m = w.sum(axis=(1, 2))
    peak = w.max(axis=(1, 2))
    ok = (m > 0) & ((w > 0).sum(axis=(1, 2)) >= 3) & (peak > min_peak_snr * noise)
    if ok.sum() < min_stars:
        return float("nan"), float("nan"), 0
    if stacked:
        weights, total = _median_star(flat[ok], noise[ok], m[ok], threshold)
        if not total[0] > 0:  # nothing of the median star above its noise
            return float("nan"), float("nan"), 0
        # cutouts centred on the nearest pixel: the median star is the PSF smoothed by the
        # rounding (uniform over a pixel, variance 1/12 px^2 per axis), taken out again
        return (*_moments(weights, total, off, smoothing=1.0 / 12.0), int(ok.sum()))
    w, m = w[ok], m[ok]
    fwhm, elong = _moments(w, m, off)
    return float(np.median(fwhm)), float(np.median(elong)), int(ok.sum())


def _median_star(flat: np.ndarray, noise: np.ndarray, flux: np.ndarray, threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The median of unit-flux cutouts, its pixels above ``threshold`` x its own noise: the
    weights (1, h, w) and their sum (1,) for :func:`_moments`."""
    unit = flat / flux[:, None, None]
    star = np.nanmedian(unit, axis=0)
    # noise of a median of n: ~1.25 / sqrt(n) of the typical scaled pixel noise
    sigma = 1.2533 * float(np.median(noise / flux)) / np.sqrt(len(flux))
    w = np.where(np.isfinite(star) & (star > threshold * sigma), star, 0.0)
    # keep the blobs that hold real light (the star, a jump's second image, a trail), not
    # the few noise pixels above the threshold, whose distance from the centre would weigh
    labels, n = ndimage.label(w > 0, structure=np.ones((3, 3), dtype=bool))
    if n > 1:
        sums = ndimage.sum_labels(w, labels, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], sums >= _MIN_BLOB * sums.sum()])
        w = np.where(keep[labels], w, 0.0)
    return w[None], np.array([w.sum()])


#: a blob of the median star image counts when it holds this fraction of its light
_MIN_BLOB = 0.05


def _moments(w: np.ndarray, m: np.ndarray, off: np.ndarray, smoothing: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """FWHM (px) and elongation of each weight image ``w`` (n, h, w) of total ``m`` (n,),
    ``smoothing`` (px^2, per axis) subtracted from the second moments."""
    yy, xx = np.meshgrid(off, off, indexing="ij")
    mx = (w * xx).sum(axis=(1, 2)) / m
    my = (w * yy).sum(axis=(1, 2)) / m
    dx, dy = xx[None] - mx[:, None, None], yy[None] - my[:, None, None]
    sxx = (w * dx * dx).sum(axis=(1, 2)) / m - smoothing
    syy = (w * dy * dy).sum(axis=(1, 2)) / m - smoothing
    sxy = (w * dx * dy).sum(axis=(1, 2)) / m
    half_trace = (sxx + syy) / 2
    d = np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    major = np.maximum(half_trace + d, 1e-12)
    minor = np.clip(half_trace - d, 0.0, None)
    fwhm = FWHM_PER_SIGMA * np.sqrt(half_trace)
    elong = 1.0 - np.sqrt(minor / major)
    if fwhm.size == 1:
        return float(fwhm[0]), float(elong[0])
    return fwhm, elong
