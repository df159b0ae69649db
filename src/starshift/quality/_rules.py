"""The night's rules: which frames of a night are rejected, and why.

A frame is rejected when a metric is an outlier of its own night (beyond the median of the
frames it is compared with by ``k`` robust spreads, on the bad side only, the spread floored so
that ``k`` floors are the smallest deviation that matters), or beyond a limit that physics gives
(a residual or shift uncertainty in pixels, a misaligned corner, trailed stars). Photometric
metrics are compared within a filter and exposure time.

Classes
-------
QualityLimits
    The limits, plain numbers.
NightDecision
    Status and reason of every frame, and the thresholds used.

Functions
---------
night_rules
    Decide a night from its metrics table.
shape_rejection
    The single-frame star-shape rule that :func:`night_rules` replaces (legacy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import columns as C
from .._stats import median
from .._table import Table
from ._robust import clipped

__all__ = ["NightDecision", "QualityLimits", "night_rules", "shape_rejection"]


@dataclass(frozen=True)
class QualityLimits:
    """Limits of :func:`night_rules`; plain numbers (``None`` switches an absolute rule off).

    Night-relative rules: a metric is an outlier when it lies beyond the night's median by more
    than ``k`` times the night's spread, on its bad side only. The night's median and spread
    (``MAD_TO_SIGMA`` x MAD) are those of its normal frames: computed over the frames that are
    neither failed nor listed as bad, iteratively leaving out those beyond ``clip`` spreads,
    so a night with up to a third of bad frames does not widen its own limits ("the night":
    the frames of the same filter and exposure time for photometric metrics, see
    :func:`night_rules`). The spread is
    floored at a minimal meaningful spread per metric (below), so a very uniform night does
    not reject frames for tiny differences: ``k x floor`` is the smallest deviation that can
    ever reject.

    Attributes
    ----------
    k : float
        Outlier threshold, in spreads (5: a normal frame of a Gaussian night is beyond it once
        in ~3 million, so natural scatter never rejects; heavy tails still have room).
    clip : float
        Frames beyond this many spreads are left out of the night's median and spread.
    min_frames : int
        A metric finite in fewer frames than this has no night-relative rule (nor FWHM ratio,
        nor transparency fraction): only its absolute limits apply.
    max_residual : float or None
        Largest "new shift" (residual after shifting) on either axis, px. 0.5 px: beyond it the
        nearest-pixel shift is wrong.
    max_sigma : float or None
        Largest 1-sigma uncertainty of the shift on either axis, px.
    max_corner : float or None
        The corner rule's least limit, px. A frame is rejected when the largest misalignment
        a pure shift leaves at its corners (the frame rotated or scaled) exceeds
        ``max(max_corner, corner_fwhm_fraction x the night's median FWHM)``. 0.5 px: the
        whole-pixel shift's own rounding leaves up to that much, so less never matters; it is
        the whole limit when the night's FWHM is unknown (NaN, or finite in fewer than
        ``min_frames`` frames) or ``corner_fwhm_fraction`` is None. ``None`` switches the
        corner rule off.
    corner_fwhm_fraction : float or None
        The corner limit as a fraction of the night's median FWHM: the clipped median (as for
        the outlier rules, spread floored at ``floor_fwhm``) over all the night's frames,
        every filter. 0.4: what matters is the misalignment relative to the stars (a fixed
        pixel limit is too strict for a broad PSF and too lenient for a sharp one); a frame
        off by ``0.4 F`` broadens a Gaussian star of FWHM ``F`` stacked with an aligned one
        by about 10% there, and less in the rest of the frame. On real nights, field rotation
        and differential refraction (a slowly rotating field, 0.08 deg over 650 x 500 px; a
        1024 x 1024 field at airmass 3, scale changing by up to 8e-4) leave good frames
        0.51-0.60 px off at the corners on microobs (FWHM of isolated stars 2.2-2.8 px,
        median 2.4) and up to 0.56 px on wallace (FWHM ~3.9 px), while the rotated bad
        frames of microobs are off by 1.39-3.8 px: the limit there is 0.95 px. ``None``:
        ``max_corner`` alone.
    max_elongation : float or None
        Largest median elongation ``1 - b/a`` (0.5: a 2:1 star, trailed or doubled).
    max_fwhm_ratio : float or None
        Largest FWHM as a multiple of the night's median, however variable the night: 1.25
        lies between natural seeing variation (frames within ~10-20% of a night's median) and
        a defocused or shaken frame (1.3x and more); on the sample nights the good frames
        reach 1.20-1.23 x their filter's median and a 1.3x defocused frame is measured at
        1.27-1.29 x. With ``k = 5`` and ``floor_fwhm = 0.05`` the outlier rule never rejects
        below ``1 + 5 x 0.05 = 1.25`` x the median either, so with the defaults the ratio is
        the FWHM limit on every night, however variable; the outlier rule takes over only when
        the ratio is raised or switched off (or ``k`` or the floor lowered).
    min_transparency_fraction : float or None
        Transparency below this fraction of the night's median fires the cloud rule only when
        the frame is also a (low, ``k``-spread) outlier of ``ln transparency``: both must hold.
        The fraction says how much light loss matters: at 0.25 a background-limited frame's
        stars have a quarter of their signal-to-noise ratio, and the frame brings under 1/16
        of a clear one's weight to an inverse-variance stack. The real wallace night puts the
        line there: its frames through thick cloud pass 0.07-0.14 of the reference's light
        (0.10-0.19 of the night's median) and are bad, its poorest good frame, under a passing
        cloud, 0.30 (0.41 of the median; a 0.5 fraction rejected it as soon as the night's
        other frames were steady, e.g. six of its frames alone). The outlier test keeps the
        natural variation of a night with drifting thin cloud.
    floor_fwhm : float
        Floor of the FWHM spread, as a fraction of the night's median (5%: frame-to-frame
        seeing jitter on a steady night, and the ~1-3% noise of a median over tens of stars).
    floor_elongation : float
        Floor of the elongation spread (0.05: the frame-to-frame scatter of the median
        ``1 - b/a`` of round stars measured by :func:`star_shapes` on the sample nights is
        0.03-0.05, the most in short, faint exposures, where noise elongates the moments).
    floor_sky : float
        Floor of the sky-level spread, as a fraction of the night's median level, and never
        below the night's median sky noise (a frame whose sky was subtracted has a level near
        0). 0.2: at ``k = 5`` the sky must be at least twice the night's. Natural causes
        (airmass, moonrise, thin cloud lit by a town) brighten the sky that much; beyond it a
        frame is anomalous (twilight, a light in the dome). A bias pedestal in the level makes
        the rule more lenient, never stricter; what a bright sky costs is the sky noise's rule.
    floor_sky_noise : float
        Floor of the sky-noise spread, as a fraction of the night's median. 0.2: at ``k = 5``
        the noise must be at least twice the night's, when the frame carries a quarter of a
        typical frame's weight and lowers an unweighted stack's signal-to-noise ratio even at
        full transparency (a frame of signal ``t`` and noise ``s`` relative to the others
        improves an unweighted stack only when ``2 t > s**2``).
    floor_matched_fraction : float
        Floor of the matched-fraction spread (0.05: about the binomial scatter
        ``sqrt(f (1 - f) / N)`` of the fraction ``f`` ~ 0.9 of ``N`` = 40-100 reference stars
        found; at ``k = 5``, a quarter of the stars lost).
    floor_transparency : float
        Floor of the spread of ``ln transparency`` (0.05: extinction varies by a few percent on
        a photometric night; the clipped median of tens of stars is good to ~1%).
    floor_rotation : float
        Floor of the spread of ``|rotation|``, deg (0.01: at ``k = 5``, 0.05 deg moves the
        corners of a 1000-px frame by ~0.6 px; smaller rotations are the corner rule's).
    floor_scale : float
        Floor of the spread of ``|scale - 1|`` (1e-4: at ``k = 5``, 5e-4 moves the corners of a
        1000-px frame by ~0.35 px).
    """

    k: float = 5.0
    clip: float = 3.0
    min_frames: int = 5
    max_residual: float | None = 0.5
    max_sigma: float | None = 0.25
    max_corner: float | None = 0.5
    corner_fwhm_fraction: float | None = 0.4
    max_elongation: float | None = 0.5
    max_fwhm_ratio: float | None = 1.25
    min_transparency_fraction: float | None = 0.25
    floor_fwhm: float = 0.05
    floor_elongation: float = 0.05
    floor_sky: float = 0.2
    floor_sky_noise: float = 0.2
    floor_matched_fraction: float = 0.05
    floor_transparency: float = 0.05
    floor_rotation: float = 0.01
    floor_scale: float = 1e-4

    def __post_init__(self) -> None:
        if not (self.k > 0 and self.clip > 0):
            raise ValueError(f"k and clip must be positive, got k={self.k}, clip={self.clip}")
        if not self.min_frames >= 1:
            raise ValueError(f"min_frames must be at least 1, got {self.min_frames}")
        for name, value in vars(self).items():
            if name.startswith("floor_") and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            if (name.startswith(("max_", "min_t", "corner_")) and value is not None
                    and not value > 0):
                raise ValueError(f"{name} must be positive or None, got {value}")


@dataclass(frozen=True, eq=False)
class NightDecision:
    """What :func:`night_rules` decided.

    Attributes
    ----------
    status : pandas.Series or numpy.ndarray of str
        ``kept``, ``rejected`` or ``failed`` per frame: a Series on the index of the metrics
        when they are a DataFrame, an array when they are a :class:`starshift._table.Table`.
    reason : pandas.Series or numpy.ndarray of str
        Why (``''`` for a kept frame): every rule that fired, joined by ``"; "``.
    thresholds : pandas.DataFrame or starshift._table.Table
        The limits used (a DataFrame when the metrics are one), for a report or a quality
        plot: one row per metric and group of frames compared with each other. Columns
        ``metric`` (its name in the reasons), ``group`` (e.g. ``'filter V, exptime 30.0'``;
        ``''`` for the whole night), ``median`` (the group's, in the metric's units; NaN when
        it has too few frames), ``spread`` (the floored robust spread of the outlier rule; in
        ln units for the transparency), ``limit`` (the value beyond which a frame is
        rejected, all rules on the metric combined), ``side`` (``'high'`` or ``'low'``: the
        bad side) and ``n`` (the frames the
        statistics come from, after clipping).
    """

    status: Any
    reason: Any
    thresholds: Any


#: A rule's verdict: which frames it rejects, and the reason text of frame ``i``.
_Fired = tuple[np.ndarray, Callable[[int], str]]

#: Frames whose photometry is compared: same filter and exposure time (the sky and the star
#: fluxes, relative to the reference, scale with both).
_PHOTOMETRIC = (C.FILTER, C.EXPTIME)


@dataclass(frozen=True)
class _Outlier:
    """A night-relative outlier rule on one metric (see :class:`QualityLimits`)."""

    column: str
    label: str      # name in reasons and thresholds
    fmt: str        # number format in reasons
    unit: str       # appended to the frame's value in reasons
    high: bool      # True: high values are bad
    floor: str      # the QualityLimits attribute of the spread's floor
    relative: bool  # True: the floor is a fraction of the median
    by: tuple[str, ...] = ()  # frames are compared within groups of these columns

    def values(self, metrics: Table) -> np.ndarray:
        """What the rule compares: ``|rotation|``, ``|scale - 1|``, others as they are."""
        v = metrics.numeric(self.column)
        if self.column == C.ROTATION:
            return np.abs(v)
        if self.column == C.SCALE:
            return np.abs(v - 1.0)
        return v

    def text(self, value: float, med: float, spread: float, k: float) -> str:
        """Reason, e.g. ``fwhm 7.40 px > median 4.90 + 5 MAD (0.30)``."""
        sign, pm = (">", "+") if self.high else ("<", "-")
        return (f"{self.label} {value:{self.fmt}}{self.unit} {sign} median {med:{self.fmt}} "
                f"{pm} {k:g} MAD ({spread:{self.fmt}})")


_OUTLIERS = (
    _Outlier(C.FWHM, "fwhm", ".2f", " px", True, "floor_fwhm", True, (C.FILTER,)),
    _Outlier(C.ELONGATION, "elongation", ".2f", "", True, "floor_elongation", False),
    _Outlier(C.SKY, "sky", ".1f", "", True, "floor_sky", True, _PHOTOMETRIC),
    _Outlier(C.SKY_NOISE, "sky noise", ".2f", "", True, "floor_sky_noise", True, _PHOTOMETRIC),
    _Outlier(C.MATCHED_FRACTION, "matched fraction", ".2f", "", False,
             "floor_matched_fraction", False, _PHOTOMETRIC),
    _Outlier(C.ROTATION, "|rotation|", ".3f", " deg", True, "floor_rotation", False),
    _Outlier(C.SCALE, "|scale - 1|", ".5f", "", True, "floor_scale", False),
)


def _groups(metrics: Table, by: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """(label, boolean mask) of each group of frames with equal ``by`` columns (those present)."""
    cols = [c for c in by if c in metrics]
    if not cols:
        return [("", np.ones(len(metrics), dtype=bool))]
    out = []
    for key, pos in metrics.groups(cols):
        mask = np.zeros(len(metrics), dtype=bool)
        mask[pos] = True
        out.append((", ".join(f"{c} {k}" for c, k in zip(cols, key, strict=True)), mask))
    return out


def _fraction_of_median(fraction: float, at_least: float = 0.0) -> Callable[[float], float]:
    """A spread floor ``fraction x |median|``, and at least ``at_least``."""
    return lambda med: max(fraction * abs(med), at_least)


def _night_stats(v: np.ndarray, night: np.ndarray, limits: QualityLimits,
                 floor: float | Callable[[float], float]) -> tuple[float, float, int]:
    """The clipped median and floored spread of ``v`` over the ``night`` frames, and how many
    frames they come from; NaN statistics when fewer than ``min_frames`` are finite.
    """
    vals = v[night & np.isfinite(v)]
    if vals.size < limits.min_frames:
        return float("nan"), float("nan"), int(vals.size)
    med, spread, keep = clipped(vals, limits.clip, floor)
    return med, spread, int(keep.sum())


def _above(v: np.ndarray, limit: float | np.ndarray | None) -> np.ndarray:
    """``v > limit``, False for NaN values or limits and for no limit."""
    if limit is None:
        return np.zeros(v.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return v > limit


def _row(metric: str, group: str, med: float, spread: float, limit: float, high: bool,
         n: int) -> dict:
    return dict(metric=metric, group=group, median=med, spread=spread, limit=limit,
                side="high" if high else "low", n=n)


def _corner_limit(metrics: Table, night: np.ndarray, lim: QualityLimits
                  ) -> tuple[float | None, str]:
    """The corner rule's limit, px (None: no rule), and the reason's text of it.

    ``max(max_corner, corner_fwhm_fraction x FWHM)``, the FWHM the clipped median over all
    the ``night`` frames (every filter); ``max_corner`` alone when that is NaN.
    """
    if lim.max_corner is None:
        return None, ""
    frac = lim.corner_fwhm_fraction
    if frac is None:
        return lim.max_corner, f"{lim.max_corner:g} px"
    fwhm = _night_stats(metrics.numeric(C.FWHM), night, lim,
                        _fraction_of_median(lim.floor_fwhm))[0]
    if not np.isfinite(fwhm):
        return lim.max_corner, f"{lim.max_corner:g} px"
    relative = f"{frac:g} x night FWHM {fwhm:.2f} = {frac * fwhm:.2f} px"
    if frac * fwhm > lim.max_corner:
        return frac * fwhm, relative
    return lim.max_corner, f"{lim.max_corner:g} px (the least limit; {relative})"


def _shift_rules(metrics: Table, night: np.ndarray, lim: QualityLimits
                 ) -> tuple[list[_Fired], list[dict]]:
    """Absolute limits on what the shift leaves: residual, uncertainty, corners."""
    fired: list[_Fired] = []
    rows = []
    if C.REMEASURE in metrics:  # the new shift could not be measured
        why = metrics[C.REMEASURE].astype(object)
        fired.append((np.array([isinstance(w, str) and bool(w) for w in why], dtype=bool),
                      lambda i: str(why[i])))
    rdx, rdy = metrics.numeric(C.RESIDUAL_DX), metrics.numeric(C.RESIDUAL_DY)
    res = np.fmax(np.abs(rdx), np.abs(rdy))
    sig = np.fmax(metrics.numeric(C.SIGMA_DX), metrics.numeric(C.SIGMA_DY))
    corner = metrics.numeric(C.CORNER_SHIFT)
    corner_limit, corner_why = _corner_limit(metrics, night, lim)
    for label, v, limit, text in (
            ("residual", res, lim.max_residual,
             lambda i: (f"new shift ({rdx[i]:+.2f}, {rdy[i]:+.2f}) px beyond "
                        f"{lim.max_residual:g} px")),
            ("sigma", sig, lim.max_sigma,
             lambda i: f"shift sigma {sig[i]:.2f} px > {lim.max_sigma:g} px"),
            ("corner shift", corner, corner_limit,
             lambda i: f"corner misalignment {corner[i]:.2f} px > {corner_why}")):
        fired.append((_above(v, limit), text))
        ok = night & np.isfinite(v)
        rows.append(_row(label, "", median(v[ok]), np.nan,
                         np.nan if limit is None else limit, True, int(ok.sum())))
    return fired, rows


def _outlier_rules(metrics: Table, night: np.ndarray, lim: QualityLimits
                   ) -> tuple[list[_Fired], list[dict]]:
    """Outliers of the night, and the FWHM ratio and elongation limits."""
    fired: list[_Fired] = []
    rows = []
    sky_noise = metrics.numeric(C.SKY_NOISE)
    for r in _OUTLIERS:
        v = r.values(metrics)
        med, spread = np.full(len(v), np.nan), np.full(len(v), np.nan)
        factor = getattr(lim, r.floor)
        for group, g in _groups(metrics, r.by):
            floor = _fraction_of_median(factor) if r.relative else factor
            if r.column == C.SKY:  # never below the pixel noise (a sky-subtracted frame)
                floor = _fraction_of_median(factor, at_least=np.nan_to_num(
                    median(sky_noise[night & g])))
            m, s, n = _night_stats(v, night & g, lim, floor)
            med[g], spread[g] = m, s
            limit = m + lim.k * s if r.high else m - lim.k * s
            if r.column == C.FWHM and lim.max_fwhm_ratio is not None:
                limit = min(limit, lim.max_fwhm_ratio * m)
            if r.column == C.ELONGATION and lim.max_elongation is not None:
                limit = float(np.fmin(limit, lim.max_elongation))
            rows.append(_row(r.label, group, m, s, limit, r.high, n))
        limit = med + lim.k * spread if r.high else med - lim.k * spread
        fired.append((_above(v, limit) if r.high else _above(-v, -limit),
                      lambda i, r=r, v=v, med=med, spread=spread:
                      r.text(v[i], med[i], spread[i], lim.k)))
        if r.column == C.FWHM and lim.max_fwhm_ratio is not None:
            fired.append((_above(v, lim.max_fwhm_ratio * med), lambda i, v=v, med=med: (
                f"fwhm {v[i]:.2f} px > {lim.max_fwhm_ratio:g} x night median {med[i]:.2f} px")))
        if r.column == C.ELONGATION and lim.max_elongation is not None:
            fired.append((_above(v, lim.max_elongation), lambda i, v=v: (
                f"elongation {v[i]:.2f} > {lim.max_elongation:g} (trailed or doubled)")))
    return fired, rows


def _cloud_rule(metrics: Table, night: np.ndarray, lim: QualityLimits
                ) -> tuple[list[_Fired], list[dict]]:
    """Clouds: transparency below a fraction of the night's median and a low outlier in ln."""
    t = metrics.numeric(C.TRANSPARENCY)
    with np.errstate(invalid="ignore", divide="ignore"):
        lt = np.log(np.where(t > 0, t, np.nan))
    frac = lim.min_transparency_fraction
    t_med, lspread = np.full(len(t), np.nan), np.full(len(t), np.nan)
    rows = []
    for group, g in _groups(metrics, _PHOTOMETRIC):
        m, s, n = _night_stats(lt, night & g, lim, lim.floor_transparency)
        t_med[g], lspread[g] = np.exp(m), s
        limit = float(np.fmin(np.nan if frac is None else frac * np.exp(m), np.exp(m - lim.k * s)))
        rows.append(_row("transparency", group, np.exp(m), s, limit, False, n))
    t_out = t_med * np.exp(-lim.k * lspread)  # NaN: too few frames
    clouded = _above(t_out, t)
    if frac is not None:
        clouded &= _above(frac * t_med, t)
    head = "" if frac is None else " < {frac:g} x night median {med:.2f} and"
    fired = [(clouded, lambda i: (
        f"transparency {t[i]:.2f}{head.format(frac=frac, med=t_med[i])} < median / "
        f"exp({lim.k:g} MAD ({lspread[i]:.2f})) = {t_out[i]:.2f}"))]
    return fired, rows


def night_rules(metrics, limits: QualityLimits | None = None,
                forced_bad: Iterable[str] = (), forced_keep: Iterable[str] = ()
                ) -> NightDecision:
    """Status and reason of every frame of a night, from its metrics and the night's own.

    Parameters
    ----------
    metrics : pandas.DataFrame or starshift._table.Table
        One row per frame (the align path passes a Table, so that it never imports pandas).
        Columns used, each optional (a missing column or a NaN value, i.e. not measurable,
        fires no rule; the night's statistics ignore NaNs), names from
        :mod:`starshift.columns`: ``FILE`` (needed for the forced lists), ``STATUS`` and
        ``REASON`` (a ``failed`` frame stays failed with its reason), ``FILTER`` and ``EXPTIME``
        (which frames are compared, see Notes), ``REMEASURE`` (a non-empty text rejects: the
        new shift could not be measured), ``RESIDUAL_DX/DY``,
        ``SIGMA_DX/DY``, ``CORNER_SHIFT``, ``FWHM``, ``ELONGATION``, ``TRANSPARENCY``, ``SKY``,
        ``SKY_NOISE``, ``MATCHED_FRACTION``, ``ROTATION`` (deg), ``SCALE``.
    limits : QualityLimits, optional
        The limits (default ``QualityLimits()``).
    forced_bad : iterable of str
        File names rejected whatever their metrics ("listed in bad_frames"); they are left out
        of the night's statistics.
    forced_keep : iterable of str
        File names kept whatever their metrics; the reason says what they would have been
        rejected for ("kept by keep_frames (would be rejected: ...)"). A file in both lists is
        rejected; a failed frame stays failed unless it is in ``forced_bad`` (then rejected,
        the reason saying both).

    Returns
    -------
    NightDecision
        ``status`` and ``reason`` (Series on ``metrics.index`` for a DataFrame, arrays for a
        Table), and the ``thresholds`` used (a DataFrame or a Table, likewise).

    Notes
    -----
    The rules, each firing on its own (the reason lists all that fire, joined by ``"; "``):

    * absolute: ``|residual_dx|`` or ``|residual_dy|`` > ``max_residual``; ``sigma_dx`` or
      ``sigma_dy`` > ``max_sigma``; corner misalignment > the larger of ``max_corner`` and
      ``corner_fwhm_fraction`` x the night's median FWHM (all filters); elongation >
      ``max_elongation``; a remeasure failure;
    * FWHM > ``max_fwhm_ratio`` x the night's median;
    * outliers of the night (beyond the night's median by ``k`` floored spreads, bad side
      only): FWHM high, elongation high, sky high, sky noise high, matched fraction low,
      ``|rotation|`` high, ``|scale - 1|`` high;
    * clouds: transparency below ``min_transparency_fraction`` x the night's median *and* a
      low outlier of ``ln transparency`` (one rule: both must hold).

    "The night" is the group of frames a frame is compared with: for the photometric metrics
    (transparency, sky, sky noise, matched fraction) the frames of the same ``FILTER`` and
    ``EXPTIME`` (when those columns are present), for the FWHM those of the same filter (seeing
    and focus depend on the wavelength), for the star shapes and geometry the whole night. The
    night-relative rules of a metric (the last three items) need at least ``min_frames`` frames
    of the group with a finite value of it, failed and forced-bad frames not counted; with
    fewer, only the absolute limits apply to that metric in that group.
    """
    frame = None if isinstance(metrics, Table) else metrics  # a pandas DataFrame
    if frame is not None:
        metrics = Table.from_frame(frame)
    lim = QualityLimits() if limits is None else limits
    n = len(metrics)
    bad_set, keep_set = set(forced_bad), set(forced_keep)
    if C.FILE in metrics:
        files = metrics.strings(C.FILE, missing="nan")
    elif bad_set or keep_set:
        raise ValueError(f"forced_bad/forced_keep need a {C.FILE!r} column in the metrics")
    else:
        files = np.full(n, "", dtype=object)
    failed = (metrics.strings(C.STATUS, missing="nan") == C.FAILED if C.STATUS in metrics
              else np.zeros(n, dtype=bool))
    reason_in = (metrics.strings(C.REASON) if C.REASON in metrics
                 else np.full(n, "", dtype=object))
    is_bad = np.array([f in bad_set for f in files], dtype=bool)
    night = ~failed & ~is_bad

    reasons: list[list[str]] = [[] for _ in range(n)]
    rows: list[dict] = []
    for rule in (_shift_rules, _outlier_rules, _cloud_rule):
        fired, more = rule(metrics, night, lim)
        rows += more
        for mask, text in fired:
            for i in np.nonzero(mask)[0]:
                reasons[i].append(text(i))

    status = np.full(n, C.KEPT, dtype=object)
    reason = np.full(n, "", dtype=object)
    for i, why in enumerate("; ".join(r) for r in reasons):
        if is_bad[i]:  # the observer's word wins; what the measurement says is kept with it
            status[i] = C.REJECTED
            reason[i] = ("listed in bad_frames"
                         + (f"; its shift could not be measured: {reason_in[i]}" if failed[i]
                            else f" (the rules agree: {why})" if why else ""))
        elif failed[i]:
            status[i], reason[i] = C.FAILED, reason_in[i]
        elif files[i] in keep_set:
            reason[i] = f"kept by keep_frames (would be rejected: {why})" if why else ""
        elif why:
            status[i], reason[i] = C.REJECTED, why
    thresholds = Table.from_rows(rows, ["metric", "group", "median", "spread", "limit", "side",
                                        "n"])
    if frame is None:
        return NightDecision(status, reason, thresholds)
    import pandas as pd  # the caller's metrics are a DataFrame: pandas is imported already

    return NightDecision(pd.Series(status, index=frame.index, name=C.STATUS),
                         pd.Series(reason, index=frame.index, name=C.REASON),
                         pd.DataFrame(rows, columns=thresholds.columns))


def shape_rejection(fwhm: float, elongation: float, night_fwhm: float | None,
                    max_elongation: float | None, max_fwhm_ratio: float | None) -> str:
    """Why a frame's star shapes disqualify it ('' when they do not).

    The single-frame rule that :func:`night_rules` replaces; kept until its callers move.
    """
    if max_elongation is not None and np.isfinite(elongation) and elongation > max_elongation:
        return (f"stars elongated ({elongation:.2f} > {max_elongation:g}): trailed or doubled, "
                "e.g. a tracking jump")
    if (max_fwhm_ratio is not None and night_fwhm and np.isfinite(fwhm)
            and np.isfinite(night_fwhm) and fwhm > max_fwhm_ratio * night_fwhm):
        return (f"stars broad (FWHM {fwhm:.1f} px > {max_fwhm_ratio:g} x night median "
                f"{night_fwhm:.1f} px)")
    return ""
