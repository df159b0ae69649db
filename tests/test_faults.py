"""Fault injection (issue #11): no frame silently lost, no stale or mixed output, no traceback,
metadata that stays true.

Every case runs ``starshift align`` (in process through :func:`starshift.cli.main`, or as a
subprocess where a process must die) on a small synthetic night with one fault injected, and
checks the promise: a frame that cannot be used gets a ``failed`` row with its reason and the
run goes on; a user error is one line ``starshift: error: ...`` naming the file or key, exit 2,
before any frame is read; the output folder holds exactly one run's outputs; headers stay
true (WCS, stale keywords, no NaN, no timestamps).
"""

from __future__ import annotations

import errno
import io as pyio
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from conftest import NIGHT_SHIFTS, gaussian_frame, write_fits

from starshift import columns as C
from starshift import io as fio
from starshift.cli import main
from starshift.config import compose_align
from starshift.headers import shifted_header
from starshift.pipeline import stages

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
LIGHT = {"picttype": 1, "imagetyp": "Light Frame", "filter": "V", "exptime": 30.0}
#: a star field for the nights that need many stars (star shapes, WCS, the kill loop)
SHAPE = (150, 200)
_rng = np.random.default_rng(5)
FIELD = [(float(_rng.uniform(15, 185)), float(_rng.uniform(15, 135)),
          float(_rng.uniform(5000, 40000))) for _ in range(25)]


# --------------------------------------------------------------------------- helpers
def align(capsys, night, out, *overrides) -> tuple[int, str]:
    """``starshift -q align night out overrides...``: exit code and stderr (no traceback)."""
    code = main(["-q", "align", str(night), str(out), *overrides])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip()


def one_line_error(capsys, night, out, *overrides, names=()) -> str:
    """Run, expect exit 2 and one ``starshift: error:`` line naming each of ``names``."""
    code, err = align(capsys, night, out, *overrides)
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("starshift: error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    for name in names:
        assert str(name) in errors[0], errors[0]
    return errors[0]


def diagnostics(out) -> pd.DataFrame:
    return pd.read_csv(Path(out) / "diagnostics.csv", keep_default_na=False,
                       na_values=[""]).set_index(C.FILE)


def tree(folder) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_run(out) -> pd.DataFrame:
    """``out`` holds one run: exactly the kept frames of its diagnostics, one params hash."""
    diag = diagnostics(out)
    kept = {fio.output_name(f) for f in diag.index[diag[C.STATUS] == C.KEPT]}
    frames = {k for k in tree(out) if not k.endswith(".csv")}
    assert frames == kept
    hashes = {fits.getheader(Path(out) / f)["SSPHASH"] for f in frames}
    assert len(hashes) <= 1
    return diag


def assert_no_leftovers(parent, expected) -> None:
    """The parent folder holds exactly ``expected`` (no staging, swap or lock leftovers)."""
    assert sorted(p.name for p in Path(parent).iterdir()) == sorted(expected)


def assert_cards_true(header) -> None:
    """No NaN or infinite number in any header card."""
    for card in header.cards:
        if isinstance(card.value, float):
            assert math.isfinite(card.value), card


def field_night(d, shifts, *, seed=0, header=None, trail=(), nan_fraction=0.0, blank=False):
    """A night of ``FIELD`` frames: name -> true shift (ref - frame); ``trail`` frames trailed
    8 px; ``nan_fraction`` of the pixels NaN (or, with ``blank``, BLANK in int16 frames)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    for i, (name, (dx, dy)) in enumerate(shifts.items()):
        stars = [(x - dx, y - dy, f) for x, y, f in FIELD]
        if name in trail:
            stars = [(x + t, y, f / 7) for x, y, f in stars for t in np.linspace(0, 8, 7)]
        data = gaussian_frame(shape=SHAPE, stars=stars, fwhm=3.0, seed=seed + i)
        bad = np.random.default_rng(100 + i).random(SHAPE) < nan_fraction
        cards = {**LIGHT, **(header(dx, dy) if header else {})}
        if blank:
            values = np.round(data).astype(np.int16)
            values[bad] = -32768
            hdr = fits.Header([(k.upper(), v) for k, v in cards.items()])
            hdr["BLANK"] = -32768
            fits.PrimaryHDU(values, hdr).writeto(d / name)
        else:
            data[bad] = np.nan
            write_fits(d / name, data, **cards)
    return d


@pytest.fixture
def frames_read(monkeypatch):
    """The frames read (their data) during the test: a user error must come before any."""
    calls = []
    real = fio.read_frame

    def counted(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(fio, "read_frame", counted)
    return calls


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "import sys; from starshift.cli import main; sys.exit(main())",
            "-q", *map(str, args)]


# --------------------------------------------------------------------------- unreadable frames
def _empty(p):
    p.write_bytes(b"")


def _header_cut(p):
    p.write_bytes(p.read_bytes()[:400])  # mid-header: no END card


def _not_fits(p):
    p.write_bytes(b"this is a text file, not a FITS image\n" * 100)


def _data_cut(p):
    p.write_bytes(p.read_bytes()[:2880 + 5000])


def _cube(p):
    write_fits(p.with_name("cube.tmp"), np.ones((2, 120, 160)), **LIGHT)
    os.replace(p.with_name("cube.tmp"), p)


def _no_permission(p):
    os.chmod(p, 0)


UNREADABLE = [
    pytest.param(_empty, "empty file", id="zero-bytes"),
    pytest.param(_header_cut, "truncated FITS header", id="truncated-header"),
    pytest.param(_not_fits, "not a readable FITS file", id="not-fits"),
    pytest.param(_data_cut, "truncated file", id="truncated-data"),
    pytest.param(_cube, "no 2-D image", id="3d-cube"),
    pytest.param(_no_permission, "no permission", id="chmod-000",
                 marks=pytest.mark.skipif(ROOT_USER, reason="root reads a chmod 000 file")),
]


@pytest.mark.parametrize("damage, reason", UNREADABLE)
def test_unreadable_frame_gets_a_failed_row_and_the_run_goes_on(small_night, tmp_path, capsys,
                                                                 damage, reason):
    damage(small_night / "f03.fit")
    code, _ = align(capsys, small_night, tmp_path / "out")
    assert code == 0
    diag = assert_one_run(tmp_path / "out")
    assert list(diag.index) == list(NIGHT_SHIFTS)  # no frame silently lost
    assert diag.loc["f03.fit", C.STATUS] == C.FAILED
    assert reason in diag.loc["f03.fit", C.REASON]
    assert (diag.drop("f03.fit")[C.STATUS] == C.KEPT).all()
    assert not (tmp_path / "out" / "f03.fit").exists()


def test_unreadable_frame_simulated_permission_error(small_night, tmp_path, capsys, monkeypatch):
    """chmod 000 does not stop root: the same refusal, raised by the file system call."""
    real_open = open

    def no_permission(file, *args, **kwargs):
        if Path(str(file)).name == "f02.fit" and Path(str(file)).parent == small_night:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(fio, "open", no_permission, raising=False)
    code, _ = align(capsys, small_night, tmp_path / "out")
    assert code == 0
    diag = diagnostics(tmp_path / "out")
    assert diag.loc["f02.fit", C.STATUS] == C.FAILED
    assert "no permission" in diag.loc["f02.fit", C.REASON]
    assert (diag.drop("f02.fit")[C.STATUS] == C.KEPT).all()


@pytest.mark.parametrize("damage, reason", UNREADABLE)
def test_unreadable_reference_is_an_error_naming_it(small_night, tmp_path, capsys, damage,
                                                    reason):
    damage(small_night / "f01.fit")
    one_line_error(capsys, small_night, tmp_path / "out", names=["f01.fit", "reference"])
    assert_no_leftovers(tmp_path, ["night"])  # no output at all


def test_frame_of_another_size_fails_alone(small_night, tmp_path, capsys):
    write_fits(small_night / "f05.fit", gaussian_frame(shape=(100, 100)), **LIGHT)
    assert align(capsys, small_night, tmp_path / "out")[0] == 0
    diag = assert_one_run(tmp_path / "out")
    assert diag.loc["f05.fit", C.STATUS] == C.FAILED and "shape" in diag.loc["f05.fit", C.REASON]


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_reference_without_finite_pixels_is_an_error(small_night, tmp_path, capsys, fill):
    with fits.open(small_night / "f01.fit", mode="update") as h:
        h[0].data[:] = fill
    one_line_error(capsys, small_night, tmp_path / "out", names=["f01.fit", "reference"])
    assert_no_leftovers(tmp_path, ["night"])


def test_frame_without_finite_pixels_fails_alone(small_night, tmp_path, capsys):
    with fits.open(small_night / "f02.fit", mode="update") as h:
        h[0].data[:] = np.nan
    assert align(capsys, small_night, tmp_path / "out")[0] == 0
    diag = assert_one_run(tmp_path / "out")
    assert diag.loc["f02.fit", C.STATUS] == C.FAILED
    assert (diag.drop("f02.fit")[C.STATUS] == C.KEPT).all()


def test_reference_too_small_is_an_error(tmp_path, capsys):
    d = tmp_path / "tiny"
    d.mkdir()
    for name in ("a.fit", "b.fit"):
        write_fits(d / name, gaussian_frame(shape=(10, 10), stars=((5, 5, 1000),)), **LIGHT)
    one_line_error(capsys, d, tmp_path / "out", names=["a.fit", "reference"])


# --------------------------------------------------------------------------- header values
def _raw_card(path, keyword, image):
    """Replace the card ``keyword`` of a FITS file by the raw 80-byte ``image`` (non-standard
    values astropy would refuse to write)."""
    raw = path.read_bytes()
    at = next(i for i in range(0, 2880 * 4, 80) if raw[i:i + 8].rstrip() == keyword.encode())
    path.write_bytes(raw[:at] + image.ljust(80).encode() + raw[at + 80:])


HEADER_FAULTS = [
    pytest.param({"EXPTIME": ""}, None, id="exptime-empty"),
    pytest.param({"EXPTIME": "thirty"}, None, id="exptime-word"),
    pytest.param({"XOFFSET": "left"}, None, id="xoffset-word"),
    pytest.param({"YOFFSET": True}, None, id="yoffset-bool"),
    pytest.param({"SATURATE": "high"}, None, id="saturate-word"),
    pytest.param({"CRPIX1": "centre", "CRPIX2": 60.0}, None, id="crpix-word"),
    pytest.param({"FILTER": 7}, None, id="filter-number"),
    pytest.param({}, "EXPTIME =                  NAN / not FITS", id="exptime-raw-nan"),
    pytest.param({}, "EXPTIME = 30.0.0 / not a number", id="exptime-raw-garbage"),
]


@pytest.mark.parametrize("cards, raw", HEADER_FAULTS)
def test_header_value_of_the_wrong_type_never_crashes(small_night, tmp_path, capsys, cards,
                                                      raw):
    path = small_night / "f02.fit"
    with fits.open(path, mode="update") as h:
        for key, value in cards.items():
            h[0].header[key] = value
    if raw:
        _raw_card(path, "EXPTIME", raw)
    assert align(capsys, small_night, tmp_path / "out")[0] == 0
    diag = assert_one_run(tmp_path / "out")
    assert diag.loc["f02.fit", C.STATUS] == C.KEPT
    header = fits.getheader(tmp_path / "out" / "f02.fit")
    assert_cards_true(header)
    assert header["XOFFSET"] == diag.loc["f02.fit", C.APPLIED_DX]  # a word is replaced
    assert isinstance(header["YOFFSET"], float)


def test_non_ascii_file_and_folder_names(small_night, tmp_path, capsys):
    night = tmp_path / "nuit_étoilée"
    shutil.copytree(small_night, night)
    os.rename(night / "f01.fit", night / "ñ01.fit")  # the reference (named below)
    os.rename(night / "f02.fit", night / "été_02.fit")
    out = tmp_path / "sortie_ß"
    # Hydra's grammar wants a non-ASCII value quoted: unquoted, one line says so
    assert "KEY='VALUE'" in one_line_error(capsys, night, out, "reference=ñ01.fit")
    assert align(capsys, night, out, "reference='ñ01.fit'")[0] == 0
    diag = assert_one_run(out)
    assert (diag[C.STATUS] == C.KEPT).all() and "été_02.fit" in diag.index
    header = fits.getheader(out / "été_02.fit")
    header.tostring().encode("ascii")  # every card ASCII
    assert "01.fit" in header["SSREF"]
    assert align(capsys, night, out, "reference='ñ01.fit'")[0] == 0  # rerun replaces it


# --------------------------------------------------------------------------- configuration
CONFIG_ERRORS = [
    ("reject.max_residual=nan", "reject.max_residual"),
    ("reject.max_sigma=nan", "reject.max_sigma"),
    ("reject.max_elongation=nan", "reject.max_elongation"),
    ("reject.max_fwhm_ratio=nan", "reject.max_fwhm_ratio"),
    ("reject.max_residual=inf", "reject.max_residual"),
    ("reject.max_residual=-1", "reject.max_residual"),
    ("reject.max_elongation=1.5", "reject.max_elongation"),
    ("+reject.max_residul=0.01", "reject.max_residul"),
    ("reject.max_residul=0.01", "max_residul"),
    ("+foo=1", "foo"),
    ("centroid.box_center=[nan,nan]", "centroid.box_center"),
    ("centroid.box_center=[inf,3]", "centroid.box_center"),
    ("centroid.box_center=[1,2,3]", "centroid.box_center"),
    ("shift.fill=1.2.3", "shift.fill"),
    ("shift.fill=inf", "shift.fill"),
    ("shift.fill=1e39", "shift.fill"),
    ("shift.order=2", "shift.order"),
    ("shift.order=1.5", "shift.order"),
    ("auto.coarse_bin=-1", "auto.coarse_bin"),
    ("auto.n_stars=0", "auto.n_stars"),
    ("auto.max_shift_fraction=0", "auto.max_shift_fraction"),
    ("auto.max_shift_fraction=2", "auto.max_shift_fraction"),
    ("auto.fwhm=nan", "auto.fwhm"),
    ("auto.gain=-1", "auto.gain"),
    ("~method", "method"),
    ("~shift", "shift"),
    ("method=magic", "method"),
    ("method=null", "method"),
    ("method=${oops}", "oops"),
    ("bad_frames=abc", "bad_frames"),
    ("jobs=-1", "jobs"),
    ("=1", "override"),
]


@pytest.mark.parametrize("override, key", CONFIG_ERRORS)
def test_config_error_is_one_line_before_any_frame_is_read(small_night, tmp_path, capsys,
                                                           frames_read, override, key):
    one_line_error(capsys, small_night, tmp_path / "out", override, names=[key])
    assert frames_read == []
    assert_no_leftovers(tmp_path, ["night"])


def test_box_method_nan_box_is_a_config_error(small_night, tmp_path, capsys, frames_read):
    one_line_error(capsys, small_night, tmp_path / "out", "method=box",
                   "centroid.box_center=[nan,nan]", names=["centroid.box_center"])
    assert frames_read == []


def test_nan_fill_keyword_still_means_nan_fill(small_night, tmp_path, capsys):
    assert compose_align(["shift.fill=nan"]).shift.fill == "nan"
    assert align(capsys, small_night, tmp_path / "out", "shift.fill=nan")[0] == 0
    assert_cards_true(fits.getheader(tmp_path / "out" / "f02.fit"))


# --------------------------------------------------------------------------- output folders
@pytest.fixture
def measured(monkeypatch):
    """Frames measured during the test (the aligner's estimate, or the box centroid)."""
    from starshift import night

    calls = []
    for name in ("estimate_shift", "box_centroid"):
        real = getattr(night, name)
        monkeypatch.setattr(night, name,
                            lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    return calls


def test_output_path_that_is_a_file(small_night, tmp_path, capsys, frames_read, measured):
    (tmp_path / "out").write_text("mine")
    one_line_error(capsys, small_night, tmp_path / "out", names=["out", "file"])
    assert frames_read == [] and measured == []
    assert (tmp_path / "out").read_text() == "mine"


def test_read_only_output_folder(small_night, tmp_path, capsys, frames_read, measured,
                                 monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    if ROOT_USER:  # root writes anywhere: a read-only file system, simulated
        real_open, real_mkdir = os.open, os.mkdir

        def inside(path):
            return Path(os.fsdecode(path)).resolve().is_relative_to(parent.resolve())

        def ro_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
            return real_open(path, flags, *args, **kwargs)

        def ro_mkdir(path, *args, **kwargs):
            if inside(path):
                raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", ro_open)
        monkeypatch.setattr(os, "mkdir", ro_mkdir)
    else:
        parent.chmod(0o555)
    try:
        one_line_error(capsys, small_night, parent / "out", names=["out", "writable"])
    finally:
        parent.chmod(0o755)
    assert frames_read == [] and measured == []
    assert list(parent.iterdir()) == []


def test_full_disk_is_refused_before_measuring(small_night, tmp_path, capsys, frames_read,
                                               measured, monkeypatch):
    align(capsys, small_night, tmp_path / "out")
    before = tree(tmp_path / "out")
    frames_read.clear()
    measured.clear()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage._replace(free=100_000))  # < 4 frames of 160 x 120
    one_line_error(capsys, small_night, tmp_path / "out", names=["out", "free"])
    assert frames_read == [] and measured == []
    assert tree(tmp_path / "out") == before
    assert_no_leftovers(tmp_path, ["night", "out"])


def test_disk_full_while_writing_keeps_the_previous_output(small_night, tmp_path, capsys,
                                                           monkeypatch):
    align(capsys, small_night, tmp_path / "out")
    before = tree(tmp_path / "out")
    real_open = open

    class Full(pyio.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith(".tmp"):
            real_open(file, mode).close()
            return Full()
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(fio, "open", full_disk, raising=False)
    one_line_error(capsys, small_night, tmp_path / "out", "shift.order=1",
                   names=["No space left"])
    assert tree(tmp_path / "out") == before
    assert_no_leftovers(tmp_path, ["night", "out"])


def test_rerun_after_an_input_is_deleted(small_night, tmp_path, capsys):
    out = tmp_path / "out"
    align(capsys, small_night, out)
    (small_night / "f03.fit").unlink()
    align(capsys, small_night, out)
    align(capsys, small_night, tmp_path / "clean")
    assert tree(out) == tree(tmp_path / "clean")
    assert "f03.fit" not in assert_one_run(out).index


def test_another_night_into_the_same_folder(small_night, tmp_path, capsys):
    other = field_night(tmp_path / "other", {"g1.fit": (0, 0), "g2.fit": (2.4, -1.3)})
    out = tmp_path / "out"
    align(capsys, small_night, out)
    align(capsys, other, out)
    align(capsys, other, tmp_path / "clean")
    assert tree(out) == tree(tmp_path / "clean")
    assert set(assert_one_run(out).index) == {"g1.fit", "g2.fit"}


def test_folder_with_someone_elses_files_is_not_replaced(small_night, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("keep me")
    one_line_error(capsys, small_night, tmp_path / "out", names=["out", "diagnostics.csv"])
    assert (tmp_path / "out" / "thesis.tex").read_text() == "keep me"


def test_concurrent_run_into_the_same_folder_is_refused(small_night, tmp_path, capsys):
    out = tmp_path / "out"
    with fio.output_folder(out, marker=stages.DIAGNOSTICS):  # another run, still writing
        one_line_error(capsys, small_night, out, names=["out", "another starshift run"])
    assert align(capsys, small_night, out)[0] == 0  # once it is done, the folder is free
    assert_no_leftovers(tmp_path, ["night", "out"])


def _forked_align(night, out, *overrides, stderr=None) -> multiprocessing.Process:
    """``starshift align`` in a forked process (starts at once: its modules are loaded), so
    that signals land in the work, not in the interpreter's start-up."""
    def target():
        if stderr is not None:
            sys.stderr = open(stderr, "w")  # noqa: SIM115 (the process exits)
        code = main(["-q", "align", str(night), str(out), *overrides])
        sys.stderr.flush()
        os._exit(code)

    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    return proc


def _wait_for(path, proc, timeout=30.0) -> bool:
    """Wait until ``path`` exists while ``proc`` runs; False when it ended first."""
    end = time.monotonic() + timeout
    while not Path(path).exists():
        alive = proc.is_alive() if hasattr(proc, "is_alive") else proc.poll() is None
        if not alive or time.monotonic() > end:
            return False
        time.sleep(0.0005)
    return True


def test_second_process_refused_while_the_first_writes(small_night, tmp_path, capsys):
    out = tmp_path / "out"
    first = _forked_align(small_night, out, "shift.order=3")
    if not _wait_for(fio.run_folders(out)[1], first):
        pytest.skip("the first run finished before the second could start")
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run
    try:
        one_line_error(capsys, small_night, out, names=["another starshift run"])
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.join(30)
    assert first.exitcode == 0
    assert_one_run(out)


def test_leftovers_of_a_killed_run_are_removed(small_night, tmp_path, capsys):
    out = tmp_path / "out"
    align(capsys, small_night, out)
    out_path, staging, old = fio.run_folders(out)
    staging.mkdir()
    (staging / ".f02.fit.x1y2.tmp").write_bytes(b"half a frame")
    old.mkdir()
    (old / "f09.fit").write_bytes(b"stale")
    (tmp_path / ".out.lock").write_bytes(b"")
    align(capsys, small_night, out, "shift.order=1")
    assert_no_leftovers(tmp_path, ["night", "out"])
    assert_one_run(out)


def _die_at(step: str, night, out):
    """Child process: run align and die like kill -9 at ``step`` of the folder swap."""
    real_rename, real_rmtree = os.rename, shutil.rmtree
    count = {"n": 0}

    def rename(src, dst):
        count["n"] += 1
        if step == f"rename{count['n']}":
            os._exit(9)
        return real_rename(src, dst)

    def rmtree(path, *args, **kwargs):
        if step == "rmtree" and Path(path).name.endswith(".old"):
            os._exit(9)
        return real_rmtree(path, *args, **kwargs)

    os.rename, shutil.rmtree = rename, rmtree
    sys.exit(main(["-q", "align", str(night), str(out), "shift.order=3"]))


@pytest.fixture(scope="module")
def order3_tree(tmp_path_factory):
    """What a clean ``shift.order=3`` run of ``small_night`` writes (bytes do not depend on
    the folders' paths)."""
    from conftest import small_night as make_night

    night = make_night.__wrapped__(tmp_path_factory.mktemp("order3"))
    out = night.parent / "out"
    assert main(["-q", "align", str(night), str(out), "shift.order=3"]) == 0
    return tree(out)


@pytest.mark.parametrize("step", ["rename1", "rename2", "rmtree"])
def test_kill_during_the_swap_leaves_one_run(small_night, tmp_path, capsys, order3_tree, step):
    out = tmp_path / "out"
    align(capsys, small_night, out)
    order0, order3 = tree(out), order3_tree
    child = multiprocessing.get_context("fork").Process(target=_die_at,
                                                        args=(step, small_night, out))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    if out.exists():  # one whole run, never a mix
        assert tree(out) in (order0, order3)
    align(capsys, small_night, out, "shift.order=3")
    assert tree(out) == order3
    assert_no_leftovers(tmp_path, ["night", "out"])


def test_killed_rerun_with_other_settings_leaves_the_previous_run(small_night, tmp_path,
                                                                  capsys):
    """``starshift`` itself, as a subprocess, killed with SIGKILL while it writes."""
    out = tmp_path / "out"
    align(capsys, small_night, out, "shift.order=0")
    order0 = tree(out)
    proc = subprocess.Popen(_cli("align", small_night, out, "shift.order=3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(fio.run_folders(out)[1], proc)
    proc.kill()
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the rerun finished before it could be killed")
    assert tree(out) == order0  # the killed rerun changed nothing
    align(capsys, small_night, out, "shift.order=3")
    align(capsys, small_night, tmp_path / "clean", "shift.order=3")
    assert tree(out) == tree(tmp_path / "clean")
    assert {fits.getheader(out / f)["SSORDER"] for f in tree(out) if f.endswith(".fit")} == {3}
    assert_no_leftovers(tmp_path, ["night", "out", "clean"])


def test_kill_loop_then_rerun_equals_a_clean_run(tmp_path, capsys):
    """SIGKILL (and SIGTERM) at seeded random moments spanning the run, many times; the rerun
    to completion equals a clean run byte for byte (made seconds earlier: no timestamps), and
    the parent folder holds nothing else. The first kills hit ``starshift`` subprocesses
    (start-up included), the others forked runs, whose whole time is the work."""
    night = field_night(tmp_path / "night", {f"k{i}.fit": (0.7 * i, -0.4 * i) for i in range(6)})
    clean, parent = tmp_path / "clean", tmp_path / "runs"
    start = time.perf_counter()
    subprocess.run(_cli("align", night, clean, "shift.order=1"), check=True,
                   capture_output=True)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    align(capsys, night, tmp_path / "clean2", "shift.order=1")
    work = time.perf_counter() - start
    assert tree(tmp_path / "clean2") == tree(clean)
    out = parent / "out"
    rng = random.Random(11)
    outcomes = set()
    staging = fio.run_folders(out)[1]
    for i in range(14):
        sig = signal.SIGTERM if i % 4 == 3 else signal.SIGKILL
        stale = staging.exists()  # a killed run's: the next run to get that far removes it
        if i < 2:
            proc = subprocess.Popen(_cli("align", night, out, "shift.order=1"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.3, 1.05) * startup)
            proc.send_signal(sig)
            err = proc.communicate(timeout=30)[1].decode()
            code = proc.returncode
        else:
            log = tmp_path / f"err{i}.txt"
            proc = _forked_align(night, out, "shift.order=1", stderr=log)
            time.sleep(rng.uniform(0.0, 1.1) * work)
            os.kill(proc.pid, sig)
            proc.join(30)
            code = proc.exitcode
            err = log.read_text() if log.exists() else ""
        assert "Traceback" not in err, err[-1500:]  # (the end names the exception)
        assert code in (0, -signal.SIGKILL, 143, -signal.SIGTERM), (code, err[-1500:])
        if code == 143 and not stale:  # SIGTERM is cleaned up at once, like Ctrl-C
            assert not staging.exists()
        outcomes.add(code)
        if out.exists():
            assert tree(out) == tree(clean)  # only ever a whole run
    assert -signal.SIGKILL in outcomes  # the loop did kill runs mid-way
    assert align(capsys, night, out, "shift.order=1")[0] == 0
    assert tree(out) == tree(clean)
    assert_no_leftovers(parent, ["out"])


def _holders(folder) -> set[int]:
    """Processes with a file open below ``folder`` (Linux /proc)."""
    found = set()
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd).startswith(str(folder)) for fd in fds.iterdir()):
                found.add(int(fds.parent.name))
        except OSError:  # gone, or not ours to look at
            continue
    return found


def _alive_children(pid: int) -> set[int]:
    """Running (not zombie) child processes of ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _running(pids) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, PR_SET_PDEATHSIG")
def test_kill_9_leaves_no_worker_holding_the_folder(tmp_path, capsys):
    """The night loop's worker processes die with the run: none is left holding the output
    folder's lock (which would refuse every later run) or writing into a later staging."""
    night = field_night(tmp_path / "night", {f"k{i}.fit": (0.5 * i, 0.3 * i) for i in range(8)})
    parent = tmp_path / "runs"
    out = parent / "out"
    proc = _forked_align(night, out, "jobs=2", "shift.order=3")
    staging = fio.run_folders(out)[1]
    end = time.monotonic() + 30
    while not any(staging.glob("*.fit")) and proc.is_alive() and time.monotonic() < end:
        time.sleep(0.0005)  # the workers are writing frames
    workers = _alive_children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    end = time.monotonic() + 5
    while (_holders(parent) or _running(workers)) and time.monotonic() < end:
        time.sleep(0.01)
    assert workers  # (the run had workers to kill)
    assert not _running(workers) and not _holders(parent)
    assert align(capsys, night, out, "jobs=2")[0] == 0
    assert_one_run(out)
    assert_no_leftovers(parent, ["out"])


def test_sigterm_cleans_up_and_exits_143(small_night, tmp_path):
    out, log = tmp_path / "out", tmp_path / "err.txt"
    proc = _forked_align(small_night, out, "shift.order=3", stderr=log)
    if not _wait_for(fio.run_folders(out)[1], proc):
        pytest.skip("the run finished before SIGTERM")
    proc.terminate()
    proc.join(30)
    err = log.read_text()
    assert proc.exitcode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "starshift: interrupted"
    assert_no_leftovers(tmp_path, ["night", "err.txt"])


# --------------------------------------------------------------------------- inputs
def test_frames_in_subfolders(small_night, tmp_path, capsys):
    night = tmp_path / "nested"
    for i, name in enumerate(NIGHT_SHIFTS):
        (night / f"set{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(small_night / name, night / f"set{i % 2}" / name)
    assert align(capsys, night, tmp_path / "out", "glob='*/*.fit'")[0] == 0
    diag = assert_one_run(tmp_path / "out")
    assert list(diag.index) == ["set0/f01.fit", "set0/f03.fit", "set1/f02.fit", "set1/f04.fit"]
    assert (tmp_path / "out" / "set1" / "f02.fit").is_file()


@pytest.mark.parametrize("glob", ["**/*.fit", "*.fit,*/*.fit"])
def test_output_folder_inside_the_input_is_never_read_as_input(small_night, tmp_path, capsys,
                                                              glob):
    night = tmp_path / "nested"
    (night / "raw").mkdir(parents=True)
    for name in NIGHT_SHIFTS:
        shutil.copy(small_night / name, night / ("raw" if "**" in glob else "") / name)
    out = night / "aligned"
    assert align(capsys, night, out, f"glob='{glob}'")[0] == 0
    before = tree(out)
    one_line_error(capsys, night, out, f"glob='{glob}'", names=["aligned", "glob"])
    assert tree(out) == before


def _gzip(path):
    import gzip

    with gzip.open(path.with_name(path.name + ".gz"), "wb") as g:
        g.write(path.read_bytes())
    path.unlink()


def _fpack(path):
    with fits.open(path) as h:
        data, header = h[0].data, h[0].header.copy()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header, compression_type="GZIP_2",
                                                       quantize_level=0.0)]  # lossless
                 ).writeto(path.with_name(path.name + ".fz"))
    path.unlink()


def test_compressed_frames_are_read_and_written_plain(small_night, tmp_path, capsys):
    plain = tmp_path / "plain"
    align(capsys, small_night, plain)
    for p in small_night.glob("*.fit"):
        p.rename(p.with_suffix(".fits"))
    _gzip(small_night / "f02.fits")
    _fpack(small_night / "f03.fits")
    out = tmp_path / "out"
    assert align(capsys, small_night, out)[0] == 0
    diag = assert_one_run(out)
    assert list(diag.index) == ["f01.fits", "f02.fits.gz", "f03.fits.fz", "f04.fits"]
    assert (diag[C.STATUS] == C.KEPT).all()
    assert sorted(p.name for p in out.glob("*.fits")) == ["f01.fits", "f02.fits", "f03.fits",
                                                          "f04.fits"]
    for name in ("f02", "f03"):  # the same pixels as from the uncompressed input
        np.testing.assert_array_equal(fits.getdata(out / f"{name}.fits"),
                                      fits.getdata(plain / f"{name}.fit"))
        with open(out / f"{name}.fits", "rb") as fh:
            assert fh.read(6) == b"SIMPLE"


def test_compressed_and_plain_copies_of_a_frame_collide(small_night, tmp_path, capsys,
                                                       frames_read):
    shutil.copy(small_night / "f02.fit", small_night / "f02.fit.gz.tmp")
    _gzip(small_night / "f02.fit.gz.tmp")
    os.rename(small_night / "f02.fit.gz.tmp.gz", small_night / "f02.fit.gz")
    one_line_error(capsys, small_night, tmp_path / "out", names=["f02.fit", "f02.fit.gz"])
    assert frames_read == []


# --------------------------------------------------------------------------- metadata
def tan_cards(crpix, cd=((-1.1e-4, 2.0e-5), (1.8e-5, 1.05e-4))):
    return {"ctype1": "RA---TAN", "ctype2": "DEC--TAN", "crval1": 154.4, "crval2": -46.41,
            "crpix1": float(crpix[0]), "crpix2": float(crpix[1]), "cd1_1": cd[0][0],
            "cd1_2": cd[0][1], "cd2_1": cd[1][0], "cd2_2": cd[1][1]}


WCS_SHIFTS = {"w1.fit": (0.0, 0.0), "w2.fit": (3.37, -2.61), "w3.fit": (-5.18, 4.42)}


@pytest.mark.parametrize("order", [0, 1])
def test_wcs_moves_with_the_data(tmp_path, capsys, order):
    # a sky point at reference pixel p is at p - shift in a frame: CRPIX moves the same way
    night = field_night(tmp_path / "night", WCS_SHIFTS,
                        header=lambda dx, dy: tan_cards((100.5 - dx, 75.5 - dy)))
    out = tmp_path / "out"
    assert align(capsys, night, out, f"shift.order={order}")[0] == 0
    diag = assert_one_run(out)
    ref = WCS(fits.getheader(night / "w1.fit"))
    for name, (tdx, tdy) in WCS_SHIFTS.items():
        header = fits.getheader(out / name)
        adx, ady = header["XOFFSET"], header["YOFFSET"]  # the applied shift, full precision
        assert (adx, ady) == pytest.approx((diag.loc[name, C.APPLIED_DX],
                                            diag.loc[name, C.APPLIED_DY]), abs=1e-4)
        assert (adx == round(adx)) == (order == 0 or name == "w1.fit")
        w_in, w_out = WCS(fits.getheader(night / name)), WCS(header)
        # stars of the input: the same sky at (pixel + applied shift) in the output
        px = np.array([(x - tdx, y - tdy) for x, y, _ in FIELD] + [(0, 0), (199, 149)])
        sky = w_in.all_pix2world(px, 0)
        np.testing.assert_allclose(w_out.all_world2pix(sky, 0), px + [adx, ady], atol=1e-6)
        # and the output is on the reference's grid (to the shift's accuracy)
        np.testing.assert_allclose(w_out.all_world2pix(ref.all_pix2world(px, 0), 0), px,
                                   atol=0.52 if order == 0 else 0.05)


SIP = {"ctype1": "RA---TAN-SIP", "ctype2": "DEC--TAN-SIP", "a_order": 2, "b_order": 2,
       "a_2_0": 2.1e-6, "a_1_1": -1.3e-6, "a_0_2": 0.8e-6, "b_2_0": -0.7e-6, "b_1_1": 1.9e-6,
       "b_0_2": 1.2e-6}


@pytest.mark.parametrize("linear", ["cd", "pc", "cdelt", "sip"])
@pytest.mark.parametrize("order", [0, 1])
def test_flipped_header_keeps_the_sky(linear, order):
    """A 180-deg turn then a shift: input pixel (x, y) (0-based) is output pixel
    (nx - 1 - x + dx, ny - 1 - y + dy), and sees the same sky."""
    ny, nx = SHAPE
    cards = tan_cards((93.2, 61.7))
    if linear == "pc":
        cards = {**{k: v for k, v in cards.items() if not k.startswith("cd")},
                 "cdelt1": -1.1e-4, "cdelt2": 1.05e-4, "pc1_1": 0.98, "pc1_2": 0.17,
                 "pc2_1": -0.17, "pc2_2": 0.98}
    elif linear == "cdelt":
        cards = {**{k: v for k, v in cards.items() if not k.startswith("cd")},
                 "cdelt1": -1.1e-4, "cdelt2": 1.05e-4}
    elif linear == "sip":
        cards = {**cards, **SIP}
    header = fits.Header([(k.upper(), v) for k, v in cards.items()])
    dx, dy = (4.0, -3.0) if order == 0 else (4.37, -2.81)
    out = shifted_header(header, SHAPE, dx, dy, flipped=True, order=order,
                             reference="ref.fit")
    rng = np.random.default_rng(3)
    px = np.column_stack([rng.uniform(0, nx - 1, 50), rng.uniform(0, ny - 1, 50)])
    sky = WCS(header).all_pix2world(px, 0)
    moved = np.column_stack([nx - 1 - px[:, 0] + dx, ny - 1 - px[:, 1] + dy])
    np.testing.assert_allclose(WCS(out).all_world2pix(sky, 0, tolerance=1e-10), moved,
                               atol=1e-6)
    assert any("rotated 180" in h for h in out["HISTORY"])
    assert header["CRPIX1"] == 93.2  # the input header is not modified


@pytest.mark.parametrize("order, shift", [(0, (-3.0, 2.0)), (1, (-3.38, 2.27))])
def test_meridian_flipped_frame_and_its_wcs(tmp_path, capsys, order, shift):
    """A frame turned by 180 deg (a meridian flip) is found flipped, turned back and shifted;
    its WCS (written for the turned frame, independently of starshift) follows the pixels."""
    ny, nx = SHAPE
    crpix = (100.5, 75.5)
    night = field_night(tmp_path / "night", {"a.fit": (0.0, 0.0), "b.fit": (2.4, -1.3),
                                             "c.fit": shift},
                        header=lambda dx, dy: tan_cards((crpix[0] - dx, crpix[1] - dy)))
    with fits.open(night / "c.fit", mode="update") as h:  # turn the data and its WCS
        h[0].data = np.ascontiguousarray(np.rot90(h[0].data, 2))
        hdr = h[0].header
        hdr["CRPIX1"], hdr["CRPIX2"] = nx + 1 - hdr["CRPIX1"], ny + 1 - hdr["CRPIX2"]
        for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            hdr[key] = -hdr[key]
    out = tmp_path / "out"
    assert align(capsys, night, out, f"shift.order={order}")[0] == 0
    diag = assert_one_run(out)
    assert diag.loc["c.fit", C.FLIP] == 1 and diag.loc["c.fit", C.STATUS] == C.KEPT
    header = fits.getheader(out / "c.fit")
    dx, dy = header["XOFFSET"], header["YOFFSET"]
    assert header["SSFLIP"] and any("rotated 180" in h for h in header["HISTORY"])
    # input pixel (x, y) is output pixel (nx - 1 - x + dx, ny - 1 - y + dy): the same sky
    px = np.array([(nx - 1 - (x - shift[0]), ny - 1 - (y - shift[1])) for x, y, _ in FIELD])
    sky = WCS(fits.getheader(night / "c.fit")).all_pix2world(px, 0)
    moved = np.column_stack([nx - 1 - px[:, 0] + dx, ny - 1 - px[:, 1] + dy])
    np.testing.assert_allclose(WCS(header).all_world2pix(sky, 0), moved, atol=1e-6)
    # and the frame now lies on the reference: its stars and its sky where the reference's are
    ref = WCS(fits.getheader(night / "a.fit"))
    stars = np.array([(x, y) for x, y, _ in FIELD])
    np.testing.assert_allclose(WCS(header).all_world2pix(ref.all_pix2world(stars, 0), 0),
                               stars, atol=0.05)
    data = fits.getdata(out / "c.fit")
    bright = max(FIELD, key=lambda s: s[2])
    iy, ix = np.unravel_index(np.argmax(data), data.shape)
    assert abs(ix - bright[0]) <= 1 and abs(iy - bright[1]) <= 1


def test_stale_keywords_removed_history_added_reruns_identical(small_night, tmp_path, capsys):
    for p in small_night.glob("f0*.fit"):
        with fits.open(p, mode="update") as h:
            h[0].header.update({"PEDESTAL": -100, "CBLACK": 95, "CWHITE": 400,
                                "DATAMIN": 0.0, "DATAMAX": 65535.0, "SATURATE": 60000.0})
    a, b = tmp_path / "a", tmp_path / "b"  # (reruns seconds apart: the kill loop above)
    align(capsys, small_night, a)
    align(capsys, small_night, b)
    assert tree(a) == tree(b)
    align(capsys, small_night, a)  # a rerun into the same folder
    assert tree(a) == tree(b)
    for name in NIGHT_SHIFTS:
        header = fits.getheader(a / name)
        for key in ("PEDESTAL", "CBLACK", "CWHITE", "DATAMIN", "DATAMAX"):
            assert key not in header
        assert header["SATURATE"] == pytest.approx(60000.0 - header["BKGSUB"])
        history = " ".join(header["HISTORY"])
        assert "shifted by" in history and "background" in history
        assert_cards_true(header)
    align(capsys, small_night, tmp_path / "c", "shift.subtract_background=false")
    header = fits.getheader(tmp_path / "c" / "f02.fit")
    assert header["PEDESTAL"] == -100 and header["BKGSUB"] == 0


# --------------------------------------------------------------------------- bad pixels
TRAIL = {"a.fit": (0.0, 0.0), "b.fit": (2.4, -1.3), "c.fit": (-3.6, 2.2), "d.fit": (1.1, 4.7),
         "e.fit": (-1.7, -2.9), "f.fit": (3.2, 3.1)}


def test_star_shape_checks_work_on_a_clean_night(tmp_path, capsys):
    """The control of the two tests below: the trailed frame is rejected."""
    night = field_night(tmp_path / "night", TRAIL, trail={"c.fit"})
    assert align(capsys, night, tmp_path / "out")[0] == 0
    diag = diagnostics(tmp_path / "out")
    assert diag.loc["c.fit", C.STATUS] == C.REJECTED
    assert (diag.drop("c.fit")[C.STATUS] == C.KEPT).all()


@pytest.mark.parametrize("blank", [False, True], ids=["nan", "blank"])
def test_one_percent_bad_pixels_keep_the_reference_stars(tmp_path, capsys, blank):
    clean = stages.load_reference(
        field_night(tmp_path / "clean", {"a.fit": (0, 0)}), "a.fit",
        stages.night_settings(compose_align([])))
    night = field_night(tmp_path / "night", TRAIL, trail={"c.fit"}, nan_fraction=0.01,
                        blank=blank)
    ref = stages.load_reference(night, "a.fit", stages.night_settings(compose_align([])))
    assert np.isnan(ref.data).any()  # the bad pixels are there (BLANK read as NaN)
    assert align(capsys, night, tmp_path / "out")[0] == 0
    diag = diagnostics(tmp_path / "out")
    assert diag.loc["c.fit", C.STATUS] == C.REJECTED  # still trailed
    assert len(ref.stars) >= 0.8 * len(clean.stars)


def test_reference_auto_reads_one_frame_at_a_time_and_skips_unreadable_ones(small_night,
                                                                             tmp_path,
                                                                             monkeypatch):
    """reference=auto chooses among the readable frames without holding the night in memory:
    at most two of the frames it read are alive at once (the one being judged and the one
    being read), however many the night has; an unreadable frame is not a candidate."""
    import gc
    import weakref

    from starshift.config import compose_align
    from starshift.pipeline import stages
    from starshift.settings import night_settings

    for i in range(6):  # a longer night: the four frames again under new names
        shutil.copy(small_night / sorted(NIGHT_SHIFTS)[i % 4], small_night / f"g{i:02d}.fit")
    (small_night / "g05.fit").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    alive, peak = set(), [0]
    real = fio.read_frame

    def tracked(path):
        data, header = real(path)
        key = id(data)
        alive.add(key)
        weakref.finalize(data, alive.discard, key)
        gc.collect()
        peak[0] = max(peak[0], len(alive))
        return data, header

    monkeypatch.setattr(fio, "read_frame", tracked)
    s = night_settings(compose_align(["reference=auto"]))
    found = stages.discover(small_night, s)
    name = stages.choose_reference_name(found, s)
    assert name in found.lights and name != "g05.fit"
    assert 1 <= peak[0] <= 2, peak[0]
