"""Animated GIFs of the report: the order-0 vs order-1 comparison, and the shared GIF canvas.

Pure functions: arrays in, GIF bytes out. A GIF frame is drawn in two layers: text, panel
frames, colour-bar ticks and labels are rendered by matplotlib (anti-aliased, then mapped to the
nearest colour of one fixed palette), and the image panels are pasted as palette indices, pixel
for pixel (nearest-neighbour magnification only, no resampling). One global palette, no
timestamps: the same input gives the same bytes.

:func:`order_comparison_gif` shows, around one position of the reference frame, each frame
shifted with order 0, the same frame shifted with order 1, and their difference. The two
shifted panels share one asinh stretch for the whole animation (black 2 sky sigmas below the
sky, white at the brightest pixel, so star cores are graded, not saturated); they are shown
above each frame's median sky, because a night mixes filters and exposure times whose sky levels
differ by hundreds of ADU. The difference panel has one linear symmetric stretch, +- a stated
percentile of ``|order 1 - order 0|`` over the whole animation, black negative, mid-grey zero,
white positive, with its colour bar in ADU.

Only cutouts are shifted: a window of the raw frame holding the displayed area's source pixels
(and the displayed area itself) is shifted with :func:`starshift.shift.apply_shift`, with the fill
value of the *whole* frame, and the displayed area is cropped from it. For order 0 the result is
identical to cropping the shifted full frame; for order 1 it is equal up to floating-point
rounding of the interpolation coordinate (~1e-13 relative).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..shift import apply_shift, fill_value
from .stretch import AsinhStretch, asinh_stretch

#: Percentile of |order 1 - order 0| (over all frames) that sets the difference stretch.
DIFF_PERCENTILE = 99.5
#: Grey levels of one sky sigma of the reference just above black (2 sigmas below the sky).
COMPARISON_NOISE_LEVELS = 2.0
#: Display time of a comparison GIF frame, ms.
COMPARISON_MS = 900
DPI = 100
#: Grey values of the background, the text and the secondary text.
BG, FG, DIM = 22, 235, 160
#: Grey levels of anti-aliased text and lines.
TEXT_LEVELS = 12
#: Pixels with no data (a ``fill='nan'`` shift) are shown in this colour.
NODATA_RGB = (200, 40, 160)
_FONT = {"family": "DejaVu Sans"}


# --------------------------------------------------------------------------- palette, canvas
def palette(n_grey: int, extras: Sequence[tuple[int, int, int]] = ()) -> list[tuple[int, int, int]]:
    """``n_grey`` greys from black to white (indices ``0 .. n_grey-1``), then ``extras``."""
    if not 2 <= n_grey + len(extras) <= 256 or n_grey < 2:
        raise ValueError(f"palette: {n_grey} greys and {len(extras)} colours exceed 256")
    greys = np.linspace(0, 255, n_grey).round().astype(int)
    return [(int(g), int(g), int(g)) for g in greys] + [tuple(map(int, c)) for c in extras]


def grey_index(t: np.ndarray, levels: int, n_grey: int, nodata: int = 0) -> np.ndarray:
    """Palette indices of stretched values ``t`` (0..1): ``levels`` equal steps from black to
    white, on a palette whose first ``n_grey`` entries are greys; NaN becomes ``nodata``."""
    t = np.asarray(t, dtype=float)
    level = np.rint(np.clip(np.nan_to_num(t), 0.0, 1.0) * (levels - 1))
    idx = np.rint(level * (n_grey - 1) / (levels - 1)).astype(np.uint8)
    idx[np.isnan(t)] = nodata
    return idx


def magnify(tile: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour magnification, y up (row 0 of ``tile`` at the bottom, as ds9)."""
    return np.repeat(np.repeat(tile[::-1], scale, axis=0), scale, axis=1)


class Canvas:
    """One GIF frame of ``width`` x ``height`` px on the palette ``colors``.

    Coordinates are pixels from the top-left corner. Text and axes go on a matplotlib figure
    (rendered at 100 dpi, so a font size of ``s`` pt is ``1.39 s`` px tall), tiles of palette
    indices are pasted over it after rendering.
    """

    def __init__(self, width: int, height: int, colors: list[tuple[int, int, int]],
                 background: int = BG):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.width, self.height, self.colors = int(width), int(height), colors
        self.fig = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        FigureCanvasAgg(self.fig)
        self.fig.patch.set_facecolor(_rgb(colors[background]))
        self._tiles: list[tuple[int, int, np.ndarray]] = []
        self._changing: tuple = ()
        self._still = None

    def text(self, x: float, y: float, s: str, size: float = 9.0, color=FG, **kw):
        """Text with its top-left corner (or the alignment given in ``ha``/``va``) at (x, y)."""
        kw.setdefault("va", "top")
        return self.fig.text(x / self.width, 1.0 - y / self.height, s, fontsize=size,
                             color=_rgb(color), fontdict=_FONT, **kw)

    def retext(self, artist, s: str, color=None, weight: str | None = None) -> None:
        """Set again a :meth:`text`'s string, and its colour and weight when given (a GIF's
        changing lines, on one canvas for every frame)."""
        artist.set_text(s)
        if color is not None:
            artist.set_color(_rgb(color))
        if weight is not None:
            artist.set_fontweight(weight)

    def axes(self, x: int, y: int, w: int, h: int):
        """An empty axes whose frame encloses the ``w`` x ``h`` px box at (x, y)."""
        ax = self.fig.add_axes((x / self.width, 1.0 - (y + h) / self.height,
                                w / self.width, h / self.height))
        ax.set_facecolor("none")
        for spine in ax.spines.values():
            spine.set_color(_rgb(DIM))
            spine.set_linewidth(0.8)
        ax.tick_params(colors=_rgb(FG), labelcolor=_rgb(FG), labelsize=7.5, length=3,
                       width=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def paste(self, x: int, y: int, tile: np.ndarray) -> int:
        """Palette indices ``tile`` (row 0 at the top) with their top-left corner at (x, y);
        returns its number, for :meth:`replace`."""
        self._tiles.append((int(x), int(y), np.asarray(tile, dtype=np.uint8)))
        return len(self._tiles) - 1

    def replace(self, number: int, tile: np.ndarray) -> None:
        """Put ``tile`` where pasted tile ``number`` was, in its place: one canvas, its axes
        and text made once, serves every frame of a GIF (only the text and tiles that change
        are set again; a figure's axes cost more to make than to draw)."""
        x, y, old = self._tiles[number]
        tile = np.asarray(tile, dtype=np.uint8)
        if tile.shape != old.shape:
            raise ValueError(f"Canvas.replace: tile {tile.shape} differs from {old.shape}")
        self._tiles[number] = (x, y, tile)

    def colorbar(self, x: int, y: int, w: int, h: int, index: np.ndarray,
                 ticks: Sequence[tuple[float, str]], label: str) -> None:
        """A vertical colour bar: ``index`` (palette indices, bottom to top) pasted in the box,
        tick labels at the fractions ``ticks`` (0 bottom, 1 top) on its right, and ``label``
        written vertically beyond them."""
        rows = np.resize(np.asarray(index, dtype=np.uint8), h)[::-1]
        self.paste(x, y, np.repeat(rows[:, None], w, axis=1))
        ax = self.axes(x, y, w, h)
        ax.set_ylim(0.0, 1.0)
        ax.yaxis.tick_right()
        ax.set_yticks([t for t, _ in ticks], [s for _, s in ticks])
        ax.yaxis.set_label_position("right")
        ax.set_ylabel(label, color=_rgb(FG), fontsize=8, fontdict=_FONT)

    def changing(self, *artists) -> None:
        """Render everything but ``artists`` (text set again for every frame) once, now: each
        :meth:`image` then draws only them over that rendering (matplotlib's blitting), the
        same pixels as drawing the whole figure when they overlap nothing else, without
        rendering every static label's glyphs again for every frame."""
        for a in artists:
            a.set_visible(False)
        self.fig.canvas.draw()
        self._still = self.fig.canvas.copy_from_bbox(self.fig.bbox)
        for a in artists:
            a.set_visible(True)
        self._changing = artists

    def image(self):
        """The frame as a Pillow image of mode ``P`` on the palette.

        The rendered layer is mapped to the nearest of a few of the palette's colours (its
        extras and ``TEXT_LEVELS`` of its greys: anti-aliased text keeps its smooth edges and
        compresses several times better than with every grey), then the tiles are pasted.
        """
        from PIL import Image

        if self._still is None:
            self.fig.canvas.draw()
        else:
            self.fig.canvas.restore_region(self._still)
            for a in self._changing:
                self.fig.draw_artist(a)
        rgb = np.ascontiguousarray(np.asarray(self.fig.canvas.buffer_rgba())[..., :3])
        greys = [i for i, c in enumerate(self.colors) if c[0] == c[1] == c[2]]
        step = max(1, (len(greys) - 1) // (TEXT_LEVELS - 1))
        coarse = sorted(set(greys[::step]) | {greys[-1]}
                        | {i for i in range(len(self.colors)) if i not in greys})
        pal = Image.new("P", (1, 1))
        flat = [v for i in coarse for v in self.colors[i]]
        pal.putpalette(flat + flat[-3:] * (256 - len(coarse)))
        # every pixel to its nearest colour; without dithering this is deterministic
        im = Image.fromarray(rgb).quantize(palette=pal, dither=Image.Dither.NONE)
        lut = np.array(coarse + [coarse[-1]] * (256 - len(coarse)), dtype=np.uint8)
        idx = lut[np.asarray(im, dtype=np.uint8)]
        for x, y, tile in self._tiles:
            h, w = tile.shape
            idx[y: y + h, x: x + w] = tile
        out = Image.fromarray(idx, mode="L").convert("P")
        out.putpalette([v for c in self.colors for v in c])
        return out


def _rgb(c) -> tuple[float, float, float]:
    """Matplotlib colour of a grey value or an (r, g, b) triple of 0..255."""
    if np.isscalar(c):
        return (c / 255.0,) * 3
    return tuple(v / 255.0 for v in c)


def save_gif(images: list, duration_ms: int) -> bytes:
    """Frames (mode ``P``, one palette) as a looping GIF; no metadata, deterministic bytes."""
    buf = io.BytesIO()
    # optimize: pixels equal to the previous frame's become transparent (static text and
    # colour bars cost nothing after the first frame)
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(duration_ms), loop=0, optimize=True, disposal=1)
    return buf.getvalue()


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, the first and the last included
    (all of them when ``k`` is None or at least ``n``)."""
    if k is None or k >= n:
        return list(range(n))
    if k <= 1:
        return [0][:max(k, 0)]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def nice(value: float, digits: int = 2) -> float:
    """``value`` rounded to ``digits`` significant figures."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def asinh_ticks(stretch: AsinhStretch, n: int = 5) -> list[tuple[float, str]]:
    """Colour-bar ticks of an asinh stretch: 0 (the sky) and rounded values spread along it."""
    values = {0.0} if stretch.lo < 0 < stretch.hi else set()
    for t in np.linspace(0.25, 1.0, n - 1):
        values.add(nice(float(stretch.inverse(t))))
    ticks = sorted(v for v in values if stretch.lo <= v <= stretch.hi * 1.0001)
    return [(float(stretch(v)), f"{v:.0f}" if abs(v) >= 10 or v == 0 else f"{v:.2g}")
            for v in ticks]


# --------------------------------------------------------------------------- cutouts
def _region(center, size: int) -> tuple[int, int]:
    """Lower-left (x0, y0) of the ``size`` square in reference pixels centred on ``center``."""
    cx, cy = (float(v) for v in center)
    return int(math.floor(cx + 0.5)) - size // 2, int(math.floor(cy + 0.5)) - size // 2


def shifted_cutout(raw: np.ndarray, dx: float, dy: float, x0: int, y0: int, size: int, *,
                   order: int, cval: float, margin: int = 3) -> np.ndarray:
    """``apply_shift(raw, dx, dy, order=order, fill=cval)[y0:y0+size, x0:x0+size]``, computed by
    shifting only a window of ``raw``.

    The window spans the displayed area and its source area (displayed area minus the shift)
    plus ``margin`` px, clipped to the frame: the interpolation then reads the same pixels, and
    meets the frame edges at the same places, as for the full frame. Displayed pixels outside the
    frame are ``cval``. Exact for order 0; for order 1 equal up to rounding (~1e-13 relative).
    """
    raw = np.asarray(raw, dtype=float)
    ny, nx = raw.shape
    out = np.full((size, size), cval, dtype=float)
    if order == 0:
        dx, dy = round(float(dx)), round(float(dy))
    lo_x = int(math.floor(min(x0, x0 - dx))) - margin
    hi_x = int(math.ceil(max(x0 + size, x0 + size - dx))) + margin
    lo_y = int(math.floor(min(y0, y0 - dy))) - margin
    hi_y = int(math.ceil(max(y0 + size, y0 + size - dy))) + margin
    wx0, wx1 = max(0, lo_x), min(nx, hi_x)
    wy0, wy1 = max(0, lo_y), min(ny, hi_y)
    # the displayed area inside the frame
    ox0, ox1 = max(x0, 0), min(x0 + size, nx)
    oy0, oy1 = max(y0, 0), min(y0 + size, ny)
    if wx1 <= wx0 or wy1 <= wy0 or ox1 <= ox0 or oy1 <= oy0:
        return out
    window = apply_shift(raw[wy0:wy1, wx0:wx1], dx, dy, order=order, fill=cval)
    out[oy0 - y0: oy1 - y0, ox0 - x0: ox1 - x0] = window[oy0 - wy0: oy1 - wy0,
                                                         ox0 - wx0: ox1 - wx0]
    return out



# --------------------------------------------------------------------------- comparison GIF
@dataclass(frozen=True)
class ComparisonLayout:
    """Where things are in a comparison GIF frame: ``panels`` are the (x, y) top-left corners
    of the order-0, order-1 and difference panels, each ``side`` px square; ``bars`` those of
    the two colour bars (``bar_w`` x ``side``)."""

    width: int
    height: int
    side: int
    panels: tuple[tuple[int, int], ...]
    bars: tuple[tuple[int, int], ...]
    bar_w: int = 12


def comparison_layout(size: int, scale: int) -> ComparisonLayout:
    """The layout of :func:`order_comparison_gif` for ``size`` px cutouts magnified ``scale``x."""
    side = size * scale
    pad, gap, bar_w, bar_room = 14, 10, 12, 66
    top = 62
    x1 = pad
    x2 = x1 + side + gap
    xb1 = x2 + side + 6
    x3 = xb1 + bar_w + bar_room
    xb2 = x3 + side + 6
    width = xb2 + bar_w + bar_room
    height = top + side + 44
    return ComparisonLayout(width, height, side, ((x1, top), (x2, top), (x3, top)),
                            ((xb1, top), (xb2, top)), bar_w)


def comparison_panels(frames: Sequence[tuple[str, np.ndarray, float, float]], center, size: int,
                      fill: str | float = "median") -> list[tuple[np.ndarray, np.ndarray]]:
    """Order-0 and order-1 shifted cutouts (``size`` px, around ``center``) of each frame,
    minus the frame's median sky: what :func:`order_comparison_gif` shows."""
    x0, y0 = _region(center, size)
    out = []
    for _name, raw, dx, dy in frames:
        raw = np.asarray(raw, dtype=float)
        cval = fill_value(raw, fill)  # of the whole frame, as apply_shift on the frame would
        sky = cval if isinstance(fill, str) and fill.lower() == "median" else fill_value(raw)
        p0 = shifted_cutout(raw, dx, dy, x0, y0, size, order=0, cval=cval)
        p1 = shifted_cutout(raw, dx, dy, x0, y0, size, order=1, cval=cval)
        out.append((p0 - sky, p1 - sky))
    return out


def difference_limit(diffs: Sequence[np.ndarray], percentile: float = DIFF_PERCENTILE) -> float:
    """Half-range of the symmetric difference stretch: the ``percentile`` of ``|diff|`` over
    the finite pixels of all ``diffs`` (the largest |diff| if that is 0; 1 if all are 0)."""
    v = np.concatenate([np.abs(np.asarray(d, dtype=float)).ravel() for d in diffs])
    v = v[np.isfinite(v)]
    lim = float(np.percentile(v, percentile)) if v.size else 0.0
    if not lim > 0:
        lim = float(v.max()) if v.size and v.max() > 0 else 1.0
    return lim


def order_comparison_gif(frames: Sequence[tuple[str, np.ndarray, float, float]], center, *,
                         size: int, scale: int, levels: int, max_frames: int | None = None,
                         fill: str | float = "median", duration_ms: int = COMPARISON_MS,
                         diff_percentile: float = DIFF_PERCENTILE,
                         noise_levels: float = COMPARISON_NOISE_LEVELS) -> bytes:
    """Animated GIF: order-0 shift, order-1 shift and their difference, one GIF frame per frame.

    Parameters
    ----------
    frames : sequence of (name, raw, dx, dy)
        File name, raw (unshifted) 2-D frame, and its shift onto the reference (reference -
        frame, x first, px). The reference frame comes first, with shift (0, 0).
    center : (x, y)
        Centre of the displayed ``size`` x ``size`` area, in reference pixel coordinates.
    size : int
        Side of the displayed area, reference pixels (``report.gif_size``).
    scale : int
        Nearest-neighbour magnification of every panel (``report.gif_scale``).
    levels : int
        Grey levels of the panels, 2 to 256 (``report.gif_levels``).
    max_frames : int, optional
        At most this many GIF frames, spread evenly over ``frames`` (the first always
        included); all by default (``report.gif_max_frames`` in the report stage).
    fill : 'median', 'nan', 'zero' or float
        Fill of pixels that enter a shifted frame (as in the align stage), taken from the whole
        raw frame; NaN is shown in magenta.
    duration_ms : int
        Display time of each GIF frame, milliseconds. The animation loops forever.
    diff_percentile : float
        The difference stretch is +- this percentile of ``|order 1 - order 0|`` over all
        pixels of all frames shown (:func:`difference_limit`).
    noise_levels : float
        Grey levels spanned by one sky-noise sigma of the reference (sets the asinh
        softening, see :func:`starshift.report.stretch.asinh_stretch`).

    Returns
    -------
    bytes
        The GIF (layout: :func:`comparison_layout`). y increases upwards (as ds9). Each frame
        is titled with its file name, index and shift; the panels with what they show; each
        stretch has a colour bar in ADU; a footer states the area, the sky and the difference
        stretch's percentile and value.
    """
    if len(frames) == 0:
        raise ValueError("order_comparison_gif: no frames")
    size, scale, levels = int(size), max(1, int(scale)), int(levels)
    if size < 4:
        raise ValueError(f"order_comparison_gif: size={size} is too small")
    if not 2 <= levels <= 256:
        raise ValueError(f"order_comparison_gif: levels={levels}: use 2 to 256")
    picked = evenly_spaced(len(frames), max_frames)
    frames = [frames[i] for i in picked]
    panels = comparison_panels(frames, center, size, fill)
    x0, y0 = _region(center, size)

    p0_all = np.concatenate([p0.ravel() for p0, _ in panels])
    hi = float(np.nanmax(p0_all)) if np.isfinite(p0_all).any() else None
    stretch = asinh_stretch(panels[0][0], hi=hi, noise_levels=noise_levels)
    dlim = difference_limit([p1 - p0 for p0, p1 in panels], diff_percentile)
    any_nan = any(not np.isfinite(p).all() for pair in panels for p in pair)
    colors = palette(255 if any_nan else 256, [NODATA_RGB] if any_nan else [])
    n_grey, nodata = (255, 255) if any_nan else (256, 0)

    lay = comparison_layout(size, scale)
    ramp = np.linspace(0.0, 1.0, lay.side)
    bar_a = grey_index(ramp, levels, n_grey)
    # an odd number of difference levels: 0 ADU is exactly mid-grey, and noise far below the
    # stretch shows as flat grey (not as a random choice between the two greys around 0.5)
    dlevels = levels - 1 + levels % 2
    bar_d = grey_index(ramp, dlevels, n_grey)
    ticks_d = [(0.5 + 0.5 * v / dlim, f"{v:+.3g}" if v else "0")
               for v in (-dlim, -dlim / 2, 0.0, dlim / 2, dlim)]
    n = len(frames)
    footer = (f"{size} x {size} px around ({x0 + size // 2}, {y0 + size // 2}) in reference "
              f"pixels, shown {scale}x; y up; sky = each frame's median"
              + ("; magenta = no data" if any_nan else ""))
    footer2 = (f"difference stretch +-{dlim:.3g} ADU = {diff_percentile:g}th percentile of "
               f"|order 1 - order 0| over the {n} frames shown; panels 1-2: asinh, one "
               "stretch for all frames")
    # one canvas for every frame: what changes from frame to frame is its three header lines
    # and its three panels (the axes, titles, colour bars and footers are made once)
    cv = Canvas(lay.width, lay.height, colors)
    header = (cv.text(lay.panels[0][0], 8, "", size=11, weight="bold"),
              cv.text(lay.width - 14, 8, "", size=10, ha="right", color=DIM),
              cv.text(lay.panels[0][0], 28, "", size=9))
    titles = ("order 0 (whole-pixel shift)", "order 1 (bilinear)",
              "difference (order 1 - order 0)")
    blank = np.zeros((lay.side, lay.side), dtype=np.uint8)
    slots = []
    for (px, py), title in zip(lay.panels, titles, strict=True):
        cv.text(px, py - 16, title, size=9)
        cv.axes(px - 1, py - 1, lay.side + 2, lay.side + 2)
        slots.append(cv.paste(px, py, blank))
    (bx1, by1), (bx2, by2) = lay.bars
    cv.colorbar(bx1, by1, lay.bar_w, lay.side, bar_a, asinh_ticks(stretch),
                "ADU above sky (asinh)")
    cv.colorbar(bx2, by2, lay.bar_w, lay.side, bar_d, ticks_d, "ADU (linear)")
    cv.text(lay.panels[0][0], lay.panels[0][1] + lay.side + 8, footer, size=8, color=DIM)
    cv.text(lay.panels[0][0], lay.panels[0][1] + lay.side + 24, footer2, size=8, color=DIM)
    cv.changing(*header)
    images = []
    for k, ((name, _raw, dx, dy), (p0, p1)) in enumerate(zip(frames, panels, strict=True)):
        ref = "  (reference)" if picked[k] == 0 else ""
        cv.retext(header[0], f"{name}{ref}")
        cv.retext(header[1], f"frame {k + 1}/{n}")
        cv.retext(header[2], f"shift onto the reference: dx {dx:+.2f}, dy {dy:+.2f} px   "
                             f"(order 0 moves it by {round(dx):+d}, {round(dy):+d} px)")
        tiles = (grey_index(stretch(p0), levels, n_grey, nodata),
                 grey_index(stretch(p1), levels, n_grey, nodata),
                 grey_index(0.5 + 0.5 * np.clip((p1 - p0) / dlim, -1.0, 1.0), dlevels, n_grey,
                            nodata))
        for slot, tile in zip(slots, tiles, strict=True):
            cv.replace(slot, magnify(tile, scale))
        images.append(cv.image())
    return save_gif(images, duration_ms)
