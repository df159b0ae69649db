"""The report and summary stages: tables, GIFs, photometry and plots per night; the index.

Everything written here is committed (``cache: false`` in dvc.yaml) so a pull request shows it:
text is deterministic and images carry no timestamps, so a rerun is byte-identical.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .. import columns as C
from .. import io as fio
from .._progress import progress_bar
from ..columns import REFERENCE
from .metrics import night_metrics, with_truth
from .tables import check_marker, markdown_table

log = logging.getLogger(__name__)

SEED_COLUMNS = {C.FILE: "file", C.X: "x", C.Y: "y", C.DX: "shift dx", C.DY: "shift dy",
                C.APPLIED_DX: "applied dx", C.APPLIED_DY: "applied dy",
                C.RESIDUAL_DX: "new dx", C.RESIDUAL_DY: "new dy"}


def seed_markdown(diag: pd.DataFrame, max_residual: float) -> pd.DataFrame:
    """The seed's table (name, position, shift, new shift, check) with status and reason."""
    t = diag[list(SEED_COLUMNS)].rename(columns=SEED_COLUMNS)
    t["check"] = [check_marker(r, max_residual) for _, r in diag.iterrows()]
    t["status"] = diag[C.STATUS]
    t["reason"] = diag[C.REASON].astype(object).fillna("")
    for col in (C.SIGMA_DX, C.SIGMA_DY, C.N_STARS, C.METHOD):
        if col in diag and diag[col].notna().any():
            t[col] = diag[col]
    if C.TRUE_DX in diag:
        t["err dx"] = diag[C.DX] - diag[C.TRUE_DX]
        t["err dy"] = diag[C.DY] - diag[C.TRUE_DY]
    return t


def flag_comparison(cmp: pd.DataFrame, limit: float) -> pd.DataFrame:
    """The compare stage's table with the differences and a flag where they exceed ``limit``
    px on either axis, or where one method failed."""
    t = cmp.copy()
    t["diff_dx"] = t["box_dx"] - t["auto_dx"]
    t["diff_dy"] = t["box_dy"] - t["auto_dy"]
    big = (t["diff_dx"].abs() > limit) | (t["diff_dy"].abs() > limit)
    missing = t["box_dx"].isna() | t["auto_dx"].isna()
    t["flag"] = np.where(missing, "one failed", np.where(big, f"differ > {limit:g} px", ""))
    return t


def _usable(diag: pd.DataFrame) -> pd.DataFrame:
    """Frames shown and measured in the report: the kept ones (the reference always is)."""
    return diag[(diag[C.STATUS] == C.KEPT) & np.isfinite(diag[C.DX].astype(float))
                | (diag[REFERENCE] == 1)]


def night_report(night: str, paths: dict, cfg, progress: bool = False) -> dict:
    """The report stage: ``paths["report"]`` (tables: diagnostics, rejected frames with their
    reasons, photometry, box vs automatic), ``paths["plots"]`` (images: order-0-vs-1 GIF, the
    blinked night, stacks, quality and residual plots), ``paths["metrics"]`` (the night's
    metrics) and ``paths["stack"]`` (the stacked frames per filter, FITS).

    ``cfg`` is the night's settings view; the report reads ``report.*``, the search box, the
    shift's fill and the new-shift limit, nothing else.

    The images are independent of each other: they are built side by side, one worker process
    per core (:class:`_Builders`), while this process writes the tables. Every file is written
    here, by the stage's process; the workers only read the inputs.
    """
    from .photometry import summarise_photometry

    rcfg = cfg.plain("report")
    box = cfg.plain("centroid")
    fill = cfg.path("shift.fill")
    max_res = float(cfg.path("reject.max_residual"))
    input_dir, shifted = Path(paths["frames"]), Path(paths["shifted"])
    diag = fio.read_table(paths["diagnostics"])
    truth_path = input_dir / "truth.csv"
    diag = with_truth(diag, fio.read_table(truth_path) if truth_path.is_file() else None)
    thresholds = fio.read_table(paths["thresholds"])
    usable = _usable(diag)
    ref_name = diag.loc[diag[REFERENCE] == 1, C.FILE].iloc[0]
    ref_data, _ = fio.read_frame(input_dir / ref_name)
    box_center = (None if box["box_center"] is None
                  else tuple(float(v) for v in box["box_center"]))
    with fio.output_folder(paths["report"]) as rep, fio.output_folder(paths["plots"]) as img, \
            _Builders() as builders:
        out, pics = rep.staging, img.staging
        # the longest first: the workers take them in this order
        photometry = builders.submit(
            _photometry_images, night, input_dir, ref_name, ref_data, usable, box_center,
            fill, rcfg, progress)
        stacked = builders.submit(_stack_images, night, diag, shifted, ref_data,
                                  str(rcfg["stack_method"]))
        quality = builders.submit(_quality_png, night, diag, thresholds)
        residuals = builders.submit(_residual_png, night, diag, max_res)
        blink = builders.submit(_blink_gif, night, diag, shifted, int(rcfg["blink_max_frames"]))

        fio.write_table(diag, out / "diagnostics.csv")
        fio.write_text(out / "diagnostics.md",
                       f"# {night}: per-frame diagnostics\n\n"
                       f"Shift = reference - frame (px, x first); new shift = what the shift "
                       f"left (the star re-measured after shifting, for the box method); CHECK "
                       f"= beyond {max_res:g} px.\n\n"
                       + markdown_table(seed_markdown(diag, max_res)) + "\n")
        rejected = diag.loc[diag[C.STATUS] != C.KEPT, [C.FILE, C.STATUS, C.REASON]]
        fio.write_table(rejected, out / "rejected.csv")
        fio.write_table(thresholds, out / "thresholds.csv", float_format="%.6g")
        res = diag[[C.FILE, C.RESIDUAL_DX, C.RESIDUAL_DY, C.STATUS]].copy()
        res.insert(0, "frame", np.arange(len(res)))
        fio.write_table(res, out / "residuals.csv")

        metrics = night_metrics(diag)
        cmp = fio.read_table(paths["compare"])
        if len(cmp):
            cmp = flag_comparison(cmp, max_res)
            fio.write_table(cmp, out / "box_vs_auto.csv")
            fio.write_text(out / "box_vs_auto.md",
                           f"# {night}: seed box estimate vs automatic estimate\n\n"
                           f"Shift onto the reference (px). Flagged where they differ by more "
                           f"than {max_res:g} px on either axis, or where one method failed."
                           "\n\n" + markdown_table(cmp) + "\n")
            metrics["box_vs_auto_flagged"] = int((cmp["flag"] != "").sum())

        phot, center, flux_png, order_gif = photometry.result()
        fio.write_table(phot, out / "photometry.csv", float_format="%.6g")
        phot_summary = summarise_photometry(phot) if len(phot) else pd.DataFrame()
        fio.write_table(phot_summary, out / "photometry_summary.csv", float_format="%.6g")
        if flux_png is not None:
            fio.write_bytes(pics / "flux_change.png", flux_png)
        fio.write_bytes(pics / "order0_vs_order1.gif", order_gif)
        if len(phot):
            for o in rcfg["orders"]:
                col = f"rel_change_order{o}"
                if col in phot:
                    v = phot[col].to_numpy(float)
                    v = v[np.isfinite(v)]
                    metrics[f"max_abs_flux_change_order{o}"] = (
                        round(float(np.max(np.abs(v))), 6) if v.size else None)
        metrics["reference"] = ref_name
        metrics["params_hash"] = fio.params_hash(dict(cfg.log))
        metrics["gif_center"] = [round(center[0], 2), round(center[1], 2)]

        fio.write_bytes(pics / "residuals.png", residuals.result())
        fio.write_bytes(pics / "quality.png", quality.result())
        blink_bytes = blink.result()
        if blink_bytes is not None:
            fio.write_bytes(pics / "blink.gif", blink_bytes)
        more, stacks, stack_bytes = stacked.result()
        if stack_bytes is not None:
            fio.write_bytes(pics / "stack.png", stack_bytes)
        metrics.update(more)
        with fio.output_folder(paths["stack"]) as st:
            for label, data in stacks.items():
                name = label.removeprefix("filter ").replace(" ", "_")
                fio.write_frame(st.staging / f"stack_{name}.fits", data)
    fio.write_text(paths["metrics"], json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


# --------------------------------------------------------------------------- the builders
# Each reads what it needs and returns bytes, tables or arrays (it writes nothing), so that it
# can run in a worker process.
def _photometry_images(night: str, input_dir: Path, ref_name: str, ref_data: np.ndarray,
                       usable: pd.DataFrame, box_center: tuple[float, float] | None, fill,
                       rcfg: dict, progress: bool
                       ) -> tuple[pd.DataFrame, tuple[float, float], bytes | None, bytes]:
    """Photometry of the reference's stars in every usable frame before and after shifting,
    the flux-change plot (None without stars), the order-0-vs-1 GIF, and the GIF's centre
    (the search box's, else the brightest selected star's, else the frame's)."""
    from .gif import evenly_spaced, order_comparison_gif
    from .photometry import select_stars, shift_photometry
    from .plots import flux_change_plot

    stars = select_stars(ref_data, n=int(rcfg["n_stars"]))
    if box_center is not None:
        center = box_center
    elif len(stars):
        center = (float(stars["x"].iloc[0]), float(stars["y"].iloc[0]))
    else:
        center = (ref_data.shape[1] / 2, ref_data.shape[0] / 2)
    order = [ref_name] + [f for f in usable[C.FILE] if f != ref_name]
    in_gif = {order[i] for i in evenly_spaced(len(order), int(rcfg["gif_max_frames"]))}
    phot_rows, gif_frames = [], []
    by_file = usable.set_index(C.FILE)
    for name in progress_bar(order, progress, desc=f"report {night}"):
        raw = ref_data if name == ref_name else fio.read_frame(input_dir / name)[0]
        dx, dy = float(by_file.loc[name, C.DX]), float(by_file.loc[name, C.DY])
        if len(stars):
            p = shift_photometry(raw, dx, dy, stars, radius=float(rcfg["aperture_radius"]),
                                 annulus=tuple(rcfg["annulus"]),
                                 orders=tuple(rcfg["orders"]), fill=fill)
            p.insert(0, C.FILE, name)
            phot_rows.append(p)
        if name in in_gif:
            gif_frames.append((name, raw, dx, dy))
    phot = pd.concat(phot_rows, ignore_index=True) if phot_rows else pd.DataFrame()
    flux_png = flux_change_plot(phot, title=night) if len(phot) else None
    gif = order_comparison_gif(gif_frames, center, size=int(rcfg["gif_size"]), fill=fill,
                               scale=int(rcfg["gif_scale"]), levels=int(rcfg["gif_levels"]))
    return phot, center, flux_png, gif


def _residual_png(night: str, diag: pd.DataFrame, max_res: float) -> bytes:
    from .plots import residual_plot

    return residual_plot(diag, max_res, title=night)


def _quality_png(night: str, diag: pd.DataFrame, thresholds: pd.DataFrame | None) -> bytes:
    """``quality.png``: every quality metric per frame, with ``thresholds``."""
    from .quality_plot import quality_plot

    return quality_plot(diag, thresholds, title=night)


def _on_disk(diag: pd.DataFrame, shifted: Path) -> np.ndarray:
    return np.array([(shifted / str(n)).is_file() for n in diag[C.FILE]], dtype=bool)


def _blink_gif(night: str, diag: pd.DataFrame, shifted: Path, blink_max_frames: int
               ) -> bytes | None:
    """``blink.gif``: the aligned frames in ``shifted`` (None when none can be shown)."""
    from .blink import blink_gif, blink_selection

    shifted = Path(shifted)
    names = [str(f) for f in diag[C.FILE]]
    statuses = [str(s) for s in diag[C.STATUS]]
    reasons = [r if isinstance(r, str) else "" for r in diag[C.REASON]]
    on_disk = _on_disk(diag, shifted)
    ref_i = int(np.flatnonzero(diag[REFERENCE].to_numpy() == 1)[0])
    shown = [i for i in range(len(names)) if statuses[i] != C.FAILED and on_disk[i]]
    if not shown:
        return None
    pick = set(blink_selection(shown, statuses, blink_max_frames, ref_i))
    frames = [fio.read_frame(shifted / n)[0] if i in pick else None
              for i, n in enumerate(names)]
    return blink_gif(frames, names, statuses, max_frames=blink_max_frames, reasons=reasons,
                     reference=ref_i, title=night)


def _stack_images(night: str, diag: pd.DataFrame, shifted: Path, ref_data: np.ndarray,
                  stack_method: str) -> tuple[dict, dict[str, np.ndarray], bytes | None]:
    """The kept aligned frames in ``shifted`` stacked per filter, measured at the reference's
    isolated stars: the metrics, the stacks (``stack_method``; label -> float32 array) and
    ``stack.png`` (None without stacks); see :func:`stacks`."""
    from ..registration import prepare_reference
    from .stack import stack_png

    positions = np.asarray(prepare_reference(ref_data).star_positions, float).reshape(-1, 2)
    metrics, stacked, fwhm, notes = stacks(diag, shifted, positions, stack_method)
    png = (stack_png(stacked, f"{night}: stacks of the kept aligned frames", fwhm=fwhm,
                     note=notes) if stacked else None)
    return metrics, stacked, png


def stacks(diag: pd.DataFrame, shifted: Path, positions: np.ndarray, stack_method: str
           ) -> tuple[dict, dict[str, np.ndarray], dict, dict]:
    """The kept aligned frames in ``shifted`` stacked per filter.

    Returns the stack metrics (per filter ``F``: ``stack_fwhm_F``, the FWHM of the mean stack
    -- no rejection, which would hide a misalignment -- and ``frame_fwhm_F``, the median
    single-frame FWHM, px, both measured at ``positions``: the reference's isolated stars,
    (N, 2), x first), the stacks shown (``stack_method``; label -> float32 array), and per
    label the FWHM and the note :func:`starshift.report.stack.stack_png` writes on the panel.
    """
    from .stack import METHOD_NAMES, stack, stack_fwhm

    shifted = Path(shifted)
    kept = diag[(diag[C.STATUS] == C.KEPT).to_numpy() & _on_disk(diag, shifted)]
    filters = (kept[C.FILTER].astype(object).fillna("").astype(str) if C.FILTER in kept
               else pd.Series("", index=kept.index))
    metrics: dict = {}
    stacked, fwhm, notes = {}, {}, {}
    for filt in sorted(set(filters)):
        rows = kept[filters == filt]
        frames = [fio.read_frame(shifted / f)[0] for f in rows[C.FILE]]
        exptime = (pd.to_numeric(rows[C.EXPTIME], errors="coerce").to_numpy(float)
                   if C.EXPTIME in rows else np.full(len(rows), np.nan))
        mixed = bool(np.all(exptime > 0)) and len(set(exptime)) > 1  # several exposure times
        kw = {"scale": exptime.max() / exptime if mixed else None,
              "weights": exptime if mixed else None}
        # the alignment check is the mean stack's FWHM: rejecting stacks hide misalignment
        mean = stack(frames, "mean", **kw)
        check, single = stack_fwhm(mean, frames, positions)
        data = mean if stack_method == "mean" else stack(
            frames, stack_method, **(kw if stack_method != "median" else {"scale": kw["scale"]}))
        label = f"filter {filt}" if filt else "all kept frames"
        fwhm[label] = ((check, single) if stack_method == "mean"
                       else (stack_fwhm(data, [], positions)[0], single, check))
        notes[label] = (f"{len(frames)} kept frame(s), {METHOD_NAMES[stack_method]}"
                        + (f", scaled to {exptime.max():g} s" if mixed else ""))
        stacked[label] = data
        key = f"_{filt}" if filt else ""
        for name, v in (("stack_fwhm", check), ("frame_fwhm", single)):
            metrics[f"{name}{key}"] = round(v, 3) if np.isfinite(v) else None
        del frames, mean
    return metrics, stacked, fwhm, notes


def aligned_images(night: str, diag: pd.DataFrame, shifted: Path,
                   thresholds: pd.DataFrame | None, positions: np.ndarray, out: Path, *,
                   blink_max_frames: int, stack_method: str
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    """Write ``out/quality.png`` (every quality metric per frame, with ``thresholds``),
    ``out/blink.gif`` (the aligned frames in ``shifted``) and ``out/stack.png`` (the kept
    aligned frames stacked per filter), one after the other in this process (the report
    stage builds them side by side). Returns the stack metrics and the stacks shown
    (:func:`stacks`), for the caller to keep.
    """
    from .stack import stack_png

    fio.write_bytes(out / "quality.png", _quality_png(night, diag, thresholds))
    gif = _blink_gif(night, diag, shifted, blink_max_frames)
    if gif is not None:
        fio.write_bytes(out / "blink.gif", gif)
    metrics, stacked, fwhm, notes = stacks(diag, shifted, positions, stack_method)
    if stacked:
        fio.write_bytes(out / "stack.png", stack_png(
            stacked, f"{night}: stacks of the kept aligned frames", fwhm=fwhm, note=notes))
    return metrics, stacked


class _Builders:
    """Runs the report's builders side by side: one forked worker per core this process may
    use (:func:`starshift.executors.fork_pool`), or (one core, no ``fork``) each right away
    in this process."""

    def __init__(self, jobs: int | None = None):
        from ..settings import worker_count

        self.jobs = worker_count(0) if jobs is None else jobs
        self._stack = ExitStack()
        self.pool = None

    def __enter__(self) -> _Builders:
        from ..executors import fork_pool

        self.pool = self._stack.enter_context(fork_pool(self.jobs, _PRELOAD))
        return self

    def submit(self, fn, *args):
        """``fn(*args)`` started; ``.result()`` of what this returns waits for its value."""
        if self.pool is None:
            return _Done(fn(*args))
        return _Pending(self.pool.apply_async(fn, args))

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)


#: What several builders import (seconds of start-up each), imported once before the workers
#: fork. What one builder alone needs is imported in the worker that runs it, while the other
#: worker builds: photutils (about 1 s: astropy.table, nddata, scipy.spatial, a scan of the
#: installed packages) for the photometry.
_PRELOAD = ("matplotlib.figure", "matplotlib.backends.backend_agg", "PIL.Image", "astropy.stats",
            "starshift.registration", "starshift.quality", "starshift.report.blink",
            "starshift.report.gif", "starshift.report.photometry", "starshift.report.plots",
            "starshift.report.quality_plot", "starshift.report.stack")


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Pending:
    def __init__(self, handle):
        self.handle = handle

    def result(self):
        return self.handle.get()


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary(metrics_dir: str | Path, index: str | Path, cfg) -> dict:
    """The summary stage: ``index`` (markdown: every night's figures, links to its report and
    images, and the composed configuration) from the nights' metrics in ``metrics_dir``."""
    import os

    from ..errors import StarshiftError

    metrics_dir, index = Path(metrics_dir), Path(index)
    plain = OmegaConf.to_container(cfg, resolve=True)
    here = index.parent
    all_metrics, sections = {}, []
    for night in cfg.nights:
        path = metrics_dir / f"{night}.json"
        if not path.is_file():
            raise StarshiftError(f"{path}: missing; run the report stage for {night} first")
        m = json.loads(path.read_text())
        all_metrics[night] = m
        rep = Path(os.path.relpath(here / night, here)).as_posix()
        pics = Path(os.path.relpath(here / "plots" / night, here)).as_posix()
        truth = "rms_error" in m
        lines = [f"## {night}", "",
                 f"Method `{cfg.nights[night].method}`, reference `{m.get('reference')}`, "
                 f"parameters hash `{m.get('params_hash')}`.", "",
                 "| frames | kept | rejected | failed | max new shift | RMS new shift |"
                 + (" good within 0.5 px | RMS error vs truth |" if truth else ""),
                 "|---|---|---|---|---|---|" + ("---|---|" if truth else ""),
                 f"| {m['frames']} | {m['kept']} | {m['rejected']} | {m['failed']} | "
                 f"{_fmt(m['max_residual'])} | {_fmt(m['rms_residual'])} |"
                 + (f" {m['good_within_0.5px']}/{m['good_frames']} | {_fmt(m['rms_error'])} |"
                    if truth else ""),
                 "",
                 f"Tables: [diagnostics]({rep}/diagnostics.md) ([csv]({rep}/diagnostics.csv)),"
                 f" [rejected frames and why]({rep}/rejected.csv), "
                 f"[thresholds]({rep}/thresholds.csv), [photometry]({rep}/photometry.csv), "
                 f"[photometry summary]({rep}/photometry_summary.csv).", "",
                 f"![the aligned night]({pics}/blink.gif)", "",
                 f"![per-frame quality and thresholds]({pics}/quality.png)", "",
                 f"![stacks]({pics}/stack.png)", "",
                 f"![order=0 vs order=1]({pics}/order0_vs_order1.gif)", "",
                 f"![new shift per frame]({pics}/residuals.png)"]
        if any(k.startswith("max_abs_flux_change") for k in m):
            lines += ["", f"![flux change by interpolation order]({pics}/flux_change.png)"]
        if "box_vs_auto_flagged" in m:
            lines += ["", f"Seed box estimate vs automatic: [table]({rep}/box_vs_auto.md), "
                      f"{m['box_vs_auto_flagged']} frame(s) flagged (differ by more "
                      "than the residual limit, or one method failed)."]
        sections.append("\n".join(lines))
    cfg_yaml = OmegaConf.to_yaml(cfg)
    text = "\n\n".join([
        "# starshift report",
        "Generated by `dvc repro` from `params.yaml` (composed from `conf/` by "
        "`starshift compose`). Parameters hash of the whole configuration: "
        f"`{fio.params_hash(plain)}`. Regenerate with `dvc repro`; compare with "
        "`dvc metrics diff main --md`, `dvc params diff main --md` and `dvc plots diff main`.",
        *sections,
        "## Composed configuration\n\n```yaml\n" + cfg_yaml.rstrip() + "\n```",
    ]) + "\n"
    fio.write_text(index, text)
    return all_metrics
