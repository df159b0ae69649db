"""Sources and the reference's star catalogue.

:func:`_find_sources` lists the local maxima of a banding-free image (smoothed by a 1 px
Gaussian, smooth background removed) with their peak, signal-to-noise, FWHM and sharpness,
each against the local background; :func:`_estimate_fwhm` gives the frame's star FWHM from
them; :func:`_catalogue` picks the reference's brightest unsaturated, isolated, star-shaped
sources and centroids them once (:class:`_Catalogue`), for the fine step of every frame.
:func:`_geometry` sizes the fine step's cutouts for a FWHM and search radius.

Positions are (x, y) reference pixels, 0-based, pixel centres at integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .._stats import mad_sigma, sampled_median
from ._centroid import _cutouts, _measure, _ring_stats, _window_sigma
from ._clean import _mesh_expand, _mesh_grid, _saturation_level
from ._params import FrameParams, ReferenceParams


@dataclass
class _Catalogue:
    """The reference's stars for the fine step: centroids, their errors and fluxes."""

    x: np.ndarray
    y: np.ndarray
    ex: np.ndarray  # (2, n): background-noise and Poisson parts of the x error
    ey: np.ndarray
    flux: np.ndarray  # Gaussian-windowed sum, background subtracted (see _windowed_centroid)

    def __post_init__(self):
        self.xy = np.column_stack([self.x, self.y])  # (n, 2)
        self.err2 = np.stack([self.ex, self.ey]) ** 2  # (axis, part, n)

    @classmethod
    def empty(cls) -> _Catalogue:
        """A catalogue without stars."""
        return cls(np.zeros(0), np.zeros(0), np.zeros((2, 0)), np.zeros((2, 0)), np.zeros(0))


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


def _find_sources(raw: np.ndarray, clean: np.ndarray, p: ReferenceParams, low: float = 4.0,
                  bad: np.ndarray | None = None) -> _Sources:
    """Local maxima of ``clean`` (banding removed) smoothed by a 1 px Gaussian.

    Peak values, signal-to-noise and FWHM are measured against the local background (median of
    the border of a 21 x 21 px cutout), so smooth glows and gradients do not make sources.
    """
    box = min(p.background_box, 32) if p.background_box > 0 else 0
    grid = _mesh_grid(clean, box) if box >= 8 else None
    img = clean - _mesh_expand(grid, box, clean.shape) if grid is not None else clean.copy()
    img -= sampled_median(img)
    noise = mad_sigma(img, bad=bad)
    sm = ndimage.gaussian_filter(img, 1.0, mode="nearest")
    sm_noise = mad_sigma(sm, bad=bad)
    e = np.zeros(0)
    empty = _Sources(e.astype(int), e.astype(int), e, e, e, e, e.astype(bool), noise, img)
    if not (noise > 0 and sm_noise > 0):
        return empty
    mx = ndimage.maximum_filter(sm, size=3, mode="nearest")
    cand = (sm == mx) & (sm > low * sm_noise)
    edge = 3
    cand[:edge, :] = cand[-edge:, :] = False
    cand[:, :edge] = cand[:, -edge:] = False
    ys, xs = np.nonzero(cand)
    if ys.size == 0:
        return empty
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


def _estimate_fwhm(src: _Sources, sat: float, p: ReferenceParams) -> float:
    """Median FWHM of bright, unsaturated, non-sharp sources that have no comparably bright
    neighbour within 10 px (blends only ever look wider); a low percentile of all of them when
    too few are isolated (crowded fields)."""
    good = (~src.sharp) & (src.raw_peak < p.saturation_fraction * sat) & (src.snr > 20)
    if np.count_nonzero(good) < 3:
        good = (~src.sharp) & (src.snr > 8)
    idx = np.nonzero(good)[0][:200]
    if idx.size == 0:
        return 3.0
    f = src.fwhm[idx]
    if src.x.size > 1:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([src.x, src.y]))
        pairs = tree.query_ball_point(np.column_stack([src.x[idx], src.y[idx]]), 10.0)
        iso = np.array([all(j == i or src.peak[j] < 0.25 * src.peak[i] for j in nb)
                        for i, nb in zip(idx, pairs, strict=True)])
        if np.count_nonzero(iso) >= 3:
            return float(np.clip(np.median(f[iso][:50]), 1.0, 30.0))
    return float(np.clip(np.percentile(f, 25), 1.0, 30.0))


def _star_like(src: _Sources, fwhm: float) -> np.ndarray:
    """Sources shaped like stars: not sharp and not much narrower than the PSF."""
    return (~src.sharp) & (src.fwhm >= 0.6 * fwhm)


def _geometry(fwhm: float, search_radius: float, b: int) -> tuple[float, int, int]:
    """Window sigma, search radius and cutout half-size for a given FWHM, ``search_radius``
    (0: automatic) and coarse binning ``b``."""
    sig_w = _window_sigma(fwhm)
    r = search_radius if search_radius > 0 else max(4.0, float(b))
    search = int(math.ceil(r))
    # room for the centroid window (3.5 sigma + 1, see _measure) around a star anywhere within
    # the search radius, and a border beyond it for the background
    half = search + int(math.ceil(3.5 * sig_w)) + 2
    return sig_w, search, half


def _catalogue(raw: np.ndarray, clean: np.ndarray, bad: np.ndarray | None, p: ReferenceParams,
               fp: FrameParams, b: int) -> tuple[_Catalogue, float, float, _Sources]:
    """The catalogue of the reference (``raw`` as given, ``clean`` without banding), its star
    FWHM, saturation level and sources.

    Stars must be isolated over the search of the fine step (``fp.search_radius``) and pass
    its ``fp.match_threshold`` in the reference itself.
    """
    src = _find_sources(raw, clean, p, bad=bad)
    sat = _saturation_level(raw, p)
    fwhm = p.fwhm if p.fwhm > 0 else _estimate_fwhm(src, sat, p)
    _, search, half = _geometry(fwhm, fp.search_radius, b)
    ny, nx = clean.shape
    if src.x.size == 0:
        return _Catalogue.empty(), fwhm, sat, src
    cand = ((src.snr >= p.detect_threshold) & _star_like(src, fwhm)
            & (src.raw_peak < p.saturation_fraction * sat)
            & (src.x >= half) & (src.x < nx - half) & (src.y >= half) & (src.y < ny - half))
    # isolation: no source brighter than blend_ratio * peak within isolation * FWHM; checked
    # in order of brightness until twice the stars needed are found (some fail to centroid)
    r_iso = max(p.isolation * fwhm, search + 2.0 * fwhm)
    idx = np.nonzero(cand)[0]
    chosen: list[int] = []
    if idx.size:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([src.x, src.y]))
        for i in idx:
            neigh = tree.query_ball_point((src.x[i], src.y[i]), r_iso)
            if not any(j != i and not src.sharp[j] and src.peak[j] > p.blend_ratio * src.peak[i]
                       for j in neigh):
                chosen.append(int(i))
                if len(chosen) >= 2 * p.n_stars:
                    break
    idx = np.array(chosen, dtype=np.int64)
    if idx.size == 0:
        return _Catalogue.empty(), fwhm, sat, src
    m = _measure(clean, None, raw, bad, src.x[idx].astype(float), src.y[idx].astype(float),
                 fwhm, 1, half, p, fp.match_threshold, lambda _: sat)
    ok = m.ok & (np.hypot(m.x - src.x[idx], m.y - src.y[idx]) < 1.5)
    ok &= np.cumsum(ok) <= p.n_stars
    cat = _Catalogue(m.x[ok], m.y[ok], m.ex[:, ok], m.ey[:, ok], m.flux[ok])
    return cat, fwhm, sat, src

