"""The seed nights: the real NGC 3201 nights the project started from, copied.

The seed table (``seed_frames.csv``, package data: one row per science frame of the real
nights, as measured by the original analysis: night, file number, filter, exposure (s), shift
(dx, dy), pre-shift (dx, dy), removed as bad), the seed analysis's search boxes, and what the
generator plants so that the seed's box-centroid method behaves on the synthetic frames as it did
on the real ones: a bright guide star at each box centre, the boxes cleared of other stars, and
(march_09_2018) the neighbours that catch the box when the hand-made pre-shifts are left out.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from .._stats import FWHM_PER_SIGMA
from .detector import SATURATION, SHAPE
from .plans import KEY_NIGHT, SEED_NIGHTS, FramePlan, NightPlan, rng_for
from .sky import FILTERS, Catalogue, filter_factor

#: The seed analysis's search box per night: (x, y) centre (0-based pixels) and side (pixels).
SEED_BOXES = {
    "march_29_2018": ((560, 426), 30),
    "april_30_2018": ((556, 410), 25),
    "march_09_2018": ((676, 333), 25),
}

SEED_TABLE_COLUMNS = ("night", "file", "filter", "exptime_s", "shift_dx", "shift_dy",
                      "pre_shift_dx", "pre_shift_dy", "removed_as_bad")
#: the package-data file holding the seed table (file numbers instead of names)
SEED_TABLE_FILE = "seed_frames.csv"

#: FWHM range (px), DATE-OBS of the first file, seconds per file number
SEED_CONDITIONS = {
    "march_29_2018": ((3.1, 4.1), datetime(2018, 3, 29, 10, 12, 0), 45.0),
    "april_30_2018": ((3.0, 4.0), datetime(2018, 4, 30, 9, 41, 0), 45.0),
    "march_09_2018": ((3.0, 3.8), datetime(2018, 3, 9, 10, 5, 0), 80.0),
}
#: where the cluster centre lands in each seed night's reference frame (x, y)
_CLUSTER_IN_REFERENCE = {
    "march_29_2018": (330.0, 232.0),
    "april_30_2018": (352.0, 214.0),
    "march_09_2018": (388.0, 244.0),
}
#: the guide star's brightest peak in the night (fraction of SATURATION, at the smallest FWHM)
_GUIDE_PEAK = 0.65
#: the guide star's colour index: bluish, so it is about as bright in B and I as in V and R
_GUIDE_COLOUR = 0.3

# Objects planted next to the march_09_2018 seed box: (sky offset from the guide star (x, y),
# pixels; flux relative to the guide star's in each filter; PSF width relative to a star's).
#
# On the real night the hand-made pre-shifts were needed for the frames taken after the
# telescope was re-pointed (and for four earlier ones); left out, those frames put something
# other than the guide star into the search box. Many of them are offset so far that the guide
# star leaves the box. But the late R and V frames and B frame 1613 share their offsets with
# I frames that needed no pre-shift (1623 in I and 1624 in R are both at (-10, 5)), so no
# ordinary star could catch one and spare the other. The generator therefore plants a compact
# bipolar emission-line nebula (two lobes): bright in B, V and R (H-beta, [OIII], H-alpha),
# nearly invisible in I. In the reference it lies more than 4 px outside every box the seed's
# method reads in B, V and R (the boxes with the pre-shifts applied, and the raw boxes of the
# frames that need none), but inside the raw box of the late R, V and B frames and of 1613,
# where the centroid fit locks onto it. A plain neighbour star does the same for the I frame
# 1584. Nothing can catch the I frame 1593: its offset, (3, -7), lies among those of the I
# frames around it, which needed no pre-shift.
_PLANTED = {
    "march_09_2018": (
        ((-21.0, 10.5), {"B": 2.0, "V": 3.0, "R": 3.0, "I": 0.003}, 1.6),
        ((-18.25, 19.25), {"B": 2.0, "V": 3.0, "R": 3.0, "I": 0.003}, 1.0),
        ((23.0, -20.0), {"B": 1.5, "V": 1.5, "R": 1.5, "I": 1.5}, 1.0),
    ),
}


def seed_file_name(filt: str, exptime: float, number: int) -> str:
    """Name of a seed-night frame, as the camera software wrote it."""
    return f"NGC_3201_{filt}_{exptime:.3f}secs_{number:08d}.fit"


@lru_cache(maxsize=1)
def _seed_rows() -> tuple[tuple, ...]:
    text = resources.files(__package__).joinpath(SEED_TABLE_FILE).read_text(encoding="utf-8")
    rows = []
    for r in csv.DictReader(text.splitlines()):
        exp = int(r["exptime_s"])
        rows.append((r["night"], seed_file_name(r["filter"], exp, int(r["number"])), r["filter"],
                     exp, *(int(r[c]) for c in SEED_TABLE_COLUMNS[4:])))
    return tuple(rows)


def seed_table() -> pd.DataFrame:
    """The seed nights' frame table (one row per science frame, 111 rows).

    Returns
    -------
    pandas.DataFrame
        Columns night, file, filter, exptime_s, shift_dx, shift_dy, pre_shift_dx,
        pre_shift_dy, removed_as_bad -- the original analysis's integer shifts onto each
        night's first frame, the hand-made integer pre-shifts it needed and the frame it
        removed.
    """
    return pd.DataFrame(list(_seed_rows()), columns=list(SEED_TABLE_COLUMNS))


def _seed_frames(night: str, seed: int, index: int) -> tuple[FramePlan, ...]:
    table = seed_table()
    rows = table[table["night"] == night].sort_values("file")
    rng = rng_for(seed, index, KEY_NIGHT)
    frames = []
    for i, r in enumerate(rows.itertuples(index=False)):
        # sub-pixel part of the true offset; the reference frame is the origin (exactly 0)
        sub = np.round(rng.uniform(-0.45, 0.45, 2), 4)
        if i == 0:
            if (r.shift_dx, r.shift_dy, r.pre_shift_dx, r.pre_shift_dy) != (0, 0, 0, 0):
                raise AssertionError(f"{night}: the first frame must be the reference")
            sub = np.zeros(2)
        kind = "reference" if i == 0 else ("tracking_jump" if r.removed_as_bad else "science")
        number = int(re.search(r"_(\d+)\.fit$", r.file).group(1))
        frames.append(FramePlan(
            file=r.file, filter=r.filter, exptime=float(r.exptime_s), number=number,
            dx=float(r.shift_dx + r.pre_shift_dx + sub[0]),
            dy=float(r.shift_dy + r.pre_shift_dy + sub[1]),
            pre_dx=int(r.pre_shift_dx), pre_dy=int(r.pre_shift_dy), kind=kind,
            bad=bool(r.removed_as_bad),
        ))
    return tuple(frames)


def seed_night_plan(night: str, seed: int, index: int) -> NightPlan:
    """The plan of seed night ``night`` (``index``: its random-sequence number)."""
    if night not in SEED_NIGHTS:
        raise KeyError(night)
    fwhm_range, date0, cadence = SEED_CONDITIONS[night]
    frames = _seed_frames(night, seed, index)
    (bx, by), bsize = SEED_BOXES[night]
    cx, cy = _CLUSTER_IN_REFERENCE[night]
    origin = (-cx, -cy)  # the cluster centre is the sky origin
    # the guide star: bright but unsaturated at the night's longest, brightest exposure
    sigma = fwhm_range[0] / FWHM_PER_SIGMA
    best = max(filter_factor(f.filter, _GUIDE_COLOUR) * f.exptime for f in frames)
    flux = _GUIDE_PEAK * SATURATION * 2 * np.pi * sigma**2 / best
    guide = (bx + origin[0], by + origin[1], float(flux))
    return NightPlan(
        name=night, index=index, frames=frames, field="cluster", origin=origin,
        fwhm_range=fwhm_range, date0=date0, number0=min(f.number for f in frames),
        cadence=cadence, banding=3.0, n_hot=220, guide=guide, box_center=(bx, by),
        box_size=bsize,
    )


def box_rects(plan: NightPlan, frame: FramePlan) -> list[tuple[float, float, float, float]]:
    """Sky rectangles (x0, x1, y0, y1) the seed's method looks at for one frame.

    The box in the pre-shifted frame, the box in the raw frame (no pre-shift) and the box after
    shifting by the whole-pixel true shift all map to sky rectangles around the guide star.
    """
    (bx, by), size = plan.box_center, plan.box_size
    half = size // 2
    rects = []
    for ox, oy in ((frame.dx - frame.pre_dx, frame.dy - frame.pre_dy),
                   (frame.dx, frame.dy), (frame.dx - round(frame.dx), frame.dy - round(frame.dy))):
        x0 = bx - half + plan.origin[0] + ox
        y0 = by - half + plan.origin[1] + oy
        rects.append((x0, x0 + size - 1, y0, y0 + size - 1))
    return rects


def with_guide_star(plan: NightPlan, cat: Catalogue) -> Catalogue:
    """The night's field ``cat`` with the guide star at the search-box centre, the zone around
    it cleared of other stars and (march_09_2018) the neighbours that catch the box when the
    pre-shifts are left out."""
    gx, gy, gflux = plan.guide
    # Clear every box the seed's method looks at (pre-shifted, raw and re-measured, for every
    # frame of the night, with a margin for PSF wings) of stars brighter than 0.3 % of the
    # guide star, so the box holds the guide star alone unless a pre-shift is left out.
    margin = 8.0
    bright = np.max([cat.flux[f] / filter_factor(f, _GUIDE_COLOUR) for f in FILTERS], axis=0)
    bright = bright > 0.003 * gflux
    inside = np.zeros(cat.x.size, bool)
    for frame in plan.frames:
        for x0, x1, y0, y1 in box_rects(plan, frame):
            inside |= ((cat.x > x0 - margin) & (cat.x < x1 + margin)
                       & (cat.y > y0 - margin) & (cat.y < y1 + margin))
    cat = cat.select(~(inside & bright))
    cat = cat.plus(Catalogue.from_colours([gx], [gy], [gflux], [_GUIDE_COLOUR]))
    for (ox, oy), ratios, size in _PLANTED.get(plan.name, ()):
        guide_flux = {f: gflux * filter_factor(f, _GUIDE_COLOUR) for f in FILTERS}
        cat = cat.plus(Catalogue(np.array([gx + ox]), np.array([gy + oy]),
                                 {f: np.array([ratios[f] * guide_flux[f]]) for f in FILTERS},
                                 np.array([float(size)])))
    return cat


def box_mask(plan: NightPlan) -> np.ndarray:
    """Detector pixels that the seed's method reads in any frame of the night (with a margin).

    The generator keeps these pixels free of cosmic rays and hot pixels, so that the seed's
    method has the fair chance it had on the real data: the box around the guide star is clean.
    """
    mask = np.zeros(SHAPE, bool)
    (bx, by), size = plan.box_center, plan.box_size
    half, margin = size // 2, 4
    for f in plan.frames:
        for ox, oy in ((0, 0), (-f.pre_dx, -f.pre_dy), (-round(f.dx), -round(f.dy))):
            x0 = bx - half + ox - margin
            y0 = by - half + oy - margin
            mask[max(y0, 0):max(y0 + size + 2 * margin, 0),
                 max(x0, 0):max(x0 + size + 2 * margin, 0)] = True
    return mask
