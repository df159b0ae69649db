"""Stage functions on a small night, the DVC graph's param wiring, and the Hydra sweep."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NIGHT_SHIFTS, gaussian_frame, tiny_sweep_conf, write_fits

from starshift import columns as C
from starshift.config import compose_align
from starshift.pipeline.stages import stage_measure, stage_reject, stage_shift
from starshift.quality import star_shapes

ROOT = Path(__file__).resolve().parents[1]
BOX = ["method=box", "centroid.box_center=[80,60]", "centroid.box_size=21"]


def test_stages_chain_and_never_edit_each_others_outputs(small_night, tmp_path):
    cfg = compose_align(BOX + ["bad_frames=[f03.fit]"])
    w = tmp_path / "work"
    shifts = stage_measure(small_night, w / "shifts.csv", cfg)
    assert list(shifts[C.FILE]) == list(NIGHT_SHIFTS)
    stage_shift(small_night, w / "shifts.csv", w / "shifted", w / "residuals.csv", cfg)
    shifted_before = {p.name: p.read_bytes() for p in (w / "shifted").iterdir()}
    assert set(shifted_before) == set(NIGHT_SHIFTS)  # the shift stage keeps every frame
    diag = stage_reject(w / "residuals.csv", w / "diagnostics.csv", w / "thresholds.csv", cfg)
    # the reject stage decides from the tables: the shifted frames stay as they were, and the
    # accepted set is the kept rows (no copies of the frames)
    assert {p.name: p.read_bytes() for p in (w / "shifted").iterdir()} == shifted_before
    assert not (w / "accepted").exists()
    assert dict(zip(diag[C.FILE], diag[C.STATUS], strict=True)) == {
        "f01.fit": C.KEPT, "f02.fit": C.KEPT, "f03.fit": C.REJECTED, "f04.fit": C.KEPT}
    assert set(pd.read_csv(w / "thresholds.csv")["metric"]) >= {"residual", "fwhm"}


def test_star_shapes_catch_a_doubled_frame():
    stars = [(40.0 + 30 * i, 40.0 + 20 * (i % 3), 20000.0) for i in range(5)]
    round_frame = gaussian_frame(shape=(140, 200), stars=stars, seed=1)
    doubled = gaussian_frame(shape=(140, 200), stars=[(x, y, f / 2) for x, y, f in stars]
                             + [(x + 7, y + 5, f / 2) for x, y, f in stars], seed=1)
    pos = np.array([(x, y) for x, y, _ in stars])
    fwhm, elong, n = star_shapes(round_frame, pos)
    assert n == 5 and fwhm == pytest.approx(4.0, abs=0.3) and elong < 0.1
    fwhm2, elong2, _ = star_shapes(doubled, pos)
    assert elong2 > 0.5 and fwhm2 > 1.75 * fwhm


def test_tracking_jump_frame_is_rejected_automatically(tmp_path):
    """No hand-made bad list: a frame whose stars are doubled is rejected by its star shapes."""
    from starshift.pipeline.stages import align

    night = tmp_path / "night"
    night.mkdir()
    field = [(30.0, 30.0, 30000.0), (120.0, 40.0, 20000.0), (60.0, 90.0, 25000.0),
             (135.0, 95.0, 15000.0), (90.0, 55.0, 10000.0)]
    shifts = {"f01.fit": (0.0, 0.0), "f02.fit": (2.3, -1.4), "f03.fit": (-3.2, 2.1),
              "f04.fit": (1.6, 3.3)}
    for i, (name, (dx, dy)) in enumerate(shifts.items()):
        stars = [(x - dx, y - dy, f) for x, y, f in field]
        if name == "f03.fit":  # the mount jumped 8 px mid-exposure: every star doubled
            stars = [(x, y, f / 2) for x, y, f in stars] + [(x + 8, y + 3, f / 2)
                                                            for x, y, f in stars]
        write_fits(night / name, gaussian_frame(stars=stars, seed=i), picttype=1)
    diag = align(night, tmp_path / "o", compose_align([])).set_index(C.FILE)
    assert diag.loc["f03.fit", C.STATUS] == C.REJECTED
    assert diag.loc["f03.fit", C.ELONGATION] > 0.4
    assert list(diag.index[diag[C.STATUS] == C.KEPT]) == ["f01.fit", "f02.fit", "f04.fit"]


# --------------------------------------------------------------------------- DVC wiring
def _dvc_stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = list(repo.index.stages)
        graph = repo.index.graph
        params = {s.addressing: [k for dep in s.deps if hasattr(dep, "params")
                                 for k in dep.params] for s in stages}
        import networkx as nx

        downstream = {s.addressing: {d.addressing for d in nx.ancestors(graph, s)}
                      for s in stages}
    return params, downstream


def _params_nights():
    import yaml

    return list(yaml.safe_load((ROOT / "params.yaml").read_text())["nights"])


def _reads(keys, changed):
    return any(changed == k or changed.startswith(k + ".") for k in keys)


def test_one_nights_box_size_reruns_only_that_night_and_the_summary():
    params, downstream = _dvc_stages()
    changed = "nights.march_09_2018.centroid.box_size"
    direct = {name for name, keys in params.items() if _reads(keys, changed)}
    assert "centroid@march_09_2018" in direct
    rerun = set(direct)
    for name in direct:
        rerun |= downstream[name]
    assert rerun == {"centroid@march_09_2018", "shift@march_09_2018", "reject@march_09_2018",
                     "report@march_09_2018", "summary"}


def test_shared_setting_reruns_every_night_but_not_the_sample():
    params, downstream = _dvc_stages()
    direct = {name for name, keys in params.items() if _reads(keys, "shift.order")}
    nights = _params_nights()
    assert {n.split("@")[0] for n in direct} == {"shift", "summary"}
    assert len(direct) == len(nights) + 1
    assert not any(_reads(keys, "shift.order") for n, keys in params.items() if n == "sample")


# --------------------------------------------------------------------------- sweep
def test_sweep_multirun_writes_jobs_and_summary(small_night, tmp_path, monkeypatch):
    conf = tiny_sweep_conf(tmp_path, small_night)
    monkeypatch.chdir(tmp_path)
    from starshift.cli import main

    rc = main(["-q", "sweep", "--conf", str(conf), "-m", "night=tiny", "centroid.box_size=9,21"])
    assert rc == 0
    [sweep_dir] = list((tmp_path / "sweeps" / "tiny").iterdir())
    jobs = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert len(jobs) == 2
    summary = pd.read_csv(sweep_dir / "sweep_summary.csv")
    assert sorted(summary["box_size"]) == [9, 21]
    assert (sweep_dir / "sweep_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m21 = json.loads(next(sweep_dir.glob("*box_size=21*/metrics.json")).read_text())
    assert m21["kept"] == 4 and m21["failed"] == 0
    assert not list(sweep_dir.glob("*/*.fit"))  # frames are not written by default
