"""The ``starshift`` command line.

Errors a user can cause print one line (``starshift: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__
from ._lazy import defer_unused_numpy, lighten_astropy_import, skip_scipy_doc_notes
from .errors import StarshiftError

# One BLAS thread per process unless the user chose otherwise (set before numpy loads its
# BLAS). starshift's matrix products are small (background meshes); OpenBLAS's extra threads
# only spin on the cores the frame workers need: starshift align on the 25-frame 1 MP
# wallace night used 4.4 s of CPU with them, 3.0-3.4 s without (loaded 2-core machine).
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

log = logging.getLogger("starshift")

#: set by :func:`run`, the console script: this process ends when the command does
_CONSOLE = False


def _imports_done() -> None:
    """A command has imported what it runs: hand the import-time objects to the collector's
    permanent generation and collect again from here, and keep the numpy submodules nobody
    here uses from being imported with scipy (console script only; see :func:`run` and
    :func:`starshift._lazy.defer_unused_numpy`)."""
    if _CONSOLE:
        defer_unused_numpy()
        gc.freeze()
        gc.enable()

ALIGN_EPILOG = """\
overrides (Hydra syntax, KEY=VALUE):
  method=box|auto                       shift estimation (default auto; box = the seed's)
  centroid.box_center=[676,333]         search-box centre (x,y) in the reference frame
  centroid.box_size=25                  search-box side, px
  'pre_shift={FILE:[dx,dy],...}'        whole-pixel shift applied before measuring a file
  'bad_frames=[FILE,...]'               frames rejected by hand
  reference=FILE|auto                   reference frame (default: first by name; another
                                        when most frames fail against it)
  shift.order=0|1|3  shift.fill=median|nan|zero|NUMBER  shift.subtract_background=true
  reject.max_residual=0.5               limit on the re-measured "new shift", px
  glob='*.fit,*.fits,*.fts'             which files are considered
  jobs=0                                worker processes (0: one per core)
  executor=local|dask                   where frames run: forked workers or dask workers
  dask.address=tcp://HOST:8786          executor=dask: an existing scheduler (default: a
                                        LocalCluster of `jobs` workers); docs/cluster.md

example:
  starshift align data/sample/march_09_2018 out/march_09 method=box \\
      centroid.box_center=[676,333] centroid.box_size=25 \\
      'pre_shift={NGC_3201_B_60.000secs_00001613.fit:[-3,5]}'
"""


def _progress(args) -> bool:
    """Progress bars: unless ``-q``, and only on a terminal (see :mod:`starshift._progress`)."""
    from ._progress import on_terminal

    return not args.quiet and on_terminal()


def _cmd_sample(args) -> int:
    from .datasets import generate_sample

    _imports_done()
    nights = [n.strip() for n in args.nights.split(",")] if args.nights else None
    dirs = generate_sample(args.out, seed=args.seed, nights=nights, progress=_progress(args))
    for d in dirs:
        print(d)
    return 0


def _cmd_align(args) -> int:
    from . import columns as C
    from ._table import seed_table
    from .config import align_defaults, compose_align
    from .pipeline.stages import align_table

    _imports_done()
    # no overrides: the schema's defaults as they are, without OmegaConf (see align_defaults)
    cfg = compose_align(args.overrides) if args.overrides else align_defaults()
    diag = align_table(args.input_dir, args.output_dir, cfg, progress=_progress(args))
    print(seed_table(diag, cfg["reject"]["max_residual"]))
    kept = int((diag[C.STATUS] == C.KEPT).sum())
    print(f"wrote {kept} aligned frame(s) and diagnostics.csv to {args.output_dir}")
    return 0


def _cmd_compose(args) -> int:
    from .pipeline.compose import compose

    _imports_done()
    ok = compose(args.out, args.conf, args.overrides, check=args.check)
    if args.check and not ok:
        raise StarshiftError(f"{args.out} is out of step with {args.conf}/; run 'starshift compose'"
                             " and commit it")
    if args.check:
        print(f"{args.out} is in step with {args.conf}/")
    return 0


#: the pipeline's stages and the paths each one takes (dvc.yaml passes them)
STAGES = {
    "centroid": ("frames", "shifts", "compare"),
    "shift": ("frames", "shifts", "shifted", "residuals"),
    "reject": ("residuals", "diagnostics", "thresholds"),
    "report": ("frames", "diagnostics", "thresholds", "compare", "shifted", "report", "plots",
               "metrics", "stack"),
    "summary": ("metrics", "index"),
}
STAGE_PATHS = {
    "frames": "the night's input frames (read only)",
    "shifts": "shifts table (centroid's output)",
    "shifted": "folder of shifted frames (shift's output)",
    "residuals": "residuals table (shift's output)",
    "diagnostics": "diagnostics table (reject's output)",
    "thresholds": "the night's rejection thresholds (reject's output)",
    "compare": "box-vs-automatic table (centroid's output; empty for a night without a box)",
    "report": "the night's report folder",
    "plots": "the night's report images folder",
    "metrics": "the night's metrics.json (for summary: the folder of every night's)",
    "stack": "folder of the stacked frames per filter (FITS)",
    "index": "the report index (markdown)",
}


def _cmd_stage(args) -> int:
    from .pipeline import stages  # noqa: F401  (imported here, before _imports_done)
    from .pipeline.compose import run_stage

    if args.stage in ("report", "summary"):
        from .report import build  # noqa: F401
    _imports_done()
    missing = [f"--{k}" for k in STAGES[args.stage] if getattr(args, k) is None]
    if missing:
        raise StarshiftError(f"stage {args.stage}: give {', '.join(missing)} (dvc.yaml does)")
    paths = {k: getattr(args, k) for k in STAGES[args.stage]}
    run_stage(args.stage, args.night, args.params, paths, progress=_progress(args))
    return 0


def _cmd_night_add(args) -> int:
    from .pipeline.compose import add_night

    _imports_done()
    box = None
    if args.box is not None:
        try:
            box = [float(v) for v in args.box.split(",")]
        except ValueError:
            box = []
        if len(box) != 2:
            raise StarshiftError(f"--box {args.box}: give the centre as X,Y (pixels)")
    path = add_night(args.name, args.input_dir, args.conf, args.method, box, args.box_size)
    print(f"wrote {path} and its line in {args.conf}/config.yaml; now run "
          "'starshift compose && dvc repro'")
    return 0


def _cmd_sweep(args) -> int:
    from .pipeline.sweep import run_sweep

    _imports_done()
    return run_sweep(args.hydra_args, conf_dir=args.conf)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="starshift",
        description="Align astronomical science frames so every star lands on the same pixel, "
                    "reject the frames that cannot be trusted, and report it reproducibly.")
    p.add_argument("--version", action="version", version=f"starshift {__version__}")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or info logs (progress bars are drawn on a terminal "
                        "only)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("sample", help="generate the synthetic sample nights (with truth.csv)",
                       description="Generate the synthetic sample nights: deterministic for a "
                                   "seed, each night directory with its truth.csv.")
    s.add_argument("--out", required=True, type=Path, help="directory to write the nights into")
    s.add_argument("--seed", type=int, default=2018, help="random seed (default 2018)")
    s.add_argument("--nights", default=None,
                   help="comma-separated night names (default: all sample nights)")
    s.set_defaults(func=_cmd_sample)

    a = sub.add_parser("align", help="align one directory of frames (measure, shift, reject)",
                       description="Measure each light frame's shift onto the reference, shift "
                                   "it, re-measure, reject frames beyond the limit, and write "
                                   "the kept frames plus diagnostics.csv to OUTPUT_DIR.",
                       epilog=ALIGN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("input_dir", type=Path, help="directory holding the frames (read only)")
    a.add_argument("output_dir", type=Path, help="where aligned frames and diagnostics.csv go")
    a.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    a.set_defaults(func=_cmd_align)

    c = sub.add_parser("compose", help="write params.yaml from conf/ (the DVC pipeline's params)",
                       description="Compose conf/config.yaml (Hydra) into params.yaml, exactly as "
                                   "DVC's Hydra integration does, after validating it against "
                                   "the schema. --check only compares (exit 2 when out of step).")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    c.add_argument("--conf", default="conf", help="config directory (default conf)")
    c.add_argument("--out", default="params.yaml", help="output file (default params.yaml)")
    c.add_argument("--check", action="store_true", help="fail if params.yaml is out of step")
    c.set_defaults(func=_cmd_compose)

    st = sub.add_parser("stage", help="run one DVC pipeline stage (used by dvc.yaml)",
                        description="Run one stage of the DVC pipeline for one night, reading "
                                    "params.yaml: centroid (with the box-vs-automatic "
                                    "table) -> shift -> reject -> report; summary. Every "
                                    "path comes from the command line (dvc.yaml gives them).")
    st.add_argument("stage", choices=list(STAGES))
    st.add_argument("night", nargs="?", help="night name (a key of nights: in params.yaml)")
    st.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    for name, what in STAGE_PATHS.items():
        st.add_argument(f"--{name}", type=Path, help=what)
    st.set_defaults(func=_cmd_stage)

    n = sub.add_parser("night", help="add a night to the pipeline (one file, one line)",
                       description="Add a night: writes conf/night/NAME.yaml with only what "
                                   "differs from the defaults and lists it in "
                                   "conf/config.yaml. dvc.yaml needs no edit.")
    nsub = n.add_subparsers(dest="action", metavar="ACTION", required=True)
    na = nsub.add_parser("add", help="add a night", description="Add a night to conf/.")
    na.add_argument("name", help="night name (letters, digits, _ or -)")
    na.add_argument("input_dir", help="folder of its frames, relative to the project root")
    na.add_argument("--method", default="auto", choices=["auto", "box"])
    na.add_argument("--box", help="search-box centre X,Y (px; method box)")
    na.add_argument("--box-size", type=int, help="search-box side (px)")
    na.add_argument("--conf", default="conf", help="config directory (default conf)")
    na.set_defaults(func=_cmd_night_add)

    sw = sub.add_parser("sweep", help="Hydra (multi)run of one night, e.g. over the box size",
                        description="Run one night with Hydra, from conf/sweep.yaml. With -m, a "
                                    "multirun: each job goes to sweeps/<night>/<time>/<job>/, "
                                    "never into DVC outputs, and a sweep summary (table + plot) "
                                    "is written to the sweep directory.",
                        epilog="example: starshift sweep -m night=march_09_2018 "
                               "centroid.box_size=15,20,25,30\n"
                               "parallel: add hydra/launcher=joblib jobs=1 (jobs: worker "
                               "processes per job)\n"
                               "SLURM: hydra/launcher=submitit_slurm (pip install "
                               "'starshift[cluster]'); docs/cluster.md",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("--conf", default="conf", help="config directory (default conf)")
    sw.add_argument("hydra_args", nargs=argparse.REMAINDER, help="Hydra arguments and overrides")
    sw.set_defaults(func=_cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # Hydra's own flags (-m, --multirun, --cfg ...) pass through to `starshift sweep` untouched
    args, extra = parser.parse_known_args(argv)
    if args.command == "sweep":
        args.hydra_args = extra + list(args.hydra_args)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s")
    previous = signal.getsignal(signal.SIGTERM)
    try:  # (installed inside: a SIGTERM right after is handled like any other)
        signal.signal(signal.SIGTERM, _terminate)  # cleaned up like Ctrl-C
        return int(args.func(args) or 0)
    except StarshiftError as exc:
        print(f"starshift: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("starshift: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so every cleanup of an interrupt runs."""


def _terminate(signum, frame):
    raise Terminated()


def run() -> None:
    """The console script (``starshift``, ``python -m starshift.cli``): :func:`main` in a
    process that ends with it.

    Python's cyclic garbage collector is idle while the command imports its libraries (numpy,
    astropy, scipy, pandas: about a million objects and no garbage), and those objects are
    then frozen out of its sight (:func:`_imports_done`); the collector runs as usual on
    everything made afterwards. At exit the survivors are frozen too, so the interpreter's
    final collections skip them. Each process starts and ends about 0.4 s sooner: 1.83 s
    against 1.30 s to import what ``starshift align`` imports and exit, median of 8 (2-core
    machine). The outputs are the same: the collector only frees unreachable objects. The
    process then ends without the interpreter's teardown (:func:`_exit`).

    scipy (1.15 on) parses and re-renders the docstring of every ``scipy.ndimage``,
    ``scipy.fft`` and ``scipy.special`` function as it imports them, to append a note on
    array-API support; here it keeps them as written
    (:func:`starshift._lazy.skip_scipy_doc_notes`): ``starshift align`` on the 1 MP real night
    took 1.82 s against 2.04 s, median of 9 alternating runs, with the same outputs. And
    astropy's FITS import leaves out ``astropy.units`` and numcodecs, which starshift's FITS
    reading and writing never use (:func:`starshift._lazy.lighten_astropy_import`).
    """
    global _CONSOLE
    _CONSOLE = True
    skip_scipy_doc_notes()
    lighten_astropy_import()
    gc.disable()
    try:
        code = main()
    finally:
        gc.freeze()
    _exit(code)


def _exit(code: int) -> None:
    """End the console process with ``code`` once everything it made is on disk.

    The atexit handlers run as they would (logging's flush, multiprocessing's and dask's
    clean-ups, temporary files), the standard streams are flushed, and then the process ends
    without the interpreter's teardown: a million library objects freed one by one and the
    modules cleared, 0.06-0.13 s of every command with nothing left to write (``starshift
    align`` on the 1 MP real night: 1.54 s against 1.59 s and 1.61 s against 1.74 s, medians
    of 12 and 10 alternating runs). While a thread other than the main one is still running,
    the interpreter's own exit waits for it as usual.
    """
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # none, closed or a broken pipe
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
