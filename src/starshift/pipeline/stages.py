"""Stage entry points: read inputs, run the night loop, write outputs and provenance.

The same functions serve ``starshift align``, the DVC stages (``starshift stage ...``) and the
Hydra sweep; every one of them goes through :func:`starshift.night.align_night`:

``measure``  (DVC ``centroid``) -> shifts table (one row per light frame)
``shift``    (DVC ``shift``)    -> shifted frames + residuals ("new shift", star shapes)
``reject``   (DVC ``reject``)   -> statuses kept / rejected / failed with a reason
``align``    (``starshift align``) all three in one pass over the frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import columns as C
from .. import io as fio
from .._progress import progress_bar
from .._table import Table, is_missing
from ..errors import StarshiftError
from ..night import NightReference, align_night, decide_night, prepare_night_reference
from ..settings import NightSettings, night_settings

log = logging.getLogger(__name__)

DIAGNOSTICS = "diagnostics.csv"
THRESHOLDS = "thresholds.csv"


# --------------------------------------------------------------------------- inputs
def discover(input_dir: Path, s: NightSettings) -> fio.Discovery:
    """The night's frames (light frames and unreadable matches), the config's names checked."""
    found = fio.discover(input_dir, s.glob)
    names = set(found.names)
    for key, listed in (("pre_shift", list(s.pre_shift)), ("bad_frames", sorted(s.bad_frames)),
                        ("keep_frames", sorted(s.keep_frames)),
                        ("reference", [s.reference] if s.reference not in (None, "auto")
                         else [])):
        missing = [n for n in listed if n not in names]
        if missing:
            raise StarshiftError(f"{key}: {missing[0]} is not a light frame in {input_dir}; "
                                 "check the file name")
    clash = fio.output_collision(found.names)
    if clash:
        raise StarshiftError(f"{input_dir}: {clash[0]} and {clash[1]} would both be written as "
                             f"{fio.output_name(clash[1])}; remove one or narrow the glob")
    return found


@dataclass(frozen=True)
class _Reader:
    """Reads a frame by name; a file discovery found unreadable fails with discovery's reason
    (without being read again). Picklable, for worker processes."""

    input_dir: Path
    unreadable: dict[str, str] | None = None

    def __call__(self, name: str):
        if self.unreadable and name in self.unreadable:
            raise StarshiftError(self.unreadable[name])
        return fio.read_frame(self.input_dir / name)


@dataclass(frozen=True)
class _Sink:
    """Writes a shifted frame into a folder, where it was made (in the worker)."""

    folder: Path

    def __call__(self, name: str, data, header) -> None:
        fio.write_frame(self.folder / fio.output_name(name), data, header)


def _reader(input_dir: Path, unreadable: dict[str, str] | None = None) -> _Reader:
    return _Reader(Path(input_dir), unreadable)


def _check_outputs_not_inputs(found: fio.Discovery, output_dir: Path) -> None:
    """Refuse a glob that picks up files of the output folder (or of a killed run's staging)
    as inputs: a rerun would align its own outputs."""
    folders = [f.resolve() for f in fio.run_folders(output_dir)]
    for name in found.names:
        path = (found.directory / name).resolve()
        if any(path.is_relative_to(f) for f in folders):
            raise StarshiftError(f"{found.directory / name}: the glob matches files in the output "
                                 f"folder {output_dir}; choose an output folder outside "
                                 f"{found.directory} or narrow the glob")


class _FramesRead:
    """The light frames ``names`` for ``reference=auto``, each read when the choice comes to
    it, so that one frame at a time is in memory however long the night; ``self.names`` lists
    those read, in order (one that cannot be read is not a candidate: its own row says so)."""

    def __init__(self, directory: Path, names: list[str], progress: bool):
        self.directory, self._all, self.progress = directory, names, progress
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self):
        self.names = []
        for n in progress_bar(self._all, self.progress, desc="reference"):
            try:
                data = fio.read_frame(self.directory / n)[0]
            except StarshiftError as exc:
                log.warning("%s", exc)
                continue
            self.names.append(n)
            yield data
            del data


def choose_reference_name(found: fio.Discovery, s: NightSettings, progress: bool = False
                          ) -> str:
    """The reference frame: the first (default), a named file, or ``'auto'``.

    An unreadable reference is an error naming it (never silently another frame).
    ``'auto'`` chooses among the readable frames, reading each once more, one at a time (the
    choice is logged and recorded in the headers and the diagnostics' reference column).
    """
    if s.reference == "auto":
        from ..registration import choose_reference

        frames = _FramesRead(found.directory, found.lights, progress)
        try:
            index = choose_reference(frames, **s.catalogue)
        except ValueError as exc:  # frames of several sizes, or none readable
            raise StarshiftError(f"{found.directory}: reference=auto needs readable frames of "
                                 "one size; name the reference with reference=FILE") from exc
        name = frames.names[int(index)]
        log.info("reference=auto chose %s", name)
        return name
    name = found.names[0] if s.reference is None else s.reference
    if name in found.unreadable:
        raise StarshiftError(f"{found.directory / name}: the reference frame cannot be read "
                             f"({found.unreadable[name]}); fix it or choose another with "
                             "reference=FILE")
    return name


def load_reference(input_dir: Path, name: str, s: NightSettings,
                   pre: tuple[int, int] | None = None) -> NightReference:
    """The prepared reference; one that cannot be read or has nothing to align on (no finite
    pixel, blank, too small) is an error naming it."""
    hint = "fix it or choose another with reference=FILE"
    try:
        data, header = fio.read_frame(input_dir / name)
    except StarshiftError as exc:
        raise StarshiftError(f"{exc}; it is the reference frame: {hint}") from exc
    try:
        ref = prepare_night_reference(name, data, header, s.catalogue, s.box,
                                      s.pre_shift.get(name, (0, 0)) if pre is None else pre,
                                      s.fill,
                                      box_required=s.box is not None and s.method.name == "box")
    except ValueError as exc:  # the frame's shape or values, not a setting (checked before)
        raise StarshiftError(f"{input_dir / name}: cannot be the reference frame ({exc}); "
                             f"{hint}") from exc
    if ref.catalogue is not None and not ref.catalogue.ok:
        raise StarshiftError(f"{input_dir / name}: cannot be the reference frame "
                             f"({ref.catalogue.reason}); {hint}")
    return ref


def _provenance(s: NightSettings) -> dict:
    return {"SSPHASH": (s.params_hash, "starshift parameters hash")}


def _shifts_table(rows: list[dict]) -> Table:
    return Table.from_rows(rows, C.SHIFTS)


def _diagnostics(rows: list[dict]) -> Table:
    """The diagnostics table in its documented column order."""
    extra = [c for c in (C.REFERENCE,) if any(c in r for r in rows)]
    return Table.from_rows(rows, C.DIAGNOSTICS + extra)


# --------------------------------------------------------------------------- whole runs
def _failed_others(rows: list[dict], ref: str, found: fio.Discovery) -> tuple[int, int]:
    """(frames that failed against the reference ``ref``, frames it was tried on): the
    readable frames other than the reference."""
    others = [r for r in rows if r[C.FILE] != ref and r[C.FILE] not in found.unreadable]
    return sum(r[C.STATUS] == C.FAILED for r in others), len(others)


def fallback_reference(found: fio.Discovery, s: NightSettings, ref: str, rows: list[dict],
                       progress: bool = False) -> str | None:
    """Another reference when the default one, the first frame, has nothing the night can
    match: more than half of the other frames failed against it (a frame through thick
    cloud, the dome or twilight at the start of the night). It is ``reference=auto``'s choice
    (the sharpest of the frames with the most stars), or None when that is the same frame, the
    reference was chosen (``reference=``), or a search box or pre-shifts are placed on it."""
    if (s.reference is not None or s.box is not None or s.pre_shift or s.method is None
            or s.method.name != "auto"):
        return None
    failed, tried = _failed_others(rows, ref, found)
    if 2 * failed <= tried:
        return None
    try:
        alt = choose_reference_name(found, dataclasses.replace(s, reference="auto"), progress)
    except StarshiftError as exc:  # frames of several sizes: the night stays as it is
        log.warning("%s", exc)
        return None
    return None if alt == ref else alt


def _better_reference(found: fio.Discovery, ref: str, rows: list[dict], alt: str,
                      alt_rows: list[dict]) -> bool:
    """Whether the night against ``alt`` fails fewer frames than against ``ref`` (logged)."""
    failed, tried = _failed_others(rows, ref, found)
    alt_failed, _ = _failed_others(alt_rows, alt, found)
    better = alt_failed < failed
    log.warning("%s: %d of the other %d frames failed against the first frame, %s; against "
                "%s (reference=auto's choice) %d%s", found.directory.name, failed, tried, ref,
                alt, alt_failed, ": aligned onto it" if better else ": the first stays the "
                "reference")
    return better


def _best_reference_run(found: fio.Discovery, s: NightSettings, progress: bool, run):
    """``run(name, first)``, the night against the reference ``name`` (``first``: the one
    chosen as configured), returns (rows, anything); when most frames fail against it
    (:func:`fallback_reference`) the night is run against the other too, and the run that
    fails fewer frames is returned."""
    name = choose_reference_name(found, s, progress)
    rows, extra = run(name, True)
    alt = fallback_reference(found, s, name, rows, progress)
    if alt is not None:
        alt_rows, alt_extra = run(alt, False)
        if _better_reference(found, name, rows, alt, alt_rows):
            return alt_rows, alt_extra
    return rows, extra


def measure(input_dir: str | Path, cfg, progress: bool = False
            ) -> tuple[Table, NightReference]:
    """The shifts table of a night: one row per light frame, in name order. When most frames
    fail against the first frame, the night is measured against another
    (:func:`fallback_reference`) if fewer fail there."""
    input_dir, s = Path(input_dir), night_settings(cfg, ["measure"])
    found = discover(input_dir, s)

    def run(name: str, first: bool) -> tuple[list[dict], NightReference]:
        ref = load_reference(input_dir, name, s)
        results = align_night(found.names, _reader(input_dir, found.unreadable), ref,
                              s.method, pre_shift=s.pre_shift, fill=s.fill, jobs=s.jobs,
                              executor=s.executor)
        return [r.row for r in progress_bar(results, progress, total=len(found.names),
                                            desc=f"measure {input_dir.name}")], ref

    rows, ref = _best_reference_run(found, s, progress, run)
    return _shifts_table(rows), ref


def align(input_dir: str | Path, output_dir: str | Path, cfg, progress: bool = False,
          write_frames: bool = True):
    """:func:`align_table` as a pandas DataFrame."""
    return align_table(input_dir, output_dir, cfg, progress, write_frames).to_frame()


def align_table(input_dir: str | Path, output_dir: str | Path, cfg, progress: bool = False,
                write_frames: bool = True) -> Table:
    """``starshift align``: measure, shift, decide; write kept frames and diagnostics.csv,
    and return the diagnostics (without importing pandas).

    With ``write_frames=False`` only diagnostics.csv is written (sweeps).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise StarshiftError(f"{output_dir}: output directory must differ from the input "
                             "(inputs are never modified)")
    s = night_settings(cfg)
    found = discover(input_dir, s)
    if not write_frames:  # a sweep job: only the table, into the job's own folder
        rows = _align_rows(input_dir, found, s, None, progress)
        diag = _diagnostics(rows)
        fio.write_table(diag, output_dir / DIAGNOSTICS)
        return diag
    _check_outputs_not_inputs(found, output_dir)
    with fio.output_folder(output_dir, marker=DIAGNOSTICS) as out:
        out.require_free(_outputs_bytes(found))  # before any frame is measured
        rows = _align_rows(input_dir, found, s, out, progress)
        diag = _diagnostics(rows)
        fio.write_table(diag, out.staging / DIAGNOSTICS)
    return diag


def _frame_bytes(shape: tuple[int, ...]) -> int:
    """Size on disk of one float32 output frame (header blocks included)."""
    return int(np.prod(shape)) * 4 + 4 * 2880


def _outputs_bytes(found: fio.Discovery) -> int:
    """Room a run's frames need: every frame the size of the first light frame (its header)."""
    if not found.lights:
        return 0
    header = fio.read_header(found.directory / found.lights[0])
    try:
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    except (KeyError, TypeError, ValueError):
        return 0
    return len(found.names) * _frame_bytes(shape)


def _align_rows(input_dir: Path, found: fio.Discovery, s: NightSettings,
                out: fio.OutputFolder | None, progress: bool) -> list[dict]:
    """Measure, shift and decide every frame; kept frames go to ``out.staging``. When most
    frames fail against the first frame, the night is aligned again onto another
    (:func:`fallback_reference`, into a scratch folder in the staging) and that run is kept
    if fewer frames fail in it."""
    names = found.names
    scratch: list[Path] = []  # the other reference's run's folder, inside the staging

    def run(name: str, first: bool) -> tuple[list[dict], Path | None]:
        folder = None
        if out is not None:
            folder = out.staging if first else Path(tempfile.mkdtemp(prefix=".reference-",
                                                                     dir=out.staging))
            scratch.extend([] if first else [folder])
        ref = load_reference(input_dir, name, s)
        # every shifted frame is written where it is made; the night's rules decide below
        results = align_night(names, _reader(input_dir, found.unreadable), ref, s.method,
                              pre_shift=s.pre_shift, fill=s.fill,
                              shift=s.shift, cards=_provenance(s),
                              sink=_Sink(folder) if folder is not None else None,
                              jobs=s.jobs, executor=s.executor, own_frames=True)
        with closing(results):  # on an interruption the workers stop before the staging goes
            return [r.row for r in progress_bar(results, progress, total=len(names),
                                                desc=f"align {input_dir.name}")], folder

    try:
        rows, folder = _best_reference_run(found, s, progress, run)
        if folder is not None and folder != out.staging:  # the other reference's frames
            for row in rows:
                frame = fio.output_name(row[C.FILE])
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out.staging / frame)
                if (folder / frame).exists():
                    os.replace(folder / frame, out.staging / frame)
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
    thresholds = decide_night(rows, s.limits, s.bad_frames, s.keep_frames)
    if out is not None:
        for row in rows:
            written = out.staging / fio.output_name(row[C.FILE])
            if row[C.STATUS] != C.KEPT and written.exists():
                written.unlink()
        fio.write_table(thresholds, out.staging / THRESHOLDS, float_format="%.6g")
    return rows


def stage_measure(input_dir, out_table, cfg, progress=False, compare_table=None) -> Table:
    """DVC ``centroid`` stage: the shifts table and, at ``compare_table``, the seed's box
    estimate beside the automatic one (:func:`compare_methods`), measured against the same
    prepared reference in the same process."""
    table, ref = measure(input_dir, cfg, progress)
    fio.write_table(table, out_table)
    if compare_table is not None:
        fio.write_table(compare_methods(input_dir, out_table, ref, cfg, progress),
                        compare_table)
    return table


def stage_shift(input_dir, shifts_table, out_dir, out_table, cfg, progress=False):
    """DVC ``shift`` stage: every measured frame shifted, plus residuals (no decisions)."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    s = night_settings(cfg, ["shift"])
    names, rows, ref_row = _shifts_rows(shifts_table)
    with fio.output_folder(out_dir) as out:
        ref = load_reference(input_dir, ref_row[C.FILE], s, (int(ref_row[C.PRE_DX]),
                                                             int(ref_row[C.PRE_DY])))
        out.require_free(_frame_bytes(ref.data.shape))
        results = align_night(names, _reader(input_dir), ref, s.method,
                              measured=dict(zip(names, rows, strict=True)),
                              shift=s.shift, cards=_provenance(s), sink=_Sink(out.staging),
                              jobs=s.jobs, executor=s.executor, own_frames=True)
        with closing(results):  # on an interruption the workers stop before the staging goes
            rows = [r.row for r in progress_bar(results, progress, total=len(names),
                                                desc=f"shift {input_dir.name}")]
    df = Table.from_rows(rows)
    fio.write_table(df, out_table)
    return df


def _shifts_rows(shifts_table) -> tuple[list[str], list[dict], dict]:
    """A shifts table's frame names, rows, and the reference's row (exactly one is marked)."""
    rows = fio.read_rows(shifts_table).rows()
    refs = [r for r in rows if r.get(C.REFERENCE) == 1]
    if len(refs) != 1:
        raise StarshiftError(f"{shifts_table}: exactly one row must be marked as the reference")
    return [r[C.FILE] for r in rows], rows, refs[0]


def stage_reject(residuals_table, out_table, thresholds_table, cfg) -> Table:
    """DVC ``reject`` stage: every frame's status by the night's rules, and the thresholds.

    The accepted frames are the ``kept`` rows; their shifted frames stay where the shift
    stage wrote them (no copies).
    """
    s = night_settings(cfg, ["reject"])
    rows = fio.read_rows(residuals_table).rows()
    for row in rows:
        for col in (C.REMEASURE, C.REASON):
            row[col] = "" if is_missing(row.get(col)) else row.get(col)
    thresholds = decide_night(rows, s.limits, s.bad_frames, s.keep_frames)
    fio.write_table(thresholds, thresholds_table, float_format="%.6g")
    diag = _diagnostics(rows)
    fio.write_table(diag, out_table)
    return diag


#: columns of the box-versus-automatic table
COMPARE_COLUMNS = [C.FILE, "box_dx", "box_dy", "box_status", "auto_dx", "auto_dy",
                   "auto_sigma_dx", "auto_sigma_dy", "auto_n_stars", "auto_status"]


def compare_methods(input_dir, shifts_table, ref: NightReference, cfg, progress=False
                    ) -> Table:
    """The box-versus-automatic table: the seed's box estimate beside the automatic one, per
    frame (the report's check of the night's method).

    The night's own method's estimates come from its shifts table (``shifts_table``, as
    written); the other method measures the same frames against the same prepared reference
    ``ref``, with the same pre-shifts. A night without a search box has nothing to compare:
    the table is empty.
    """
    from ..night import AutoMethod, BoxMethod

    input_dir, s = Path(input_dir), night_settings(cfg, ["compare"])
    if s.box is None:
        return Table({c: np.empty(0, dtype=object) for c in COMPARE_COLUMNS})
    names, mine, _ = _shifts_rows(shifts_table)
    other = AutoMethod(s.catalogue) if s.method.name == "box" else BoxMethod(s.box)
    # only the shifts are compared: the frames' quality metrics would be thrown away
    results = align_night(names, _reader(input_dir), ref, other, pre_shift=s.pre_shift,
                          fill=s.fill, jobs=s.jobs, executor=s.executor, quality=False)
    theirs = [r.row for r in progress_bar(results, progress, total=len(names),
                                          desc=f"compare {input_dir.name}")]
    box, auto = (mine, theirs) if s.method.name == "box" else (theirs, mine)
    picked = {"box": ((C.DX, "box_dx"), (C.DY, "box_dy"), (C.STATUS, "box_status")),
              "auto": ((C.DX, "auto_dx"), (C.DY, "auto_dy"), (C.SIGMA_DX, "auto_sigma_dx"),
                       (C.SIGMA_DY, "auto_sigma_dy"), (C.N_STARS, "auto_n_stars"),
                       (C.STATUS, "auto_status"))}
    columns = {C.FILE: np.array(names, dtype=object)}
    for side, rows in (("box", box), ("auto", auto)):
        # each side's columns typed as that side's table types them, in the frames' order
        table = Table.from_rows(rows, [C.FILE] + [c for c, _ in picked[side]])
        at = {n: i for i, n in enumerate(table[C.FILE].tolist())}
        order = np.array([at[n] for n in names], dtype=np.intp)
        for col, name in picked[side]:
            columns[name] = table[col][order]
    return Table(columns)

