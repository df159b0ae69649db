"""The seed method end to end on a small night with known shifts, through the library and CLI."""

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import NIGHT_SHIFTS, gaussian_frame, write_fits

from starshift import columns as C
from starshift.cli import main
from starshift.config import compose_align
from starshift.pipeline.stages import align

BOX = ["method=box", "centroid.box_center=[80,60]", "centroid.box_size=21"]


def test_seed_method_recovers_shifts_and_writes_outputs(small_night, tmp_path):
    out = tmp_path / "out"
    diag = align(small_night, out, compose_align(BOX))
    assert list(diag[C.FILE]) == list(NIGHT_SHIFTS)
    for _, row in diag.iterrows():
        tdx, tdy = NIGHT_SHIFTS[row[C.FILE]]
        assert row[C.DX] == pytest.approx(tdx, abs=0.05)
        assert row[C.DY] == pytest.approx(tdy, abs=0.05)
        assert (row[C.APPLIED_DX], row[C.APPLIED_DY]) == (round(tdx), round(tdy))
        assert abs(row[C.RESIDUAL_DX]) <= 0.5 and abs(row[C.RESIDUAL_DY]) <= 0.5
        assert row[C.STATUS] == C.KEPT
    for col in ["file", "x", "y", "dx", "dy", "applied_dx", "applied_dy", "residual_dx",
                "residual_dy", "status", "reason"]:
        assert col in diag.columns
    written = pd.read_csv(out / "diagnostics.csv")
    assert list(written.columns) == list(diag.columns)
    # the aligned frame: star on the reference pixel, header provenance, background removed
    with fits.open(out / "f04.fit") as h:
        hdr, data = h[0].header, h[0].data
    assert data.dtype == np.dtype(">f4")
    assert (hdr["XOFFSET"], hdr["YOFFSET"]) == (6.0, 5.0)
    assert hdr["BKGSUB"] == pytest.approx(100.0, abs=2)
    assert hdr["FILTER"] == "V" and hdr["SSORDER"] == 0 and hdr["SSMETHOD"] == "box"
    assert hdr["SSREF"] == "f01.fit" and len(hdr["SSPHASH"]) == 12
    assert np.unravel_index(np.argmax(data), data.shape) == (60, 80)
    assert "bias.fit" not in {p.name for p in out.iterdir()}


def test_inputs_untouched_and_rerun_byte_identical(small_night, tmp_path):
    before = {p.name: p.read_bytes() for p in small_night.iterdir()}
    align(small_night, tmp_path / "a", compose_align(BOX))
    align(small_night, tmp_path / "b", compose_align(BOX))
    assert {p.name: p.read_bytes() for p in small_night.iterdir()} == before
    for p in (tmp_path / "a").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()


def test_xoffset_accumulates(small_night, tmp_path):
    with fits.open(small_night / "f02.fit", mode="update") as h:
        h[0].header["XOFFSET"] = 10.0
    align(small_night, tmp_path / "o", compose_align(BOX))
    assert fits.getheader(tmp_path / "o" / "f02.fit")["XOFFSET"] == 13.0


def test_bad_frames_and_pre_shift(small_night, tmp_path):
    cfg = compose_align(BOX + ["bad_frames=[f03.fit]", "pre_shift={f04.fit:[5,4]}"])
    diag = align(small_night, tmp_path / "o", cfg).set_index(C.FILE)
    assert diag.loc["f03.fit", C.STATUS] == C.REJECTED
    assert diag.loc["f03.fit", C.REASON] == "listed in bad_frames"
    assert not (tmp_path / "o" / "f03.fit").exists()
    assert (diag.loc["f04.fit", C.PRE_DX], diag.loc["f04.fit", C.PRE_DY]) == (5, 4)
    assert diag.loc["f04.fit", C.DX] == pytest.approx(6.2, abs=0.05)


def test_star_outside_box_fails_that_frame_and_run_goes_on(small_night, tmp_path):
    # move f03's star far away: the box then holds only noise
    data = gaussian_frame(stars=((20.0, 20.0, 30000.0),), seed=9)
    (small_night / "f03.fit").unlink()
    write_fits(small_night / "f03.fit", data, picttype=1)
    diag = align(small_night, tmp_path / "o", compose_align(BOX)).set_index(C.FILE)
    assert diag.loc["f03.fit", C.STATUS] in (C.FAILED, C.REJECTED)
    assert diag.loc["f03.fit", C.REASON]
    assert (diag[C.STATUS] == C.KEPT).sum() == 3


def test_residual_beyond_limit_is_rejected(small_night, tmp_path):
    cfg = compose_align(BOX + ["reject.max_residual=0.05"])
    diag = align(small_night, tmp_path / "o", cfg).set_index(C.FILE)
    # f02 (3.3, -2.2) is shifted by (3, -2): its new shift of ~0.3 px is beyond 0.05 px
    assert diag.loc["f02.fit", C.STATUS] == C.REJECTED
    assert "beyond 0.05 px" in diag.loc["f02.fit", C.REASON]


def test_reference_override(small_night, tmp_path):
    diag = align(small_night, tmp_path / "o", compose_align(
        ["method=box", "centroid.box_center=[77,62]", "centroid.box_size=21",
         "reference=f02.fit"])).set_index(C.FILE)
    # shifts are now onto f02: shift(f) = shift_onto_f01(f) - shift_onto_f01(f02)
    assert diag.loc["f04.fit", C.DX] == pytest.approx(6.2 - 3.3, abs=0.05)
    assert diag.loc["f01.fit", C.DY] == pytest.approx(0 + 2.2, abs=0.05)


# --------------------------------------------------------------------------- CLI
def test_cli_align_prints_seed_table(small_night, tmp_path, capsys):
    assert main(["-q", "align", str(small_night), str(tmp_path / "o"), *BOX]) == 0
    out = capsys.readouterr().out
    assert "new dx" in out and "f04.fit" in out and "4 kept" in out


def test_console_script_same_outputs_and_in_process_main_leaves_gc_alone(small_night, tmp_path):
    """The console entry (`python -m starshift.cli`, gc idle during imports, frozen after)
    writes what in-process ``main`` writes, and ``main`` itself leaves the collector as it was."""
    import gc
    import subprocess
    import sys

    frozen = gc.get_freeze_count()
    assert main(["-q", "align", str(small_night), str(tmp_path / "a"), *BOX]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    done = subprocess.run([sys.executable, "-m", "starshift.cli", "-q", "align", str(small_night),
                           str(tmp_path / "b"), *BOX], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert a == sorted(p.name for p in (tmp_path / "b").iterdir()) and "f04.fit" in a
    for name in a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    bad = subprocess.run([sys.executable, "-m", "starshift.cli", "align", str(tmp_path / "nope"),
                          str(tmp_path / "c")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("starshift: error:")
    assert "Traceback" not in bad.stderr


def test_console_commands_collect_garbage_while_they_work(small_night, tmp_path, monkeypatch):
    """The console script starts with the collector off; every command turns it back on once
    its imports are done (so a long night's garbage is collected), and align does."""
    import gc
    import inspect

    from starshift import cli

    commands = [f for name, f in vars(cli).items() if name.startswith("_cmd_")]
    assert len(commands) >= 6
    for f in commands:
        assert "_imports_done()" in inspect.getsource(f), f.__name__
    monkeypatch.setattr(cli, "_CONSOLE", True)
    gc.disable()
    try:
        assert main(["-q", "align", str(small_night), str(tmp_path / "o"), *BOX]) == 0
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.parametrize("args, message", [
    (["align", "{missing}", "{out}", *BOX], "no such directory"),
    (["align", "{night}", "{out}", "method=box", "centroid.box_center=[155,60]"], "outside"),
    (["align", "{night}", "{out}", "centroid.box_sise=3"], "box_sise"),
    (["align", "{night}", "{out}", "method=box"], "box_center"),
    (["align", "{night}", "{out}", *BOX, "bad_frames=[nope.fit]"], "nope.fit"),
    (["align", "{bias_only}", "{out}", *BOX], "no light frame"),
])
def test_cli_user_errors_are_one_line_exit_2(small_night, tmp_path, capsys, args, message):
    bias_only = tmp_path / "bias_only"
    bias_only.mkdir()
    write_fits(bias_only / "b.fit", np.zeros((8, 8)), picttype=2)
    fmt = {"missing": tmp_path / "missing", "out": tmp_path / "o", "night": small_night,
           "bias_only": bias_only}
    argv = ["-q"] + [a.format(**{k: str(v) for k, v in fmt.items()}) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("starshift: error:") and message in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("method", [BOX, ["method=auto"]])
def test_written_frames_are_the_seed_steps_exactly(small_night, tmp_path, method):
    # the seed, in its own float32 arithmetic: fill with the frame's median, shift by whole
    # pixels (ndimage.shift order 0), subtract the shifted frame's median, save float32
    from scipy import ndimage

    diag = align(small_night, tmp_path / "o", compose_align(method)).set_index(C.FILE)
    for name in ("f02.fit", "f04.fit"):
        raw = fits.getdata(small_night / name).astype(np.float32)
        dx, dy = diag.loc[name, C.APPLIED_DX], diag.loc[name, C.APPLIED_DY]
        shifted = ndimage.shift(raw, (dy, dx), order=0, cval=np.median(raw))
        bkg = np.median(shifted)
        with fits.open(tmp_path / "o" / name) as h:
            assert h[0].header["BKGSUB"] == pytest.approx(float(bkg), abs=1e-6)
            np.testing.assert_array_equal(h[0].data, shifted - bkg)


def test_console_align_leaves_unused_numpy_submodules_unimported(small_night, tmp_path):
    """scipy copies numpy's namespace on import; in the console script numpy's f2py, testing
    and polynomial stay lazy through it, and each is the real module once touched."""
    import subprocess
    import sys

    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print(sorted(m for m in sys.modules if m in "
             "('numpy.f2py', 'numpy.testing', 'numpy.polynomial', 'scipy.ndimage'))))\n"
             f"sys.argv = ['starshift', '-q', 'align', {str(small_night)!r}, "
             f"{str(tmp_path / 'o')!r}]\n"
             "from starshift.cli import run\nrun()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "['scipy.ndimage']"
    touch = ("import sys, types, numpy\nfrom starshift._lazy import defer_unused_numpy\n"
             "print(defer_unused_numpy())\nimport scipy.ndimage, scipy.fft\n"
             "print('numpy.f2py' in sys.modules, numpy.testing.assert_array_equal.__name__,\n"
             "      isinstance(numpy.testing, types.ModuleType), defer_unused_numpy())\n")
    out = subprocess.run([sys.executable, "-c", touch], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["['f2py', 'testing', 'polynomial']", "False assert_array_equal True []"]


def test_scipy_doc_notes_skipped_leave_functions_and_docstrings_as_written():
    """The console script keeps scipy from re-rendering docstrings as it imports them: the
    functions are scipy's own, their docstrings are scipy's as written (without the array-API
    note scipy would append) and their results the same; the hook is gone once used, and is
    not installed when scipy's module is already imported."""
    import subprocess
    import sys

    if not hasattr(pytest.importorskip("scipy._lib._array_api"), "xp_capabilities"):
        pytest.skip("this scipy does not rewrite docstrings at import (before 1.15)")
    shift = ("a = scipy.ndimage.shift(np.arange(16.0).reshape(4, 4), (0.5, -1.25), order=3)\n"
             "doc = scipy.ndimage.shift.__doc__\n"
             "print(doc.split(chr(10))[0], 'Array API' in doc)\nprint(a.tobytes().hex())\n")
    probe = ("import sys, numpy as np\nfrom starshift._lazy import skip_scipy_doc_notes\n"
             "first = skip_scipy_doc_notes()\nimport scipy.ndimage, scipy.fft\n"
             "import scipy._lib._array_api as aa\n"
             "print(first, skip_scipy_doc_notes(), aa.FunctionDoc.__name__,\n"
             "      any(getattr(f, 'name', '') == aa.__name__ for f in sys.meta_path))\n"
             + shift)
    plain = "import numpy as np, scipy.ndimage\n" + shift
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    ref = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "True False _NoteSkipped False"
    assert ref[0] == "Shift an array. True"  # scipy appends its note...
    assert out[1] == "Shift an array. False"  # ...not here
    assert out[2] == ref[1]  # the same numbers


def test_astropy_fits_import_without_units_and_numcodecs(tmp_path):
    """The console script's astropy.io.fits import leaves out astropy.units and numcodecs:
    FITS files are written and read the same, both import as usual afterwards (and
    astropy.utils.data's functions work), the hooks are gone once used; and astropy's module
    loads as it is when its source is not the one expected."""
    import importlib.util
    import subprocess
    import sys

    roundtrip = (f"p = {str(tmp_path / 'f.fits')!r}\n"
                 "h = fits.Header(); h['XOFFSET'] = (1.5, 'px'); h['HISTORY'] = 'moved'\n"
                 "fits.writeto(p, np.arange(12.0, dtype=np.float32).reshape(3, 4), h,"
                 " overwrite=True)\n"
                 "print(open(p, 'rb').read().hex())\n")
    probe = ("import sys, tempfile, numpy as np\nfrom starshift import _lazy\n{patch}"
             "print(_lazy.lighten_astropy_import())\n"
             "import starshift.io\nfrom astropy.io import fits\n"
             "print('astropy.units' in sys.modules, 'numcodecs' in sys.modules,"
             " any(isinstance(f, _lazy._OnImport) for f in sys.meta_path))\n" + roundtrip +
             "from astropy.utils import data\nimport astropy.units as u\n"
             "print(data.get_free_space_in_dir(tempfile.gettempdir(), unit=u.byte).unit)\n")
    run = [sys.executable, "-c"]
    out = subprocess.run(run + [probe.format(patch="")], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    ref = subprocess.run(run + ["import numpy as np\nfrom astropy.io import fits\n" + roundtrip],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "['astropy.utils.data', 'astropy.io.fits.hdu.compressed._codecs']"
    assert out[1] == "False False False"
    assert out[2] == ref[0]  # the same bytes on disk
    assert out[3] == "byte"
    if importlib.util.find_spec("numcodecs") is not None:
        check = "import numcodecs\nprint(numcodecs.__name__)\n"
        assert subprocess.run(run + [probe.format(patch="") + check], capture_output=True,
                              text=True, check=True).stdout.splitlines()[-1] == "numcodecs"
    # another astropy: the line is not there, the module is executed as it is
    other = probe.format(patch="_lazy._UNITS_LINE = 'from astropy.units import Nothing\\n'\n")
    out = subprocess.run(run + [other], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[1] == "True False False" and out[2] == ref[0]


def test_console_exit_runs_atexit_handlers_and_flushes_what_it_printed(small_night, tmp_path):
    """The console script ends without the interpreter's teardown, but only after the
    atexit handlers ran and the output was flushed; its exit code is the command's."""
    import subprocess
    import sys

    mark = tmp_path / "atexit.txt"
    probe = ("import atexit, pathlib, sys\n"
             f"atexit.register(pathlib.Path({str(mark)!r}).write_text, 'ran')\n"
             f"sys.argv = ['starshift', 'align', {str(small_night)!r}, {str(tmp_path / 'o')!r}]\n"
             "from starshift.cli import run\nrun()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert mark.read_text() == "ran"
    lines = done.stdout.splitlines()
    assert lines[-2] == "4 frames: 4 kept, 0 rejected, 0 failed"
    assert lines[-1].startswith("wrote 4 aligned frame(s)")
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.splitlines()[-2] == lines[-2]
    bad = subprocess.run([sys.executable, "-m", "starshift.cli", "align", str(tmp_path / "no"),
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
