"""Typed settings for each step, read from a validated config, recording what is read.

Each step of a night reads only the keys it needs: :func:`night_settings` takes the parts a
step runs (``measure``, ``shift``, ``reject``) and reads those keys alone, through a
:class:`Reads` view that records every key it hands out. The DVC stages declare exactly these
keys in ``dvc.yaml`` (a test runs each stage with a recording view and compares), so that a
change of any key reruns exactly the stages that read it; the parameters hash written into a
stage's outputs covers what that stage read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import parse_fill, to_plain

#: What each part of a night reads (night-level keys; shared groups by their group name).
PART_READS = {
    "measure": ("method", "reference", "glob", "pre_shift", "bad_frames", "keep_frames",
                "centroid", "auto", "shift.fill"),
    "shift": ("method", "centroid", "shift"),
    "reject": ("bad_frames", "keep_frames", "reject"),
    # the seed's box against the automatic aligner, on the same frames (the report's check)
    "compare": ("method", "pre_shift", "centroid", "auto", "shift.fill"),
}
ALL_PARTS = ("measure", "shift", "reject")


class Reads:
    """A read-only view of a nested plain mapping that records the dotted keys read.

    ``view["a"]["b"]`` records ``a.b`` when the value is a leaf; :meth:`plain` hands out a
    whole subtree and records its key. ``log`` is shared by every view made from one root.
    """

    def __init__(self, data: Mapping, prefix: str = "", log: dict | None = None):
        self._data = data
        self._prefix = prefix
        self.log = {} if log is None else log

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, Mapping):
            return Reads(value, self._key(key) + ".", self.log)
        self.log[self._key(key)] = value
        return value

    def plain(self, key: str | None = None) -> Any:
        """A whole subtree (or this view's) as plain containers, recorded as read."""
        if key is None:
            self.log[self._prefix.rstrip(".")] = to_plain(self._data)
            return to_plain(self._data)
        value = to_plain(self._data[key])
        self.log[self._key(key)] = value
        return value

    def path(self, dotted: str) -> Any:
        """The value at a dotted key, a leaf or a subtree, recorded as read."""
        head, _, rest = dotted.partition(".")
        if rest:
            return self[head].path(rest)
        return self.plain(head) if isinstance(self._peek(head), Mapping) else self[head]

    def _peek(self, key: str) -> Any:
        """The value at ``key``, not recorded."""
        return self._data[key]


@dataclass(frozen=True)
class NightSettings:
    """A night's settings as plain, typed values, for the parts of it that run.

    ``method`` is a :class:`starshift.night.Method`; ``catalogue`` the automatic aligner's
    keyword parameters (the reference is prepared with them when measuring: its stars are
    where the per-frame quality is measured). Fields of parts that do not run are None.
    ``params_hash`` covers exactly the keys read.
    """

    method: Any = None
    box: Any = None
    reference: str | None = None
    glob: str | None = None
    pre_shift: dict[str, tuple[int, int]] | None = None
    bad_frames: frozenset[str] = frozenset()
    keep_frames: frozenset[str] = frozenset()
    fill: str | float = "median"
    shift: Any = None
    limits: Any = None
    catalogue: dict[str, Any] | None = None
    params_hash: str = ""
    jobs: int = 1
    executor: Any = None


def night_settings(cfg: Any, parts: Iterable[str] = ALL_PARTS) -> NightSettings:
    """The settings of ``parts`` of a night from a validated align config (or a :class:`Reads`
    view of one), reading only the keys those parts need."""
    from .io import params_hash
    from .night import AutoMethod, Box, BoxMethod, ShiftSettings
    from .quality import QualityLimits

    view = cfg if isinstance(cfg, Reads) else Reads(to_plain(cfg))
    parts = tuple(parts)
    need = {k for p in parts for k in PART_READS[p]}
    got: dict[str, Any] = {}
    for key in sorted(need):
        got[key] = view.path(key)
    box = None
    if "centroid" in got and got["centroid"]["box_center"] is not None:
        c = got["centroid"]
        box = Box(tuple(float(v) for v in c["box_center"]), int(c["box_size"]))
    auto = got.get("auto")
    # measuring needs the aligner's parameters; judging the new shift needs the box only
    methods = {"box": lambda: BoxMethod(box), "auto": lambda: AutoMethod(auto or {})}
    shift = got.get("shift")
    fill = parse_fill(shift["fill"] if shift else got.get("shift.fill", "median"))
    return NightSettings(
        method=methods[got["method"]]() if "method" in got else None,
        box=box,
        reference=got.get("reference"),
        glob=got.get("glob"),
        pre_shift={k: (int(v[0]), int(v[1])) for k, v in got.get("pre_shift", {}).items()},
        bad_frames=frozenset(got.get("bad_frames", ())),
        keep_frames=frozenset(got.get("keep_frames", ())),
        fill=fill,
        shift=ShiftSettings(**{**shift, "fill": fill}) if shift else None,
        limits=QualityLimits(**got["reject"]) if "reject" in got else None,
        catalogue=dict(auto) if auto is not None else None,
        params_hash=params_hash(got),
        jobs=worker_count(view["jobs"] if "jobs" in view else 0),
        executor=executor_of(view),
    )


def executor_of(view: Reads):
    """Where the frames run (:class:`starshift.executors.Executor`): ``executor`` and
    ``dask.address`` when the config has them (``starshift align``), else the default (the
    pipeline's nights have neither). Like ``jobs`` it changes no output: not hashed."""
    from .executors import Executor

    if "executor" not in view:
        return Executor()
    return Executor(view["executor"], view["dask"]["address"])


def worker_count(jobs: int) -> int:
    """Worker processes for ``jobs`` (0: one per core this process may use). How many
    workers run changes no output, so it is not a parameter of the results (not hashed)."""
    from .executors import cores

    return int(jobs) if jobs and jobs > 0 else cores()


#: The groups a night shares with every other night (top level of params.yaml).
SHARED = ("shift", "reject", "auto", "report")


class NightView(Reads):
    """One night of the pipeline's params, read as a ``starshift align`` config would be.

    Night keys come from ``nights.<night>``, the shared groups from the top level; reading the
    search box (``centroid``) reads the night's box and the top-level override (a set
    ``centroid.box_size``/``box_center`` replaces every night's). Keys are recorded under
    their params.yaml names, which is what dvc.yaml declares.
    """

    def __init__(self, params: Mapping, night: str, log: dict | None = None):
        super().__init__(params, "", log)
        self._night = night

    def _source(self, key: str) -> tuple[Mapping, str]:
        if key in SHARED:
            return self._data, ""
        return self._data["nights"][self._night], f"nights.{self._night}."

    def __contains__(self, key: str) -> bool:
        data, _ = self._source(key)
        return key in data

    def _peek(self, key: str) -> Any:
        data, _ = self._source(key)
        return data[key]

    def __getitem__(self, key: str) -> Any:
        if key == "centroid":
            return Reads(self._centroid(), "nights.centroid.", {})  # recorded in _centroid
        data, prefix = self._source(key)
        return Reads(data, prefix, self.log)[key]

    def plain(self, key: str | None = None) -> Any:
        if key == "centroid":
            return self._centroid()
        if key is None:
            raise TypeError("a night view is read key by key")
        data, prefix = self._source(key)
        return Reads(data, prefix, self.log).plain(key)

    def _centroid(self) -> dict:
        own = Reads(self._data["nights"][self._night], f"nights.{self._night}.", self.log)
        box = dict(own.plain("centroid"))
        override = Reads(self._data, "", self.log).plain("centroid")
        for key in ("box_center", "box_size"):
            if override.get(key) is not None:
                box[key] = override[key]
        return box
