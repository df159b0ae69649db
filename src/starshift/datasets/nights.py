"""The nights: plans, truth tables, catalogues, detectors and rendered frames, by night name.

Every function here is pure (arrays and tables in memory, no disk) and deterministic: a light
frame's random numbers come from ``SeedSequence([seed, night_index, frame_index])``, the
night's layout, detector and bias frames from their own sequences (see :mod:`.plans`), so a
frame does not depend on which other frames or nights were rendered before it.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

from .. import columns as C
from .._stats import FWHM_PER_SIGMA
from . import _seed, extra
from .detector import SHAPE, Detector, bias_frame, make_detector, read_out
from .plans import (
    DEFAULT_SEED,
    EXTRA_NIGHTS,
    KEY_BIAS,
    KEY_DETECTOR,
    KEY_NIGHT,
    KNOWN_NIGHTS,
    SEED_NIGHTS,
    FramePlan,
    NightPlan,
    check_night,
    rng_for,
)
from .render import SINGLE, render_field
from .sky import SKY_PEDESTAL, SKY_RATE, Catalogue, cluster_catalogue, sparse_catalogue

#: FWHM range (px), DATE-OBS of the first file, seconds per file number
_HARD_CONDITIONS = {
    "drift_lowsnr": ((3.4, 4.4), datetime(2018, 5, 2, 11, 20, 0), 20.0),
    "crowded_jumps": ((3.0, 4.2), datetime(2018, 5, 3, 10, 30, 0), 50.0),
}


def _hard_frames(night: str, seed: int, index: int) -> tuple[FramePlan, ...]:
    rng = rng_for(seed, index, KEY_NIGHT)
    if night == "drift_lowsnr":
        n, filt, exptime, prefix = 30, "V", 3.0, "lowsnr"
        # a steady drift of ~10 px per frame along a diagonal, plus small jitter
        vx = 9.0 + rng.uniform(-0.5, 0.5)
        vy = -(5.5 + rng.uniform(-0.5, 0.5))
        k = np.arange(n)
        off = np.stack([k * vx, k * vy], axis=1) + rng.normal(0.0, 0.6, (n, 2))
    elif night == "crowded_jumps":
        n, filt, exptime, prefix = 25, "R", 30.0, "crowded"
        off = rng.uniform(-150.0, 150.0, (n, 2))
    else:  # pragma: no cover - guarded by night_plan
        raise KeyError(night)
    off[0] = 0.0
    off = np.round(off, 4)
    frames = []
    for i in range(n):
        frames.append(FramePlan(
            file=f"{prefix}_{filt}_{exptime:.3f}secs_{i + 1:06d}.fit", filter=filt,
            exptime=exptime, number=i + 1, dx=float(off[i, 0]), dy=float(off[i, 1]),
            kind="reference" if i == 0 else "science",
        ))
    return tuple(frames)


def _hard_night_plan(night: str, seed: int, index: int) -> NightPlan:
    fwhm_range, date0, cadence = _HARD_CONDITIONS[night]
    frames = _hard_frames(night, seed, index)
    if night == "drift_lowsnr":
        return NightPlan(
            name=night, index=index, frames=frames, field="sparse", origin=(0.0, 0.0),
            fwhm_range=fwhm_range, date0=date0, number0=1, cadence=cadence, banding=30.0,
            n_hot=260,
        )
    # crowded_jumps: the cluster core in the middle of the reference frame
    ny, nx = SHAPE
    origin = (-(nx - 1) / 2 + 3.3, -(ny - 1) / 2 - 2.6)
    return NightPlan(
        name=night, index=index, frames=frames, field="cluster", origin=origin,
        fwhm_range=fwhm_range, date0=date0, number0=1, cadence=cadence, banding=4.0, n_hot=220,
    )


@lru_cache(maxsize=32)
def night_plan(night: str, seed: int = DEFAULT_SEED) -> NightPlan:
    """The layout of one night (frames, true offsets, pointing, conditions); no pixels.

    Parameters
    ----------
    night : str
        A name from :data:`~starshift.datasets.KNOWN_NIGHTS`.
    seed : int
        Random seed.

    Returns
    -------
    NightPlan

    Raises
    ------
    StarshiftError
        If the night does not exist.
    """
    check_night(night)
    seed = int(seed)
    index = KNOWN_NIGHTS.index(night)
    if night in SEED_NIGHTS:
        return _seed.seed_night_plan(night, seed, index)
    if night in EXTRA_NIGHTS:
        return extra.extra_night_plan(night, seed, index)
    return _hard_night_plan(night, seed, index)


def truth_table(night: str, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """The night's ``truth.csv`` as a DataFrame (light frames only, file-name order).

    Returns
    -------
    pandas.DataFrame
        ``file, dx, dy, bad, kind``: the true shift onto the reference frame
        (``position_in_reference - position_in_frame``, x first, pixels), whether the frame
        should be rejected and what it is; then the night's extra columns, if any.
    """
    plan = night_plan(night, seed)
    table = pd.DataFrame({
        C.FILE: [f.file for f in plan.frames],
        C.DX: [f.dx for f in plan.frames],
        C.DY: [f.dy for f in plan.frames],
        C.BAD: [int(f.bad) for f in plan.frames],
        C.KIND: [f.kind for f in plan.frames],
    })
    for name in plan.truth_columns:
        table[name] = [_truth_value(getattr(f, name)) for f in plan.frames]
    return table


def _truth_value(value):
    return int(value) if isinstance(value, bool) else value


@lru_cache(maxsize=16)
def night_catalogue(night: str, seed: int = DEFAULT_SEED) -> Catalogue:
    """The objects on the sky of one night: its field, plus (seed nights) the guide star at the
    search-box centre, the zone around it cleared of other stars and, on march_09_2018, the
    neighbours that catch the box when the pre-shifts are left out."""
    plan = night_plan(night, seed)
    fields = {"cluster": cluster_catalogue, "sparse": sparse_catalogue,
              "faint": extra.faint_catalogue}
    cat = fields[plan.field](seed)
    if plan.guide is None:
        return cat
    return _seed.with_guide_star(plan, cat)


@lru_cache(maxsize=8)
def _forbidden(night: str, seed: int) -> np.ndarray | None:
    """Pixels kept free of hot pixels and cosmic rays: the seed's boxes (seed nights only)."""
    plan = night_plan(night, seed)
    return _seed.box_mask(plan) if plan.box_center is not None else None


@lru_cache(maxsize=8)
def detector(night: str, seed: int = DEFAULT_SEED) -> Detector:
    """The night's fixed pattern (a gradient plus row banding) and hot pixels."""
    plan = night_plan(night, seed)
    rng = rng_for(seed, plan.index, KEY_DETECTOR)
    return make_detector(rng, plan.shape, plan.banding, plan.n_hot, _forbidden(night, seed))


def frame_header(plan: NightPlan, frame: FramePlan | None, *, bias_index: int = 0) -> dict:
    """Header keywords of a light frame (or, with ``frame=None``, of bias frame ``bias_index``),
    in the style of the night's camera software (the SBIG ST-7 on the Monash 11-inch telescope
    for the default sample)."""
    if frame is None:
        date = plan.date0 - timedelta(seconds=600 - 30 * bias_index)
        kind = {"PICTTYPE": 2, "IMAGETYP": "Bias Frame", "OBJECT": "Bias", "EXPTIME": 0.0}
    else:
        date = plan.date0 + timedelta(seconds=(frame.number - plan.number0) * plan.cadence)
        target = plan.target or ("NGC 3201" if plan.field == "cluster" else "Sparse field")
        kind = {"PICTTYPE": 1, "IMAGETYP": "Light Frame", "OBJECT": target,
                "FILTER": frame.filter, "EXPTIME": float(frame.exptime)}
    camera, scope = plan.camera, plan.telescope
    return {
        **kind,
        "DATE-OBS": date.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
        "TELESCOP": scope.name,
        "INSTRUME": camera.name,
        "XPIXSZ": camera.pixel_size,
        "YPIXSZ": camera.pixel_size,
        "XBINNING": 1,
        "YBINNING": 1,
        "FOCALLEN": scope.focal_length,
        "APTDIA": scope.aperture,
        "EGAIN": camera.gain,
        "CCD-TEMP": -10.0,
        "BUNIT": "adu",
        "ORIGIN": "starshift.sample",
    }


def render_frame(night: str, index: int, seed: int = DEFAULT_SEED
                 ) -> tuple[np.ndarray, dict, dict]:
    """Render light frame ``index`` (file-name order) of a night, without disk I/O.

    Parameters
    ----------
    night : str
        Night name.
    index : int
        Frame index in file-name order (0 is the reference).
    seed : int
        Random seed.

    Returns
    -------
    data : 2-D float32 array, the night's frame shape (510, 765 for the default sample)
        The frame in ADU.
    header : dict
        FITS keywords (see :func:`frame_header`).
    truth : dict
        The frame's ``truth.csv`` row (``file, dx, dy, bad, kind`` and the night's extra
        columns), plus ``fwhm`` (pixels).
    """
    plan = night_plan(night, seed)
    frame = plan.frames[index]
    rng = rng_for(seed, plan.index, index)
    det = detector(night, seed)
    cat = night_catalogue(night, seed)
    if isinstance(frame, extra.ExposurePlan):  # the test nights: conditions in the plan
        data = extra.render_exposure(plan, frame, cat, det, rng)
        return (data.astype(np.float32), frame_header(plan, frame),
                _truth_row(plan, frame, frame.fwhm))

    # observing conditions of this exposure
    fwhm = rng.uniform(*plan.fwhm_range)
    ell = rng.uniform(0.0, 0.08)
    sigma = fwhm / FWHM_PER_SIGMA
    sx, sy = sigma * (1 + ell / 2), sigma * (1 - ell / 2)
    if rng.uniform() < 0.5:
        sx, sy = sy, sx
    transparency = rng.uniform(0.92, 1.0)
    sky = (SKY_PEDESTAL + SKY_RATE[frame.filter] * frame.exptime) * rng.uniform(0.9, 1.1)
    jump_length = rng.uniform(8.0, 14.0)  # drawn for every frame, used by the tracking jump
    jump_angle = rng.uniform(0.0, 2 * math.pi)
    jump = jump_length * np.array([math.cos(jump_angle), math.sin(jump_angle)])

    # stars: a sky point at reference pixel (xr, yr) appears at (xr - dx, yr - dy)
    fx = cat.x - plan.origin[0] - frame.dx
    fy = cat.y - plan.origin[1] - frame.dy
    flux = cat.flux[frame.filter] * frame.exptime * transparency
    if frame.kind == "tracking_jump":
        # the mount jumped during the exposure: part of the light at the first position, part
        # at the second, and a faint trail in between
        parts = [(0.0, 0.52), (1.0, 0.33)] + [(t, 0.15 / 6) for t in np.linspace(0.1, 0.9, 6)]
        images = [(t * jump[0], t * jump[1], frac) for t, frac in parts]
    else:
        images = SINGLE
    stars = render_field(plan.shape, fx, fy, flux, cat.size, sx, sy, images)

    # photon noise on sky and stars; read noise; the fixed pattern, hot pixels, cosmic rays
    data = read_out(rng, sky + stars, det, plan.camera, frame.exptime, _forbidden(night, seed))
    return data.astype(np.float32), frame_header(plan, frame), _truth_row(plan, frame, fwhm)


def _truth_row(plan: NightPlan, frame: FramePlan, fwhm: float) -> dict:
    row = {C.FILE: frame.file, C.DX: frame.dx, C.DY: frame.dy, C.BAD: int(frame.bad),
           C.KIND: frame.kind}
    row.update({name: _truth_value(getattr(frame, name)) for name in plan.truth_columns})
    return {**row, "fwhm": float(fwhm)}


def render_bias(night: str, index: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, dict]:
    """Bias frame ``index`` (0 or 1) of a night: bias level, read noise, banding, no stars.

    Returns
    -------
    data : 2-D float32 array
    header : dict
    """
    plan = night_plan(night, seed)
    rng = rng_for(seed, plan.index, KEY_BIAS + index)
    data = bias_frame(rng, detector(night, seed), plan.camera)
    return data.astype(np.float32), frame_header(plan, None, bias_index=index)


def bias_file_name(index: int) -> str:
    """File name of bias frame ``index`` (0-based)."""
    return f"Bias_{index + 1:04d}.fit"
