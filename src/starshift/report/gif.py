"""An animated GIF comparing order-0 (whole-pixel) and order-1 (bilinear) shifts, frame by frame.

Pure function: arrays in, GIF bytes out. Each GIF frame shows, around one position of the
reference frame, the frame shifted with order 0, the same frame shifted with order 1, and their
difference. The two shifted panels share one fixed ZScale stretch (from the reference cutout) and
the difference panel one fixed symmetric stretch, for the whole animation, so what changes from
frame to frame is the data, not the display. Shifted panels are shown above each frame's median
sky: a night mixes filters and exposure times, whose sky levels differ by hundreds of ADU.

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

import numpy as np

from ..shift import apply_shift, fill_value

#: Grey levels of the two shifted panels (default), levels of the diverging difference panel.
N_GREY = 6
N_DIFF = 15
#: Percentile of |order1 - order0| (over all frames) that sets the difference stretch.
DIFF_PERCENTILE = 99.9
_PAD = 4  # px between panels and around the edge
_UI = ((24, 26, 34), (235, 235, 235), (150, 20, 110), (150, 150, 160))  # bg, text, no data, dim


def _palette(n_grey: int) -> tuple[bytes, int]:
    """The one global palette: grey ramp, blue-white-red ramp, UI colours; padded to a power of
    two (the GIF colour table size). Returns the palette and the index of the first UI colour."""
    rgb = [(g, g, g) for g in np.linspace(0, 255, n_grey).round().astype(int)]
    for v in np.linspace(-1.0, 1.0, N_DIFF):  # blue (negative) - white (zero) - red (positive)
        a = 1.0 - abs(v)
        if v < 0:
            rgb.append((round(40 + 215 * a), round(90 + 165 * a), 255))
        else:
            rgb.append((255, round(70 + 185 * a), round(40 + 215 * a)))
    ui = len(rgb)
    rgb += list(_UI)
    rgb += [(0, 0, 0)] * ((1 << max(1, (len(rgb) - 1).bit_length())) - len(rgb))
    return bytes(int(c) for triple in rgb for c in triple), ui


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


def _to_index(values: np.ndarray, lo: float, hi: float, n: int, base: int, nodata: int
              ) -> np.ndarray:
    """Map ``values`` linearly onto ``n`` equal bins of [lo, hi] (clipped), as palette indices
    ``base .. base+n-1``; NaN becomes ``nodata``."""
    span = hi - lo if hi > lo else 1.0
    t = np.clip(np.nan_to_num((values - lo) / span), 0.0, 1.0)
    idx = (base + np.minimum(np.floor(t * n), n - 1)).astype(np.uint8)
    idx[~np.isfinite(values)] = nodata
    return idx


def order_comparison_gif(frames: Sequence[tuple[str, np.ndarray, float, float]], center, *,
                         size: int = 64, fill: str | float = "median", duration_ms: int = 600,
                         scale: int = 2, levels: int = N_GREY) -> bytes:
    """Animated GIF: order-0 shift, order-1 shift and their difference, one GIF frame per frame.

    Parameters
    ----------
    frames : sequence of (name, raw, dx, dy)
        File name, raw (unshifted) 2-D frame, and its shift onto the reference (reference -
        frame, x first, px). The reference frame comes first, with shift (0, 0).
    center : (x, y)
        Centre of the displayed ``size`` x ``size`` area, in reference pixel coordinates.
    size : int
        Side of the displayed area, reference pixels.
    fill : 'median', 'nan', 'zero' or float
        Fill of pixels that enter a shifted frame (as in the align stage), taken from the whole
        raw frame; NaN is shown in magenta.
    duration_ms : int
        Display time of each GIF frame, milliseconds. The animation loops forever.
    scale : int
        Nearest-neighbour magnification of every panel.
    levels : int
        Grey levels of the shifted panels (2-64). GIF's LZW compresses sky noise poorly, so the
        file grows quickly with this: 6 keeps the noise texture visible at ~6.5 KB per GIF
        frame (64 px at scale 2).

    Returns
    -------
    bytes
        The GIF. Panels, y increasing upwards (as ds9 / ``origin='lower'``): "order=0" and
        "order=1" minus the frame's median (its sky: frames of other filters and exposure
        times have other sky levels), in one linear ZScale stretch computed once from the
        reference cutout, and
        "order1 - order0" in one symmetric stretch for the whole animation (+- the 99.9th
        percentile of |difference| over all frames; blue negative, white zero, red positive).
        Each GIF frame is labelled with its index, file name and shift; a footer gives the
        stretches and the centre. Global palette, no timestamps: the same input gives the same
        bytes.
    """
    from astropy.visualization import ZScaleInterval
    from PIL import Image, ImageDraw, ImageFont

    if len(frames) == 0:
        raise ValueError("order_comparison_gif: no frames")
    size, scale, levels = int(size), max(1, int(scale)), int(levels)
    if size < 4:
        raise ValueError(f"order_comparison_gif: size={size} is too small")
    if not 2 <= levels <= 64:
        raise ValueError(f"order_comparison_gif: levels={levels}: use 2 to 64")
    x0, y0 = _region(center, size)

    panels = []
    for name, raw, dx, dy in frames:
        raw = np.asarray(raw, dtype=float)
        cval = fill_value(raw, fill)  # of the whole frame, as apply_shift on the frame would
        sky = cval if isinstance(fill, str) and fill.lower() == "median" else fill_value(raw)
        p0 = shifted_cutout(raw, dx, dy, x0, y0, size, order=0, cval=cval)
        p1 = shifted_cutout(raw, dx, dy, x0, y0, size, order=1, cval=cval)
        # displayed above the frame's median sky, so frames of other filters and exposures
        # (other sky levels) stay within the one stretch; the difference is unaffected
        panels.append((str(name), float(dx), float(dy), p0 - sky, p1 - sky, p1 - p0))

    ref = panels[0][3]
    finite = ref[np.isfinite(ref)]
    vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0.0, 1.0)
    diffs = np.concatenate([np.abs(p[5][np.isfinite(p[5])]) for p in panels])
    dlim = float(np.percentile(diffs, DIFF_PERCENTILE)) if diffs.size else 0.0
    if not dlim > 0:
        dlim = float(np.max(diffs)) if diffs.size and np.max(diffs) > 0 else 1.0

    font = ImageFont.load_default_imagefont()  # bitmap font: no anti-aliasing, no variation
    line_h = 12
    n = len(panels)
    labels = [f"{i + 1}/{n} {name}  dx={dx:+.2f} dy={dy:+.2f}"
              + ("  (reference)" if i == 0 else "")
              for i, (name, dx, dy, *_rest) in enumerate(panels)]
    footer = (f"zscale {vmin:+.0f}..{vmax:+.0f} ADU above sky   diff +-{dlim:.3g} ADU   "
              f"center ({x0 + size // 2},{y0 + size // 2})")
    titles = ("order=0", "order=1", "order1 - order0")
    side = size * scale
    text_w = max(int(font.getlength(t)) for t in [*labels, footer, "  ".join(titles)])
    width = max(3 * side + 4 * _PAD, text_w + 2 * _PAD)
    height = _PAD + 2 * line_h + side + line_h + _PAD
    left = (width - (3 * side + 2 * _PAD)) // 2
    top = _PAD + 2 * line_h

    palette, ui = _palette(levels)
    bg, text, nodata, dim = ui, ui + 1, ui + 2, ui + 3
    images = []
    for label, (_name, _dx, _dy, p0, p1, diff) in zip(labels, panels, strict=True):
        canvas = np.full((height, width), bg, dtype=np.uint8)
        tiles = (_to_index(p0, vmin, vmax, levels, 0, nodata),
                 _to_index(p1, vmin, vmax, levels, 0, nodata),
                 _to_index(diff, -dlim, dlim, N_DIFF, levels, nodata))
        for k, tile in enumerate(tiles):
            big = np.repeat(np.repeat(tile[::-1], scale, axis=0), scale, axis=1)  # y up
            xs = left + k * (side + _PAD)
            canvas[top: top + side, xs: xs + side] = big
        im = Image.fromarray(canvas)  # mode "L"; putpalette turns it into "P"
        im.putpalette(palette)
        draw = ImageDraw.Draw(im)
        draw.text((_PAD, _PAD), label, fill=text, font=font)
        for k, title in enumerate(titles):
            draw.text((left + k * (side + _PAD), _PAD + line_h), title, fill=text, font=font)
        draw.text((_PAD, top + side + 1), footer, fill=dim, font=font)
        images.append(im)

    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(duration_ms), loop=0, optimize=False, disposal=1)
    return buf.getvalue()
