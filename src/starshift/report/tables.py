"""Text tables: the seed's diagnostic table (terminal and markdown).

:func:`seed_table` and :func:`check_marker` live in :mod:`starshift._table`, pandas-free, so
that ``starshift align`` can print the table without importing pandas.
"""

from __future__ import annotations

import math

from .._table import check_marker, seed_table

__all__ = ["check_marker", "markdown_table", "seed_table"]


def markdown_table(df, float_format: str = "{:.3f}") -> str:
    """A GitHub-flavoured markdown table (NaN as '-') of a DataFrame, deterministic text."""
    import pandas as pd  # the report's tables are DataFrames: imported already

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
