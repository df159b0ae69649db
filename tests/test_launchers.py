"""Sweeps through Hydra's launchers: the jobs run elsewhere (submitit: separate processes, as on
a SLURM cluster), the sweep summary is the same as with the basic launcher, whatever ``jobs``
each job is given."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import tiny_sweep_conf

from starshift.cli import main


def _sweep(tmp_path, small_night, monkeypatch, name, *launcher) -> pd.DataFrame:
    root = tmp_path / name
    conf = tiny_sweep_conf(root, small_night)
    monkeypatch.chdir(root)
    rc = main(["-q", "sweep", "--conf", str(conf), "-m", "night=tiny", "centroid.box_size=9,21",
               *launcher])
    assert rc == 0
    [sweep_dir] = list((root / "sweeps" / "tiny").iterdir())
    return pd.read_csv(sweep_dir / "sweep_summary.csv")


def test_submitit_sweep_summary_equals_the_basic_launchers(small_night, tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    basic = _sweep(tmp_path, small_night, monkeypatch, "basic")
    submitit = _sweep(tmp_path, small_night, monkeypatch, "submitit",
                      "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                      "jobs=1")  # each job one worker process: the jobs run side by side
    assert len(basic) == 2 and sorted(basic["box_size"]) == [9, 21]
    pd.testing.assert_frame_equal(basic, submitit)
