"""Image helpers: checking the input, and the cleaning steps of both estimation steps.

* :func:`_checked`, :func:`_as_image`, :class:`_NonFinite`: what an input array must be, and the
  float32 copy with non-finite pixels filled (and masked) that the estimate falls back to;
* :func:`_banding`, :func:`_remove_banding`: robust row and column medians (fixed patterns);
* :func:`_erode2`, :func:`_block_min2`: 2 x 2 minima that remove anything without a 2 x 2 core
  (hot pixels, cosmic rays, bleed columns);
* :func:`_bin`, :func:`_auto_bin`: block sums and the default binning of the coarse step;
* :func:`_mesh_grid`, :func:`_mesh_expand`, :func:`_interp_matrix`: a smooth background from a
  mesh of block medians;
* :func:`_saturation_level`, :func:`_frame_saturation`: the saturation level of a frame.

Images are numpy arrays indexed (y, x); nothing here modifies its input unless it says so.
"""

from __future__ import annotations

import math

import numpy as np

from .._stats import block_rows, blocks, sampled_median
from ._params import ReferenceParams

#: Smallest image side accepted (pixels); smaller arrays are a programmer error.
MIN_SIZE = 16


def _checked(a, name: str) -> np.ndarray:
    """``a`` as an array (no copy), or ValueError naming it: it must be a real 2-D image of at
    least :data:`MIN_SIZE` px on each side."""
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
    img[bad] = sampled_median(img[~bad])
    return img, bad


def _finite(a: np.ndarray) -> bool:
    """True if every element of ``a`` is finite (no overflow, unlike a sum)."""
    return a.size == 0 or (math.isfinite(float(a.max())) and math.isfinite(float(a.min())))


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
    out = np.empty((ny // 2, nx // 2), np.float32)
    # a block of row pairs at a time (``CHUNK_BYTES``): the rows' minima need no half-frame
    # temporary (52 MB on a 26 MP frame), for the same values
    step = block_rows(2 * img.itemsize * nx)
    for r0 in range(0, ny // 2, step):
        r1 = min(r0 + step, ny // 2)
        rows = np.minimum(img[2 * r0:2 * r1:2, :nx], img[2 * r0 + 1:2 * r1:2, :nx])
        np.minimum(rows[:, 0::2], rows[:, 1::2], out=out[r0:r1], casting="same_kind")
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
    """The background of an image of ``shape``, interpolated from its block medians ``grid``."""
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


def _saturation_level(raw: np.ndarray, p: ReferenceParams) -> float:
    """User level, or the frame maximum when at least 3 pixels sit at it, else +inf."""
    if p.saturation > 0:
        return p.saturation
    m = float(np.max(raw))
    if not math.isfinite(m):
        m = float(np.nanmax(np.where(np.isfinite(raw), raw, -np.inf)))
        if not math.isfinite(m):
            return math.inf
    level = m - 1e-6 * max(abs(m), 1.0)
    # counted a few MB at a time (no frame-sized mask), and only until 3 are found
    flat = raw.reshape(-1) if raw.flags.c_contiguous else np.ravel(raw)
    n = 0
    for part in blocks(flat):
        n += int(np.count_nonzero(part >= level))
        if n >= 3:
            return m
    return math.inf


class _NonFinite(Exception):
    """The frame (used as given, unchecked) has non-finite pixels where they matter."""


def _frame_saturation(raw: np.ndarray, p: ReferenceParams, core: np.ndarray | None,
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
