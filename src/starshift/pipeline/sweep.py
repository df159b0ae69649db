"""``starshift sweep``: a Hydra (multi)run of one night, and the sweep summary.

Each job aligns the night with its overrides and writes diagnostics.csv and metrics.json to its
own Hydra output directory (``sweeps/<night>/<time>/<job>/``, never into DVC outputs). At the end
of a multirun, :class:`SweepSummary` (a Hydra callback, so it also runs after the joblib
launcher's parallel jobs) collects the jobs into ``sweep_summary.csv``/``.md``/``.png``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pandas as pd

from .. import io as fio

log = logging.getLogger(__name__)


def run_job(cfg) -> dict:
    """One sweep job: align the night into the job's output directory; returns its metrics."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from .. import columns as C
    from ..config import effective_align, to_plain, validate_align
    from ..errors import StarshiftError
    from ..report.metrics import night_metrics, with_truth
    from .stages import align

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    # the night names the job's folder; how many workers ran it is not a result
    overrides = [o for o in hc.overrides.task if not o.startswith(("night=", "jobs="))]
    metrics: dict = {"job": out.name, "night": str(cfg.night_name), "overrides": overrides}
    for o in overrides:
        key, _, value = o.partition("=")
        metrics[key.lstrip("+~")] = value
    try:
        ncfg = effective_align(cfg.night, cfg)
        if cfg.get("jobs") is not None:  # the sweep's, for every job
            ncfg = validate_align({**to_plain(ncfg), "jobs": cfg.jobs})
        diag = align(cfg.night.input_dir, out, ncfg, progress=False,
                     write_frames=bool(cfg.get("write_frames", False)))
        truth_path = Path(cfg.night.input_dir) / "truth.csv"
        truth = fio.read_table(truth_path) if truth_path.is_file() else None
        diag = with_truth(diag, truth)
        metrics.update(night_metrics(diag))
        metrics["box_size"] = int(ncfg.centroid.box_size)
        metrics["method"] = str(ncfg.method)
        failed = int((diag[C.STATUS] == C.FAILED).sum())
        log.info("%s: %d kept, %d failed", out.name, metrics["kept"], failed)
    except StarshiftError as exc:
        metrics["error"] = str(exc)
        log.error("%s: %s", out.name, exc)
    fio.write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    fio.write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return metrics


def summarise_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """Collect every job's metrics.json under ``sweep_dir``; write the summary table + plot."""
    from ..report.plots import sweep_plot
    from ..report.tables import markdown_table

    sweep_dir = Path(sweep_dir)
    rows = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    if not rows:
        log.warning("%s: no job metrics found", sweep_dir)
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["overrides"] = df["overrides"].map(lambda o: " ".join(o) or "(none)")
    first = ["job", "night", "overrides", "method", "box_size", "frames", "kept", "rejected",
             "failed", "max_residual", "rms_residual", "good_within_0.5px", "rms_error",
             "max_error", "error"]
    df = df.reindex(columns=[c for c in first if c in df.columns]
                    + [c for c in df.columns if c not in first])
    fio.write_table(df, sweep_dir / "sweep_summary.csv")
    fio.write_text(sweep_dir / "sweep_summary.md", "# Sweep summary\n\n"
                  + markdown_table(df.drop(columns=["job"])) + "\n\n"
                  + "![failures and residual RMS per job](sweep_summary.png)\n")
    fio.write_bytes(sweep_dir / "sweep_summary.png", sweep_plot(df))
    print(f"sweep summary: {sweep_dir / 'sweep_summary.md'}")
    return df


try:  # the callback base class lives in hydra; keep the module importable without it
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class SweepSummary(_Callback):
    """Hydra callback: after a multirun, summarise its jobs in the sweep directory."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # the sweep dir interpolates hydra:runtime
        # sweeps/<night>/<time>: a sweep over several nights has one folder per night, all of
        # the same time; each gets its own summary
        here = Path(config.hydra.sweep.dir)
        for night_dir in sorted(here.parent.parent.glob(f"*/{here.name}")):
            if any(night_dir.glob("*/metrics.json")):
                summarise_sweep(night_dir)


def run_sweep(hydra_args: list[str], conf_dir: str | Path = "conf") -> int:
    """Run the Hydra app on ``conf/sweep.yaml`` with ``hydra_args`` (e.g. ``-m key=a,b``)."""
    import hydra

    from ..config import register_configs
    from ..errors import StarshiftError

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "sweep.yaml").is_file():
        raise StarshiftError(f"{conf_dir}/sweep.yaml: not found; run from the project root")
    register_configs()

    @hydra.main(version_base=None, config_path=str(conf_dir), config_name="sweep")
    def _app(cfg) -> None:
        run_job(cfg)

    saved = sys.argv
    sys.argv = ["starshift-sweep", *hydra_args]
    try:
        _app()
    except SystemExit as exc:  # hydra exits non-zero on a composition error it has printed
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0
