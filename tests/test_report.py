"""Report building blocks: star selection, photometry across shifts, the comparison GIF, plots."""

from __future__ import annotations

import io
import math

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from starshift import columns as C
from starshift.report import (
    estimate_saturation,
    flux_change_plot,
    order_comparison_gif,
    residual_plot,
    select_stars,
    shift_photometry,
    shifted_cutout,
    star_candidates,
    summarise_photometry,
    sweep_plot,
)
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


def test_order_comparison_gif_decodes_loops_and_is_deterministic():
    frames = _gif_frames(6)
    gif = order_comparison_gif(frames, GOOD[0][:2], size=48, scale=2)
    assert gif[:6] == b"GIF89a"
    decoded = iio.imread(gif, index=None)
    assert decoded.shape[0] == 6
    assert len(gif) < 6 * 8000  # a few KB per GIF frame
    assert order_comparison_gif(frames, GOOD[0][:2], size=48, scale=2) == gif
    with Image.open(io.BytesIO(gif)) as im:
        assert im.info.get("loop") == 0  # loops forever
        assert im.info.get("duration") == 600
    # the reference's difference panel is all zero (white); a shifted frame's is not
    first, later = decoded[0][..., :3], decoded[3][..., :3]
    side = 48 * 2
    white = np.all(first == 255, axis=-1)
    assert white.sum() >= side * side  # the whole zero-difference panel
    assert np.all(later == 255, axis=-1).sum() < white.sum()


def test_order_comparison_gif_frame_count_survives_identical_frames():
    """Identical GIF frames would be merged by the encoder; the per-frame label prevents it."""
    raw = make_frame(seed=30)
    frames = [("a.fit", raw, 0.0, 0.0), ("a.fit", raw, 0.0, 0.0), ("a.fit", raw, 0.0, 0.0)]
    gif = order_comparison_gif(frames, (150.0, 100.0), size=32, fill="nan")
    assert iio.imread(gif, index=None).shape[0] == 3


def test_order_comparison_gif_rejects_empty_input():
    with pytest.raises(ValueError):
        order_comparison_gif([], (10, 10))


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
    df = pd.DataFrame({"job": ["0", "1"], "overrides": ["centroid.box_size=20", "(none)"],
                       "kept": [9, 10], "rejected": [2, 1], "failed": [1, 1],
                       "rms_residual": [0.2, 0.1], "max_residual": [0.8, 0.4],
                       "error": [np.nan, np.nan]})
    png = sweep_plot(df)
    assert png.startswith(PNG) and png == sweep_plot(df)
