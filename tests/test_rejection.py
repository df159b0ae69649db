"""Bad frames found and named, good frames kept: generator nights over seeds, and real nights.

The generator night ``bad_frames`` holds, among good frames, one frame of each kind of defect
(trailed, clouds, defocus, another field, doubled stars, high background, a 0.3-degree
rotation) and a meridian flip (good: aligned exactly by a 180-degree turn). The real nights in
``../shared/data/real`` (skipped when absent) carry truth measured outside the project.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import trail

from starshift import columns as C
from starshift.config import compose_align
from starshift.datasets import generate_night
from starshift.pipeline.stages import align

#: what the reason of each kind of bad frame must name
EXPECTED = {
    "trailed": "elongation",
    "doubled": "elongation",
    "clouds": "transparency",
    "defocus": "fwhm",
    "high_background": "sky",
    "rotation": "corner misalignment",
    "other_field": "no match",
    "faint_broad": "fwhm",
}

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _scored(night_dir: Path, out: Path) -> pd.DataFrame:
    diag = align(night_dir, out, compose_align([]))
    truth = pd.read_csv(night_dir / "truth.csv")
    return diag.merge(truth, on=C.FILE, suffixes=("", "_true"))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_every_bad_frame_caught_with_its_reason_no_good_frame_lost(tmp_path, seed):
    night = generate_night(tmp_path / "in", "bad_frames", seed=seed)
    m = _scored(Path(night), tmp_path / "out")
    for r in m.itertuples():
        if r.bad:
            assert r.status != C.KEPT, f"seed {seed}: {r.kind} frame {r.file} kept"
            assert EXPECTED[r.kind] in r.reason, f"seed {seed}: {r.kind}: {r.reason}"
        else:
            assert r.status == C.KEPT, f"seed {seed}: good {r.kind} frame {r.file}: {r.reason}"
            assert abs(r.dx - r.dx_true) < 0.1 and abs(r.dy - r.dy_true) < 0.1
    flips = m[m["flip_true"] == 1]
    assert len(flips) and (flips[C.FLIP] == 1).all()


def test_a_meridian_flip_is_aligned_exactly(tmp_path):
    """The flipped frame, turned by 180 deg and shifted by whole pixels, lands on the reference:
    its written pixels are a permutation of the input's (no interpolation), minus the sky."""
    from starshift import io

    night = Path(generate_night(tmp_path / "in", "bad_frames", seed=1))
    m = _scored(night, tmp_path / "out")
    row = m[m["flip_true"] == 1].iloc[0]
    raw, _ = io.read_frame(night / row[C.FILE])
    out, header = io.read_frame(tmp_path / "out" / row[C.FILE])
    assert header["SSFLIP"] is True
    dx, dy = int(row[C.APPLIED_DX]), int(row[C.APPLIED_DY])
    turned = np.rot90(raw, 2)
    ny, nx = raw.shape
    inner = out[max(dy, 0):ny + min(dy, 0), max(dx, 0):nx + min(dx, 0)]
    source = turned[max(-dy, 0):ny + min(-dy, 0), max(-dx, 0):nx + min(-dx, 0)]
    np.testing.assert_array_equal(inner, (source - row[C.BKGSUB]).astype(np.float32))


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present")
@pytest.mark.parametrize("night", sorted(p.name for p in REAL.glob("*") if (p / "truth.csv")
                                         .exists()) if REAL.is_dir() else [])
def test_real_nights_good_kept_and_aligned_bad_caught(tmp_path, night):
    m = _scored(REAL / night, tmp_path / "out")
    good, bad = m[m["bad"] == 0], m[m["bad"] == 1]
    assert (good[C.STATUS] == C.KEPT).all(), good.loc[good[C.STATUS] != C.KEPT, C.REASON]
    assert (bad[C.STATUS] != C.KEPT).all(), bad.loc[bad[C.STATUS] == C.KEPT, C.FILE]
    err = np.hypot(good[C.DX] - good["dx_true"], good[C.DY] - good["dy_true"])
    assert (err <= 0.5).all()


def _rewritten(src: Path, dst: Path, change: dict) -> Path:
    """``src``'s light frames in ``dst``: those in ``change`` (name -> function of the float32
    data) written as float32 FITS with their header (less BZERO/BSCALE), the others linked;
    the truth linked."""
    from astropy.io import fits

    dst.mkdir()
    for name in pd.read_csv(src / "truth.csv")[C.FILE]:
        if name not in change:
            (dst / name).symlink_to(src / name)
            continue
        with fits.open(src / name) as hdul:
            data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
        fits.writeto(dst / name, change[name](data).astype(np.float32), header)
    (dst / "truth.csv").symlink_to(src / "truth.csv")
    return dst


WALLACE = REAL / "wallace_2018-10-12"


@pytest.mark.skipif(not WALLACE.is_dir(), reason="../shared/data/real not present")
def test_real_night_with_satellite_trails_keeps_and_aligns_its_good_frames(tmp_path):
    """Trails (crossing ones in the night's faintest good frame, at 0.3 of the reference's
    light; one in the reference; a broad bright one) drawn on the real frames: the night is
    scored as without them."""
    truth = pd.read_csv(WALLACE / "truth.csv")
    trails = {truth[C.FILE][0]: [(500, 300, 0.3, 3000)],
              "lux-180.000secs.Light.Open.00000024.fit": [(400, 500, 0.5, 4000),
                                                          (600, 450, -0.9, 2500)],
              "lux-180.000secs.Light.Open.00000019.fit": [(200, 700, 1.2, 20000, 4.0)]}

    def drawn(lines):
        return lambda data: data + sum(trail(data.shape, *t) for t in lines)

    night = _rewritten(WALLACE, tmp_path / "in", {n: drawn(t) for n, t in trails.items()})
    m = _scored(night, tmp_path / "out")
    good, bad = m[m["bad"] == 0], m[m["bad"] == 1]
    assert (good[C.STATUS] == C.KEPT).all(), good.loc[good[C.STATUS] != C.KEPT, C.REASON]
    assert (bad[C.STATUS] != C.KEPT).all(), bad.loc[bad[C.STATUS] == C.KEPT, C.FILE]
    err = np.hypot(good[C.DX] - good["dx_true"], good[C.DY] - good["dy_true"])
    assert (err <= 0.5).all()


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present")
def test_no_streak_is_found_on_the_real_frames(monkeypatch):
    # the trails' removal touches no real frame: patches of stars and noise stay
    from starshift import io
    from starshift.registration import ReferenceParams, _coarse

    remove_streaks = _coarse._remove_streaks
    monkeypatch.setattr(_coarse, "_remove_streaks", lambda out: 0)
    p = ReferenceParams()
    files = [f for night in REAL.iterdir() if (night / "truth.csv").exists()
             for f in pd.read_csv(night / "truth.csv")[C.FILE].map(lambda n, d=night: d / n)]
    assert files
    for f in files:
        data = io.read_frame(f)[0]
        img = _coarse._coarse_image(data, p, _coarse._coarse_setup(data.shape, p))[0]
        assert remove_streaks(img) == 0, f.name


def _first_by_name(src: Path, dst: Path, first: str) -> pd.DataFrame:
    """``src``'s light frames linked into ``dst`` with ``first`` renamed to sort first; its
    truth with each shift moved onto whichever frame becomes the reference."""
    truth = pd.read_csv(src / "truth.csv")
    dst.mkdir()
    truth["name"] = [("0_" if f == first else "1_") + f for f in truth[C.FILE]]
    for f, n in zip(truth[C.FILE], truth["name"], strict=True):
        (dst / n).symlink_to(src / f)
    return truth


def _check_against(m: pd.DataFrame, truth: pd.DataFrame, tol: float, bad: bool = True
                   ) -> None:
    """Every good frame kept, at ``tol`` px of the truth moved onto the chosen reference;
    every bad frame not kept (unless ``bad`` is False)."""
    t = truth.set_index("name")
    ref = m.loc[m[C.REFERENCE] == 1, C.FILE].item()
    for r in m.itertuples():
        row = t.loc[r.file]
        if row["bad"]:
            assert not bad or r.status != C.KEPT, f"{r.file} ({row['kind']}) kept"
            continue
        assert r.status == C.KEPT, f"{r.file}: {r.reason}"
        assert abs(r.dx - (row["dx"] - t.loc[ref, "dx"])) < tol
        assert abs(r.dy - (row["dy"] - t.loc[ref, "dy"])) < tol


def test_a_first_frame_nothing_matches_gives_way_to_another_reference(tmp_path, caplog):
    """The first frame by name is of another field: every other frame fails against it, so
    the night is aligned onto reference=auto's choice instead, and says so; with the frame
    named as the reference (reference=FILE) it stays the reference."""
    from starshift.pipeline.stages import measure

    night = Path(generate_night(tmp_path / "gen", "bad_frames", seed=1))
    truth = pd.read_csv(night / "truth.csv")
    other = truth.loc[truth["kind"] == "other_field", C.FILE].item()
    moved = _first_by_name(night, tmp_path / "in", other)
    with caplog.at_level("WARNING", logger="starshift"):
        m = align(tmp_path / "in", tmp_path / "out", compose_align([])).merge(
            moved.rename(columns={C.FILE: "orig"}), left_on=C.FILE, right_on="name",
            suffixes=("", "_true"))
    assert "failed against the first frame" in caplog.text and "aligned onto it" in caplog.text
    ref = m.loc[m[C.REFERENCE] == 1, C.FILE].item()
    assert ref != "0_" + other
    assert m.loc[m[C.FILE] == "0_" + other, C.STATUS].item() == C.FAILED
    # the defects are judged as before, against another reference: the defocused frame (1.3
    # x the night's FWHM against a limit of 1.25 x) is on the edge, so only good frames count
    _check_against(m, moved, 0.1, bad=False)
    kept = {p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".fit"}
    assert kept == set(m.loc[m[C.STATUS] == C.KEPT, C.FILE])
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    # the DVC centroid stage measures against the same frame
    table, _ = measure(tmp_path / "in", compose_align([]))
    rows = table.rows()
    assert [r[C.FILE] for r in rows if r[C.REFERENCE] == 1] == [ref]
    # a reference the user names stays the reference
    named = align(tmp_path / "in", tmp_path / "named",
                  compose_align([f"reference=0_{other}"]))
    assert named.loc[named[C.REFERENCE] == 1, C.FILE].item() == "0_" + other
    assert (named[C.STATUS] == C.FAILED).sum() > len(named) // 2


@pytest.mark.skipif(not WALLACE.is_dir(), reason="../shared/data/real not present")
def test_real_night_whose_first_frame_is_clouded_out(tmp_path):
    """The real night with its cloudiest frame (5 catalogue stars; it matches nothing) first by
    name: its 20 good frames are kept and aligned onto another frame, the 5 clouded ones
    are not kept."""
    moved = _first_by_name(WALLACE, tmp_path / "in", "lux-180.000secs.Light.Open.00000039.fit")
    m = align(tmp_path / "in", tmp_path / "out", compose_align([]))
    _check_against(m, moved, 0.25)


@pytest.mark.skipif(not WALLACE.is_dir(), reason="../shared/data/real not present")
def test_real_night_scaled_to_0_1_is_scored_as_in_adu(tmp_path):
    """The real night written as 32-bit floats scaled to 0-1 (as Siril writes calibrated
    frames): the same frames kept and caught, the shifts and their uncertainties as in ADU."""
    names = pd.read_csv(WALLACE / "truth.csv")[C.FILE]
    night = _rewritten(WALLACE, tmp_path / "in", dict.fromkeys(names, lambda d: d / 65535.0))
    scaled = _scored(night, tmp_path / "out").set_index(C.FILE)
    adu = _scored(WALLACE, tmp_path / "adu").set_index(C.FILE)
    assert (scaled[C.STATUS] == adu[C.STATUS]).all()
    kept = adu[C.STATUS] == C.KEPT
    for col in (C.DX, C.DY):
        assert (scaled.loc[kept, col] - adu.loc[kept, col]).abs().max() < 0.05
    kept &= adu[C.REFERENCE] == 0  # the reference's own sigma is 0
    # the per-star error model differs (gain 1 e-/ADU in ADU, the sky's gain scaled), and each
    # frame's is fitted to ~20 stars' scatter: the night's uncertainties agree, a frame's to
    # within the error of an error fitted from 20 stars (measured: 0.64-1.70, median 0.92)
    for col in (C.SIGMA_DX, C.SIGMA_DY):
        ratio = scaled.loc[kept, col] / adu.loc[kept, col]
        assert 0.8 < ratio.median() < 1.25 and ratio.between(0.5, 2.0).all(), ratio.describe()


@pytest.mark.skipif(not WALLACE.is_dir(), reason="../shared/data/real not present")
@pytest.mark.parametrize("frames", [(0, 3, 6, 9, 23, 24), (*range(9), *range(20, 25))])
def test_real_frames_under_a_passing_cloud_stay_good_in_a_steady_night(tmp_path, frames):
    """Parts of the real night whose other good frames are steady: its poorest good frames
    (0.30 and 0.40 of the reference's light, under a passing cloud) are kept, the frames
    through thick cloud (0.07-0.14) are not."""
    truth = pd.read_csv(WALLACE / "truth.csv").iloc[list(frames)]
    night = tmp_path / "in"
    night.mkdir()
    for name in truth[C.FILE]:
        (night / name).symlink_to(WALLACE / name)
    truth.to_csv(night / "truth.csv", index=False)
    m = _scored(night, tmp_path / "out")
    good, bad = m[m["bad"] == 0], m[m["bad"] == 1]
    assert (good[C.STATUS] == C.KEPT).all(), good.loc[good[C.STATUS] != C.KEPT, C.REASON]
    assert (bad[C.STATUS] != C.KEPT).all(), bad.loc[bad[C.STATUS] == C.KEPT, C.FILE]
