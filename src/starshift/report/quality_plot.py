"""The quality plot: every per-frame quality metric of a night against frame index, with the
limits the night's rules used. Pure functions: tables in, a Figure or PNG bytes out.

One small panel per metric present (and finite for some frame) in the diagnostics table. Kept
frames are dots, rejected frames red crosses, failed frames gaps (their values are NaN, never
drawn at 0; a faint band marks them); a thin line joins consecutive values. The limits of
:func:`starshift.quality.night_rules` (its ``thresholds`` table) are dashed lines: a limit of the
whole night across the panel, a limit of a group of frames (a filter, a filter and exposure
time) over that group's frames only. A limit far outside the data is written, not drawn, so the
data stay readable. Frames of one filter share a shade, and the filters are named on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import columns as C
from .plots import STATUS_COLORS, _figure, _png, _rc


@dataclass(frozen=True)
class Metric:
    """A panel: a diagnostics column, its axis label (with units), the ``metric`` name of its
    rows in the thresholds table, and how values and limits are shown."""

    column: str
    label: str
    threshold: str | None = None
    symmetric: bool = False  # the limit is on |value| (or |value - 1|): drawn at +- limit
    factor: float = 1.0      # shown value = (value - offset) * factor
    offset: float = 0.0


#: The panels, in order. The threshold names are those of :func:`starshift.quality.night_rules`.
METRICS = (
    Metric(C.FWHM, "FWHM (px)", "fwhm"),
    Metric(C.ELONGATION, "elongation 1 - b/a", "elongation"),
    Metric(C.TRANSPARENCY, "transparency\n(flux / reference flux)", "transparency"),
    Metric(C.MATCHED_FRACTION, "matched fraction\n(of reference stars)", "matched fraction"),
    Metric(C.SKY, "sky (data units)", "sky"),
    Metric(C.SKY_NOISE, "sky noise (data units)", "sky noise"),
    Metric(C.ROTATION, "rotation (deg)", "|rotation|", symmetric=True),
    Metric(C.SCALE, "scale - 1 (ppm)", "|scale - 1|", symmetric=True, factor=1e6, offset=1.0),
    Metric(C.FIT_RMS, "fit rms (px)"),
    Metric(C.CORNER_SHIFT, "corner misalignment (px)", "corner shift"),
    Metric(C.RESIDUAL_DX, "residual dx (px)", "residual", symmetric=True),
    Metric(C.RESIDUAL_DY, "residual dy (px)", "residual", symmetric=True),
    Metric(C.SIGMA_DX, "shift sigma dx (px)", "sigma"),
    Metric(C.SIGMA_DY, "shift sigma dy (px)", "sigma"),
)
REJECTED_COLOR = "#d62728"
KEPT_COLOR = STATUS_COLORS[C.KEPT]
NCOLS = 3


def _values(diag: pd.DataFrame, m: Metric, failed: np.ndarray) -> np.ndarray:
    v = pd.to_numeric(diag[m.column], errors="coerce").to_numpy(dtype=float)
    v = (v - m.offset) * m.factor
    v[failed] = np.nan  # a failed frame has no value: a gap, never 0
    return v


def _group_mask(diag: pd.DataFrame, group) -> np.ndarray | None:
    """Frames of a thresholds ``group`` (e.g. ``'filter V, exptime 30.0'``; all for ''),
    or None when the table cannot tell."""
    n = len(diag)
    if not isinstance(group, str) or not group.strip():
        return np.ones(n, dtype=bool)
    mask = np.ones(n, dtype=bool)
    for part in group.split(", "):
        col, _, value = part.partition(" ")
        if col not in diag.columns:
            return None
        have = diag[col]
        try:
            mask &= np.isclose(pd.to_numeric(have, errors="raise").to_numpy(float),
                               float(value))
        except (TypeError, ValueError):
            mask &= have.astype(str).to_numpy() == value
    return mask


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in ``mask``."""
    idx = np.flatnonzero(mask)
    if not idx.size:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _limits(thresholds: pd.DataFrame | None, diag: pd.DataFrame, m: Metric
            ) -> list[tuple[float, np.ndarray | None]]:
    """(shown limit value, frames it applies to or None for all) of a metric's finite limits;
    symmetric metrics give the limit and its negative."""
    if thresholds is None or m.threshold is None or not len(thresholds):
        return []
    rows = thresholds[thresholds["metric"].astype(str) == m.threshold]
    out = []
    for _, r in rows.iterrows():
        limit = float(pd.to_numeric(r["limit"], errors="coerce"))
        if not math.isfinite(limit):
            continue
        mask = _group_mask(diag, r.get("group"))
        if mask is None or not mask.any():
            continue
        mask = None if mask.all() else mask
        values = (limit * m.factor, -limit * m.factor) if m.symmetric else (
            (limit - m.offset) * m.factor,)
        out += [(v, mask) for v in values]
    return out


def _shade_filters(ax, diag: pd.DataFrame, label: bool) -> None:
    """Alternate faint shading per run of one filter; filter names above the top panels."""
    if C.FILTER not in diag.columns:
        return
    filt = diag[C.FILTER].astype(str).to_numpy()
    if len(set(filt)) < 2:
        return
    starts = [0] + [i for i in range(1, len(filt)) if filt[i] != filt[i - 1]] + [len(filt)]
    for k, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        if k % 2:
            ax.axvspan(a - 0.5, b - 0.5, color="0.94", lw=0, zorder=0)
        if label:
            ax.text((a + b - 1) / 2, 1.02, filt[a], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=6.5, color="0.35")


def _panel(ax, x, v, status, limits, m: Metric) -> None:
    ok = np.isfinite(v)
    kept = (status == C.KEPT) & ok
    rej = (status == C.REJECTED) & ok
    ax.plot(x, v, color="0.7", lw=0.6, zorder=2)  # NaN (failed, not measured) breaks it
    ax.scatter(x[kept], v[kept], s=7, color=KEPT_COLOR, linewidths=0, zorder=3)
    other = ok & ~kept & ~rej
    ax.scatter(x[other], v[other], s=7, color="0.45", linewidths=0, zorder=3)
    ax.scatter(x[rej], v[rej], s=20, color=REJECTED_COLOR, marker="x", linewidths=1.0,
               zorder=4)
    finite = v[np.isfinite(v)]
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else max(abs(hi), 1e-12)
    view_lo, view_hi = lo - 2.0 * span, hi + 2.0 * span
    off = []
    for value, mask in limits:
        if view_lo <= value <= view_hi:
            if mask is None:
                ax.axhline(value, color="0.25", ls="--", lw=0.8, zorder=1)
            else:
                for a, b in _runs(mask):
                    ax.hlines(value, a - 0.45, b + 0.45, color="0.25", ls="--", lw=0.8,
                              zorder=1)
        elif value not in off:
            off.append(value)
    if off:
        pos = sorted({abs(v) for v in off}) if m.symmetric else sorted(off)
        shown = ", ".join(("+-" if m.symmetric else "") + f"{v:.3g}" for v in pos[:3]) + (
            " ..." if len(pos) > 3 else "")
        ax.text(0.99, 0.97, f"limit {shown} off scale", transform=ax.transAxes, ha="right",
                va="top", fontsize=6, color="0.35")
    ax.set_ylabel(m.label, fontsize=7)
    ax.grid(axis="y", color="0.92", lw=0.5)
    ax.margins(y=0.12)


def quality_figure(diag: pd.DataFrame, thresholds: pd.DataFrame | None = None,
                   title: str = ""):
    """The matplotlib Figure of :func:`quality_plot` (before rendering), for tests and
    notebooks. Its axes hold the drawn data: failed frames are NaN in every line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(diag)
    status = (diag[C.STATUS].astype(str).to_numpy() if C.STATUS in diag
              else np.full(n, C.KEPT, dtype=object))
    failed = status == C.FAILED
    panels = []
    for m in METRICS:
        if m.column in diag.columns:
            v = _values(diag, m, failed)
            if np.isfinite(v).any():
                panels.append((m, v))
    ncols = min(NCOLS, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    x = np.arange(n, dtype=float)
    fig, axes = _grid(nrows, ncols)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        m, v = panels[k]
        _shade_filters(ax, diag, label=k < ncols)
        for i in np.flatnonzero(failed):
            ax.axvspan(i - 0.5, i + 0.5, color="#f4c7c7", lw=0, zorder=0)
        _panel(ax, x, v, status, _limits(thresholds, diag, m), m)
        ax.set_xlim(-0.75, n - 0.25)
        if k >= len(panels) - ncols:
            ax.set_xlabel("frame index (night order)", fontsize=7)
            ax.tick_params(labelbottom=True)
    if not panels:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no quality metric in the table", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    counts = ", ".join(f"{int((status == s).sum())} {s}" for s in C.STATUSES)
    fig.suptitle(f"{title + ': ' if title else ''}per-frame quality ({n} frames: {counts})",
                 fontsize=9)
    handles = [Line2D([], [], ls="", marker="o", ms=3.5, color=KEPT_COLOR, label="kept"),
               Line2D([], [], ls="", marker="x", ms=5, color=REJECTED_COLOR, label="rejected"),
               Patch(color="#f4c7c7", label="failed (no value)"),
               Line2D([], [], ls="--", lw=0.8, color="0.25", label="limit (night or group)")]
    fig.legend(handles=handles, loc="lower center", ncols=4, frameon=False, fontsize=7,
               bbox_to_anchor=(0.5, 0.0))
    return fig


#: The quality figure's fixed layout, inches: a panel's size, the room left of each panel (its
#: tick labels and a two-line axis label), between rows (the x tick labels and axis label of a
#: panel above an empty cell), above (title, filter names) and below (x labels, legend).
_PANEL = (2.75, 1.2)
_LEFT, _RIGHT, _GAP_Y, _TOP, _BOTTOM = 0.85, 0.12, 0.42, 0.5, 0.72


def _grid(nrows: int, ncols: int):
    """The figure and its ``nrows x ncols`` axes (shared x), placed at fixed positions.

    Matplotlib's constrained layout would measure every tick label to place the panels: on
    14 panels that doubled the drawing time (1.0 s of a 2.3 s plot, in each night's report).
    The labels here have bounded sizes (short numbers, labels of at most two lines), so fixed
    margins hold them.
    """
    width = ncols * (_LEFT + _PANEL[0]) + _RIGHT
    height = _TOP + nrows * _PANEL[1] + (nrows - 1) * _GAP_Y + _BOTTOM
    fig = _figure(width, height, layout=None)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, gridspec_kw={
        "left": _LEFT / width, "right": 1 - _RIGHT / width, "top": 1 - _TOP / height,
        "bottom": _BOTTOM / height, "wspace": _LEFT / _PANEL[0], "hspace": _GAP_Y / _PANEL[1]})
    return fig, axes


def quality_plot(diag: pd.DataFrame, thresholds: pd.DataFrame | None = None,
                 title: str = "") -> bytes:
    """PNG of every per-frame quality metric against frame index, with the night's limits.

    Parameters
    ----------
    diag : DataFrame
        The diagnostics table, one row per frame in night order: ``status`` and any of the
        metric columns of :data:`METRICS` (FWHM, elongation, transparency, matched fraction,
        sky, sky noise, rotation, scale, fit rms, corner shift, residual and shift sigma in x
        and y); ``filter`` (and ``exptime``) to place group limits and shade the filters.
    thresholds : DataFrame, optional
        :func:`starshift.quality.night_rules`' thresholds (columns ``metric``, ``group``,
        ``median``, ``spread``, ``limit``, ``side``, ``n``), e.g. ``thresholds.csv``.
    title : str
        The night, written in the title.

    Returns
    -------
    bytes
        PNG; deterministic bytes.
    """
    with _rc():
        return _png(quality_figure(diag, thresholds, title), colors=64)
