import numpy as np
import pytest
from conftest import gaussian_frame
from scipy import ndimage

from starshift.registration import CentroidFailed, InvalidBox, box_centroid, box_slices
from starshift.shift import (
    apply_shift,
    integer_shift,
    median,
    median_after_shift,
    subtract_background,
)


def test_sign_convention_shift_moves_frame_onto_reference():
    # the star is at (80, 60) in the reference and at (77, 62) in the frame, so the shift
    # onto the reference is reference - frame = (+3, -2), x first
    frame = gaussian_frame(stars=((77.0, 62.0, 20000.0),), noise=0)
    x, y = box_centroid(frame, (78, 61), 21)
    dx, dy = 80.0 - x, 60.0 - y
    assert (dx, dy) == pytest.approx((3.0, -2.0), abs=0.01)
    moved = apply_shift(frame, dx, dy, order=0)
    assert box_centroid(moved, (80, 60), 21) == pytest.approx((80.0, 60.0), abs=0.01)
    assert np.unravel_index(np.argmax(moved), moved.shape) == (60, 80)  # numpy is (y, x)


def test_order0_preserves_pixel_values_exactly():
    data = np.random.default_rng(3).normal(100, 10, (50, 70)).astype(np.float32)
    out = apply_shift(data, 4.4, -2.6, order=0, fill="median")
    # round(4.4) = 4 moves the data right, round(-2.6) = -3 moves it up (towards row 0)
    np.testing.assert_array_equal(out[:-3, 4:], data[3:, :-4])
    inner = out[:-3, 4:]
    assert set(np.unique(inner)).issubset(set(np.unique(data)))
    assert out.dtype == np.float32


def test_order0_matches_scipy_and_fills_with_median():
    data = np.random.default_rng(4).normal(size=(40, 30))
    out = apply_shift(data, -5, 7, order=0, fill="median")
    ref = ndimage.shift(data, (7, -5), order=0, mode="constant", cval=np.median(data))
    np.testing.assert_array_equal(out, ref)
    assert np.all(out[:7] == np.median(data))


@pytest.mark.parametrize("order", [1, 3])
def test_interpolating_orders_change_values_but_keep_positions(order):
    frame = gaussian_frame(stars=((60.3, 50.7, 20000.0),), noise=0)
    out = apply_shift(frame, 0.5, -0.4, order=order)
    assert not np.array_equal(out, frame)
    assert box_centroid(out, (61, 50), 15) == pytest.approx((60.8, 50.3), abs=0.05)


def test_fill_options():
    data = np.ones((10, 10))
    assert np.isnan(apply_shift(data, 2, 0, fill="nan")[:, :2]).all()
    assert (apply_shift(data, 2, 0, fill="zero")[:, :2] == 0).all()
    assert (apply_shift(data, 2, 0, fill=-5)[:, :2] == -5).all()
    with pytest.raises(ValueError):
        apply_shift(data, 1, 1, fill="bogus")
    with pytest.raises(ValueError):
        apply_shift(data, 1, 1, order=2)


def test_shift_beyond_frame_is_all_fill():
    data = np.arange(20.0).reshape(4, 5)
    assert np.all(apply_shift(data, 9, 0, fill=-1) == -1)


def test_subtract_background():
    data = np.array([[1.0, 2.0], [3.0, 10.0]])
    out, bkg = subtract_background(data)
    assert bkg == 2.5
    np.testing.assert_array_equal(out, data - 2.5)


def test_box_centroid_subpixel_and_even_box():
    frame = gaussian_frame(stars=((70.37, 44.81, 30000.0),), noise=2, seed=5)
    for size in (24, 25, 30):
        assert box_centroid(frame, (70, 45), size) == pytest.approx((70.37, 44.81), abs=0.05)


def test_box_centroid_failures():
    flat = np.full((60, 60), 7.0)
    with pytest.raises(CentroidFailed):
        box_centroid(flat, (30, 30), 15)
    with pytest.raises(InvalidBox, match="outside"):
        box_slices((60, 60), (55, 30), 15)
    with pytest.raises(InvalidBox, match="at least"):
        box_slices((60, 60), (30, 30), 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32])
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_fast_median_equals_numpy(dtype, n):
    from starshift._stats import median

    rng = np.random.default_rng(n)
    a = (rng.normal(100, 30, n) * (10 if dtype == np.int32 else 1)).astype(dtype)
    assert median(a) == np.median(a)
    if dtype != np.int32 and n > 2:
        a[::3] = np.nan
        assert median(a) == np.nanmedian(a)
    assert np.isnan(median(np.full(4, np.nan)))


@pytest.mark.parametrize("n_fill", [0, 10, 3000, 9999, 10000])
@pytest.mark.parametrize("size", [10000, 10001])
def test_median_with_a_common_value_equals_nanmedian(n_fill, size):
    rng = np.random.default_rng(n_fill + size)
    a = rng.normal(100.0, 5.0, size)
    a[:6] = np.nan
    v = 99.7
    a[6: 6 + n_fill] = v
    rng.shuffle(a)
    before = a.copy()
    for common in (v, 1e9, -1e9, float("nan"), None):
        assert median(a, common=common) == np.nanmedian(a)
    np.testing.assert_array_equal(a, before)  # the input is never reordered


@pytest.mark.parametrize("kind", ["noise", "integers", "nan", "fill", "constant", "steep"])
def test_median_of_a_large_frame_is_exact(kind):
    # over 1 M values the median is bracketed from a subsample first; the value must not move
    from starshift._stats import _BRACKET_MIN

    rng = np.random.default_rng(7)
    n = _BRACKET_MIN + 12345
    a = rng.normal(1000.0, 30.0, n).astype(np.float32)
    common = None
    if kind == "integers":
        a = np.rint(a)
    elif kind == "nan":
        a[::5] = np.nan
    elif kind == "fill":  # a shifted frame's fill pixels, at the frame's median
        common = float(np.median(a))
        a[: n // 5] = common
    elif kind == "constant":
        a[:] = 3.0
        a[:7] = 1.0
    elif kind == "steep":  # a subsample that misleads: the bracket misses, the sort decides
        a = np.sort(a) ** 4
        a[: n // 2 + 1] = a[::-1][: n // 2 + 1]
    before = a.copy()
    assert median(a, common=common) == np.float32(np.nanmedian(a))
    np.testing.assert_array_equal(a, before)  # the input is never reordered


def test_subtract_background_after_a_large_shift_is_unchanged_by_the_hint():
    rng = np.random.default_rng(3)
    data = rng.normal(50.0, 3.0, (120, 90)).astype(np.float32).astype(float)
    cval = median(data)
    shifted = apply_shift(data, 60, -70, fill=cval)
    a, bkg_a = subtract_background(shifted)
    b, bkg_b = subtract_background(shifted, common=cval)
    assert bkg_a == bkg_b == np.median(shifted)
    np.testing.assert_array_equal(a, b)


def _shift_cases():
    rng = np.random.default_rng(11)
    for shape in ((40, 30), (41, 29), (1, 7)):
        for dtype in (np.float64, np.float32, np.int16):
            data = rng.normal(100.0, 10.0, shape).astype(dtype)
            for dx, dy in ((0, 0), (3, -2), (-5, 7), (29, 0), (0, -40), (60, 3), (-1, 1)):
                yield data, dx, dy, median(data)
    data = rng.normal(100.0, 10.0, (40, 30))
    data[5:9, 3] = np.nan
    data[0, :] = np.nan
    for dx, dy in ((0, 0), (2, 3), (-4, -1)):
        for cval in (median(data), 0.0, 1e6, 100.0, float("nan")):
            yield data, dx, dy, cval
    # a dark lost edge: the fill no longer straddles the middle, so the counts cannot decide
    edge = np.tile(np.arange(30.0), (40, 1))
    yield edge, 6, 0, median(edge)
    yield edge, -6, 0, median(edge)
    ties = np.round(rng.normal(5.0, 1.0, (30, 30)))  # many equal values
    yield ties, 2, -3, median(ties)
    yield np.full((10, 10), np.nan), 1, 1, float("nan")


def test_median_after_shift_equals_the_median_of_the_shifted_frame():
    for data, dx, dy, cval in _shift_cases():
        before = data.copy()
        got = median_after_shift(data, dx, dy, cval)
        shifted = integer_shift(np.asarray(data, dtype=float) if data.dtype.kind != "f"
                                else data, dx, dy, cval)
        want = float(np.nanmedian(shifted)) if not np.isnan(shifted).all() else float("nan")
        assert got == want or (np.isnan(got) and np.isnan(want)), (data.shape, dx, dy, cval)
        np.testing.assert_array_equal(data, before)  # the input is never touched


def test_median_after_shift_is_the_fill_when_the_fill_is_the_frame_median():
    data = np.random.default_rng(5).normal(300.0, 20.0, (510, 765))
    cval = median(data)
    assert median_after_shift(data, 4, -3, cval) == cval


def test_box_centroid_with_a_known_frame_median_is_the_same_measurement():
    frame = gaussian_frame(stars=((77.3, 62.6, 20000.0),), noise=5).astype(np.float32)
    m = median(frame)
    assert box_centroid(frame, (78, 61), 21, frame_median=m) == box_centroid(frame, (78, 61), 21)


def test_integer_shift_in_place_moves_the_pixels_within_the_array(monkeypatch):
    """Every whole-pixel shift, in place, gives the copy's values in the given array, with
    blocks of rows as small as one row (the block order is what keeps it right)."""
    import starshift._stats

    rng = np.random.default_rng(11)
    for chunk_rows in (None, 1, 3):
        for shape in ((40, 33), (7, 5), (1, 9), (9, 1)):
            if chunk_rows:
                monkeypatch.setattr(starshift._stats, "CHUNK_BYTES", chunk_rows * shape[1] * 4)
            for dx in range(-shape[1] - 1, shape[1] + 2, max(1, shape[1] // 5)):
                for dy in range(-shape[0] - 1, shape[0] + 2, max(1, shape[0] // 5)):
                    data = rng.normal(size=shape).astype(np.float32)
                    want = integer_shift(data, dx, dy, -7.0)
                    got = integer_shift(data, dx, dy, -7.0, in_place=True)
                    assert got is data
                    np.testing.assert_array_equal(got, want)
    frozen = np.arange(12.0).reshape(3, 4)
    frozen.flags.writeable = False  # not writeable: a new array, as without in_place
    out = apply_shift(frozen, 1, 0, in_place=True)
    assert out is not frozen and out[0, 1] == 0.0
