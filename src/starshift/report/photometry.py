"""Aperture photometry before and after shifting: how much each interpolation order changes fluxes.

Pure functions on arrays and DataFrames. Positions are (x, y) in pixels, 0-based, pixel centres at
integers, as in photutils. A shift (dx, dy) is ``reference - frame``: a star at reference pixel
(x, y) sits at (x - dx, y - dy) in the raw frame.

The order-0 measurement is built to be *bitwise* identical to the one before shifting: an integer
shift only moves pixels, so both are measured on identical cutouts (same pixels, same sub-pixel
aperture offset, same mask, same order of summation) and the relative change is exactly 0.0.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd

from ..shift import ORDERS, apply_shift, fill_value

log = logging.getLogger(__name__)

#: Columns of :func:`select_stars`.
STAR_COLUMNS = ["star", "x", "y", "peak"]
#: Fraction of the clipping level above which a star counts as saturated (non-linear regime).
SATURATION_FRACTION = 0.8
#: A plateau: at least this many pixels within ``PLATEAU_TOL`` (relative) of the maximum.
PLATEAU_PIXELS = 6
PLATEAU_TOL = 5e-3
#: Margin (px) kept between a measurement cutout and the raw frame edge, per order: spline
#: support (order 3 also has an edge-dependent prefilter, whose influence decays by ~0.27/px).
_EDGE_MARGIN = {0: 0, 1: 1, 3: 4}


# --------------------------------------------------------------------------- star selection
def estimate_saturation(data: np.ndarray) -> float:
    """Saturation level of a frame, from a flat-topped (clipped) maximum; ``inf`` if none.

    A clipped frame has a plateau: at least ``PLATEAU_PIXELS`` pixels within ``PLATEAU_TOL``
    (relative) of the maximum pixel value (an unsaturated star has at most four near-equal core
    pixels, when it is centred on a pixel corner). When such a plateau exists the level returned
    is ``SATURATION_FRACTION`` times that maximum, so stars in the non-linear regime just below
    the clip are excluded too. Without a plateau nothing is saturated and ``inf`` is returned.
    """
    values = np.asarray(data, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.inf
    vmax = float(values.max())
    if vmax <= 0:
        return math.inf
    n_top = int(np.count_nonzero(values >= vmax * (1.0 - PLATEAU_TOL)))
    return SATURATION_FRACTION * vmax if n_top >= PLATEAU_PIXELS else math.inf


def star_candidates(reference: np.ndarray, *, saturation: float | None = None,
                    fwhm: float = 4.0, border: int = 40, min_separation: float = 15.0,
                    threshold: float = 5.0, neighbour_ratio: float = 0.1,
                    max_roundness: float = 0.3, sharpness_range: tuple[float, float] = (0.2, 1.0),
                    max_size_ratio: float = 1.3) -> pd.DataFrame:
    """Every source DAOStarFinder finds in ``reference``, with why it is (not) usable.

    Parameters are those of :func:`select_stars`, plus:

    threshold : float
        Detection threshold in units of the sigma-clipped sky standard deviation.
    neighbour_ratio : float
        A neighbour within ``min_separation`` whose background-subtracted peak is at least this
        fraction of the star's makes the star not isolated.
    max_roundness : float
        Largest allowed ``|roundness1|`` and ``|roundness2|`` (an unresolved pair is elongated).
    sharpness_range : (float, float)
        Allowed DAOFIND sharpness (rejects hot pixels and cosmic rays, and very diffuse blobs).
    max_size_ratio : float
        Largest allowed ratio of a source's second-moment size to the median size of the (up
        to ten) brightest sources that passed every other test (rejects galaxies and other
        extended objects).

    Returns
    -------
    DataFrame with columns ``x, y, peak, flux, roundness1, roundness2, sharpness, size,
    reason``, one
    row per detected source, brightest (by DAOFIND flux) first; ``reason`` is ``''`` for a usable
    star, else the first failed test: ``border``, ``nan``, ``saturated``, ``flat core``,
    ``blended`` (a comparable neighbour within ``min_separation``), ``shape``, ``sharpness`` or
    ``extended``. ``peak`` is the largest raw pixel value (ADU, sky included) within ``fwhm`` of
    the centroid; ``size`` the intensity-weighted RMS radius (px) within ``2 * fwhm``.
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.detection import DAOStarFinder

    data = np.asarray(reference, dtype=float)
    if data.ndim != 2:
        raise ValueError("select_stars: the reference must be a 2-D image")
    cols = ["x", "y", "peak", "flux", "roundness1", "roundness2", "sharpness", "size", "reason"]
    finite = np.isfinite(data)
    if not finite.any():
        return pd.DataFrame(columns=cols)
    if saturation is None:
        saturation = estimate_saturation(data)
    _, sky, std = sigma_clipped_stats(data[finite], sigma=3.0, maxiters=5)
    std = float(std) if std > 0 else 1.0
    sub = np.where(finite, data - sky, 0.0)
    finder = DAOStarFinder(threshold=threshold * std, fwhm=fwhm, min_separation=0,
                           sharpness_range=None, roundness_range=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no sources found" is a warning, not an error
        table = finder(sub)
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=cols)

    ny, nx = data.shape
    xs = np.asarray(table["x_centroid"], dtype=float)
    ys = np.asarray(table["y_centroid"], dtype=float)
    flux = np.asarray(table["flux"], dtype=float)
    order = np.lexsort((xs, ys, -flux))  # brightest first; ties by (y, x): deterministic
    xs, ys, flux = xs[order], ys[order], flux[order]
    r1 = np.asarray(table["roundness1"], dtype=float)[order]
    r2 = np.asarray(table["roundness2"], dtype=float)[order]
    sharp = np.asarray(table["sharpness"], dtype=float)[order]

    half = max(1, int(math.ceil(fwhm)))
    peaks, sub_peaks, flat, has_nan = [], [], [], []
    for x, y in zip(xs, ys, strict=True):
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        sl = (slice(max(0, iy - half), iy + half + 1), slice(max(0, ix - half), ix + half + 1))
        box, box_sub = data[sl], sub[sl]
        has_nan.append(not np.all(np.isfinite(box)))
        peaks.append(float(np.nanmax(box)) if np.isfinite(box).any() else math.nan)
        top = float(box_sub.max())
        sub_peaks.append(top)
        flat.append(top > 0 and np.count_nonzero(box_sub >= top * (1 - PLATEAU_TOL))
                    >= PLATEAU_PIXELS)
    sub_peaks = np.asarray(sub_peaks)

    reasons = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dist = np.hypot(xs - x, ys - y)
        near = (dist < min_separation) & (np.arange(len(xs)) != i)
        if not (border <= x <= nx - 1 - border and border <= y <= ny - 1 - border):
            reason = "border"
        elif has_nan[i]:
            reason = "nan"
        elif not peaks[i] < saturation:
            reason = "saturated"
        elif flat[i]:
            reason = "flat core"
        elif np.any(sub_peaks[near] >= neighbour_ratio * sub_peaks[i]):
            reason = "blended"
        elif max(abs(r1[i]), abs(r2[i])) > max_roundness:
            reason = "shape"
        elif not sharpness_range[0] <= sharp[i] <= sharpness_range[1]:
            reason = "sharpness"
        else:
            reason = ""
        reasons.append(reason)
    sizes = np.array([_moment_size(sub, x, y, 2.0 * fwhm) for x, y in zip(xs, ys, strict=True)])
    ok = np.flatnonzero([r == "" for r in reasons])
    if ok.size >= 3:  # the typical star: the brightest usable ones (noise inflates faint sizes)
        typical = float(np.nanmedian(sizes[ok[:10]]))
        for i in ok:
            if not sizes[i] <= max_size_ratio * typical:
                reasons[i] = "extended"
    return pd.DataFrame({"x": xs, "y": ys, "peak": peaks, "flux": flux, "roundness1": r1,
                         "roundness2": r2, "sharpness": sharp, "size": sizes,
                         "reason": reasons})


def _moment_size(sub: np.ndarray, x: float, y: float, radius: float) -> float:
    """Intensity-weighted RMS radius (px) of the positive signal within ``radius`` of (x, y)."""
    ny, nx = sub.shape
    r = int(math.ceil(radius))
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    y0, y1, x0, x1 = max(0, iy - r), min(ny, iy + r + 1), max(0, ix - r), min(nx, ix + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    w = np.where(d2 <= radius * radius, np.clip(sub[y0:y1, x0:x1], 0.0, None), 0.0)
    total = float(w.sum())
    return math.sqrt(float((w * d2).sum()) / total / 2.0) if total > 0 else math.nan


def select_stars(reference: np.ndarray, n: int = 8, *, saturation: float | None = None,
                 fwhm: float = 4.0, border: int = 40, min_separation: float = 15.0,
                 **kwargs) -> pd.DataFrame:
    """The ``n`` brightest unsaturated, isolated stars of a reference frame, for photometry.

    Sources are found with photutils' ``DAOStarFinder`` on the frame minus its sigma-clipped
    median sky, then kept only when they are

    * at least ``border`` px from every edge (so that shifts of up to ~30 px never push an
      aperture and annulus into pixels filled by the shift),
    * unsaturated: raw peak below ``saturation`` and no flat-topped core,
    * isolated: no neighbour within ``min_separation`` px whose peak reaches 10 % of the star's,
    * star-shaped: round (an unresolved pair is elongated) and of DAOFIND sharpness 0.2-1.

    Parameters
    ----------
    reference : 2-D array
        The night's reference frame.
    n : int
        How many stars to return (fewer when fewer qualify).
    saturation : float, optional
        Raw pixel value (ADU) at or above which a star counts as saturated. ``None`` estimates
        it with :func:`estimate_saturation` (80 % of a clipped, flat-topped maximum).
    fwhm : float
        Expected stellar FWHM, pixels (the DAOFIND kernel).
    border : int
        Minimum distance of a selected star from the frame edges, pixels.
    min_separation : float
        Isolation radius, pixels.
    **kwargs
        Further selection thresholds of :func:`star_candidates`.

    Returns
    -------
    DataFrame with columns ``star`` (1, 2, ...), ``x``, ``y`` (reference pixel coordinates) and
    ``peak`` (largest raw pixel value near the star, ADU), brightest first. Deterministic.
    """
    cand = star_candidates(reference, saturation=saturation, fwhm=fwhm, border=border,
                           min_separation=min_separation, **kwargs)
    good = cand[cand["reason"] == ""].head(max(0, int(n)))
    if len(cand):
        counts = cand["reason"].replace("", "selectable").value_counts().sort_index()
        log.info("select_stars: %d of %d sources (%s)", len(good), len(cand),
                 ", ".join(f"{k}: {v}" for k, v in counts.items()))
    out = good[["x", "y", "peak"]].reset_index(drop=True)
    out.insert(0, "star", np.arange(1, len(out) + 1, dtype=int))
    return out


# --------------------------------------------------------------------------- photometry
def _anchor(v: float) -> int:
    """The pixel whose centre is nearest to ``v`` (halves up: independent of banker's rounding)."""
    return int(math.floor(v + 0.5))


class _Apertures:
    """Aperture (exact weights) and annulus (centre weights) masks at one sub-pixel offset, laid
    on a square cutout of half-size ``half`` centred on the anchor pixel."""

    def __init__(self, fx: float, fy: float, half: int, radius: float, r_in: float, r_out: float):
        from photutils.aperture import CircularAnnulus, CircularAperture

        pos = (half + fx, half + fy)
        aperture = CircularAperture(pos, r=radius)
        self.area = float(aperture.area)
        self.aperture = aperture.to_mask(method="exact")
        self.annulus = CircularAnnulus(pos, r_in=r_in, r_out=r_out).to_mask(method="center")

    def flux(self, cut: np.ndarray) -> float:
        """Aperture sum minus the annulus median times the aperture area (NaN on NaN pixels)."""
        values = self.aperture.get_values(cut)
        sky = self.annulus.get_values(cut)
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(sky))) or sky.size == 0:
            return math.nan
        return float(np.sum(values) - np.median(sky) * self.area)

    def noise(self, cut: np.ndarray) -> float:
        """Background noise of the aperture sum: annulus MAD-sigma times sqrt(area)."""
        sky = self.annulus.get_values(cut)
        sky = sky[np.isfinite(sky)]
        if sky.size == 0:
            return math.nan
        mad = float(np.median(np.abs(sky - np.median(sky))))
        return 1.4826 * mad * math.sqrt(self.area)


def _cutout(data: np.ndarray, ix: int, iy: int, half: int, margin: int = 0) -> np.ndarray | None:
    """``data[iy-half:iy+half+1, ix-half:ix+half+1]``, or None when it (plus ``margin``) leaves
    the frame."""
    ny, nx = data.shape
    lo, hi = half + margin, half + margin
    if ix - lo < 0 or iy - lo < 0 or ix + hi > nx - 1 or iy + hi > ny - 1:
        return None
    return data[iy - half: iy + half + 1, ix - half: ix + half + 1]


class ShiftedCutouts:
    """Square cutouts of ``apply_shift(raw, dx, dy, order=o, fill=cval)`` (orders 1 and 3),
    bit for bit, without shifting the whole frame.

    ``scipy.ndimage.shift`` takes output pixel ``k``'s source coordinate, per axis, as the
    double ``k - shift``: one rounding, onto the grid of that coordinate's binade (the powers
    of two it lies between). ``ndimage.affine_transform`` with a unit diagonal matrix, an
    ``offset`` ``c0`` and a small ``output_shape`` takes ``j + c0`` for its output pixel ``j``:
    when ``c0`` is the whole frame's coordinate of a run of pixels in one binade, that sum is
    exact and equals the whole frame's coordinate of pixel ``j`` of the run. The input (the raw
    frame, or for order 3 its spline coefficients, prefiltered as ``ndimage.shift`` does), the
    mode and the edges are the same, so are the interpolated values. A cutout is computed in
    blocks of one binade per axis; one with a coordinate below 1 is cut from the whole shifted
    frame (tests compare both ways with :func:`starshift.shift.apply_shift`).
    """

    def __init__(self, raw: np.ndarray, dx: float, dy: float, cval: float):
        self.raw = np.asarray(raw, dtype=float)
        self.dx, self.dy, self.cval = float(dx), float(dy), float(cval)
        self._coefficients: dict[int, np.ndarray] = {}
        self._whole: dict[int, np.ndarray] = {}

    def _source(self, order: int) -> np.ndarray:
        if order < 2:  # no prefilter
            return self.raw
        if order not in self._coefficients:  # as ndimage.shift prefilters (mode constant)
            from scipy import ndimage

            self._coefficients[order] = ndimage.spline_filter(self.raw, order,
                                                              output=np.float64,
                                                              mode="constant")
        return self._coefficients[order]

    def cutout(self, order: int, ix: int, iy: int, half: int) -> np.ndarray | None:
        """``shifted[iy-half:iy+half+1, ix-half:ix+half+1]`` of the frame shifted with
        ``order``, or None when that leaves the frame."""
        from scipy import ndimage

        if order not in (1, 3):
            raise ValueError(f"ShiftedCutouts: order {order}: use 1 or 3")
        if _cutout(self.raw, ix, iy, half) is None:
            return None
        ys = np.arange(iy - half, iy + half + 1, dtype=float) - self.dy
        xs = np.arange(ix - half, ix + half + 1, dtype=float) - self.dx
        rows, cols = _binade_runs(ys), _binade_runs(xs)
        if rows is None or cols is None:
            if order not in self._whole:
                self._whole[order] = apply_shift(self.raw, self.dx, self.dy, order=order,
                                                 fill=self.cval)
            return _cutout(self._whole[order], ix, iy, half)
        src = self._source(order)
        out = np.empty((ys.size, xs.size))
        for r0, r1 in rows:
            for c0, c1 in cols:
                out[r0:r1, c0:c1] = ndimage.affine_transform(
                    src, np.ones(2), offset=(ys[r0], xs[c0]), output_shape=(r1 - r0, c1 - c0),
                    order=order, mode="constant", cval=self.cval, prefilter=False)
        return out


def _binade_runs(coords: np.ndarray) -> list[tuple[int, int]] | None:
    """(start, stop) of each run of ``coords`` (increasing, by 1) in one binade; None when one
    is below 1 (finer grids down to 0, then negative)."""
    if not coords[0] >= 1.0:
        return None
    exponent = np.frexp(coords)[1]
    cuts = [0, *(np.flatnonzero(np.diff(exponent)) + 1).tolist(), coords.size]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def shift_photometry(raw: np.ndarray, dx: float, dy: float, stars: pd.DataFrame, *,
                     radius: float = 6.0, annulus: tuple[float, float] = (10.0, 15.0),
                     orders=(0, 1, 3), fill: str | float = "median", min_snr: float = 20.0
                     ) -> pd.DataFrame:
    """Aperture photometry of ``stars`` in a raw frame before and after shifting it.

    The whole raw frame is shifted by (dx, dy) with :func:`starshift.shift.apply_shift` for each
    order. Before shifting, each star is measured at its frame position (x - dx, y - dy). After
    shifting with order 0 the pixels moved by (round(dx), round(dy)) exactly, so the star is
    measured at (x - dx + round(dx), y - dy + round(dy)): the same pixels with the same sub-pixel
    aperture offset, hence a bitwise-identical flux and a relative change of exactly 0.0. After
    order 1 or 3 it is measured at its reference position (x, y).

    Photometry: photutils ``CircularAperture`` sum with the exact overlap method, minus the
    median of a ``CircularAnnulus`` (centre method) times the aperture area.

    Parameters
    ----------
    raw : 2-D array
        The unshifted frame.
    dx, dy : float
        The shift onto the reference (reference - frame), x first, pixels.
    stars : DataFrame
        Columns ``star, x, y`` (reference coordinates), e.g. from :func:`select_stars`.
    radius : float
        Aperture radius, pixels.
    annulus : (float, float)
        Inner and outer radius of the background annulus, pixels.
    orders : sequence of {0, 1, 3}
        Interpolation orders to compare.
    fill : 'median', 'nan', 'zero' or float
        Fill of pixels that enter the shifted frame (as in the align stage).
    min_snr : float
        Below this signal-to-noise ratio before shifting (the star is faint in this frame's
        filter or exposure) the relative changes are NaN: a ratio to a flux near zero means
        nothing. The fluxes are still given.

    Returns
    -------
    DataFrame, one row per star: ``star, x, y, flux_before``, ``flux_order<o>`` for each order,
    ``rel_change_order<o>`` (``flux_order<o> / flux_before - 1``) for each order, ``snr``
    (``flux_before`` over its background noise: annulus MAD-sigma times sqrt(aperture area))
    and ``note``. A star whose cutout leaves the frame (or would read pixels filled by the
    shift), holds NaN pixels or is below ``min_snr`` gets NaN values and a ``note`` saying why
    (``''`` otherwise).
    """
    raw = np.asarray(raw, dtype=float)
    orders = tuple(int(o) for o in orders)
    for o in orders:
        if o not in ORDERS:
            raise ValueError(f"shift_photometry: order {o} is not one of {ORDERS}")
    r_in, r_out = (float(v) for v in annulus)
    if not 0 < radius <= r_in < r_out:
        raise ValueError(f"shift_photometry: need 0 < radius ({radius}) <= annulus inner "
                         f"({r_in}) < annulus outer ({r_out})")
    half = int(math.ceil(r_out)) + 1
    dx, dy = float(dx), float(dy)
    rdx, rdy = round(dx), round(dy)  # exactly as apply_shift rounds for order 0
    # the fill value once (apply_shift would take the frame's median again for every order);
    # order 0 only moves pixels, so its cutouts are the raw frame's (no shifted frame needed);
    # orders 1 and 3 shift only the cutouts, bit for bit as the whole frame would be
    shifted = ShiftedCutouts(raw, dx, dy, fill_value(raw, fill))

    rows = []
    for star, x, y in zip(stars["star"], stars["x"].astype(float), stars["y"].astype(float),
                          strict=True):
        row: dict = {"star": star, "x": x, "y": y}
        notes: list[str] = []
        bx, by = x - dx, y - dy  # the star in the raw frame
        bix, biy = _anchor(bx), _anchor(by)
        ap_before = _Apertures(bx - bix, by - biy, half, radius, r_in, r_out)
        cut = _cutout(raw, bix, biy, half)
        snr = math.nan
        if cut is None:
            notes.append("aperture leaves the raw frame")
            before = math.nan
        else:
            before = ap_before.flux(cut)
            if math.isnan(before):
                notes.append("NaN pixels before shifting")
            else:
                noise = ap_before.noise(cut)
                snr = before / noise if noise > 0 else math.inf
                if not snr >= min_snr:
                    notes.append(f"S/N {snr:.1f} < {min_snr:g} before shifting: no relative "
                                 "change")
        row["flux_before"] = before

        aix, aiy = _anchor(x), _anchor(y)
        ap_after = None
        for o in orders:
            if o == 0:
                # the same pixels, moved by whole pixels: identical cutout, identical apertures;
                # the order-0 frame's cutout at (bix + rdx, biy + rdy) is ``cut`` itself when it
                # lies inside the frame (its source pixels do: ``cut`` is not None)
                ok = cut is not None and _cutout(raw, bix + rdx, biy + rdy, half) is not None
                after = cut if ok else None
                aps = ap_before
            else:
                m = _EDGE_MARGIN[o]
                # every pixel of the cutout must be interpolated from inside the raw frame
                src = _cutout(raw, _anchor(x - dx), _anchor(y - dy), half, margin=m + 1)
                after = shifted.cutout(o, aix, aiy, half) if src is not None else None
                if ap_after is None:
                    ap_after = _Apertures(x - aix, y - aiy, half, radius, r_in, r_out)
                aps = ap_after
            if after is None:
                flux = math.nan
                notes.append(f"order {o}: aperture reaches pixels filled by the shift")
            else:
                flux = aps.flux(after)
                if math.isnan(flux):
                    notes.append(f"order {o}: NaN pixels")
            row[f"flux_order{o}"] = flux
        usable = snr >= min_snr and before != 0.0  # False for NaN
        for o in orders:
            f = row[f"flux_order{o}"]
            row[f"rel_change_order{o}"] = f / before - 1.0 if usable else math.nan
        row["snr"] = snr
        row["note"] = "; ".join(dict.fromkeys(notes))
        if row["note"]:
            log.info("shift_photometry: star %s at (%.1f, %.1f): %s", star, x, y, row["note"])
        rows.append(row)
    columns = (["star", "x", "y", "flux_before"] + [f"flux_order{o}" for o in orders]
               + [f"rel_change_order{o}" for o in orders] + ["snr", "note"])
    return pd.DataFrame(rows, columns=columns)


def summarise_photometry(phot: pd.DataFrame) -> pd.DataFrame:
    """Per interpolation order: how many measurements, and the median, RMS and largest absolute
    relative flux change (fractions, not percent) over all stars and frames of ``phot``.

    ``phot`` is one or more :func:`shift_photometry` tables concatenated (a ``file`` column, if
    present, is counted). Returns columns ``order, n_frames, n_measured, n_nan,
    median_rel_change, rms_rel_change, max_abs_rel_change``, one row per order found.
    """
    orders = sorted(int(c.removeprefix("rel_change_order")) for c in phot.columns
                    if c.startswith("rel_change_order"))
    n_frames = int(phot["file"].nunique()) if "file" in phot.columns else 1
    rows = []
    for o in orders:
        v = phot[f"rel_change_order{o}"].to_numpy(dtype=float)
        ok = v[np.isfinite(v)]
        rows.append({
            "order": o, "n_frames": n_frames, "n_measured": int(ok.size),
            "n_nan": int(v.size - ok.size),
            "median_rel_change": float(np.median(ok)) if ok.size else math.nan,
            "rms_rel_change": float(np.sqrt(np.mean(ok ** 2))) if ok.size else math.nan,
            "max_abs_rel_change": float(np.max(np.abs(ok))) if ok.size else math.nan,
        })
    return pd.DataFrame(rows, columns=["order", "n_frames", "n_measured", "n_nan",
                                       "median_rel_change", "rms_rel_change",
                                       "max_abs_rel_change"])
