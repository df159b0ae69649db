"""The pandas-free table of the align path (starshift._table) against pandas itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_quality import good_frames, with_bad_frames

from starshift import columns as C
from starshift._table import Table, seed_table
from starshift.config import compose_align
from starshift.errors import StarshiftError
from starshift.pipeline.stages import _align_rows, align, discover
from starshift.quality import night_rules
from starshift.settings import night_settings

#: rows with every kind of value a night's rows hold, and the awkward ones: missing keys,
#: None and NaN among numbers, booleans and text, numpy scalars, text that CSV must quote
AWKWARD = [
    {"a": 1, "b": None, "c": True, "d": "x,y", "e": np.float32(0.1), "f": float("inf"),
     "g": np.int64(4), "h": 1},
    {"a": 2.5, "c": None, "d": None, "e": np.nan, "f": -0.0, "g": 'q"t', "h": np.bool_(True)},
    {"a": None, "b": 3, "c": False, "d": 'he said "hi"\nthen left', "e": 1e20, "f": np.int64(3),
     "g": 2.0, "h": "text"},
]


def night_rows(small_night) -> list[dict]:
    """The rows ``starshift align`` decides and writes, for a small night."""
    s = night_settings(compose_align([]))
    return _align_rows(small_night, discover(small_night, s), s, None, False)


def csv(rows, columns=None, float_format="%.4f") -> tuple[str, str]:
    df = pd.DataFrame(rows) if columns is None else pd.DataFrame(rows).reindex(columns=columns)
    return (df.to_csv(index=False, float_format=float_format, lineterminator="\n"),
            Table.from_rows(rows, columns).to_csv(float_format))


@pytest.mark.parametrize("float_format", ["%.4f", "%.6g"])
def test_csv_is_byte_identical_to_pandas(small_night, float_format):
    rows = night_rows(small_night)
    for cols in (None, C.DIAGNOSTICS, ["zz", *C.SHIFTS]):
        theirs, mine = csv(rows, cols, float_format)
        assert mine == theirs
    theirs, mine = csv(AWKWARD, None, float_format)
    assert mine == theirs
    assert '"x,y"' in mine and '"q""t"' in mine  # quoted as CSV needs
    assert csv([], ["a", "b"]) == ("a,b\n", "a,b\n")


def test_columns_are_typed_as_pandas_types_them(small_night):
    for rows in (night_rows(small_night), AWKWARD):
        pd.testing.assert_frame_equal(Table.from_rows(rows).to_frame(), pd.DataFrame(rows))
    t = Table.from_rows(AWKWARD)
    assert t["a"].dtype == float and np.isnan(t["a"][2])  # a missing number: float, NaN
    assert t["c"].dtype == object and t["c"][1] is None   # a missing boolean stays missing
    assert t["b"].tolist()[0] != t["b"].tolist()[0]       # a key a row lacks is NaN
    assert t["h"].dtype == object


def test_numbers_groups_and_text_as_pandas():
    df = pd.DataFrame({
        "filter": ["V", "B", None, "V", "B", "R"],
        "exptime": [30.0, 60.0, 30.0, np.nan, 60.0, 30.0],
        "n": [3, 1, 2, 3, 1, 2],
        "mixed": ["1.5", 2, None, "x", np.nan, True],
    })
    t = Table.from_frame(df)
    for name in df.columns:
        np.testing.assert_array_equal(
            t.numeric(name), pd.to_numeric(df[name], errors="coerce").to_numpy(float))
    assert np.isnan(t.numeric("absent")).all() and len(t.numeric("absent")) == len(df)
    for by in (["filter"], ["exptime"], ["n"], ["filter", "exptime"], ["exptime", "filter"]):
        theirs = df.groupby(by, dropna=False, sort=True).indices
        mine = t.groups(by)
        assert [p.tolist() for _, p in mine] == [p.tolist() for p in theirs.values()]
        keys = [k if isinstance(k, tuple) else (k,) for k in theirs]
        label = [[f"{v}" for v in k] for k in keys]  # as the rules name a group
        assert [[f"{v}" for v in k] for k, _ in mine] == label
    assert t.strings("filter").tolist() == ["V", "B", "", "V", "B", "R"]
    # a header giving a number for some frames and text for others still groups them
    mixed = Table.from_rows([{"filter": "V"}, {"filter": 2}, {"filter": "V"}, {"filter": None}])
    assert [(k, p.tolist()) for k, p in mixed.groups(["filter"])][:2] == [((2,), [1]),
                                                                          (("V",), [0, 2])]


def test_night_rules_decide_a_table_as_a_dataframe():
    for seed in range(3):
        night, _ = with_bad_frames(good_frames(np.random.default_rng(seed)))
        night.loc[2, C.FILTER] = "B"  # a group of one
        theirs = night_rules(night, forced_bad={"f001.fit"})
        mine = night_rules(Table.from_rows(night.to_dict("records")), forced_bad={"f001.fit"})
        assert mine.status.tolist() == theirs.status.tolist()
        assert mine.reason.tolist() == theirs.reason.tolist()
        assert mine.thresholds.to_csv("%.6g") == theirs.thresholds.to_csv(
            index=False, float_format="%.6g", lineterminator="\n")


def test_seed_table_is_the_same_from_a_table_or_a_dataframe(small_night, tmp_path):
    diag = align(small_night, tmp_path / "o", compose_align([]))
    rows = diag.to_dict("records")
    assert seed_table(Table.from_rows(rows), 0.5) == seed_table(diag, 0.5)
    last = seed_table(diag, 0.5).splitlines()[-1]
    assert last == f"{len(diag)} frames: 4 kept, 0 rejected, 0 failed"


def test_starshift_align_imports_neither_pandas_nor_omegaconf(small_night, tmp_path):
    """``starshift align IN OUT`` builds, decides and writes its table without pandas, and
    runs on the schema's plain defaults without OmegaConf (0.23-0.36 s and about 0.1 s of
    import per process on the benchmark machine); with an override it composes as before."""
    def loaded(out: str, *overrides: str) -> str:
        code = ("import sys; from starshift.cli import main; "
                f"rc = main(['-q', 'align', {str(small_night)!r}, {str(tmp_path / out)!r}, "
                f"*{list(overrides)!r}]); "
                "print(rc, 'pandas' in sys.modules, 'omegaconf' in sys.modules)")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.splitlines()[-1]

    assert loaded("o") == "0 False False"
    assert loaded("p", "jobs=2") == "0 False True"
    for name in ("diagnostics.csv", "thresholds.csv", "f02.fit"):
        assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()


#: CSV columns of every kind pandas tells apart, with the awkward fields: empty ones, inf,
#: signs and exponents, booleans with a gap, integers beyond int64, text that looks numeric
CSV_COLUMNS = {
    "ints": ["1", "-2", "+3", "007", "0", "5"],
    "int_gap": ["1", "", "3", "4", "5", "6"],
    "floats": ["0.1234", "-3.5", "1e5", ".5", "5.", "1.23457e-05"],
    "inf": ["inf", "-Infinity", "", "1", "+INF", "2"],
    "bools": ["True", "False", "TRUE", "false", "true", "FALSE"],
    "bool_gap": ["True", "", "False", "True", "True", "False"],
    "text": ["kept", "", "rejected", "a,b", 'say "x"', "failed"],
    "nanlike": ["nan", "1", "NaN", "2", "-nan", "3"],
    "numberish": ["1_000", "0x10", "1", "2", "3", "4"],
    "empty": ["", "", "", "", "", ""],
    "huge": ["99999999999999999999", "1", "2", "3", "4", "5"],
}


def _csv_text(columns: dict[str, list[str]]) -> str:
    import csv as _csv
    import io

    buf = io.StringIO()
    w = _csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(zip(*columns.values(), strict=True))
    return buf.getvalue()


def test_from_csv_types_and_values_as_pandas_read_csv(small_night, tmp_path):
    import io

    from starshift import io as fio

    def pandas(text: str) -> pd.DataFrame:
        return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])

    def same(text: str) -> None:
        mine, theirs = Table.from_csv(text), pandas(text)
        assert mine.columns == list(theirs.columns)
        for c in mine.columns:
            kind = theirs[c].dtype.kind if theirs[c].dtype.kind in "biuf" else "O"
            assert mine[c].dtype.kind == kind, c
        assert repr(mine.rows()) == repr(theirs.to_dict("records"))  # values and their types

    same(_csv_text(CSV_COLUMNS))
    same("a,b\n")                       # no rows
    same("a\n1\n\n2\n")                 # a blank line is skipped
    same(_csv_text({"x": [" 1.5", "2 "]}))
    # the tables the stages write, read back: the same rows as pandas reads, bit for bit
    diag = align(small_night, tmp_path / "o", compose_align([]))
    for name in ("diagnostics.csv", "thresholds.csv"):
        path = tmp_path / "o" / name
        mine, theirs = fio.read_rows(path), fio.read_table(path)
        assert repr(mine.rows()) == repr(theirs.to_dict("records"))
        assert mine.to_csv("%.4f") == theirs.to_csv(index=False, float_format="%.4f",
                                                     lineterminator="\n")
    assert len(diag) == len(fio.read_rows(tmp_path / "o" / "diagnostics.csv"))
    for bad in ("a,b\n1\n", "a,a\n1,2\n", ""):
        with pytest.raises(ValueError):
            Table.from_csv(bad)
    (tmp_path / "bad.csv").write_text("a,b\n1,2,3\n")
    with pytest.raises(StarshiftError, match="not a readable CSV table"):
        fio.read_rows(tmp_path / "bad.csv")
