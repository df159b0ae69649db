"""The camera: what stays fixed to the detector (pattern, hot pixels) and the read-out noise.

Pure functions on arrays: each takes the random generator it draws from, so a frame's numbers
depend only on its own seed sequence. Nothing here knows about nights or the sky.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """A CCD camera as the generator models it.

    Attributes
    ----------
    name : str
        ``INSTRUME`` keyword.
    shape : (ny, nx)
        numpy shape of a frame, pixels.
    gain : float
        Electrons per ADU.
    read_noise : float
        Read noise, electrons.
    saturation : float
        Frames are clipped here (ADU), sky included.
    bias_level : float
        Level of a bias frame (ADU).
    pixel_size : float
        Pixel side, micrometres (``XPIXSZ``, ``YPIXSZ``).
    integer : bool
        Whole ADU from 0 to ``saturation`` (a raw 16-bit read-out) instead of reduced floats.
    offset : float
        Level (ADU) the read-out adds to a light frame: a raw camera's bias offset, 0 for the
        reduced frames of the default sample.
    """

    name: str
    shape: tuple[int, int]
    gain: float
    read_noise: float
    saturation: float
    bias_level: float
    pixel_size: float
    integer: bool = False
    offset: float = 0.0


#: The SBIG ST-7 (KAF-0400) of the seed nights: full frame 765 x 510 px, typical gain and noise.
ST7 = Camera(name="SBIG ST-7", shape=(510, 765), gain=2.3, read_noise=15.0, saturation=52000.0,
             bias_level=102.0, pixel_size=9.0)
#: numpy shape of an SBIG ST-7 full frame (765 x 510 px).
SHAPE = ST7.shape
#: electrons per ADU and read noise (electrons), typical of the ST-7 (KAF-0400).
GAIN = ST7.gain
READ_NOISE = ST7.read_noise
#: reduced frames are clipped here (ADU), sky included.
SATURATION = ST7.saturation
#: level of a bias frame (ADU).
BIAS_LEVEL = ST7.bias_level

#: cosmic-ray hits per frame scale with the detector area; this area gets ``3 + 0.3 t`` on average
_CR_AREA = SHAPE[0] * SHAPE[1]


@dataclass(frozen=True)
class Detector:
    """What stays fixed to the detector through a night: pattern and hot pixels."""

    pattern: np.ndarray       # gradient + row banding, ADU (float32, the camera's shape)
    hot_index: np.ndarray     # flat indices of hot pixels
    hot_value: np.ndarray     # their excess, ADU


def make_detector(rng: np.random.Generator, shape: tuple[int, int], banding: float, n_hot: int,
                  forbidden: np.ndarray | None = None) -> Detector:
    """A detector's fixed pattern (a gradient plus row banding) and hot pixels.

    Parameters
    ----------
    rng : numpy.random.Generator
        The night's detector generator.
    shape : (ny, nx)
        Frame shape.
    banding : float
        Row-banding scale (about its rms), ADU.
    n_hot : int
        Hot pixels drawn (before ``forbidden`` removes some).
    forbidden : 2-D bool array, optional
        Pixels kept free of hot pixels.

    Returns
    -------
    Detector
    """
    ny, nx = shape
    yy = (np.arange(ny) / (ny - 1) - 0.5)[:, None]
    xx = (np.arange(nx) / (nx - 1) - 0.5)[None, :]
    gx = rng.uniform(6.0, 14.0) * rng.choice([-1.0, 1.0])
    gy = rng.uniform(4.0, 10.0) * rng.choice([-1.0, 1.0])
    vignette = rng.uniform(3.0, 8.0)
    gradient = gx * xx + gy * yy - vignette * (xx**2 + yy**2)
    period = rng.uniform(19.0, 41.0)
    rows = (banding * rng.normal(0.0, 1.0, ny)
            + 0.7 * banding * np.sin(2 * np.pi * np.arange(ny) / period
                                     + rng.uniform(0, 2 * np.pi)))
    pattern = (gradient + rows[:, None]).astype(np.float32)
    idx = rng.choice(nx * ny, size=n_hot, replace=False)
    value = np.exp(rng.uniform(np.log(150.0), np.log(40000.0), n_hot))
    if forbidden is not None:
        keep = ~forbidden.ravel()[idx]
        idx, value = idx[keep], value[keep]
    return Detector(pattern=pattern, hot_index=idx, hot_value=value)


def cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], exptime: float,
                forbidden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and values (ADU) of cosmic-ray hits: sharp, 1-3 px, a few to a few tens.

    The mean number is ``3 + 0.3 * exptime`` on an ST-7 full frame, in proportion to the area on
    other detectors. Hits on ``forbidden`` pixels are dropped.
    """
    ny, nx = shape
    n = int(rng.poisson((3.0 + 0.3 * exptime) * (ny * nx / _CR_AREA)))
    start_y = rng.integers(0, ny, n)
    start_x = rng.integers(0, nx, n)
    length = rng.integers(1, 4, n)
    step = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])[rng.integers(0, 4, n)]
    energy = np.exp(rng.uniform(np.log(400.0), np.log(20000.0), n))
    fractions = rng.uniform(0.3, 1.0, (n, 3))
    idx, val = [], []
    for i in range(n):
        for j in range(length[i]):
            yy = start_y[i] + j * step[i, 0]
            xx = start_x[i] + j * step[i, 1]
            if 0 <= yy < ny and 0 <= xx < nx:
                idx.append(yy * nx + xx)
                val.append(energy[i] * fractions[i, j])
    idx_a = np.array(idx, dtype=np.int64)
    val_a = np.array(val, dtype=float)
    if forbidden is not None and idx_a.size:
        keep = ~forbidden.ravel()[idx_a]
        idx_a, val_a = idx_a[keep], val_a[keep]
    return idx_a, val_a


def read_out(rng: np.random.Generator, expected: np.ndarray, det: Detector, camera: Camera,
             exptime: float, forbidden: np.ndarray | None = None) -> np.ndarray:
    """Expose and read out a frame: what the camera records for the light ``expected``.

    Poisson noise on the light (sky and stars, ADU), read noise, the camera's offset, the
    detector's fixed pattern, its hot pixels (each within 3 % of its level), cosmic rays (none
    on ``forbidden`` pixels) and clipping at the saturation level; an ``integer`` camera
    records whole ADU from 0 up.

    Returns
    -------
    2-D float64 array of ``expected``'s shape.
    """
    shape = expected.shape
    electrons = rng.poisson(np.maximum(expected, 0.0) * camera.gain)
    data = electrons / camera.gain + rng.normal(0.0, camera.read_noise / camera.gain, shape)
    if camera.offset:
        data += camera.offset
    data += det.pattern
    flat = data.reshape(-1)
    flat[det.hot_index] += det.hot_value * rng.uniform(0.97, 1.03, det.hot_index.size)
    cr_idx, cr_val = cosmic_rays(rng, shape, exptime, forbidden)
    np.add.at(flat, cr_idx, cr_val)
    return _digitise(data, camera)


def bias_frame(rng: np.random.Generator, det: Detector, camera: Camera) -> np.ndarray:
    """A bias frame: the bias level, read noise and the pattern's row banding (no gradient)."""
    banding = det.pattern.mean(axis=1, keepdims=True) - det.pattern.mean()  # rows only
    data = camera.bias_level + rng.normal(0.0, camera.read_noise / camera.gain,
                                          camera.shape) + banding
    return _digitise(data, camera)


def _digitise(data: np.ndarray, camera: Camera) -> np.ndarray:
    """Clip at saturation (in place); an integer camera also rounds to whole ADU >= 0."""
    if camera.integer:
        np.rint(data, out=data)
        np.maximum(data, 0.0, out=data)
    np.minimum(data, camera.saturation, out=data)
    return data
