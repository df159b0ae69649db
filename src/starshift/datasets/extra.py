"""Two test nights with known truth, generated on demand only (issue #10).

Neither is part of the default sample nor of the DVC pipeline: tests and benchmarks generate
them with ``generate_sample(out, nights=["bad_frames", "faint_broad"])`` or ``starshift sample
--out DIR --nights bad_frames,faint_broad``. Both are deterministic for a seed, and every
frame's conditions (PSF, transparency, sky, trails, rotation) are part of its plan, so its truth
is exact: the generator renders the stars where the plan says.

``bad_frames``
    20 frames of the NGC 3201 cluster field in V (30 s), 400 x 300 px (an ST-7 sub-frame),
    drifting a few px, FWHM 2.6-3.4 px. Most are good; one frame of each way a frame goes
    wrong is marked ``bad=1`` with its ``kind``:

    * ``trailed``: each star smeared along a line of 8-12 px centred on its position (a
      tracking error);
    * ``clouds``: every star's flux times a transparency drawn in 0.05-0.2 of the reference's
      (which is 1), the sky 1.1-1.4 times brighter;
    * ``defocus``: FWHM 1.3 times the median of the night's other frames;
    * ``faint_broad``: stars of FWHM 9 px at a third of the light (peak S/N ~5-10);
    * ``other_field``: the part of the sky just above the reference's, 15-40 px beyond its
      edge (no overlap; the cluster's outskirts and field stars; its dx, dy are that sky
      offset, for information);
    * ``doubled``: each star twice, the second image 4-6 px away with 0.4-0.7 times the flux of
      the first (a tracking jump mid-exposure; dx, dy place the first image);
    * ``high_background``: the sky above the reduction's pedestal 5-10 times the night's (moon,
      twilight), so the sky noise grows;
    * ``rotation``: the field rotated by 0.3 deg (either way) about a pivot within 15 px of the
      frame centre, plus the shift: ``position_in_frame = pivot + R(angle) (position_in_reference
      - pivot) - (dx, dy)``, so (dx, dy) is the shift at the pivot and a pure shift leaves the
      corners about 1.3 px off.

    And one good frame (``bad=0``, ``kind=meridian_flip``, ``flip=1``): the field rotated by
    exactly 180 deg (a German-equatorial mount's meridian flip) plus a shift. Its ``dx, dy``
    align the frame *after* ``np.rot90(frame, 2)``: a star at ``p`` in the reference is at
    ``p - (dx, dy)`` in the rotated frame (``reference - rotated_frame``, x first), at
    ``(nx - 1, ny - 1) - (p - (dx, dy))`` in the frame as read. truth.csv has a ``flip`` column
    (0 or 1).

``faint_broad``
    12 frames of 1392 x 1040 px (a Sony ICX285 camera, 16-bit: whole ADU from 0 to 65535 on a
    500 ADU offset), 5 s, FWHM 8-10 px, a faint field whose ~80 brightest stars peak 5-10
    times the sky noise above the sky at FWHM 9 px (and ~620 fainter ones), strong row
    banding, hot pixels, drifts of up to ~10 px with sub-pixel truth. All frames are good.

On both nights the detector's pattern, hot pixels and offset stay fixed to the detector: they do
not rotate with the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache

import numpy as np

from .._stats import FWHM_PER_SIGMA
from .detector import ST7, Camera, Detector, read_out
from .plans import (
    DEFAULT_SEED,
    EXTRA_NIGHTS,
    KEY_NIGHT,
    KEY_SKY,
    FramePlan,
    NightPlan,
    Telescope,
    rng_for,
)
from .render import SINGLE, render_field, trail_images
from .sky import SKY_PEDESTAL, SKY_RATE, Catalogue, power_law_fluxes

# --------------------------------------------------------------------------- cameras
#: an ST-7 sub-frame of 400 x 300 px (the bad_frames night)
ST7_SUBFRAME = replace(ST7, shape=(300, 400))
#: a Sony ICX285 camera (1392 x 1040 px of 6.45 um), raw 16-bit read-out on a 500 ADU offset
ICX285 = Camera(name="Sony ICX285 CCD", shape=(1040, 1392), gain=0.5, read_noise=8.0,
                saturation=65535.0, bias_level=500.0, pixel_size=6.45, integer=True,
                offset=500.0)
#: the optics of the faint_broad night (FWHM 8-10 px is 11-13 arcsec: poor focus and seeing)
SMALL_NEWTONIAN = Telescope("8-inch Newtonian", 1000.0, 200.0)

# --------------------------------------------------------------------------- bad_frames
#: the defect frames of bad_frames: file-name index -> kind
BAD_FRAME_KINDS = {3: "trailed", 5: "clouds", 7: "defocus", 9: "other_field", 11: "doubled",
                   13: "high_background", 15: "rotation", 17: "meridian_flip",
                   19: "faint_broad"}
#: kinds that are good frames all the same
GOOD_KINDS = ("reference", "science", "meridian_flip")
_BAD_N, _BAD_FILTER, _BAD_EXPTIME = 20, "V", 30.0
#: where the cluster centre lands in the bad_frames reference (x, y): off to one side, so the
#: frame holds the cluster's outskirts and field stars
_BAD_CLUSTER_AT = (250.0, 180.0)
_ROTATION_DEG = 0.3
_DEFOCUS = 1.3

# --------------------------------------------------------------------------- faint_broad
_FAINT_N, _FAINT_FILTER, _FAINT_EXPTIME = 12, "L", 5.0
#: sky (ADU/s) of the faint_broad night, and the FWHM (px) at which its stars' S/N is quoted
#: (the middle of the night's 8-10 px; at FWHM w a star's peak S/N is (9 / w)**2 times that)
_FAINT_SKY_RATE = 60.0
_FAINT_FWHM = 9.0
#: the faint field: stars between these peak S/N (at _FAINT_FWHM, on the night's sky noise),
#: N(>S/N) proportional to (S/N)**-1
_FAINT_STARS, _FAINT_SNR = 700, (1.0, 10.0)
#: frame-to-frame transparency and sky level of the faint_broad night
_FAINT_TRANSPARENCY, _FAINT_SKY_SPREAD = (0.95, 1.0), (0.95, 1.05)
#: the faint_broad night's bright stars (about 80) peak at S/N 5-10 at FWHM 9 px
FAINT_BRIGHT_SNR = (5.0, 10.0)
#: sky margin (px) around the frame for the drift
_FAINT_MARGIN = 30.0


@dataclass(frozen=True)
class ExposurePlan(FramePlan):
    """A frame whose observing conditions are part of its plan (the test nights).

    Attributes
    ----------
    fwhm : float
        PSF FWHM, pixels.
    ellipticity : float
        ``sigma_x = sigma (1 + e/2)``, ``sigma_y = sigma (1 - e/2)``.
    transparency : float
        Star fluxes relative to the reference frame's.
    sky : float
        Sky level, ADU (before the camera's offset).
    images : tuple of (dx, dy, fraction)
        Where each star's light lands, relative to its position (see
        :func:`~starshift.datasets.render.render_field`): a trail, a double image.
    rotation : float
        Field rotation, degrees, about ``pivot`` (see :mod:`starshift.datasets.extra`).
    pivot : (x, y)
        Rotation centre, reference pixels.
    flip : bool
        Rotated by 180 deg: ``dx, dy`` align ``np.rot90(frame, 2)``.
    """

    fwhm: float = 3.0
    ellipticity: float = 0.0
    transparency: float = 1.0
    sky: float = 0.0
    images: tuple[tuple[float, float, float], ...] = SINGLE
    rotation: float = 0.0
    pivot: tuple[float, float] = (0.0, 0.0)
    flip: bool = False


def _file_name(prefix: str, filt: str, exptime: float, number: int) -> str:
    return f"{prefix}_{filt}_{exptime:.3f}secs_{number:06d}.fit"


def _drift(rng: np.random.Generator, n: int, total: tuple[float, float],
           jitter: float) -> np.ndarray:
    """(n, 2) offsets drifting steadily (``total`` px at most over the night, either sign,
    per axis) plus Gaussian jitter, rounded to 1e-4 px; the first is exactly 0."""
    end = rng.uniform(*total, 2) * rng.choice([-1.0, 1.0], 2)
    off = np.linspace(0.0, 1.0, n)[:, None] * end + rng.normal(0.0, jitter, (n, 2))
    off[0] = 0.0
    return np.round(off, 4)


def _bad_frames_plan(seed: int, index: int) -> NightPlan:
    rng = rng_for(seed, index, KEY_NIGHT)
    n, ny, nx = _BAD_N, *ST7_SUBFRAME.shape
    off = _drift(rng, n, (2.5, 4.0), 0.3)
    fwhm = rng.uniform(2.6, 3.4, n)
    ell = rng.uniform(-0.08, 0.08, n)
    transparency = rng.uniform(0.92, 1.0, n)
    transparency[0] = 1.0
    sky_factor = rng.uniform(0.95, 1.05, n)
    # the defects, each drawn whether or not it is used, in a fixed order
    trail = trail_images(rng.uniform(8.0, 12.0), rng.uniform(0.0, 2 * math.pi))
    cloud, cloud_sky = rng.uniform(0.05, 0.2), rng.uniform(1.1, 1.4)
    other = (rng.uniform(30.0, 70.0), ny + rng.uniform(15.0, 40.0))  # beside, above
    sep, angle, ratio = rng.uniform(4.0, 6.0), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.4, 0.7)
    doubled = ((0.0, 0.0, 1.0 / (1.0 + ratio)),
               (sep * math.cos(angle), sep * math.sin(angle), ratio / (1.0 + ratio)))
    high_sky = rng.uniform(5.0, 10.0)
    rotation = _ROTATION_DEG * rng.choice([-1.0, 1.0])
    pivot = tuple(float(v) for v in np.round(
        np.array([(nx - 1) / 2, (ny - 1) / 2]) + rng.uniform(-15.0, 15.0, 2), 4))
    # 1.3 x the median of the frames of natural width (all but the defocused and broad ones)
    broad = [i for i, kind in BAD_FRAME_KINDS.items() if kind in ("defocus", "faint_broad")]
    defocus = _DEFOCUS * float(np.median(np.delete(fwhm, broad)))

    rate = SKY_RATE[_BAD_FILTER] * _BAD_EXPTIME
    # what each defect changes in its frame (sky_factor: the sky above the pedestal)
    changes = {
        "trailed": {"images": trail},
        "clouds": {"transparency": float(cloud), "sky_factor": float(cloud_sky)},
        "defocus": {"fwhm": defocus},
        "other_field": {"dx": float(np.round(other[0], 4)), "dy": float(np.round(other[1], 4))},
        "doubled": {"images": doubled},
        "high_background": {"sky_factor": float(high_sky)},
        "rotation": {"rotation": float(rotation), "pivot": pivot},
        "meridian_flip": {"flip": True},
        # a frame of faint, broad stars among sharp ones (thin cloud and bad focus at once):
        # FWHM 9 px and a third of the light put the stars' peaks at S/N ~5-10
        "faint_broad": {"fwhm": _FAINT_FWHM, "transparency": 0.35},
    }
    frames = []
    for i in range(n):
        kind = BAD_FRAME_KINDS.get(i, "reference" if i == 0 else "science")
        change = dict(changes.get(kind, {}))
        sky = SKY_PEDESTAL + rate * change.pop("sky_factor", float(sky_factor[i]))
        conditions = {"dx": float(off[i, 0]), "dy": float(off[i, 1]), "fwhm": float(fwhm[i]),
                      "ellipticity": float(ell[i]), "transparency": float(transparency[i]),
                      "sky": float(sky), **change}
        frames.append(ExposurePlan(
            file=_file_name("bad", _BAD_FILTER, _BAD_EXPTIME, i + 1), filter=_BAD_FILTER,
            exptime=_BAD_EXPTIME, number=i + 1, kind=kind, bad=kind not in GOOD_KINDS,
            **conditions))
    cx, cy = _BAD_CLUSTER_AT
    return NightPlan(
        name="bad_frames", index=index, frames=tuple(frames), field="cluster",
        origin=(-cx, -cy), fwhm_range=(2.6, 3.4), date0=datetime(2018, 5, 4, 10, 0, 0),
        number0=1, cadence=40.0, banding=3.0, n_hot=70, camera=ST7_SUBFRAME,
        truth_columns=("flip",),
    )


def _faint_noise() -> float:
    """The faint_broad night's design sky noise per pixel (ADU): sky photons and read noise."""
    electrons = _FAINT_SKY_RATE * _FAINT_EXPTIME * ICX285.gain
    return math.sqrt(electrons + ICX285.read_noise**2) / ICX285.gain


def _faint_broad_plan(seed: int, index: int) -> NightPlan:
    rng = rng_for(seed, index, KEY_NIGHT)
    n = _FAINT_N
    off = _drift(rng, n, (6.0, 9.5), 0.4)
    fwhm = rng.uniform(8.0, 10.0, n)
    ell = rng.uniform(-0.06, 0.06, n)
    transparency = rng.uniform(*_FAINT_TRANSPARENCY, n)
    transparency[0] = 1.0
    sky = _FAINT_SKY_RATE * _FAINT_EXPTIME * rng.uniform(*_FAINT_SKY_SPREAD, n)
    frames = tuple(ExposurePlan(
        file=_file_name("faint", _FAINT_FILTER, _FAINT_EXPTIME, i + 1), filter=_FAINT_FILTER,
        exptime=_FAINT_EXPTIME, number=i + 1, dx=float(off[i, 0]), dy=float(off[i, 1]),
        kind="reference" if i == 0 else "science", fwhm=float(fwhm[i]),
        ellipticity=float(ell[i]), transparency=float(transparency[i]), sky=float(sky[i]),
    ) for i in range(n))
    return NightPlan(
        name="faint_broad", index=index, frames=frames, field="faint", origin=(0.0, 0.0),
        fwhm_range=(8.0, 10.0), date0=datetime(2018, 5, 5, 11, 0, 0), number0=1, cadence=8.0,
        banding=20.0, n_hot=600, camera=ICX285, telescope=SMALL_NEWTONIAN, target="Faint field",
    )


def extra_night_plan(night: str, seed: int, index: int) -> NightPlan:
    """The plan of test night ``night`` (``index``: its random-sequence number)."""
    if night == "bad_frames":
        return _bad_frames_plan(seed, index)
    if night == "faint_broad":
        return _faint_broad_plan(seed, index)
    raise KeyError(f"{night!r} is not one of {EXTRA_NIGHTS}")


@lru_cache(maxsize=4)
def faint_catalogue(seed: int = DEFAULT_SEED) -> Catalogue:
    """The faint_broad field: stars whose peak S/N, at FWHM 9 px on the night's sky noise, runs
    from 1 to 10 (N(>S/N) proportional to 1/(S/N)), over the frame and a margin for the drift.

    About 80 stars (:data:`FAINT_BRIGHT_SNR`) peak at S/N 5-10 at FWHM 9 px, 0.81-1.27 times
    that at FWHM 10-8 px; the rest are fainter.

    Fluxes are in the night's one filter, ``L`` (ADU/s).
    """
    rng = rng_for(seed, KEY_SKY, 2)
    ny, nx = ICX285.shape
    m = _FAINT_MARGIN
    x = rng.uniform(-m, nx - 1 + m, _FAINT_STARS)
    y = rng.uniform(-m, ny - 1 + m, _FAINT_STARS)
    snr = power_law_fluxes(rng, _FAINT_STARS, *_FAINT_SNR, 1.0)
    sigma = _FAINT_FWHM / FWHM_PER_SIGMA
    flux = snr * _faint_noise() * 2 * np.pi * sigma**2 / _FAINT_EXPTIME
    return Catalogue(x, y, {_FAINT_FILTER: flux}, np.ones(x.size))


def faint_snr(seed: int = DEFAULT_SEED) -> np.ndarray:
    """The design peak S/N of each :func:`faint_catalogue` star (at FWHM 9 px, transparency
    1, the night's design sky noise); at FWHM ``w`` it is ``(9 / w) ** 2`` times that."""
    sigma = _FAINT_FWHM / FWHM_PER_SIGMA
    cat = faint_catalogue(seed)
    return cat.flux[_FAINT_FILTER] * _FAINT_EXPTIME / (2 * np.pi * sigma**2) / _faint_noise()


def frame_positions(plan: NightPlan, frame: ExposurePlan, x: np.ndarray, y: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Where sky points ``(x, y)`` (sky pixels) land in ``frame``: shifted, rotated or flipped
    (see :mod:`starshift.datasets.extra` for the conventions)."""
    xr, yr = x - plan.origin[0], y - plan.origin[1]
    if frame.flip:
        ny, nx = plan.shape
        return (nx - 1) - (xr - frame.dx), (ny - 1) - (yr - frame.dy)
    if frame.rotation:
        px, py = frame.pivot
        c, s = math.cos(math.radians(frame.rotation)), math.sin(math.radians(frame.rotation))
        u, v = xr - px, yr - py
        return px + c * u - s * v - frame.dx, py + s * u + c * v - frame.dy
    return xr - frame.dx, yr - frame.dy


def render_exposure(plan: NightPlan, frame: ExposurePlan, cat: Catalogue, det: Detector,
                    rng: np.random.Generator) -> np.ndarray:
    """Render one test-night frame from its plan: stars, sky, noise and the detector.

    Returns
    -------
    2-D float64 array of the night's shape, ADU.
    """
    x, y = frame_positions(plan, frame, cat.x, cat.y)
    sigma = frame.fwhm / FWHM_PER_SIGMA
    sx, sy = sigma * (1 + frame.ellipticity / 2), sigma * (1 - frame.ellipticity / 2)
    flux = cat.flux[frame.filter] * frame.exptime * frame.transparency
    stars = render_field(plan.shape, x, y, flux, cat.size, sx, sy, frame.images)
    return read_out(rng, frame.sky + stars, det, plan.camera, frame.exptime)


#: README.md written beside each test night's truth.csv
_TRUTH_README = {
    "bad_frames": """# bad_frames (synthetic, starshift.datasets)

20 light frames of 400 x 300 px (ST-7 sub-frame), NGC 3201 field, V, 30 s, and two bias frames.

`truth.csv`: `file, dx, dy, bad, kind, flip`. `dx, dy` is the true shift onto the first
frame (the reference): `position_in_reference - position_in_frame`, x first, pixels.
`bad=1` marks a frame that must not be kept; `kind` says why: `trailed` (8-12 px trails),
`clouds` (star flux 0.05-0.2 of the reference), `defocus` (FWHM 1.3 x the night's median),
`other_field` (no overlap with the reference; dx, dy is the sky offset), `doubled` (second
image 4-6 px away at 0.4-0.7 of the first's flux; dx, dy place the first), `high_background`
(sky 5-10 x the night's), `rotation` (0.3 deg about a point near the centre; dx, dy is the
shift at that point, corners about 1.3 px off a pure shift), `faint_broad` (FWHM 9 px at a
third of the light: peak S/N ~5-10).

`flip=1` (kind `meridian_flip`, bad=0): the frame is rotated by exactly 180 deg. Its `dx, dy`
align it after `np.rot90(frame, 2)`: a star at `p` in the reference is at `p - (dx, dy)` in
the rotated frame (`reference - rotated_frame`, x first). Hot pixels and banding stay fixed
to the detector.
""",
    "faint_broad": """# faint_broad (synthetic, starshift.datasets)

12 light frames of 1392 x 1040 px (Sony ICX285, whole ADU 0-65535 on a 500 ADU offset), 5 s,
FWHM 8-10 px; the brightest stars peak at S/N 5-10 over the sky noise (at FWHM 9 px); strong
row banding and hot pixels fixed to the detector; two bias frames.

`truth.csv`: `file, dx, dy, bad, kind`. `dx, dy` is the true shift onto the first frame
(`position_in_reference - position_in_frame`, x first, pixels), sub-pixel, up to ~10 px.
Every frame is good (`bad=0`).
""",
}


def truth_readme(night: str) -> str | None:
    """The README.md text written beside a test night's truth.csv (None for other nights)."""
    return _TRUTH_README.get(night)
