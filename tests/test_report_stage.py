"""The report and summary stages: files exist, tables hold the frames, order 0 changes nothing."""

import json

import pandas as pd
import pytest
from conftest import NIGHT_SHIFTS
from omegaconf import OmegaConf

from starshift import columns as C
from starshift.config import ReportConfig, compose_align
from starshift.pipeline.compose import NightPaths
from starshift.pipeline.stages import stage_measure, stage_reject, stage_shift
from starshift.report.build import night_report, summary

BOX = ["method=box", "centroid.box_center=[80,60]", "centroid.box_size=21"]


@pytest.fixture
def reported(small_night, tmp_path):
    cfg = compose_align(BOX)
    paths = NightPaths("tiny", root=tmp_path / "data", reports=tmp_path / "reports")
    stage_measure(small_night, paths.shifts, cfg)
    stage_shift(small_night, paths.shifts, paths.shifted, paths.residuals, cfg)
    stage_reject(paths.shifted, paths.residuals, paths.accepted, paths.diagnostics, cfg)
    pd.DataFrame({"file": list(NIGHT_SHIFTS), "dx": [v[0] for v in NIGHT_SHIFTS.values()],
                  "dy": [v[1] for v in NIGHT_SHIFTS.values()], "bad": 0,
                  "kind": "science"}).to_csv(small_night / "truth.csv", index=False)
    rcfg = OmegaConf.structured(ReportConfig(n_stars=2, gif_size=32))
    metrics = night_report("tiny", small_night, paths, cfg, rcfg, {})
    return paths, metrics, cfg, rcfg, tmp_path


def test_night_report_files_and_contents(reported):
    paths, metrics, *_ = reported
    out = paths.report
    for name in ("diagnostics.md", "diagnostics.csv", "order0_vs_order1.gif", "residuals.png",
                 "residuals.csv", "photometry.csv", "photometry_summary.csv", "metrics.json",
                 "box_vs_auto.csv", "box_vs_auto.md"):
        assert (out / name).is_file(), name
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
    assert json.loads((out / "metrics.json").read_text()) == metrics
    import imageio.v3 as iio

    assert iio.imread(out / "order0_vs_order1.gif", index=None).shape[0] == 4


def test_report_rerun_is_byte_identical(reported):
    paths, _, cfg, rcfg, _ = reported
    before = {p.name: p.read_bytes() for p in paths.report.iterdir()}
    night_report("tiny", paths.shifted.parent.parent.parent / "night", paths, cfg, rcfg, {})
    assert {p.name: p.read_bytes() for p in paths.report.iterdir()} == before


def test_summary_writes_index_and_metrics(reported, monkeypatch):
    paths, metrics, _, rcfg, tmp_path = reported
    cfg = OmegaConf.create({"report": OmegaConf.to_container(rcfg),
                            "nights": {"tiny": {"method": "box"}}})
    cfg.report.out = str(tmp_path / "reports")
    all_metrics = summary(cfg)
    assert all_metrics == {"tiny": metrics}
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "## tiny" in index and "tiny/order0_vs_order1.gif" in index
    assert "Composed configuration" in index and "params" in index.lower()
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == {"tiny": metrics}
