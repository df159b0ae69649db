"""The night loop: each frame read once per stage, the reference prepared once, any method."""

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import NIGHT_SHIFTS

import starshift.io
import starshift.night
import starshift.settings
from starshift import columns as C
from starshift.config import compose_align
from starshift.night import Measurement
from starshift.pipeline.stages import align, stage_measure, stage_reject, stage_shift

BOX = ["method=box", "centroid.box_center=[80,60]", "centroid.box_size=21"]


@pytest.fixture
def counted(monkeypatch):
    """Counts frame reads (by file name) and reference preparations."""
    reads, prepared = Counter(), Counter()
    read, prepare = starshift.io.read_frame, starshift.night.prepare_reference

    def counting_read(path):
        reads[str(path).rsplit("/", 1)[-1]] += 1
        return read(path)

    def counting_prepare(data, **kw):
        prepared["reference"] += 1
        return prepare(data, **kw)

    monkeypatch.setattr(starshift.io, "read_frame", counting_read)
    monkeypatch.setattr(starshift.night, "prepare_reference", counting_prepare)
    # in this process, where the counters are (worker processes read in theirs)
    monkeypatch.setattr(starshift.settings, "worker_count", lambda jobs: 1)
    return reads, prepared


@pytest.mark.parametrize("overrides", [BOX, ["method=auto"]], ids=["box", "auto"])
def test_align_reads_each_frame_once_and_prepares_reference_once(small_night, tmp_path,
                                                                   counted, overrides):
    reads, prepared = counted
    diag = align(small_night, tmp_path / "out", compose_align(overrides))
    assert list(diag[C.FILE]) == list(NIGHT_SHIFTS)
    assert reads == Counter({name: 1 for name in NIGHT_SHIFTS})
    assert prepared["reference"] == 1


def test_each_dvc_stage_reads_each_frame_once(small_night, tmp_path, counted):
    reads, prepared = counted
    cfg = compose_align(BOX)
    stage_measure(small_night, tmp_path / "shifts.csv", cfg)
    assert reads == Counter({name: 1 for name in NIGHT_SHIFTS}) and prepared["reference"] == 1
    reads.clear()
    prepared.clear()
    stage_shift(small_night, tmp_path / "shifts.csv", tmp_path / "shifted",
                tmp_path / "residuals.csv", cfg)
    # shifting needs the measured table and the box star, not the aligner's catalogue
    assert reads == Counter({name: 1 for name in NIGHT_SHIFTS}) and prepared["reference"] == 0
    reads.clear()
    diag = stage_reject(tmp_path / "residuals.csv", tmp_path / "diagnostics.csv",
                        tmp_path / "thresholds.csv", cfg)
    assert not reads  # decisions come from the tables alone
    assert (diag[C.STATUS] == C.KEPT).all()


def test_workers_give_the_same_outputs_as_one_process(small_night, tmp_path):
    one = align(small_night, tmp_path / "one", compose_align(["jobs=1"]))
    two = align(small_night, tmp_path / "two", compose_align(["jobs=2"]))
    assert one.equals(two)
    assert {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}


def test_a_third_method_is_one_class(small_night):
    """Any object with the Method members runs through the loop: here, the truth itself."""

    @dataclass(frozen=True)
    class TruthMethod:
        name: str = "truth"
        reference_n_stars: int = 0
        needs_shifted_median: bool = False

        def measure(self, ref, data):
            # the brightest pixel is the bright star: whole-pixel shift, enough for a test
            y, x = np.unravel_index(np.argmax(data), data.shape)
            ry, rx = np.unravel_index(np.argmax(ref.data), ref.data.shape)
            return Measurement(float(rx - x), float(ry - y), 0.5, 0.5, 1, self.name)

        def residual(self, ref, shifted, measured, applied, shifted_median):
            return measured.dx - applied[0], measured.dy - applied[1], ""

    paths = sorted(p for p in small_night.glob("f*.fit"))
    ref_data, ref_header = starshift.io.read_frame(paths[0])
    ref = starshift.night.prepare_night_reference(paths[0].name, ref_data, ref_header, {})
    results = list(starshift.night.align_night(
        [p.name for p in paths], lambda n: starshift.io.read_frame(small_night / n), ref,
        TruthMethod(), shift=starshift.night.ShiftSettings()))
    for r in results:
        tdx, tdy = NIGHT_SHIFTS[r.row[C.FILE]]
        assert abs(r.row[C.DX] - tdx) <= 0.5 and abs(r.row[C.DY] - tdy) <= 0.5
        assert r.row[C.METHOD] in ("truth",)
        assert r.header["SSMETHOD"] == "truth"


def test_quality_false_measures_the_same_shifts_without_the_metrics(small_night, monkeypatch):
    """The compare stage's switch: the same shift columns, and frame_quality never runs."""
    paths = sorted(p for p in small_night.glob("f*.fit"))
    ref_data, ref_header = starshift.io.read_frame(paths[0])
    cfg = compose_align(["method=auto"])
    s = starshift.settings.night_settings(cfg, ["measure"])
    ref = starshift.night.prepare_night_reference(paths[0].name, ref_data, ref_header,
                                                  s.catalogue)
    names = [p.name for p in paths]

    def run(**kw):
        return [r.row for r in starshift.night.align_night(
            names, lambda n: starshift.io.read_frame(small_night / n), ref, s.method, **kw)]

    full = run()
    calls = Counter()
    for fn in ("frame_quality", "reference_quality"):
        real = getattr(starshift.night, fn)
        monkeypatch.setattr(starshift.night, fn,
                            lambda *a, _f=fn, _r=real: calls.update([_f]) or _r(*a))
    lean = run(quality=False)
    assert not calls
    for a, b in zip(full, lean, strict=True):
        assert C.FWHM in a and C.FWHM not in b
        assert {k: a[k] for k in b} == b


def test_own_frames_shifts_within_the_read_arrays_with_the_same_results(small_night):
    """own_frames: each frame is shifted in the array read for it (one frame less of memory),
    with the same rows, headers and pixels; the reference's array and, without own_frames, a
    reader's arrays are left as they were."""
    paths = sorted(p for p in small_night.glob("f*.fit"))
    ref_data, ref_header = starshift.io.read_frame(paths[0])
    cfg = compose_align(["method=auto", "shift.subtract_background=true"])
    s = starshift.settings.night_settings(cfg, ["measure", "shift"])
    ref = starshift.night.prepare_night_reference(paths[0].name, ref_data, ref_header,
                                                  s.catalogue)
    ref_before = ref.data.copy()
    names = [p.name for p in paths]
    kept: dict[str, np.ndarray] = {}

    def read(n):  # keeps what it returns: the caller's arrays
        data, header = starshift.io.read_frame(small_night / n)
        kept[n] = data
        return data, header

    copied = list(starshift.night.align_night(names, read, ref, s.method, shift=s.shift))
    originals = {n: a.copy() for n, a in kept.items()}
    assert all(r.data is not kept.get(r.row[C.FILE]) for r in copied)
    owned = list(starshift.night.align_night(names, read, ref, s.method, shift=s.shift,
                                             own_frames=True))
    np.testing.assert_array_equal(ref.data, ref_before)
    moved = 0
    for a, b in zip(copied, owned, strict=True):
        name = a.row[C.FILE]
        assert a.row == b.row or all(
            a.row[k] == b.row[k] or (a.row[k] != a.row[k] and b.row[k] != b.row[k])
            for k in a.row)
        np.testing.assert_array_equal(a.data, b.data)
        assert repr(a.header) == repr(b.header)
        if name != ref.name and (a.row[C.APPLIED_DX] or a.row[C.APPLIED_DY]):
            assert b.data is kept[name]  # shifted in place, the second run's array
            moved += 1
    assert moved >= 2
    # the first run (own_frames False) left its reader's arrays as read
    fresh = {n: starshift.io.read_frame(small_night / n)[0] for n in originals}
    for n, a in originals.items():
        np.testing.assert_array_equal(a, fresh[n])
