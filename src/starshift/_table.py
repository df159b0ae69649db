"""A per-frame table without pandas: rows in; typed columns, groups and CSV out.

``starshift align`` builds one table of a night (a row per frame), decides it and writes it;
the DVC stages before the report read such tables back (:meth:`Table.from_csv`). Importing
pandas for that costs a process 0.23-0.36 s on the benchmark machine (a tenth of a whole 1 MP
night), so those paths use this instead and import pandas only where a caller asks for a
DataFrame (:meth:`Table.to_frame`, :func:`starshift.io.read_table`: the report).

The columns are typed the way ``pandas.DataFrame(rows)`` types them (a missing value in a
column of numbers makes it float, a missing value among booleans or text keeps the objects),
and :meth:`Table.to_csv` writes the same bytes as ``DataFrame.to_csv(index=False,
float_format=..., lineterminator="\\n")``; :meth:`Table.from_csv` types a CSV's columns as
``read_csv`` does. The tests check all three against pandas. The seed's text table of a night
(:func:`seed_table`, what ``starshift align`` prints) is here too.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real

import numpy as np

from . import columns as C


def is_missing(value) -> bool:
    """``None`` or a float NaN: what pandas writes as an empty field."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _typed(values: list) -> np.ndarray:
    """One column as pandas types it: bool, int64, float64 (NaN for missing) or object."""
    kinds = set()
    for v in values:
        if is_missing(v):
            kinds.add("missing" if v is None else "nan")
        elif isinstance(v, (bool, np.bool_)):
            kinds.add("bool")
        elif isinstance(v, Integral):
            kinds.add("int")
        elif isinstance(v, Real):
            kinds.add("float")
        else:
            kinds.add("object")
    if kinds == {"bool"}:
        return np.array(values, dtype=bool)
    if kinds == {"int"}:
        return np.array(values, dtype=np.int64)
    if kinds and kinds <= {"int", "float", "nan", "missing"} and kinds & {"int", "float", "nan"}:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


_INT = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_INF = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
        "+infinity": math.inf, "-infinity": -math.inf}
_BOOL = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False,
         "false": False}


def _float(text: str) -> float | None:
    if _FLOAT.fullmatch(text):
        return float(text)
    return _INF.get(text.strip().lower())


def _parsed(fields: Sequence[str]) -> np.ndarray:
    """One CSV column as ``pandas.read_csv(keep_default_na=False, na_values=[""])`` types it:
    int64 (every field an integer), float64 (numbers, NaN for an empty field), bool (every
    field True or False), else objects: text, NaN for an empty field (the missing booleans
    too)."""
    present = [f for f in fields if f != ""]
    if not present:
        return np.full(len(fields), np.nan) if fields else _objects([])
    if len(present) == len(fields) and all(_INT.fullmatch(f) for f in present):
        values = [int(f) for f in fields]
        if all(-(2 ** 63) <= v < 2 ** 63 for v in values):
            return np.array(values, dtype=np.int64)
        return _objects(values)
    numbers = [np.nan if f == "" else _float(f) for f in fields]
    if all(v is not None for v in numbers):
        return np.array(numbers, dtype=np.float64)
    if all(f in _BOOL for f in present):
        if len(present) == len(fields):
            return np.array([_BOOL[f] for f in fields], dtype=bool)
        return _objects([_BOOL.get(f, np.nan) for f in fields])
    return _objects([np.nan if f == "" else f for f in fields])


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _sorted(values: set) -> list:
    """Values in order; a column mixing kinds that do not compare (a header giving a number for
    some frames and text for others) in the order of their kinds' names, then their text."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


class Table:
    """Named columns of equal length (numpy arrays), in order."""

    def __init__(self, columns: Mapping[str, np.ndarray] | None = None):
        self._cols = dict(columns or {})
        lengths = {len(v) for v in self._cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self._n = lengths.pop() if lengths else 0

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping], columns: Iterable[str] | None = None
                  ) -> Table:
        """``pandas.DataFrame(rows).reindex(columns=columns)``: a key a row lacks is NaN; with
        ``columns``, those columns in that order (absent ones all NaN), else every key in order
        of first appearance."""
        if columns is None:
            names = list(dict.fromkeys(k for r in rows for k in r))
        else:
            names = list(columns)
        table = cls({c: _typed([r.get(c, np.nan) for r in rows]) for c in names})
        table._n = len(rows)
        return table

    @classmethod
    def from_csv(cls, text: str) -> Table:
        """A CSV table (as :meth:`to_csv` writes it), typed as ``pandas.read_csv(...,
        keep_default_na=False, na_values=[""])`` types it; blank lines are skipped. Raises
        ValueError for a row of another length than the header, or a repeated name."""
        lines = [row for row in csv.reader(io.StringIO(text)) if row]
        if not lines:
            raise ValueError("no header")
        names, rows = lines[0], lines[1:]
        if len(set(names)) != len(names):
            raise ValueError(f"a column name is repeated: {names}")
        for i, row in enumerate(rows, 2):
            if len(row) != len(names):
                raise ValueError(f"row {i} has {len(row)} fields, the header {len(names)}")
        table = cls({c: _parsed([r[k] for r in rows]) for k, c in enumerate(names)})
        table._n = len(rows)
        return table

    @classmethod
    def from_frame(cls, df) -> Table:
        """The columns of a pandas DataFrame (text columns as objects, missing as NaN)."""
        return cls({str(c): np.asarray(df[c].to_numpy()) for c in df.columns})

    # ------------------------------------------------------------------ access
    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, name: str) -> bool:
        return name in self._cols

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cols[name]

    def numeric(self, name: str) -> np.ndarray:
        """A column as floats, NaN where a value is missing or not a number (all NaN when the
        column is absent), as ``pandas.to_numeric(errors="coerce")``."""
        if name not in self._cols:
            return np.full(self._n, np.nan)
        v = self._cols[name]
        if v.dtype != object:
            return v.astype(float)
        out = np.full(self._n, np.nan)
        for i, x in enumerate(v):
            if is_missing(x):
                continue
            try:
                out[i] = float(x)
            except (TypeError, ValueError):
                pass
        return out

    def strings(self, name: str, missing: str = "") -> np.ndarray:
        """A column as text (object array), ``missing`` for a missing value."""
        return np.array([missing if is_missing(x) else str(x) for x in self._cols[name]],
                        dtype=object)

    def rows(self) -> list[dict]:
        """The rows as dicts of Python values (int, float, bool, str; NaN where missing), as
        ``DataFrame.to_dict("records")`` gives them."""
        names = self.columns
        values = [self._cols[c].tolist() for c in names]
        return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)] \
            if names else [{} for _ in range(self._n)]

    def groups(self, by: Sequence[str]) -> list[tuple[tuple, np.ndarray]]:
        """``(key, positions)`` of the rows with equal values in the ``by`` columns, keys
        sorted column by column with a missing value last: ``DataFrame.groupby(by,
        dropna=False, sort=True).indices``."""
        codes, uniques = [], []
        for c in by:
            col = self._cols[c]
            present = _sorted({x for x in col.tolist() if not is_missing(x)})
            index = {u: k for k, u in enumerate(present)}
            codes.append([len(present) if is_missing(x) else index[x] for x in col.tolist()])
            uniques.append([col.dtype.type(u) if col.dtype != object else u for u in present]
                           + [np.nan])
        out: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(*codes, strict=True)):
            out.setdefault(key, []).append(i)
        return [(tuple(u[k] for u, k in zip(uniques, key, strict=True)),
                 np.array(pos, dtype=np.intp)) for key, pos in sorted(out.items())]

    # ------------------------------------------------------------------ out
    def to_csv(self, float_format: str) -> str:
        """The table as ``DataFrame.to_csv(index=False, float_format=float_format,
        lineterminator="\\n")`` writes it: floats of float columns in ``float_format``,
        missing values empty, other values as ``str``, quoted where CSV needs it. The
        default format is :func:`starshift.io.write_table`'s, which writes tables."""
        cells = []
        for col in self._cols.values():
            if col.dtype.kind == "f":
                cells.append(["" if math.isnan(x) else float_format % x for x in col.tolist()])
            else:
                cells.append(["" if is_missing(x) else str(x) for x in col.tolist()])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(zip(*cells, strict=True) if cells else [])
        return buf.getvalue()

    def to_frame(self):
        """The table as a pandas DataFrame (imports pandas)."""
        import pandas as pd

        return pd.DataFrame({c: v for c, v in self._cols.items()}, columns=self.columns)


# --------------------------------------------------------------------------- the seed's text table
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


def seed_table(diag, max_residual: float = 0.5) -> str:
    """The seed notebook's per-frame table: name, position, shift, new shift, CHECK, status.

    ``diag`` is the diagnostics, a :class:`~starshift._table.Table` or a pandas DataFrame.
    """
    rows = diag.rows() if isinstance(diag, Table) else diag.to_dict("records")
    width = max([len("file")] + [len(str(r[C.FILE])) for r in rows])
    head = (f"{'file':<{width}} {'x':>8} {'y':>8} {'dx':>8} {'dy':>8} {'new dx':>8} "
            f"{'new dy':>8} {'check':<6} {'status':<8} reason")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r[C.FILE]:<{width}} {_num(r[C.X])} {_num(r[C.Y])} {_num(r[C.DX])} {_num(r[C.DY])} "
            f"{_num(r[C.RESIDUAL_DX])} {_num(r[C.RESIDUAL_DY])} "
            f"{check_marker(r, max_residual):<6} {r[C.STATUS]:<8} "
            f"{'' if is_missing(r[C.REASON]) else r[C.REASON]}".rstrip())
    counts = Counter(r[C.STATUS] for r in rows)
    lines.append(f"{len(rows)} frames: " + ", ".join(
        f"{int(counts.get(s, 0))} {s}" for s in C.STATUSES))
    return "\n".join(lines)
