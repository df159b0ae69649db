"""Benchmark of the automatic shift estimator (starshift.register) on the sample nights.

Measures, in one run and one process (one thread):

* accuracy against truth.csv on every good frame (not marked bad, reference excluded):
  max |error|, RMS error per axis, RMS of error / sigma per axis, frames within 0.5 px;
* speed of ``estimate_shift`` per frame with the reference prepared once (median over the
  night's frames of each frame's best of ``--repeat`` runs);
* speed of astroalign's ``find_transform`` on the same frames (optional: ``pip install
  astroalign``; skipped with a note if it is not installed);
* the whole per-frame align, read + estimate + shift (order 0) + write, against the seed-faithful
  method, read + box centroid (photutils centroid_2dg) + shift + re-measure + write, on the three
  seed nights with their original search boxes.

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
from starshift.centroid import CentroidFailed, box_centroid  # noqa: E402
from starshift.frames import find_light_frames, read_frame, read_table, write_frame  # noqa: E402
from starshift.register import estimate_shift, prepare_reference  # noqa: E402
from starshift.shift import apply_shift  # noqa: E402

NIGHTS = ("march_29_2018", "april_30_2018", "march_09_2018", "drift_lowsnr", "crowded_jumps")
#: the seed analysis's search boxes: (x, y) centre and side, pixels
SEED_BOXES = {
    "march_29_2018": ((560, 426), 30),
    "april_30_2018": ((556, 410), 25),
    "march_09_2018": ((676, 333), 25),
}


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

    # whole per-frame align: auto vs the seed-faithful box method
    out_dir = scratch / night
    out_dir.mkdir(parents=True, exist_ok=True)
    t_auto, parts_auto = [], []
    for f in files:
        t0 = time.perf_counter()
        data, header = read_frame(f)
        t1 = time.perf_counter()
        est = estimate_shift(prep, data)
        t2 = time.perf_counter()
        if est.ok:
            shifted = apply_shift(data, est.dx, est.dy, order=0)
            t3 = time.perf_counter()
            write_frame(out_dir / f"auto_{f.name}", shifted, header)
        else:
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        t_auto.append(t4 - t0)
        parts_auto.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    res["align_auto_parts_ms"] = dict(zip(("read", "estimate", "shift", "write"),
                                          (1e3 * np.median(parts_auto, axis=0)).round(2).tolist(),
                                          strict=True))
    res["t_align_auto_ms"] = 1e3 * float(np.median(t_auto))
    if night in SEED_BOXES:
        centre, size = SEED_BOXES[night]
        xr, yr = box_centroid(datas[0], centre, size)
        t_seed, seed_fail, parts_seed = [], 0, []
        for f in files:
            t0 = time.perf_counter()
            data, header = read_frame(f)
            t1 = time.perf_counter()
            t2 = t3 = t4 = t1
            try:
                x, y = box_centroid(data, centre, size)
                t2 = time.perf_counter()
                shifted = apply_shift(data, xr - x, yr - y, order=0)
                t3 = time.perf_counter()
                box_centroid(shifted, centre, size)  # the seed's "new shift" check
                t4 = time.perf_counter()
                write_frame(out_dir / f"seed_{f.name}", shifted, header)
            except CentroidFailed:
                seed_fail += 1
            t5 = time.perf_counter()
            t_seed.append(t5 - t0)
            if t4 > t1:
                parts_seed.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))
        if parts_seed:
            res["align_seed_parts_ms"] = dict(zip(
                ("read", "centroid", "shift", "re-measure", "write"),
                (1e3 * np.median(parts_seed, axis=0)).round(2).tolist(), strict=True))
        res["t_align_seed_ms"] = 1e3 * float(np.median(t_seed))
        res["seed_failed"] = seed_fail
        res["align_ratio"] = res["t_align_seed_ms"] / res["t_align_auto_ms"]
    return res


def _fmt(v, spec=".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def table(results: list[dict], has_aa: bool) -> str:
    head = ["night", "good", "<0.5px", "fail", "max abs err", "rms x", "rms y", "z x", "z y",
            "z", "n*", "est ms", "aa ms", "aa/est", "align ms", "seed ms", "seed/align"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["night"], str(r["good"]), str(r["within_0.5"]), str(r["failed"]),
                 _fmt(r["max_abs_err"]), _fmt(r["rms_err_x"], ".4f"), _fmt(r["rms_err_y"], ".4f"),
                 _fmt(r["rms_z_x"], ".2f"), _fmt(r["rms_z_y"], ".2f"), _fmt(r["rms_z"], ".2f"),
                 _fmt(r["median_n_stars"], ".0f"), _fmt(r["t_estimate_ms"], ".2f"),
                 _fmt(r.get("t_astroalign_ms"), ".1f") if has_aa else "n/a",
                 _fmt(r.get("astroalign_ratio"), ".1f") if has_aa else "n/a",
                 _fmt(r["t_align_auto_ms"], ".1f"), _fmt(r.get("t_align_seed_ms"), ".1f"),
                 _fmt(r.get("align_ratio"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: list[dict], has_aa: bool) -> dict:
    est = [fr["t_estimate"] for r in results for fr in r["frames_detail"]]
    out = {"median_estimate_ms_all": 1e3 * float(np.median(est))}
    if has_aa:
        out["median_astroalign_ms_all"] = float(np.median([r["t_astroalign_ms"]
                                                           for r in results]))
        out["astroalign_ratio_min"] = min(r["astroalign_ratio"] for r in results)
    seeds = [r for r in results if "align_ratio" in r]
    if seeds:
        out["align_ratio_min"] = min(r["align_ratio"] for r in seeds)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="directory holding the sample nights "
                    "(default: generate them into a temporary directory)")
    ap.add_argument("--out", type=Path, help="write results: .json, .md, or both")
    ap.add_argument("--nights", default=",".join(NIGHTS), help="comma-separated night names")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs of estimate_shift per frame (best is kept)")
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
            from starshift.sample import generate_sample

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
    md = table(results, has_aa)
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
        for key in ("align_auto_parts_ms", "align_seed_parts_ms"):
            if key in r:
                parts = ", ".join(f"{k} {v:.1f}" for k, v in r[key].items())
                print(f"{r['night']}: {key.split('_')[1]} align, median ms: {parts}")
        if r.get("seed_failed"):
            print(f"{r['night']}: seed box method lost the star on {r['seed_failed']} frame(s)")
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
