"""The fine step's measurements: star cutouts, their background, and windowed centroids.

:func:`_measure` finds and centroids one star near each predicted position, all stars at once:
cutouts (:func:`_cutouts`, minus the frame's row and column patterns), their local background
and noise from the border pixels (:func:`_ring_stats`), hot pixels and cosmic rays replaced
(:func:`_despike`), the brightest 3x3 box within the search radius, and an iterative
Gaussian-windowed centroid (:func:`_windowed_centroid`: 2-D Newton steps on the window moments,
no PSF model, unbiased for any symmetric PSF) with its errors propagated from the pixel noise
(background and, through the gain, Poisson parts).

Positions are (x, y) in the measured image's pixel coordinates: 0-based, pixel centres at
integers; arrays are indexed (y, x).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._stats import FWHM_PER_SIGMA, MAD_TO_SIGMA, small_median
from ._clean import _NonFinite
from ._params import ReferenceParams


def _window_sigma(fwhm: float) -> float:
    """Sigma (pixels) of the centroid's Gaussian window for stars of this FWHM."""
    return max(0.6, fwhm / FWHM_PER_SIGMA)


def _peak_box(fwhm: float) -> int:
    """Side (odd, pixels) of the box whose sum locates a star of this FWHM before centroiding:
    3 up to FWHM 6 px, then about half the FWHM (a broad, faint star's brightest 3 x 3 box
    wanders over its flat top with the noise; a box of half its FWHM does not)."""
    return 3 if fwhm < 6.0 else 2 * int(fwhm / 4.0 + 0.5) + 1


def _reach(fwhm: float) -> float:
    """How far (pixels) a centroid may lie from the peak box that located it: half the box
    (1.5 px up to FWHM 6 px)."""
    return 0.5 * _peak_box(fwhm)


def _small_half(fwhm: float) -> int:
    """Half-size of the cutout a star is centroided in, around its peak box: the window
    (3.5 sigma) around a centroid up to :func:`_reach` from the box, and one pixel."""
    return int(math.ceil(3.5 * _window_sigma(fwhm))) + 1 + int(math.ceil(_reach(fwhm) - 1.5))


def _windows(a: np.ndarray, size: int) -> np.ndarray:
    """Read-only view of every ``size`` x ``size`` window of the last two axes of ``a``,
    indexed by its corner (leading axes kept)."""
    shape = a.shape[:-2] + (a.shape[-2] - size + 1, a.shape[-1] - size + 1, size, size)
    strides = a.strides[:-2] + a.strides[-2:] * 2
    if a.flags.c_contiguous:  # cheaper than as_strided
        view = np.ndarray(shape, a.dtype, a, 0, strides)
        view.flags.writeable = False
        return view
    return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=False)


def _cutouts(img: np.ndarray, iy: np.ndarray, ix: np.ndarray, half: int,
             bands: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n, 2 half + 1, 2 half + 1) float32 cutouts centred on (iy, ix), which must lie at least
    ``half`` px inside the image; minus the row and column patterns ``bands`` if given."""
    out = _windows(img, 2 * half + 1)[iy - half, ix - half].astype(np.float32, copy=False)
    if bands is not None:
        off = np.arange(-half, half + 1)
        out -= bands[0][iy[:, None] + off][:, :, None]
        out -= bands[1][ix[:, None] + off][:, None, :]
    return out


@functools.lru_cache(maxsize=16)
def _ring_index(h: int, w: int, width: int) -> np.ndarray:
    """Flat indices of the outer ``width`` pixels of an h x w cutout."""
    inner = np.zeros((h, w), bool)
    inner[width: h - width, width: w - width] = True
    idx = np.flatnonzero(~inner)
    idx.flags.writeable = False  # shared by every call
    return idx


def _ring_stats(stack: np.ndarray, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-sigma of the outer ``width`` pixels of each cutout."""
    n, h, w = stack.shape
    ring = stack.reshape(n, h * w)[:, _ring_index(h, w, width)]
    k = ring.shape[1] // 2
    ring.partition(k, axis=1)
    med = ring[:, k].copy()
    ring -= med[:, None]
    np.abs(ring, out=ring)
    ring.partition(k, axis=1)
    return med, MAD_TO_SIGMA * ring[:, k]


def _box3(stack: np.ndarray) -> np.ndarray:
    """3x3 box sums of each cutout (valid part: two pixels smaller on each axis)."""
    s = stack[:, :-2, :] + stack[:, 1:-1, :] + stack[:, 2:, :]
    return s[:, :, :-2] + s[:, :, 1:-1] + s[:, :, 2:]


def _box_sums(stack: np.ndarray, k: int) -> np.ndarray:
    """k x k box sums of each cutout (valid part: ``k - 1`` pixels smaller on each axis);
    :func:`_box3` for k = 3."""
    if k == 3:
        return _box3(stack)
    c = np.zeros((stack.shape[0], stack.shape[1] + 1, stack.shape[2] + 1))
    np.cumsum(np.cumsum(stack, axis=1, dtype=np.float64), axis=2, out=c[:, 1:, 1:])
    return (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]).astype(np.float32)


def _windowed_centroid(stack: np.ndarray, start: np.ndarray, sig_w: float, noise: np.ndarray,
                       gain: float, n_iter: int = 10, max_offset: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Iterative Gaussian-windowed centroids of background-subtracted square cutouts.

    Solves ``sum(W * I * (x - cx)) = sum(W * I * (y - cy)) = 0`` (W: a circular Gaussian
    window of sigma ``sig_w`` centred on (cx, cy)) for all stars at once by 2-D Newton steps
    of at most 1 px from ``start`` ((n, 2): x, y), cross term included; a star whose Jacobian is
    not safely positive takes the safeguarded diagonal step (``2 S1 / S0`` at worst, as XWIN).
    A star has converged when its step is below 0.04 px for a Newton step (quadratic
    convergence: < ~5e-4 px is left) or 1e-3 px for a safeguarded one; the iteration stops when
    all have (at most ``n_iter`` steps), and a star found more than ``max_offset`` px from the
    cutout centre after a step is given up (not valid).

    Returns the centroids ((n, 2): x, y in cutout coordinates), their noise sigmas ((part, n,
    axis): error propagation of the background pixel noise ``noise`` per cutout, and of the
    stars' Poisson noise through ``gain``, evaluated at the last Newton point), a validity
    flag (converged, inside the cutout and, with ``max_offset``, that close to its centre), and
    the windowed sum ``sum(W * I)`` at the last Newton point (a flux measure, window peak 1).
    """
    n, h, w = stack.shape
    st = stack.astype(np.float64)
    grid = np.arange(w, dtype=np.float64)
    c = np.array(start, dtype=np.float64)
    k2 = 1.0 / sig_w**2  # 2k, with the window exp(-k u^2)
    ok = np.ones(n, bool)
    # window, window * u and window * u^2 along x (index 0) and y (1): all the window moments
    # sum(wy uy^i I wx ux^j) come from two small batched products
    basis = np.empty((n, 2, w, 3))
    wgt, wu, wu2 = basis[..., 0], basis[..., 1], basis[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        for it in range(n_iter):
            d = grid - c[:, :, None]  # (n, 2, w)
            np.multiply(d, d, out=wgt)
            wgt *= -0.5 * k2
            np.exp(wgt, out=wgt)
            np.multiply(wgt, d, out=wu)
            np.multiply(wu, d, out=wu2)
            mom = np.matmul(basis[:, 1].transpose(0, 2, 1), np.matmul(st, basis[:, 0]))
            m = mom.reshape(n, 9)[:, _MOM_ORDER]  # s0, s1 (x, y), s2 (x, y), s11
            s0 = m[:, 0]
            der = s0[:, None] - k2 * m[:, 3:5]  # minus the Jacobian's diagonal
            cross = k2 * m[:, 5]  # its off-diagonal, 2k sum W I ux uy
            dd = der[:, 0] * der[:, 1]
            det = dd - cross * cross
            safe = (der.min(axis=1) > 0.1 * s0) & (det > 0.25 * dd) & (s0 > 0)
            s1 = m[:, 1:3]
            step = (der[:, ::-1] * s1 + cross[:, None] * s1[:, ::-1]) / det[:, None]
            all_safe = bool(safe.all())
            if not all_safe:
                diag = s1 / np.where(der > 0.25 * s0[:, None], der, 0.5 * s0[:, None])
                step[~safe] = diag[~safe]
                ok &= s0 > 0
            np.maximum(step, -1.0, out=step)
            np.minimum(step, 1.0, out=step)
            if it >= 1 and max_offset is not None:
                # walking away (towards a neighbour, or nothing to centroid): given up
                ok &= (np.abs(c - 0.5 * (w - 1)) <= max_offset).all(axis=1)
            if not ok.all():
                step[~ok] = 0.0
            c += step
            top = float(np.abs(step).max())
            # converged: a Newton step below 0.04 px leaves < ~5e-4 px (quadratic convergence),
            # a safeguarded one must be below 1e-3 px
            if top < 1e-3 or (top < 0.04 and (all_safe or float(np.abs(step[~safe]).max()) < 1e-3)):
                break
        ok &= np.abs(step).max(axis=1) < np.where(safe, 0.04, 1e-2)
        # error propagation at the last Newton point (x: the background noise through the x
        # moments and the y window)
        b2 = basis[:, :, :, :2] ** 2  # window^2, (window u)^2
        sq = np.matmul(np.ones(w), b2)  # their sums
        err = np.empty((2, n, 2))  # (part, star, axis)
        np.multiply(sq[:, :, 1], sq[:, ::-1, 0], out=err[0])
        err[0] *= (noise.astype(np.float64) ** 2)[:, None]
        if gain > 0:
            pr = np.matmul(np.maximum(st, 0.0), b2[:, 0])  # sum_w I+ wx^2, sum_w I+ (wx ux)^2
            # x: sum_h wy^2 sum_w I+ (wx ux)^2, y: sum_h (wy uy)^2 sum_w I+ wx^2
            err[1] = np.einsum("nhj,nhj->nj", b2[:, 1], pr[:, :, ::-1])
            err[1] *= 1.0 / gain
        else:
            err[1] = 0.0
        np.sqrt(err, out=err)
        err /= np.abs(der)
        # valid: converged with a positive Jacobian, and inside the cutout (finite)
        centre = 0.5 * (w - 1)
        reach = centre if max_offset is None else min(max_offset, centre)
        ok &= (der > 0).all(axis=1) & (np.abs(c - centre) <= reach).all(axis=1)
    err[:, ~ok] = np.inf
    return c, err, ok, s0


#: columns of the flattened 3x3 moment matrix (y power * 3 + x power) used by the centroid:
#: s0, s1 along x and y, s2 along x and y, the cross moment
_MOM_ORDER = np.array([0, 1, 3, 2, 6, 4])


def _despike(stack: np.ndarray, noise: np.ndarray, ratio: float = 0.3) -> None:
    """Replace, in place, cutout pixels that stand far above all four neighbours on one axis.

    A pixel is replaced by ``min(max(left, right), max(up, down))`` when that is below ``ratio``
    of it and the difference exceeds 5 noise sigmas: hot pixels and cosmic-ray hits, not star
    peaks (whose neighbours reach well over ``ratio`` of the peak unless FWHM < ~1.7 px).
    Border pixels are left alone. ``stack`` must be C-contiguous (n, h, w): the work is done
    on its flat view, neighbours at offsets 1 and w (fast, long contiguous loops).
    """
    n, h, w = stack.shape
    f = stack.reshape(-1)
    size = f.size
    c = f[w + 1: size - w - 1]
    low = np.maximum(f[w: size - w - 2], f[w + 2: size - w])
    np.minimum(low, np.maximum(f[1: size - 2 * w - 1], f[2 * w + 1: size - 1]), out=low)
    lim = c * stack.dtype.type(ratio)
    np.minimum(lim, c - np.repeat((5.0 * noise).astype(stack.dtype), h * w)[w + 1: size - w - 1],
               out=lim)
    spike = low < lim
    spike &= _interior(n, h, w)[w + 1: size - w - 1]
    np.copyto(c, low, where=spike)


@functools.lru_cache(maxsize=16)
def _interior(n: int, h: int, w: int) -> np.ndarray:
    """Flat mask of the pixels of n h x w cutouts that are not on a cutout's border."""
    inner = np.zeros((n, h, w), bool)
    inner[:, 1:-1, 1:-1] = True
    inner.flags.writeable = False  # shared by every call
    return inner.reshape(-1)


#: 3x3 pixel weights of the sum and the x and y first moments about the centre
_MOMENTS3 = np.array([[1, -1, -1], [1, 0, -1], [1, 1, -1], [1, -1, 0], [1, 0, 0], [1, 1, 0],
                      [1, -1, 1], [1, 0, 1], [1, 1, 1]], np.float32)


@dataclass
class _Measured:
    """Per-star results of :func:`_measure` (frame coordinates)."""

    xy: np.ndarray  # (n, 2)
    err: np.ndarray  # (part, n, axis): background-noise and Poisson parts of the errors
    flux: np.ndarray  # Gaussian-windowed sum at the centroid, background subtracted
    ok: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return self.xy[:, 0]

    @property
    def y(self) -> np.ndarray:
        return self.xy[:, 1]

    @property
    def ex(self) -> np.ndarray:
        return self.err[:, :, 0]

    @property
    def ey(self) -> np.ndarray:
        return self.err[:, :, 1]


def _measure(img: np.ndarray, bands: tuple[np.ndarray, np.ndarray] | None, raw: np.ndarray,
             bad: np.ndarray | None, px: np.ndarray, py: np.ndarray, fwhm: float, search: int,
             half: int, p: ReferenceParams, match_threshold: float,
             sat: Callable[[np.ndarray], float], unchecked: bool = False) -> _Measured:
    """Find and centroid one star near each predicted position (px, py), all at once.

    For each position: cut a ``2*half+1`` cutout of ``img`` minus its row and column patterns
    ``bands`` (None: ``img`` is clean already), subtract the median of its border, remove hot
    pixels, take the brightest box (:func:`_peak_box`: 3 x 3 up to FWHM 6 px) within
    ``search`` px of the prediction (its sum must exceed ``match_threshold`` noise sigmas, and
    its centre not be saturated in ``raw``, ``sat(raw_peaks)`` giving the saturation level, nor
    have ``bad`` pixels in its 3 x 3 core), and centroid a small cutout around it with
    Gaussian-windowed moments, within :func:`_reach` of it. ``p`` gives
    ``saturation_fraction`` and ``gain``.
    Positions must lie at least ``half`` px inside the frame (caller's job; see
    :func:`~starshift.registration._sources._geometry`).
    """
    n = px.size
    ix = np.rint(px).astype(np.intp)
    iy = np.rint(py).astype(np.intp)
    stack = _cutouts(img, iy, ix, half, bands)
    if unchecked and not math.isfinite(float(stack.sum())):
        raise _NonFinite  # (or an overflow: the masked float32 copy is then used as well)
    med, noise = _ring_stats(stack)
    stack -= med[:, None, None]
    pos = noise[noise > 0]
    noise = np.maximum(noise, 0.1 * small_median(pos) if pos.size else 1.0)
    _despike(stack, noise)
    w = 2 * search + 1
    c0 = half - search  # the search box: stack pixels c0 .. c0 + w - 1 on each axis
    k = _peak_box(fwhm)
    h = k // 2
    region = _box_sums(stack[:, c0 - h: c0 + w + h, c0 - h: c0 + w + h], k).reshape(n, -1)
    j = np.argmax(region, axis=1)
    jy = iy + j // w - search
    jx = ix + j % w - search
    bpk = region[np.arange(n), j]
    ok = bpk > match_threshold * float(k) * noise
    rpk = _windows(raw, 3)[jy - 1, jx - 1].reshape(n, 9).max(axis=1)
    ok &= rpk < p.saturation_fraction * sat(rpk)
    if bad is not None:
        # a non-finite pixel in the star's core (the peak's 3 x 3, most of the centroid's
        # weight) spoils it; one in the wings was set to the background and is one pixel of
        # the window among many (the fitted per-star errors and the clipping take the rest):
        # with ~1% bad pixels, dropping stars for any bad pixel within a FWHM would empty
        # the catalogue
        ok &= ~_windows(bad, 3)[jy - 1, jx - 1].reshape(n, -1).any(axis=1)
    sig_w = _window_sigma(fwhm)
    reach = _reach(fwhm)
    hs = _small_half(fwhm)
    # small cutouts around each peak, taken from the cleaned stack
    small = _windows(stack, 2 * hs + 1)[np.arange(n), jy - iy + half - hs, jx - ix + half - hs]
    # start from the 3x3 moments around the peak (sum, x and y first moments by one product),
    # divided by their slope for a Gaussian star of sigma sig_w (they see ~1/3 of the
    # offset): two or three Newton steps then suffice
    m3 = small[:, hs - 1: hs + 2, hs - 1: hs + 2].reshape(n, 9) @ _MOMENTS3
    e1 = math.exp(-0.5 / sig_w**2)
    slope = 2.0 * e1 / (sig_w**2 * (1.0 + 2.0 * e1))
    start = m3[:, 1:] / np.where(m3[:, :1] > 0, m3[:, :1] * slope, np.inf)
    np.maximum(start, -0.5, out=start)
    np.minimum(start, 0.5, out=start)
    start += hs
    xy, err, cok, flux = _windowed_centroid(small, start, sig_w, noise, p.gain, max_offset=reach)
    ok &= cok
    xy[:, 0] += jx - hs
    xy[:, 1] += jy - hs
    return _Measured(xy, err, flux, ok)




#: The wide window of :func:`_wide_centroids` is this many times the centroid's
WIDE_WINDOW = 2.0


def _wide_centroids(img: np.ndarray, bands: tuple[np.ndarray, np.ndarray] | None,
                    xy: np.ndarray, fwhm: float, unchecked: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The same stars' centroids with a window ``WIDE_WINDOW`` times wider.

    For a point-symmetric PSF (any width, any ellipticity) both windows find the same centre.
    For an asymmetric one (coma, tracking errors, a PSF undersampled by the pixels) they do not,
    and if its asymmetry changes from one image to the other, so does the shift measured: how
    much the offsets move with the window is how well the shift of such a pair of images is
    defined at all (see :func:`~starshift.registration._combine._window_systematic`).

    The wide centroid is one Newton step of its window equation (:func:`_windowed_centroid`)
    from the normal one: it lies within a few tenths of a pixel of it, where one step leaves
    an error of order ``step**2 / sigma``, below 0.01 px (a few thousandths for the 0.1-0.2 px
    a changing PSF makes), and both images get the same definition.

    Parameters
    ----------
    img : 2-D array
        The image the stars were centroided in, minus ``bands`` (its row and column patterns;
        None when it is clean already).
    xy : (n, 2) array
        Their (normal-window) centroids, x first.
    fwhm : float
        Star FWHM (px) the normal window was made for.
    unchecked : bool
        Raise :class:`_NonFinite` when a cutout holds a non-finite pixel.

    Returns
    -------
    xy_wide : (n, 2) array
        The wide-window centroids (NaN where there is none).
    ok : (n,) bool array
        Valid: cutout inside ``img``, a safely positive Jacobian, a step of at most 1 px.
    """
    n = xy.shape[0]
    sig = WIDE_WINDOW * _window_sigma(fwhm)
    half = int(math.ceil(3.0 * sig)) + 2  # the window to 3 sigma around the normal centroid
    ny, nx = img.shape
    ix = np.rint(xy[:, 0]).astype(np.intp)
    iy = np.rint(xy[:, 1]).astype(np.intp)
    ok = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    out = np.full((n, 2), np.nan)
    if not ok.any():
        return out, ok
    sel = np.nonzero(ok)[0]
    stack = _cutouts(img, iy[sel], ix[sel], half, bands)
    if unchecked and not math.isfinite(float(stack.sum())):
        raise _NonFinite
    med, noise = _ring_stats(stack)
    stack -= med[:, None, None]
    pos = noise[noise > 0]
    _despike(stack, np.maximum(noise, 0.1 * small_median(pos) if pos.size else 1.0))
    corner = np.column_stack([ix[sel], iy[sel]]) - half
    start = xy[sel] - corner
    # the window moments at the normal centroid (as in _windowed_centroid) and one Newton step
    k2 = 1.0 / sig**2
    d = np.arange(2 * half + 1, dtype=np.float64) - start[:, :, None]  # (n, axis, w)
    wgt = np.exp(-0.5 * k2 * d * d)
    basis = np.stack([wgt, wgt * d, wgt * d * d], axis=-1)  # (n, axis, w, power)
    mom = np.matmul(basis[:, 1].transpose(0, 2, 1),
                    np.matmul(stack.astype(np.float64), basis[:, 0])).reshape(-1, 9)
    s0, s1, s2, s11 = mom[:, 0], mom[:, [1, 3]], mom[:, [2, 6]], mom[:, 4]
    der = s0[:, None] - k2 * s2
    cross = k2 * s11
    dd = der[:, 0] * der[:, 1]
    det = dd - cross * cross
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (der[:, ::-1] * s1 + cross[:, None] * s1[:, ::-1]) / det[:, None]
    good = ((der.min(axis=1) > 0.1 * s0) & (det > 0.25 * dd) & (s0 > 0)
            & (np.abs(step) <= 1.0).all(axis=1))
    ok[sel] = good
    out[sel[good]] = (start + step + corner)[good]
    return out, ok
