"""Where frames run: the local fork pool and dask give the same outputs, byte for byte, the
same per-frame failure rows, and a wrong executor setting is one line before any frame is read.
"""

from __future__ import annotations

import sys

import pytest

import starshift.config
import starshift.night
from starshift import columns as C
from starshift import io as fio
from starshift.cli import main
from starshift.executors import Executor, ordered_map
from starshift.pipeline.stages import DIAGNOSTICS


def _cut_data(path):
    """Header intact, data cut: discovery finds the frame, the worker cannot read it."""
    path.write_bytes(path.read_bytes()[:2880 + 5000])


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_dask_writes_the_same_frames_and_diagnostics_as_one_process(small_night, tmp_path,
                                                                      capsys):
    pytest.importorskip("distributed")
    _cut_data(small_night / "f03.fit")
    one, dask = tmp_path / "one", tmp_path / "dask"
    assert main(["-q", "align", str(small_night), str(one), "executor=local", "jobs=1"]) == 0
    # a LocalCluster of two single-threaded worker processes, started for the run
    assert main(["-q", "align", str(small_night), str(dask), "executor=dask", "jobs=2"]) == 0
    assert _files(one) == _files(dask)
    diag = fio.read_table(dask / DIAGNOSTICS).set_index(C.FILE)
    assert diag.loc["f03.fit", C.STATUS] == C.FAILED  # a row, not a crash
    assert "truncated file" in diag.loc["f03.fit", C.REASON]
    assert (diag.drop("f03.fit")[C.STATUS] == C.KEPT).all()
    assert sorted(p.name for p in dask.glob("*.fit")) == ["f01.fit", "f02.fit", "f04.fit"]


@pytest.mark.parametrize("overrides, message", [
    (["executor=spark"], "starshift: error: executor=spark: use one of local, dask"),
    (["dask.address=tcp://127.0.0.1:8786"],
     "starshift: error: dask.address=tcp://127.0.0.1:8786 is set but executor=local; add "
     "executor=dask (or drop dask.address)"),
])
def test_wrong_executor_setting_is_one_line(small_night, tmp_path, capsys, overrides, message):
    assert main(["-q", "align", str(small_night), str(tmp_path / "out"), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert not (tmp_path / "out").exists()


def test_dask_without_distributed_says_what_to_install(small_night, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setattr(starshift.config, "dask_installed", lambda: False)
    assert main(["-q", "align", str(small_night), str(tmp_path / "out"), "executor=dask"]) == 2
    assert capsys.readouterr().err.strip() == (
        "starshift: error: executor=dask needs dask.distributed: pip install 'starshift[dask]'")


def test_unreachable_dask_scheduler_is_one_line_and_leaves_no_output(small_night, tmp_path,
                                                                     capsys, monkeypatch):
    """A scheduler address nobody listens at: after the connect timeout (shortened here), one
    line naming the address and what to do, exit 2, no output folder."""
    pytest.importorskip("distributed")
    import socket

    import starshift.executors

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(starshift.executors, "CONNECT_TIMEOUT", "2s")
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "out"
    assert main(["-q", "align", str(small_night), str(out), "executor=dask",
                 f"dask.address={address}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"starshift: error: dask.address={address}: cannot reach the "
                          "scheduler (")
    assert err.endswith("start one ('dask scheduler', then 'dask worker ADDRESS') or fix the "
                        "address")
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()


def _square(x):
    if x == 7:
        raise ValueError("seven")
    return x * x


@pytest.mark.parametrize("jobs", [1, 2])
def test_ordered_map_keeps_the_order_and_raises_at_the_item(jobs):
    got = ordered_map(_square, range(7), jobs)
    assert list(got) == [x * x for x in range(7)]
    with pytest.raises(ValueError, match="seven"):
        list(ordered_map(_square, range(10), jobs))


class _Probe:
    """The night's task, reporting the modules the worker imported while running it."""

    def __init__(self, task):
        self.task = task

    def __call__(self, name):
        before = set(sys.modules)
        result = self.task(name)
        return result, sorted(set(sys.modules) - before)


@pytest.mark.parametrize("overrides", [
    ["method=box", "centroid.box_center=[80,60]", "centroid.box_size=21"], ["method=auto"]],
    ids=["box", "auto"])
def test_forked_workers_import_nothing_the_run_has_not(small_night, tmp_path, monkeypatch,
                                                       overrides):
    """The workers are forked once the reference is prepared and the per-frame modules are
    imported: a worker starts warm, it imports nothing again."""
    from starshift.config import compose_align
    from starshift.pipeline.stages import align

    imported: list[str] = []
    real = starshift.night.ordered_map

    def probing(task, names, jobs, executor):
        assert jobs == 2 and (executor or Executor()).kind == "local"
        for result, new in real(_Probe(task), names, jobs, executor):
            imported.extend(new)
            yield result

    monkeypatch.setattr(starshift.night, "ordered_map", probing)
    diag = align(small_night, tmp_path / "out", compose_align([*overrides, "jobs=2"]))
    assert (diag[C.STATUS] == C.KEPT).all()
    assert imported == []
