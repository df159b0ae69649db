"""Config composition and validation, the params.yaml sync check, dvc.yaml consistency."""

from pathlib import Path

import pytest
import yaml

from starshift.config import (
    align_defaults,
    compose_align,
    load_params,
    night_config,
    validate_pipeline,
)
from starshift.errors import StarshiftError
from starshift.pipeline.compose import compose, compose_params_text

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_align_defaults_and_documented_overrides():
    cfg = compose_align([])
    assert cfg.method == "auto" and cfg.reference is None and cfg.shift.order == 0
    assert cfg.reject.max_residual == 0.5
    # no overrides skips Hydra's parser: the same config as parsing a no-op override
    from omegaconf import OmegaConf
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(compose_align(["hydra.job.name=x"]))
    # and `starshift align IN OUT` runs on the plain defaults: the same tree, key for key
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert align_defaults() == plain and yaml.safe_dump(align_defaults(), sort_keys=False) \
        == yaml.safe_dump(plain, sort_keys=False)
    cfg = compose_align([
        "method=box", "centroid.box_center=[676,333]", "centroid.box_size=25",
        "pre_shift={NGC_3201_B_60.000secs_00001613.fit:[-3,5],NGC_3201_B_60.000secs_00001644"
        ".fit:[-17,12]}", "bad_frames=[NGC_3201_V_60.000secs_00001596.fit]",
        "reference=NGC_3201_B_60.000secs_00001604.fit"])
    assert list(cfg.centroid.box_center) == [676, 333] and cfg.centroid.box_size == 25
    assert list(cfg.pre_shift["NGC_3201_B_60.000secs_00001644.fit"]) == [-17, 12]
    assert list(cfg.bad_frames) == ["NGC_3201_V_60.000secs_00001596.fit"]


def test_align_overrides_apply_as_hydra_applies_them():
    # parsed by Hydra's grammar, merged into the schema; Hydra's own keys change nothing
    cfg = compose_align(["centroid.box_center=[1,2]", "++jobs=3", "hydra.job.name=x",
                         "pre_shift={a.fit:[1,2]}", "pre_shift={b.fit:[3,4]}",
                         "reference='ñ01.fit'"])
    assert list(cfg.centroid.box_center) == [1, 2] and cfg.jobs == 3
    assert {k: list(v) for k, v in cfg.pre_shift.items()} == {"a.fit": [1, 2], "b.fit": [3, 4]}
    assert cfg.reference == "ñ01.fit" and "hydra" not in cfg


@pytest.mark.parametrize("override, message", [
    ("centroid.box_sise=3", "box_sise"),
    ("centroid.box_size=abc", "box_size"),
    ("shift.order=2", "shift.order"),
    ("method=magic", "method"),
    ("pre_shift={a.fit:[1,2,3]}", "pre_shift"),
    ("+reject.max_residual=0.2", "already set"),  # + adds a key; this one exists
    ("method=box,auto", "starshift sweep"),
    ("centroid@x.box_size=3", "no config groups"),
])
def test_align_config_errors_are_one_clear_line(override, message):
    with pytest.raises(StarshiftError, match=message) as info:
        compose_align([override])
    assert "\n" not in str(info.value)


def test_pipeline_composes_all_nights_with_seed_settings():
    cfg = validate_pipeline(yaml.safe_load(compose_params_text(CONF)))
    assert set(cfg.nights) == {"march_29_2018", "april_30_2018", "march_09_2018",
                               "drift_lowsnr", "crowded_jumps"}
    m29 = night_config(cfg, "march_29_2018")
    assert list(m29.centroid.box_center) == [560, 426] and m29.centroid.box_size == 30
    m09 = night_config(cfg, "march_09_2018")
    assert m09.method == "box" and m09.centroid.box_size == 25
    assert list(m09.pre_shift["NGC_3201_B_60.000secs_00001613.fit"]) == [-3, 5]
    assert list(m09.bad_frames) == ["NGC_3201_V_60.000secs_00001596.fit"]
    assert night_config(cfg, "drift_lowsnr").method == "auto"


def test_top_level_box_size_overrides_every_night():
    text = compose_params_text(CONF, ["centroid.box_size=15"])
    cfg = validate_pipeline(yaml.safe_load(text))
    assert night_config(cfg, "march_29_2018").centroid.box_size == 15
    text = compose_params_text(CONF, ["nights.march_09_2018.centroid.box_size=31"])
    cfg = validate_pipeline(yaml.safe_load(text))
    assert night_config(cfg, "march_09_2018").centroid.box_size == 31
    assert night_config(cfg, "april_30_2018").centroid.box_size == 25


@pytest.mark.parametrize("override, message", [
    ("nights.march_09_2018.centroid.box_sise=3", "box_sise"),
    ("shift.order=five", "order"),
])
def test_pipeline_config_errors(override, message):
    with pytest.raises(StarshiftError, match=message):
        compose_params_text(CONF, [override])


def test_unknown_night_is_a_clear_error():
    cfg = load_params(ROOT / "params.yaml")
    with pytest.raises(StarshiftError, match="not configured"):
        night_config(cfg, "june_01_2019")


def test_a_nights_stage_checks_its_own_night_and_the_summary_every_night(tmp_path):
    # a night's stages depend only on the params they declare: another night's broken setting
    # does not stop them, while the summary (which reads every night) names it
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["nights"]["drift_lowsnr"]["method"] = "boxx"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_params(path, nights=["march_09_2018"])
    assert night_config(cfg, "march_09_2018").method == "box"
    with pytest.raises(StarshiftError, match="nights.drift_lowsnr: method=boxx"):
        load_params(path, nights=["drift_lowsnr"])
    with pytest.raises(StarshiftError, match="nights.drift_lowsnr: method=boxx"):
        load_params(path)
    with pytest.raises(StarshiftError, match="not configured"):
        load_params(path, nights=["june_01_2019"])


def test_committed_params_yaml_is_in_step_with_conf():
    assert compose(ROOT / "params.yaml", CONF, check=True), "run 'starshift compose'"


def test_compose_writes_what_dvc_hydra_integration_writes(tmp_path):
    """DVC's `exp run` composes conf/ itself; both must give the same params.yaml."""
    from dvc.utils.hydra import compose_and_dump

    ours = tmp_path / "ours.yaml"
    compose(ours, CONF)
    theirs = tmp_path / "dvc.yaml"
    compose_and_dump(theirs, str(CONF), None, "config", str(tmp_path), [])
    assert ours.read_text() == theirs.read_text()
    text = ours.read_text()
    assert str(Path.home()) not in text and "${" not in text


def test_dvc_yaml_follows_every_night_without_naming_one():
    """The summary reads every night's metrics and the plots show every night's images through
    folders the per-night stages fill: dvc.yaml names no night, so adding one never edits it."""
    text = (ROOT / "dvc.yaml").read_text()
    dvc = yaml.safe_load(text)
    nights = set(yaml.safe_load((ROOT / "params.yaml").read_text())["nights"])
    assert not any(night in text for night in nights)
    assert "metrics" in dvc["stages"]["summary"]["deps"]
    assert dvc["plots"] == ["reports/plots/"]
    report = dvc["stages"]["report"]["do"]
    assert {"metrics/${key}.json"} == {next(iter(m)) for m in report["metrics"]}
    assert "reports/plots/${key}" in {next(iter(o)) if isinstance(o, dict) else o
                                      for o in report["outs"]}


def test_conf_auto_defaults_equal_the_code_defaults():
    import dataclasses

    from starshift.registration import FrameParams, ReferenceParams

    conf = yaml.safe_load((CONF / "auto" / "default.yaml").read_text())
    assert conf == {f.name: f.default for cls in (ReferenceParams, FrameParams)
                    for f in dataclasses.fields(cls)}
