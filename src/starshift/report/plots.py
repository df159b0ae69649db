"""Report figures as PNG bytes: residual ("new shift") per frame, flux change per order, sweeps.

Pure functions: DataFrames in, PNG bytes out. Figures are built on ``matplotlib.figure.Figure``
with the Agg canvas (no pyplot global state, safe in threads and headless runs). The rendered
pixels are stored as a 256-colour PNG by Pillow (maximum-coverage palette, no dithering: colour
errors of a few levels, a third of the bytes of matplotlib's RGBA PNG) with no metadata at all,
so the same input gives the same bytes.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pandas as pd

from .. import columns as C

STATUS_COLORS = {C.KEPT: "#1f77b4", C.REJECTED: "#ff7f0e", C.FAILED: "#d62728"}
OTHER_COLOR = "#7f7f7f"
ORDER_COLORS = {0: "#2ca02c", 1: "#1f77b4", 3: "#9467bd"}
DPI = 100
_RC = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
       "xtick.labelsize": 7, "ytick.labelsize": 7}


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, colors: int = 256) -> bytes:
    """The figure as a palette PNG of at most ``colors`` colours: no metadata (no
    Software/version, no time), deterministic."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    image = image.quantize(colors=colors, method=Image.Quantize.MAXCOVERAGE,
                           dither=Image.Dither.NONE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _rc():
    import matplotlib

    return matplotlib.rc_context(_RC)


def short_labels(names: list[str]) -> tuple[list[str], str]:
    """File names without the prefix and suffix they all share (cut at a ``_``, ``-`` or ``.``
    boundary), and a pattern naming what was cut, e.g. ``NGC_3201_B_*.fit``."""
    names = [str(n) for n in names]
    if len(set(names)) < 2:
        return names, ""
    seps = "_-."
    prefix = os.path.commonprefix(names)
    cut = max((prefix.rfind(c) for c in seps), default=-1) + 1
    prefix = prefix[:cut]
    rev = os.path.commonprefix([n[::-1] for n in names])[::-1]
    cut = min((i for i, c in enumerate(rev) if c in seps), default=len(rev))
    suffix = rev[cut:]
    if any(len(prefix) + len(suffix) >= len(n) for n in names):
        suffix = ""
    out = [n[len(prefix): len(n) - len(suffix)] or n for n in names]
    return out, (f"{prefix}*{suffix}" if prefix or suffix else "")


def _frame_axis(ax, names: list[str]) -> None:
    """Frame index on x; file names (shortened) as small rotated tick labels."""
    n = len(names)
    ax.set_xlim(-0.75, n - 0.25)
    labels, pattern = short_labels(names)
    if n <= 120:
        ax.set_xticks(range(n))
        ax.set_xticklabels(labels, rotation=90, fontsize=5.5 if n > 40 else 6.5)
    ax.set_xlabel("frame" + (f" (file {pattern})" if pattern else ""))


def _status_color(status) -> str:
    return STATUS_COLORS.get(str(status), OTHER_COLOR)


def _plot_pairs(ax, x, vx, vy, colors, lim: float) -> list[int]:
    """dx (circles) and dy (triangles) per frame in their status colours, on [-lim, lim].

    Values beyond the axis are drawn at its edge with their value written beside them. A frame
    without a value (failed, or not measured: NaN) is a gap, marked by a faint band of its
    status colour across the axes, never a point at 0. Returns the indices of those frames.
    """
    vx, vy = np.asarray(vx, float), np.asarray(vy, float)
    edge = 0.96 * lim
    for v, off, style in ((vx, -0.12, {"marker": "o", "linewidths": 0}),
                          (vy, 0.12, {"marker": "^", "linewidths": 0.9})):
        ok = np.isfinite(v)
        shown = np.clip(v, -edge, edge)
        kw = ({"c": colors[ok]} if style["marker"] == "o"
              else {"facecolors": "none", "edgecolors": colors[ok]})
        ax.scatter(x[ok] + off, shown[ok], s=16, zorder=3, **kw, **style)
        for i in np.flatnonzero(ok & (np.abs(v) > edge)):
            ax.annotate(f"{v[i]:+.1f}", (x[i] + off, shown[i]), xytext=(3, 0),
                        textcoords="offset points", fontsize=6, va="center",
                        color=colors[i])
    missing = np.flatnonzero(~(np.isfinite(vx) & np.isfinite(vy)))
    for i in missing:
        ax.axvspan(x[i] - 0.4, x[i] + 0.4, color=colors[i], alpha=0.18, lw=0, zorder=0)
    return missing.tolist()


def _legend(ax, statuses, with_missing: bool, missing_label: str) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], ls="", marker="o", color="0.3", label="dx"),
               Line2D([], [], ls="", marker="^", mfc="none", color="0.3", label="dy")]
    for s in statuses:
        handles.append(Line2D([], [], ls="", marker="s", color=_status_color(s), label=s))
    if with_missing:
        handles.append(Patch(color="0.3", alpha=0.18, label=missing_label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _sym_limit(values, floor: float, cap: float = math.inf) -> float:
    """Half-range of a symmetric axis: the largest |value| plus 10 %, within [floor, cap]."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v)]
    return min(cap, max(floor, 1.1 * float(v.max()))) if v.size else floor


def _limit_band(ax, ylim: float, max_residual: float) -> None:
    """Symmetric y range, dashed lines at +-max_residual and a faint zero line."""
    ax.set_ylim(-ylim, ylim)
    for v in (-max_residual, max_residual):
        ax.axhline(v, color="0.35", ls="--", lw=0.8, zorder=1)
    ax.axhline(0.0, color="0.75", lw=0.6, zorder=1)


def residual_plot(diag: pd.DataFrame, max_residual: float = 0.5, title: str = "") -> bytes:
    """PNG of the residual ("new shift") per frame, coloured by status
    (:func:`residual_figure`, rendered).

    Parameters and figure: those of :func:`residual_figure`.
    """
    with _rc():
        return _png(residual_figure(diag, max_residual, title))


def residual_figure(diag: pd.DataFrame, max_residual: float = 0.5, title: str = ""):
    """The residual ("new shift") per frame, coloured by status: a matplotlib Figure.

    Parameters
    ----------
    diag : DataFrame
        The diagnostics table (:data:`starshift.columns.DIAGNOSTICS`): ``file``,
        ``residual_dx``, ``residual_dy``, ``status`` are used; with ``true_dx``/``true_dy``
        (sample nights) a second panel shows the estimated shift minus the truth.
    max_residual : float
        The rejection limit, drawn as dashed lines at +-max_residual. The axes span at most
        +-6 max_residual; values beyond are drawn at the edge, labelled with their value.
    title : str
        Figure title (e.g. the night).

    Returns
    -------
    matplotlib.figure.Figure
        Circles are dx, open triangles dy, colours the status (kept / rejected / failed);
        frames without a residual (failed, or not re-measured) are gaps, marked by a faint band
        of their status colour.
    """
    n = len(diag)
    labels = [str(f) for f in diag[C.FILE]] if C.FILE in diag else [str(i) for i in range(n)]
    status = diag[C.STATUS].astype(str).to_numpy() if C.STATUS in diag else np.full(n, "")
    colors = np.array([_status_color(s) for s in status], dtype=object)
    x = np.arange(n, dtype=float)
    truth = {C.TRUE_DX, C.TRUE_DY} <= set(diag.columns) and {C.DX, C.DY} <= set(diag.columns)
    present = [s for s in (*C.STATUSES, *sorted(set(status) - set(C.STATUSES))) if s in status]
    width = min(max(6.5, 2.5 + 0.09 * n), 16.0)
    longest = max((len(s) for s in short_labels(labels)[0]), default=1)
    label_h = 0.0 if n > 120 else min(2.2, 0.2 + 0.05 * longest)
    with _rc():
        fig = _figure(width, (4.6 if truth else 2.8) + label_h)
        axes = fig.subplots(2 if truth else 1, 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        rdx, rdy = diag[C.RESIDUAL_DX].to_numpy(float), diag[C.RESIDUAL_DY].to_numpy(float)
        # the limit band stays readable: outliers are drawn at the edge with their value
        lim = _sym_limit(np.concatenate([rdx, rdy]), 2.0 * max_residual, 6.0 * max_residual)
        _limit_band(ax, lim, max_residual)
        missing = _plot_pairs(ax, x, rdx, rdy, colors, lim)
        ax.set_ylabel("new shift (px)")
        ax.grid(axis="y", color="0.92", lw=0.5)
        counts = ", ".join(f"{(status == s).sum()} {s}" for s in present)
        ax.set_title(f"{title + ': ' if title else ''}residual after shifting\n"
                     f"(limit +-{max_residual:g} px; {counts})")
        _legend(ax, present, bool(missing), "no value (gap)")
        if truth:
            ax2 = axes[1]
            ex = diag[C.DX].to_numpy(float) - diag[C.TRUE_DX].to_numpy(float)
            ey = diag[C.DY].to_numpy(float) - diag[C.TRUE_DY].to_numpy(float)
            # errors are usually far below the limit: zoom on the bulk (95 % of values)
            err = np.abs(np.concatenate([ex, ey]))
            err = err[np.isfinite(err)]
            bulk = float(np.percentile(err, 95)) if err.size else 0.0
            lim2 = min(max(0.1, 1.3 * bulk), 6.0 * max_residual)
            _limit_band(ax2, lim2, max_residual)
            miss2 = _plot_pairs(ax2, x, ex, ey, colors, lim2)
            ax2.set_ylabel("estimate - truth (px)")
            ax2.grid(axis="y", color="0.92", lw=0.5)
            ax2.set_title("estimated shift minus true shift")
            _legend(ax2, present, bool(miss2), "no estimate (gap)")
        _frame_axis(axes[-1], labels)
        return fig


def _order_columns(phot: pd.DataFrame) -> list[int]:
    return sorted(int(c.removeprefix("rel_change_order")) for c in phot.columns
                  if c.startswith("rel_change_order"))


def flux_change_plot(phot: pd.DataFrame, title: str = "") -> bytes:
    """PNG of the relative flux change (percent) caused by shifting, per interpolation order.

    One column of points per order (every star in every frame; deterministic horizontal
    jitter) over a box plot, with the median, RMS and largest |change| and the counts (NaN
    changes, e.g. low S/N, are counted as not measured) written above. Order 0 moves whole
    pixels and is exactly 0 (it is said so when every value is exactly 0.0).

    Parameters
    ----------
    phot : DataFrame
        :func:`starshift.report.photometry.shift_photometry` tables, concatenated (columns
        ``rel_change_order<o>``; ``star`` and ``file`` are optional).
    title : str
        Figure title (e.g. the night).
    """
    orders = _order_columns(phot)
    with _rc():
        fig = _figure(max(4.0, 1.6 + 1.7 * len(orders)), 3.6)
        ax = fig.subplots()
        rng = np.random.default_rng(0)  # fixed jitter: deterministic bytes
        data, notes = [], []
        for k, o in enumerate(orders):
            v = 100.0 * phot[f"rel_change_order{o}"].to_numpy(float)
            n_nan = int(np.count_nonzero(~np.isfinite(v)))
            v = v[np.isfinite(v)]
            data.append(v)
            jitter = rng.uniform(-0.18, 0.18, v.size)
            ax.scatter(k + jitter, v, s=7, alpha=0.55, linewidths=0,
                       color=ORDER_COLORS.get(o, OTHER_COLOR), zorder=3)
            count = f"n={v.size}" + (f", {n_nan} not measured" if n_nan else "")
            if v.size == 0:
                notes.append(f"no data\n{count}")
            elif np.all(v == 0.0):
                notes.append(f"exactly 0\n{count}")
            else:
                rms = math.sqrt(float(np.mean(v ** 2)))
                notes.append(f"median {np.median(v):+.3f}%  RMS {rms:.3f}%\n"
                             f"max|.| {np.max(np.abs(v)):.3f}%\n{count}")
        nonempty = [i for i, v in enumerate(data) if v.size]
        if nonempty:
            ax.boxplot([data[i] for i in nonempty], positions=nonempty, widths=0.5,
                       showfliers=False, medianprops={"color": "k"}, zorder=2)
        ax.axhline(0.0, color="0.6", lw=0.7, zorder=1)
        allv = np.concatenate(data) if data else np.array([])
        lim = _sym_limit(allv, 0.05)
        ax.set_ylim(-lim * 1.05, lim * 1.45)  # room for the notes above
        for k, note in enumerate(notes):
            ax.text(k, lim * 1.42, note, ha="center", va="top", fontsize=7)
        ax.set_xticks(range(len(orders)))
        ax.set_xticklabels([f"order={o}" for o in orders])
        ax.set_xlim(-0.6, len(orders) - 0.4)
        ax.set_xlabel("interpolation order of the shift")
        ax.set_ylabel("flux after / before - 1 (%)")
        ax.grid(axis="y", color="0.92", lw=0.5)
        n_frames = phot["file"].nunique() if "file" in phot else 1
        n_stars = phot["star"].nunique() if "star" in phot else len(phot)
        ax.set_title(f"{title + ': ' if title else ''}aperture flux change by shifting "
                     f"({n_stars} stars x {n_frames} frames)")
        return _png(fig)


def sweep_plot(summary: pd.DataFrame, title: str = "") -> bytes:
    """PNG of a sweep: frames kept / rejected / failed per job, and residual RMS / max per job
    (plus RMS error against truth when known). ``summary`` is ``sweep_summary.csv``'s table
    (columns ``overrides`` or ``job``, ``kept``, ``rejected``, ``failed``, ``rms_residual``,
    ``max_residual``, optionally ``rms_error`` and ``error``); ``title`` names the night (or
    sweep). A job that failed (an ``error``, no values) is a gap with a faint red band, not a
    point at 0."""
    df = summary.reset_index(drop=True)
    n = len(df)
    if "overrides" in df:
        labels = [str(v) for v in df["overrides"]]
    elif "job" in df:
        labels = [str(v) for v in df["job"]]
    else:
        labels = [str(i) for i in range(n)]
    x = np.arange(n, dtype=float)

    def col(name):
        return (pd.to_numeric(df[name], errors="coerce").to_numpy(float) if name in df
                else np.full(n, np.nan))

    label_h = min(2.5, 0.2 + 0.05 * max((len(s) for s in labels), default=1))
    with _rc():
        fig = _figure(min(max(6.0, 2.5 + 0.35 * n), 16.0), 4.6 + label_h)
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        bottom = np.zeros(n)
        for name in (C.KEPT, C.REJECTED, C.FAILED):
            v = np.nan_to_num(col(name))
            ax1.bar(x, v, bottom=bottom, color=STATUS_COLORS[name], label=name, width=0.7)
            bottom += v
        ax1.set_ylabel("frames")
        ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax1.set_title(f"{title + ': ' if title else ''}frames per job")
        for name, marker, color in (("rms_residual", "o", "#1f77b4"),
                                    ("max_residual", "^", "#ff7f0e"),
                                    ("rms_error", "s", "#2ca02c")):
            v = col(name)
            if np.isfinite(v).any():
                ax2.scatter(x, v, marker=marker, color=color, label=name, s=20, zorder=3)
        if "error" in df:
            bad = np.flatnonzero(df["error"].notna().to_numpy() & (df["error"] != ""))
            for k, i in enumerate(bad):
                for ax in (ax1, ax2):
                    ax.axvspan(x[i] - 0.4, x[i] + 0.4, color=STATUS_COLORS[C.FAILED],
                               alpha=0.15, lw=0, zorder=0,
                               label="job error (no values)" if k == 0 and ax is ax2 else None)
        ax2.set_ylabel("new shift / error (px)")
        ax2.set_ylim(bottom=0)
        ax2.grid(axis="y", color="0.92", lw=0.5)
        ax2.set_title("new shift (kept frames) and error against truth")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax2.set_xticks(x)
        ax2.set_xticklabels(labels, rotation=90, fontsize=6)
        ax2.set_xlim(-0.6, n - 0.4)
        ax2.set_xlabel("job (overrides)")
        return _png(fig)
