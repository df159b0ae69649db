import numpy as np
import pytest
from astropy.io import fits
from conftest import write_fits

from starshift import io as frames
from starshift.errors import StarshiftError


def test_picttype_selects_light_frames_sorted_by_name(small_night):
    names = [p.name for p in frames.find_light_frames(small_night)]
    assert names == ["f01.fit", "f02.fit", "f03.fit", "f04.fit"]


def test_imagetyp_fallback_and_no_keyword_means_every_frame(tmp_path):
    write_fits(tmp_path / "b.fits", np.zeros((4, 4)), imagetyp="LIGHT")
    write_fits(tmp_path / "a.fts", np.zeros((4, 4)), imagetyp="Dark Frame")
    write_fits(tmp_path / "c.fit", np.zeros((4, 4)), imagetyp="Light Frame")
    assert [p.name for p in frames.find_light_frames(tmp_path)] == ["b.fits", "c.fit"]
    other = tmp_path / "plain"
    other.mkdir()
    write_fits(other / "x.fit", np.zeros((4, 4)))
    write_fits(other / "y.fit", np.zeros((4, 4)))
    assert [p.name for p in frames.find_light_frames(other)] == ["x.fit", "y.fit"]


@pytest.mark.parametrize("card, light", [
    ("IMAGETYP= 'Light Frame'", True),
    ("IMAGETYP= Light Frame", True),  # unquoted: not FITS, read as text
    ("IMAGETYP= Dark", False),
    ("IMAGETYP=   lightframe /comment", True),
    ("PICTTYPE=                    1", True),
    ("PICTTYPE= 1.0.0", False),  # not a number
    ("PICTTYPE= NAN", False),
    ("PICTTYPE= 2 / dark", False),
])
def test_discovery_reads_frame_types_as_every_reader_does(tmp_path, card, light):
    # discovery reads the headers without verifying every card; a non-standard type card is
    # still read as the verified header reads it
    head = "".join(c.ljust(80) for c in (
        "SIMPLE  =                    T", "BITPIX  =                  -32",
        "NAXIS   =                    2", "NAXIS1  =                    4",
        "NAXIS2  =                    4", card, "END"))
    (tmp_path / "a.fit").write_bytes(head.encode().ljust(2880) + bytes(2880))
    assert frames.is_light_frame(frames.read_header(tmp_path / "a.fit")) is light
    if light:
        assert [p.name for p in frames.find_light_frames(tmp_path)] == ["a.fit"]
    else:
        with pytest.raises(StarshiftError, match="no light frame"):
            frames.find_light_frames(tmp_path)


def test_glob_is_configurable(small_night):
    write_fits(small_night / "g.fits", np.zeros((4, 4)), picttype=1)
    assert [p.name for p in frames.find_light_frames(small_night, "*.fits")] == ["g.fits"]


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: d, "no files matching"),
])
def test_discovery_errors_are_one_line(tmp_path, setup, message):
    with pytest.raises(StarshiftError, match=message) as info:
        frames.find_light_frames(setup(tmp_path))
    assert "\n" not in str(info.value)


def test_no_light_frames(tmp_path):
    write_fits(tmp_path / "bias.fit", np.zeros((4, 4)), picttype=2)
    with pytest.raises(StarshiftError, match="no light frame"):
        frames.find_light_frames(tmp_path)


def test_corrupt_fits_names_the_file(tmp_path):
    (tmp_path / "bad.fit").write_bytes(b"SIMPLE  =  this is not a FITS file" * 10)
    with pytest.raises(StarshiftError, match="bad.fit"):
        frames.read_frame(tmp_path / "bad.fit")


def test_integer_frames_with_bzero_and_missing_bunit(tmp_path):
    raw = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    fits.PrimaryHDU(raw).writeto(tmp_path / "u16.fit")  # astropy stores uint16 via BZERO=32768
    assert "BZERO" in fits.getheader(tmp_path / "u16.fit")
    data, header = frames.read_frame(tmp_path / "u16.fit")
    assert data.dtype == np.float32  # every 16-bit value is exact in float32
    np.testing.assert_array_equal(data, raw.astype(float))
    assert header["BUNIT"] == "adu"
    assert "BZERO" not in header


def test_write_frame_float32_keeps_header_and_is_atomic(tmp_path):
    hdr = fits.Header({"FILTER": "V", "EXPTIME": 30.0})
    out = tmp_path / "sub" / "o.fit"
    frames.write_frame(out, np.arange(12.0).reshape(3, 4), hdr)
    with fits.open(out) as h:
        assert h[0].data.dtype == np.dtype(">f4")
        assert h[0].header["FILTER"] == "V"
    assert [p.name for p in out.parent.iterdir()] == ["o.fit"]  # no temp files left
    first = out.read_bytes()
    frames.write_frame(out, np.arange(12.0).reshape(3, 4), hdr)
    assert out.read_bytes() == first


def test_failed_write_leaves_no_partial_file(tmp_path):
    out = tmp_path / "t.csv"

    class Boom(Exception):
        pass

    def writer(tmp):
        open(tmp, "w").write("half")
        raise Boom

    with pytest.raises(Boom):
        frames._atomic(out, writer)
    assert list(tmp_path.iterdir()) == []


def test_params_hash_is_stable_and_order_free():
    assert frames.params_hash({"a": 1, "b": [1, 2]}) == frames.params_hash({"b": [1, 2], "a": 1})
    assert len(frames.params_hash({})) == 12


def _astropy_bytes(data, header, path):
    hdr = header.copy()
    for key in ("BZERO", "BSCALE", "BLANK"):
        hdr.remove(key, ignore_missing=True)
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=hdr).writeto(
        path, output_verify="silentfix")
    return path.read_bytes()


def _rich_header():
    hdr = fits.Header()
    hdr["EXTEND"] = (True, "may have extensions")
    hdr["BITPIX"] = 16
    hdr["BZERO"] = 32768
    hdr["BSCALE"] = 1
    hdr["FILTER"] = ("V", "optical filter")
    hdr["EXPTIME"] = (30.5, "[s]")
    hdr["DATE-OBS"] = "2018-03-09T10:00:00.000"
    hdr["LONGSTR"] = "x" * 150  # CONTINUE cards
    hdr["HIERARCH ESO DET CHIP"] = "CCD-1"
    hdr["COMMENT"] = "a comment"
    hdr["HISTORY"] = "reduced by hand"
    hdr[""] = "blank keyword card"
    return hdr


@pytest.mark.parametrize("header", [fits.Header(), _rich_header(),
                                    fits.Header({"FILTER": "B", "PICTTYPE": 1})])
@pytest.mark.parametrize("shape", [(3, 4), (510, 765), (37, 1)])
def test_write_frame_bytes_equal_astropy(tmp_path, header, shape):
    rng = np.random.default_rng(1)
    data = rng.normal(100, 10, shape)
    data.flat[0] = np.nan
    frames.write_frame(tmp_path / "ours.fit", data, header)
    ours = (tmp_path / "ours.fit").read_bytes()
    assert ours == _astropy_bytes(data, header, tmp_path / "astropy.fit")
    assert len(ours) % 2880 == 0


@pytest.mark.parametrize("dtype, kwargs", [
    (np.float32, {}), (np.float64, {}), (np.int16, {}), (np.uint16, {}), (np.int32, {}),
    (np.uint32, {}), (np.uint8, {}), (np.int8, {}),
    (np.int16, {"bscale": 2.0, "bzero": 10.0}),  # scaled integers: astropy's path
    (np.int16, {"blank": -1}),  # BLANK: astropy's path
])
def test_read_frame_values_equal_astropy(tmp_path, dtype, kwargs):
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        raw = rng.integers(info.min, info.max, (6, 5), endpoint=True).astype(dtype)
    else:
        raw = rng.normal(0, 1e3, (6, 5)).astype(dtype)
    path = tmp_path / "f.fit"
    hdu = fits.PrimaryHDU(raw)
    hdu.header["FILTER"] = "R"
    if "bscale" in kwargs:
        hdu.scale("int16", bscale=kwargs["bscale"], bzero=kwargs["bzero"])
    if "blank" in kwargs:
        hdu.header["BLANK"] = kwargs["blank"]
    hdu.writeto(path)
    data, header = frames.read_frame(path)
    with fits.open(path) as hdul:
        expect = np.asarray(hdul[0].data, dtype=np.float64)
    np.testing.assert_array_equal(data, expect)
    # float32 images, and 8- and 16-bit integers unless scaled, come back as float32 (exact);
    # everything else as float64, native byte order
    small = dtype in (np.float32, np.int16, np.uint16, np.uint8, np.int8)
    assert data.dtype == (np.float32 if small and "bscale" not in kwargs else np.float64)
    assert data.dtype.isnative and header["FILTER"] == "R"
    assert "BZERO" not in header and "BSCALE" not in header


def test_read_frame_image_in_an_extension_and_truncated_file(tmp_path):
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((4, 3), np.float32))]).writeto(path)
    data, _ = frames.read_frame(path)
    assert data.shape == (4, 3)
    good = tmp_path / "ok.fit"
    fits.PrimaryHDU(np.ones((100, 100), np.float32)).writeto(good)
    cut = tmp_path / "cut.fit"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(StarshiftError, match="cut.fit"):
        frames.read_frame(cut)
