"""Stage entry points: read inputs, call the algorithms, write outputs and provenance.

The same functions serve ``starshift align``, the DVC stages (``starshift stage ...``) and the
Hydra sweep. Per-frame work is split so each step can stream frames one at a time:

``measure``  -> shifts table (one row per light frame; estimated shift onto the reference)
``apply``    -> shifted frames + residual (the star re-measured after shifting: "new shift")
``decide``   -> status kept / rejected / failed with a reason (residual limit, bad_frames)
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from . import columns as C
from . import io as fio
from ._stats import median
from .centroid import CentroidFailed, box_centroid
from .config import to_plain
from .errors import StarshiftError
from .quality import shape_rejection, star_shapes
from .shift import apply_shift, fill_value, median_after_shift

log = logging.getLogger(__name__)

REFERENCE = "reference"  # column: 1 for the night's reference frame


# --------------------------------------------------------------------------- inputs
def light_frames(input_dir: str | Path, cfg: DictConfig) -> list[Path]:
    """The night's light frames, sorted by name, with the config's file names checked."""
    paths = fio.find_light_frames(input_dir, cfg.glob)
    names = {p.name for p in paths}
    for key, listed in (("pre_shift", list(cfg.pre_shift)), ("bad_frames", list(cfg.bad_frames)),
                        ("reference", [cfg.reference] if cfg.reference not in (None, "auto")
                         else [])):
        missing = [n for n in listed if n not in names]
        if missing:
            raise StarshiftError(f"{key}: {missing[0]} is not a light frame in {input_dir}; "
                                 "check the file name")
    return paths


def _auto_params(cfg: DictConfig) -> dict:
    return dict(to_plain(cfg.auto))


def reference_index(paths: list[Path], cfg: DictConfig, progress: bool = False) -> int:
    """Index of the reference frame: the first (default), a named file, or ``'auto'``."""
    if cfg.reference is None:
        return 0
    if cfg.reference == "auto":
        from .register import choose_reference

        datas = [fio.read_frame(p)[0] for p in tqdm(paths, desc="reference", disable=not progress)]
        return int(choose_reference(datas, **_auto_params(cfg)))
    return [p.name for p in paths].index(cfg.reference)


@dataclass
class Reference:
    """What every frame of a night is measured against."""

    name: str
    data: np.ndarray
    position: tuple[float, float] | None  # the box star in the reference (box method / report)
    prepared: object | None = None  # register.PreparedReference (auto method)
    stars: np.ndarray | None = None  # isolated stars (x, y) for the shape metrics


def _pre(cfg: DictConfig, name: str) -> tuple[int, int]:
    value = cfg.pre_shift.get(name)
    return (0, 0) if value is None else (int(value[0]), int(value[1]))


def _pre_shifted(data: np.ndarray, name: str, cfg: DictConfig) -> np.ndarray:
    """The frame after its hand-made pre-shift (whole pixels, as the seed did), if it has one."""
    pdx, pdy = _pre(cfg, name)
    return apply_shift(data, pdx, pdy, order=0, fill=cfg.shift.fill) if (pdx or pdy) else data


def load_reference(path: Path, cfg: DictConfig) -> Reference:
    data, _ = fio.read_frame(path)
    position = None
    if cfg.centroid.box_center is not None:
        pdx, pdy = _pre(cfg, path.name)
        try:
            x, y = box_centroid(_pre_shifted(data, path.name, cfg), cfg.centroid.box_center,
                                cfg.centroid.box_size)
            position = (x - pdx, y - pdy)
        except CentroidFailed as exc:
            if cfg.method == "box":
                raise StarshiftError(
                    f"{path}: no star in the search box of the reference frame ({exc}); "
                    "check centroid.box_center/box_size or choose another reference") from exc
    from .register import prepare_reference

    prepared = prepare_reference(data, **_auto_params(cfg))
    stars = np.asarray(prepared.star_positions, dtype=float).reshape(-1, 2)
    return Reference(path.name, data, position, prepared if cfg.method == "auto" else None, stars)


# --------------------------------------------------------------------------- measure
def measure_frame(data: np.ndarray, name: str, ref: Reference, cfg: DictConfig) -> dict:
    """Estimate one frame's shift onto the reference. Never raises for a bad frame."""
    pdx, pdy = _pre(cfg, name)
    row = {C.PRE_DX: pdx, C.PRE_DY: pdy, C.METHOD: cfg.method, C.X: np.nan, C.Y: np.nan,
           C.DX: np.nan, C.DY: np.nan, C.SIGMA_DX: np.nan, C.SIGMA_DY: np.nan, C.N_STARS: 0,
           C.STATUS: "ok", C.REASON: ""}
    if name == ref.name:
        row.update({C.DX: 0.0, C.DY: 0.0, C.SIGMA_DX: 0.0, C.SIGMA_DY: 0.0})
        if ref.position is not None:
            row[C.X], row[C.Y] = ref.position
        if cfg.method == "box":
            row[C.N_STARS] = 1
        return row
    pre = _pre_shifted(data, name, cfg)
    if cfg.method == "box":
        try:
            x, y = box_centroid(pre, cfg.centroid.box_center, cfg.centroid.box_size)
        except CentroidFailed as exc:
            row.update({C.STATUS: C.FAILED, C.REASON: f"star not found in the search box: {exc}"})
            return row
        rx, ry = ref.position
        row.update({C.X: x - pdx, C.Y: y - pdy, C.DX: rx - x + pdx, C.DY: ry - y + pdy,
                    C.N_STARS: 1})
        return row
    from .register import estimate_shift

    est = estimate_shift(ref.prepared, pre, **_auto_params(cfg))
    if not est.ok:
        row.update({C.STATUS: C.FAILED, C.REASON: est.reason or "automatic alignment failed",
                    C.METHOD: f"auto:{est.method}"})
        return row
    row.update({C.DX: est.dx + pdx, C.DY: est.dy + pdy, C.SIGMA_DX: est.sigma_dx,
                C.SIGMA_DY: est.sigma_dy, C.N_STARS: est.n_stars, C.METHOD: f"auto:{est.method}"})
    if ref.position is not None:
        row[C.X] = ref.position[0] - row[C.DX]
        row[C.Y] = ref.position[1] - row[C.DY]
    return row


def measure(input_dir: str | Path, cfg: DictConfig, progress: bool = False
            ) -> tuple[pd.DataFrame, Reference]:
    """The shifts table of a night: one row per light frame, in name order."""
    paths = light_frames(input_dir, cfg)
    ref_path = paths[reference_index(paths, cfg, progress)]
    ref = load_reference(ref_path, cfg)
    rows = []
    for path in tqdm(paths, desc=f"measure {Path(input_dir).name}", disable=not progress):
        data, header = fio.read_frame(path)
        if data.shape != ref.data.shape:
            row = {C.STATUS: C.FAILED, C.PRE_DX: 0, C.PRE_DY: 0, C.METHOD: cfg.method,
                   C.REASON: f"shape {data.shape[::-1]} differs from the reference's "
                             f"{ref.data.shape[::-1]}"}
        else:
            row = measure_frame(data, path.name, ref, cfg)
        row.update({C.FILE: path.name, C.FILTER: str(header.get("FILTER", "")),
                    C.EXPTIME: float(header.get("EXPTIME", np.nan)),
                    REFERENCE: int(path.name == ref.name)})
        rows.append(row)
    table = pd.DataFrame(rows)
    cols = [C.FILE, C.FILTER, C.EXPTIME, REFERENCE, C.METHOD, C.X, C.Y, C.DX, C.DY, C.SIGMA_DX,
            C.SIGMA_DY, C.N_STARS, C.PRE_DX, C.PRE_DY, C.STATUS, C.REASON]
    return table.reindex(columns=cols), ref


def reference_from_table(input_dir: str | Path, table: pd.DataFrame, cfg: DictConfig
                         ) -> Reference:
    names = table.loc[table[REFERENCE] == 1, C.FILE].tolist()
    if len(names) != 1:
        raise StarshiftError("shifts table: exactly one row must be marked as the reference")
    return load_reference(Path(input_dir) / names[0], cfg)


# --------------------------------------------------------------------------- apply
def applied_shift(row, order: int) -> tuple[float, float]:
    """The shift actually applied: whole pixels for order 0 (the seed's), else the estimate."""
    if order == 0:
        return float(round(row[C.DX])), float(round(row[C.DY]))
    return float(row[C.DX]), float(row[C.DY])


def residual(shifted: np.ndarray, row, applied: tuple[float, float], ref: Reference,
             cfg: DictConfig, shifted_median: float | None = None) -> tuple[float, float, str]:
    """The shift still needed after shifting ("new shift").

    ``box``: the star is re-measured in the search box of the shifted frame, as the seed did.
    ``auto``: the estimate minus the applied shift. The estimate already rests on every matched
    star; re-running it on the shifted frame would compare moved detector artefacts (hot
    pixels, banding, filled edges) with the unshifted reference, which is not a fair test. Its
    trust is checked by ``reject.max_sigma`` instead (and, where a night has a search box, by
    the report's box-versus-automatic comparison).
    """
    if cfg.method == "box":
        try:
            x, y = box_centroid(shifted, cfg.centroid.box_center, cfg.centroid.box_size,
                                frame_median=shifted_median)
        except CentroidFailed as exc:
            return np.nan, np.nan, f"star not found after shifting: {exc}"
        return ref.position[0] - x, ref.position[1] - y, ""
    return float(row[C.DX]) - applied[0], float(row[C.DY]) - applied[1], ""


def shift_frame(data: np.ndarray, header, row, ref: Reference, cfg: DictConfig, phash: str):
    """Shift one raw frame; returns (output data, header, diagnostics update)."""
    adx, ady = applied_shift(row, cfg.shift.order)
    cval = fill_value(data, cfg.shift.fill)
    shifted = apply_shift(data, adx, ady, order=cfg.shift.order, fill=cval)
    # the shifted frame's median: the seed's background, and the box re-measure's offset
    shifted_median = None
    if cfg.shift.subtract_background or cfg.method == "box":
        if cfg.shift.order == 0:  # by counting, from the frame and the fill (same value)
            shifted_median = median_after_shift(data, adx, ady, cval)
        else:
            shifted_median = median(shifted, common=cval)
    rdx, rdy, why = residual(shifted, row, (adx, ady), ref, cfg, shifted_median)
    fwhm, elong, _ = star_shapes(shifted, ref.stars) if ref.stars is not None and len(
        ref.stars) else (np.nan, np.nan, 0)
    bkg = 0.0
    if cfg.shift.subtract_background:
        bkg = shifted_median
        shifted = shifted - bkg
    hdr = header.copy()
    hdr["XOFFSET"] = (float(hdr.get("XOFFSET", 0.0)) + adx, "[px] x shift applied (accumulated)")
    hdr["YOFFSET"] = (float(hdr.get("YOFFSET", 0.0)) + ady, "[px] y shift applied (accumulated)")
    hdr["BKGSUB"] = (round(float(bkg), 6), "[adu] median background subtracted")
    hdr["SSMETHOD"] = (str(row[C.METHOD]), "starshift shift estimation method")
    hdr["SSORDER"] = (int(cfg.shift.order), "starshift interpolation order")
    hdr["SSREF"] = (ref.name, "starshift reference frame")
    hdr["SSPHASH"] = (phash, "starshift parameters hash")
    update = {C.APPLIED_DX: adx, C.APPLIED_DY: ady, C.RESIDUAL_DX: rdx, C.RESIDUAL_DY: rdy,
              C.BKGSUB: bkg, C.FWHM: fwhm, C.ELONGATION: elong, "remeasure": why}
    return shifted, hdr, update


def decide(row, cfg: DictConfig, night_fwhm: float | None = None) -> tuple[str, str]:
    """Status and reason of one frame after shifting (``night_fwhm``: the night's median)."""
    if row[C.STATUS] == C.FAILED:
        return C.FAILED, row[C.REASON]
    if row[C.FILE] in set(cfg.bad_frames):
        return C.REJECTED, "listed in bad_frames"
    why = row.get("remeasure", "")
    if isinstance(why, str) and why:
        return C.REJECTED, why
    max_sigma = cfg.reject.max_sigma
    sig = max(float(row.get(C.SIGMA_DX, np.nan)), float(row.get(C.SIGMA_DY, np.nan)))
    if max_sigma is not None and np.isfinite(sig) and sig > max_sigma:
        return C.REJECTED, f"shift uncertain (sigma {sig:.2f} px > {max_sigma:g} px)"
    lim = float(cfg.reject.max_residual)
    rdx, rdy = float(row[C.RESIDUAL_DX]), float(row[C.RESIDUAL_DY])
    if abs(rdx) > lim or abs(rdy) > lim:
        return C.REJECTED, f"new shift ({rdx:+.2f}, {rdy:+.2f}) px beyond {lim:g} px"
    shape = shape_rejection(float(row.get(C.FWHM, np.nan)), float(row.get(C.ELONGATION, np.nan)),
                            night_fwhm, cfg.reject.max_elongation, cfg.reject.max_fwhm_ratio)
    if shape:
        return C.REJECTED, shape
    return C.KEPT, ""


def night_fwhm(rows: list[dict]) -> float | None:
    """The night's median FWHM over frames that were shifted (None when unknown)."""
    v = np.array([float(r.get(C.FWHM, np.nan)) for r in rows if r[C.STATUS] != C.FAILED])
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def decide_night(rows: list[dict], cfg: DictConfig) -> list[dict]:
    """Set status and reason of every frame of a night (rules needing the whole night too)."""
    fwhm = night_fwhm(rows)
    for row in rows:
        row[C.STATUS], row[C.REASON] = decide(row, cfg, fwhm)
    return rows


def iter_shifted(input_dir: str | Path, table: pd.DataFrame, cfg: DictConfig,
                 progress: bool = False) -> Iterator[tuple[dict, np.ndarray | None, object]]:
    """Shift every measured frame; yields (diagnostics row, data or None, header)."""
    ref = reference_from_table(input_dir, table, cfg)
    phash = fio.params_hash(to_plain(cfg))
    for row in tqdm(table.to_dict("records"), desc=f"shift {Path(input_dir).name}",
                    disable=not progress):
        out = {**row, C.APPLIED_DX: np.nan, C.APPLIED_DY: np.nan, C.RESIDUAL_DX: np.nan,
               C.RESIDUAL_DY: np.nan, C.BKGSUB: np.nan, "remeasure": ""}
        if row[C.STATUS] == C.FAILED:
            yield out, None, None
            continue
        data, header = fio.read_frame(Path(input_dir) / row[C.FILE])
        shifted, hdr, update = shift_frame(data, header, row, ref, cfg, phash)
        out.update(update)
        yield out, shifted, hdr


def finish(rows: list[dict]) -> pd.DataFrame:
    """The diagnostics table in its documented column order."""
    df = pd.DataFrame(rows)
    extra = [c for c in (REFERENCE,) if c in df.columns]
    return df.reindex(columns=C.DIAGNOSTICS + extra)


# --------------------------------------------------------------------------- whole runs
def align(input_dir: str | Path, output_dir: str | Path, cfg: DictConfig,
          progress: bool = False, write_frames: bool = True) -> pd.DataFrame:
    """``starshift align``: measure, shift, decide; write kept frames and diagnostics.csv.

    With ``write_frames=False`` only diagnostics.csv is written (sweeps).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise StarshiftError(f"{output_dir}: output directory must differ from the input "
                             "(inputs are never modified)")
    table, _ = measure(input_dir, cfg, progress)
    rows = []
    for row, data, hdr in iter_shifted(input_dir, table, cfg, progress):
        status, _ = decide(row, cfg)  # per-frame rules now; night-level ones below
        if status == C.KEPT and write_frames:
            fio.write_frame(output_dir / row[C.FILE], data, hdr)
        rows.append(row)
    decide_night(rows, cfg)
    for row in rows:
        stale = output_dir / row[C.FILE]
        if row[C.STATUS] != C.KEPT and stale.exists():  # night rule, or an earlier run
            stale.unlink()
    diag = finish(rows)
    fio.write_table(diag, output_dir / "diagnostics.csv")
    return diag


def stage_measure(input_dir, out_table, cfg, progress=False) -> pd.DataFrame:
    """DVC ``centroid`` stage: the shifts table."""
    table, _ = measure(input_dir, cfg, progress)
    fio.write_table(table, out_table)
    return table


def stage_shift(input_dir, shifts_table, out_dir, out_table, cfg, progress=False
                ) -> pd.DataFrame:
    """DVC ``shift`` stage: every measured frame shifted, plus residuals (no decisions)."""
    table = fio.read_table(shifts_table)
    out_dir = Path(out_dir)
    _clear_dir(out_dir)
    rows = []
    for row, data, hdr in iter_shifted(input_dir, table, cfg, progress):
        if data is not None:
            fio.write_frame(out_dir / row[C.FILE], data, hdr)
        rows.append(row)
    df = pd.DataFrame(rows)
    fio.write_table(df, out_table)
    return df


def stage_reject(shifted_dir, residuals_table, out_dir, out_table, cfg) -> pd.DataFrame:
    """DVC ``reject`` stage: statuses, and the accepted set copied to its own directory."""
    table = fio.read_table(residuals_table)
    out_dir = Path(out_dir)
    _clear_dir(out_dir)
    rows = table.to_dict("records")
    for row in rows:
        row["remeasure"] = "" if pd.isna(row.get("remeasure")) else row.get("remeasure")
        row[C.REASON] = "" if pd.isna(row.get(C.REASON)) else row[C.REASON]
    for row in decide_night(rows, cfg):
        if row[C.STATUS] == C.KEPT:
            fio.copy_file(Path(shifted_dir) / row[C.FILE], out_dir / row[C.FILE])
    diag = finish(rows)
    fio.write_table(diag, out_table)
    return diag


def _clear_dir(path: Path) -> None:
    """Start a stage's own output directory afresh (DVC removes it too before running)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


