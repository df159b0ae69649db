"""Typed configuration: Hydra structured configs (schema + defaults), composition, validation.

Three shapes share the same pieces:

* :class:`AlignConfig` -- one directory of frames (``starshift align``); every key at top level.
* :class:`PipelineConfig` -- the DVC pipeline (``params.yaml``): shared groups (``shift``,
  ``reject``, ``auto``, ``report``, ``sample``) plus one :class:`NightConfig` per night under
  ``nights.<name>``, composed from ``conf/config.yaml`` and ``conf/night/<name>.yaml``.
* ``conf/sweep.yaml`` -- one night (``night: <name>``) plus the shared groups, for a Hydra
  multirun (``starshift sweep``); each job's night is validated as an :class:`AlignConfig`.

A night's effective :class:`AlignConfig` is its :class:`NightConfig` plus the shared groups; a
top-level ``centroid.box_size`` / ``centroid.box_center`` that is set (not null) overrides every
night's own value, which is what makes ``centroid.box_size=15,20,25`` sweep a night's box.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StarshiftError
from .executors import DASK_MISSING, EXECUTORS, Executor, dask_installed
from .quality import QualityLimits
from .registration import FrameParams, ReferenceParams

if TYPE_CHECKING:
    from omegaconf import DictConfig

# OmegaConf is imported by the functions that use it: ``starshift align`` without overrides
# runs on the schema's plain defaults (:func:`align_defaults`) and never imports it (0.1 s).

METHODS = ("box", "auto")
#: Largest float32 (output frames are float32)
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class CentroidConfig:
    """The seed's search box: centre (x, y) in the reference frame and side in pixels."""

    box_center: list[float] | None = None
    box_size: int = 25


@dataclass
class CentroidOverride:
    """Pipeline/sweep level: when set, overrides every night's box (null = each night's own)."""

    box_center: list[float] | None = None
    box_size: int | None = None


@dataclass
class ShiftConfig:
    """How shifts are applied: interpolation order (0 = whole pixels, the seed's) and fill."""

    order: int = 0
    fill: str = "median"
    subtract_background: bool = True


@dataclass
class RejectConfig:
    """Frame rejection rules (``reject.*``): the knobs of :class:`starshift.quality.QualityLimits`
    (documented there, defaults written once, there). ``null`` switches an absolute rule off.

    ``k``: a metric is an outlier beyond the night's median by ``k`` (floored) robust spreads.
    ``max_residual``: the new shift on either axis, px (the seed's check). ``max_sigma``: the
    shift's 1-sigma uncertainty, px. ``max_corner`` and ``corner_fwhm_fraction``: the corner
    misalignment a pure shift leaves, px, at most the larger of the two limits (px, and that
    fraction of the night's FWHM). ``max_elongation``: trailed or doubled stars (1 - b/a).
    ``max_fwhm_ratio``: stars broader than this times the night's median (defocus).
    ``min_transparency_fraction``: star flux below this fraction of the night's median
    (clouds; an outlier of the night too).
    """

    k: float = QualityLimits.k
    max_residual: float | None = QualityLimits.max_residual
    max_sigma: float | None = QualityLimits.max_sigma
    max_corner: float | None = QualityLimits.max_corner
    corner_fwhm_fraction: float | None = QualityLimits.corner_fwhm_fraction
    max_elongation: float | None = QualityLimits.max_elongation
    max_fwhm_ratio: float | None = QualityLimits.max_fwhm_ratio
    min_transparency_fraction: float | None = QualityLimits.min_transparency_fraction


@dataclass
class AutoConfig:
    """Parameters of the automatic aligner (``auto.*``): the fields of
    :class:`starshift.registration.ReferenceParams` and
    :class:`starshift.registration.FrameParams` (documented there), with their defaults
    (written once, there). :func:`registration_params` turns it into the two."""

    max_shift_fraction: float = ReferenceParams.max_shift_fraction
    coarse_bin: int = ReferenceParams.coarse_bin
    background_box: int = ReferenceParams.background_box
    highpass_scale: float = ReferenceParams.highpass_scale
    coarse_threshold: float = ReferenceParams.coarse_threshold
    coarse_clip: float = ReferenceParams.coarse_clip
    min_significance: float = FrameParams.min_significance
    min_similarity: float = FrameParams.min_similarity
    detect_flip: bool = FrameParams.detect_flip
    suppress_hot_pixels: bool = ReferenceParams.suppress_hot_pixels
    remove_banding: bool = ReferenceParams.remove_banding
    n_stars: int = ReferenceParams.n_stars
    detect_threshold: float = ReferenceParams.detect_threshold
    isolation: float = ReferenceParams.isolation
    blend_ratio: float = ReferenceParams.blend_ratio
    saturation: float = ReferenceParams.saturation
    saturation_fraction: float = ReferenceParams.saturation_fraction
    fwhm: float = ReferenceParams.fwhm
    search_radius: float = FrameParams.search_radius
    match_threshold: float = FrameParams.match_threshold
    min_stars: int = FrameParams.min_stars
    clip_sigma: float = FrameParams.clip_sigma
    max_star_scatter: float = FrameParams.max_star_scatter
    sigma_floor: float = FrameParams.sigma_floor
    gain: float = ReferenceParams.gain
    refine: bool = FrameParams.refine
    ref_star_fraction: float = FrameParams.ref_star_fraction


def registration_params(auto: Any) -> tuple[ReferenceParams, FrameParams]:
    """The aligner's :class:`ReferenceParams` and :class:`FrameParams` from an ``auto`` config
    (an :class:`AutoConfig`, its DictConfig node, or a mapping of its keys).

    Raises :class:`StarshiftError` naming the ``auto.*`` key of a wrong value.
    """
    values = dataclasses.asdict(auto) if isinstance(auto, AutoConfig) else dict(to_plain(auto))
    ref_keys = {f.name for f in dataclasses.fields(ReferenceParams)}
    try:
        return (ReferenceParams(**{k: v for k, v in values.items() if k in ref_keys}),
                FrameParams(**{k: v for k, v in values.items() if k not in ref_keys}))
    except (TypeError, ValueError) as exc:  # their messages start with the parameter's name
        raise StarshiftError(f"auto.{exc}") from exc


@dataclass
class FramesConfig:
    """Which frames, measured how: the settings a night and ``starshift align`` share."""

    method: str = "auto"
    reference: str | None = None
    glob: str = "*.fit,*.fits,*.fts"
    pre_shift: dict[str, list[int]] = field(default_factory=dict)
    bad_frames: list[str] = field(default_factory=list)
    keep_frames: list[str] = field(default_factory=list)
    centroid: CentroidConfig = field(default_factory=CentroidConfig)


@dataclass
class DaskConfig:
    """``executor=dask``: the scheduler's address (``tcp://host:8786``); null starts a
    LocalCluster of ``jobs`` single-threaded worker processes on this machine."""

    address: str | None = Executor.address


@dataclass
class AlignConfig(FramesConfig):
    """Everything needed to align one directory of frames. ``jobs``: worker processes (0: one
    per core); ``executor``: where they run, ``local`` (forked from this process) or ``dask``
    (:mod:`starshift.executors`). The outputs are the same for any number and either executor.
    """

    jobs: int = 0
    executor: str = Executor.kind
    dask: DaskConfig = field(default_factory=DaskConfig)

    shift: ShiftConfig = field(default_factory=ShiftConfig)
    reject: RejectConfig = field(default_factory=RejectConfig)
    auto: AutoConfig = field(default_factory=AutoConfig)


@dataclass
class NightConfig(FramesConfig):
    """One night of the pipeline: where its frames are and its seed settings."""

    input_dir: str = "???"


@dataclass
class SampleConfig:
    """The embedded sample nights generated by ``starshift sample``."""

    seed: int = 2018
    out: str = "data/sample"


@dataclass
class ReportConfig:
    """Report settings: comparison GIF, blink GIF, stacks, photometry stars and apertures,
    interpolation orders. The report builders take these values from here (they have no
    defaults of their own for them)."""

    gif_size: int = 64
    gif_scale: int = 4
    gif_levels: int = 256
    gif_max_frames: int = 4
    blink_max_frames: int = 12
    stack_method: str = "sigma_clip"
    n_stars: int = 8
    aperture_radius: float = 6.0
    annulus: list[float] = field(default_factory=lambda: [10.0, 15.0])
    orders: list[int] = field(default_factory=lambda: [0, 1, 3])


@dataclass
class PipelineConfig:
    sample: SampleConfig = field(default_factory=SampleConfig)
    centroid: CentroidOverride = field(default_factory=CentroidOverride)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    reject: RejectConfig = field(default_factory=RejectConfig)
    auto: AutoConfig = field(default_factory=AutoConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    nights: dict[str, NightConfig] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def _open_pre_shift(node: DictConfig) -> DictConfig:
    """Let ``pre_shift`` take new file-name keys under Hydra's struct mode."""
    from omegaconf import OmegaConf

    if "pre_shift" in node:
        OmegaConf.set_struct(node.pre_shift, False)
    return node


def align_schema() -> DictConfig:
    from omegaconf import OmegaConf

    return _open_pre_shift(OmegaConf.structured(AlignConfig))


def register_configs() -> None:
    """Register the align schema in Hydra's ConfigStore (idempotent).

    It is the primary config of ``starshift align``. The pipeline's YAML (conf/) does not refer
    to ConfigStore entries, because DVC composes conf/ in its own process, where they do not
    exist; the pipeline and sweep configs are validated against :class:`PipelineConfig` /
    :class:`AlignConfig` after composition instead (:func:`validate_pipeline`,
    :func:`effective_align`).
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="starshift_align", node=align_schema())


def _one_line(exc: BaseException) -> str:
    """The first meaningful line of a Hydra/OmegaConf error, without the traceback."""
    from omegaconf.errors import OmegaConfBaseException

    cause = exc
    while cause.__cause__ is not None and isinstance(cause.__cause__, OmegaConfBaseException):
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    full_key = next((ln.split(":", 1)[1].strip() for ln in text if "full_key:" in ln), "")
    if full_key and full_key not in first:
        first = f"{full_key}: {first}"
    return first


def config_error(exc: BaseException, where: str = "config", hint: str = "") -> StarshiftError:
    """One line: where, the error's first meaningful line, and ``hint`` (what to do)."""
    return StarshiftError(f"{where}: {_one_line(exc)}" + (f"; {hint}" if hint else ""))


def validate_align(cfg: Any) -> DictConfig:
    """Merge anything mapping-like into the :class:`AlignConfig` schema and check values."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(align_schema(), cfg)
        check_align(merged)
    except OmegaConfBaseException as exc:
        raise config_error(exc) from exc
    return merged


def parse_fill(fill: Any) -> str | float:
    """``shift.fill`` as :func:`starshift.shift.fill_value` takes it: a keyword or a number."""
    key = str(fill).strip().lower()
    if key in ("median", "nan", "zero"):
        return key
    try:
        value = float(key)
    except ValueError:
        value = math.nan
    if not abs(value) <= FLOAT32_MAX:  # outputs are float32: the fill must be one
        raise StarshiftError(f"shift.fill={fill}: use median, nan, zero or a finite number "
                             f"(at most {FLOAT32_MAX:.4g} in size)")
    return value


def check_align(cfg: DictConfig) -> None:
    """Value checks the type system cannot express; raises :class:`StarshiftError`.

    Every number must be finite (a NaN limit would silently switch its rule off), every
    ``reject.*`` limit positive (or null: off), the ``auto.*`` values those the aligner accepts
    (:func:`registration_params`), all before any frame is read.
    """
    if cfg.method not in METHODS:
        raise StarshiftError(f"method={cfg.method}: use one of {', '.join(METHODS)}")
    bad = _non_finite(to_plain(cfg))
    if bad:
        raise StarshiftError(f"{bad[0]}={bad[1]}: not a finite number; give a finite value")
    if cfg.method == "box" and cfg.centroid.box_center is None:
        raise StarshiftError("method=box needs centroid.box_center=[x,y] (and centroid.box_size)")
    if cfg.centroid.box_center is not None and len(cfg.centroid.box_center) != 2:
        raise StarshiftError("centroid.box_center: give two numbers, [x,y]")
    if cfg.shift.order not in (0, 1, 3):
        raise StarshiftError(f"shift.order={cfg.shift.order}: use 0, 1 or 3")
    parse_fill(cfg.shift.fill)
    for key, value in cfg.reject.items():
        ok, what = _REJECT_RANGES.get(key, (lambda v: v > 0, "a positive number"))
        if value is not None and not (not isinstance(value, bool) and value > 0 and ok(value)):
            raise StarshiftError(f"reject.{key}={value}: use {what}, or null (rule off)")
    registration_params(cfg.auto)
    if cfg.get("jobs", 0) < 0:
        raise StarshiftError(f"jobs={cfg.jobs}: use 0 (one worker per core) or a number of "
                             "workers")
    check_executor(cfg)
    for name, value in cfg.pre_shift.items():
        if len(value) != 2:
            raise StarshiftError(f"pre_shift.{name}: give two whole numbers, [dx,dy]")


def check_executor(cfg: DictConfig) -> None:
    """``executor`` and ``dask.address``: a known executor, dask installed when asked for, an
    address only with dask. Raises :class:`StarshiftError`."""
    executor = cfg.get("executor", Executor.kind)
    if executor not in EXECUTORS:
        raise StarshiftError(f"executor={executor}: use one of {', '.join(EXECUTORS)}")
    address = cfg.dask.address if "dask" in cfg else None
    if executor == "dask" and not dask_installed():
        raise StarshiftError(DASK_MISSING)
    if address is not None and executor != "dask":
        raise StarshiftError(f"dask.address={address} is set but executor={executor}; add "
                             "executor=dask (or drop dask.address)")


#: ``reject.*`` limits with a range narrower than "a positive number"
_REJECT_RANGES = {
    "max_elongation": (lambda v: v < 1, "a number between 0 and 1"),
    "max_fwhm_ratio": (lambda v: v > 1, "a number above 1"),
}


def _non_finite(tree: dict, prefix: str = "") -> tuple[str, Any] | None:
    """The first dotted key of a plain config tree holding a NaN or infinite number."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found = _non_finite(value, f"{name}.")
            if found:
                return found
        elif any(isinstance(v, float) and not math.isfinite(v)
                 for v in (value if isinstance(value, list) else [value])):
            return name, value
    return None


def _key_error(cfg: DictConfig, schema: DictConfig, prefix: str = "") -> str | None:
    """What is wrong with ``cfg``'s keys against the schema: one removed (``~KEY``) or one the
    schema does not have (``+KEY``, a misspelling); None when the keys are right."""
    from omegaconf import DictConfig, OmegaConf

    for key in schema:
        if key not in cfg:
            name = f"{prefix}{key}"
            return f"{name}: cannot be removed (~{name}); set a value instead ({name}=...)"
    for key in cfg:
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"did you mean {prefix}{close[0]}? " if close else ""
            return (f"{prefix}{key}: no such setting; {hint}"
                    "'starshift align --help' lists the settings")
    for key in schema:
        node = schema._get_node(key)
        if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
            found = _key_error(cfg[key], node, f"{prefix}{key}.")
            if found:
                return found
    return None


_ABSENT = object()


def align_defaults() -> dict:
    """The config of ``starshift align`` without overrides, as plain containers: the schema's
    defaults, equal to ``to_plain(compose_align([]))`` (tested) but made without OmegaConf,
    whose import costs a process about 0.1 s. The defaults pass :func:`check_align` (tested
    through :func:`compose_align`), so there is nothing to check."""
    return dataclasses.asdict(AlignConfig())


def compose_align(overrides: list[str]) -> DictConfig:
    """Compose an :class:`AlignConfig` from Hydra overrides (``key=value`` strings).

    The overrides are parsed by Hydra's own grammar and applied to the schema as Hydra's
    composition applies them (``OmegaConf.update`` with ``merge=True``), without building a
    Hydra context: there are no config groups to search (0.2 s of every ``starshift align``).

    Raises :class:`StarshiftError` (one line naming the key) for a wrong key or value, also
    for a key added with ``+KEY=...`` that the schema does not have or one removed with
    ``~KEY``, a sweep (``a,b``: ``starshift sweep`` runs those) or a package (``KEY@PKG``).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not overrides:  # the schema's defaults: nothing to parse (Hydra's grammar costs 0.08 s)
        cfg = align_schema()
        check_align(cfg)
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import open_dict

    schema = align_schema()
    cfg = align_schema()
    try:
        for o in OverridesParser.create().parse_overrides(list(overrides)):
            key = o.key_or_group
            if key == "hydra" or key.startswith("hydra."):
                continue  # Hydra's own settings: nothing to do with an align (as before)
            if o.is_delete():
                raise StarshiftError(f"override: {key}: cannot be removed (~{key}); set a "
                                     f"value instead ({key}=...)")
            if o.is_sweep_override():
                raise StarshiftError(f"override {o.input_line}: one value per key here (a "
                                     "sweep over values is 'starshift sweep')")
            if o.package is not None:
                raise StarshiftError(f"override {o.input_line}: there are no config groups "
                                     "here; write KEY=VALUE")
            if o.is_add() and OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
                raise StarshiftError(f"override +{key}: {key} is already set; write "
                                     f"{key}=... to change it")
            with open_dict(cfg):  # an unknown key is added, then named by _key_error
                OmegaConf.update(cfg, key, o.value(), merge=True)
        problem = _key_error(cfg, schema)
        if problem:
            raise StarshiftError(f"override: {problem}")
        check_align(cfg)
    except OverrideParseException as exc:
        raise config_error(exc, "override", "write KEY=VALUE, and quote a value with spaces "
                           "or non-ASCII letters: KEY='VALUE'") from exc
    except (HydraException, OmegaConfBaseException, ValueError) as exc:  # (the parser's too)
        raise config_error(exc, "override", "check the KEY=VALUE ('starshift align --help' "
                           "lists the settings)") from exc
    return cfg


def validate_pipeline(cfg: Any, nights: Iterable[str] | None = None) -> DictConfig:
    """Merge a pipeline config (composed, or loaded from params.yaml) into the schema, and check
    the effective config of each of ``nights`` (default: every night)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(PipelineConfig)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as exc:
        raise config_error(exc, "params") from exc
    for name in merged.nights if nights is None else nights:
        night_config(merged, name)
    return merged


def load_params(path: str | Path = "params.yaml", nights: Iterable[str] | None = None
                ) -> DictConfig:
    """Load and validate ``params.yaml`` (the composed pipeline config DVC tracks): the shared
    settings, and the effective config of each of ``nights`` (default: every night; a night's
    stage checks its own night, whose settings are the ones it declares)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise StarshiftError(f"{path}: not found; run 'starshift compose' in the project root")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:
        raise StarshiftError(f"{path}: not valid YAML ({exc})") from exc
    return validate_pipeline(raw, nights)


def effective_align(night: Any, shared: Any) -> DictConfig:
    """A night's :class:`AlignConfig`: the night's own keys, the shared groups, box overrides."""
    from omegaconf import OmegaConf

    night_d = OmegaConf.to_container(night, resolve=True) if _is_config(night) else dict(night)
    night_d.pop("input_dir", None)
    merged = {
        **night_d,
        "shift": OmegaConf.to_container(shared.shift, resolve=True),
        "reject": OmegaConf.to_container(shared.reject, resolve=True),
        "auto": OmegaConf.to_container(shared.auto, resolve=True),
    }
    override = shared.centroid
    if override.box_size is not None:
        merged["centroid"]["box_size"] = int(override.box_size)
    if override.box_center is not None:
        merged["centroid"]["box_center"] = list(override.box_center)
    return validate_align(merged)


def night_config(cfg: DictConfig, night: str) -> DictConfig:
    """Effective :class:`AlignConfig` of one night of a pipeline config."""
    if night not in cfg.nights:
        known = ", ".join(cfg.nights) or "none"
        raise StarshiftError(f"night {night!r} is not configured (known: {known}); "
                             f"add conf/night/{night}.yaml and list it in conf/config.yaml")
    try:
        return effective_align(cfg.nights[night], cfg)
    except StarshiftError as exc:
        raise StarshiftError(f"nights.{night}: {exc}") from exc


def to_plain(cfg: Any) -> Any:
    """Plain Python containers (for hashing, JSON, YAML)."""
    if _is_config(cfg):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _is_config(obj: Any) -> bool:
    """An OmegaConf DictConfig (there can be none before omegaconf is imported)."""
    oc = sys.modules.get("omegaconf")
    return oc is not None and isinstance(obj, oc.DictConfig)
