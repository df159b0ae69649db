"""Benchmark of the automatic shift estimator (starshift.registration) on the sample nights.

Measures, in one run and one process (one thread):

* accuracy against truth.csv on every good frame (not marked bad, reference excluded):
  max |error|, RMS error per axis, RMS of error / sigma per axis, frames within 0.5 px;
* speed of ``estimate_shift`` per frame with the reference prepared once (median over the
  night's frames of each frame's best of ``--repeat`` runs);
* speed of astroalign's ``find_transform`` on the same frames (optional: ``pip install
  astroalign``; skipped with a note if it is not installed);
* the whole per-frame align, read + estimate + shift (order 0, median fill) + median background
  subtraction + header keywords + write, interleaved frame by frame (median over the night of
  each frame's best of ``--repeat`` runs), four ways, all with starshift's FITS I/O:

  - ``auto``: starshift's automatic method;
  - ``box``: starshift's ``method=box``, the seed's method as shipped (photutils ``centroid_2dg``
    in the seed's search box, shift, the seed's re-measure check), with all of starshift's
    plumbing (FITS I/O, exact median, whole-pixel shift by slicing, background by counting);
  - ``notebook``: the seed notebook's steps with its own calls: astropy ``fits.open`` and
    ``fits.writeto``, ``np.median``, ``centroid_2dg``, ``scipy.ndimage.shift(order=0)``; the
    same results at the seed's cost;
  - ``floor``: the automatic method given the true shift for free (truth.csv): read, shift,
    subtract, write. ``box/floor`` is the largest speed-up over ``box`` any estimator could
    give.

  ``box`` and ``notebook`` run on the three seed nights with their original search boxes.

Usage::

    python benchmarks/bench_register.py [--data DIR] [--out FILE] [--nights a,b] [--repeat N]

Without ``--data`` the sample nights are generated (seed 2018) into a temporary directory.
``--out FILE.json`` writes JSON, ``--out FILE.md`` markdown, any other name both.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from starshift import columns as C  # noqa: E402
from starshift.datasets import ALL_NIGHTS, SEED_BOXES  # noqa: E402
from starshift.io import find_light_frames, read_frame, read_table, write_frame  # noqa: E402
from starshift.registration import (  # noqa: E402
    CentroidFailed,
    box_centroid,
    box_slices,
    estimate_shift,
    prepare_reference,
)
from starshift.shift import apply_shift, fill_value, median_after_shift  # noqa: E402

NIGHTS = ALL_NIGHTS


def _best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rms(v) -> float:
    v = np.asarray(v, dtype=float)
    return float(np.sqrt(np.mean(v**2))) if v.size else float("nan")


#: the timed parts of each whole-align way (read ... write), in order
PART_NAMES = {
    "auto": ("read", "estimate", "shift", "background", "write"),
    "floor": ("read", "shift", "background", "write"),
    "box": ("read", "centroid", "shift", "re-measure", "background", "write"),
    "notebook": ("read", "centroid", "shift", "re-measure", "background", "write"),
}


def _finish(data, header, dx, dy, bkg, out) -> None:
    header["XOFFSET"] = dx
    header["YOFFSET"] = dy
    header["BKGSUB"] = bkg
    write_frame(out, data, header)


def _align_auto(prep, f, out):
    """starshift's automatic method: read, estimate, shift (order 0), subtract, write."""
    t = [time.perf_counter()]
    data, header = read_frame(f)
    t.append(time.perf_counter())
    est = estimate_shift(prep, data)
    t.append(time.perf_counter())
    if not est.ok:
        return False, t
    return True, _shift_subtract_write(data, header, round(est.dx), round(est.dy), out, t)


def _shift_subtract_write(data, header, dx, dy, out, t):
    """The product's order-0 shift stage: median fill, background by counting, write."""
    cval = fill_value(data)
    shifted = apply_shift(data, dx, dy, order=0, fill=cval)
    t.append(time.perf_counter())
    bkg = median_after_shift(data, dx, dy, cval)
    shifted = shifted - bkg
    t.append(time.perf_counter())
    _finish(shifted, header, dx, dy, bkg, out)
    t.append(time.perf_counter())
    return t


def _align_floor(true_shift, f, out):
    """The automatic method given the true shift for free: what any method must spend."""
    t = [time.perf_counter()]
    data, header = read_frame(f)
    t.append(time.perf_counter())
    dx, dy = true_shift[f.name]
    return True, _shift_subtract_write(data, header, round(dx), round(dy), out, t)


def _align_box(ref_xy, centre, size, f, out):
    """starshift's method=box, the seed's method as shipped (same values as the notebook,
    faster plumbing: one-partition median, whole-pixel shift by slicing)."""
    t = [time.perf_counter()]
    data, header = read_frame(f)
    t.append(time.perf_counter())
    try:
        cval = fill_value(data)  # the frame's median: centroid offset and fill
        x, y = box_centroid(data, centre, size, frame_median=cval)
        t.append(time.perf_counter())
        dx, dy = round(ref_xy[0] - x), round(ref_xy[1] - y)
        shifted = apply_shift(data, dx, dy, order=0, fill=cval)
        bkg = median_after_shift(data, dx, dy, cval)
        t.append(time.perf_counter())
        box_centroid(shifted, centre, size, frame_median=bkg)  # the seed's "new shift" check
        t.append(time.perf_counter())
    except CentroidFailed:
        return False, t
    shifted = shifted - bkg
    t.append(time.perf_counter())
    _finish(shifted, header, dx, dy, bkg, out)
    t.append(time.perf_counter())
    return True, t


def _align_notebook(ref_xy, box, f, out):
    """The seed notebook's steps with its own library calls: astropy I/O, ``np.median``,
    ``centroid_2dg`` on the median-subtracted frame, ``ndimage.shift`` order 0 filled with the
    median, the re-measure, the median background, float32 ``fits.writeto``."""
    from astropy.io import fits
    from photutils.centroids import centroid_2dg
    from scipy import ndimage

    sy, sx = box  # the search box's (y, x) slices
    t = [time.perf_counter()]
    with fits.open(f) as hdul:
        data, header = hdul[0].data, hdul[0].header
    t.append(time.perf_counter())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # photutils raises ValueError on a flat box (the star is lost), as box does
            sub = data - np.median(data)
            cx, cy = centroid_2dg(sub[sy, sx])
            t.append(time.perf_counter())
            dx, dy = round(ref_xy[0] - cx - sx.start), round(ref_xy[1] - cy - sy.start)
            shifted = ndimage.shift(data, (dy, dx), order=0, cval=np.median(data))
            t.append(time.perf_counter())
            centroid_2dg((shifted - np.median(shifted))[sy, sx])
            t.append(time.perf_counter())
        except ValueError:
            return False, t
    bkg = float(np.median(shifted))
    shifted = shifted - bkg
    t.append(time.perf_counter())
    header["XOFFSET"] = dx
    header["YOFFSET"] = dy
    header["BKGSUB"] = bkg
    fits.writeto(out, shifted.astype(np.float32), header, overwrite=True)
    t.append(time.perf_counter())
    return True, t


def bench_night(night_dir: Path, repeat: int, astroalign, scratch: Path) -> dict:
    night = night_dir.name
    files = find_light_frames(night_dir)
    truth = read_table(night_dir / "truth.csv").set_index(C.FILE)
    datas = [read_frame(f)[0] for f in files]
    t0 = time.perf_counter()
    prep = prepare_reference(datas[0])
    t_prepare = time.perf_counter() - t0

    rows = []
    for f, data in zip(files, datas, strict=True):
        t, est = _best_of(lambda d=data: estimate_shift(prep, d), repeat)
        tr = truth.loc[f.name]
        rows.append({"file": f.name, "bad": int(tr[C.BAD]), "kind": str(tr[C.KIND]),
                     "true_dx": float(tr[C.DX]), "true_dy": float(tr[C.DY]), "dx": est.dx,
                     "dy": est.dy, "sigma_dx": est.sigma_dx, "sigma_dy": est.sigma_dy,
                     "n_stars": est.n_stars, "method": est.method, "reason": est.reason,
                     "t_estimate": t})
    good = [r for r in rows if not r["bad"] and r["kind"] != "reference"]
    ok = [r for r in good if r["method"] != "failed"]
    ex = np.array([r["dx"] - r["true_dx"] for r in ok])
    ey = np.array([r["dy"] - r["true_dy"] for r in ok])
    zx = ex / np.array([r["sigma_dx"] for r in ok]) if ok else np.array([])
    zy = ey / np.array([r["sigma_dy"] for r in ok]) if ok else np.array([])
    within = int(np.sum((np.abs(ex) < 0.5) & (np.abs(ey) < 0.5)))
    methods: dict[str, int] = {}
    for r in good:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    res = {
        "night": night, "frames": len(rows), "good": len(good), "within_0.5": within,
        "failed": len(good) - len(ok), "methods": methods,
        "max_abs_err": float(max(np.abs(ex).max(), np.abs(ey).max())) if ok else float("nan"),
        "rms_err_x": _rms(ex), "rms_err_y": _rms(ey),
        "rms_z_x": _rms(zx), "rms_z_y": _rms(zy), "rms_z": _rms(np.concatenate([zx, zy])),
        "median_n_stars": float(np.median([r["n_stars"] for r in good])) if good else 0.0,
        "t_prepare_ms": 1e3 * t_prepare,
        "t_estimate_ms": 1e3 * float(np.median([r["t_estimate"] for r in rows])),
        "bad_frames": [{k: r[k] for k in ("file", "method", "dx", "dy", "true_dx", "true_dy")}
                       for r in rows if r["bad"]],
        "frames_detail": rows,
    }

    # astroalign on the same frames (frame -> reference); its translation is our (dx, dy)
    if astroalign is not None:
        times, errs, fails = [], [], 0
        for r, data in zip(rows, datas, strict=True):
            src = np.ascontiguousarray(data)
            tgt = np.ascontiguousarray(datas[0])
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tf, _ = astroalign.find_transform(src, tgt)
                ok_aa = True
            except Exception:  # astroalign raises MaxIterError & co. on frames it cannot match
                ok_aa = False
            times.append(time.perf_counter() - t0)
            if not ok_aa:
                fails += 1 if (not r["bad"] and r["kind"] != "reference") else 0
                continue
            if not r["bad"] and r["kind"] != "reference":
                tx, ty = tf.translation
                errs.append(max(abs(tx - r["true_dx"]), abs(ty - r["true_dy"])))
        res["t_astroalign_ms"] = 1e3 * float(np.median(times))
        res["astroalign_failed"] = fails
        res["astroalign_max_abs_err"] = float(max(errs)) if errs else float("nan")
        res["astroalign_ratio"] = res["t_astroalign_ms"] / res["t_estimate_ms"]

    # whole per-frame align, three ways, interleaved frame by frame (same load for each)
    out_dir = scratch / night
    out_dir.mkdir(parents=True, exist_ok=True)
    true_shift = {name: (float(r[C.DX]), float(r[C.DY])) for name, r in truth.iterrows()}
    ways = {"auto": lambda f, o: _align_auto(prep, f, o),
            "floor": lambda f, o: _align_floor(true_shift, f, o)}
    box = SEED_BOXES.get(night)
    if box is not None:
        centre, size = box
        ref_xy = box_centroid(datas[0], centre, size)
        ways["box"] = lambda f, o: _align_box(ref_xy, centre, size, f, o)
        slices = box_slices(datas[0].shape, centre, size)
        ways["notebook"] = lambda f, o: _align_notebook(ref_xy, slices, f, o)
    times: dict[str, list[float]] = {k: [] for k in ways}
    parts: dict[str, list[tuple]] = {k: [] for k in ways}
    failed: dict[str, int] = {k: 0 for k in ways}
    for i, f in enumerate(files):
        best = {k: (math.inf, None) for k in ways}
        for rep in range(repeat):
            for k, fn in ways.items():
                t0 = time.perf_counter()
                ok, marks = fn(f, out_dir / f"{k}_{rep}_{i}.fit")
                t = time.perf_counter() - t0
                if t < best[k][0]:
                    best[k] = (t, (ok, marks))
        for k in ways:
            t, (ok, marks) = best[k]
            times[k].append(t)
            if ok:
                parts[k].append(np.diff(marks))
            else:
                failed[k] += 1
        for stale in out_dir.iterdir():  # keep the scratch small
            stale.unlink()
    for k in ways:
        res[f"t_align_{k}_ms"] = 1e3 * float(np.median(times[k]))
        if parts[k]:
            res[f"align_{k}_parts_ms"] = dict(zip(
                PART_NAMES[k], (1e3 * np.median(parts[k], axis=0)).round(2).tolist(),
                strict=True))
        res[f"align_{k}_failed"] = failed[k]
    for k in ("box", "notebook"):
        if k in ways:
            res[f"align_ratio_{k}"] = res[f"t_align_{k}_ms"] / res["t_align_auto_ms"]
            res[f"align_ratio_{k}_floor"] = res[f"t_align_{k}_ms"] / res["t_align_floor_ms"]
    return res


def _fmt(v, spec=".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def table(results: list[dict], has_aa: bool) -> str:
    """Accuracy against truth and the estimator's speed."""
    head = ["night", "good", "<0.5px", "fail", "max abs err", "rms x", "rms y", "z x", "z y",
            "z", "n*", "est ms", "aa ms", "aa/est"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["night"], str(r["good"]), str(r["within_0.5"]), str(r["failed"]),
                 _fmt(r["max_abs_err"]), _fmt(r["rms_err_x"], ".4f"), _fmt(r["rms_err_y"], ".4f"),
                 _fmt(r["rms_z_x"], ".2f"), _fmt(r["rms_z_y"], ".2f"), _fmt(r["rms_z"], ".2f"),
                 _fmt(r["median_n_stars"], ".0f"), _fmt(r["t_estimate_ms"], ".2f"),
                 _fmt(r.get("t_astroalign_ms"), ".1f") if has_aa else "n/a",
                 _fmt(r.get("astroalign_ratio"), ".1f") if has_aa else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def align_table(results: list[dict]) -> str:
    """Whole per-frame align (read, estimate, shift, subtract, write), median ms per frame."""
    head = ["night", "auto ms", "box ms", "notebook ms", "box/auto", "notebook/auto",
            "floor ms", "box/floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["night"], _fmt(r["t_align_auto_ms"], ".1f"),
                 _fmt(r.get("t_align_box_ms"), ".1f"), _fmt(r.get("t_align_notebook_ms"), ".1f"),
                 _fmt(r.get("align_ratio_box"), ".1f"), _fmt(r.get("align_ratio_notebook"), ".1f"),
                 _fmt(r["t_align_floor_ms"], ".1f"), _fmt(r.get("align_ratio_box_floor"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: list[dict], has_aa: bool) -> dict:
    est = [fr["t_estimate"] for r in results for fr in r["frames_detail"]]
    out = {"median_estimate_ms_all": 1e3 * float(np.median(est))}
    if has_aa:
        out["median_astroalign_ms_all"] = float(np.median([r["t_astroalign_ms"]
                                                           for r in results]))
        out["astroalign_ratio_min"] = min(r["astroalign_ratio"] for r in results)
    for k in ("box", "notebook", "box_floor"):
        vals = [r[f"align_ratio_{k}"] for r in results if f"align_ratio_{k}" in r]
        if vals:
            out[f"align_ratio_{k}_min"] = min(vals)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="directory holding the sample nights "
                    "(default: generate them into a temporary directory)")
    ap.add_argument("--out", type=Path, help="write results: .json, .md, or both")
    ap.add_argument("--nights", default=",".join(NIGHTS), help="comma-separated night names")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per frame of estimate_shift and of each whole align "
                    "(best is kept)")
    args = ap.parse_args(argv)
    nights = [n.strip() for n in args.nights.split(",") if n.strip()]

    try:
        import astroalign
    except ImportError:
        astroalign = None
        print("astroalign is not installed (pip install astroalign): its column is skipped")

    tmp = Path(tempfile.mkdtemp(prefix="bench_register_"))
    try:
        data = args.data
        if data is None:
            from starshift.datasets import generate_sample

            data = tmp / "sample"
            t0 = time.perf_counter()
            generate_sample(data, nights=nights)
            print(f"generated {len(nights)} sample night(s) in {time.perf_counter() - t0:.1f} s")
        results = []
        for night in nights:
            r = bench_night(Path(data) / night, args.repeat, astroalign, tmp / "out")
            results.append(r)
            print(f"{night}: done ({r['frames']} frames)", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    has_aa = astroalign is not None
    md = table(results, has_aa) + "\n\n" + align_table(results)
    summ = summary(results, has_aa)
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "repeat": args.repeat,
            "astroalign": getattr(astroalign, "__version__", None)}
    print(md)
    print()
    for k, v in summ.items():
        print(f"{k}: {v:.2f}")
    for r in results:
        for b in r["bad_frames"]:
            print(f"{r['night']}: bad frame {b['file']} -> {b['method']} "
                  f"({_fmt(b['dx'], '.2f')}, {_fmt(b['dy'], '.2f')}), "
                  f"truth ({b['true_dx']:.2f}, {b['true_dy']:.2f})")
        for way in PART_NAMES:
            if f"align_{way}_parts_ms" in r:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in r[f"align_{way}_parts_ms"].items())
                print(f"{r['night']}: {way} align, median ms: {parts}")
            if r.get(f"align_{way}_failed"):
                print(f"{r['night']}: {way} align failed on {r[f'align_{way}_failed']} frame(s)")
        if "t_astroalign_ms" in r:
            print(f"{r['night']}: astroalign max abs err {_fmt(r['astroalign_max_abs_err'])} px, "
                  f"failed on {r['astroalign_failed']} good frame(s)")
    if args.out:
        out = args.out
        payload = {"info": info, "summary": summ,
                   "nights": [{k: v for k, v in r.items() if k != "frames_detail"}
                              for r in results],
                   "frames": {r["night"]: r["frames_detail"] for r in results}}
        text_md = (f"{md}\n\n" + "\n".join(f"- {k}: {v:.2f}" for k, v in summ.items())
                   + f"\n\n{json.dumps(info)}\n")
        if out.suffix == ".json":
            out.write_text(json.dumps(payload, indent=1, default=str))
        elif out.suffix == ".md":
            out.write_text(text_md)
        else:
            out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
            out.with_suffix(".md").write_text(text_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
