"""The DVC contract: every stage declares exactly the params it reads; a night is one file.

Each per-night stage is run on a small night through a recording view of params.yaml; the keys
it reads must be exactly the params dvc.yaml declares for it. A new night is one YAML file and
one defaults line (``starshift night add``): it composes, and DVC sees its stages, with
dvc.yaml untouched.
"""

import shutil
from pathlib import Path

import yaml
from conftest import NIGHT_SHIFTS, stage_paths

from starshift.cli import STAGES
from starshift.pipeline.compose import run_stage

ROOT = Path(__file__).resolve().parents[1]
NIGHT_STAGES = ("centroid", "shift", "reject", "report")


def declared(stage: str, night: str) -> set[str]:
    """The params dvc.yaml declares for ``stage`` of ``night``."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    body = spec.get("do", spec)
    return {k.replace("${key}", night) for k in body.get("params", [])}


def covers(keys: set[str], key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def test_each_stage_reads_exactly_what_dvc_yaml_declares(project, small_night):
    paths = stage_paths(project, small_night)
    reads = {}
    for stage in NIGHT_STAGES:
        log: dict = {}
        run_stage(stage, "tiny", "params.yaml", {k: paths[k] for k in STAGES[stage]},
                  progress=False, log=log)
        want = declared(stage, "tiny")
        read = set(log)
        assert all(covers(want, k) for k in read), (stage, sorted(read - want))
        assert all(any(covers({d}, k) for k in read) for d in want), (stage, sorted(want))
        reads[stage] = read
    assert (paths["report"] / "diagnostics.csv").is_file()
    # every single key of the night and of the shared groups: the stages DVC reruns when it
    # changes (those declaring it) are exactly the stages that read it
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key in leaves({"nights": {"tiny": params["nights"]["tiny"]},
                       **{k: v for k, v in params.items() if k != "nights"}}):
        marked = {s for s in NIGHT_STAGES if covers(declared(s, "tiny"), key)}
        readers = {s for s in NIGHT_STAGES
                   if any(key == k or key.startswith(k + ".") or k.startswith(key + ".")
                          for k in reads[s])}
        assert marked == readers, key


def leaves(tree: dict, prefix: str = ""):
    """Dotted keys of the leaves of a nested mapping (a mapping's own key when empty)."""
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_a_new_night_is_one_file_and_one_line(project, small_night):
    text = (project / "conf" / "night" / "tiny.yaml").read_text()
    assert [ln.split(":")[0] for ln in text.splitlines() if not ln.startswith(("#", " "))] == [
        "input_dir", "method", "centroid"]
    assert (project / "conf" / "config.yaml").read_text().count("nights.tiny:") == 1
    params = yaml.safe_load((project / "params.yaml").read_text())
    night = params["nights"]["tiny"]
    # every key each stage declares is in params.yaml: the schema's defaults fill the rest
    for stage in NIGHT_STAGES:
        for key in declared(stage, "tiny"):
            node = params
            for part in key.split("."):
                node = node[part]
    assert night["keep_frames"] == [] and night["reference"] is None
    # DVC sees the new night's stages from dvc.yaml as it is
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    from dvc.repo import Repo

    Repo.init(str(project), no_scm=True)
    with Repo(str(project)) as repo:
        names = {s.addressing for s in repo.index.stages}
    assert {f"{s}@tiny" for s in NIGHT_STAGES} <= names
    assert len(NIGHT_SHIFTS) == 4


def test_night_base_equals_the_schema_defaults():
    from dataclasses import asdict

    from starshift.config import NightConfig

    base = yaml.safe_load((ROOT / "conf" / "night" / "base.yaml").read_text())
    schema = asdict(NightConfig())
    schema.pop("input_dir")
    assert base == schema


def test_the_align_stages_import_no_pandas(project, small_night):
    """centroid (with the box-vs-automatic table), shift and reject read and write their tables
    without pandas (0.3-0.4 s of import per stage process on the benchmark machine); only the
    report uses DataFrames. Run as DVC runs them in CI (standard error not a terminal, no
    ``-q``), they draw no progress bar into the log."""
    import subprocess
    import sys

    paths = stage_paths(project, small_night)
    for stage in ("centroid", "shift", "reject"):
        args = ["stage", stage, "tiny"]
        for key in STAGES[stage]:
            args += [f"--{key}", str(paths[key])]
        code = ("import sys; from starshift.cli import main; "
                f"rc = main({args!r}); print(rc, 'pandas' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                              text=True, check=True)
        assert done.stdout.splitlines()[-1] == "0 False", stage
        assert "it/s" not in done.stderr and "\r" not in done.stderr, stage
    assert (paths["diagnostics"]).is_file() and (paths["compare"]).is_file()
