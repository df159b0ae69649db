"""Text tables: the seed's diagnostic table (terminal and markdown)."""

from __future__ import annotations

import math

import pandas as pd

from .. import columns as C


def _num(value, fmt: str = "{:8.2f}") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{'-':>8}"
    return f"{'-':>8}" if math.isnan(v) else fmt.format(v)


def check_marker(row, max_residual: float) -> str:
    """The seed's CHECK marker: a frame whose new shift exceeds the limit (or failed)."""
    if row[C.STATUS] == C.FAILED:
        return "FAILED"
    rdx, rdy = row[C.RESIDUAL_DX], row[C.RESIDUAL_DY]
    if any(math.isnan(float(v)) for v in (rdx, rdy)):
        return "CHECK"
    return "CHECK" if abs(rdx) > max_residual or abs(rdy) > max_residual else ""


def seed_table(diag: pd.DataFrame, max_residual: float = 0.5) -> str:
    """The seed notebook's per-frame table: name, position, shift, new shift, CHECK, status."""
    width = max([len("file")] + [len(str(f)) for f in diag[C.FILE]])
    head = (f"{'file':<{width}} {'x':>8} {'y':>8} {'dx':>8} {'dy':>8} {'new dx':>8} "
            f"{'new dy':>8} {'check':<6} {'status':<8} reason")
    lines = [head, "-" * len(head)]
    for _, r in diag.iterrows():
        lines.append(
            f"{r[C.FILE]:<{width}} {_num(r[C.X])} {_num(r[C.Y])} {_num(r[C.DX])} {_num(r[C.DY])} "
            f"{_num(r[C.RESIDUAL_DX])} {_num(r[C.RESIDUAL_DY])} "
            f"{check_marker(r, max_residual):<6} {r[C.STATUS]:<8} "
            f"{'' if pd.isna(r[C.REASON]) else r[C.REASON]}".rstrip())
    counts = diag[C.STATUS].value_counts()
    lines.append(f"{len(diag)} frames: " + ", ".join(
        f"{int(counts.get(s, 0))} {s}" for s in C.STATUSES))
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub-flavoured markdown table (NaN as '-'), deterministic text."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else float_format.format(v)
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "-"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])
