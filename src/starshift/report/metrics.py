"""Per-night figures of merit from a diagnostics table (and the night's truth when known)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import columns as C


def _f(value) -> float | None:
    """A JSON-friendly float rounded to 4 decimals (None for NaN)."""
    v = float(value)
    return None if math.isnan(v) else round(v, 4)


def with_truth(diag: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """``diag`` with true_dx/true_dy/bad joined from a truth table (file, dx, dy, bad, kind)."""
    if truth is None:
        return diag
    t = truth.rename(columns={"dx": C.TRUE_DX, "dy": C.TRUE_DY})
    keep = [c for c in (C.FILE, C.TRUE_DX, C.TRUE_DY, C.BAD, C.KIND) if c in t.columns]
    return diag.merge(t[keep], on=C.FILE, how="left")


def night_metrics(diag: pd.DataFrame) -> dict:
    """Counts, residual max/RMS of kept frames, and (with truth columns) error against truth."""
    status = diag[C.STATUS]
    # the new shift of aligned frames: the reference, exact by construction, is left out, so a
    # night whose frames all failed has no residual (null), never a perfect-looking 0.0
    ref = diag[C.REFERENCE] == 1 if C.REFERENCE in diag else False
    kept = diag[(status == C.KEPT) & ~ref]
    res = np.concatenate([kept[C.RESIDUAL_DX].to_numpy(float),
                          kept[C.RESIDUAL_DY].to_numpy(float)])
    res = res[np.isfinite(res)]
    out = {
        "frames": int(len(diag)),
        "kept": int((status == C.KEPT).sum()),
        "rejected": int((status == C.REJECTED).sum()),
        "failed": int((status == C.FAILED).sum()),
        "max_residual": _f(np.max(np.abs(res))) if res.size else None,
        "rms_residual": _f(np.sqrt(np.mean(res**2))) if res.size else None,
    }
    if C.TRUE_DX in diag.columns:
        good = diag[(diag.get(C.BAD, 0) == 0) & np.isfinite(diag[C.DX].astype(float))]
        ex = good[C.DX].to_numpy(float) - good[C.TRUE_DX].to_numpy(float)
        ey = good[C.DY].to_numpy(float) - good[C.TRUE_DY].to_numpy(float)
        n_good = int((diag.get(C.BAD, 0) == 0).sum())
        within = int(np.sum((np.abs(ex) <= 0.5) & (np.abs(ey) <= 0.5)))
        err = np.concatenate([ex, ey])
        out.update({
            "good_frames": n_good,
            "good_within_0.5px": within,
            "max_error": _f(np.max(np.abs(err))) if err.size else None,
            "rms_error": _f(np.sqrt(np.mean(err**2))) if err.size else None,
            "bad_rejected": int(((diag.get(C.BAD, 0) == 1) & (status != C.KEPT)).sum()),
            "bad_frames": int((diag.get(C.BAD, 0) == 1).sum()),
        })
    return out
