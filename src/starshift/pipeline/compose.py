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
from ..config import load_params, to_plain, validate_pipeline
from ..errors import StarshiftError
from ..settings import NightView

log = logging.getLogger(__name__)


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


def run_stage(stage: str, night: str | None, params: str | Path, paths: dict,
              progress: bool = True, log: dict | None = None) -> None:
    """Run one DVC stage (``summary`` takes no night) with the paths dvc.yaml gives.

    A stage reads its settings through a recording view of params.yaml (``log``, when given,
    receives every key read, under its params.yaml name).
    """
    from . import stages

    if stage == "summary":
        from ..report.build import summary

        summary(paths["metrics"], paths["index"], load_params(params))
        return
    if night is None:
        raise StarshiftError(f"stage {stage}: name the night")
    cfg = load_params(params, nights=[night])  # the night exists, its config is valid
    view = NightView(to_plain(cfg), night, log)
    if stage == "centroid":
        stages.stage_measure(paths["frames"], paths["shifts"], view, progress,
                             compare_table=paths.get("compare"))
    elif stage == "shift":
        stages.stage_shift(paths["frames"], paths["shifts"], paths["shifted"],
                           paths["residuals"], view, progress)
    elif stage == "reject":
        stages.stage_reject(paths["residuals"], paths["diagnostics"], paths["thresholds"], view)
    elif stage == "report":
        from ..report.build import night_report

        night_report(night, paths, view, progress)
    else:
        raise StarshiftError(f"unknown stage {stage!r}: centroid, shift, reject, report, "
                             "summary")


def add_night(name: str, input_dir: str | Path, conf_dir: str | Path = "conf",
              method: str = "auto", box_center: list[float] | None = None,
              box_size: int | None = None) -> Path:
    """Add a night to the pipeline: write ``conf/night/<name>.yaml`` (only what differs from the
    schema's defaults) and its line in ``conf/config.yaml``'s defaults. Returns the new file.

    Nothing in dvc.yaml changes: its stages follow the nights of params.yaml. Run
    ``starshift compose`` (and ``dvc repro``) afterwards.
    """
    import re

    conf_dir = Path(conf_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) or name == "base":
        raise StarshiftError(f"night name {name!r}: use letters, digits, '_' or '-' (not 'base')")
    main = conf_dir / "config.yaml"
    if not main.is_file():
        raise StarshiftError(f"{main}: not found; run from the project root")
    night_file = conf_dir / "night" / f"{name}.yaml"
    if night_file.exists():
        raise StarshiftError(f"{night_file}: already exists; edit it instead")
    if method not in ("auto", "box"):
        raise StarshiftError(f"method={method}: use auto or box")
    if method == "box" and box_center is None:
        raise StarshiftError("method box needs --box X,Y (the search box's centre)")
    lines = [f"# {name}: added by 'starshift night add'", f"input_dir: {input_dir}"]
    if method != "auto":
        lines.append(f"method: {method}")
    if box_center is not None:
        lines += ["centroid:", f"  box_center: [{box_center[0]:g}, {box_center[1]:g}]"]
        if box_size is not None:
            lines.append(f"  box_size: {int(box_size)}")
    text = main.read_text(encoding="utf-8")
    entry = f"  - night@nights.{name}: [base, {name}]\n"
    if entry in text:
        raise StarshiftError(f"{main}: already lists {name}")
    if "  - _self_\n" not in text:
        raise StarshiftError(f"{main}: no '- _self_' line in its defaults; add {entry.strip()!r}"
                             " by hand")
    fio.write_text(night_file, "\n".join(lines) + "\n")
    fio.write_text(main, text.replace("  - _self_\n", entry + "  - _self_\n", 1))
    return night_file
