"""Automatic shift estimation: coarse FFT cross-correlation, then star centroids.

A shift ``(dx, dy)`` is what moves a frame onto the reference, ``reference - frame``, x first,
in pixels: a sky point at reference pixel ``(xr, yr)`` appears in the moving frame at
``(xr - dx, yr - dy)``. numpy's (y, x) order is used only inside this module.

The estimate has two steps (:func:`estimate_shift`):

**Coarse.** Both images are reduced to small, cleaned images of what moves with the sky, then
cross-correlated with one small real FFT:

* hot pixels, their pairs and clusters, cosmic rays, bleed columns: the minimum of every
  non-overlapping 2 x 2 block (a grey erosion that also halves each axis in the one pass over
  the full-resolution pixels) removes anything without a bright 2 x 2 core; the result is then
  summed over blocks, to ``coarse_bin`` (4 for a 765 x 510 frame);
* row and column fixed patterns (banding, bias columns) and any additive-separable gradient:
  robust row, then column medians of the binned image are subtracted (banding is per row or
  column, so it survives binning as a per-binned-row or -column pattern);
* smooth non-separable background (vignetting, amplifier glow, a cluster's diffuse light) is
  removed with a mesh of block medians, and a [1, 2, 1] smoothing matches faint stars;
* each pixel becomes ``clip(value / noise - coarse_threshold, 0, coarse_clip)``: only
  significant signal counts, a saturated core weighs no more than any bright star, and weak
  fixed patterns cannot add up over the whole frame to pin the correlation at zero shift;
* a Gaussian high-pass (``highpass_scale``) in Fourier space damps what is left of the
  large-scale structure.

The correlation is zero-padded (no wrap-around), normalised by the square root of the overlap
area (uniform noise over lags, so large shifts are not penalised) and searched up to
``max_shift_fraction`` of the frame; for large frames it is computed on 2 x 2 sums of the
coarse images (a four times smaller FFT) and each peak taken is then refined on the coarse
images themselves, from their correlation at the lags around it (uphill, then parabolas).
When the highest peak does not clearly dominate, the best few peaks are compared by height
times the normalised cross-correlation (NCC) of the coarse images over their overlap. The
chosen peak must stand ``min_significance`` standard deviations above the correlation surface
and have an NCC of at least ``min_similarity``, else the frame is reported failed (no overlap,
nothing to match). The coarse shift is good to well under ``coarse_bin`` pixels (within 0.7 px
on the sample nights), and the star search below allows ``max(4, coarse_bin)``.

**Fine.** The reference's brightest unsaturated, isolated, star-shaped sources (prepared once)
are looked for within ``search_radius`` of where the coarse shift puts them, in cutouts from
which the frame's row and column patterns (robust medians at full resolution, from a subsample
of its pixels) are subtracted; each is centroided with iterative Gaussian-windowed moments (2-D
Newton steps; no PSF model, unbiased for any symmetric PSF) on a background-subtracted,
despiked cutout, all stars at once. Each star's error is propagated from the pixel noise in
both images, in two parts: local background noise and the star's own Poisson noise (through
``gain``). After sigma clipping, the offsets are averaged with weights from a fitted error
model, ``variance = b^2 background + q^2 Poisson + f^2`` with ``b``, ``q`` (weak priors around
1) and the floor ``f >= sigma_floor`` fitted to the stars' scatter by restricted maximum
likelihood; so the uncertainty of the mean stays honest when the gain is unknown or the noise
model is off. With fewer than ``min_stars`` usable stars the coarse peak is refined on the
full-resolution frame by direct correlation with stamps of the reference's sources (3-point
Gaussian peak interpolation), with an uncertainty propagated from the pixel noise of both
images.

Everything expensive about the reference is done once by :func:`prepare_reference`. Per frame,
the full-resolution pixels are read by one pass (the 2 x 2 minimum) and a subsample (the row
and column medians); the rest is one small FFT pair and array arithmetic on a few dozen small
cutouts (~2-3 ms for a 765 x 510 frame on one core). The frame is used as given, without a
copy: a non-finite pixel where it would matter (a NaN anywhere, or inside a star's cutout)
sends the estimate to a float32 copy with those pixels masked, as if they had been seen first.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = [
    "AutoParams",
    "PreparedReference",
    "ShiftEstimate",
    "choose_reference",
    "estimate_shift",
    "prepare_reference",
]

#: Smallest image side accepted (pixels); smaller arrays are a programmer error.
MIN_SIZE = 16
_MAD = 1.4826


# ============================================================================ public types
@dataclass(frozen=True)
class ShiftEstimate:
    """Result of :func:`estimate_shift`.

    Attributes
    ----------
    dx, dy : float
        Shift that moves the frame onto the reference (``reference - frame``), x first, pixels.
        ``nan`` when failed.
    sigma_dx, sigma_dy : float
        1-sigma uncertainties of ``dx`` and ``dy`` in pixels (``nan`` when failed).
    n_stars : int
        Number of stars used in the fine step (0 for correlation-only or failed).
    method : str
        ``'stars'``, ``'correlation'`` or ``'failed'``.
    ok : bool
        False when no shift could be estimated.
    reason : str
        ``''`` when ok, otherwise one short sentence saying why it failed.
    """

    dx: float
    dy: float
    sigma_dx: float
    sigma_dy: float
    n_stars: int
    method: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class AutoParams:
    """Keyword parameters of the automatic method, with their defaults (all plain scalars).

    Every field can be passed as a keyword to :func:`prepare_reference`,
    :func:`estimate_shift` and :func:`choose_reference`.

    Attributes
    ----------
    max_shift_fraction : float
        Largest shift searched, as a fraction of the frame size on each axis.
    coarse_bin : int
        Binning factor of the coarse correlation; 0 picks the smallest power of 2 that brings
        the long side to at most 256 px while the short side keeps 64 px or more (at least 2
        when the short side has 128 px or more): 4 for a 765 x 510 frame.
    background_box : int
        Side (pixels) of the blocks of the median background mesh that removes smooth,
        non-separable background before correlating; 0 disables the mesh.
    highpass_scale : float
        Structures larger than about this (pixels) are damped in the correlation (Gaussian
        high-pass in Fourier space); 0 disables it.
    coarse_threshold : float
        Pixels below this many noise sigmas (after binning) are ignored by the correlation.
    coarse_clip : float
        Pixel values are capped at this many noise sigmas above the threshold (saturated cores
        weigh no more than other bright stars).
    min_significance : float
        The correlation peak must exceed the mean of the correlation surface by this many of its
        standard deviations, else the frame is reported failed (no overlap / nothing to match).
    min_similarity : float
        Smallest normalised cross-correlation of the cleaned images over their overlap at the
        chosen shift (1 = identical; unrelated fields give ~0.05-0.25, true matches on the
        sample nights 0.69-0.97), else the frame is reported failed.
    suppress_hot_pixels : bool
        Erode away structures without a 2 x 2 core (hot pixels, cosmic rays) before
        correlating (2 x 2 block minimum; a sliding one for an odd ``coarse_bin``), and
        despike the star cutouts.
    remove_banding : bool
        Subtract robust row and column medians (fixed patterns, banding, gradients): from the
        binned image for the correlation, from the star cutouts for the centroids.
    n_stars : int
        Largest number of reference stars used in the fine step (brightest first).
    detect_threshold : float
        Peak signal-to-noise (in the reference smoothed by a 1 px Gaussian) a catalogue star
        needs.
    isolation : float
        A catalogue star has no other source brighter than ``blend_ratio`` times its peak within
        this many FWHM.
    blend_ratio : float
        See ``isolation``.
    saturation : float
        Saturation level (data units); 0 detects it (the frame maximum when several pixels sit
        at it). Stars peaking above ``saturation_fraction`` of it are not used.
    saturation_fraction : float
        See ``saturation`` (keeps stars out of the non-linear regime).
    fwhm : float
        Star FWHM in pixels; 0 measures it on the reference.
    search_radius : float
        How far (pixels) from its coarse position a star is looked for; 0 picks
        ``max(4, coarse_bin)`` (the coarse shift is good to well under ``coarse_bin``).
    match_threshold : float
        A star's peak in the frame (3x3 box sum) must exceed this many noise sigmas.
    min_stars : int
        Fewest stars for the ``'stars'`` method; with fewer, the correlation fallback is used.
    clip_sigma : float
        Sigma-clipping threshold when combining per-star offsets.
    max_star_scatter : float
        If the per-star offsets scatter more than this (pixels, robust), the star matches are
        not trusted and the correlation fallback is used.
    sigma_floor : float
        Smallest systematic per-star centroid error (pixels), added in quadrature to the noise
        model; with 8 or more stars the floor actually used is fitted to their scatter.
    gain : float
        Detector gain (e-/ADU) of the Poisson part of the per-star noise model; 0 leaves it
        out. With 8 or more stars its scale is fitted, so it only needs to be roughly right.
    refine : bool
        Run the star step; False returns the coarse shift refined to sub-pixel by the
        full-resolution correlation (the few-star fallback).
    ref_star_fraction : float
        :func:`choose_reference` picks the sharpest frame among those with at least this
        fraction of the largest star count.
    """

    max_shift_fraction: float = 0.4
    coarse_bin: int = 0
    background_box: int = 32
    highpass_scale: float = 40.0
    coarse_threshold: float = 2.0
    coarse_clip: float = 10.0
    min_significance: float = 7.0
    min_similarity: float = 0.35
    suppress_hot_pixels: bool = True
    remove_banding: bool = True
    n_stars: int = 40
    detect_threshold: float = 6.0
    isolation: float = 3.0
    blend_ratio: float = 0.1
    saturation: float = 0.0
    saturation_fraction: float = 0.9
    fwhm: float = 0.0
    search_radius: float = 0.0
    match_threshold: float = 5.0
    min_stars: int = 3
    clip_sigma: float = 3.0
    max_star_scatter: float = 1.0
    sigma_floor: float = 0.003
    gain: float = 1.0
    refine: bool = True
    ref_star_fraction: float = 0.7


_FIELDS = {f.name: f for f in dataclasses.fields(AutoParams)}
#: Parameters that shape the prepared reference; the others only act per frame.
_FRAME_ONLY = frozenset({
    "min_significance", "min_similarity", "search_radius", "match_threshold", "min_stars",
    "clip_sigma", "max_star_scatter", "sigma_floor", "refine", "ref_star_fraction",
})


def _make_params(params: dict) -> AutoParams:
    unknown = sorted(set(params) - set(_FIELDS))
    if unknown:
        raise TypeError(f"unknown parameter(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(_FIELDS)}")
    clean = {}
    for key, value in params.items():
        typ = _FIELDS[key].type
        if typ == "bool":
            if not isinstance(value, bool | np.bool_):
                raise TypeError(f"{key}={value!r}: expected a bool")
            clean[key] = bool(value)
        elif typ == "int":
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"{key}={value!r}: expected an int")
            clean[key] = int(value)
        else:
            clean[key] = float(value)
    p = AutoParams(**clean)
    if not 0 < p.max_shift_fraction <= 0.9:
        raise ValueError(f"max_shift_fraction={p.max_shift_fraction}: use a value in (0, 0.9]")
    if p.coarse_bin < 0 or p.n_stars < 1 or p.min_stars < 1:
        raise ValueError("coarse_bin must be >= 0, n_stars and min_stars >= 1")
    return p


# ============================================================================ image helpers
def _checked(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got an array of shape {arr.shape}")
    if min(arr.shape) < MIN_SIZE:
        raise ValueError(f"{name} is {arr.shape[1]} x {arr.shape[0]} px; need at least "
                         f"{MIN_SIZE} px on each side")
    if not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _as_image(a, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 copy with non-finite pixels replaced by the median; and the bad-pixel mask."""
    img = np.array(_checked(a, name), dtype=np.float32)
    if np.isfinite(img.sum(dtype=np.float64)):
        return img, None
    bad = ~np.isfinite(img)
    if bad.all():
        return img, bad
    img[bad] = _median(img[~bad])
    return img, bad


def _finite(a: np.ndarray) -> bool:
    """True if every element of ``a`` is finite (no overflow, unlike a sum)."""
    return a.size == 0 or (math.isfinite(float(a.max())) and math.isfinite(float(a.min())))


def _median(a: np.ndarray, max_n: int = 40000) -> float:
    """Median of (a regular subsample of) ``a``."""
    v = a.ravel()
    if v.size > max_n:
        v = v[:: v.size // max_n + 1]
    if v.size == 0:
        return 0.0
    k = v.size // 2
    return float(np.partition(v, k)[k])


def _mad_sigma(a: np.ndarray, max_n: int = 40000, bad: np.ndarray | None = None) -> float:
    """Robust (MAD) standard deviation of (a regular subsample of) ``a``, ignoring ``bad``."""
    v = a.ravel() if bad is None else a[~bad]
    if v.size > max_n:
        v = v[:: v.size // max_n + 1]
    med = _median(v)
    return _MAD * _median(np.abs(v - med))


def _banding(img: np.ndarray, n_samples: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Robust row, then column medians (float32): the row and column fixed patterns.

    Each median is taken over about ``n_samples`` evenly spaced pixels of the row or column
    (the columns' after the rows' are subtracted): its noise (~0.15 of the pixel noise) is
    below any banding worth removing, and the cost stays small for frames of any size. The
    image is not modified (any real dtype).
    """
    ny, nx = img.shape
    sub = np.array(img[:, :: max(1, nx // n_samples)], dtype=np.float32)
    k = sub.shape[1] // 2
    sub.partition(k, axis=1)
    rows = sub[:, k].copy()
    sy = max(1, ny // n_samples)
    sub = np.ascontiguousarray(img[::sy, :].T, dtype=np.float32)
    sub -= rows[::sy]
    k = sub.shape[1] // 2
    sub.partition(k, axis=1)
    return rows, sub[:, k].copy()


def _remove_banding(img: np.ndarray, n_samples: int = 64) -> None:
    """Subtract robust row then column medians in place (also removes the sky level)."""
    rows, cols = _banding(img, n_samples)
    img -= rows[:, None]
    img -= cols[None, :]


def _erode2(img: np.ndarray) -> np.ndarray:
    """Minimum over each 2 x 2 block of pixels (grey erosion); one row and column smaller.

    Anything without a bright 2 x 2 core vanishes: hot pixels, their pairs and L-shaped
    clusters, cosmic-ray tracks, bleed columns. Stars lose a little of their peak and move by
    (0.5, 0.5) px, identically in every frame, so correlation offsets are unaffected.
    """
    out = np.minimum(img[:-1, :-1], img[:-1, 1:])
    np.minimum(out, img[1:, :-1], out=out)
    np.minimum(out, img[1:, 1:], out=out)
    return out


def _block_min2(img: np.ndarray) -> np.ndarray:
    """Minimum of each non-overlapping 2 x 2 block (float32, half the size on each axis).

    Like the sliding erosion :func:`_erode2`, anything without a bright 2 x 2 core vanishes
    (a hot-pixel cluster survives only if it fills a whole block), and it halves the image in
    the same pass over the full-resolution pixels.
    """
    ny, nx = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    rows = np.minimum(img[0:ny:2, :nx], img[1:ny:2, :nx])
    out = np.empty((ny // 2, nx // 2), np.float32)
    np.minimum(rows[:, 0::2], rows[:, 1::2], out=out, casting="same_kind")
    return out


def _bin(img: np.ndarray, b: int) -> np.ndarray:
    """Sum over non-overlapping ``b`` x ``b`` blocks (float32; a partial last block is dropped)."""
    if b == 1:
        return img.astype(np.float32)
    ny, nx = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    rows = np.add(img[0:ny:b, :nx], img[1:ny:b, :nx], dtype=np.float32)
    for i in range(2, b):
        rows += img[i:ny:b, :nx]
    out = rows[:, 0::b] + rows[:, 1::b]
    for j in range(2, b):
        out += rows[:, j::b]
    return out


def _interp_matrix(n: int, box: int, m: int) -> np.ndarray:
    """(n, m) weights interpolating m block centres (block side ``box``) to n pixels.

    Linear between centres and linearly extrapolated beyond the outer ones, so that a glow
    rising towards an edge or corner is followed to the edge.
    """
    if m == 1:
        return np.ones((n, 1), np.float32)
    pos = (np.arange(n, dtype=np.float64) + 0.5) / box - 0.5  # fractional block index
    i0 = np.clip(np.floor(pos).astype(int), 0, m - 2)
    f = pos - i0
    w = np.zeros((n, m), np.float32)
    w[np.arange(n), i0] = 1 - f
    w[np.arange(n), i0 + 1] = f
    return w


def _mesh_grid(img: np.ndarray, box: int) -> np.ndarray | None:
    """Block medians (of a 2x2-strided subsample) on a grid of ``box``-pixel blocks."""
    ny, nx = img.shape
    gy, gx = ny // box, nx // box
    if box < 4 or gy < 1 or gx < 1 or (gy == 1 and gx == 1):
        return None
    s = 2 if box >= 8 else 1
    sub = img[: gy * box: s, : gx * box: s]
    bb = box // s
    blocks = sub.reshape(gy, bb, gx, bb).transpose(0, 2, 1, 3).reshape(gy, gx, bb * bb)
    if np.may_share_memory(blocks, img):  # a view (one block column): do not reorder img
        blocks = blocks.copy()
    k = bb * bb // 2
    blocks.partition(k, axis=2)
    return blocks[:, :, k]


def _mesh_expand(grid: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    wy = _interp_matrix(shape[0], box, grid.shape[0])
    wx = _interp_matrix(shape[1], box, grid.shape[1])
    return (wy @ grid.astype(np.float32)) @ wx.T


def _auto_bin(shape: tuple[int, int]) -> int:
    """Smallest power of 2 bringing the long side to at most 256 binned px while the short side
    keeps at least 64 (at least 2 when the short side has 128 px or more)."""
    b = 1
    while max(shape) / b > 256 and min(shape) / (2 * b) >= 64:
        b *= 2
    if b == 1 and min(shape) >= 128:
        b = 2
    return b


def _saturation_level(raw: np.ndarray, p: AutoParams) -> float:
    """User level, or the frame maximum when at least 3 pixels sit at it, else +inf."""
    if p.saturation > 0:
        return p.saturation
    m = float(np.max(raw))
    if not math.isfinite(m):
        m = float(np.nanmax(np.where(np.isfinite(raw), raw, -np.inf)))
        if not math.isfinite(m):
            return math.inf
    tol = 1e-6 * max(abs(m), 1.0)
    if np.count_nonzero(raw >= m - tol) >= 3:
        return m
    return math.inf


# ============================================================================ coarse step
@dataclass
class _Coarse:
    """What the coarse step needs per frame (derived from the shape and parameters)."""

    bin: int
    block: bool  # 2 x 2 block minimum (stride 2), then summed over bin // 2 blocks
    erode: bool  # sliding 2 x 2 erosion (one row and column lost), then summed over bin blocks
    binned_shape: tuple[int, int]
    shape: tuple[int, int]  # of the coarse images: binned, less two pixels on each edge
    fold: int  # the FFT correlation is of fold x fold sums of the coarse images
    padded_shape: tuple[int, int]  # of the FFT
    lag_y: np.ndarray  # lags searched on each axis (folded coarse px)
    lag_x: np.ndarray
    norm: np.ndarray  # 1 / sqrt(overlap area) on the lag grid
    filt: np.ndarray | None  # high-pass filter on the rfft grid
    mesh_box: int  # background mesh block side (binned px); 0: no mesh
    mesh_w: tuple[np.ndarray, np.ndarray] | None  # its interpolation matrices (y, x)


def _coarse_setup(shape: tuple[int, int], p: AutoParams) -> _Coarse:
    b = p.coarse_bin or _auto_bin(shape)
    b = max(1, min(b, min(shape) // 8))
    block = p.suppress_hot_pixels and b % 2 == 0
    erode = p.suppress_hot_pixels and not block
    e = 1 if erode else 0  # the erosion loses a row and a column
    nyb, nxb = (shape[0] - e) // b, (shape[1] - e) // b
    nyc, nxc = nyb - 4, nxb - 4  # the edges carry the artefacts of the filters
    # large coarse images: search all lags on 2 x 2 sums (a 4 times smaller FFT), then refine
    # the best peaks on the coarse images themselves
    fold = 2 if min(nyc, nxc) >= 96 else 1
    nyf, nxf = nyc // fold, nxc // fold
    ly = max(1, int(math.ceil(p.max_shift_fraction * nyf)))
    lx = max(1, int(math.ceil(p.max_shift_fraction * nxf)))
    py = sfft.next_fast_len(nyf + ly, real=True)
    px = sfft.next_fast_len(nxf + lx, real=True)
    lag_y = np.arange(-ly, ly + 1)
    lag_x = np.arange(-lx, lx + 1)
    over = np.outer(nyf - np.abs(lag_y), nxf - np.abs(lag_x)).astype(np.float32)
    filt = None
    if p.highpass_scale > 0:
        s = p.highpass_scale / (b * fold)
        ky = sfft.fftfreq(py)[:, None]
        kx = sfft.rfftfreq(px)[None, :]
        filt = (1.0 - np.exp(-2.0 * np.pi**2 * s**2 * (ky**2 + kx**2))).astype(np.float32)
    box = p.background_box // b if p.background_box > 0 else 0
    gy, gx = (nyb // box, nxb // box) if box else (0, 0)
    mesh_w = None
    if box >= 4 and gy >= 1 and gx >= 1 and (gy, gx) != (1, 1):  # as _mesh_grid
        mesh_w = (_interp_matrix(nyb, box, gy), _interp_matrix(nxb, box, gx))
    else:
        box = 0
    return _Coarse(b, block, erode, (nyb, nxb), (nyc, nxc), fold, (py, px), lag_y, lag_x,
                   1.0 / np.sqrt(over), filt, box, mesh_w)


class _NonFinite(Exception):
    """The frame (used as given, unchecked) has non-finite pixels where they matter."""


def _coarse_image(img: np.ndarray, p: AutoParams, c: _Coarse, bad: np.ndarray | None = None
                  ) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Cleaned, binned, thresholded image for the correlation (``c.shape``: the binned image
    less two pixels on each edge), its noise before scaling (measured away from the ``bad``
    pixels, which were filled with the median), and the 2 x 2 minimum image it was binned from
    (None without ``suppress_hot_pixels``).

    ``img`` is the frame as given (any real dtype; not modified). The row and column patterns
    are removed after binning, where they survive as per-binned-row and -column patterns.
    Non-finite pixels are not looked for: a NaN in the frame reaches the correlation (and
    makes it NaN everywhere), -inf ones are clipped away like anything below the threshold,
    +inf ones vanish from the 2 x 2 minimum like hot pixels (or are clipped like a saturated
    star); the caller checks the few things that matter.
    """
    core = None
    if c.block:
        core = _block_min2(img)
        binned = _bin(core, c.bin // 2)
    elif c.erode:
        core = _erode2(img)
        binned = _bin(core, c.bin)
    else:
        binned = _bin(img, c.bin)
    if p.remove_banding:
        _remove_banding(binned, 32)
    if c.mesh_w is not None:
        grid = _mesh_grid(binned, c.mesh_box)
        wy, wx = c.mesh_w
        binned -= (wy @ grid) @ wx.T
    else:
        binned -= _median(binned)
    sm = _smooth121(binned)  # interior: two pixels smaller on each axis
    inner = sm[1:-1, 1:-1]  # the edges (two pixels) carry the artefacts of every filter above
    e = 1 if c.erode else 0
    bbad = None
    if bad is not None:
        crop = bad[: bad.shape[0] - e, : bad.shape[1] - e]
        bbad = (_bin(crop, c.bin) > 0)[2:-2, 2:-2]
        if bbad.all():
            return np.zeros(c.shape, np.float32), 0.0, core
    # noise of the smoothed image, from every third pixel on each axis (its pixels are
    # correlated over ~3 px anyway)
    sigma = _mad_sigma(inner[::3, ::3], bad=None if bbad is None else bbad[::3, ::3])
    if not sigma > 0:
        return np.zeros(c.shape, np.float32), 0.0, core
    # only significant signal counts, and every star weighs at most coarse_clip (in units of
    # the noise: the data's scale does not matter, and its extremes do not over- or underflow)
    out = np.multiply(inner, 1.0 / sigma)
    out -= p.coarse_threshold
    np.maximum(out, 0.0, out=out)
    np.minimum(out, p.coarse_clip, out=out)
    return out, sigma, core


def _smooth121(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] smoothing (sum, not mean) of the interior: two rows and columns
    smaller."""
    t = a[:-1] + a[1:]
    t = t[:-1] + t[1:]
    u = t[:, :-1] + t[:, 1:]
    return u[:, :-1] + u[:, 1:]


def _ref_rfft(img: np.ndarray, c: _Coarse) -> np.ndarray:
    """Spectrum of the (folded) reference placed at offset (max lag) in the padded array, so
    that the searched lags form one contiguous corner block of the correlation."""
    if c.fold > 1:
        img = _bin(img, c.fold)
    ly, lx = len(c.lag_y) // 2, len(c.lag_x) // 2
    pad = np.zeros(c.padded_shape, np.float32)
    pad[ly: ly + img.shape[0], lx: lx + img.shape[1]] = img
    spec = sfft.rfft2(pad, workers=1)
    if c.filt is not None:
        spec *= c.filt
    return spec


@dataclass
class _CoarseRef:
    """The reference's coarse image, its spectrum, and what the lag refinement needs: its
    non-zero pixels, and the integral image of its square (sums over any overlap for the
    NCC)."""

    img: np.ndarray
    fft: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    val: np.ndarray
    sq_sum: np.ndarray


def _coarse_ref(img: np.ndarray, c: _Coarse) -> _CoarseRef:
    ys, xs = np.nonzero(img)
    sq = np.zeros((img.shape[0] + 1, img.shape[1] + 1))
    sq[1:, 1:] = np.cumsum(np.cumsum(img.astype(np.float64) ** 2, axis=0), axis=1)
    return _CoarseRef(img, _ref_rfft(img, c), ys, xs, img[ys, xs].astype(np.float32), sq)


def _overlap(shape: tuple[int, int], sy: int, sx: int) -> tuple[int, int, int, int]:
    """Rows y0:y1 and columns x0:x1 of the reference overlapping the frame at lag (sx, sy)."""
    ny, nx = shape
    return max(0, sy), min(ny, ny + sy), max(0, sx), min(nx, nx + sx)


def _ncc(ref: np.ndarray, frame: np.ndarray, sy: int, sx: int) -> float:
    """Normalised cross-correlation of two coarse images over their overlap at lag (sx, sy)."""
    y0, y1, x0, x1 = _overlap(ref.shape, sy, sx)
    if y1 <= y0 or x1 <= x0:
        return 0.0
    a = ref[y0:y1, x0:x1]
    b = frame[y0 - sy: y1 - sy, x0 - sx: x1 - sx]
    den = float(np.einsum("ij,ij->", a, a)) * float(np.einsum("ij,ij->", b, b))
    return float(np.einsum("ij,ij->", a, b)) / math.sqrt(den) if den > 0 else 0.0


@dataclass
class _Peak:
    dx: float  # raw pixels
    dy: float
    significance: float
    ncc: float


_STEPS = (np.array([0, -1, 1, 0, 0]), np.array([0, 0, 0, -1, 1]))  # centre, y -+, x -+


class _Refiner:
    """Correlation of the coarse images at a few lags (coarse px) near peaks found on the
    folded images: the sparse reference pixels times the frame padded with zeros by ``reach``
    (the largest lag looked at, on each axis)."""

    def __init__(self, ref: _CoarseRef, frame_img: np.ndarray, reach: tuple[int, int]):
        self.ref, self.frame = ref, frame_img
        ny, nx = frame_img.shape
        my, mx = min(reach[0], ny) + 2, min(reach[1], nx) + 2
        self.width = nx + 2 * mx
        pad = np.zeros((ny + 2 * my, self.width), np.float32)
        pad[my: my + ny, mx: mx + nx] = frame_img
        self.flat = pad.reshape(-1)
        self.idx = (ref.ys + my) * self.width + (ref.xs + mx)
        self.lim = (my - 1, mx - 1)

    def local(self, sy: int, sx: int) -> tuple[int, int, float, float, float]:
        """Integer lag of the highest correlation (normalised by the square root of the overlap
        area) walking uphill from (sy, sx) one pixel at a time along the axes, its sub-pixel
        offsets (parabolas through its neighbours) and the correlation there (not normalised).
        """
        ny, nx = self.frame.shape
        for _ in range(8):
            sy = min(max(sy, 1 - self.lim[0]), self.lim[0] - 1)
            sx = min(max(sx, 1 - self.lim[1]), self.lim[1] - 1)
            ly, lx = sy + _STEPS[0], sx + _STEPS[1]
            at = self.idx[None, :] - (ly * self.width + lx)[:, None]
            raw = self.flat.take(at) @ self.ref.val
            corr = (raw / np.sqrt(np.maximum((ny - np.abs(ly)) * (nx - np.abs(lx)), 1))).tolist()
            j = max(range(5), key=corr.__getitem__)
            if j == 0:
                break
            sy, sx = int(ly[j]), int(lx[j])
        fy = _parabola3(corr[1], corr[0], corr[2])
        fx = _parabola3(corr[3], corr[0], corr[4])
        return sy, sx, fy, fx, float(raw[0])

    def ncc(self, sy: int, sx: int, num: float) -> float:
        """NCC of the coarse images over their overlap at lag (sx, sy), their product summed
        over it being ``num``."""
        y0, y1, x0, x1 = _overlap(self.frame.shape, sy, sx)
        if y1 <= y0 or x1 <= x0:
            return 0.0
        q = self.ref.sq_sum
        ref2 = q[y1, x1] - q[y0, x1] - q[y1, x0] + q[y0, x0]
        b = self.frame[y0 - sy: y1 - sy, x0 - sx: x1 - sx]
        den = ref2 * float(np.einsum("ij,ij->", b, b))
        return num / math.sqrt(den) if den > 0 else 0.0


def _correlate(ref: _CoarseRef, frame_img: np.ndarray, c: _Coarse,
               n_candidates: int = 5) -> _Peak:
    """Best coarse shift, its significance and the images' similarity there.

    The correlation (normalised by the square root of the overlap area, which makes its noise
    uniform over lags) is searched over all lags up to the maximum shift, on ``fold`` x ``fold``
    sums of the coarse images (a four times smaller FFT for large frames); each peak taken is
    then refined on the coarse images themselves (their correlation at the lag and its four
    neighbours, walking uphill, then parabolas). If the highest peak does not dominate the next
    one by a factor 2, up to ``n_candidates`` peaks are compared by their height times the
    normalised cross-correlation (NCC) of the images over their overlap: a chance alignment of
    a few bright blobs has a high peak but a low NCC, a small overlap holding one matching blob
    a high NCC but a low peak.
    """
    py, px = c.padded_shape
    nly, nlx = len(c.lag_y), len(c.lag_x)
    img = _bin(frame_img, c.fold) if c.fold > 1 else frame_img
    # 2-D FFTs one axis at a time, skipping the rows that are zero padding (forward) or that
    # hold lags beyond the search (inverse)
    ff = sfft.fft(sfft.rfft(img, n=px, axis=1, workers=1), n=py, axis=0, workers=1)
    np.conj(ff, out=ff)
    ff *= ref.fft
    rows = sfft.ifft(ff, axis=0, overwrite_x=True, workers=1)[:nly]
    win = sfft.irfft(rows, n=px, axis=1, workers=1)[:, :nlx]
    win *= c.norm
    flat = int(np.argmax(win))
    iy, ix = divmod(flat, win.shape[1])
    peak = float(win[iy, ix])
    if not math.isfinite(peak):  # NaN pixels in the frame
        return _Peak(math.nan, math.nan, math.nan, math.nan)
    # statistics of the surface away from the peak
    r = 3
    excl = win[max(0, iy - r): iy + r + 1, max(0, ix - r): ix + r + 1]
    n_rest = win.size - excl.size
    if n_rest < 2:
        return _Peak(0.0, 0.0, 0.0, 0.0)
    s1 = float(win.sum()) - float(excl.sum())
    s2 = float(np.einsum("ij,ij->", win, win)) - float(np.einsum("ij,ij->", excl, excl))
    mean = s1 / n_rest
    sd = math.sqrt(max(s2 / n_rest - mean**2, 0.0))
    if not sd > 0:
        return _Peak(0.0, 0.0, 0.0, 0.0)
    cands = [(iy, ix)]
    work = None
    while len(cands) < n_candidates:
        if work is None:
            work = win.copy()
        y, x = cands[-1]
        work[max(0, y - 5): y + 6, max(0, x - 5): x + 6] = -np.inf
        nxt = int(np.argmax(work))
        y, x = divmod(nxt, win.shape[1])
        if len(cands) == 1 and (peak - mean) >= 2.0 * (float(win[y, x]) - mean):
            break  # the highest peak dominates: no need to compare
        if (float(win[y, x]) - mean) < 0.5 * (peak - mean):
            break
        cands.append((y, x))
    peaks = []  # integer lag and sub-pixel offsets of each candidate
    for y, x in cands:
        fy, fx = _parabola(win[:, x], y), _parabola(win[y, :], x)
        peaks.append((int(c.lag_y[y]), int(c.lag_x[x]), fy, fx))
    refiner = None
    if c.fold > 1:
        starts = [(int(round(c.fold * (sy + fy))), int(round(c.fold * (sx + fx))))
                  for sy, sx, fy, fx in peaks]
        # room for the uphill walks (8 steps at most) around the farthest peak
        refiner = _Refiner(ref, frame_img, (max(abs(a) for a, _ in starts) + 10,
                                            max(abs(b) for _, b in starts) + 10))
    best = None
    for i, (y, x) in enumerate(cands):
        sy, sx, fy, fx = peaks[i]
        if refiner is not None:
            sy, sx, fy, fx, num = refiner.local(*starts[i])
            ncc = refiner.ncc(sy, sx, num)
        else:
            ncc = _ncc(ref.img, frame_img, sy, sx)
        score = ncc * (float(win[y, x]) - mean)  # agreement where they overlap x its amount
        if best is None or score > best[0]:
            best = (score, ncc, sy + fy, sx + fx, float(win[y, x]))
    _, ncc, ly, lx, height = best
    return _Peak(float(lx * c.bin), float(ly * c.bin), (height - mean) / sd, ncc)


def _parabola(v: np.ndarray, i: int) -> float:
    if i <= 0 or i >= len(v) - 1:
        return 0.0
    return _parabola3(float(v[i - 1]), float(v[i]), float(v[i + 1]))


def _parabola3(a: float, b: float, c: float) -> float:
    """Offset of the vertex of the parabola through (-1, a), (0, b), (1, c), within +-0.5;
    0 unless b is a strict local maximum."""
    den = a - 2 * b + c
    if not den < 0:
        return 0.0
    return min(max(0.5 * (a - c) / den, -0.5), 0.5)


# ============================================================================ stars
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
    return med, _MAD * ring[:, k]


def _box3(stack: np.ndarray) -> np.ndarray:
    """3x3 box sums of each cutout (valid part: two pixels smaller on each axis)."""
    s = stack[:, :-2, :] + stack[:, 1:-1, :] + stack[:, 2:, :]
    return s[:, :, :-2] + s[:, :, 1:-1] + s[:, :, 2:]


def _windowed_centroid(stack: np.ndarray, start: np.ndarray, sig_w: float, noise: np.ndarray,
                       gain: float, n_iter: int = 10, max_offset: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    stars' Poisson noise through ``gain``, evaluated at the last Newton point), and a validity
    flag (converged, inside the cutout and, with ``max_offset``, that close to its centre).
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
    return c, err, ok


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
    peak: np.ndarray  # brightest 3x3 box sum, background subtracted
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
             half: int, p: AutoParams, sat, unchecked: bool = False) -> _Measured:
    """Find and centroid one star near each predicted position (px, py), all at once.

    For each position: cut a ``2*half+1`` cutout of ``img`` minus its row and column patterns
    ``bands`` (None: ``img`` is clean already), subtract the median of its border, remove hot
    pixels, take the brightest 3x3 box within ``search`` px of the prediction (it must exceed
    ``match_threshold`` noise sigmas and not be saturated in ``raw``, ``sat(raw_peaks)`` giving
    the saturation level, nor touch ``bad`` pixels), and centroid a small cutout around it with
    Gaussian-windowed moments. Positions must lie at least ``half`` px inside the frame
    (caller's job).
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
    noise = np.maximum(noise, 0.1 * _fmed(pos) if pos.size else 1.0)
    _despike(stack, noise)
    w = 2 * search + 1
    c0 = half - search  # the search box: stack pixels c0 .. c0 + w - 1 on each axis
    region = _box3(stack[:, c0 - 1: c0 + w + 1, c0 - 1: c0 + w + 1]).reshape(n, -1)
    j = np.argmax(region, axis=1)
    jy = iy + j // w - search
    jx = ix + j % w - search
    bpk = region[np.arange(n), j]
    ok = bpk > p.match_threshold * 3.0 * noise
    rpk = _windows(raw, 3)[jy - 1, jx - 1].reshape(n, 9).max(axis=1)
    ok &= rpk < p.saturation_fraction * sat(rpk)
    if bad is not None:
        r = int(math.ceil(fwhm)) + 1
        ok &= ~_windows(bad, 2 * r + 1)[jy - r, jx - r].reshape(n, -1).any(axis=1)
    sig_w = max(0.6, fwhm / 2.3548)
    hs = int(math.ceil(3.5 * sig_w)) + 1
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
    xy, err, cok = _windowed_centroid(small, start, sig_w, noise, p.gain, max_offset=1.5)
    ok &= cok
    xy[:, 0] += jx - hs
    xy[:, 1] += jy - hs
    return _Measured(xy, err, bpk, ok)


@dataclass
class _Catalogue:
    x: np.ndarray
    y: np.ndarray
    ex: np.ndarray  # (2, n): background-noise and Poisson parts of the x error
    ey: np.ndarray
    peak: np.ndarray

    def __post_init__(self):
        self.xy = np.column_stack([self.x, self.y])  # (n, 2)
        self.err2 = np.stack([self.ex, self.ey]) ** 2  # (axis, part, n)


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


def _find_sources(raw: np.ndarray, clean: np.ndarray, p: AutoParams, low: float = 4.0,
                  bad: np.ndarray | None = None) -> _Sources:
    """Local maxima of ``clean`` (banding removed) smoothed by a 1 px Gaussian.

    Peak values, signal-to-noise and FWHM are measured against the local background (median of
    the border of a 21 x 21 px cutout), so smooth glows and gradients do not make sources.
    """
    box = min(p.background_box, 32) if p.background_box > 0 else 0
    grid = _mesh_grid(clean, box) if box >= 8 else None
    img = clean - _mesh_expand(grid, box, clean.shape) if grid is not None else clean.copy()
    img -= _median(img)
    noise = _mad_sigma(img, bad=bad)
    sm = ndimage.gaussian_filter(img, 1.0, mode="nearest")
    sm_noise = _mad_sigma(sm, bad=bad)
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


def _estimate_fwhm(src: _Sources, sat: float, p: AutoParams) -> float:
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


def _geometry(fwhm: float, p: AutoParams, b: int) -> tuple[float, int, int]:
    """Window sigma, search radius and cutout half-size for a given FWHM."""
    sig_w = max(0.6, fwhm / 2.3548)
    r = p.search_radius if p.search_radius > 0 else max(4.0, float(b))
    search = int(math.ceil(r))
    # room for the centroid window (3.5 sigma + 1, see _measure) around a star anywhere within
    # the search radius, and a border beyond it for the background
    half = search + int(math.ceil(3.5 * sig_w)) + 2
    return sig_w, search, half


def _catalogue(raw: np.ndarray, clean: np.ndarray, bad: np.ndarray | None, p: AutoParams,
               b: int) -> tuple[_Catalogue, float, float, _Sources]:
    src = _find_sources(raw, clean, p, bad=bad)
    sat = _saturation_level(raw, p)
    fwhm = p.fwhm if p.fwhm > 0 else _estimate_fwhm(src, sat, p)
    sig_w, search, half = _geometry(fwhm, p, b)
    ny, nx = clean.shape
    empty = _Catalogue(np.zeros(0), np.zeros(0), np.zeros((2, 0)), np.zeros((2, 0)), np.zeros(0))
    if src.x.size == 0:
        return empty, fwhm, sat, src
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
        return empty, fwhm, sat, src
    m = _measure(clean, None, raw, bad, src.x[idx].astype(float), src.y[idx].astype(float),
                 fwhm, 1, half, p, lambda _: sat)
    ok = m.ok & (np.hypot(m.x - src.x[idx], m.y - src.y[idx]) < 1.5)
    ok &= np.cumsum(ok) <= p.n_stars
    cat = _Catalogue(m.x[ok], m.y[ok], m.ex[:, ok], m.ey[:, ok], m.peak[ok])
    return cat, fwhm, sat, src


# ============================================================================ prepared ref
class PreparedReference:
    """A reference frame prepared once per night for :func:`estimate_shift`.

    Holds the reference's coarse image and filtered correlation spectrum, its star catalogue
    and the parameters it was prepared with. Build it with :func:`prepare_reference`; treat it
    as opaque.

    Attributes
    ----------
    shape : tuple of int
        (ny, nx) of the reference.
    params : AutoParams
        The parameters it was prepared with.
    fwhm : float
        Star FWHM used (pixels).
    n_catalogue : int
        Number of catalogue stars for the fine step.
    """

    def __init__(self, shape, params, coarse, coarse_ref, catalogue, fwhm, saturation, template,
                 ok=True, reason=""):
        self.shape = shape
        self.params = params
        self._coarse = coarse
        self._cref = coarse_ref
        self._cat = catalogue
        self.fwhm = fwhm
        self.saturation = saturation
        self._template = template
        self.ok = ok
        self.reason = reason

    @property
    def n_catalogue(self) -> int:
        return int(self._cat.x.size)

    @property
    def star_positions(self) -> np.ndarray:
        """(n, 2) array of catalogue star positions (x, y) in reference pixels."""
        return np.column_stack([self._cat.x, self._cat.y])

    def __repr__(self) -> str:
        return (f"PreparedReference(shape={self.shape}, n_catalogue={self.n_catalogue}, "
                f"fwhm={self.fwhm:.2f}, bin={self._coarse.bin}, ok={self.ok})")


@dataclass
class _Template:
    """Reference source stamps for the full-resolution correlation fallback.

    Each source contributes the pixels within ``3 sigma_t`` of its centroid, background
    subtracted and multiplied by a Gaussian window centred on the centroid (a symmetric weight
    keeps the correlation peak unbiased). All arrays are (n_sources, 2h+1, 2h+1) stamps centred
    on the integer pixels ``(x, y)``.
    """

    y: np.ndarray
    x: np.ndarray
    half: int
    t: np.ndarray  # template values (zero outside the disk)
    w2: np.ndarray  # squared window (template noise is window * pixel noise)
    r: np.ndarray  # background-subtracted reference values (for their Poisson noise)
    d1x: np.ndarray  # (T(q-1) - T(q+1))^2 along x
    d1y: np.ndarray
    d2x: np.ndarray  # (T(q-1) - 2 T(q) + T(q+1))^2 along x
    d2y: np.ndarray
    noise: float  # pixel noise of the reference


def _make_template(src: _Sources, raw: np.ndarray, fwhm: float, sat: float, p: AutoParams,
                   max_sources: int = 50) -> _Template | None:
    ny, nx = src.bkg.shape
    sig_t = max(1.0, 1.5 * fwhm / 2.3548)
    ri = int(math.ceil(3.0 * sig_t))
    half = ri + 3
    edge = half + 1
    good = (_star_like(src, fwhm) & (src.raw_peak < p.saturation_fraction * sat)
            & (src.snr >= 5) & (src.x >= edge) & (src.x < nx - edge) & (src.y >= edge)
            & (src.y < ny - edge))
    idx = np.nonzero(good)[0][:max_sources]
    if idx.size == 0:
        return None
    m = _measure(src.bkg, None, raw, None, src.x[idx].astype(float), src.y[idx].astype(float),
                 fwhm, 1, half, dataclasses.replace(p, match_threshold=0.0), lambda _: math.inf)
    ok = m.ok & (np.hypot(m.x - src.x[idx], m.y - src.y[idx]) < 1.5)
    if not ok.any():
        return None
    cx, cy = m.x[ok], m.y[ok]
    ix, iy = np.rint(cx).astype(np.int64), np.rint(cy).astype(np.int64)
    stack = _cutouts(src.bkg, iy, ix, half).astype(np.float64)
    med, noise = _ring_stats(stack)
    stack -= med[:, None, None]
    _despike(stack, np.maximum(noise, 1e-12))
    stack = stack[:, 3:-3, 3:-3]  # half-size ri from here on
    off = np.arange(-ri, ri + 1, dtype=np.float64)
    ddx = off[None, :] - (cx - ix)[:, None]
    ddy = off[None, :] - (cy - iy)[:, None]
    r2 = ddy[:, :, None] ** 2 + ddx[:, None, :] ** 2
    win = np.exp(-0.5 * r2 / sig_t**2)
    win[r2 > (3.0 * sig_t) ** 2] = 0.0
    tmpl = stack * win
    tp = np.pad(tmpl, ((0, 0), (1, 1), (1, 1)))
    c = tp[:, 1:-1, 1:-1]
    d1x = (tp[:, 1:-1, :-2] - tp[:, 1:-1, 2:]) ** 2
    d1y = (tp[:, :-2, 1:-1] - tp[:, 2:, 1:-1]) ** 2
    d2x = (tp[:, 1:-1, :-2] - 2 * c + tp[:, 1:-1, 2:]) ** 2
    d2y = (tp[:, :-2, 1:-1] - 2 * c + tp[:, 2:, 1:-1]) ** 2
    return _Template(iy, ix, ri, tmpl, win**2, np.where(win > 0, stack, 0.0), d1x, d1y, d2x,
                     d2y, float(src.noise))


def prepare_reference(reference: np.ndarray, **params) -> PreparedReference:
    """Prepare a reference frame once for many calls of :func:`estimate_shift`.

    Parameters
    ----------
    reference : 2-D array
        The reference frame (any size of at least 16 x 16 px; NaNs allowed).
    **params
        Any field of :class:`AutoParams`.

    Returns
    -------
    PreparedReference
        Opaque object to pass as ``reference`` to :func:`estimate_shift`. If the reference has
        nothing to match (blank, all NaN) it is still returned, with ``ok=False``, and every
        estimate against it fails with that reason.

    Raises
    ------
    ValueError, TypeError
        For a non-2-D or too-small array, or an unknown / ill-typed parameter.
    """
    p = _make_params(params)
    raw = np.asarray(reference)
    img, bad = _as_image(raw, "reference")
    coarse = _coarse_setup(img.shape, p)
    empty = _Catalogue(np.zeros(0), np.zeros(0), np.zeros((2, 0)), np.zeros((2, 0)), np.zeros(0))
    if bad is not None and bad.all():
        return PreparedReference(img.shape, p, coarse, None, empty, float("nan"), math.inf,
                                 None, False, "the reference frame has no finite pixels")
    rawf = img.copy()
    cimg, sigma, _ = _coarse_image(img, p, coarse, bad)
    if p.remove_banding:
        _remove_banding(img)
    if not sigma > 0 or not np.any(cimg > 0):
        return PreparedReference(img.shape, p, coarse, None, empty, float("nan"), math.inf,
                                 None, False, "the reference frame is blank (no signal)")
    cref = _coarse_ref(cimg, coarse)
    cat, fwhm, sat, src = _catalogue(rawf, img, bad, p, coarse.bin)
    template = _make_template(src, rawf, fwhm, sat, p)
    log.debug("reference %s: %d catalogue stars, FWHM %.2f px, bin %d", img.shape,
              cat.x.size, fwhm, coarse.bin)
    return PreparedReference(img.shape, p, coarse, cref, cat, fwhm, sat, template)


# ============================================================================ estimation
def _failed(reason: str) -> ShiftEstimate:
    nan = float("nan")
    return ShiftEstimate(nan, nan, nan, nan, 0, "failed", False, reason)


def _resolve(reference, params) -> tuple[PreparedReference, AutoParams]:
    if isinstance(reference, PreparedReference):
        base = reference.params
        if params:
            p = _make_params({**dataclasses.asdict(base), **params})
            changed = [k for k in params if k not in _FRAME_ONLY
                       and getattr(p, k) != getattr(base, k)]
            if changed:
                raise ValueError(
                    f"parameter(s) {', '.join(sorted(changed))} differ from those the reference "
                    "was prepared with; prepare it again with them")
            return reference, p
        return reference, base
    prep = prepare_reference(reference, **params)
    return prep, prep.params


def estimate_shift(reference, moving: np.ndarray, **params) -> ShiftEstimate:
    """Estimate the shift that moves ``moving`` onto ``reference``, automatically.

    Coarse FFT cross-correlation of cleaned, binned images finds offsets of any size up to
    ``max_shift_fraction`` of the frame; centroids of the reference's isolated bright stars then
    give the sub-pixel shift and its uncertainty (see the module docstring).

    Parameters
    ----------
    reference : 2-D array or PreparedReference
        The reference frame, or the result of :func:`prepare_reference` (much faster when
        aligning many frames). With a PreparedReference, parameters that shape the reference
        must equal those it was prepared with (else ValueError); per-frame ones
        (``min_significance``, ``search_radius``, ``match_threshold``, ``min_stars``,
        ``clip_sigma``, ``max_star_scatter``, ``sigma_floor``, ``refine``) may differ.
    moving : 2-D array
        The frame to align, same shape as the reference. NaNs are allowed.
    **params
        Any field of :class:`AutoParams`.

    Returns
    -------
    ShiftEstimate
        ``dx, dy`` (reference - frame, x first: a sky point at reference pixel ``(x, y)`` is at
        ``(x - dx, y - dy)`` in ``moving``), their 1-sigma uncertainties, the number of stars
        used and the method (``'stars'``, ``'correlation'`` or ``'failed'``). A frame that cannot
        be matched gives ``ok=False`` and a ``reason``; it never raises.

    Raises
    ------
    ValueError, TypeError
        Programmer errors only: arrays that are not 2-D or differ in shape, unknown or ill-typed
        parameters.
    """
    if not isinstance(reference, PreparedReference):
        ref_shape = np.shape(reference)
        if np.ndim(moving) == 2 and len(ref_shape) == 2 and ref_shape != np.shape(moving):
            raise ValueError(f"moving frame shape {np.shape(moving)} differs from the "
                             f"reference's {ref_shape}")
    prep, p = _resolve(reference, params)
    raw_in = _checked(moving, "moving")
    if raw_in.shape != prep.shape:
        raise ValueError(f"moving frame shape {raw_in.shape} differs from the reference's "
                         f"{prep.shape}")
    if not prep.ok:
        return _failed(prep.reason)
    try:
        with np.errstate(all="ignore"):
            try:
                # the frame as given (no copy): integer frames are finite, and a float frame's
                # non-finite pixels are caught where they would matter (_NonFinite)
                return _estimate(prep, p, raw_in, raw_in, None, raw_in.dtype.kind == "f")
            except _NonFinite:  # a float32 copy with the non-finite pixels filled and masked
                img, bad = _as_image(raw_in, "moving")
                return _estimate(prep, p, raw_in, img, bad, False)
    except Exception as exc:  # a frame must never crash a night: report it as failed
        log.warning("estimate_shift failed unexpectedly on a frame", exc_info=True)
        return _failed(f"internal error while estimating ({type(exc).__name__}: {exc})")


def _estimate(prep: PreparedReference, p: AutoParams, raw: np.ndarray, img: np.ndarray,
              bad: np.ndarray | None, unchecked: bool) -> ShiftEstimate:
    """The estimate proper.

    ``img``: the frame, the caller's array itself (never modified), or a float32 copy with the
    ``bad`` (non-finite) pixels filled; ``raw``: the caller's array, for saturation. When
    ``unchecked`` (``img`` is the caller's float array), :class:`_NonFinite` is raised as soon
    as a non-finite pixel shows up anywhere it would be used.
    """
    if bad is not None and bad.all():
        return _failed("the frame has no finite pixels")
    if bad is not None and bad.mean() > 0.9:
        return _failed("more than 90% of the frame's pixels are not finite")
    c = prep._coarse
    cimg, sigma, core = _coarse_image(img, p, c, bad)
    if not (sigma > 0 and cimg.max() > 0):
        if unchecked:  # perhaps NaN pixels: see with them masked
            raise _NonFinite
        return _failed("the frame is blank (no signal above the noise)")
    pk = _correlate(prep._cref, cimg, c)
    if unchecked and not math.isfinite(pk.significance):
        raise _NonFinite  # NaN pixels reached the correlation
    log.debug("coarse shift (%.2f, %.2f), significance %.1f, ncc %.3f", pk.dx, pk.dy,
              pk.significance, pk.ncc)
    if not (pk.significance >= p.min_significance and pk.ncc >= p.min_similarity):
        return _failed(f"no match with the reference (correlation peak {pk.significance:.1f} "
                       f"sigma, similarity {pk.ncc:.2f}): no overlap or nothing to match")
    dx0, dy0 = pk.dx, pk.dy
    # row and column patterns at full resolution: subtracted from each cutout, not the frame
    bands = _banding(img) if p.remove_banding else None
    if p.refine and prep.n_catalogue > 0:
        res = _fine(prep, p, raw, img, bands, bad, unchecked, core, dx0, dy0)
        if res is not None:
            return res
    if unchecked and not _finite(img):
        raise _NonFinite
    clean = np.array(img, dtype=np.float32)
    if bands is not None:
        clean -= bands[0][:, None]
        clean -= bands[1][None, :]
    res = _refine_correlation(prep, p, clean, dx0, dy0, bad)
    if res is not None:
        return res
    return _failed("could not refine the correlation peak (too little signal where the "
                   "reference has stars)")


def _frame_saturation(raw: np.ndarray, p: AutoParams, core: np.ndarray | None,
                      ref_level: float, unchecked: bool, peaks: np.ndarray) -> float:
    """Saturation level of a frame (:func:`_saturation_level`), worked out only as far as the
    stars' raw ``peaks`` need it.

    None can be rejected when the brightest 2 x 2 block of ``core`` (the frame's 2 x 2 minimum
    image, a lower bound of its maximum) is already above them all by ``1 /
    saturation_fraction``, nor when they are below that fraction of the frame maximum. A 2 x 2
    block at the maximum shows without counting that several pixels sit at it; and a 2 x 2
    block exactly at the reference's saturation level ``ref_level`` (the camera's ceiling) shows
    that it is the frame's maximum as well, without looking for it.
    """
    if p.saturation > 0:
        return p.saturation
    frac = p.saturation_fraction
    top = float(peaks.max()) if peaks.size else -math.inf
    low = float(core.max()) if core is not None else -math.inf
    if frac >= 0 and frac * low > top:
        return math.inf
    if math.isfinite(ref_level) and abs(low - ref_level) <= 1e-6 * max(abs(ref_level), 1.0):
        return low
    vmax = float(np.max(raw))
    if not math.isfinite(vmax):
        if unchecked:
            raise _NonFinite
        return _saturation_level(raw, p)
    if not top >= frac * vmax:
        return math.inf
    if low >= vmax - 1e-6 * max(abs(vmax), 1.0):
        return vmax
    return _saturation_level(raw, p)


def _fine(prep: PreparedReference, p: AutoParams, raw: np.ndarray, img: np.ndarray,
          bands: tuple[np.ndarray, np.ndarray] | None, bad: np.ndarray | None,
          unchecked: bool, core: np.ndarray | None, dx0: float, dy0: float
          ) -> ShiftEstimate | None:
    """Star-centroid step; None when fewer than ``min_stars`` consistent stars."""
    cat = prep._cat
    sig_w, search, half = _geometry(prep.fwhm, p, prep._coarse.bin)
    ny, nx = img.shape
    px = cat.x - dx0
    py = cat.y - dy0
    ix = np.rint(px).astype(np.int64)
    iy = np.rint(py).astype(np.int64)
    inside = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    if np.count_nonzero(inside) < p.min_stars:
        return None
    sel = np.nonzero(inside)[0]
    m = _measure(img, bands, raw, bad, px[sel], py[sel], prep.fwhm, search, half, p,
                 lambda peaks: _frame_saturation(raw, p, core, prep.saturation, unchecked, peaks),
                 unchecked)
    if np.count_nonzero(m.ok) < p.min_stars:
        return None
    s = sel[m.ok]
    d = (cat.xy[s] - m.xy[m.ok]).T  # (axis, star)
    e2 = m.err[:, m.ok] ** 2  # (part, star, axis)
    comb = _combine(d, cat.err2[:, :, s] + e2.transpose(2, 0, 1), p)
    if comb is None:
        return None
    dx, dy, sdx, sdy, n = comb
    return ShiftEstimate(dx, dy, sdx, sdy, n, "stars", True, "")


def _fmed(v: np.ndarray) -> float:
    """Median of a small 1-D array (np.median's overhead dominates at this size)."""
    return float(_fmed_rows(v[None, :])[0])


def _fmed_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row of a small 2-D array."""
    n = a.shape[1]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=1)[:, k]
    part = np.partition(a, (k - 1, k), axis=1)
    return 0.5 * (part[:, k - 1] + part[:, k])


def _combine(d: np.ndarray, m2: np.ndarray, p: AutoParams):
    """Combine per-star offsets: sigma clipping, then a weighted mean with fitted star errors.

    ``d`` holds the offsets (axis, star), ``m2`` their noise-model variances (axis, part,
    star; parts: background, Poisson). Stars are clipped against the model plus
    ``sigma_floor**2``, scaled by the robust spread of the normalised residuals; the kept
    stars' offsets are then averaged with weights from :func:`_fit_errors`.
    """
    v = m2[:, 0] + m2[:, 1]
    v += p.sigma_floor**2
    sd = np.sqrt(v)
    use = None  # all stars
    mu = _fmed_rows(d)
    for _ in range(10):
        z = np.abs(d - mu[:, None])
        z /= sd
        # robust spread of normalised residuals of the kept stars (>= 1: model is a floor)
        spread = _MAD * _fmed_rows(z if use is None else z[:, use])
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
    scat = _MAD * float(_fmed_rows(np.abs(d[:, use] - mu[:, None])).max())
    if scat > p.max_star_scatter:
        log.debug("star offsets scatter %.2f px > max_star_scatter; not trusted", scat)
        return None
    mean, sdm = _fit_errors(d[:, use], m2[:, :, use], p.sigma_floor)
    return float(mean[0]), float(mean[1]), float(sdm[0]), float(sdm[1]), n


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
    d0 = _fmed_rows(d)
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


def _refine_correlation(prep: PreparedReference, p: AutoParams, clean: np.ndarray,
                        dx0: float, dy0: float, bad: np.ndarray | None = None
                        ) -> ShiftEstimate | None:
    """Full-resolution correlation of the reference's source stamps around the coarse shift.

    ``C(s) = sum_q T(q) F(q - s)`` for integer lags s within 2 px of the coarse shift (walking
    uphill if the maximum is on the border); the peak is refined on each axis by a 3-point
    Gaussian (log-parabola) fit, or a parabola. Its uncertainty propagates the pixel noise of the
    frame (through the template) and of the reference (through the frame), Poisson noise
    included through ``gain``: first order in the numerator, second order in the curvature.
    """
    t = prep._template
    if t is None:
        return None
    ny, nx = clean.shape
    noise_f = _mad_sigma(clean, bad=bad)
    k = 2
    h = t.half
    hh = h + k + 1  # frame cutout half-size: template, lags and one pixel for despiking
    sx0, sy0 = int(round(dx0)), int(round(dy0))
    for _ in range(4):  # walk uphill when the maximum is on the border of the lag grid
        cy, cx = t.y - sy0, t.x - sx0
        keep = (cy >= hh) & (cy < ny - hh) & (cx >= hh) & (cx < nx - hh)
        if not keep.any():
            return None
        fr = _cutouts(clean, cy[keep], cx[keep], hh).astype(np.float64)
        if p.suppress_hot_pixels:
            _despike(fr, np.full(fr.shape[0], noise_f))
        tv = t.t[keep]
        n = 2 * h + 1

        def window(ly: int, lx: int, fr=fr, n=n) -> np.ndarray:
            y0, x0 = k + 1 - ly, k + 1 - lx
            return fr[:, y0: y0 + n, x0: x0 + n]

        lags = range(-k, k + 1)
        corr = np.array([[float(np.einsum("kij,kij->", tv, window(ly, lx))) for lx in lags]
                         for ly in lags])
        iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
        if 0 < iy < 2 * k and 0 < ix < 2 * k:
            break
        sx0 += int(ix) - k
        sy0 += int(iy) - k
    else:
        return None
    c0 = corr[iy, ix]
    if c0 <= 0:
        return None
    ly0, lx0 = int(iy) - k, int(ix) - k
    f0 = window(ly0, lx0)
    w2 = t.w2[keep]
    var_r = t.noise**2 + (np.clip(t.r[keep], 0, None) / p.gain if p.gain > 0 else 0.0)
    var_f = noise_f**2 + (np.clip(f0, 0, None) / p.gain if p.gain > 0 else 0.0)
    cross = float(np.sum(w2 * var_r * var_f))
    res = []
    for axis in ("x", "y"):
        if axis == "x":
            cm, cp = corr[iy, ix - 1], corr[iy, ix + 1]
            fm, fp = window(ly0, lx0 - 1), window(ly0, lx0 + 1)
            d1, d2 = t.d1x[keep], t.d2x[keep]
        else:
            cm, cp = corr[iy - 1, ix], corr[iy + 1, ix]
            fm, fp = window(ly0 - 1, lx0), window(ly0 + 1, lx0)
            d1, d2 = t.d1y[keep], t.d2y[keep]
        num = cm - cp
        den = cm - 2 * c0 + cp
        if not den < 0:
            return None
        # noise of num = C(s-1) - C(s+1) and den = C(s-1) - 2 C(s) + C(s+1): frame noise
        # through the template's differences, template noise through the frame's; the
        # noise x noise term is in both sums, so it is removed once
        var_num = (float(np.sum(var_f * d1)) + float(np.sum(w2 * var_r * (fm - fp) ** 2))
                   - 2.0 * cross)
        var_den = (float(np.sum(var_f * d2))
                   + float(np.sum(w2 * var_r * (fm - 2 * f0 + fp) ** 2)) - 6.0 * cross)
        var_num, var_den = max(var_num, 0.0), max(var_den, 0.0)
        frac = 0.5 * num / den
        if cm > 0 and cp > 0:  # Gaussian interpolation: unbiased for a Gaussian-like peak
            lm, l0, lp = math.log(cm), math.log(c0), math.log(cp)
            if lm - 2 * l0 + lp < 0:
                frac = 0.5 * (lm - lp) / (lm - 2 * l0 + lp)
        frac = float(np.clip(frac, -0.5, 0.5))
        r2 = var_den / den**2
        var = (0.25 * var_num / den**2) * (1.0 + 3.0 * r2) + frac**2 * r2
        res.append((frac, math.hypot(math.sqrt(var), 0.02)))  # 0.02: sampled-peak interpolation
    (fxs, sdx), (fys, sdy) = res
    return ShiftEstimate(float(sx0 + lx0 + fxs), float(sy0 + ly0 + fys), sdx, sdy, 0,
                         "correlation", True, "")


# ============================================================================ reference choice
def choose_reference(frames: Sequence[np.ndarray], **params) -> int:
    """Index of the best reference: the sharpest frame among those with the most stars.

    Stars (isolated-or-not sources with peak S/N above ``detect_threshold``, not saturated, not
    hot pixels) are counted in every frame; among frames with at least ``ref_star_fraction``
    of the largest count, the one with the smallest median FWHM is chosen.

    Parameters
    ----------
    frames : sequence of 2-D arrays
        The night's frames (same shape).
    **params
        Any field of :class:`AutoParams`.

    Returns
    -------
    int
        Index into ``frames`` (0 if no frame has stars).

    Raises
    ------
    ValueError
        For an empty sequence, or frames that are not 2-D or differ in shape.
    """
    p = _make_params(params)
    if len(frames) == 0:
        raise ValueError("choose_reference needs at least one frame")
    shape = None
    counts, fwhms = [], []
    for i, frame in enumerate(frames):
        img, bad = _as_image(frame, f"frames[{i}]")
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise ValueError(f"frames[{i}] has shape {img.shape}, frames[0] {shape}")
        if bad is not None and bad.all():
            counts.append(0)
            fwhms.append(math.inf)
            continue
        raw = img.copy()
        if p.remove_banding:
            _remove_banding(img)
        src = _find_sources(raw, img, p, bad=bad)
        sat = _saturation_level(raw, p)
        fwhm = _estimate_fwhm(src, sat, p)
        good = ((src.snr >= p.detect_threshold) & _star_like(src, fwhm)
                & (src.raw_peak < p.saturation_fraction * sat))
        counts.append(int(np.count_nonzero(good)))
        fwhms.append(fwhm if good.any() else math.inf)
        log.debug("frame %d: %d stars, FWHM %.2f", i, counts[-1], fwhms[-1])
    best = max(counts)
    if best == 0:
        return 0
    cand = [i for i, n in enumerate(counts) if n >= p.ref_star_fraction * best]
    return min(cand, key=lambda i: (fwhms[i], -counts[i], i))
