"""The coarse step: FFT cross-correlation of small, cleaned images of what moves with the sky.

:func:`_coarse_setup` derives everything that depends only on the frame shape and the
:class:`~starshift.registration.ReferenceParams` (binning, padded FFT shape, lag grid and its
normalisation, high-pass filter, background mesh); :func:`_coarse_image` reduces a frame to its
coarse image (2 x 2 minimum, binning, banding and background removal, [1, 2, 1] smoothing,
thresholding in noise units, trails removed: :func:`_remove_streaks`); :func:`_coarse_ref`
keeps the reference's once, with its spectrum; :func:`_correlate` finds the best lag, searched
on ``fold`` x ``fold`` sums for large frames and refined on the coarse images
(:class:`_Refiner`), with its significance and the images' normalised cross-correlation (NCC)
there.

Lags and shifts follow the package convention, ``reference - frame``; the coarse images are
indexed (y, x) and :class:`_Peak` holds the shift in full-resolution pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._lazy import fft as sfft
from .._lazy import ndimage
from .._stats import mad_sigma, sampled_median
from ._clean import (
    _auto_bin,
    _bin,
    _block_min2,
    _erode2,
    _interp_matrix,
    _mesh_grid,
    _remove_banding,
)
from ._params import ReferenceParams


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


def _coarse_setup(shape: tuple[int, int], p: ReferenceParams) -> _Coarse:
    """The coarse step's geometry and filters for frames of ``shape`` (done once per night)."""
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


def _coarse_image(img: np.ndarray, p: ReferenceParams, c: _Coarse, bad: np.ndarray | None = None
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
        binned -= sampled_median(binned)
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
    sigma = mad_sigma(inner[::3, ::3], bad=None if bbad is None else bbad[::3, ::3])
    if not sigma > 0:
        return np.zeros(c.shape, np.float32), 0.0, core
    # only significant signal counts, and every star weighs at most coarse_clip (in units of
    # the noise: the data's scale does not matter, and its extremes do not over- or underflow)
    out = np.multiply(inner, 1.0 / sigma)
    out -= p.coarse_threshold
    np.maximum(out, 0.0, out=out)
    np.minimum(out, p.coarse_clip, out=out)
    _remove_streaks(out)
    return out, sigma, core


#: A straight strip of a coarse image's signal at least this long (coarse px) ...
STREAK_LENGTH = 32.0
#: ... and this many times longer than wide is a streak: a satellite, aircraft or meteor trail.
#: On the five sample and two real nights (114 frames) no connected patch of stars and noise is
#: even 32 coarse px across (the longest are 23 long, from their second moments); trails across
#: the real frames are 150-330 px long and 2-6 px wide.
STREAK_ELONGATION = 8.0
#: Gaps (coarse px) along a streak that still make one streak (a faint trail dips below the
#: threshold here and there).
STREAK_GAP = 3


def _remove_streaks(out: np.ndarray) -> int:
    """Zero the streaks of a coarse image in place (see :data:`STREAK_LENGTH`); returns how many.

    A trail is in one frame only: left in, it outweighs the stars (a thousand pixels at up to
    ``coarse_clip``), lowers the correlation's significance and the images' similarity, and
    can pull the peak along itself. Only connected patches at least ``STREAK_LENGTH`` across
    are looked at (none on ordinary frames: this costs one labelling); in each, the straight
    strips (:func:`_streak_in`) are removed one after the other, so crossing trails go, and
    the stars a trail touches stay unless they lie on it.
    """
    lab, n = ndimage.label(out > 0, structure=np.ones((3, 3), dtype=bool))
    removed = 0
    if n == 0:
        return removed
    for k, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        diag = math.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        if diag < STREAK_LENGTH:
            continue  # a strip is no longer than the patch's bounding box's diagonal
        sub = out[sl]
        ys, xs = np.nonzero(lab[sl] == k)
        while ys.size >= STREAK_LENGTH:
            strip = _streak_in(xs.astype(np.float64), ys.astype(np.float64), diag)
            if strip is None:
                break
            sub[ys[strip], xs[strip]] = 0.0
            ys, xs = ys[~strip], xs[~strip]
            removed += 1
    return removed


def _streak_in(xs: np.ndarray, ys: np.ndarray, diag: float) -> np.ndarray | None:
    """The pixels (mask over ``xs, ys``) of the most populated straight strip of a patch if it
    is a streak (long and thin enough), else None.

    A Hough transform of the pixels: for each direction (steps of ``1 / diag`` rad, so that a
    line across the patch strays by under a pixel), the pixels counted in 1 px bins of their
    distance from the origin; the fullest 3 px strip is then widened over the neighbouring
    bins holding at least a quarter of its fullest bin's count (the trail's own width), and
    measured along its direction: its longest run with gaps of at most ``STREAK_GAP`` px.
    """
    n_ang = int(math.ceil(math.pi * diag))
    th = np.arange(n_ang) * (math.pi / n_ang)
    cos, sin = np.cos(th), np.sin(th)
    rho = np.outer(cos, xs) + np.outer(sin, ys)
    rho -= rho.min(axis=1, keepdims=True)
    idx = rho.astype(np.int64) + 1  # 1 px bins, one empty bin on each side
    nb = int(idx.max()) + 2
    hist = np.bincount((idx + nb * np.arange(n_ang)[:, None]).ravel(),
                       minlength=nb * n_ang).reshape(n_ang, nb)
    strip3 = hist[:, :-2] + hist[:, 1:-1] + hist[:, 2:]
    a, b = divmod(int(np.argmax(strip3)), strip3.shape[1])
    if strip3[a, b] < STREAK_LENGTH:  # a line that long holds that many pixels
        return None
    h = hist[a]
    floor = 0.25 * h[b: b + 3].max()
    lo, hi = b, b + 2
    while lo > 0 and h[lo - 1] >= floor:
        lo -= 1
    while hi < nb - 1 and h[hi + 1] >= floor:
        hi += 1
    inside = (idx[a] >= lo) & (idx[a] <= hi)
    t = -sin[a] * xs[inside] + cos[a] * ys[inside]
    tb = (t - t.min()).astype(np.int64)
    occupied = np.flatnonzero(np.bincount(tb))
    breaks = np.flatnonzero(np.diff(occupied) > STREAK_GAP + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [occupied.size - 1]])
    j = int(np.argmax(occupied[ends] - occupied[starts]))
    t0, t1 = occupied[starts[j]], occupied[ends[j]]
    length = float(t1 - t0 + 1)
    width = float(hi - lo + 1)
    if length < STREAK_LENGTH or length < STREAK_ELONGATION * width:
        return None
    mask = np.zeros(xs.size, dtype=bool)
    mask[np.flatnonzero(inside)[(tb >= t0) & (tb <= t1)]] = True
    return mask


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
    """The reference's coarse image ``img`` with what every correlation against it needs."""
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
    """The chosen correlation peak: shift (``reference - frame``), significance and NCC."""

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
    """Sub-pixel offset of the peak of ``v`` at index ``i`` (0 at either end)."""
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

