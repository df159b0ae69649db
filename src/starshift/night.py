"""One loop over a night: measure each frame's shift, apply it, measure what the shift left.

:func:`align_night` is the only loop over a night's frames. ``starshift align``, the DVC stages
(``centroid`` measures, ``shift`` applies) and sweep jobs all run it; it reads every frame once
through the ``read`` callable it is given, prepares the reference once, and never writes: it
yields one :class:`FrameResult` per frame and the caller decides what goes to disk.

How a shift is measured is a :class:`Method`: :class:`BoxMethod` (the seed analysis's search box
and ``centroid_2dg``) and :class:`AutoMethod` (the automatic aligner). A third method is one more
class with the same three members; nothing here branches on a method's name.

Everything here takes plain values (numbers, tuples, dataclasses), never a config object: the
configuration is turned into these at the edge (:mod:`starshift.config`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import __version__
from . import columns as C
from ._stats import median
from ._table import Table
from .errors import StarshiftError
from .executors import Executor, ordered_map
from .headers import ascii_value, shifted_header
from .quality import (
    QualityLimits,
    corner_misalignment,
    night_rules,
    similarity_fit,
    sky_stats,
    star_shapes,
    transparency,
)
from .registration import (
    CentroidFailed,
    InvalidBox,
    PreparedReference,
    box_centroid,
    estimate_shift,
    prepare_reference,
)
from .shift import apply_shift, fill_value, median_after_shift

log = logging.getLogger(__name__)

#: Reads one frame by file name: (data, header).
Reader = Callable[[str], tuple[np.ndarray, Any]]


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Box:
    """The seed's search box: centre (x, y) in the reference frame and side, pixels."""

    center: tuple[float, float]
    size: int


@dataclass(frozen=True)
class ShiftSettings:
    """How shifts are applied: interpolation order (0 = whole pixels), fill, background."""

    order: int = 0
    fill: str | float = "median"
    subtract_background: bool = True


# --------------------------------------------------------------------------- reference
@dataclass
class NightReference:
    """What every frame of a night is measured against, prepared once.

    ``catalogue`` is the automatic aligner's preparation of the reference (its isolated stars
    also give the positions where star shapes are measured, whatever the method); ``position``
    is the box star in the reference when the night has a search box.
    """

    name: str
    data: np.ndarray
    header: Any
    catalogue: PreparedReference | None
    position: tuple[float, float] | None = None

    @property
    def stars(self) -> np.ndarray:
        """Positions (x, y) of the reference's isolated stars, shape (N, 2)."""
        if self.catalogue is None:
            return np.empty((0, 2))
        return np.asarray(self.catalogue.star_positions, dtype=float).reshape(-1, 2)


@dataclass(frozen=True)
class Measurement:
    """One frame's measured shift onto the reference (``reference - frame``, x first, px).

    ``position`` is the measured star in the measured frame, when the method measures one.
    """

    dx: float = np.nan
    dy: float = np.nan
    sigma_dx: float = np.nan
    sigma_dy: float = np.nan
    n_stars: int = 0
    label: str = ""
    reason: str = ""
    position: tuple[float, float] | None = None
    #: the frame matches the reference after a 180-degree turn (a meridian flip); the shift
    #: then applies to ``np.rot90(frame, 2)``
    flipped: bool = False
    #: the reference stars matched in the frame (:class:`starshift.registration.StarMatches`)
    matches: Any = None

    @property
    def ok(self) -> bool:
        return not self.reason


# --------------------------------------------------------------------------- methods
class Method(Protocol):
    """How a frame's shift onto the reference is measured.

    ``name`` is recorded in the diagnostics and headers; ``reference_n_stars`` is what the
    reference's own row reports as its star count. :meth:`measure` never raises for a bad frame:
    it returns a :class:`Measurement` with a reason. :meth:`residual` says what shift is still
    needed after the frame was shifted by ``applied`` (the "new shift"), with a reason when it
    cannot tell; ``shifted_median`` is the shifted frame's median when known.
    """

    name: str
    reference_n_stars: int

    def measure(self, ref: NightReference, data: np.ndarray) -> Measurement: ...

    def residual(self, ref: NightReference, shifted: np.ndarray, measured: Measurement,
                 applied: tuple[float, float], shifted_median: float | None
                 ) -> tuple[float, float, str]: ...


@dataclass(frozen=True)
class BoxMethod:
    """The seed analysis's method: photutils ``centroid_2dg`` of one star in a search box.

    The new shift is the star re-measured in the search box of the shifted frame, as the seed
    did.
    """

    box: Box
    name: str = "box"
    reference_n_stars: int = 1
    #: the re-measure subtracts the shifted frame's median, as the seed did
    needs_shifted_median: bool = True

    def measure(self, ref: NightReference, data: np.ndarray) -> Measurement:
        try:
            x, y = box_centroid(data, self.box.center, self.box.size)
        except CentroidFailed as exc:
            return Measurement(label=self.name, reason=f"star not found in the search box: {exc}")
        rx, ry = ref.position
        return Measurement(rx - x, ry - y, n_stars=1, label=self.name, position=(x, y))

    def residual(self, ref, shifted, measured, applied, shifted_median):
        try:
            x, y = box_centroid(shifted, self.box.center, self.box.size,
                                frame_median=shifted_median)
        except CentroidFailed as exc:
            return np.nan, np.nan, f"star not found after shifting: {exc}"
        return ref.position[0] - x, ref.position[1] - y, ""


@dataclass(frozen=True)
class AutoMethod:
    """The automatic aligner (:func:`starshift.registration.estimate_shift`).

    The new shift is the estimate minus the applied shift: the estimate already rests on every
    matched star, and re-running it on the shifted frame would compare moved detector artefacts
    (hot pixels, banding, filled edges) with the unshifted reference. Its trust is checked by
    the shift's uncertainty instead.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    name: str = "auto"
    reference_n_stars: int = 0
    needs_shifted_median: bool = False

    def measure(self, ref: NightReference, data: np.ndarray) -> Measurement:
        est = estimate_shift(ref.catalogue, data, **self.params)
        label = f"{self.name}:{est.method}"
        if not est.ok:
            return Measurement(label=label, reason=est.reason or "automatic alignment failed")
        return Measurement(est.dx, est.dy, est.sigma_dx, est.sigma_dy, est.n_stars, label,
                           flipped=bool(getattr(est, "flipped", False)), matches=est.matches)

    def residual(self, ref, shifted, measured, applied, shifted_median):
        return measured.dx - applied[0], measured.dy - applied[1], ""


# --------------------------------------------------------------------------- the loop
@dataclass
class FrameResult:
    """One frame through :func:`align_night`: its diagnostics row and, when shifted, the data."""

    row: dict
    data: np.ndarray | None = None
    header: Any = None


def pre_shifted(data: np.ndarray, pre: tuple[int, int], fill: str | float) -> np.ndarray:
    """The frame after its hand-made whole-pixel pre-shift (the seed's), if it has one."""
    return apply_shift(data, pre[0], pre[1], order=0, fill=fill) if any(pre) else data


def prepare_night_reference(name: str, data: np.ndarray, header,
                            catalogue_params: Mapping[str, Any] | None, box: Box | None = None,
                            pre: tuple[int, int] = (0, 0),
                            fill: str | float = "median", box_required: bool = False
                            ) -> NightReference:
    """Prepare the reference once: the aligner's catalogue, and the box star if there is a box.

    Raises :class:`StarshiftError` when ``box_required`` and the box holds no star.
    """
    position = None
    if box is not None:
        try:
            x, y = box_centroid(pre_shifted(data, pre, fill), box.center, box.size)
            position = (x - pre[0], y - pre[1])
        except CentroidFailed as exc:
            if box_required:
                raise StarshiftError(
                    f"{name}: no star in the search box of the reference frame ({exc}); "
                    "check centroid.box_center/box_size or choose another reference") from exc
        except InvalidBox as exc:  # a setting, not this frame: say which keys to fix
            raise StarshiftError(
                f"centroid.box_center/box_size: {exc}; fix the search box") from exc
    catalogue = None if catalogue_params is None else prepare_reference(data, **catalogue_params)
    return NightReference(name, data, header, catalogue, position)


def _header_number(header, key: str) -> float:
    """A numeric header value, NaN when absent or not a number (never raises)."""
    try:
        return float(header.get(key, np.nan))
    except (TypeError, ValueError):
        log.warning("header %s=%r is not a number; ignored", key, header.get(key))
        return float("nan")


def _accumulated(header, key: str, add: float) -> float:
    """An earlier shift in the header plus this one; a non-numeric earlier value is replaced."""
    if key not in header:
        return add
    before = _header_number(header, key)
    return before + add if np.isfinite(before) else add


def measure_row(name: str, data: np.ndarray, ref: NightReference, method: Method,
                pre: tuple[int, int], fill: str | float, quality: bool = True) -> dict:
    """The shifts-table row of one frame (the measured shift onto the reference), with its
    quality metrics (:func:`frame_quality`) unless ``quality`` is False."""
    row = {C.PRE_DX: pre[0], C.PRE_DY: pre[1], C.METHOD: method.name, C.X: np.nan,
           C.Y: np.nan, C.DX: np.nan, C.DY: np.nan, C.SIGMA_DX: np.nan, C.SIGMA_DY: np.nan,
           C.N_STARS: 0, C.FLIP: 0, C.STATUS: "ok", C.REASON: ""}
    if name == ref.name:
        row.update({C.DX: 0.0, C.DY: 0.0, C.SIGMA_DX: 0.0, C.SIGMA_DY: 0.0,
                    C.N_STARS: method.reference_n_stars})
        if ref.position is not None:
            row[C.X], row[C.Y] = ref.position
        if quality:
            row.update(reference_quality(ref))
        return row
    if data.shape != ref.data.shape:
        row.update({C.STATUS: C.FAILED, C.PRE_DX: 0, C.PRE_DY: 0,
                    C.REASON: f"shape {data.shape[::-1]} differs from the reference's "
                              f"{ref.data.shape[::-1]}"})
        return row
    moved = pre_shifted(data, pre, fill)
    m = method.measure(ref, moved)
    row[C.METHOD] = m.label
    if not m.ok:
        row.update({C.STATUS: C.FAILED, C.REASON: m.reason})
        return row
    if quality:
        row.update(frame_quality(ref, np.rot90(moved, 2) if m.flipped else moved, m))
    row.update({C.DX: m.dx + pre[0], C.DY: m.dy + pre[1], C.SIGMA_DX: m.sigma_dx,
                C.SIGMA_DY: m.sigma_dy, C.N_STARS: m.n_stars, C.FLIP: int(m.flipped)})
    if m.position is not None:
        row[C.X], row[C.Y] = m.position[0] - pre[0], m.position[1] - pre[1]
    elif ref.position is not None:
        row[C.X], row[C.Y] = ref.position[0] - row[C.DX], ref.position[1] - row[C.DY]
    return row


# --------------------------------------------------------------------------- quality
def _shapes(data: np.ndarray, positions: np.ndarray) -> tuple[float, float]:
    """Median FWHM and elongation of the stars at ``positions`` (their own light only)."""
    if not len(positions):
        return np.nan, np.nan
    fwhm, elong, _ = star_shapes(data, positions, stacked=True)
    return fwhm, elong


def reference_quality(ref: NightReference) -> dict:
    """The reference's own quality metrics: the night's yardstick (transparency 1, no turn)."""
    sky, noise = sky_stats(ref.data)
    fwhm, elong = _shapes(ref.data, ref.stars)
    return {C.FWHM: fwhm, C.ELONGATION: elong, C.SKY: sky, C.SKY_NOISE: noise,
            C.N_MATCHED: len(ref.stars), C.MATCHED_FRACTION: 1.0, C.TRANSPARENCY: 1.0,
            C.ROTATION: 0.0, C.SCALE: 1.0, C.FIT_RMS: 0.0, C.CORNER_SHIFT: 0.0}


def frame_quality(ref: NightReference, data: np.ndarray, m: Measurement) -> dict:
    """Per-frame quality metrics, measured on the frame as read (``data``, after any pre-shift
    and flip), from the reference stars matched in it.

    The matches come from the measurement when the method gives them, else from the
    automatic aligner run for the purpose. Star shapes are measured at the reference stars'
    predicted positions; the geometry is a similarity fit of the matched stars (rotation,
    scale, and the largest misalignment the pure shift leaves at the frame's corners).
    """
    sky, noise = sky_stats(data)
    stars = ref.stars
    predicted = stars - np.array([m.dx, m.dy])
    fwhm, elong = _shapes(data, predicted)
    q = {C.FWHM: fwhm, C.ELONGATION: elong, C.SKY: sky, C.SKY_NOISE: noise,
         C.N_MATCHED: 0, C.MATCHED_FRACTION: np.nan, C.TRANSPARENCY: np.nan,
         C.ROTATION: np.nan, C.SCALE: np.nan, C.FIT_RMS: np.nan, C.CORNER_SHIFT: np.nan}
    matches = m.matches
    if matches is None:  # box method, or the aligner fell back because its stars disagreed
        # match the stars whatever their scatter: the geometry fit below is what judges it
        est = estimate_shift(ref.catalogue, data, max_star_scatter=np.inf)
        matches = est.matches if est.ok else None
    if matches is None or not len(matches.x):
        return q
    used = np.asarray(matches.used, dtype=bool)
    ny, nx = data.shape
    margin = 2.0 * max(float(ref.catalogue.fwhm), 1.0)
    inside = ((predicted[:, 0] >= margin) & (predicted[:, 0] < nx - margin)
              & (predicted[:, 1] >= margin) & (predicted[:, 1] < ny - margin))
    expected = int(np.count_nonzero(inside))
    n_used = int(np.count_nonzero(used))
    q[C.N_MATCHED] = n_used
    q[C.MATCHED_FRACTION] = min(1.0, n_used / expected) if expected else np.nan
    q[C.TRANSPARENCY] = transparency(matches.ref_flux, matches.flux, used)[0]
    fit = similarity_fit(np.column_stack([matches.ref_x, matches.ref_y])[used],
                         np.column_stack([matches.x, matches.y])[used])
    if fit.ok:
        q.update({C.ROTATION: fit.rotation, C.SCALE: fit.scale, C.FIT_RMS: fit.rms,
                  C.CORNER_SHIFT: corner_misalignment(data.shape, fit)})
    return q


def applied_shift(dx: float, dy: float, order: int) -> tuple[float, float]:
    """The shift actually applied: whole pixels for order 0 (the seed's), else the estimate."""
    if order == 0:
        return float(round(dx)), float(round(dy))
    return float(dx), float(dy)


def shift_row(data: np.ndarray, header, row: Mapping, ref: NightReference, method: Method,
              settings: ShiftSettings, cards: Mapping[str, tuple[Any, str]],
              in_place: bool = False):
    """Shift one raw frame by its measured shift; returns (data, header, diagnostics update).

    ``cards`` are provenance header cards (keyword -> (value, comment)) written after the
    shift's own (XOFFSET/YOFFSET accumulated, BKGSUB, SSMETHOD, SSORDER, SSREF).
    ``in_place``: ``data`` is the caller's to overwrite; a whole-pixel shift (order 0, no
    flip) then moves the pixels within it (:func:`starshift.shift.integer_shift`), the same
    values without a second frame in memory.
    """
    adx, ady = applied_shift(row[C.DX], row[C.DY], settings.order)
    flipped = bool(row.get(C.FLIP, 0) == 1)
    if flipped:  # a meridian flip: turn the frame by 180 deg first (a pixel permutation)
        data = np.rot90(data, 2)
    cval = fill_value(data, settings.fill)
    # the shifted frame's median: the seed's background, and the box re-measure's offset;
    # for order 0 by counting, from the frame (before its pixels move) and the fill
    need_median = settings.subtract_background or method.needs_shifted_median
    shifted_median = None
    if need_median and settings.order == 0:
        shifted_median = median_after_shift(data, adx, ady, cval)
    shifted = apply_shift(data, adx, ady, order=settings.order, fill=cval,
                          in_place=in_place and not flipped)
    if need_median and settings.order != 0:
        shifted_median = median(shifted, common=cval)
    measured = Measurement(float(row[C.DX]), float(row[C.DY]))
    rdx, rdy, why = method.residual(ref, shifted, measured, (adx, ady), shifted_median)
    bkg = 0.0
    if settings.subtract_background and np.isfinite(shifted_median):
        bkg = shifted_median
        shifted -= bkg  # in place: ``shifted`` is a new array, or ``data`` when in_place
    hdr = shifted_header(header, shifted.shape, adx, ady, flipped=flipped, background=bkg,
                         order=settings.order, reference=ref.name, version=__version__)
    hdr["XOFFSET"] = (_accumulated(hdr, "XOFFSET", adx), "[px] x shift applied (accumulated)")
    hdr["YOFFSET"] = (_accumulated(hdr, "YOFFSET", ady), "[px] y shift applied (accumulated)")
    hdr["BKGSUB"] = (round(float(bkg), 6), "[adu] median background subtracted")
    hdr["SSMETHOD"] = (str(row[C.METHOD]), "starshift shift estimation method")
    hdr["SSORDER"] = (int(settings.order), "starshift interpolation order")
    hdr["SSREF"] = (ascii_value(ref.name), "starshift reference frame")
    if flipped:
        hdr["SSFLIP"] = (True, "starshift rotated the frame by 180 deg (meridian flip)")
    for key, card in cards.items():
        hdr[key] = card
    update = {C.APPLIED_DX: adx, C.APPLIED_DY: ady, C.RESIDUAL_DX: rdx, C.RESIDUAL_DY: rdy,
              C.BKGSUB: bkg, C.REMEASURE: why}
    return shifted, hdr, update


_SHIFT_COLUMNS = {C.APPLIED_DX: np.nan, C.APPLIED_DY: np.nan, C.RESIDUAL_DX: np.nan,
                  C.RESIDUAL_DY: np.nan, C.BKGSUB: np.nan, C.REMEASURE: ""}


def align_night(names: Iterable[str], read: Reader, ref: NightReference, method: Method, *,
                pre_shift: Mapping[str, tuple[int, int]] | None = None,
                fill: str | float = "median", measured: Mapping[str, Mapping] | None = None,
                shift: ShiftSettings | None = None,
                cards: Mapping[str, tuple[Any, str]] | None = None,
                sink: Callable[[str, np.ndarray, Any], None] | None = None,
                jobs: int = 1, executor: Executor | None = None, quality: bool = True,
                own_frames: bool = False) -> Iterator[FrameResult]:
    """Run a night's frames through measuring and/or shifting, one frame at a time.

    Parameters
    ----------
    names : iterable of str
        The night's frames, in order. Each is read once with ``read`` (the reference's data is
        taken from ``ref`` instead of being read again).
    read : callable
        ``read(name) -> (data, header)``; picklable for ``executor=dask`` (a module-level
        function, a :func:`functools.partial` of one, or an instance of a module-level class).
    ref : NightReference
        The prepared reference (:func:`prepare_night_reference`).
    method : Method
        How shifts are measured (and the new shift judged).
    pre_shift : mapping, optional
        Hand-made whole-pixel pre-shifts (dx, dy) by file name, applied before measuring.
    fill : str or float
        Fill of the pre-shift.
    measured : mapping, optional
        Rows of an earlier measurement (a shifts table) by file name; when given, frames are
        not measured again (the DVC ``shift`` stage).
    shift : ShiftSettings, optional
        When given, every measured frame is shifted and its new shift measured.
    cards : mapping, optional
        Extra header cards for shifted frames (provenance).
    sink : callable, optional
        ``sink(name, data, header)`` receives each shifted frame where it was made (in the
        worker with ``jobs > 1`` or dask), so frames need not travel between processes; the
        results then carry no data. With dask the workers must see the sink's folder.
    jobs : int
        Worker processes (1: this process). Results come in the order of ``names`` and are
        the same whatever the number of workers; at most ``2 x jobs`` frames are in flight, so
        memory does not grow with the night's length.
    executor : Executor, optional
        Where the frames run (:mod:`starshift.executors`): forked local workers (default) or a
        dask cluster; the results are the same.
    quality : bool
        Measure each frame's quality metrics (:func:`frame_quality`); False leaves them out
        of the rows (the DVC ``compare`` stage, which only compares shifts).
    own_frames : bool
        The arrays ``read`` returns are new and nobody else's (as read from files): each
        frame is then shifted within its own array where it can be (:func:`shift_row`), one
        frame less of memory per worker. Never the reference's array.

    Yields
    ------
    FrameResult
        The frame's diagnostics row and, when shifted and there is no ``sink``, its data and
        header (``None`` for a failed frame).
    """
    task = _FrameTask(read, ref, method, pre_shift or {}, fill, measured, shift, cards or {},
                      sink, quality, own_frames)
    # the reference was prepared here, which imported what the per-frame code imports lazily
    # (the aligner's star matching, the box centroid): forked workers start warm
    yield from ordered_map(task, names, jobs, executor)


@dataclass
class _FrameTask:
    """One frame through the loop: read, measure (unless measured), shift (if asked)."""

    read: Reader
    ref: NightReference
    method: Method
    pre_shift: Mapping[str, tuple[int, int]]
    fill: str | float
    measured: Mapping[str, Mapping] | None
    shift: ShiftSettings | None
    cards: Mapping[str, tuple[Any, str]]
    sink: Callable[[str, np.ndarray, Any], None] | None
    quality: bool = True
    own_frames: bool = False

    def __call__(self, name: str) -> FrameResult:
        ref, shift = self.ref, self.shift
        if self.measured is not None:
            row = dict(self.measured[name])
            if shift is None or row[C.STATUS] == C.FAILED:  # nothing to read
                return _with_shift_columns(FrameResult(row), shift)
        try:
            data, header = (ref.data, ref.header) if name == ref.name else self.read(name)
        except StarshiftError as exc:  # the file, not the program: this frame fails, not all
            return _with_shift_columns(FrameResult(unreadable_row(name, self.method, str(exc))),
                                       shift)
        if self.measured is None:
            row = measure_row(name, data, ref, self.method, self.pre_shift.get(name, (0, 0)),
                              self.fill, self.quality)
            row.update({C.FILE: name, C.FILTER: str(header.get("FILTER", "")),
                        C.EXPTIME: _header_number(header, "EXPTIME"),
                        C.REFERENCE: int(name == ref.name)})
        result = _with_shift_columns(FrameResult(row), shift)
        if shift is not None and row[C.STATUS] != C.FAILED:
            out, hdr, update = shift_row(data, header, row, ref, self.method, shift, self.cards,
                                         in_place=self.own_frames and name != ref.name)
            row.update(update)
            if self.sink is not None:
                self.sink(name, out, hdr)
            else:
                result.data, result.header = out, hdr
        return result


def unreadable_row(name: str, method: Method, reason: str) -> dict:
    """The row of a frame that could not be read: failed, with the reason."""
    return {C.FILE: name, C.FILTER: "", C.EXPTIME: np.nan, C.REFERENCE: 0,
            C.METHOD: method.name, C.X: np.nan, C.Y: np.nan, C.DX: np.nan, C.DY: np.nan,
            C.SIGMA_DX: np.nan, C.SIGMA_DY: np.nan, C.N_STARS: 0, C.FLIP: 0, C.PRE_DX: 0,
            C.PRE_DY: 0, C.STATUS: C.FAILED, C.REASON: f"cannot be read: {reason}"}


def _with_shift_columns(result: FrameResult, shift: ShiftSettings | None) -> FrameResult:
    if shift is not None:
        result.row.update(_SHIFT_COLUMNS)
    return result


# --------------------------------------------------------------------------- decisions
def decide_night(rows: list[dict], limits: QualityLimits,
                 bad_frames: frozenset[str] = frozenset(),
                 keep_frames: frozenset[str] = frozenset()) -> Table:
    """Set status and reason of every frame of a night (:func:`starshift.quality.night_rules`:
    each metric against the night's own, plus the absolute limits); returns the thresholds
    used (one row per metric and group), for the report."""
    decision = night_rules(Table.from_rows(rows), limits, forced_bad=bad_frames,
                           forced_keep=keep_frames)
    for row, status, reason in zip(rows, decision.status, decision.reason, strict=True):
        row[C.STATUS], row[C.REASON] = status, reason
    return decision.thresholds
