"""`dvc repro` of the sample from scratch, as users run it, for several revisions (issue #13).

Each run is a fresh `git clone` of this repository at one revision, with an empty DVC cache and
no outputs, and `dvc repro` timed as one whole process until it exits: every stage runs, from
`starshift sample` to the summary. The revisions alternate run by run; the medians and the
median of the per-repeat ratios (against the first way) are printed.

`starshift` in each clone is that revision's own code: a wrapper first on PATH runs the
clone's `starshift.cli` (``run``, or ``main`` at revisions before it), with
``PYTHONPATH=<clone>/src``. Every run also records each stage process's wall time, so DVC's
own time between the stages (reading dvc.yaml, dvc.lock and params.yaml, hashing, writing the
lock) is printed beside the stages'.

Outputs are checked, not assumed: after each run the clone's committed `reports/`, `metrics/`
and `params.yaml` must be unchanged (`git status`), and the hash of every output in its
`dvc.lock` equal to the committed one and to the first way's, by path (the code hashes may
differ, and an output may move from one stage to another between revisions).

A way ``NAME=REV:pure-yaml`` runs DVC without ruamel.yaml's C parser (a module of that name that
fails to import is put first on PYTHONPATH): how DVC ran before starshift declared
``ruamel.yaml.clib``, which ruamel.yaml 0.19 no longer installs.

    python benchmarks/bench_repro.py --way before=5cd7871:pure-yaml --way now=HEAD --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = """#!{python}
import sys, time, atexit
_t0 = time.time()
def _log():
    with open({log!r}, "a") as f:
        f.write("%.3f %.3f %s\\n" % (_t0, time.time() - _t0, " ".join(sys.argv[1:4])))
atexit.register(_log)
from starshift import cli
sys.exit(getattr(cli, "run", cli.main)())
"""


def _clone(rev: str, where: Path) -> str:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=where, check=True)
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, check=True,
                          capture_output=True, text=True).stdout.strip()


def _lock_outputs(text: str) -> dict:
    """The hash of every output of a dvc.lock, by path (whichever stage writes it: a stage's
    outputs can move to another stage between revisions)."""
    stages = yaml.safe_load(text)["stages"]
    return {e["path"]: e.get("md5") for st in stages.values() for e in st.get("outs", [])}


def run_once(rev: str, pure_yaml: bool, scratch: Path) -> dict:
    """One `dvc repro` from scratch of ``rev`` in a fresh clone: wall s, stage processes' s."""
    clone = scratch / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    sha = _clone(rev, clone)
    wrap, log = clone / ".bench" / "bin", clone / ".bench" / "stages.log"
    wrap.mkdir(parents=True)
    (wrap / "starshift").write_text(WRAPPER.format(python=sys.executable, log=str(log)))
    (wrap / "starshift").chmod(0o755)
    paths = [str(clone / "src")]
    if pure_yaml:
        (clone / ".bench" / "nolib").mkdir()
        (clone / ".bench" / "nolib" / "_ruamel_yaml.py").write_text(
            "raise ImportError('bench_repro: no C parser')\n")
        paths.insert(0, str(clone / ".bench" / "nolib"))
    env = dict(os.environ, PATH=f"{wrap}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(paths))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    (clone / ".git" / "info" / "exclude").write_text(".bench/\n")
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", "-q"], cwd=clone, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{rev}: dvc repro failed: {(proc.stderr or proc.stdout).strip()}")
    stages = [float(line.split()[1]) for line in log.read_text().splitlines()]
    kinds: dict[str, float] = {}
    for line in log.read_text().splitlines():
        words = line.split()[2:]
        kind = words[1] if words[:1] == ["stage"] and len(words) > 1 else words[0]
        kinds[kind] = kinds.get(kind, 0.0) + float(line.split()[1])
    changed = subprocess.run(["git", "status", "--porcelain", "--", "reports", "metrics",
                              "params.yaml"], cwd=clone, capture_output=True, text=True,
                             check=True).stdout.strip()
    committed = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=clone, check=True,
                               capture_output=True, text=True).stdout
    lock = (clone / "dvc.lock").read_text()
    outs = _lock_outputs(lock)
    same = not changed and outs == _lock_outputs(committed)
    if lock != committed:
        print(f"  {sha}: dvc.lock differs from the committed one (code hashes, if outputs are "
              "as committed)", flush=True)
    shutil.rmtree(clone, ignore_errors=True)
    return {"sha": sha, "wall": wall, "stages": sum(stages), "n": len(stages), "same": same,
            "outs": outs, "kinds": kinds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--way", action="append", required=True, metavar="NAME=REV[:pure-yaml]",
                    help="a revision to time (repeatable; the first is the base of the ratios)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs per way (default 2)")
    ap.add_argument("--scratch", type=Path, help="where the clones go (default: a temporary "
                    "directory, removed afterwards)")
    args = ap.parse_args(argv)
    ways = []
    for spec in args.way:
        name, _, rev = spec.partition("=")
        rev, _, flag = rev.partition(":")
        if not name or not rev or flag not in ("", "pure-yaml"):
            ap.error(f"--way {spec}: write NAME=REV or NAME=REV:pure-yaml")
        ways.append((name, rev, flag == "pure-yaml"))
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_repro_"))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in ways}
    try:
        for i in range(args.repeat):
            for name, rev, pure in ways:
                r = run_once(rev, pure, scratch)
                runs[name].append(r)
                print(f"run {i + 1} {name} ({r['sha']}): {r['wall']:.1f} s, stage processes "
                      f"{r['stages']:.1f} s ({r['n']}), outputs "
                      f"{'as committed' if r['same'] else 'DIFFER'}", flush=True)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    base = runs[ways[0][0]]
    differ = {}
    for name, rs in runs.items():  # and the same outputs as the first way's
        for r in rs:
            r["same"] = r["same"] and r["outs"] == base[0]["outs"]
            differ.setdefault(name, set()).update(
                p for p in r["outs"].keys() | base[0]["outs"].keys()
                if r["outs"].get(p) != base[0]["outs"].get(p))
    print(f"\n`dvc repro` from scratch, median of {args.repeat} alternating runs:\n")
    print("| way | revision | wall s | stage processes s | DVC between stages s | outputs "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, _rev, pure in ways:
        rs = runs[name]
        wall = statistics.median(r["wall"] for r in rs)
        stages = statistics.median(r["stages"] for r in rs)
        ratio = statistics.median(b["wall"] / r["wall"] for b, r in zip(base, rs, strict=True))
        print(f"| {name} | {rs[0]['sha']}{' (no C YAML parser)' if pure else ''} | {wall:.1f} | "
              f"{stages:.1f} | {wall - stages:.1f} | "
              f"{'as committed' if all(r['same'] for r in rs) else 'DIFFER'} | {ratio:.2f}x |")
    for name, paths in differ.items():
        if paths:
            print(f"\n{name}: outputs that differ from {ways[0][0]}'s: {', '.join(sorted(paths))}")
    kinds = list(dict.fromkeys(k for rs in runs.values() for r in rs for k in r["kinds"]))
    print("\nStage processes by kind (s, summed over the nights, median of the runs):\n")
    print("| way | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, _rev, _pure in ways:
        rs = runs[name]
        print(f"| {name} | " + " | ".join(
            f"{statistics.median(r['kinds'].get(k, 0.0) for r in rs):.1f}" for k in kinds)
            + " |")
    return 0 if all(r["same"] for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
