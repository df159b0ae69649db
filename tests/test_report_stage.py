"""The report and summary stages: files exist, tables hold the frames, order 0 changes nothing."""

import json

import pandas as pd
import pytest
from conftest import NIGHT_SHIFTS, stage_paths

from starshift import columns as C
from starshift.cli import STAGES
from starshift.pipeline.compose import run_stage


def _run(stage, paths):
    run_stage(stage, None if stage == "summary" else "tiny", "params.yaml",
              {k: paths[k] for k in STAGES[stage]}, progress=False)


@pytest.fixture
def reported(project, small_night):
    paths = stage_paths(project, small_night)
    pd.DataFrame({"file": list(NIGHT_SHIFTS), "dx": [v[0] for v in NIGHT_SHIFTS.values()],
                  "dy": [v[1] for v in NIGHT_SHIFTS.values()], "bad": 0,
                  "kind": "science"}).to_csv(small_night / "truth.csv", index=False)
    for stage in ("centroid", "shift", "reject", "report"):
        _run(stage, paths)
    return paths, json.loads(paths["metrics"].read_text())


def test_night_report_files_and_contents(reported):
    paths, metrics = reported
    out, pics = paths["report"], paths["plots"]
    for name in ("diagnostics.md", "diagnostics.csv", "rejected.csv", "thresholds.csv",
                 "residuals.csv", "photometry.csv", "photometry_summary.csv",
                 "box_vs_auto.csv", "box_vs_auto.md"):
        assert (out / name).is_file(), name
    for name in ("order0_vs_order1.gif", "residuals.png", "blink.gif", "quality.png",
                 "stack.png"):
        assert (pics / name).is_file(), name
    assert {p.suffix for p in pics.iterdir()} <= {".png", ".gif"}  # images only, for dvc plots
    assert sorted(p.name for p in paths["stack"].iterdir()) == ["stack_V.fits"]
    diag = pd.read_csv(out / "diagnostics.csv")
    assert list(diag[C.FILE]) == list(NIGHT_SHIFTS)
    assert {C.TRUE_DX, C.TRUE_DY} <= set(diag.columns)
    md = (out / "diagnostics.md").read_text()
    assert all(name in md for name in NIGHT_SHIFTS) and "new dx" in md
    phot = pd.read_csv(out / "photometry.csv")
    assert set(phot[C.FILE]) == set(NIGHT_SHIFTS)
    assert (phot["rel_change_order0"].dropna() == 0.0).all()
    assert len(phot["rel_change_order0"].dropna()) > 0
    assert (phot["rel_change_order1"].dropna().abs() > 0).any()
    assert metrics["max_abs_flux_change_order0"] == 0.0
    assert metrics["good_within_0.5px"] == 4 and metrics["kept"] == 4
    assert metrics["box_vs_auto_flagged"] == 0
    assert metrics["stack_fwhm_V"] == pytest.approx(metrics["frame_fwhm_V"], rel=0.15)
    import imageio.v3 as iio

    assert iio.imread(pics / "order0_vs_order1.gif", index=None).shape[0] == 4


def test_report_rerun_is_byte_identical(reported):
    paths, _ = reported
    before = {p: p.read_bytes() for d in ("report", "plots", "stack")
              for p in paths[d].iterdir()}
    before[paths["metrics"]] = paths["metrics"].read_bytes()
    _run("report", paths)
    after = {p: p.read_bytes() for d in ("report", "plots", "stack") for p in paths[d].iterdir()}
    after[paths["metrics"]] = paths["metrics"].read_bytes()
    assert after == before


def test_summary_writes_index(reported, project):
    import yaml

    paths, metrics = reported
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["nights"] = {"tiny": params["nights"]["tiny"]}  # the other nights did not run
    (project / "tiny.yaml").write_text(yaml.safe_dump(params))
    run_stage("summary", None, "tiny.yaml", {"metrics": paths["metrics"].parent,
                                             "index": paths["index"]}, progress=False)
    index = paths["index"].read_text()
    assert "## tiny" in index and "plots/tiny/order0_vs_order1.gif" in index
    assert "tiny/rejected.csv" in index and "plots/tiny/blink.gif" in index
    assert "Composed configuration" in index and "params" in index.lower()


def test_report_builders_in_workers_give_the_same_files(reported, monkeypatch):
    """The builders run side by side in worker processes, or one after the other in this
    process: every file comes out the same, byte for byte."""
    import starshift.settings

    paths, _ = reported
    outs = [paths[k] for k in ("report", "plots", "stack")]
    files = {}
    for jobs in (2, 1):
        monkeypatch.setattr(starshift.settings, "worker_count", lambda _, n=jobs: n)
        _run("report", paths)
        files[jobs] = {p: {f.name: f.read_bytes() for f in p.iterdir()} for p in outs}
        files[jobs]["metrics"] = paths["metrics"].read_bytes()
    assert files[1] == files[2]
    assert {"quality.png", "blink.gif", "stack.png", "residuals.png"} <= set(files[1][outs[1]])


def test_report_builders_raise_a_workers_error_here():
    from starshift.errors import StarshiftError
    from starshift.report.build import _Builders

    with pytest.raises(StarshiftError, match="bad frame"), _Builders(2) as b:
        b.submit(_fail, "bad frame").result()


def _fail(message):
    from starshift.errors import StarshiftError

    raise StarshiftError(message)
