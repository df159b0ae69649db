"""Benchmark of the commands users run, each as a whole process (issue #13).

``bench_register.py`` times the pieces of an align inside one warm process. This benchmark times
what a user waits for: a fresh Python process that starts, imports its libraries, reads a night
of FITS frames, aligns them and writes them back, measured from the outside (wall clock, and the
peak memory of the process tree). Five ways, each one child process (tree) per night:

``align``
    ``starshift align IN OUT``, the default automatic method, exactly as a user types it
    (progress bars and all, to a file instead of a terminal). By default starshift forks one
    worker process per core (``jobs=0``).
``align_j1``
    ``starshift align IN OUT jobs=1``: the same in one process, the like-for-like comparison
    with the single-process scripts below (and what the per-step breakdown profiles).
``floor``
    ``python -c`` a script that reads every light frame with astropy (``fits.open``) and writes
    it as float32 FITS (``fits.writeto``): the same frames and the same output size with no
    aligning at all, the least any aligner written in Python with astropy must cost.
``astroalign``
    ``python -c`` a script that, for each frame, runs ``astroalign.find_transform(frame,
    reference)`` and ``astroalign.apply_transform`` and writes the result as float32 FITS
    (``pip install astroalign``, the ``bench`` extra). Skipped if astroalign is missing.
``notebook``
    ``python -c`` the seed notebook's method end to end, per frame: ``np.median`` subtraction,
    photutils ``centroid_2dg`` in the night's search box around a bright star, whole-pixel
    ``scipy.ndimage.shift(order=0, cval=median)``, the re-measure, median background
    subtraction, header ``XOFFSET/YOFFSET/BKGSUB``, float32 ``fits.writeto``. Runs only on nights
    with a box: the seed sample nights (``starshift.datasets.SEED_BOXES``), the generated 26 MP
    night (a bright isolated star is planted for it) and any ``--box``.

Nights: the five sample nights (generated with ``starshift sample``, or ``--data``), the shared
real nights (``../shared/data/real/*``, skipped if absent) and a generated 26 MP night (6 frames
of 6248 x 4176 uint16: sky 1000 ADU, Poisson and read noise, 3000 Gaussian stars, known random
offsets of a few px), written into a temporary directory and removed afterwards.

The ways alternate (align align_j1 floor astroalign notebook, align ... ``--repeat`` times) on
each night; the table gives medians over the repeats, and each ratio is the median of ratios
taken within the same repeat, so a slow moment of a shared machine hits both sides of a ratio.
Inputs are read once before a night's first run, so every run reads from the page cache,
and starshift's bytecode is compiled once before any run, as an installed package's is
(``compileall``: an editable install writes it on first use, unless
``PYTHONDONTWRITEBYTECODE`` is set, which the environment section reports).
Accuracy is printed beside the time, for nights with ``truth.csv`` (``file, dx, dy, bad``):
the fraction of good frames (not bad, reference left out) that starshift keeps with its
measured shift (``OUT/diagnostics.csv``) within 0.5 px of the truth on both axes, and the same
for astroalign's transform (its shift of the frame centre, ``reference - frame``, x first) and
for the notebook's box centroid. Memory, per way: the peak PSS of the process tree (psutil,
polled every 100 ms: shared pages split between the processes sharing them, what the tree
really holds), the peak of its summed RSS (every 20 ms; counts the pages forked workers share
once per process) and the largest single process's peak RSS (``/usr/bin/time -f %M``, exact).

A per-step breakdown of ``starshift align IN OUT jobs=1`` on one night (``--profile-night``;
one process, since cProfile cannot see into forked workers) runs it under cProfile and prints
the cumulative time of the imports (``importlib._find_and_load``), discovery
(``starshift.io.discover``), reference preparation (``starshift.night.prepare_night_reference``),
measuring (``starshift.night.measure_row``), shifting (``starshift.night.shift_row``), writing
(``starshift.io.write_frame``) and the decisions (``starshift.night.decide_night``), beside
``python -X importtime`` and the wall time of ``starshift --help`` and of ``python -c pass``.
Beside it, the wall-clock steps of the shipped ``starshift align IN OUT`` (default jobs, median
of 3): the console script with time stamps where its steps begin and end (imports, config and
discovery, reference, the frames in the workers, decisions and tables, exit), not profiled.

The children run in the caller's environment, as users run them (no thread limits are set); the
environment (thread variables, CPUs, load, versions, git state) is printed with the results.

Usage::

    python benchmarks/bench_commands.py [--data DIR] [--real DIR] [--nights a,b]
        [--skip-26mp] [--repeat N] [--ways align,align_j1,floor,astroalign,notebook]
        [--profile-night NAME] [--box NIGHT=X,Y,SIZE] [--out results.md|results.json|results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "real"
BIG_NIGHT = "synthetic_26mp"
WAYS = ("align", "align_j1", "floor", "astroalign", "notebook")
#: the column names of the ways in the tables
LABELS = {"align": "align", "align_j1": "align jobs=1", "floor": "floor",
          "astroalign": "astroalign", "notebook": "notebook"}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
TOLERANCE = 0.5  # px, on both axes
#: ratios of wall times, each taken within one repeat
RATIOS = (("align", "floor"), ("astroalign", "align"), ("notebook", "align"),
          ("align_j1", "align"))

# --------------------------------------------------------------------------- child scripts
# Each script takes one argument, a JSON spec: files, outputs, reference, result (+ box).

FLOOR_SCRIPT = """\
import json, sys
import numpy as np
from astropy.io import fits
spec = json.load(open(sys.argv[1]))
for src, dst in zip(spec["files"], spec["outputs"]):
    with fits.open(src) as hdul:
        data = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.writeto(dst, data, header, overwrite=True)
"""

ASTROALIGN_SCRIPT = """\
import json, sys, warnings
import numpy as np
from astropy.io import fits
import astroalign
spec = json.load(open(sys.argv[1]))
def load(path):
    with fits.open(path) as hdul:
        return hdul[0].data.astype(np.float64), hdul[0].header.copy()
reference, _ = load(spec["reference"])
result = {}
for src, dst in zip(spec["files"], spec["outputs"]):
    data, header = load(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tf, _ = astroalign.find_transform(data, reference)
            registered, footprint = astroalign.apply_transform(tf, data, reference)
    except Exception as exc:  # MaxIterError, TooFewStarsError, ...
        result[src] = {"error": type(exc).__name__ + ": " + str(exc).splitlines()[0]}
        continue
    ny, nx = data.shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    (mx, my), = tf(np.array([[cx, cy]]))  # frame centre -> reference: shift = ref - frame
    result[src] = {"dx": float(mx - cx), "dy": float(my - cy),
                   "tx": float(tf.translation[0]), "ty": float(tf.translation[1]),
                   "rotation_deg": float(np.degrees(tf.rotation)), "scale": float(tf.scale)}
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.writeto(dst, registered.astype(np.float32), header, overwrite=True)
json.dump(result, open(spec["result"], "w"))
"""

NOTEBOOK_SCRIPT = """\
import json, sys, warnings
import numpy as np
from astropy.io import fits
from photutils.centroids import centroid_2dg
from scipy import ndimage
spec = json.load(open(sys.argv[1]))
(xc, yc), size = spec["box_center"], spec["box_size"]
half = size // 2
x0, y0 = int(round(xc)) - half, int(round(yc)) - half
sy, sx = slice(y0, y0 + size), slice(x0, x0 + size)
def load(path):
    with fits.open(path) as hdul:
        data, header = hdul[0].data, hdul[0].header.copy()
        if data.dtype.kind in "iu":
            data = data.astype(np.float64)
        else:
            data = np.array(data)
    return data, header
def star(data, median):
    cx, cy = centroid_2dg((data - median)[sy, sx])
    return cx + x0, cy + y0
warnings.simplefilter("ignore")
ref, _ = load(spec["reference"])
ref_x, ref_y = star(ref, np.median(ref))
result = {}
for src, dst in zip(spec["files"], spec["outputs"]):
    data, header = load(src)
    try:  # photutils raises ValueError when the box holds no star
        median = np.median(data)
        x, y = star(data, median)
        dx, dy = ref_x - x, ref_y - y
        ix, iy = int(round(dx)), int(round(dy))
        shifted = ndimage.shift(data, (iy, ix), order=0, cval=median)
        bkg = float(np.median(shifted))
        nx_, ny_ = star(shifted, bkg)
    except ValueError as exc:
        result[src] = {"error": "ValueError: " + str(exc).splitlines()[0]}
        continue
    result[src] = {"dx": float(dx), "dy": float(dy),
                   "new_dx": float(ref_x - nx_), "new_dy": float(ref_y - ny_)}
    shifted = shifted - bkg
    header["XOFFSET"] = ix
    header["YOFFSET"] = iy
    header["BKGSUB"] = bkg
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.writeto(dst, shifted.astype(np.float32), header, overwrite=True)
json.dump(result, open(spec["result"], "w"))
"""

SCRIPTS = {"floor": FLOOR_SCRIPT, "astroalign": ASTROALIGN_SCRIPT, "notebook": NOTEBOOK_SCRIPT}

# (The console script ends its process right after the atexit handlers, so the profile and the
# stamps are written by one.)
PROFILE_SCRIPT = """\
import atexit, cProfile, sys
path, sys.argv = sys.argv[1], ["starshift", *sys.argv[2:]]
profile = cProfile.Profile()

def dump():
    profile.disable()
    profile.dump_stats(path)

atexit.register(dump)
profile.enable()
from starshift.cli import run  # the console script, as `starshift` runs it
run()
"""

# The console script with wall-clock stamps (time.time(), to the file in argv[1]) where its
# steps begin and end; the parent adds the spawn and the exit. Nothing else changes: the
# patched functions are called as they are.
TIMELINE_SCRIPT = """\
import atexit, json, sys, time
stamps = {"python": time.time()}
path, sys.argv = sys.argv[1], ["starshift", *sys.argv[2:]]
import gc
gc.disable()  # as the console script does from its first line (run)
import starshift.cli as cli
# the console script's import hooks, which run() installs, before anything here imports what
# they change (run() finds them installed)
from starshift._lazy import lighten_astropy_import, skip_scipy_doc_notes
skip_scipy_doc_notes()
lighten_astropy_import()
from starshift.pipeline import stages

def stamped(mod, name, before=None, after=None):
    f = getattr(mod, name)
    def g(*a, **k):
        if before:
            stamps.setdefault(before, time.time())
        r = f(*a, **k)
        if after:
            stamps[after] = time.time()
        return r
    setattr(mod, name, g)

stamped(cli, "_imports_done", after="imported")
stamped(stages, "load_reference", before="reference", after="frames")
stamped(stages, "decide_night", before="decisions")
stamped(cli, "main", after="exit")
atexit.register(lambda: json.dump(stamps, open(path, "w")))
cli.run()
"""

#: the timeline's steps: label, stamp where it starts, stamp where it ends
TIMELINE = (
    ("interpreter start-up", "spawn", "python"),
    ("imports", "python", "imported"),
    ("config and discovery", "imported", "reference"),
    ("reference (read + prepare)", "reference", "frames"),
    ("frames (read, measure, shift, write)", "frames", "decisions"),
    ("decisions, tables, summary", "decisions", "exit"),
    ("interpreter exit", "exit", "end"),
)

#: per-step breakdown: label -> (file suffix, function name) in the cProfile stats
STEPS = (
    ("imports", ("importlib._bootstrap", "_find_and_load")),
    ("discovery (io.discover)", ("starshift/io.py", "discover")),
    ("reference (night.prepare_night_reference)", ("starshift/night.py",
                                                   "prepare_night_reference")),
    ("measuring (night.measure_row)", ("starshift/night.py", "measure_row")),
    ("shifting (night.shift_row)", ("starshift/night.py", "shift_row")),
    ("writing (io.write_frame)", ("starshift/io.py", "write_frame")),
    ("decisions (night.decide_night)", ("starshift/night.py", "decide_night")),
    ("of which: reading (io.read_frame)", ("starshift/io.py", "read_frame")),
)

#: what ``starshift align`` imports before its work (scipy comes later, on first use)
ALIGN_IMPORTS = ("starshift.cli", "starshift.columns", "starshift.config",
                 "starshift.pipeline.stages", "starshift._table")


# --------------------------------------------------------------------------- processes
def _tree_memory(proc, pss: bool) -> tuple[int, int, int]:
    """(summed RSS, largest RSS, summed PSS or 0) of ``proc`` and its descendants, bytes."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    rss, big, pss_total = 0, 0, 0
    for p in procs:
        try:
            r = p.memory_info().rss
            rss, big = rss + r, max(big, r)
            if pss:
                pss_total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return rss, big, pss_total


def run_process(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` to completion: wall time (s), exit status, memory (MB), error line.

    The wall time runs from just before the fork to the exit. Memory of the process tree
    (starshift forks workers): ``rss_mb``, the peak of the summed RSS, polled every 20 ms (an
    upper bound: pages the workers share with their parent count once per process);
    ``pss_mb``, the peak of the summed PSS (shared pages split between their users: what the
    tree really holds), polled every 100 ms; ``max_rss_mb``, the largest single process's peak
    RSS, exact, from ``/usr/bin/time -f %M`` (polled with psutil if that is absent).
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    timer = Path("/usr/bin/time")
    rss_file = log.with_suffix(".maxrss")
    wrapped = ([str(timer), "-f", "%M", "-o", str(rss_file), *cmd] if timer.exists()
               else list(cmd))
    peak = {"rss": 0, "big": 0, "pss": 0}
    done = threading.Event()
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        child = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.STDOUT, env=env)

        def poll():
            if psutil is None:
                return
            try:
                proc = psutil.Process(child.pid)
            except psutil.Error:
                return
            tick = 0
            while not done.is_set():
                rss, big, pss = _tree_memory(proc, tick % 5 == 0)
                peak["rss"], peak["big"] = max(peak["rss"], rss), max(peak["big"], big)
                peak["pss"] = max(peak["pss"], pss)
                tick += 1
                done.wait(0.02)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        rc = child.wait()
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
    max_rss = peak["big"]
    if rss_file.is_file():
        lines = rss_file.read_text().split()
        if lines and lines[-1].isdigit():
            max_rss = int(lines[-1]) * 1024  # kB
    text = log.read_text(errors="replace").strip().splitlines()
    error = next((line for line in reversed(text) if "error" in line.lower()),
                 text[-1] if text else "")
    mb = 2**20
    return {"wall": wall, "rc": rc, "rss_mb": peak["rss"] / mb, "pss_mb": peak["pss"] / mb,
            "max_rss_mb": max_rss / mb, "error": error.strip() if rc else ""}


# --------------------------------------------------------------------------- nights
def light_frames(night_dir: Path) -> list[Path]:
    """The light frames starshift selects (starshift.io.discover), sorted by name."""
    from starshift.io import discover

    found = discover(night_dir)
    return [found.directory / n for n in found.lights]


def read_truth(night_dir: Path) -> dict | None:
    path = night_dir / "truth.csv"
    if not path.is_file():
        return None
    import pandas as pd

    t = pd.read_csv(path)
    return {str(r["file"]): (float(r["dx"]), float(r["dy"]), int(r.get("bad", 0) or 0))
            for _, r in t.iterrows()}


def make_big_night(out_dir: Path, seed: int = 2026, n_frames: int = 6, shape=(4176, 6248),
                   n_stars: int = 3000, max_offset: float = 5.0) -> tuple[Path, tuple]:
    """Write the 26 MP night (uint16 FITS + truth.csv); return it and its search box.

    Sky 1000 ADU (gain 1), Poisson noise plus 8 ADU Gaussian read noise, ``n_stars`` Gaussian
    stars (sigma 1.8 px, flux log-uniform 1e3-1e6 ADU) rendered with
    ``starshift.datasets.render_stars``, plus one bright isolated star at the search box's
    centre (for the notebook way). Frame 0 is the reference; the others are offset by uniform
    random shifts of up to ``max_offset`` px per axis (sub-pixel).
    """
    from astropy.io import fits

    from starshift.datasets import render_stars

    out_dir.mkdir(parents=True, exist_ok=True)
    ny, nx = shape
    rng = np.random.default_rng([seed, 0])
    x = rng.uniform(20, nx - 20, n_stars)
    y = rng.uniform(20, ny - 20, n_stars)
    flux = 10 ** rng.uniform(3, 6, n_stars)
    guide = (nx / 2 + 0.3, ny / 2 - 0.4)
    far = np.hypot(x - guide[0], y - guide[1]) > 60  # nothing else in or near the box
    x, y, flux = np.append(x[far], guide[0]), np.append(y[far], guide[1]), np.append(flux[far],
                                                                                     3e5)
    rows = ["file,dx,dy,bad,kind"]
    for i in range(n_frames):
        r = np.random.default_rng([seed, i + 1])
        dx, dy = (0.0, 0.0) if i == 0 else tuple(r.uniform(-max_offset, max_offset, 2))
        # shift = reference - frame, so the frame sees every star at reference - shift
        img = render_stars(shape, x - dx, y - dy, flux, 1.8, 1.8)
        img += 1000.0
        data = r.poisson(img).astype(np.float64)
        data += r.normal(0.0, 8.0, shape)
        data = np.clip(np.rint(data), 0, 65535).astype(np.uint16)
        name = f"big_L_60.000secs_{i + 1:05d}.fit"
        header = fits.Header()
        header["IMAGETYP"] = "Light Frame"
        header["EXPTIME"] = 60.0
        header["OBJECT"] = "synthetic 26 MP"
        fits.PrimaryHDU(data, header).writeto(out_dir / name, overwrite=True)
        rows.append(f"{name},{dx:.4f},{dy:.4f},0,{'reference' if i == 0 else 'science'}")
    (out_dir / "truth.csv").write_text("\n".join(rows) + "\n")
    return out_dir, ((int(round(guide[0])), int(round(guide[1]))), 31)


# --------------------------------------------------------------------------- accuracy
def _within(measured: dict, truth: dict, reference: str, files: list[Path]) -> tuple[int, int]:
    """(good frames within TOLERANCE, good frames): frames not bad, the reference left out.

    ``measured`` maps a file name to its (dx, dy) onto ``reference`` or None (failed, not
    kept). Truth is relative to the truth's reference; moved onto ``reference``.
    """
    rx, ry, _ = truth.get(reference, (0.0, 0.0, 0))
    hit = n = 0
    for f in files:
        if f.name == reference or f.name not in truth or truth[f.name][2]:
            continue
        n += 1
        m = measured.get(f.name)
        tx, ty = truth[f.name][0] - rx, truth[f.name][1] - ry
        if m is not None and abs(m[0] - tx) < TOLERANCE and abs(m[1] - ty) < TOLERANCE:
            hit += 1
    return hit, n


def align_accuracy(out_dir: Path, truth, files) -> tuple[int, int] | None:
    diag_path = out_dir / "diagnostics.csv"
    if truth is None or not diag_path.is_file():
        return None
    import pandas as pd

    d = pd.read_csv(diag_path)
    ref = files[0].name
    if "reference" in d.columns and (d["reference"] == 1).any():
        ref = str(d.loc[d["reference"] == 1, "file"].iloc[0])
    measured = {str(r["file"]): ((float(r["dx"]), float(r["dy"])) if r["status"] == "kept"
                                 else None) for _, r in d.iterrows()}
    return _within(measured, truth, ref, files)


def script_accuracy(result_path: Path, truth, files, reference: Path) -> tuple[int, int] | None:
    if truth is None or not result_path.is_file():
        return None
    res = json.loads(result_path.read_text())
    measured = {Path(k).name: ((v["dx"], v["dy"]) if "error" not in v else None)
                for k, v in res.items()}
    return _within(measured, truth, reference.name, files)


def script_errors(result_path: Path) -> list[str]:
    if not result_path.is_file():
        return []
    return [f"{Path(k).name}: {v['error']}" for k, v in json.loads(result_path.read_text()).items()
            if "error" in v]


# --------------------------------------------------------------------------- one night
def warm(files: list[Path]) -> None:
    """Read every input once, so each run reads from the page cache."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def bench_night(name: str, night_dir: Path, box, ways: list[str], repeat: int,
                scratch: Path, starshift_cmd: list[str]) -> dict:
    files = light_frames(night_dir)
    truth = read_truth(night_dir)
    reference = files[0]  # starshift's default reference: the first light frame by name
    shape = None
    try:
        from astropy.io import fits

        h = fits.getheader(reference)
        shape = (int(h["NAXIS2"]), int(h["NAXIS1"]))
    except Exception:
        pass
    ways = [w for w in ways if w != "notebook" or box is not None]
    warm(files)
    res = {"night": name, "frames": len(files), "shape": shape, "box": box,
           "runs": {w: [] for w in ways}, "accuracy": {}, "errors": {}}
    for rep in range(repeat):
        # the order rotates each repeat: a run that follows one which freed much memory (or
        # deleted many output files) gets pages the kernel hands back at once, which on a
        # virtual machine can cost several times less than new ones; no way always follows
        # the same one
        k = rep % len(ways)
        for way in ways[k:] + ways[:k]:
            out = scratch / f"{name}_{way}_{rep}"
            log = scratch / f"{name}_{way}_{rep}.log"
            if way == "align":
                cmd = [*starshift_cmd, "align", str(night_dir), str(out)]
            elif way == "align_j1":
                cmd = [*starshift_cmd, "align", str(night_dir), str(out), "jobs=1"]
            else:
                out.mkdir(parents=True)
                spec = {"files": [str(f) for f in files],
                        "outputs": [str(out / f.name) for f in files],
                        "reference": str(reference), "result": str(out / "result.json")}
                if box is not None:
                    spec["box_center"], spec["box_size"] = list(box[0]), int(box[1])
                spec_path = scratch / f"{name}_{way}_{rep}.json"
                spec_path.write_text(json.dumps(spec))
                cmd = [sys.executable, "-c", SCRIPTS[way], str(spec_path)]
            r = run_process(cmd, log)
            if way in ("align", "align_j1"):
                acc = align_accuracy(out, truth, files)
            else:
                acc = script_accuracy(out / "result.json", truth, files, reference)
                errs = script_errors(out / "result.json")
                if errs:
                    res["errors"].setdefault(way, errs)
            r["accuracy"] = acc
            if r["rc"]:
                res["errors"].setdefault(way, []).append(f"exit {r['rc']}: {r['error']}")
                print(f"  {name} {way} rep {rep}: exit {r['rc']}: {r['error']}", file=sys.stderr)
            res["runs"][way].append(r)
            print(f"  {name} {way} rep {rep}: {r['wall']:.2f} s, PSS {r['pss_mb']:.0f} MB, "
                  f"largest RSS {r['max_rss_mb']:.0f} MB"
                  + (f", {acc[0]}/{acc[1]} within {TOLERANCE} px" if acc else ""),
                  file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
    for way, runs in res["runs"].items():
        ok = [r for r in runs if r["rc"] == 0]
        res[f"{way}_s"] = float(np.median([r["wall"] for r in ok])) if ok else math.nan
        for mem in ("rss_mb", "pss_mb", "max_rss_mb"):
            res[f"{way}_{mem}"] = float(max(r[mem] for r in ok)) if ok else math.nan
        accs = [tuple(r["accuracy"]) for r in ok if r["accuracy"] is not None]
        if accs:  # [fewest within, most within, good frames]: astroalign is random (RANSAC)
            res["accuracy"][way] = [min(a[0] for a in accs), max(a[0] for a in accs),
                                    accs[0][1]]
    for num, den in RATIOS:
        if num in res["runs"] and den in res["runs"]:
            ratios = [a["wall"] / b["wall"] for a, b in zip(res["runs"][num], res["runs"][den],
                                                             strict=True)
                      if a["rc"] == 0 and b["rc"] == 0]
            res[f"{num}/{den}"] = float(np.median(ratios)) if ratios else math.nan
    return res


# --------------------------------------------------------------------------- breakdown
def _cumulative(stats: dict, suffix: str, func: str) -> tuple[float, int] | None:
    hits = [(v[3], v[1]) for (file, _, fn), v in stats.items()
            if fn == func and suffix in file.replace("\\", "/")]
    if not hits:
        return None
    return sum(h[0] for h in hits), sum(h[1] for h in hits)


def _importtime(modules) -> float:
    """Seconds of imports for ``modules`` per ``python -X importtime`` (top-level entries)."""
    code = "import " + ", ".join(modules)
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                       text=True)
    total = 0
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line.split("|")
        if len(parts) == 3 and not parts[2].startswith("  "):  # top level: one space
            total += int(parts[1])
    return total / 1e6


def breakdown(name: str, night_dir: Path, scratch: Path, starshift_cmd: list[str]) -> dict:
    """Per-step cumulative times of ``starshift align`` on one night, under cProfile."""
    prof = scratch / "align.prof"
    out = scratch / f"{name}_profile"
    # cProfile sees one process: starshift's worker processes (jobs) are turned off
    for extra in (["jobs=1"], []):
        prof.unlink(missing_ok=True)
        r = run_process([sys.executable, "-c", PROFILE_SCRIPT, str(prof), "align",
                         str(night_dir), str(out), *extra], scratch / "profile.log")
        shutil.rmtree(out, ignore_errors=True)
        if r["rc"] == 0:
            break
    res = {"night": name, "overrides": extra, "wall_profiled_s": r["wall"], "rc": r["rc"],
           "error": r["error"], "steps": {}}
    if prof.is_file():
        stats = pstats.Stats(str(prof)).stats
        res["profiled_total_s"] = max(v[3] for v in stats.values())
        for label, (suffix, func) in STEPS:
            c = _cumulative(stats, suffix, func)
            res["steps"][label] = None if c is None else {"s": c[0], "calls": c[1]}
    res["timeline"] = timeline(night_dir, scratch)
    t = []
    for _ in range(3):
        t.append(run_process([*starshift_cmd, "--help"], scratch / "help.log")["wall"])
    res["starshift_help_s"] = float(np.median(t))
    t = [run_process([sys.executable, "-c", "pass"], scratch / "pass.log")["wall"]
         for _ in range(3)]
    res["python_pass_s"] = float(np.median(t))
    try:
        res["importtime_align_modules_s"] = _importtime(ALIGN_IMPORTS)
    except Exception as exc:  # a module renamed under us
        res["importtime_error"] = str(exc)
    return res


def timeline(night_dir: Path, scratch: Path, repeat: int = 3) -> dict:
    """Wall-clock steps of ``starshift align IN OUT`` (default jobs: what users run), median
    over ``repeat`` runs: the console script with time stamps (:data:`TIMELINE_SCRIPT`)."""
    stamps_file, out = scratch / "timeline.json", scratch / "timeline_out"
    steps: dict[str, list[float]] = {label: [] for label, _, _ in TIMELINE}
    walls = []
    for _ in range(repeat):
        stamps_file.unlink(missing_ok=True)
        spawn = time.time()
        r = run_process([sys.executable, "-c", TIMELINE_SCRIPT, str(stamps_file), "-q",
                         "align", str(night_dir), str(out)], scratch / "timeline.log")
        end = spawn + r["wall"]
        shutil.rmtree(out, ignore_errors=True)
        if r["rc"] or not stamps_file.is_file():
            return {"error": r["error"] or f"exit {r['rc']}"}
        st = {"spawn": spawn, "end": end, **json.loads(stamps_file.read_text())}
        for label, a, b in TIMELINE:
            if a in st and b in st:
                steps[label].append(st[b] - st[a])
        walls.append(r["wall"])
    return {"wall_s": float(np.median(walls)),
            "steps": {k: float(np.median(v)) if v else None for k, v in steps.items()}}


# --------------------------------------------------------------------------- report
#: A fresh process that fills new numpy arrays: what new memory costs on this machine at this
#: moment. On the 2-core virtual machine the README's figures come from, it moved between 8
#: and 110 ms per 100 MiB within one hour (the host taking back the guest's free memory, as
#: far as we can tell), and the 26 MP night's times, some 300 MB of new arrays per process,
#: move with it: read them beside this figure.
FRESH_MEMORY_SCRIPT = """\
import time
import numpy as np
t = time.perf_counter()
keep = [np.ones(25 << 20, dtype=np.float32) for _ in range(5)]  # 5 x 100 MiB
print(time.perf_counter() - t)
"""


def fresh_memory_ms() -> float | None:
    """Milliseconds per 100 MiB a fresh process spends filling new arrays (median of 3)."""
    got = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", FRESH_MEMORY_SCRIPT], capture_output=True,
                           text=True)
        if r.returncode:
            return None
        got.append(float(r.stdout) * 1000 / 5)
    return round(float(np.median(got)), 1)


def environment(starshift_cmd) -> dict:
    env = {v: os.environ.get(v, "unset") for v in THREAD_VARS}
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "fresh_memory_ms_per_100MiB_start": fresh_memory_ms(),
            "thread_env": env, "starshift_cmd": " ".join(starshift_cmd),
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "unset")}
    for mod in ("numpy", "scipy", "astropy", "photutils", "skimage", "astroalign", "starshift"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True,
                               text=True).stdout.splitlines()
        info["git"] = f"{head} + {len(dirty)} modified tracked file(s) (working tree)"
    except OSError:
        info["git"] = None
    return info


def _f(v, spec=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _acc(r, way) -> str:
    a = r["accuracy"].get(way)
    if not a:
        return "-"
    return f"{a[0]}/{a[2]}" if a[0] == a[1] else f"{a[0]}-{a[1]}/{a[2]}"


def results_table(results: list[dict]) -> str:
    head = ["night", "frames", "size", *(f"{LABELS[w]} s" for w in WAYS), "align ms/frame",
            *(f"{LABELS[a]}/{LABELS[b]}" for a, b in RATIOS),
            "align <0.5px", "astroalign <0.5px", "notebook <0.5px", "align PSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        size = f"{r['shape'][1]}x{r['shape'][0]}" if r["shape"] else "-"
        per = 1e3 * r.get("align_s", math.nan) / r["frames"] if r["frames"] else math.nan
        cells = [r["night"], str(r["frames"]), size, *(_f(r.get(f"{w}_s")) for w in WAYS),
                 _f(per, ".0f"), *(_f(r.get(f"{a}/{b}"), ".2f") for a, b in RATIOS),
                 _acc(r, "align"), _acc(r, "astroalign"), _acc(r, "notebook"),
                 _f(r.get("align_pss_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(results: list[dict]) -> str:
    """Peak memory per way: process tree PSS / summed RSS / largest single process RSS."""
    head = ["night", *(f"{LABELS[w]} MB" for w in WAYS)]
    lines = ["Peak memory (MB), process tree PSS / tree summed RSS / largest process RSS:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["night"]]
        for w in WAYS:
            vals = [r.get(f"{w}_{m}") for m in ("pss_mb", "rss_mb", "max_rss_mb")]
            cells.append("-" if vals[0] is None or math.isnan(vals[0])
                         else " / ".join(_f(v, ".0f") for v in vals))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown_table(b: dict) -> str:
    cmd = " ".join(["starshift align IN OUT", *b["overrides"]])
    lines = [f"Per-step breakdown of `{cmd}` on {b['night']} (cProfile cumulative, one "
             f"process; profiled process {b['wall_profiled_s']:.2f} s wall"
             + (f", exit {b['rc']}: {b['error']}" if b["rc"] else "") + "):", "",
             "| step | s | calls | share of profiled total |", "|---|---|---|---|"]
    total = b.get("profiled_total_s")
    for label, v in b["steps"].items():
        if v is None:
            lines.append(f"| {label} | not called (renamed?) | - | - |")
        else:
            share = f"{100 * v['s'] / total:.0f}%" if total else "-"
            lines.append(f"| {label} | {v['s']:.3f} | {v['calls']} | {share} |")
    if total:
        lines.append(f"| profiled total | {total:.3f} | | 100% |")
    lines += ["", f"- `python -c pass`: {b['python_pass_s']:.3f} s; `starshift --help`: "
              f"{b['starshift_help_s']:.3f} s (wall, median of 3)"]
    if "importtime_align_modules_s" in b:
        lines.append(f"- `python -X importtime -c 'import {', '.join(ALIGN_IMPORTS)}'`: "
                     f"{b['importtime_align_modules_s']:.3f} s (sum of top-level cumulative)")
    tl = b.get("timeline")
    if tl and "steps" in tl:
        lines += ["", f"Wall-clock steps of `starshift align IN OUT` (default jobs) on {b['night']}"
                  f", median of 3 (whole process {tl['wall_s']:.2f} s; stamps where each step "
                  "starts and ends):", "", "| step | s | share |", "|---|---|---|"]
        for label, v in tl["steps"].items():
            lines.append(f"| {label} | {_f(v, '.3f')} | "
                         + (f"{100 * v / tl['wall_s']:.0f}%" if v is not None else "-") + " |")
    elif tl:
        lines += ["", f"- wall-clock steps: {tl.get('error')}"]
    return "\n".join(lines)


def env_text(info: dict) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


# --------------------------------------------------------------------------- DVC stages
STAGE_CHAIN = ("centroid", "shift", "reject", "report")
ALIGN_STAGES = ("centroid", "shift", "reject")


def bench_stages(name: str, night_dir: Path, repeat: int, tmp: Path,
                 starshift_cmd: list[str]) -> dict:
    """Each DVC stage command of one sample night as a whole process, the night's settings
    from the repository's params.yaml, outputs into a scratch folder: wall time per stage
    (median over ``repeat`` runs of the chain)."""
    times: dict[str, list[float]] = {st: [] for st in STAGE_CHAIN}
    for rep in range(repeat):
        out = tmp / f"stages_{name}_{rep}"
        paths = {"frames": night_dir, "shifts": out / "shifts.csv", "shifted": out / "shifted",
                 "residuals": out / "residuals.csv", "diagnostics": out / "diagnostics.csv",
                 "thresholds": out / "thresholds.csv", "compare": out / "box_vs_auto.csv",
                 "report": out / "report", "plots": out / "plots",
                 "metrics": out / "metrics.json", "stack": out / "stack"}
        from starshift.cli import STAGES

        for st in STAGE_CHAIN:
            cmd = [*starshift_cmd, "-q", "stage", st, name, "--params",
                   str(REPO / "params.yaml")]
            for key in STAGES[st]:
                cmd += [f"--{key}", str(paths[key])]
            r = run_process(cmd, tmp / f"stages_{name}_{st}_{rep}.log")
            if r["rc"]:
                print(f"  {name} stage {st}: exit {r['rc']}: {r['error']}", file=sys.stderr)
            times[st].append(r["wall"])
        print(f"  {name} stages rep {rep}: " + ", ".join(f"{st} {times[st][-1]:.1f} s"
                                                         for st in STAGE_CHAIN), file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    res = {"night": name, **{st: float(np.median(v)) for st, v in times.items()}}
    res["align_stages"] = float(np.median([sum(times[st][i] for st in ALIGN_STAGES)
                                           for i in range(repeat)]))
    return res


def stages_table(rows: list[dict], repeat: int) -> str:
    lines = [f"DVC stage commands as whole processes (wall s, median of {repeat}; settings from "
             "params.yaml; align stages = centroid + shift + reject):", "",
             "| night | " + " | ".join(STAGE_CHAIN) + " | align stages | report / align stages |",
             "|---|" + "---|" * (len(STAGE_CHAIN) + 2)]
    for r in rows:
        lines.append(f"| {r['night']} | " + " | ".join(f"{r[st]:.1f}" for st in STAGE_CHAIN)
                     + f" | {r['align_stages']:.1f} | {r['report'] / r['align_stages']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- night length
LENGTH_NIGHT = "march_29_2018"


def bench_lengths(counts: list[int], tmp: Path, starshift_cmd: list[str]) -> list[dict]:
    """``starshift align`` (default jobs) on nights of ``counts`` frames of 765 x 510: peak
    memory must not grow with the night's length (streaming). The frames are symbolic links to
    the generated sample night ``LENGTH_NIGHT``'s, cycled, each under a new name (sorted in
    the cycle's order, so the reference is the sample's first frame)."""
    src = tmp / "length_source"
    subprocess.run([*starshift_cmd, "-q", "sample", "--out", str(src), "--nights",
                    LENGTH_NIGHT], check=True, stdout=subprocess.DEVNULL)
    frames = light_frames(src / LENGTH_NIGHT)
    rows = []
    for n in counts:
        night = tmp / f"length_{n}"
        night.mkdir()
        for i in range(n):
            f = frames[i % len(frames)]
            (night / f"L{i:05d}_{f.name}").symlink_to(f)
        warm(frames)
        out = tmp / f"length_{n}_out"
        r = run_process([*starshift_cmd, "align", str(night), str(out)],
                        tmp / f"length_{n}.log")
        r["frames"] = n
        rows.append(r)
        print(f"  length {n}: {r['wall']:.1f} s, PSS {r['pss_mb']:.0f} MB, largest RSS "
              f"{r['max_rss_mb']:.0f} MB" + (f", exit {r['rc']}: {r['error']}" if r["rc"] else ""),
              file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(night, ignore_errors=True)
    return rows


def lengths_table(rows: list[dict]) -> str:
    first = rows[0]
    lines = [f"Peak memory against the night's length (`starshift align`, default jobs, frames of "
             f"{LENGTH_NIGHT} linked under new names; one run each):", "",
             "| frames | wall s | ms/frame | PSS MB | summed RSS MB | largest RSS MB | "
             f"PSS / PSS at {first['frames']} |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['frames']} | {r['wall']:.1f} | {1000 * r['wall'] / r['frames']:.0f} "
                     f"| {r['pss_mb']:.0f} | {r['rss_mb']:.0f} | {r['max_rss_mb']:.0f} | "
                     f"{r['pss_mb'] / first['pss_mb']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _parse_box(text: str):
    night, _, spec = text.partition("=")
    x, y, size = (float(v) for v in spec.split(","))
    return night, ((x, y), int(size))


def main(argv=None) -> int:
    from starshift.datasets import ALL_NIGHTS, SEED_BOXES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="directory holding the sample nights (default: "
                    "generate them with `starshift sample` into a temporary directory)")
    ap.add_argument("--real", type=Path, default=DEFAULT_REAL,
                    help=f"directory of real nights (default {DEFAULT_REAL}; skipped if absent)")
    ap.add_argument("--nights", help="comma-separated night names (default: every sample night, "
                    f"every real night, {BIG_NIGHT})")
    ap.add_argument("--skip-26mp", action="store_true", help=f"leave out {BIG_NIGHT}")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per night "
                    "(default 3; medians are reported)")
    ap.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of "
                    + ",".join(WAYS))
    ap.add_argument("--profile-night", help="night for the per-step breakdown (default: "
                    "wallace_2018-10-12 if present, else march_09_2018; 'none' to skip)")
    ap.add_argument("--box", action="append", default=[], metavar="NIGHT=X,Y,SIZE",
                    help="search box for the notebook way on another night (repeatable)")
    ap.add_argument("--lengths", help="memory against the night's length: comma-separated "
                    "frame counts (e.g. 200,2000) of a night made of one sample night's frames "
                    f"({LENGTH_NIGHT}, linked over and over under new names), one "
                    "`starshift align` each")
    ap.add_argument("--stages", action="store_true", help="also time each DVC stage command "
                    "(starshift stage centroid/shift/reject/compare/report, params.yaml) on "
                    "every sample night, as whole processes")
    ap.add_argument("--scratch", type=Path, help="where outputs go during the runs (default: "
                    "a temporary directory, removed afterwards)")
    ap.add_argument("--out", type=Path, help="write results: .md, .json, or (other) both")
    args = ap.parse_args(argv)

    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        ap.error(f"--ways: unknown {', '.join(unknown)}; choose from {','.join(WAYS)}")
    if "astroalign" in ways:
        try:
            import astroalign  # noqa: F401
        except ImportError:
            print("astroalign is not installed (pip install astroalign): its way is skipped")
            ways.remove("astroalign")
    exe = shutil.which("starshift")
    starshift_cmd = [exe] if exe else [sys.executable, "-m", "starshift.cli"]
    boxes = {n: b for n, b in SEED_BOXES.items()}
    boxes.update(_parse_box(b) for b in args.box)
    wanted = [n.strip() for n in args.nights.split(",")] if args.nights else None

    def want(n):
        return wanted is None or n in wanted

    info = environment(starshift_cmd)
    print(env_text(info), flush=True)
    if args.scratch:
        Path(args.scratch).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_commands_", dir=args.scratch))
    results, nights = [], []
    try:
        sample = [n for n in ALL_NIGHTS if want(n)]
        if sample:
            data = args.data
            if data is None:
                data = tmp / "sample"
                t0 = time.perf_counter()
                subprocess.run([*starshift_cmd, "-q", "sample", "--out", str(data), "--nights",
                                ",".join(sample)], check=True, stdout=subprocess.DEVNULL)
                print(f"generated {len(sample)} sample night(s) in "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
            nights += [(n, Path(data) / n) for n in sample]
        if args.real.is_dir():
            nights += [(d.name, d) for d in sorted(args.real.iterdir())
                       if d.is_dir() and want(d.name)]
        else:
            print(f"{args.real}: absent, real nights skipped", file=sys.stderr)
        if not args.skip_26mp and want(BIG_NIGHT):
            t0 = time.perf_counter()
            big, box = make_big_night(tmp / BIG_NIGHT)
            boxes.setdefault(BIG_NIGHT, box)
            nights.append((BIG_NIGHT, big))
            print(f"generated {BIG_NIGHT} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        # compile and cache every library the children import, once, untimed: starshift's
        # bytecode explicitly (an installed package has it; an editable one writes it on
        # first use, unless PYTHONDONTWRITEBYTECODE is set, as on some build machines)
        import starshift

        subprocess.run([sys.executable, "-m", "compileall", "-q",
                        str(Path(starshift.__file__).parent)], check=False)
        subprocess.run([sys.executable, "-c", "import " + ", ".join(
            [*ALIGN_IMPORTS, "photutils.centroids", "scipy.ndimage", "astropy.io.fits",
             *(["astroalign"] if "astroalign" in ways else [])])], check=False)
        scratch = tmp / "runs"
        scratch.mkdir()
        for name, night_dir in nights:
            print(f"{name}:", file=sys.stderr)
            try:
                results.append(bench_night(name, night_dir, boxes.get(name), ways, args.repeat,
                                           scratch, starshift_cmd))
            except Exception as exc:  # e.g. discovery broken by a change under way
                print(f"  {name}: skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        stage_rows = None
        if args.stages:
            stage_rows = [bench_stages(n, d, args.repeat, tmp, starshift_cmd)
                          for n, d in nights if n in ALL_NIGHTS]
        lengths = None
        if args.lengths:
            lengths = bench_lengths([int(n) for n in args.lengths.split(",")], tmp,
                                    starshift_cmd)
        prof_night = args.profile_night
        if prof_night is None:
            names = [n for n, _ in nights]
            prof_night = next((n for n in ("wallace_2018-10-12", "march_09_2018")
                               if n in names), names[0] if names else "none")
        brk = None
        if prof_night != "none":
            night_dir = dict(nights).get(prof_night)
            if night_dir is None:
                print(f"--profile-night {prof_night}: not among the nights", file=sys.stderr)
            else:
                brk = breakdown(prof_night, night_dir, scratch, starshift_cmd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["fresh_memory_ms_per_100MiB_end"] = fresh_memory_ms()
    info["repeat"] = args.repeat
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])

    md = [f"Whole processes, wall time, median of {args.repeat} alternating runs; ratios are "
          "medians of per-repeat ratios; `<0.5px` = good frames (reference left out) aligned "
          "within 0.5 px of truth.csv / good frames (a-b: the range over the repeats).", "",
          results_table(results), "", memory_table(results), ""]
    for r in results:
        for way, errs in r["errors"].items():
            shown = errs[:5] + ([f"... {len(errs) - 5} more"] if len(errs) > 5 else [])
            md.append(f"- {r['night']} {way}: " + "; ".join(shown))
    if stage_rows:
        md += ["", stages_table(stage_rows, args.repeat)]
    if lengths is not None:
        md += ["", lengths_table(lengths)]
    if brk is not None:
        md += ["", breakdown_table(brk)]
    md += ["", "Environment:", "", env_text(info)]
    text = "\n".join(md) + "\n"
    print()
    print(text)
    if args.out:
        payload = {"info": info, "nights": results, "breakdown": brk, "lengths": lengths,
                   "stages": stage_rows}
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps(payload, indent=1, default=str))
        elif args.out.suffix == ".md":
            args.out.write_text(text)
        else:
            args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
            args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
