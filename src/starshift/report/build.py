"""The report and summary stages: tables, GIFs, photometry and plots per night; the index.

Everything written here is committed (``cache: false`` in dvc.yaml) so a pull request shows it:
text is deterministic and images carry no timestamps, so a rerun is byte-identical.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from .. import columns as C
from .. import io as fio
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


def compare_methods(input_dir: Path, ncfg, diag: pd.DataFrame, limit: float = 0.5
                    ) -> pd.DataFrame:
    """The box (seed) estimate beside the automatic one, per frame, flagged beyond ``limit``.

    The night's own method comes from ``diag``; the other is measured here with the same
    settings (search box, pre-shifts, reference).
    """
    from omegaconf import OmegaConf

    from ..pipeline.stages import measure

    other_cfg = OmegaConf.merge(ncfg, {"method": "auto" if ncfg.method == "box" else "box",
                                       "reference": diag.loc[diag[REFERENCE] == 1, C.FILE]
                                       .iloc[0]})
    other, _ = measure(input_dir, other_cfg)
    box, auto = (diag, other) if ncfg.method == "box" else (other, diag)
    t = pd.DataFrame({C.FILE: diag[C.FILE]})
    t = t.merge(box[[C.FILE, C.DX, C.DY, C.STATUS]].rename(
        columns={C.DX: "box_dx", C.DY: "box_dy", C.STATUS: "box_status"}), on=C.FILE)
    t = t.merge(auto[[C.FILE, C.DX, C.DY, C.SIGMA_DX, C.SIGMA_DY, C.N_STARS, C.STATUS]].rename(
        columns={C.DX: "auto_dx", C.DY: "auto_dy", C.SIGMA_DX: "auto_sigma_dx",
                 C.SIGMA_DY: "auto_sigma_dy", C.N_STARS: "auto_n_stars",
                 C.STATUS: "auto_status"}), on=C.FILE)
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


def night_report(night: str, input_dir: Path, paths, ncfg, rcfg, full_cfg: dict,
                 progress: bool = False) -> dict:
    """Write ``reports/<night>/``: diagnostics, order-0-vs-1 GIF, photometry, plots, metrics."""
    from .gif import order_comparison_gif
    from .photometry import select_stars, shift_photometry, summarise_photometry
    from .plots import flux_change_plot, residual_plot

    out = Path(paths.report)
    diag = fio.read_table(paths.diagnostics)
    truth_path = Path(input_dir) / "truth.csv"
    diag = with_truth(diag, fio.read_table(truth_path) if truth_path.is_file() else None)
    max_res = float(ncfg.reject.max_residual)

    fio.write_table(diag, out / "diagnostics.csv")
    seed = seed_markdown(diag, max_res)
    fio.write_text(out / "diagnostics.md",
                  f"# {night}: per-frame diagnostics\n\n"
                  f"Shift = reference - frame (px, x first); new shift = the star re-measured "
                  f"after shifting; CHECK = beyond {max_res:g} px.\n\n"
                  + markdown_table(seed) + "\n")

    # residual plot and its data (for `dvc plots`)
    res = diag[[C.FILE, C.RESIDUAL_DX, C.RESIDUAL_DY, C.STATUS]].copy()
    res.insert(0, "frame", np.arange(len(res)))
    fio.write_table(res, out / "residuals.csv")
    fio.write_bytes(out / "residuals.png", residual_plot(diag, max_res, title=night))

    usable = _usable(diag)
    ref_name = diag.loc[diag[REFERENCE] == 1, C.FILE].iloc[0]
    ref_data, _ = fio.read_frame(Path(input_dir) / ref_name)
    stars = select_stars(ref_data, n=int(rcfg.n_stars))
    if ncfg.centroid.box_center is not None:
        center = tuple(float(v) for v in ncfg.centroid.box_center)
    elif len(stars):
        center = (float(stars["x"].iloc[0]), float(stars["y"].iloc[0]))
    else:
        center = (ref_data.shape[1] / 2, ref_data.shape[0] / 2)

    phot_rows, gif_frames = [], []
    order = [ref_name] + [f for f in usable[C.FILE] if f != ref_name]
    by_file = usable.set_index(C.FILE)
    for name in tqdm(order, desc=f"report {night}", disable=not progress):
        raw, _ = fio.read_frame(Path(input_dir) / name)
        dx, dy = float(by_file.loc[name, C.DX]), float(by_file.loc[name, C.DY])
        if len(stars):
            p = shift_photometry(raw, dx, dy, stars, radius=float(rcfg.aperture_radius),
                                 annulus=tuple(rcfg.annulus), orders=tuple(rcfg.orders),
                                 fill=ncfg.shift.fill)
            p.insert(0, C.FILE, name)
            phot_rows.append(p)
        if len(gif_frames) < int(rcfg.gif_max_frames):
            gif_frames.append((name, raw, dx, dy))
    phot = pd.concat(phot_rows, ignore_index=True) if phot_rows else pd.DataFrame()
    fio.write_table(phot, out / "photometry.csv", float_format="%.6g")
    phot_summary = summarise_photometry(phot) if len(phot) else pd.DataFrame()
    fio.write_table(phot_summary, out / "photometry_summary.csv", float_format="%.6g")
    if len(phot):
        fio.write_bytes(out / "flux_change.png", flux_change_plot(phot, title=night))
    fio.write_bytes(out / "order0_vs_order1.gif",
                   order_comparison_gif(gif_frames, center, size=int(rcfg.gif_size),
                                        fill=ncfg.shift.fill, scale=int(rcfg.gif_scale),
                                        levels=int(rcfg.gif_levels)))

    metrics = night_metrics(diag)
    if ncfg.centroid.box_center is not None:
        cmp = compare_methods(Path(input_dir), ncfg, diag, max_res)
        fio.write_table(cmp, out / "box_vs_auto.csv")
        fio.write_text(out / "box_vs_auto.md",
                      f"# {night}: seed box estimate vs automatic estimate\n\n"
                      f"Shift onto the reference (px). Flagged where they differ by more than "
                      f"{max_res:g} px on either axis, or where one method failed.\n\n"
                      + markdown_table(cmp) + "\n")
        metrics["box_vs_auto_flagged"] = int((cmp["flag"] != "").sum())
    if len(phot):
        for o in rcfg.orders:
            col = f"rel_change_order{o}"
            if col in phot:
                v = phot[col].to_numpy(float)
                v = v[np.isfinite(v)]
                metrics[f"max_abs_flux_change_order{o}"] = (
                    round(float(np.max(np.abs(v))), 6) if v.size else None)
    metrics["reference"] = ref_name
    metrics["params_hash"] = fio.params_hash(OmegaConf.to_container(ncfg, resolve=True))
    metrics["gif_center"] = [round(center[0], 2), round(center[1], 2)]
    fio.write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary(cfg) -> dict:
    """Write ``reports/metrics.json`` and ``reports/index.md`` from every night's report."""
    root = Path(cfg.report.out)
    plain = OmegaConf.to_container(cfg, resolve=True)
    all_metrics, sections = {}, []
    for night in cfg.nights:
        path = root / night / "metrics.json"
        if not path.is_file():
            from ..errors import StarshiftError

            raise StarshiftError(f"{path}: missing; run the report stage for {night} first")
        m = json.loads(path.read_text())
        all_metrics[night] = m
        method = cfg.nights[night].method
        lines = [f"## {night}", "",
                 f"Method `{method}`, reference `{m.get('reference')}`, parameters hash "
                 f"`{m.get('params_hash')}`.", "",
                 "| frames | kept | rejected | failed | max new shift | RMS new shift |"
                 + (" good within 0.5 px | RMS error vs truth |" if "rms_error" in m else ""),
                 "|---|---|---|---|---|---|" + ("---|---|" if "rms_error" in m else ""),
                 f"| {m['frames']} | {m['kept']} | {m['rejected']} | {m['failed']} | "
                 f"{_fmt(m['max_residual'])} | {_fmt(m['rms_residual'])} |"
                 + (f" {m['good_within_0.5px']}/{m['good_frames']} | {_fmt(m['rms_error'])} |"
                    if "rms_error" in m else ""),
                 "",
                 f"Tables: [diagnostics]({night}/diagnostics.md) ([csv]({night}/diagnostics.csv"
                 f")), [photometry]({night}/photometry.csv), "
                 f"[photometry summary]({night}/photometry_summary.csv).", "",
                 f"![order=0 vs order=1]({night}/order0_vs_order1.gif)", "",
                 f"![new shift per frame]({night}/residuals.png)"]
        if (root / night / "flux_change.png").is_file():
            lines += ["", f"![flux change by interpolation order]({night}/flux_change.png)"]
        if (root / night / "box_vs_auto.md").is_file():
            lines += ["", f"Seed box estimate vs automatic: [table]({night}/box_vs_auto.md), "
                      f"{m.get('box_vs_auto_flagged', 0)} frame(s) flagged (differ by more "
                      "than the residual limit, or one method failed)."]
        sections.append("\n".join(lines))
    fio.write_text(root / "metrics.json", json.dumps(all_metrics, indent=2, sort_keys=True) + "\n")
    cfg_yaml = OmegaConf.to_yaml(cfg)
    text = "\n\n".join([
        "# starshift report",
        "Generated by `dvc repro` from `params.yaml` (composed from `conf/` by "
        "`starshift compose`). Parameters hash of the whole configuration: "
        f"`{fio.params_hash(plain)}`. Regenerate with `dvc repro`; compare with "
        "`dvc metrics diff main --md` and `dvc params diff main --md`.",
        *sections,
        "## Composed configuration\n\n```yaml\n" + cfg_yaml.rstrip() + "\n```",
    ]) + "\n"
    fio.write_text(root / "index.md", text)
    return all_metrics
