"""The few-star fallback: correlation with the reference's source stamps at full resolution.

When a frame has fewer than ``min_stars`` usable stars (or ``refine=False``), the coarse shift
is refined by correlating the frame, at integer lags around it, with stamps of the reference's
sources (:class:`_Template`, made once by :func:`_make_template`: background-subtracted pixels
under a Gaussian window centred on each centroid), then interpolating the peak with a 3-point
Gaussian on each axis (:func:`_refine_correlation`). Its uncertainty is propagated from the
pixel noise of both images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._stats import FWHM_PER_SIGMA, mad_sigma
from ._centroid import _cutouts, _despike, _measure, _reach, _ring_stats
from ._params import ReferenceParams
from ._result import ShiftEstimate
from ._sources import _Sources, _star_like


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


def _make_template(src: _Sources, raw: np.ndarray, fwhm: float, sat: float, p: ReferenceParams,
                   max_sources: int = 50) -> _Template | None:
    """Stamps of up to ``max_sources`` of the reference's star-like, unsaturated sources (None
    when there are none)."""
    ny, nx = src.bkg.shape
    sig_t = max(1.0, 1.5 * fwhm / FWHM_PER_SIGMA)
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
                 fwhm, 1, half, p, 0.0, lambda _: math.inf)
    ok = m.ok & (np.hypot(m.x - src.x[idx], m.y - src.y[idx]) < _reach(fwhm))
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


def _refine_correlation(t: _Template, p: ReferenceParams, clean: np.ndarray,
                        dx0: float, dy0: float, bad: np.ndarray | None = None
                        ) -> ShiftEstimate | None:
    """Full-resolution correlation of the reference's source stamps around the coarse shift.

    ``C(s) = sum_q T(q) F(q - s)`` for integer lags s within 2 px of the coarse shift (walking
    uphill if the maximum is on the border); the peak is refined on each axis by a 3-point
    Gaussian (log-parabola) fit, or a parabola. Its uncertainty propagates the pixel noise of the
    frame (through the template) and of the reference (through the frame), Poisson noise
    included through ``gain``: first order in the numerator, second order in the curvature.
    ``clean`` is the frame without its row and column patterns; None when no peak is found.
    """
    ny, nx = clean.shape
    noise_f = mad_sigma(clean, bad=bad)
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

