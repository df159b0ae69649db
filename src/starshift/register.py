"""Automatic shift estimation: coarse FFT cross-correlation, then star centroids.

A shift ``(dx, dy)`` is what moves a frame onto the reference, ``reference - frame``, x first,
in pixels: a sky point at reference pixel ``(xr, yr)`` appears in the moving frame at
``(xr - dx, yr - dy)``. numpy's (y, x) order is used only inside this module.

The estimate has two steps (:func:`estimate_shift`):

**Coarse.** Both images are cleaned of what does not move with the sky, then cross-correlated
with one small real FFT:

* row and column fixed patterns (banding, bias columns) and any additive-separable gradient:
  robust row, then column medians are subtracted;
* hot pixels, their pairs and clusters, cosmic rays, bleed columns: a 2 x 2 grey erosion (the
  minimum of every 2 x 2 block) removes anything without a bright 2 x 2 core;
* the image is binned (``coarse_bin``), smooth non-separable background (vignetting, amplifier
  glow, a cluster's diffuse light) is removed with a mesh of block medians, and a [1, 2, 1]
  smoothing matches faint stars;
* each pixel becomes ``clip(value / noise - coarse_threshold, 0, coarse_clip)``: only
  significant signal counts, a saturated core weighs no more than any bright star, and weak
  fixed patterns cannot add up over the whole frame to pin the correlation at zero shift;
* a Gaussian high-pass (``highpass_scale``) in Fourier space damps what is left of the
  large-scale structure.

The correlation is zero-padded (no wrap-around), normalised by the square root of the overlap
area (uniform noise over lags, so large shifts are not penalised) and searched up to
``max_shift_fraction`` of the frame. When its highest peak does not clearly dominate, the best
few peaks are compared by height times the normalised cross-correlation (NCC) of the cleaned
images over their overlap. The chosen peak must stand ``min_significance`` standard deviations
above the correlation surface and have an NCC of at least ``min_similarity``, else the frame is
reported failed (no overlap, nothing to match).

**Fine.** The reference's brightest unsaturated, isolated, star-shaped sources (prepared once)
are looked for within ``search_radius`` of where the coarse shift puts them; each is centroided
with iterative Gaussian-windowed moments (Newton steps; no PSF model, unbiased for any
symmetric PSF) on a background-subtracted, despiked cutout, all stars at once. Each star's
error is propagated from the pixel noise in both images, in two parts: local background noise
and the star's own Poisson noise (through ``gain``). After sigma clipping, the offsets are
averaged with weights from a fitted error model, ``variance = b^2 background + q^2 Poisson +
f^2`` with ``b``, ``q`` (weak priors around 1) and the floor ``f >= sigma_floor`` fitted to the
stars' scatter by restricted maximum likelihood; so the uncertainty of the mean stays honest when
the gain is unknown or the noise model is off. With fewer than ``min_stars`` usable stars the
coarse peak is refined on the full-resolution frame by direct correlation with stamps of the
reference's sources (3-point Gaussian peak interpolation), with an uncertainty propagated from
the pixel noise of both images.

Everything expensive about the reference is done once by :func:`prepare_reference`; per frame the
cost is one small FFT pair plus array arithmetic on a few dozen small cutouts (~5-10 ms for a
765 x 510 frame on one core).
"""

from __future__ import annotations

import dataclasses
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
        the long side to at most 512 px (at least 2 when the short side has 128 px or more).
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
        correlating, and despike the star cutouts.
    remove_banding : bool
        Subtract robust row and column medians (fixed patterns, banding, gradients).
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
        ``max(4, 2 * coarse_bin)``.
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
def _as_image(a, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 copy with non-finite pixels replaced by the median; and the bad-pixel mask."""
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got an array of shape {arr.shape}")
    if min(arr.shape) < MIN_SIZE:
        raise ValueError(f"{name} is {arr.shape[1]} x {arr.shape[0]} px; need at least "
                         f"{MIN_SIZE} px on each side")
    if not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    img = np.array(arr, dtype=np.float32)
    if np.isfinite(img.sum(dtype=np.float64)):
        return img, None
    bad = ~np.isfinite(img)
    if bad.all():
        return img, bad
    img[bad] = _median(img[~bad])
    return img, bad


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


def _remove_banding(img: np.ndarray, n_samples: int = 64) -> None:
    """Subtract robust row then column medians in place (also removes the sky level).

    Each median is taken over about ``n_samples`` evenly spaced pixels of the row or column:
    its noise (~0.15 of the pixel noise) is below any banding worth removing, and the cost
    stays small for frames of any size.
    """
    ny, nx = img.shape
    sub = img[:, :: max(1, nx // n_samples)]
    k = sub.shape[1] // 2
    img -= np.partition(sub, k, axis=1)[:, k][:, None]
    sub = np.ascontiguousarray(img[:: max(1, ny // n_samples), :].T)
    k = sub.shape[1] // 2
    img -= np.partition(sub, k, axis=1)[:, k][None, :]


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


def _bin(img: np.ndarray, b: int) -> np.ndarray:
    if b == 1:
        return img.copy()
    ny, nx = (img.shape[0] // b) * b, (img.shape[1] // b) * b
    out = img[0:ny:b, 0:nx:b].copy()
    for i in range(b):
        for j in range(b):
            if i or j:
                out += img[i:ny:b, j:nx:b]
    out *= 1.0 / (b * b)
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
    k = bb * bb // 2
    return np.partition(blocks, k, axis=2)[:, :, k]


def _mesh_expand(grid: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    wy = _interp_matrix(shape[0], box, grid.shape[0])
    wx = _interp_matrix(shape[1], box, grid.shape[1])
    return (wy @ grid.astype(np.float32)) @ wx.T


def _auto_bin(shape: tuple[int, int]) -> int:
    b = 1
    while max(shape) / b > 512 and min(shape) / (2 * b) >= 64:
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
    binned_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    lag_y: np.ndarray  # lags (binned px) searched on each axis
    lag_x: np.ndarray
    norm: np.ndarray  # 1 / sqrt(overlap area) on the lag grid
    filt: np.ndarray | None  # high-pass filter on the rfft grid


def _coarse_setup(shape: tuple[int, int], p: AutoParams) -> _Coarse:
    b = p.coarse_bin or _auto_bin(shape)
    b = max(1, min(b, min(shape) // 8))
    e = 1 if p.suppress_hot_pixels else 0  # the 2 x 2 erosion loses a row and a column
    nyb, nxb = (shape[0] - e) // b, (shape[1] - e) // b
    ly = max(1, int(math.ceil(p.max_shift_fraction * nyb)))
    lx = max(1, int(math.ceil(p.max_shift_fraction * nxb)))
    py = sfft.next_fast_len(nyb + ly, real=True)
    px = sfft.next_fast_len(nxb + lx, real=True)
    lag_y = np.arange(-ly, ly + 1)
    lag_x = np.arange(-lx, lx + 1)
    over = np.outer(nyb - np.abs(lag_y), nxb - np.abs(lag_x)).astype(np.float32)
    filt = None
    if p.highpass_scale > 0:
        s = p.highpass_scale / b
        ky = sfft.fftfreq(py)[:, None]
        kx = sfft.rfftfreq(px)[None, :]
        filt = (1.0 - np.exp(-2.0 * np.pi**2 * s**2 * (ky**2 + kx**2))).astype(np.float32)
    return _Coarse(b, (nyb, nxb), (py, px), lag_y, lag_x, 1.0 / np.sqrt(over), filt)


def _coarse_image(clean: np.ndarray, p: AutoParams, c: _Coarse, bad: np.ndarray | None = None
                  ) -> tuple[np.ndarray, float]:
    """Cleaned, binned, thresholded image for the correlation, and its noise before scaling
    (measured away from the ``bad`` pixels, which were filled with the median)."""
    img = _erode2(clean) if p.suppress_hot_pixels else clean
    binned = _bin(img, c.bin)
    box = p.background_box // c.bin if p.background_box > 0 else 0
    grid = _mesh_grid(binned, box) if box else None
    if grid is not None:
        binned -= _mesh_expand(grid, box, binned.shape)
    else:
        binned -= _median(binned)
    binned = _smooth121(binned)
    bbad = None
    if bad is not None:
        crop = bad[: bad.shape[0] - 1, : bad.shape[1] - 1] if p.suppress_hot_pixels else bad
        bbad = _bin(crop.astype(np.float32), c.bin) > 0
        if bbad.all():
            return np.zeros_like(binned), 0.0
    sigma = _mad_sigma(binned, bad=bbad)
    if not sigma > 0:
        return np.zeros_like(binned), 0.0
    binned *= 1.0 / sigma
    binned -= p.coarse_threshold
    np.clip(binned, 0.0, p.coarse_clip, out=binned)
    # edges carry the artefacts of every filter above; they do not move with the sky
    binned[:2, :] = 0
    binned[-2:, :] = 0
    binned[:, :2] = 0
    binned[:, -2:] = 0
    return binned, sigma


def _smooth121(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing (interior; edge rows and columns copied)."""
    t = a.copy()
    t[1:-1, :] *= 2
    t[1:-1, :] += a[:-2, :]
    t[1:-1, :] += a[2:, :]
    out = t.copy()
    out[:, 1:-1] *= 2
    out[:, 1:-1] += t[:, :-2]
    out[:, 1:-1] += t[:, 2:]
    out *= 1.0 / 16
    return out


def _ref_rfft(img: np.ndarray, c: _Coarse) -> np.ndarray:
    """Spectrum of the reference placed at offset (max lag) in the padded array, so that the
    searched lags form one contiguous corner block of the correlation."""
    ly, lx = len(c.lag_y) // 2, len(c.lag_x) // 2
    pad = np.zeros(c.padded_shape, np.float32)
    pad[ly: ly + img.shape[0], lx: lx + img.shape[1]] = img
    spec = sfft.rfft2(pad, workers=1)
    if c.filt is not None:
        spec *= c.filt
    return spec


def _ncc(ref: np.ndarray, frame: np.ndarray, sy: int, sx: int) -> float:
    """Normalised cross-correlation of two coarse images over their overlap at lag (sx, sy)."""
    ny, nx = ref.shape
    y0, y1 = max(0, sy), min(ny, ny + sy)
    x0, x1 = max(0, sx), min(nx, nx + sx)
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


def _correlate(ref_fft: np.ndarray, ref_img: np.ndarray, frame_img: np.ndarray, c: _Coarse,
               n_candidates: int = 5) -> _Peak:
    """Best coarse shift, its significance and the images' similarity there.

    The correlation (normalised by the square root of the overlap area, which makes its noise
    uniform over lags) is searched over all lags up to the maximum shift. If its highest peak
    does not dominate the next one by a factor 2, up to ``n_candidates`` peaks are compared by
    their height times the normalised cross-correlation (NCC) of the images over their overlap:
    a chance alignment of a few bright blobs has a high peak but a low NCC, a small overlap
    holding one matching blob a high NCC but a low peak.
    """
    ff = sfft.rfft2(frame_img, s=c.padded_shape, workers=1)
    np.conj(ff, out=ff)
    ff *= ref_fft
    corr = sfft.irfft2(ff, s=c.padded_shape, workers=1)
    win = corr[: len(c.lag_y), : len(c.lag_x)] * c.norm
    flat = int(np.argmax(win))
    iy, ix = divmod(flat, win.shape[1])
    peak = float(win[iy, ix])
    # statistics of the surface away from the peak
    r = 3
    excl = win[max(0, iy - r): iy + r + 1, max(0, ix - r): ix + r + 1]
    n_rest = win.size - excl.size
    if n_rest < 2:
        return _Peak(0.0, 0.0, 0.0, 0.0)
    s1 = float(win.sum(dtype=np.float64)) - float(excl.sum(dtype=np.float64))
    s2 = float(np.einsum("ij,ij->", win, win, dtype=np.float64)) - float(
        np.einsum("ij,ij->", excl, excl, dtype=np.float64))
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
    best = None
    for y, x in cands:
        ncc = _ncc(ref_img, frame_img, int(c.lag_y[y]), int(c.lag_x[x]))
        score = ncc * (float(win[y, x]) - mean)  # agreement where they overlap x its amount
        if best is None or score > best[0]:
            best = (score, ncc, y, x)
    _, ncc, iy, ix = best
    fy = _parabola(win[:, ix], iy)
    fx = _parabola(win[iy, :], ix)
    return _Peak(float((c.lag_x[ix] + fx) * c.bin), float((c.lag_y[iy] + fy) * c.bin),
                 (float(win[iy, ix]) - mean) / sd, ncc)


def _parabola(v: np.ndarray, i: int) -> float:
    if i <= 0 or i >= len(v) - 1:
        return 0.0
    a, b, c = float(v[i - 1]), float(v[i]), float(v[i + 1])
    den = a - 2 * b + c
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


# ============================================================================ stars
def _cutouts(img: np.ndarray, iy: np.ndarray, ix: np.ndarray, half: int) -> np.ndarray:
    off = np.arange(-half, half + 1)
    return img[(iy[:, None] + off)[:, :, None], (ix[:, None] + off)[:, None, :]]


def _ring_stats(stack: np.ndarray, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-sigma of the outer ``width`` pixels of each cutout."""
    n, h, w = stack.shape
    ring = np.concatenate([
        stack[:, :width, :].reshape(n, -1), stack[:, -width:, :].reshape(n, -1),
        stack[:, width:-width, :width].reshape(n, -1),
        stack[:, width:-width, -width:].reshape(n, -1)], axis=1)
    k = ring.shape[1] // 2
    med = np.partition(ring, k, axis=1)[:, k]
    dev = np.abs(ring - med[:, None])
    sig = _MAD * np.partition(dev, k, axis=1)[:, k]
    return med, sig


def _box3(stack: np.ndarray) -> np.ndarray:
    """3x3 box sums of each cutout (valid part: two pixels smaller on each axis)."""
    s = stack[:, :-2, :] + stack[:, 1:-1, :] + stack[:, 2:, :]
    return s[:, :, :-2] + s[:, :, 1:-1] + s[:, :, 2:]


def _windowed_centroid(stack: np.ndarray, x0: np.ndarray, y0: np.ndarray, sig_w: float,
                       noise: np.ndarray, gain: float, n_iter: int = 10
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Iterative Gaussian-windowed centroids of background-subtracted cutouts.

    Returns x, y (cutout coordinates), their noise sigmas as (2, n) arrays (error propagation
    of the background pixel noise ``noise`` per cutout, and of the stars' Poisson noise through
    ``gain``), and a validity flag.
    """
    n, h, w = stack.shape
    st = stack.astype(np.float64)
    xs = np.arange(w, dtype=np.float64)[None, :]
    ys = np.arange(h, dtype=np.float64)[None, :]
    x = x0.astype(np.float64).copy()
    y = y0.astype(np.float64).copy()
    k = 0.5 / sig_w**2
    ok = np.ones(n, bool)
    step_x = np.zeros(n)
    step_y = np.zeros(n)
    act = np.arange(n)  # stars still moving
    for _ in range(n_iter):
        # Newton steps on sum(W * I * (x - c)) = 0, safeguarded by the XWIN step 2 S1 / S0
        sa = st[act]
        ddx = xs - x[act, None]
        ddy = ys - y[act, None]
        wx = np.exp(-k * ddx**2)
        wy = np.exp(-k * ddy**2)
        px = np.matmul(wy[:, None, :], sa)[:, 0, :]  # weighted by wy: profile along x
        py = np.matmul(sa, wx[:, :, None])[:, :, 0]
        ax, ay = wx * ddx, wy * ddy
        s0 = (px * wx).sum(axis=1)
        sx = (px * ax).sum(axis=1)
        sy = (py * ay).sum(axis=1)
        dx_ = s0 - 2 * k * (px * ax * ddx).sum(axis=1)
        dy_ = s0 - 2 * k * (py * ay * ddy).sum(axis=1)
        good = s0 > 0
        s0s = np.where(good, s0, 1.0)
        dx_ = np.where(dx_ > 0.25 * s0s, dx_, 0.5 * s0s)
        dy_ = np.where(dy_ > 0.25 * s0s, dy_, 0.5 * s0s)
        stx = np.where(good, np.clip(sx / dx_, -0.5, 0.5), 0.0)
        sty = np.where(good, np.clip(sy / dy_, -0.5, 0.5), 0.0)
        ok[act[~good]] = False
        x[act] += stx
        y[act] += sty
        step_x[act], step_y[act] = stx, sty
        # Newton: what is left after a step this small is negligible
        moving = good & ((np.abs(stx) >= 1e-3) | (np.abs(sty) >= 1e-3))
        act = act[moving]
        if act.size == 0:
            break
    ok &= (np.abs(step_x) < 1e-2) & (np.abs(step_y) < 1e-2)
    ddx = xs - x[:, None]
    ddy = ys - y[:, None]
    wx = np.exp(-k * ddx**2)
    wy = np.exp(-k * ddy**2)
    px = np.einsum("nhw,nh->nw", st, wy)
    py = np.einsum("nhw,nw->nh", st, wx)
    s0 = np.einsum("nw,nw->n", px, wx)
    dxx = s0 - 2 * k * np.einsum("nw,nw->n", px, wx * ddx**2)
    dyy = s0 - 2 * k * np.einsum("nh,nh->n", py, wy * ddy**2)
    var_pix = (noise.astype(np.float64) ** 2)
    nx_ = np.einsum("nw->n", (wx * ddx) ** 2) * np.einsum("nh->n", wy**2) * var_pix
    ny_ = np.einsum("nh->n", (wy * ddy) ** 2) * np.einsum("nw->n", wx**2) * var_pix
    if gain > 0:
        pos = np.clip(st, 0, None) / gain
        qx = np.einsum("nhw,nh,nw->n", pos, wy**2, (wx * ddx) ** 2)
        qy = np.einsum("nhw,nh,nw->n", pos, (wy * ddy) ** 2, wx**2)
    else:
        qx = qy = np.zeros(n)
    ok &= (dxx > 0) & (dyy > 0) & np.isfinite(x) & np.isfinite(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        ex = np.where(ok, np.sqrt(nx_) / np.abs(dxx), np.inf)
        ey = np.where(ok, np.sqrt(ny_) / np.abs(dyy), np.inf)
        px_ = np.where(ok, np.sqrt(qx) / np.abs(dxx), np.inf)
        py_ = np.where(ok, np.sqrt(qy) / np.abs(dyy), np.inf)
    ok &= (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return x, y, np.stack([ex, px_]), np.stack([ey, py_]), ok


def _despike(stack: np.ndarray, noise: np.ndarray, ratio: float = 0.3) -> None:
    """Replace, in place, cutout pixels that stand far above all four neighbours on one axis.

    A pixel is replaced by ``min(max(left, right), max(up, down))`` when that is below ``ratio``
    of it and the difference exceeds 5 noise sigmas: hot pixels and cosmic-ray hits, not star
    peaks (whose neighbours reach well over ``ratio`` of the peak unless FWHM < ~1.7 px).
    """
    c = stack[:, 1:-1, 1:-1]
    h = np.maximum(stack[:, 1:-1, :-2], stack[:, 1:-1, 2:])
    v = np.maximum(stack[:, :-2, 1:-1], stack[:, 2:, 1:-1])
    np.minimum(h, v, out=h)
    spike = (h < ratio * c) & (c - h > 5.0 * noise[:, None, None])
    if spike.any():
        c[spike] = h[spike]


@dataclass
class _Measured:
    """Per-star results of :func:`_measure` (frame coordinates)."""

    x: np.ndarray
    y: np.ndarray
    ex: np.ndarray  # (2, n): background-noise and Poisson parts of the x error
    ey: np.ndarray
    peak: np.ndarray  # brightest 3x3 box sum, background subtracted
    ok: np.ndarray


def _measure(clean: np.ndarray, raw: np.ndarray, bad: np.ndarray | None, px: np.ndarray,
             py: np.ndarray, fwhm: float, search: int, half: int, p: AutoParams,
             sat: float) -> _Measured:
    """Find and centroid one star near each predicted position (px, py), all at once.

    For each position: cut a ``2*half+1`` cutout of the banding-free image, subtract the median
    of its border, remove hot pixels, take the brightest 3x3 box within ``search`` px of the
    prediction (it must exceed ``match_threshold`` noise sigmas and not be saturated or touch
    NaN pixels), and centroid a small cutout around it with Gaussian-windowed moments.
    Positions must lie at least ``half`` px inside the frame (caller's job).
    """
    n = px.size
    ix = np.rint(px).astype(np.int64)
    iy = np.rint(py).astype(np.int64)
    stack = _cutouts(clean, iy, ix, half)
    med, noise = _ring_stats(stack)
    stack -= med[:, None, None]
    pos = noise[noise > 0]
    noise = np.maximum(noise, 0.1 * float(np.median(pos)) if pos.size else 1.0)
    _despike(stack, noise)
    box = _box3(stack)
    w = 2 * search + 1
    c0 = half - 1 - search
    region = box[:, c0: c0 + w, c0: c0 + w].reshape(n, -1)
    j = np.argmax(region, axis=1)
    jy = iy + j // w - search
    jx = ix + j % w - search
    bpk = region[np.arange(n), j]
    ok = bpk > p.match_threshold * 3.0 * noise
    rpk = _cutouts(raw, jy, jx, 1).reshape(n, -1).max(axis=1)
    ok &= rpk < p.saturation_fraction * sat
    if bad is not None:
        r = int(math.ceil(fwhm)) + 1
        ok &= ~_cutouts(bad, jy, jx, r).reshape(n, -1).any(axis=1)
    sig_w = max(0.6, fwhm / 2.3548)
    hs = int(math.ceil(3.5 * sig_w)) + 1
    # small cutouts around each peak, taken from the cleaned stack
    oy = (jy - iy + half)[:, None] + np.arange(-hs, hs + 1)[None, :]
    ox = (jx - ix + half)[:, None] + np.arange(-hs, hs + 1)[None, :]
    small = stack[np.arange(n)[:, None, None], oy[:, :, None], ox[:, None, :]]
    # start from the 3x3 moments around the peak: a few Newton steps then suffice
    c3 = small[:, hs - 1: hs + 2, hs - 1: hs + 2]
    tot = c3.sum(axis=(1, 2))
    tot = np.where(tot > 0, tot, 1.0)
    sx0 = np.clip((c3[:, :, 2].sum(axis=1) - c3[:, :, 0].sum(axis=1)) / tot, -0.5, 0.5)
    sy0 = np.clip((c3[:, 2, :].sum(axis=1) - c3[:, 0, :].sum(axis=1)) / tot, -0.5, 0.5)
    cx, cy, ex, ey, cok = _windowed_centroid(small, hs + sx0, hs + sy0, sig_w, noise, p.gain)
    ok &= cok & (np.abs(cx - hs) <= 1.5) & (np.abs(cy - hs) <= 1.5)
    return _Measured(cx + jx - hs, cy + jy - hs, ex, ey, bpk, ok)


@dataclass
class _Catalogue:
    x: np.ndarray
    y: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    peak: np.ndarray


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
    r = p.search_radius if p.search_radius > 0 else max(4.0, 2.0 * b)
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
    m = _measure(clean, raw, bad, src.x[idx].astype(float), src.y[idx].astype(float), fwhm,
                 1, half, p, sat)
    ok = m.ok & (np.hypot(m.x - src.x[idx], m.y - src.y[idx]) < 1.5)
    ok &= np.cumsum(ok) <= p.n_stars
    cat = _Catalogue(m.x[ok], m.y[ok], m.ex[:, ok], m.ey[:, ok], m.peak[ok])
    return cat, fwhm, sat, src


# ============================================================================ prepared ref
class PreparedReference:
    """A reference frame prepared once per night for :func:`estimate_shift`.

    Holds the reference's filtered correlation spectrum, its star catalogue and the parameters
    it was prepared with. Build it with :func:`prepare_reference`; treat it as opaque.

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

    def __init__(self, shape, params, coarse, ref_fft, coarse_image, catalogue, fwhm, saturation,
                 template, ok=True, reason=""):
        self.shape = shape
        self.params = params
        self._coarse = coarse
        self._ref_fft = ref_fft
        self._cimg = coarse_image
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
    m = _measure(src.bkg, raw, None, src.x[idx].astype(float), src.y[idx].astype(float), fwhm,
                 1, half, dataclasses.replace(p, match_threshold=0.0), math.inf)
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
        return PreparedReference(img.shape, p, coarse, None, None, empty, float("nan"), math.inf,
                                 None, False, "the reference frame has no finite pixels")
    rawf = img.copy()
    if p.remove_banding:
        _remove_banding(img)
    cimg, sigma = _coarse_image(img, p, coarse, bad)
    if not sigma > 0 or not np.any(cimg > 0):
        return PreparedReference(img.shape, p, coarse, None, None, empty, float("nan"), math.inf,
                                 None, False, "the reference frame is blank (no signal)")
    ref_fft = _ref_rfft(cimg, coarse)
    cat, fwhm, sat, src = _catalogue(rawf, img, bad, p, coarse.bin)
    template = _make_template(src, rawf, fwhm, sat, p)
    log.debug("reference %s: %d catalogue stars, FWHM %.2f px, bin %d", img.shape,
              cat.x.size, fwhm, coarse.bin)
    return PreparedReference(img.shape, p, coarse, ref_fft, cimg, cat, fwhm, sat, template)


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
    raw_in = np.asarray(moving)
    img, bad = _as_image(raw_in, "moving")
    if img.shape != prep.shape:
        raise ValueError(f"moving frame shape {img.shape} differs from the reference's "
                         f"{prep.shape}")
    if not prep.ok:
        return _failed(prep.reason)
    if bad is not None and bad.all():
        return _failed("the frame has no finite pixels")
    if bad is not None and bad.mean() > 0.9:
        return _failed("more than 90% of the frame's pixels are not finite")
    try:
        with np.errstate(all="ignore"):
            return _estimate(prep, p, raw_in, img, bad)
    except Exception as exc:  # a frame must never crash a night: report it as failed
        log.warning("estimate_shift failed unexpectedly on a frame", exc_info=True)
        return _failed(f"internal error while estimating ({type(exc).__name__}: {exc})")


def _estimate(prep: PreparedReference, p: AutoParams, raw: np.ndarray, img: np.ndarray,
              bad: np.ndarray | None) -> ShiftEstimate:
    """The estimate proper (``img``: float32 copy of the frame, NaNs filled, cleaned in place;
    ``raw``: the caller's array, for saturation)."""
    if p.remove_banding:
        _remove_banding(img)
    c = prep._coarse
    cimg, sigma = _coarse_image(img, p, c, bad)
    if not sigma > 0 or not np.any(cimg > 0):
        return _failed("the frame is blank (no signal above the noise)")
    pk = _correlate(prep._ref_fft, prep._cimg, cimg, c)
    log.debug("coarse shift (%.2f, %.2f), significance %.1f, ncc %.3f", pk.dx, pk.dy,
              pk.significance, pk.ncc)
    if not (pk.significance >= p.min_significance and pk.ncc >= p.min_similarity):
        return _failed(f"no match with the reference (correlation peak {pk.significance:.1f} "
                       f"sigma, similarity {pk.ncc:.2f}): no overlap or nothing to match")
    dx0, dy0 = pk.dx, pk.dy
    if p.refine and prep.n_catalogue > 0:
        res = _fine(prep, p, raw, img, bad, dx0, dy0)
        if res is not None:
            return res
    res = _refine_correlation(prep, p, img, dx0, dy0, bad)
    if res is not None:
        return res
    return _failed("could not refine the correlation peak (too little signal where the "
                   "reference has stars)")


def _fine(prep: PreparedReference, p: AutoParams, raw: np.ndarray, clean: np.ndarray,
          bad: np.ndarray | None, dx0: float, dy0: float) -> ShiftEstimate | None:
    """Star-centroid step; None when fewer than ``min_stars`` consistent stars."""
    cat = prep._cat
    sig_w, search, half = _geometry(prep.fwhm, p, prep._coarse.bin)
    ny, nx = clean.shape
    px = cat.x - dx0
    py = cat.y - dy0
    ix = np.rint(px).astype(np.int64)
    iy = np.rint(py).astype(np.int64)
    inside = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    if np.count_nonzero(inside) < p.min_stars:
        return None
    sel = np.nonzero(inside)[0]
    sat = _saturation_level(raw, p) if p.saturation <= 0 else p.saturation
    m = _measure(clean, raw, bad, px[sel], py[sel], prep.fwhm, search, half, p, sat)
    if np.count_nonzero(m.ok) < p.min_stars:
        return None
    s = sel[m.ok]
    fx, fy, ex, ey = m.x[m.ok], m.y[m.ok], m.ex[:, m.ok], m.ey[:, m.ok]
    ddx = cat.x[s] - fx
    ddy = cat.y[s] - fy
    comb = _combine(ddx, ddy, cat.ex[:, s] ** 2 + ex**2, cat.ey[:, s] ** 2 + ey**2, p)
    if comb is None:
        return None
    dx, dy, sdx, sdy, n = comb
    return ShiftEstimate(dx, dy, sdx, sdy, n, "stars", True, "")


def _fmed(v: np.ndarray) -> float:
    """Median of a small 1-D array (np.median's overhead dominates at this size)."""
    n = v.size
    k = n // 2
    if n % 2:
        return float(np.partition(v, k)[k])
    part = np.partition(v, (k - 1, k))
    return 0.5 * float(part[k - 1] + part[k])


def _combine(ddx, ddy, m2x, m2y, p: AutoParams):
    """Combine per-star offsets: sigma clipping, then a weighted mean with fitted star errors.

    ``m2x, m2y`` are (2, n) per-star noise-model variances (background part, Poisson part).
    Stars are clipped against the model plus ``sigma_floor**2``, scaled by the robust spread
    of the normalised residuals; the kept stars' offsets are then averaged with weights from
    :func:`_fit_errors`.
    """
    vx = m2x.sum(axis=0) + p.sigma_floor**2
    vy = m2y.sum(axis=0) + p.sigma_floor**2
    use = np.ones(ddx.size, bool)
    mx, my = _fmed(ddx), _fmed(ddy)
    for _ in range(10):
        zx = (ddx - mx) / np.sqrt(vx)
        zy = (ddy - my) / np.sqrt(vy)
        # robust spread of normalised residuals of the kept stars (>= 1: model is a floor)
        sx = max(1.0, _MAD * _fmed(np.abs(zx[use])))
        sy = max(1.0, _MAD * _fmed(np.abs(zy[use])))
        new = (np.abs(zx) <= p.clip_sigma * sx) & (np.abs(zy) <= p.clip_sigma * sy)
        if np.count_nonzero(new) < p.min_stars:
            return None
        wx, wy = 1.0 / vx[new], 1.0 / vy[new]
        mx = float(np.sum(wx * ddx[new]) / np.sum(wx))
        my = float(np.sum(wy * ddy[new]) / np.sum(wy))
        if np.array_equal(new, use):
            break
        use = new
    n = int(np.count_nonzero(use))
    # robust absolute scatter: a wrong coarse match gives offsets spread over the search box
    scat = _MAD * max(_fmed(np.abs(ddx[use] - mx)), _fmed(np.abs(ddy[use] - my)))
    if scat > p.max_star_scatter:
        log.debug("star offsets scatter %.2f px > max_star_scatter; not trusted", scat)
        return None
    mx, sdx = _fit_errors(ddx[use], m2x[:, use], p.sigma_floor)
    my, sdy = _fit_errors(ddy[use], m2y[:, use], p.sigma_floor)
    return mx, my, sdx, sdy, n


_GRID_B = np.exp(np.linspace(np.log(0.35), np.log(3.0), 7))  # scale of the background part
_GRID_P = np.exp(np.linspace(np.log(0.2), np.log(5.0), 7))  # scale of the Poisson part
_PRIOR = (-0.5 * (np.log(_GRID_B) / 0.5) ** 2)[:, None, None] + (
    -0.5 * (np.log(_GRID_P) / 1.2) ** 2)[None, :, None]


def _fit_errors(d: np.ndarray, m2: np.ndarray, floor: float) -> tuple[float, float]:
    """Weighted mean of offsets ``d`` and its 1-sigma error, with star errors fitted to them.

    A star's variance is modelled as ``b**2 * m2[0] + q**2 * m2[1] + f**2``: the background
    part of the noise model scaled by ``b``, its Poisson part scaled by ``q`` (the gain may be
    unknown or wrong), and a systematic floor ``f >= floor`` (PSF changes, pixel phase, faint
    neighbours). With at least 8 stars ``b, q, f`` are fitted by restricted maximum likelihood
    (REML) on a grid, with weak priors keeping ``b`` within ~1.6x and ``q`` within ~3x of 1;
    with fewer, the model is used with ``f = floor`` and scaled by the Birge ratio shrunk
    towards 1 with 3 pseudo degrees of freedom. The error of the mean is
    ``1 / sqrt(sum(1 / variance))``.
    """
    n = d.size
    if n < 8:
        v = m2[0] + m2[1] + floor**2
        w = 1.0 / v
        mean = float(np.sum(w * d) / np.sum(w))
        chi2 = float(np.sum(w * (d - mean) ** 2))
        scale2 = (chi2 + 3.0) / (n - 1 + 3.0)
        return mean, math.sqrt(scale2 / float(np.sum(w)))
    lo = max(floor, 1e-4)
    floors = np.concatenate([[lo], np.exp(np.linspace(np.log(lo * 1.6), np.log(lo + 0.3), 7))])
    base = (_GRID_B[:, None, None] ** 2 * m2[0][None, None, :]
            + _GRID_P[None, :, None] ** 2 * m2[1][None, None, :])  # (b, q, n)
    v = base[:, :, None, :] + (floors**2)[None, None, :, None]  # (b, q, f, n)
    w = 1.0 / v
    sw = w.sum(axis=3)
    mean = (w * d).sum(axis=3) / sw
    resid2 = (d - mean[..., None]) ** 2
    loglik = -0.5 * (np.log(v).sum(axis=3) + (resid2 * w).sum(axis=3) + np.log(sw)) + _PRIOR
    i = np.unravel_index(int(np.argmax(loglik)), loglik.shape)
    return float(mean[i]), float(1.0 / math.sqrt(sw[i]))


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
