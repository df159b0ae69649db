"""Report building blocks: star selection, photometry across shifts, GIFs, stacks, plots."""

from __future__ import annotations

import io
import math

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from starshift import columns as C
from starshift.config import ReportConfig
from starshift.report import (
    asinh_stretch,
    blink_gif,
    blink_selection,
    block_mean,
    comparison_layout,
    difference_limit,
    estimate_saturation,
    flux_change_plot,
    order_comparison_gif,
    quality_figure,
    quality_plot,
    residual_figure,
    residual_plot,
    select_stars,
    shift_photometry,
    shifted_cutout,
    stack,
    stack_fwhm,
    stack_png,
    star_candidates,
    summarise_photometry,
    sweep_plot,
)
from starshift.report.gif import comparison_panels, evenly_spaced, grey_index
from starshift.report.stack import STACK_WIDTH, stack_figure
from starshift.shift import apply_shift, fill_value

SHAPE = (200, 300)  # ny, nx
FWHM = 4.0
SKY = 100.0
NOISE = 5.0
SATURATION = 40000.0
# (x, y, total flux) in reference coordinates
GOOD = [(80.3, 70.6, 2.0e5), (200.7, 120.2, 1.0e5), (150.2, 150.8, 5.0e4)]
SATURATED = (120.5, 60.5, 2.0e6)  # peak ~110000 before clipping: the brightest source
PAIR = [(230.4, 60.3, 1.5e5), (236.4, 62.1, 1.2e5)]  # 6.3 px apart: resolved, not isolated
EDGE = (20.3, 100.0, 3.0e5)  # bright but inside the 40 px border
STARS = [*GOOD, SATURATED, *PAIR, EDGE]


def make_frame(dx=0.0, dy=0.0, seed=0, stars=STARS, shape=SHAPE):
    """Gaussian stars at (x - dx, y - dy) (a frame whose shift onto the reference is (dx, dy)),
    flat sky, Gaussian noise, clipped at SATURATION like an ADC."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sigma = FWHM / (2 * math.sqrt(2 * math.log(2)))
    data = np.full(shape, SKY)
    for x, y, flux in stars:
        data += flux / (2 * np.pi * sigma**2) * np.exp(
            -((xx - (x - dx)) ** 2 + (yy - (y - dy)) ** 2) / (2 * sigma**2))
    data += rng.normal(0.0, NOISE, shape)
    return np.minimum(data, SATURATION)


@pytest.fixture(scope="module")
def reference():
    return make_frame(seed=0)


@pytest.fixture(scope="module")
def ref_stars(reference):
    return select_stars(reference, n=8, fwhm=FWHM)


# --------------------------------------------------------------------------- select_stars
def test_select_stars_picks_unsaturated_isolated_stars_brightest_first(reference, ref_stars):
    stars = ref_stars
    assert list(stars.columns) == ["star", "x", "y", "peak"]
    assert stars["star"].tolist() == [1, 2, 3]
    got = stars[["x", "y"]].to_numpy()
    want = np.array([(x, y) for x, y, _ in GOOD])
    np.testing.assert_allclose(got, want, atol=0.1)  # the three good stars, brightest first
    assert (stars["peak"] < SATURATION).all()
    assert select_stars(reference, n=8, fwhm=FWHM).equals(stars)  # deterministic


def test_star_candidates_say_why_sources_are_skipped(reference):
    cand = star_candidates(reference, fwhm=FWHM)

    def reason_at(x, y):
        d = np.hypot(cand["x"] - x, cand["y"] - y)
        assert d.min() < 1.5, f"no source detected near ({x}, {y})"
        return cand.loc[d.idxmin(), "reason"]

    assert reason_at(*SATURATED[:2]) == "saturated"
    assert {reason_at(*PAIR[0][:2]), reason_at(*PAIR[1][:2])} == {"blended"}
    assert reason_at(*EDGE[:2]) == "border"
    assert all(reason_at(x, y) == "" for x, y, _ in GOOD)


def test_saturation_estimate_and_explicit_limit(reference):
    assert estimate_saturation(reference) == pytest.approx(0.8 * SATURATION)
    assert estimate_saturation(make_frame(stars=GOOD)) == math.inf  # nothing clipped
    # an explicit limit below the brightest good star's peak (~11000 ADU) drops it
    stars = select_stars(reference, n=8, fwhm=FWHM, saturation=8000.0)
    assert len(stars) == 2
    np.testing.assert_allclose(stars[["x", "y"]].to_numpy()[0], GOOD[1][:2], atol=0.1)


def test_unresolved_pair_is_rejected_by_shape():
    pair = [(150.0, 100.0, 1.0e5), (153.0, 100.5, 1.0e5)]  # 3 px apart: one elongated blob
    cand = star_candidates(make_frame(stars=pair), fwhm=FWHM)
    assert len(cand) and (cand["reason"] != "").all()
    assert select_stars(make_frame(stars=pair), fwhm=FWHM).empty


# --------------------------------------------------------------------------- photometry
def test_shift_photometry_order0_is_exact_and_order1_changes_flux(ref_stars):
    stars = ref_stars
    dx, dy = 3.4, -2.7
    raw = make_frame(dx=dx, dy=dy, seed=1)
    phot = shift_photometry(raw, dx, dy, stars)
    assert list(phot.columns) == [
        "star", "x", "y", "flux_before", "flux_order0", "flux_order1", "flux_order3",
        "rel_change_order0", "rel_change_order1", "rel_change_order3", "snr", "note"]
    # order 0 moves whole pixels: bitwise the same flux, a change of exactly 0.0
    assert (phot["flux_order0"].to_numpy() == phot["flux_before"].to_numpy()).all()
    assert (phot["rel_change_order0"] == 0.0).all()
    # bilinear interpolation at a sub-pixel shift smooths, and changes the aperture flux
    assert (phot["rel_change_order1"].abs() > 1e-5).all()
    assert (phot["rel_change_order1"].abs() < 0.05).all()
    assert phot["rel_change_order3"].notna().all()
    # before shifting, the flux is the injected one (r=6 px holds 99.8 % of it) within noise
    injected = np.array([f for _, _, f in GOOD])
    np.testing.assert_allclose(phot["flux_before"], injected, rtol=0.01)
    assert (phot["note"] == "").all()


def test_shift_photometry_order0_exact_with_half_pixel_shifts(ref_stars):
    """round() of x.5 (banker's rounding in apply_shift) must not break the exactness."""
    stars = ref_stars
    for dx, dy in [(2.5, -1.5), (-0.5, 0.5), (0.0, 0.0)]:
        raw = make_frame(dx=dx, dy=dy, seed=2)
        phot = shift_photometry(raw, dx, dy, stars, orders=(0,))
        assert (phot["rel_change_order0"] == 0.0).all(), (dx, dy)


def test_shift_photometry_marks_stars_that_leave_the_frame():
    raw = make_frame(seed=3)
    stars = pd.DataFrame({"star": [1, 2], "x": [80.3, 8.0], "y": [70.6, 100.0]})
    phot = shift_photometry(raw, 0.0, 0.0, stars)
    assert phot.loc[0, "note"] == "" and np.isfinite(phot.loc[0, "flux_before"])
    assert phot.loc[1, "note"] != ""
    assert phot.loc[1, ["flux_before", "flux_order0", "rel_change_order1"]].isna().all()
    # blank sky (a star faint in this frame's filter): fluxes given, no relative change
    blank = shift_photometry(raw, 0.3, 0.2, pd.DataFrame({"star": [1], "x": [150.0],
                                                          "y": [60.0]}))
    assert np.isfinite(blank.loc[0, "flux_order1"]) and abs(blank.loc[0, "snr"]) < 20
    assert math.isnan(blank.loc[0, "rel_change_order0"]) and "S/N" in blank.loc[0, "note"]
    # a shift that would pull fill pixels into the annulus of order 1/3 is caught too
    stars = pd.DataFrame({"star": [1], "x": [230.0], "y": [100.0]})
    phot = shift_photometry(raw, -60.0, 0.0, stars)  # the star sits at x=290 in the raw frame
    assert math.isnan(phot.loc[0, "flux_order1"]) and phot.loc[0, "note"]


def test_summarise_photometry(ref_stars):
    stars = ref_stars
    parts = []
    for i, (dx, dy) in enumerate([(1.3, 0.4), (-2.6, 1.8)]):
        p = shift_photometry(make_frame(dx=dx, dy=dy, seed=10 + i), dx, dy, stars)
        p.insert(0, C.FILE, f"f{i}.fit")
        parts.append(p)
    summary = summarise_photometry(pd.concat(parts, ignore_index=True))
    assert summary["order"].tolist() == [0, 1, 3]
    assert summary["n_frames"].tolist() == [2, 2, 2]
    assert summary["n_measured"].tolist() == [6, 6, 6]
    row0 = summary.iloc[0]
    assert row0["max_abs_rel_change"] == 0.0 and row0["rms_rel_change"] == 0.0
    assert summary.iloc[1]["max_abs_rel_change"] > 0


# --------------------------------------------------------------------------- GIF
@pytest.mark.parametrize("fill", ["median", "nan"])
def test_shifted_cutout_matches_shifting_the_full_frame(fill):
    rng = np.random.default_rng(4)
    raw = make_frame(seed=4)
    raw[30, 40] = np.nan  # a bad pixel
    cval = fill_value(raw, fill)
    for _ in range(40):
        dx, dy = rng.uniform(-30, 30, 2)
        x0, y0 = int(rng.integers(-40, SHAPE[1])), int(rng.integers(-40, SHAPE[0]))
        for order in (0, 1):
            full = apply_shift(raw, dx, dy, order=order, fill=fill)
            want = np.full((48, 48), cval)
            ys, xs = slice(max(y0, 0), min(y0 + 48, SHAPE[0])), slice(max(x0, 0),
                                                                       min(x0 + 48, SHAPE[1]))
            want[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = full[ys, xs]
            got = shifted_cutout(raw, dx, dy, x0, y0, 48, order=order, cval=cval)
            if order == 0:
                np.testing.assert_array_equal(got, want)  # bitwise, NaNs in the same places
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def _gif_frames(n=6):
    frames = [("ref.fit", make_frame(seed=20), 0.0, 0.0)]
    for i in range(1, n):
        dx, dy = 1.7 * i - 4.1, 0.37 * i - 0.9
        frames.append((f"frame_{i:02d}.fit", make_frame(dx=dx, dy=dy, seed=20 + i), dx, dy))
    return frames


#: the report stage's settings (their one home: ReportConfig)
GIF = {k: getattr(ReportConfig(), f"gif_{k}") for k in ("size", "scale", "levels")}


def _decode(gif: bytes) -> list[np.ndarray]:
    """Every GIF frame as palette indices (each index is its grey value for a grey palette)."""
    with Image.open(io.BytesIO(gif)) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.array(im.convert("RGB")))
        return out


def _panel(rgb: np.ndarray, lay, k: int) -> np.ndarray:
    x, y = lay.panels[k]
    return rgb[y: y + lay.side, x: x + lay.side, 0]


def test_report_config_defaults_make_readable_comparison_panels():
    lay = comparison_layout(GIF["size"], GIF["scale"])
    assert lay.side >= 256 and GIF["levels"] == 256
    assert ReportConfig().gif_max_frames >= 2 and ReportConfig().blink_max_frames >= 2


def test_order_comparison_gif_decodes_loops_and_is_deterministic():
    frames = _gif_frames(4)
    gif = order_comparison_gif(frames, GOOD[0][:2], **GIF)
    assert gif[:6] == b"GIF89a"
    assert order_comparison_gif(frames, GOOD[0][:2], **GIF) == gif  # byte-identical rerun
    lay = comparison_layout(GIF["size"], GIF["scale"])
    decoded = _decode(gif)
    assert len(decoded) == 4 and decoded[0].shape[:2] == (lay.height, lay.width)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.info.get("loop") == 0  # loops forever
        assert im.info.get("duration") > 0
    # the full grey range: many grey levels in the panels, and a star's core is graded (only
    # its brightest pixel reaches white), not a saturated disk
    order0 = [_panel(rgb, lay, 0) for rgb in decoded]
    assert len(np.unique(order0[0])) > 100
    white = [np.count_nonzero(p == 255) for p in order0]  # white: the animation's brightest
    assert max(white) == GIF["scale"] ** 2  # one cutout pixel at most per frame
    peak = np.unravel_index(np.argmax(order0[0]), order0[0].shape)
    core = order0[0][peak[0] - 8: peak[0] + 9: 4, peak[1] - 8: peak[1] + 9: 4]
    assert len(np.unique(core)) >= 6  # the 5 x 5 px core is graded
    # the reference is not moved: its difference panel is all zero, i.e. mid-grey
    mid = int(grey_index(np.array([0.5]), 255, 256)[0])
    assert (_panel(decoded[0], lay, 2) == mid).all()
    assert (_panel(decoded[2], lay, 2) != mid).any()


def test_order_comparison_gif_max_frames_spreads_and_keeps_the_reference():
    frames = _gif_frames(6)
    gif = order_comparison_gif(frames, GOOD[0][:2], size=32, scale=8, levels=64, max_frames=3)
    decoded = _decode(gif)
    assert len(decoded) == 3
    lay = comparison_layout(32, 8)
    assert (_panel(decoded[0], lay, 2) == _panel(decoded[0], lay, 2)[0, 0]).all()  # reference
    assert evenly_spaced(6, 3) == [0, 2, 5] and evenly_spaced(2, 5) == [0, 1]


def test_difference_stretch_is_symmetric_and_the_stated_percentile():
    frames = _gif_frames(4)
    size, scale, center = 40, 4, GOOD[0][:2]
    panels = comparison_panels(frames, center, size)
    diffs = [p1 - p0 for p0, p1 in panels]
    for pct in (99.5, 90.0):
        lim = difference_limit(diffs, pct)
        assert lim == pytest.approx(np.percentile(np.abs(np.concatenate(
            [d.ravel() for d in diffs])), pct))
        gif = order_comparison_gif(frames, center, size=size, scale=scale, levels=256,
                                   diff_percentile=pct)
        lay = comparison_layout(size, scale)
        for rgb, d in zip(_decode(gif), diffs, strict=True):
            shown = _panel(rgb, lay, 2)[::scale, ::scale][::-1]  # one pixel per cutout pixel
            want = grey_index(0.5 + 0.5 * np.clip(d / lim, -1, 1), 255, 256)
            np.testing.assert_array_equal(shown, want)
            # symmetric: +lim is white, -lim black, 0 mid-grey
            assert set(np.unique(shown[d >= lim])) <= {255}
            assert set(np.unique(shown[d <= -lim])) <= {0}
    assert difference_limit([np.zeros((3, 3))]) == 1.0  # nothing differs: any positive range


def test_order_comparison_gif_frame_count_survives_identical_frames():
    """Identical GIF frames would be merged by the encoder; the per-frame label prevents it."""
    raw = make_frame(seed=30)
    frames = [("a.fit", raw, 0.0, 0.0), ("a.fit", raw, 0.0, 0.0), ("a.fit", raw, 0.0, 0.0)]
    gif = order_comparison_gif(frames, (150.0, 100.0), size=32, scale=2, levels=16,
                               fill="nan")
    assert iio.imread(gif, index=None).shape[0] == 3


def test_order_comparison_gif_rejects_bad_input():
    with pytest.raises(ValueError):
        order_comparison_gif([], (10, 10), **GIF)
    with pytest.raises(ValueError):
        order_comparison_gif(_gif_frames(2), (10, 10), size=32, scale=2, levels=300)


def test_asinh_stretch_spans_the_stated_noise_levels():
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 10.0, (200, 200))
    data[100, 100] = 5.0e4
    s = asinh_stretch(data, noise_levels=3.0)
    assert s.lo == pytest.approx(-2 * 10.0, rel=0.05) and s.hi == 5.0e4
    assert 255 * (float(s(s.lo + 10.0)) - float(s(s.lo))) == pytest.approx(3.0, rel=0.05)
    np.testing.assert_allclose(s(s.inverse(np.array([0.1, 0.5, 0.9]))), [0.1, 0.5, 0.9])
    assert np.isnan(s(np.nan)) and s(-1e9) == 0.0 and s(1e9) == 1.0


def test_block_mean_is_an_area_average():
    a = np.arange(24, dtype=float).reshape(4, 6)
    np.testing.assert_allclose(block_mean(a, 3), a.reshape(2, 2, 3, 2).mean(axis=(1, 3)),
                               rtol=1e-6)
    assert block_mean(a, 12).shape == (4, 6)  # never enlarged
    assert block_mean(a, 4).mean() == pytest.approx(a.mean(), rel=1e-6)


# --------------------------------------------------------------------------- blink
def _night(n=5, shape=(120, 180)):
    stars = [(40.3, 50.6, 3.0e4), (120.7, 80.2, 2.0e4), (90.0, 30.0, 1.0e4)]
    frames = [make_frame(seed=40 + i, stars=stars, shape=shape) - SKY for i in range(n)]
    names = [f"f{i:02d}.fit" for i in range(n)]
    status = [C.KEPT] * n
    status[2], status[3] = C.REJECTED, C.FAILED
    return frames, names, status


def test_blink_gif_skips_failed_frames_marks_rejected_in_red_and_is_deterministic():
    frames, names, status = _night()
    frames[3] = None  # a failed frame has nothing to show
    reasons = ["", "", "elongation 0.75 > 0.5", "no stars", ""]
    gif = blink_gif(frames, names, status, max_frames=None, reasons=reasons)
    assert gif == blink_gif(frames, names, status, max_frames=None, reasons=reasons)
    decoded = _decode(gif)
    assert len(decoded) == 4  # the failed frame is left out
    assert decoded[0].shape[1] == 180 + 20  # a small frame is never enlarged

    def red(rgb):
        r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
        return np.count_nonzero((r > g + 80) & (r > 150))

    assert red(decoded[2]) > 500  # the rejected frame: red label and red frame
    assert red(decoded[0]) == red(decoded[1]) == red(decoded[3]) == 0
    with Image.open(io.BytesIO(gif)) as im:
        assert 250 <= im.info["duration"] <= 500 and im.info.get("loop") == 0


def test_blink_gif_downsamples_wide_frames_and_limits_frames():
    frames, names, status = _night(n=8, shape=(200, 1000))
    status[3] = C.KEPT
    gif = blink_gif(frames, names, status, max_frames=3, reference=0)
    decoded = _decode(gif)
    assert len(decoded) == 3
    assert 400 <= decoded[0].shape[1] - 20 <= 600  # block mean to ~500 px wide
    # the reference and the rejected frame are always among those shown
    assert blink_selection(range(8), status, 3, 0) == [0, 2, 5]
    assert blink_selection(range(8), status, None, 0) == list(range(8))
    with pytest.raises(ValueError):
        blink_gif([None], ["a"], [C.FAILED], max_frames=None)


# --------------------------------------------------------------------------- stacks
STACK_STARS = [(45.2 + 40 * (i % 4), 40.7 + 45 * (i // 4), 3.0e4 + 5e3 * i) for i in range(8)]


def _aligned(n, noise=NOISE, seed=50):
    """``n`` frames of one field at random offsets, shifted back (order 1), sky subtracted."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dx, dy = rng.uniform(-0.5, 0.5, 2) if i else (0.0, 0.0)
        raw = make_frame(dx=dx, dy=dy, seed=seed + i, stars=STACK_STARS)
        out.append(apply_shift(raw, dx, dy, order=1) - SKY)
    return out


def test_stack_average_noise_falls_as_one_over_sqrt_n_and_fwhm_is_kept():
    from starshift.quality import star_shapes

    positions = np.array([(x, y) for x, y, _ in STACK_STARS])
    sky = (slice(2, 30), slice(10, 290))  # no star there
    pure = [make_frame(seed=70 + i, stars=[]) - SKY for i in range(16)]
    for method, factor in (("sigma_clip", 1.0), ("median", 1.2533)):
        s = stack(pure, method)
        assert s.dtype == np.float32 and s.shape == SHAPE
        assert np.std(s[sky]) == pytest.approx(factor * NOISE / 4.0, rel=0.12), method
    frames = _aligned(9)
    s = stack(frames, "sigma_clip")
    fwhm, single = stack_fwhm(s, frames, positions)
    # the single frames: the un-interpolated reference, and frames that bilinear shifting
    # broadened by a few per cent
    first = star_shapes(frames[0], positions, isolate=True)[0]
    assert first <= single <= 1.06 * first
    assert fwhm == pytest.approx(single, rel=0.03)  # aligned: as sharp as a single frame
    # misaligned by 0, 2 or 4 px in x (three equal groups), the same frames stack broader; a
    # mean stack shows it best (rejecting stacks drop the misaligned frames' values)
    off = [np.roll(f, 2 * (i % 3), axis=1) for i, f in enumerate(frames)]
    broad = {m: stack_fwhm(stack(off, m), [], positions)[0] for m in ("mean", "sigma_clip")}
    assert broad["mean"] > 1.1 * fwhm and broad["mean"] > broad["sigma_clip"] > fwhm
    assert stack(frames, "sigma_clip").tobytes() == s.tobytes()  # deterministic


def test_stack_sigma_clip_removes_a_cosmic_ray_and_weights_ignore_clipped_values():
    frames = [np.full((20, 20), 10.0) + 0.01 * i for i in range(5)]
    frames[2] = frames[2].copy()
    frames[2][5, 5] = 5000.0
    for weights in (None, [1, 2, 3, 4, 5]):
        s = stack(frames, "sigma_clip", weights=weights)
        assert abs(s[5, 5] - 10.02) < 0.05, weights  # the cosmic ray is gone, not averaged
        assert np.isfinite(s).all()
    assert stack(frames, "median")[5, 5] == pytest.approx(10.02, abs=0.011)
    scaled = stack([np.ones((4, 4)), 2 * np.ones((4, 4))], "sigma_clip", scale=[2.0, 1.0])
    np.testing.assert_allclose(scaled, 2.0)
    nan = np.ones((4, 4))
    nan[0, 0] = np.nan
    assert np.isnan(stack([nan], "median")[0, 0])
    # a masked (NaN) value leaves the weighted mean of the others (ccdproc#893 would give 2/3)
    np.testing.assert_allclose(stack([nan, np.ones((4, 4))], "mean", weights=[1.0, 2.0]), 1.0)
    with pytest.raises(ValueError):
        stack(frames, "average")


def test_stack_sigma_clip_leaves_nan_out_of_the_median_and_still_clips():
    # a frame with no value at a pixel (NaN: shifted in with fill=nan) must not switch the
    # clipping off there: the cosmic ray in another frame at the same pixel is still rejected
    frames = [np.full((8, 8), 10.0) + 0.01 * i for i in range(6)]
    frames[1] = frames[1].copy()
    frames[1][3, 3] = np.nan
    frames[4] = frames[4].copy()
    frames[4][3, 3] = 5000.0
    s = stack(frames, "sigma_clip")
    assert s[3, 3] == pytest.approx(np.mean([10.0, 10.02, 10.03, 10.05]), abs=1e-5)
    assert np.isfinite(s).all()
    assert np.isnan(stack([np.full((2, 2), np.nan)] * 3, "sigma_clip")).all()


def _ccdproc_stack(frames, method, scale=None, weights=None, sigma=3.0):
    """The same stack through ccdproc's Combiner (2.5), as the report stage made it before."""
    import warnings

    from astropy.nddata import CCDData
    from ccdproc import Combiner

    arrays = [np.asarray(f, dtype=float) for f in frames]
    ccds = [CCDData(a, unit="adu", mask=None if np.isfinite(a).all() else ~np.isfinite(a))
            for a in arrays]
    zeros = lambda data, axis=0: np.zeros(np.shape(data)[:axis] + np.shape(data)[axis + 1:])  # noqa: E731
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        c = Combiner(ccds, dtype=np.float64)
        if scale is not None:
            c.scaling = np.asarray(scale, dtype=float)
        if method == "median":
            combined = c.median_combine(uncertainty_func=zeros)
        else:
            if method == "sigma_clip" and len(arrays) >= 3:
                c.sigma_clipping(low_thresh=sigma, high_thresh=sigma, func="median",
                                 dev_func="mad_std")
            if weights is not None:
                w = np.asarray(weights, dtype=float).reshape(-1, 1, 1)
                c.weights = np.where(np.ma.getmaskarray(c.data_arr), 0.0, w)
            combined = c.average_combine(uncertainty_func=zeros)
    out = np.asarray(combined.data, dtype=np.float32)
    if combined.mask is not None:
        out[np.asarray(combined.mask, dtype=bool)] = np.nan
    return out


@pytest.mark.parametrize("method", ["mean", "median", "sigma_clip"])
def test_stack_is_byte_identical_to_ccdprocs_combiner(method):
    # the stacks were made with ccdproc's Combiner; the direct arithmetic must give the same
    # bytes: frames with NaN holes, a cosmic ray, several exposure times (scale and weights)
    pytest.importorskip("ccdproc")
    rng = np.random.default_rng(5)
    frames = [f.astype(np.float32) for f in _aligned(7)]
    frames[1][10:14, 20:40] = np.nan
    frames[3][30, 30] = 9000.0
    frames[5][:, :3] = np.nan
    for f in frames[:3]:
        f[0, 0] = np.nan  # a pixel only four of the seven frames have
    exptime = rng.uniform(20, 90, len(frames))
    for kw in ({}, {"scale": exptime.max() / exptime},
               {"scale": exptime.max() / exptime, "weights": exptime}, {"weights": exptime}):
        if method == "median" and "weights" in kw:
            continue
        ours = stack(frames, method, **kw)
        assert ours.tobytes() == _ccdproc_stack(frames, method, **kw).tobytes(), kw
    two = [frames[0], frames[2]]
    assert stack(two, method).tobytes() == _ccdproc_stack(two, method).tobytes()
    empty = [np.full((4, 4), np.nan)] * 3
    assert stack(empty, method).tobytes() == _ccdproc_stack(empty, method).tobytes()


def test_stack_png_shows_fwhm_and_is_deterministic():
    frames = _aligned(3)
    s = stack(frames, "median")
    png = stack_png(s, "night: filter V", fwhm=3.9, frame_fwhm=3.8, note="3 frames")
    assert png.startswith(PNG) and png == stack_png(s, "night: filter V", fwhm=3.9,
                                                    frame_fwhm=3.8, note="3 frames")
    many = stack_png({"filter B": s, "filter V": s}, "night",
                     fwhm={"filter B": (3.9, 3.8), "filter V": (float("nan"), 3.8)})
    with Image.open(io.BytesIO(many)) as im, Image.open(io.BytesIO(png)) as one:
        assert im.size[0] > one.size[0] * 0.9
    fig = stack_figure({"filter B": s}, "t", fwhm={"filter B": (3.9, 3.8, 4.0)})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("single frames: 3.80 px" in t and "mean stack: 4.00 px  (x 1.053)" in t
               and "this stack: 3.90 px" in t for t in texts)


def test_stack_figure_fixed_layout_holds_every_label():
    """The stack panels sit at fixed positions (no layout engine): each panel's tick labels,
    axis labels, title and colour bar with its ticks and label stay inside the figure and off
    every other panel and the figure's title, for four-digit pixel coordinates, five-digit
    data values and an odd number of panels; each image is drawn at its own size."""
    rng = np.random.default_rng(2)
    wide = rng.normal(0.0, 30.0, (2088, 3124)).astype(np.float32)  # an APS-C frame binned 2x2
    wide[400:410, 700:710] = 95000.0  # a saturated star: a five-digit colour-bar tick
    stacks = {f"filter {f}": wide for f in "BVR"}
    fig = stack_figure(stacks, "night: stacks of the kept aligned frames",
                       fwhm={k: (3.9, 3.8, 4.0) for k in stacks},
                       notes={k: "20 kept frame(s), 3-sigma-clipped mean, scaled to 120 s"
                              for k in stacks})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    whole = fig.bbox
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.images]
    assert len(panels) == 3
    boxes = [ax.get_tightbbox(renderer) for ax in panels]
    title = fig._suptitle.get_window_extent(renderer)
    for box in boxes + [title]:
        assert (box.x0 >= whole.x0 and box.y0 >= whole.y0 and box.x1 <= whole.x1
                and box.y1 <= whole.y1)
    for i, box in enumerate(boxes):
        assert not box.overlaps(title)
        assert not any(box.overlaps(b) for b in boxes[i + 1:])
    for ax in panels:  # the image's axes are its size: no resampling, aspect kept
        assert ax.get_window_extent(renderer).width == pytest.approx(STACK_WIDTH, abs=1)


# --------------------------------------------------------------------------- plots
PNG = b"\x89PNG\r\n\x1a\n"


def _diag(n=12, truth=False):
    rng = np.random.default_rng(5)
    dx, dy = rng.uniform(-8, 8, n), rng.uniform(-8, 8, n)
    status = np.array([C.KEPT] * n, dtype=object)
    status[3], status[7] = C.REJECTED, C.FAILED
    rdx, rdy = rng.normal(0, 0.2, n), rng.normal(0, 0.2, n)
    rdx[3], rdy[3] = 0.9, -8.0  # an outlier: drawn at the axis edge with its value
    rdx[7] = rdy[7] = dx[7] = dy[7] = np.nan
    df = pd.DataFrame({C.FILE: [f"NGC_3201_V_30.000secs_{i:08d}.fit" for i in range(n)],
                       C.RESIDUAL_DX: rdx, C.RESIDUAL_DY: rdy, C.STATUS: status,
                       C.REASON: "", C.DX: dx, C.DY: dy, C.APPLIED_DX: np.round(dx),
                       C.APPLIED_DY: np.round(dy)})
    if truth:
        df[C.TRUE_DX] = dx + rng.normal(0, 0.05, n)
        df[C.TRUE_DY] = dy + rng.normal(0, 0.05, n)
    return df


def test_residual_plot_is_a_small_deterministic_png():
    diag = _diag(truth=True)  # with the estimate-minus-truth panel
    png = residual_plot(diag, 0.5, title="night")
    assert png.startswith(PNG)
    assert png == residual_plot(diag, 0.5, title="night")
    assert len(png) < 100_000
    with Image.open(io.BytesIO(png)) as im:
        im.verify()
    plain = residual_plot(_diag(truth=False), 0.5)  # one panel: a smaller figure
    with Image.open(io.BytesIO(plain)) as im, Image.open(io.BytesIO(png)) as im2:
        assert im.size[1] < im2.size[1]


def _points(ax) -> np.ndarray:
    """(x, y) of every scatter point drawn on ``ax``."""
    from matplotlib.collections import PathCollection

    pts = [c.get_offsets() for c in ax.collections
           if isinstance(c, PathCollection) and len(c.get_offsets())]
    return np.concatenate(pts) if pts else np.empty((0, 2))


def test_residual_plot_draws_failed_frames_as_gaps_with_units_and_title():
    diag = _diag(truth=True)
    fig = residual_figure(diag, 0.5, title="march_09_2018")
    failed = 7  # NaN residual and shift
    for ax in fig.axes:
        pts = _points(ax)
        assert not np.any(np.abs(pts[:, 0] - failed) < 0.5), "a failed frame was drawn"
        assert "(px)" in ax.get_ylabel()
    assert fig.axes[0].get_title().startswith("march_09_2018: ")
    assert "frame" in fig.axes[-1].get_xlabel()


def test_flux_change_plot_is_a_small_deterministic_png():
    rng = np.random.default_rng(6)
    phot = pd.DataFrame({C.FILE: np.repeat(["a.fit", "b.fit"], 4), "star": [1, 2, 3, 4] * 2,
                         "rel_change_order0": 0.0,
                         "rel_change_order1": rng.normal(-0.01, 0.003, 8),
                         "rel_change_order3": rng.normal(0.0, 0.002, 8)})
    png = flux_change_plot(phot, title="night")
    assert png.startswith(PNG) and png == flux_change_plot(phot, title="night")
    assert len(png) < 100_000


def test_sweep_plot_is_a_png():
    df = pd.DataFrame({"job": ["0", "1", "2"], "overrides": ["centroid.box_size=20", "(none)",
                                                           "centroid.box_size=5"],
                       "kept": [9, 10, np.nan], "rejected": [2, 1, np.nan],
                       "failed": [1, 1, np.nan], "rms_residual": [0.2, 0.1, np.nan],
                       "max_residual": [0.8, 0.4, np.nan],
                       "error": [np.nan, np.nan, "box outside the frame"]})
    png = sweep_plot(df, title="march_09_2018")
    assert png.startswith(PNG) and png == sweep_plot(df, title="march_09_2018")


# --------------------------------------------------------------------------- quality plot
def _quality(n=12):
    rng = np.random.default_rng(8)
    diag = _diag(n)
    diag[C.FILTER] = ["B"] * 6 + ["V"] * (n - 6)
    diag[C.EXPTIME] = 30.0
    diag[C.FWHM] = rng.normal(3.4, 0.1, n)
    diag.loc[3, C.FWHM] = 8.5  # the rejected frame: trailed
    diag[C.ELONGATION] = rng.uniform(0.02, 0.1, n)
    diag[C.TRANSPARENCY] = rng.normal(1.0, 0.02, n)
    diag[C.SKY] = np.where(np.arange(n) < 6, 70.0, 120.0) + rng.normal(0, 2, n)
    diag[C.ROTATION] = rng.normal(0, 0.001, n)
    diag[C.SCALE] = 1.0 + rng.normal(0, 1e-5, n)
    diag[C.SIGMA_DX] = diag[C.SIGMA_DY] = rng.uniform(0.001, 0.003, n)
    diag.loc[7, [C.FWHM, C.ELONGATION, C.TRANSPARENCY, C.SKY]] = 0.0  # a failed frame's zeros
    thresholds = pd.DataFrame({
        "metric": ["residual", "fwhm", "fwhm", "sky", "|rotation|", "elongation", "sigma"],
        "group": ["", "filter B", "filter V", "filter V, exptime 30.0", "", np.nan, ""],
        "median": [0.1, 3.4, 3.4, 120.0, 0.0, 0.05, 0.002],
        "spread": [np.nan, 0.1, 0.1, 5.0, 0.01, 0.05, np.nan],
        "limit": [0.5, 4.2, 4.3, 240.0, 0.05, 0.3, 0.25],
        "side": ["high"] * 7, "n": [12, 6, 6, 6, 12, 12, 12]})
    return diag, thresholds


def test_quality_plot_panels_limits_and_failed_frames_as_gaps():
    diag, thresholds = _quality()
    png = quality_plot(diag, thresholds, title="march_09_2018")
    assert png.startswith(PNG) and png == quality_plot(diag, thresholds, title="march_09_2018")
    fig = quality_figure(diag, thresholds, title="march_09_2018")
    assert fig.get_suptitle().startswith("march_09_2018: ")
    axes = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible() and ax.get_ylabel()}
    assert {"FWHM (px)", "sky (data units)", "rotation (deg)", "scale - 1 (ppm)",
            "residual dx (px)", "shift sigma dx (px)"} <= set(axes)
    assert "fit rms (px)" not in axes  # absent column: no panel
    for label, ax in axes.items():
        line = ax.lines[0]  # the thin line through every frame's value
        y = np.asarray(line.get_ydata(), float)
        assert np.isnan(y[7]), label  # the failed frame: a gap, not its 0
        assert not np.any(np.abs(_points(ax)[:, 0] - 7) < 0.5), label
    # the rejected frame is a red cross at its value
    fwhm = axes["FWHM (px)"]
    crosses = [c for c in fwhm.collections if len(c.get_offsets()) and len(c.get_edgecolor())
               and np.allclose(c.get_edgecolor()[0][:3], (0.839, 0.153, 0.157), atol=0.01)]
    assert crosses and np.allclose(crosses[0].get_offsets(), [[3, 8.5]])
    # group limits over their frames only; symmetric limits at +-; night-wide lines across
    segs = [s for c in fwhm.collections if hasattr(c, "get_segments") for s in c.get_segments()]
    got = sorted((round(s[0][1], 3), round(s[0][0], 2), round(s[1][0], 2)) for s in segs)
    assert got == [(4.2, -0.45, 5.45), (4.3, 5.55, 11.45)]
    rot = [ln.get_ydata()[0] for ln in axes["rotation (deg)"].lines[1:]]
    assert not rot  # +-0.05 deg is far beyond the data: written, not drawn
    assert any("off scale" in t.get_text() for t in axes["rotation (deg)"].texts)
    res = sorted(ln.get_ydata()[0] for ln in axes["residual dx (px)"].lines[1:])
    assert res == [-0.5, 0.5]


def test_quality_plot_fixed_layout_holds_every_label():
    """The panels sit at fixed positions (no layout engine): each panel's tick labels, axis
    labels and notes stay inside the figure and off every other panel, even for sky values in
    the tens of thousands, two-line axis labels and filter names on top."""
    diag, thresholds = _quality()
    diag[C.SKY] = diag[C.SKY] * 300.0  # five-digit tick labels
    fig = quality_figure(diag, thresholds, title="march_09_2018")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    whole = fig.bbox
    shown = [ax for ax in fig.axes if ax.get_visible()]
    boxes = [ax.get_tightbbox(renderer) for ax in shown]
    for ax, box in zip(shown, boxes, strict=True):
        assert (box.x0 >= whole.x0 and box.y0 >= whole.y0 and box.x1 <= whole.x1
                and box.y1 <= whole.y1), ax.get_ylabel()
    for i, a in enumerate(shown):
        for b, box in zip(shown[i + 1:], boxes[i + 1:], strict=True):
            assert not boxes[i].overlaps(box), (a.get_ylabel(), b.get_ylabel())
    legend = fig.legends[0].get_window_extent(renderer)
    assert legend.y0 >= whole.y0 and not any(legend.overlaps(b) for b in boxes)


def test_quality_plot_without_thresholds_or_metrics():
    diag, _ = _quality()
    assert quality_plot(diag).startswith(PNG)
    bare = diag[[C.FILE, C.STATUS]]
    assert quality_plot(bare, None, "empty").startswith(PNG)


@pytest.mark.parametrize("order", [1, 3])
def test_shifted_cutouts_are_the_whole_shifted_frames_bit_for_bit(order):
    """Cutouts shifted on their own (blocks of one binade, interior, edges, off the frame,
    coordinates below 1 and across 256) equal those of the whole shifted frame exactly."""
    from starshift.report.photometry import ShiftedCutouts, _cutout

    rng = np.random.default_rng(5)
    raw = make_frame(seed=3, shape=(300, 420))
    raw[40:43, 300:302] = np.nan
    for dx, dy in [(0.3, -0.45), (-12.345678, 7.654321), (37.1, -29.9), (-0.5, 0.5),
                   tuple(rng.uniform(-60, 60, 2))]:
        cval = fill_value(raw, "median")
        whole = apply_shift(raw, dx, dy, order=order, fill=cval)
        cuts = ShiftedCutouts(raw, dx, dy, cval)
        spots = [(256, 150), (150, 256), (5, 5), (419, 299), (430, 100), (60, 41)]
        spots += [(int(x), int(y)) for x, y in rng.integers(-10, 430, (40, 2))]
        for ix, iy in spots:
            for half in (3, 16):
                a, b = cuts.cutout(order, ix, iy, half), _cutout(whole, ix, iy, half)
                assert (a is None) == (b is None)
                if a is not None:
                    assert a.tobytes() == b.tobytes(), (dx, dy, ix, iy, half)
