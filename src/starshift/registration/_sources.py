"""Sources and the reference's star catalogue, for stars of any size.

:func:`_find_sources` lists the local maxima of a banding-free image with their peak,
signal-to-noise, FWHM and sharpness, each against the local background, at one of two
detection scales: a 1 px Gaussian (sharp stars, and ordinary nights as they always were), or,
for broad stars, a Gaussian matched to their FWHM (after a 2 x 2 grey opening removes hot
pixels and cosmic rays, which the broad filter would otherwise spread into star-like blobs).
:func:`_estimate_fwhm` gives the frame's star FWHM from them; :func:`_detect` chooses the
scale: the 1 px one, unless its FWHM estimate says the stars are broad (``BROAD_FWHM``) or it
finds too few usable stars, when the matched filter is tried, its width from that first FWHM
estimate (or from a few guesses when there was none) and refined once from what it finds.
:func:`_catalogue` picks the reference's brightest unsaturated, isolated, star-shaped sources
and centroids them once (:class:`_Catalogue`), for the fine step of every frame.
:func:`_geometry` sizes the fine step's cutouts for a FWHM and search radius.

Positions are (x, y) reference pixels, 0-based, pixel centres at integers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lazy import ndimage
from .._stats import FWHM_PER_SIGMA, mad_sigma, sampled_median
from ._centroid import (
    _cutouts,
    _measure,
    _reach,
    _ring_stats,
    _small_half,
    _wide_centroids,
    _window_sigma,
)
from ._clean import _erode2, _mesh_expand, _mesh_grid, _saturation_level
from ._params import FrameParams, ReferenceParams

log = logging.getLogger(__name__)

#: Stars of at least this FWHM (px) are detected with a filter matched to them: the 1 px
#: Gaussian keeps only ~77 % of the matched filter's signal-to-noise at 5 px, ~50 % at 9 px
BROAD_FWHM = 5.0
#: Fewest stars the 1 px detection must give (catalogue stars, or candidates for
#: :func:`~starshift.registration.choose_reference`) before a matched filter is tried
MIN_STARS = 10
#: A matched filter narrower than this FWHM (px) would be the 1 px Gaussian again
MIN_MATCHED_FWHM = 3.5
#: Filter FWHMs tried when the 1 px detection gives no FWHM estimate (together they cover
#: stars of ~3-12 px: a filter within a factor 1.5 of the stars keeps > 90 % of the S/N)
FWHM_GUESSES = (5.0, 9.0)


@dataclass
class _Catalogue:
    """The reference's stars for the fine step: centroids, their errors and fluxes, and their
    wide-window centroids (:func:`~starshift.registration._centroid._wide_centroids`)."""

    x: np.ndarray
    y: np.ndarray
    ex: np.ndarray  # (2, n): background-noise and Poisson parts of the x error
    ey: np.ndarray
    flux: np.ndarray  # Gaussian-windowed sum, background subtracted (see _windowed_centroid)
    wide_xy: np.ndarray  # (n, 2): wide-window centroids (NaN where there is none)

    def __post_init__(self):
        self.xy = np.column_stack([self.x, self.y])  # (n, 2)
        self.err2 = np.stack([self.ex, self.ey]) ** 2  # (axis, part, n)

    @classmethod
    def empty(cls) -> _Catalogue:
        """A catalogue without stars."""
        return cls(np.zeros(0), np.zeros(0), np.zeros((2, 0)), np.zeros((2, 0)), np.zeros(0),
                   np.zeros((0, 2)))


@dataclass
class _Sources:
    """All local maxima of a frame above a low threshold, with their properties."""

    x: np.ndarray  # integer peak positions
    y: np.ndarray
    snr: np.ndarray  # peak S/N in the smoothed image
    peak: np.ndarray  # background-subtracted peak pixel value
    raw_peak: np.ndarray
    fwhm: np.ndarray  # half-maximum-area FWHM of each source
    sharp: np.ndarray  # hot pixel / cosmic ray like
    noise: float  # pixel noise
    bkg: np.ndarray  # background-subtracted (banding removed) image


def _smoothed(img: np.ndarray, sigma: float) -> np.ndarray:
    """``ndimage.gaussian_filter(img, sigma, mode="nearest")``, the same values, computed in
    row strips on two threads when the image is large (``_STRIP_MIN`` pixels) and two CPUs
    are free to this process: the filter releases the GIL, and the reference is prepared
    before any worker process starts (0.75 s -> 0.45 s on a 26 MP frame).

    Each strip is filtered with the rows its filter reaches (``4 sigma``, scipy's
    ``truncate``) above and below it, and only its own rows are kept, so every value is
    computed from the same pixels in the same order as on the whole image. The strips are
    small (about ``_STRIP_BYTES`` of the result) and each thread filters its strips into one
    buffer: two half-frame strips took 100 MB beside the 104 MB result on a 26 MP frame.
    """
    from ..executors import cores

    threads = min(2, cores())
    if img.size < _STRIP_MIN or threads < 2:
        return ndimage.gaussian_filter(img, sigma, mode="nearest")
    halo = int(4.0 * sigma + 0.5)  # the filter's radius (scipy's truncate=4.0)
    ny, nx = img.shape
    out = np.empty(img.shape, dtype=img.dtype if img.dtype.kind == "f" else np.float64)
    rows = max(_STRIP_BYTES // (out.itemsize * nx), 8 * halo, 1)
    cuts = [*range(0, ny, rows), ny]

    def strips(first: int) -> None:  # every ``threads``-th strip, in one buffer
        buf = np.empty((rows + 2 * halo, nx), dtype=out.dtype)
        for i in range(first, len(cuts) - 1, threads):
            lo, hi = max(cuts[i] - halo, 0), min(cuts[i + 1] + halo, ny)
            sm = ndimage.gaussian_filter(img[lo:hi], sigma, output=buf[: hi - lo],
                                         mode="nearest")
            out[cuts[i]: cuts[i + 1]] = sm[cuts[i] - lo: cuts[i + 1] - lo]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(strips, range(threads)))
    return out


#: images with at least this many pixels are smoothed on two threads (see :func:`_smoothed`)
_STRIP_MIN = 1 << 22
#: about this many bytes of the result per strip of :func:`_smoothed`
_STRIP_BYTES = 8 << 20


def _local_maxima(sm: np.ndarray, level: float, edge: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels of ``sm`` that are the maximum of their 3 x 3 and above
    ``level``, at least ``edge`` (>= 1) px from the border, in row-major order.

    The pixels above ``level`` (stars: a small fraction) are compared with their 8
    neighbours: the same pixels as ``sm == ndimage.maximum_filter(sm, 3)``, which costs two
    passes over the whole frame (1.3 s on 26 MP). When many pixels are above the level, the
    filter is used.
    """
    inner = sm[edge:-edge, edge:-edge]
    above = inner > level
    if np.count_nonzero(above) > above.size // 8:
        cand = (sm == ndimage.maximum_filter(sm, size=3, mode="nearest")) & (sm > level)
        cand[:edge, :] = cand[-edge:, :] = False
        cand[:, :edge] = cand[:, -edge:] = False
        return _rows_cols(cand)
    ys, xs = _rows_cols(above)
    ys += edge
    xs += edge
    v = sm[ys, xs]
    peak = np.ones(ys.size, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                peak &= v >= sm[ys + dy, xs + dx]
    return ys[peak], xs[peak]


def _rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero(mask)`` of a 2-D mask (row-major order, the same arrays), from the flat
    indices: one index array is quicker to make than two (0.014 s against 0.076 s on 26 MP)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _no_sources(noise: float, img: np.ndarray) -> _Sources:
    e = np.zeros(0)
    return _Sources(e.astype(int), e.astype(int), e, e, e, e, e.astype(bool), noise, img)


def _find_sources(raw: np.ndarray, clean: np.ndarray, p: ReferenceParams, low: float = 4.0,
                  bad: np.ndarray | None = None, scale: float = 0.0) -> _Sources:
    """Local maxima of ``clean`` (banding removed) smoothed by a 1 px Gaussian, or with
    ``scale`` > 0 by the matched filter of stars of FWHM ``scale`` (:func:`_find_broad`).

    Parameters
    ----------
    raw : 2-D array
        The frame as given (for the sources' raw peaks: saturation).
    clean : 2-D array
        The frame without its row and column patterns.
    p : ReferenceParams
        For ``background_box`` (the smooth background removed first).
    low : float
        Smallest peak signal-to-noise listed.
    bad : 2-D bool array, optional
        Pixels left out of the noise estimates.
    scale : float
        0: the 1 px Gaussian; else the FWHM (px) of the stars the filter is matched to.

    Returns
    -------
    _Sources
        Brightest (highest S/N) first. Peak values, signal-to-noise and FWHM are measured
        against the local background (median of the border of a cutout: 21 x 21 px, larger
        for broad stars), so smooth glows and gradients do not make sources.
    """
    box = min(p.background_box, 32) if p.background_box > 0 else 0
    if scale > 0 and box:  # blocks of >= 4 FWHM: broad stars do not lift their medians
        box = max(box, 8 * math.ceil(scale / 2.0))
    grid = _mesh_grid(clean, box) if box >= 8 else None
    if grid is not None:  # clean less its background, in the background's array
        img = _mesh_expand(grid, box, clean.shape)
        np.subtract(clean, img, out=img)
    else:
        img = clean.copy()
    img -= sampled_median(img)
    noise = mad_sigma(img, bad=bad)
    if scale > 0:
        return _find_broad(raw, img, noise, scale, low, bad)
    sm = _smoothed(img, 1.0)
    sm_noise = mad_sigma(sm, bad=bad)
    ys, xs = _local_maxima(sm, low * sm_noise, 3) if noise > 0 and sm_noise > 0 else ([], [])
    if len(ys) == 0:
        return _no_sources(noise, img)
    # peak pixel in the 3x3 around the smoothed maximum
    off = np.arange(-1, 2)
    c3 = img[(ys[:, None] + off)[:, :, None], (xs[:, None] + off)[:, None, :]].reshape(-1, 9)
    j = np.argmax(c3, axis=1)
    sm_peak = sm[ys, xs]
    ys = np.clip(ys + j // 3 - 1, 1, img.shape[0] - 2)
    xs = np.clip(xs + j % 3 - 1, 1, img.shape[1] - 2)
    # local background from the border of a cutout (clipped to the frame)
    hw = 10
    yc = np.clip(ys, hw, img.shape[0] - hw - 1)
    xc = np.clip(xs, hw, img.shape[1] - hw - 1)
    cut = _cutouts(img, yc, xc, hw)
    bkg, _ = _ring_stats(cut)
    scut = _cutouts(sm, yc, xc, hw)
    sbkg, _ = _ring_stats(scut)
    peak = img[ys, xs] - bkg
    snr = (sm_peak - sbkg) / sm_noise
    raw_peak = raw[ys, xs]
    # FWHM from the area above half maximum; stars have wings (the area above a tenth of the
    # maximum is ~3 times that above half for a Gaussian), hot-pixel clusters sharp edges
    rel = cut - bkg[:, None, None]
    area = np.count_nonzero(rel >= 0.5 * peak[:, None, None], axis=(1, 2))
    area10 = np.count_nonzero(rel >= 0.1 * peak[:, None, None], axis=(1, 2))
    fwhm = 2.0 * np.sqrt(area / np.pi)
    wings = area10 / np.maximum(area, 1)
    # sharpness: a pixel much brighter than the max of its neighbours on one axis
    c3 = img[(ys[:, None] + off)[:, :, None], (xs[:, None] + off)[:, None, :]] - bkg[:, None, None]
    h = np.maximum(c3[:, 1, 0], c3[:, 1, 2])
    v = np.maximum(c3[:, 0, 1], c3[:, 2, 1])
    sharp = (np.minimum(h, v) < 0.25 * peak) | (wings < 2.0)
    keep = snr > low
    order = np.argsort(-snr[keep])
    return _Sources(xs[keep][order], ys[keep][order], snr[keep][order], peak[keep][order],
                    raw_peak[keep][order], fwhm[keep][order], sharp[keep][order], noise, img)


def _open2(img: np.ndarray) -> np.ndarray:
    """Grey opening of ``img`` by a 2 x 2 square (float32, same shape): the largest 2 x 2
    block minimum over the blocks holding each pixel. Anything without a 2 x 2 core (hot
    pixels, their pairs and L-shaped clusters, cosmic rays) is removed; a broad star only loses
    a little of its noise."""
    e = np.full((img.shape[0] + 1, img.shape[1] + 1), -np.inf, np.float32)
    e[1:-1, 1:-1] = _erode2(img)
    out = np.maximum(e[:-1, :-1], e[:-1, 1:])
    np.maximum(out, e[1:, :-1], out=out)
    np.maximum(out, e[1:, 1:], out=out)
    return out


def _find_broad(raw: np.ndarray, img: np.ndarray, noise: float, fwhm: float, low: float,
                bad: np.ndarray | None) -> _Sources:
    """Local maxima of ``img`` (background and banding removed) opened by 2 x 2
    (:func:`_open2`) and smoothed by a Gaussian of FWHM ``fwhm``: the matched filter of stars
    of that FWHM (the highest S/N a Gaussian star can be detected at).

    The sources' S/N, peak and FWHM are measured in the filtered image (its peak is hardly
    biased by the noise, unlike a faint broad star's brightest pixel), against the border of a
    cutout of ~2.5 FWHM; the FWHM is the filtered one with the filter's removed in quadrature
    (exact for Gaussian stars). A source is ``sharp`` when that leaves less than half the
    filter's FWHM: a remnant of a hot-pixel block, not a star. ``noise`` is the pixel noise of
    ``img``.
    """
    sig_f = fwhm / FWHM_PER_SIGMA
    sm = _smoothed(_open2(img), sig_f)
    sm -= sampled_median(sm)  # the opening lowers the sky a little
    sm_noise = mad_sigma(sm, bad=bad)
    edge = max(3, int(math.ceil(2.0 * sig_f)))  # the filter's edge effects
    ys, xs = (_local_maxima(sm, low * sm_noise, edge) if noise > 0 and sm_noise > 0
              else ([], []))
    if len(ys) == 0:
        return _no_sources(noise, img)
    # the filtered star's FWHM is ~sqrt(2) fwhm: a border beyond 1.2 times that for the
    # background (below 2 % of the peak for a Gaussian)
    ny, nx = img.shape
    hw = min(max(10, int(math.ceil(1.2 * math.sqrt(2.0) * fwhm)) + 2), (min(ny, nx) - 1) // 2)
    yc = np.clip(ys, hw, ny - hw - 1)
    xc = np.clip(xs, hw, nx - hw - 1)
    cut = _cutouts(sm, yc, xc, hw)
    bkg, _ = _ring_stats(cut)
    peak = sm[ys, xs] - bkg
    snr = peak / sm_noise
    area = np.count_nonzero(cut - bkg[:, None, None] >= 0.5 * peak[:, None, None], axis=(1, 2))
    seen = 2.0 * np.sqrt(area / np.pi)
    width = np.sqrt(np.maximum(seen**2 - fwhm**2, 0.0))
    sharp = width < 0.5 * fwhm
    keep = snr > low
    order = np.argsort(-snr[keep])
    return _Sources(xs[keep][order], ys[keep][order], snr[keep][order], peak[keep][order],
                    raw[ys, xs][keep][order], width[keep][order], sharp[keep][order], noise,
                    img)


def _neighbours(x: np.ndarray, y: np.ndarray, r: float) -> Callable[[int], np.ndarray]:
    """``near(i)``: the indices of the points within ``r`` (distance <= r) of point ``i``, itself
    included, in no particular order. A sort on x and a band search: the few queries a
    catalogue needs cost less than building a k-d tree (and importing ``scipy.spatial``)."""
    order = np.argsort(x, kind="stable")
    sx = x[order]

    def near(i: int) -> np.ndarray:
        j = order[np.searchsorted(sx, x[i] - r, "left"): np.searchsorted(sx, x[i] + r, "right")]
        return j[(x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2 <= r * r]

    return near


def _estimate_fwhm(src: _Sources, sat: float, p: ReferenceParams, radius: float = 10.0,
                   min_bright: int = 3) -> tuple[float, int]:
    """Median FWHM of bright, unsaturated, non-sharp sources that have no comparably bright
    neighbour within ``radius`` px (blends only ever look wider); a low percentile of all of
    them when too few are isolated (crowded fields). Bright is S/N above 20, or above 8 when
    fewer than ``min_bright`` sources are that bright.

    Returns the FWHM (3 px when no source qualifies) and the number of sources it rests on.
    """
    good = (~src.sharp) & (src.raw_peak < p.saturation_fraction * sat) & (src.snr > 20)
    if np.count_nonzero(good) < min_bright:
        good = (~src.sharp) & (src.snr > 8)
    idx = np.nonzero(good)[0][:200]
    if idx.size == 0:
        return 3.0, 0
    f = src.fwhm[idx]
    if src.x.size > 1:
        near = _neighbours(src.x, src.y, radius)
        iso = np.array([bool(np.all((nb == i) | (src.peak[nb] < 0.25 * src.peak[i])))
                        for i in idx for nb in [near(i)]])
        if np.count_nonzero(iso) >= 3:
            use = f[iso][:50]
            return float(np.clip(np.median(use), 1.0, 30.0)), int(use.size)
    return float(np.clip(np.percentile(f, 25), 1.0, 30.0)), int(idx.size)


def _detect(raw: np.ndarray, clean: np.ndarray, p: ReferenceParams, bad: np.ndarray | None,
            sat: float, count: Callable[[_Sources, float], tuple[int, Any]]
            ) -> tuple[_Sources, float, Any]:
    """A frame's sources and star FWHM, detected at the scale its stars need.

    The 1 px detection is kept when its FWHM estimate is below ``BROAD_FWHM`` and it gives at
    least ``MIN_STARS`` usable stars; otherwise the matched filter (:func:`_find_broad`) is
    tried at the estimated FWHM (at ``FWHM_GUESSES`` when there was no estimate), once more at
    the FWHM it measures if that differs by more than 25 %, and the detection giving the most
    usable stars is kept (for broad stars, always a matched one).

    Parameters
    ----------
    raw, clean : 2-D arrays
        The frame as given, and without its row and column patterns.
    p : ReferenceParams
        Detection, saturation and FWHM parameters (``fwhm`` > 0 fixes the FWHM).
    bad : 2-D bool array or None
        Pixels to leave out of the noise estimates.
    sat : float
        The frame's saturation level.
    count : callable
        ``count(sources, fwhm) -> (n, result)``: the number of usable stars a detection gives,
        and what the caller wants back with it (the catalogue, say).

    Returns
    -------
    (sources, fwhm, result) of the detection kept.
    """
    def fwhm_of(src: _Sources, scale: float = 0.0) -> tuple[float, int]:
        if p.fwhm > 0:
            return p.fwhm, 1
        if scale == 0:
            return _estimate_fwhm(src, sat, p)
        # broad stars: isolated over 1.5 FWHM, and at least 10 to take the median of (the
        # brightest of a faint night are few, their widths noisy)
        return _estimate_fwhm(src, sat, p, max(10.0, 1.5 * scale), 10)

    src = _find_sources(raw, clean, p, bad=bad)
    fwhm, n_fwhm = fwhm_of(src)
    n, res = count(src, fwhm)
    broad = fwhm >= BROAD_FWHM
    if not broad and n >= MIN_STARS:
        return src, fwhm, res
    best = None if broad else (n, src, fwhm, res)
    if n_fwhm > 0:
        guesses = (fwhm,) if fwhm >= MIN_MATCHED_FWHM else ()
    else:
        guesses = FWHM_GUESSES
    for g in guesses:
        s2 = _find_sources(raw, clean, p, bad=bad, scale=g)
        f2, n2 = fwhm_of(s2, g)
        if n2 > 0 and abs(f2 - g) > 0.25 * g:  # the filter was far from the stars: once more
            g = max(f2, MIN_MATCHED_FWHM)
            s2 = _find_sources(raw, clean, p, bad=bad, scale=g)
            f2, n2 = fwhm_of(s2, g)
        if n2 == 0:
            f2 = g
        k, r2 = count(s2, f2)
        log.debug("matched filter %.2f px: FWHM %.2f px, %d stars (1 px: FWHM %.2f, %d)", g,
                  f2, k, fwhm, n)
        if best is None or k > best[0]:
            best = (k, s2, f2, r2)
    if best is None:  # broad, but no filter to try (cannot happen: broad >= MIN_MATCHED_FWHM)
        return src, fwhm, res
    return best[1], best[2], best[3]


def _star_like(src: _Sources, fwhm: float) -> np.ndarray:
    """Sources shaped like stars: not sharp and not much narrower than the PSF."""
    return (~src.sharp) & (src.fwhm >= 0.6 * fwhm)


def _geometry(fwhm: float, search_radius: float, b: int) -> tuple[float, int, int]:
    """Window sigma, search radius and cutout half-size for a given FWHM, ``search_radius``
    (0: automatic) and coarse binning ``b``."""
    sig_w = _window_sigma(fwhm)
    r = search_radius if search_radius > 0 else max(4.0, float(b))
    search = int(math.ceil(r))
    # room for the centroid's cutout (see _measure) around a star anywhere within the search
    # radius, and a border beyond it for the background
    half = search + _small_half(fwhm) + 1
    return sig_w, search, half


def _catalogue(raw: np.ndarray, clean: np.ndarray, bad: np.ndarray | None, p: ReferenceParams,
               fp: FrameParams, b: int) -> tuple[_Catalogue, float, float, _Sources]:
    """The catalogue of the reference (``raw`` as given, ``clean`` without banding), its star
    FWHM, saturation level and sources, detected at the scale the stars need
    (:func:`_detect`)."""
    sat = _saturation_level(raw, p)

    def count(src: _Sources, fwhm: float) -> tuple[int, _Catalogue]:
        cat = _select(src, fwhm, raw, clean, bad, sat, p, fp, b)
        return cat.x.size, cat

    src, fwhm, cat = _detect(raw, clean, p, bad, sat, count)
    return cat, fwhm, sat, src


def _select(src: _Sources, fwhm: float, raw: np.ndarray, clean: np.ndarray,
            bad: np.ndarray | None, sat: float, p: ReferenceParams, fp: FrameParams, b: int
            ) -> _Catalogue:
    """The catalogue stars among the sources ``src`` of stars of FWHM ``fwhm``.

    Stars must be isolated over the search of the fine step (``fp.search_radius``), pass its
    ``fp.match_threshold`` in the reference itself and centroid within reach of their peak.
    """
    _, search, half = _geometry(fwhm, fp.search_radius, b)
    ny, nx = clean.shape
    if src.x.size == 0:
        return _Catalogue.empty()
    cand = ((src.snr >= p.detect_threshold) & _star_like(src, fwhm)
            & (src.raw_peak < p.saturation_fraction * sat)
            & (src.x >= half) & (src.x < nx - half) & (src.y >= half) & (src.y < ny - half))
    # isolation: no source brighter than blend_ratio * peak within isolation * FWHM; checked
    # in order of brightness until twice the stars needed are found (some fail to centroid)
    r_iso = max(p.isolation * fwhm, search + 2.0 * fwhm)
    idx = np.nonzero(cand)[0]
    chosen: list[int] = []
    if idx.size:
        near = _neighbours(src.x, src.y, r_iso)
        for i in idx:
            nb = near(i)
            blend = (nb != i) & ~src.sharp[nb] & (src.peak[nb] > p.blend_ratio * src.peak[i])
            if not np.any(blend):
                chosen.append(int(i))
                if len(chosen) >= 2 * p.n_stars:
                    break
    idx = np.array(chosen, dtype=np.int64)
    if idx.size == 0:
        return _Catalogue.empty()
    m = _measure(clean, None, raw, bad, src.x[idx].astype(float), src.y[idx].astype(float),
                 fwhm, 1, half, p, fp.match_threshold, lambda _: sat)
    ok = m.ok & (np.hypot(m.x - src.x[idx], m.y - src.y[idx]) < _reach(fwhm))
    ok &= np.cumsum(ok) <= p.n_stars
    wide_xy, _ = _wide_centroids(clean, None, m.xy[ok], fwhm)
    return _Catalogue(m.x[ok], m.y[ok], m.ex[:, ok], m.ey[:, ok], m.flux[ok], wide_xy)
