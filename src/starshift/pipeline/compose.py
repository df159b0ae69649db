"""The DVC pipeline's side of the stages: params.yaml, per-night paths, stage dispatch.

``params.yaml`` is the composed Hydra config, written exactly as DVC's own Hydra integration
writes it (compose, resolve, ``OmegaConf.to_yaml``), so ``starshift compose`` and
``dvc exp run -S ...`` produce the same file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from .. import io as fio
from ..config import load_params, night_config, to_plain, validate_pipeline
from ..errors import StarshiftError

log = logging.getLogger(__name__)

DATA_ROOT = Path("data")


def compose_params_text(conf_dir: str | Path = "conf", overrides: list[str] | None = None,
                        config_name: str = "config") -> str:
    """The text of params.yaml for ``conf/``: composed and resolved the way DVC does it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import config_error

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{config_name}.yaml").is_file():
        raise StarshiftError(f"{conf_dir}/{config_name}.yaml: not found; run from the project root")
    try:
        with initialize_config_dir(version_base=None, config_dir=str(conf_dir)):
            cfg = compose(config_name=config_name, overrides=list(overrides or []))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise config_error(exc, "conf") from exc
    validate_pipeline(cfg)  # a wrong key or type fails here, before any frame is read
    text = OmegaConf.to_yaml(cfg)
    for bad in (str(Path.home()), "${oc.env"):
        if bad and bad != "/" and bad in text:
            raise StarshiftError(f"conf: composed params contain a machine-specific value ({bad})")
    return text


def compose(out: str | Path = "params.yaml", conf_dir: str | Path = "conf",
            overrides: list[str] | None = None, check: bool = False) -> bool:
    """Write params.yaml (or with ``check``, only say whether it is in step). True if in step."""
    text = compose_params_text(conf_dir, overrides)
    out = Path(out)
    current = out.read_text(encoding="utf-8") if out.is_file() else None
    if check:
        return current == text
    if current != text:
        fio.write_text(out, text)
    return True


class NightPaths:
    """Where one night's stage outputs live (relative to the project root)."""

    def __init__(self, night: str, root: Path = DATA_ROOT, reports: str | Path = "reports"):
        self.night = night
        self.work = Path(root) / night
        self.shifts = self.work / "shifts.csv"
        self.shifted = self.work / "shifted"
        self.residuals = self.work / "residuals.csv"
        self.accepted = self.work / "accepted"
        self.diagnostics = self.work / "diagnostics.csv"
        self.report = Path(reports) / night


def run_stage(stage: str, night: str | None, params: str | Path = "params.yaml",
              progress: bool = True) -> None:
    """Run one DVC stage for one night (``summary`` takes no night)."""
    from . import stages

    cfg = load_params(params)
    if stage == "summary":
        from ..report.build import summary

        summary(cfg)
        return
    if night is None:
        raise StarshiftError(f"stage {stage}: name the night")
    ncfg = night_config(cfg, night)
    paths = NightPaths(night, reports=cfg.report.out)
    input_dir = Path(cfg.nights[night].input_dir)
    if stage == "centroid":
        stages.stage_measure(input_dir, paths.shifts, ncfg, progress)
    elif stage == "shift":
        stages.stage_shift(input_dir, paths.shifts, paths.shifted, paths.residuals, ncfg, progress)
    elif stage == "reject":
        stages.stage_reject(paths.shifted, paths.residuals, paths.accepted, paths.diagnostics,
                            ncfg)
    elif stage == "report":
        from ..report.build import night_report

        night_report(night, input_dir, paths, ncfg, cfg.report, to_plain(cfg), progress)
    else:
        raise StarshiftError(f"unknown stage {stage!r}: centroid, shift, reject, report, summary")
