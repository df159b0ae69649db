"""Synthetic sample nights with ground truth: the package's embedded default data.

Five nights are generated, each into ``<out_dir>/<night>/`` with its light frames, two bias
frames and a ``truth.csv`` (one row per light frame: ``file, dx, dy, bad, kind``; ``dx, dy`` is
the true shift onto the night's reference frame, ``position_in_reference - position_in_frame``,
x first, in pixels).

* The three *seed nights* (``march_29_2018``, ``april_30_2018``, ``march_09_2018``) copy the
  real NGC 3201 nights the project started from (Monash 11-inch telescope, SBIG ST-7 camera):
  file names, filters, exposure times, the shifts the original analysis measured, the hand-made
  pre-shifts it needed and the frame it removed (a tracking jump). The true offset of a frame is
  ``shift + pre_shift`` plus a sub-pixel part. A bright, isolated star sits at each night's
  search-box centre in the reference frame, so the seed's box-centroid method works on these
  frames as it did on the real ones -- including failing on the march_09_2018 frames that needed
  a pre-shift, when the pre-shift is left out.
* Two *harder nights* for the automatic aligner: ``drift_lowsnr`` (short, noisy exposures of a
  sparse field drifting ~10 px per frame, strong row banding) and ``crowded_jumps`` (the dense
  cluster core, with jumps of up to 150 px between frames).

Every frame carries what real small-telescope frames carry: a PSF whose width changes from frame
to frame, Poisson and read noise, saturated bright stars, cosmic rays, hot pixels and a faint
pattern (gradient and row banding) fixed to the detector while the stars move. The hot pixels
and the pattern make a naive FFT (phase) cross-correlation of two raw frames peak at zero shift.

Everything is deterministic: each frame's random numbers come from
``SeedSequence([seed, night_index, frame_index])`` (and each night's layout from its own
sequence), so the same seed gives the same bytes, whichever nights are generated.

The pure functions (:func:`night_plan`, :func:`truth_table`, :func:`render_frame`) build arrays
and tables without touching the disk; :func:`generate_sample` writes them through
:mod:`starshift.frames`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy.special import erf

from . import columns as C
from .errors import StarshiftError

log = logging.getLogger(__name__)

SEED_NIGHTS = ("march_29_2018", "april_30_2018", "march_09_2018")
HARD_NIGHTS = ("drift_lowsnr", "crowded_jumps")
ALL_NIGHTS = SEED_NIGHTS + HARD_NIGHTS
DEFAULT_SEED = 2018

#: The seed analysis's search box per night: (x, y) centre (0-based pixels) and side (pixels).
SEED_BOXES = {
    "march_29_2018": ((560, 426), 30),
    "april_30_2018": ((556, 410), 25),
    "march_09_2018": ((676, 333), 25),
}

# --------------------------------------------------------------------------- camera & sky
#: numpy shape of an SBIG ST-7 full frame (765 x 510 px).
SHAPE = (510, 765)
#: electrons per ADU and read noise (electrons), typical of the ST-7 (KAF-0400).
GAIN = 2.3
READ_NOISE = 15.0
#: reduced frames are clipped here (ADU), sky included.
SATURATION = 52000.0
#: relative throughput of the filters for a star of reference colour (V = 1).
THROUGHPUT = {"B": 0.45, "V": 1.0, "R": 1.25, "I": 0.9}
FILTERS = tuple(THROUGHPUT)
#: colour terms: a star of colour index c gets 10**(-0.4 * k * (c - 0.7)) more flux.
COLOUR_TERM = {"B": 1.0, "V": 0.0, "R": -0.55, "I": -1.1}
#: sky brightness (ADU/s) per filter, on top of a pedestal (ADU) left by the reduction.
SKY_RATE = {"B": 0.9, "V": 1.8, "R": 3.4, "I": 3.9}
SKY_PEDESTAL = 14.0


def filter_factor(filt: str, colour):
    """Flux through filter ``filt`` relative to V for a star of colour index ``colour``."""
    return THROUGHPUT[filt] * 10 ** (-0.4 * COLOUR_TERM[filt] * (np.asarray(colour) - 0.7))


#: level of a bias frame (ADU).
BIAS_LEVEL = 102.0

HEADER_COMMENTS = {
    "PICTTYPE": "image type: 1 light, 2 bias, 3 dark, 4 flat",
    "IMAGETYP": "type of image",
    "OBJECT": "target",
    "FILTER": "optical filter",
    "EXPTIME": "[s] exposure time",
    "DATE-OBS": "UTC start of exposure",
    "TELESCOP": "telescope",
    "INSTRUME": "camera",
    "XPIXSZ": "[um] pixel width",
    "YPIXSZ": "[um] pixel height",
    "XBINNING": "binning factor, x",
    "YBINNING": "binning factor, y",
    "FOCALLEN": "[mm] focal length",
    "APTDIA": "[mm] aperture diameter",
    "EGAIN": "[e-/ADU] gain",
    "CCD-TEMP": "[C] CCD temperature",
    "BUNIT": "pixel unit",
    "ORIGIN": "synthetic frame (starshift.sample)",
}

# --------------------------------------------------------------------------- the seed table
# One row per science frame of the real nights, as measured by the original analysis:
# night, file number, filter, exposure (s), shift (dx, dy), pre-shift (dx, dy), removed as bad.
# File names follow NGC_3201_<filter>_<exptime:.3f>secs_<number:08d>.fit.
_SEED_ROWS = """
march_29_2018  472 B 30   0   0   0   0 0
march_29_2018  458 B  5   2  -7   0   0 0
march_29_2018  459 B  5   2  -7   0   0 0
march_29_2018  460 B  5   2  -6   0   0 0
march_29_2018  479 I 30   1   5   0   0 0
march_29_2018  480 I 30  -1   6   0   0 0
march_29_2018  467 I  5   5  -4   0   0 0
march_29_2018  468 I  5   3  -3   0   0 0
march_29_2018  469 I  5   5  -3   0   0 0
march_29_2018  476 R 30   4   3   0   0 0
march_29_2018  477 R 30   9   4   0   0 0
march_29_2018  464 R  5   8  -5   0   0 0
march_29_2018  465 R  5   7  -5   0   0 0
march_29_2018  466 R  5   7  -6   0   0 0
march_29_2018  473 V 30   0   1   0   0 0
march_29_2018  475 V 30   5   3   0   0 0
march_29_2018  461 V  5   5  -7   0   0 0
march_29_2018  462 V  5   7  -6   0   0 0
march_29_2018  463 V  5   7  -5   0   0 0
april_30_2018 1305 B 30   0   0   0   0 0
april_30_2018 1306 B 30  -3   1   0   0 0
april_30_2018 1292 B  5 -11  -7   0   0 0
april_30_2018 1293 B  5 -11  -6   0   0 0
april_30_2018 1294 B  5 -11  -6   0   0 0
april_30_2018 1313 I 30   0   4   0   0 0
april_30_2018 1315 I 30  -9   4   0   0 0
april_30_2018 1301 I  5  -5  -4   0   0 0
april_30_2018 1302 I  5  -5  -4   0   0 0
april_30_2018 1303 I  5  -5  -2   0   0 0
april_30_2018 1310 R 30  -5   1   0   0 0
april_30_2018 1312 R 30   2   3   0   0 0
april_30_2018 1298 R  5  -7  -5   0   0 0
april_30_2018 1299 R  5  -6  -5   0   0 0
april_30_2018 1300 R  5  -6  -5   0   0 0
april_30_2018 1307 V 30  -6   1   0   0 0
april_30_2018 1308 V 30 -11   1   0   0 0
april_30_2018 1309 V 30  -7   1   0   0 0
april_30_2018 1295 V  5 -11  -5   0   0 0
april_30_2018 1296 V  5 -11  -5   0   0 0
april_30_2018 1297 V  5  -9  -5   0   0 0
march_09_2018 1604 B 60   0   0   0   0 0
march_09_2018 1605 B 60  -1   0   0   0 0
march_09_2018 1606 B 60  -1   1   0   0 0
march_09_2018 1607 B 60  -2   1   0   0 0
march_09_2018 1608 B 60  -2   1   0   0 0
march_09_2018 1609 B 60  -2   1   0   0 0
march_09_2018 1610 B 60  -2   2   0   0 0
march_09_2018 1611 B 60  -3   2   0   0 0
march_09_2018 1612 B 60  -3   2   0   0 0
march_09_2018 1613 B 60  -4   3  -3   5 0
march_09_2018 1644 B 60   4  -3 -17  12 0
march_09_2018 1649 B 60  -3  -2 -22  15 0
march_09_2018 1650 B 60  -2  -2 -22  15 0
march_09_2018 1651 B 60  -1  -1 -22  15 0
march_09_2018 1652 B 60  -1   0 -22  17 0
march_09_2018 1653 B 60  -2   0 -22  15 0
march_09_2018 1581 I 60   1  -9   0  -8 0
march_09_2018 1584 I 60   6  -6   7  -3 0
march_09_2018 1585 I 60   5  -6   0   0 0
march_09_2018 1586 I 60   5  -5   0   0 0
march_09_2018 1587 I 60   4  -5   0   0 0
march_09_2018 1588 I 60   4  -5   0   0 0
march_09_2018 1589 I 60   3  -5   0   0 0
march_09_2018 1590 I 60   3  -4   0   0 0
march_09_2018 1591 I 60   2  -4   0   0 0
march_09_2018 1592 I 60   2  -4   0   0 0
march_09_2018 1593 I 60   2  -3   1  -4 0
march_09_2018 1615 I 60  -6   4   0   0 0
march_09_2018 1616 I 60  -6   3   0   0 0
march_09_2018 1617 I 60  -6   4   0   0 0
march_09_2018 1618 I 60  -7   4   0   0 0
march_09_2018 1619 I 60  -8   4   0   0 0
march_09_2018 1620 I 60  -8   4   0   0 0
march_09_2018 1621 I 60  -8   4   0   0 0
march_09_2018 1622 I 60  -9   5   0   0 0
march_09_2018 1623 I 60 -10   5   0   0 0
march_09_2018 1563 R 60   4  -9   0   0 0
march_09_2018 1564 R 60   2  -9   0   0 0
march_09_2018 1565 R 60   1  -9   0   0 0
march_09_2018 1566 R 60   0 -10   0   0 0
march_09_2018 1567 R 60   0  -9   0   0 0
march_09_2018 1568 R 60   0  -9   0   0 0
march_09_2018 1569 R 60   0  -9   0   0 0
march_09_2018 1570 R 60   0  -8   0   0 0
march_09_2018 1571 R 60  -1  -9   0   0 0
march_09_2018 1624 R 60   0  -9 -10  14 0
march_09_2018 1625 R 60   0  -9 -10  14 0
march_09_2018 1626 R 60   0  -8 -10  14 0
march_09_2018 1627 R 60  -1  -8 -10  14 0
march_09_2018 1629 R 60  -1  -7 -10  14 0
march_09_2018 1630 R 60  -1  -7 -10  14 0
march_09_2018 1631 R 60  -1  -6 -10  14 0
march_09_2018 1632 R 60  -1  -6 -10  14 0
march_09_2018 1633 R 60  -2  -6 -10  14 0
march_09_2018 1594 V 60   3  -3   0   0 0
march_09_2018 1595 V 60   3  -2   0   0 0
march_09_2018 1596 V 60  -8  -7   0   0 1
march_09_2018 1597 V 60   2  -2   0   0 0
march_09_2018 1599 V 60   0  -2   0   0 0
march_09_2018 1600 V 60   0  -2   0   0 0
march_09_2018 1601 V 60   0  -1   0   0 0
march_09_2018 1602 V 60   0  -1   0   0 0
march_09_2018 1603 V 60   0  -1   0   0 0
march_09_2018 1635 V 60   1 -10 -13  10 0
march_09_2018 1636 V 60   0 -10 -12  12 0
march_09_2018 1637 V 60   0 -10 -13  12 0
march_09_2018 1638 V 60  -1 -10 -13  20 0
march_09_2018 1639 V 60  -1  -9 -13  20 0
march_09_2018 1641 V 60  -3  -9 -13  20 0
march_09_2018 1642 V 60  -4  -9 -13  20 0
march_09_2018 1643 V 60  -5  -8 -13  20 0
"""

SEED_TABLE_COLUMNS = ("night", "file", "filter", "exptime_s", "shift_dx", "shift_dy",
                      "pre_shift_dx", "pre_shift_dy", "removed_as_bad")


def seed_file_name(filt: str, exptime: float, number: int) -> str:
    """Name of a seed-night frame, as the camera software wrote it."""
    return f"NGC_3201_{filt}_{exptime:.3f}secs_{number:08d}.fit"


def seed_table() -> pd.DataFrame:
    """The seed nights' frame table (one row per science frame, 111 rows).

    Columns: night, file, filter, exptime_s, shift_dx, shift_dy, pre_shift_dx, pre_shift_dy,
    removed_as_bad -- the original analysis's integer shifts onto each night's first frame, the
    hand-made integer pre-shifts it needed and the frame it removed.
    """
    rows = []
    for line in _SEED_ROWS.strip().splitlines():
        night, num, filt, exp, sdx, sdy, pdx, pdy, bad = line.split()
        rows.append((night, seed_file_name(filt, int(exp), int(num)), filt, int(exp), int(sdx),
                     int(sdy), int(pdx), int(pdy), int(bad)))
    return pd.DataFrame(rows, columns=list(SEED_TABLE_COLUMNS))


# --------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class FramePlan:
    """One light frame of a night: what it is and where it points (truth)."""

    file: str
    filter: str
    exptime: float
    number: int            # chronological file number
    dx: float              # true shift onto the reference (ref - frame), pixels
    dy: float
    pre_dx: int = 0        # the seed's hand-made pre-shift (seed nights only)
    pre_dy: int = 0
    kind: str = "science"  # 'reference', 'science' or 'tracking_jump'
    bad: bool = False


@dataclass(frozen=True)
class NightPlan:
    """Layout of one night: its frames (in file-name order; the first is the reference),
    where the reference frame points on the sky, and the night's observing conditions."""

    name: str
    index: int
    frames: tuple[FramePlan, ...]
    field: str                              # 'cluster' or 'sparse'
    origin: tuple[float, float]             # sky position of the reference frame's pixel (0, 0)
    fwhm_range: tuple[float, float]         # PSF FWHM drawn per frame, pixels
    date0: datetime                         # DATE-OBS of frame number ``number0``
    number0: int
    cadence: float                          # seconds per file number
    banding: float                          # row-banding scale (about its rms), ADU
    n_hot: int                              # hot pixels
    guide: tuple[float, float, float] | None = None   # planted star: sky x, y, V flux (ADU/s)
    box_center: tuple[int, int] | None = None
    box_size: int | None = None


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


# spawn keys (second and later entries of the SeedSequence) for things that are not frames
_KEY_NIGHT = 100_000       # [seed, night, _KEY_NIGHT]: the night's layout (offsets)
_KEY_DETECTOR = 100_001    # [seed, night, _KEY_DETECTOR]: hot pixels, fixed pattern
_KEY_BIAS = 100_100        # [seed, night, _KEY_BIAS + i]: bias frame i
_KEY_SKY = 999             # [seed, _KEY_SKY, 0|1]: the cluster field, the sparse field

#: where the cluster centre lands in each seed night's reference frame (x, y)
_CLUSTER_IN_REFERENCE = {
    "march_29_2018": (330.0, 232.0),
    "april_30_2018": (352.0, 214.0),
    "march_09_2018": (388.0, 244.0),
}
_NIGHT_CONDITIONS = {  # FWHM range (px), DATE-OBS of the first file, seconds per file number
    "march_29_2018": ((3.1, 4.1), datetime(2018, 3, 29, 10, 12, 0), 45.0),
    "april_30_2018": ((3.0, 4.0), datetime(2018, 4, 30, 9, 41, 0), 45.0),
    "march_09_2018": ((3.0, 3.8), datetime(2018, 3, 9, 10, 5, 0), 80.0),
    "drift_lowsnr": ((3.4, 4.4), datetime(2018, 5, 2, 11, 20, 0), 20.0),
    "crowded_jumps": ((3.0, 4.2), datetime(2018, 5, 3, 10, 30, 0), 50.0),
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


def _seed_frames(night: str, seed: int) -> tuple[FramePlan, ...]:
    table = seed_table()
    rows = table[table["night"] == night].sort_values("file")
    rng = _rng(seed, ALL_NIGHTS.index(night), _KEY_NIGHT)
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


def _hard_frames(night: str, seed: int) -> tuple[FramePlan, ...]:
    rng = _rng(seed, ALL_NIGHTS.index(night), _KEY_NIGHT)
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


def _check_night(night: str) -> None:
    if night not in ALL_NIGHTS:
        raise StarshiftError(
            f"sample night {night!r} does not exist; choose from {', '.join(ALL_NIGHTS)}")


@lru_cache(maxsize=32)
def night_plan(night: str, seed: int = DEFAULT_SEED) -> NightPlan:
    """The layout of one sample night (frames, true offsets, pointing, conditions); no pixels."""
    _check_night(night)
    seed = int(seed)
    index = ALL_NIGHTS.index(night)
    fwhm_range, date0, cadence = _NIGHT_CONDITIONS[night]
    if night in SEED_NIGHTS:
        frames = _seed_frames(night, seed)
        (bx, by), bsize = SEED_BOXES[night]
        cx, cy = _CLUSTER_IN_REFERENCE[night]
        origin = (-cx, -cy)  # the cluster centre is the sky origin
        # the guide star: bright but unsaturated at the night's longest, brightest exposure
        sigma = fwhm_range[0] / 2.3548
        best = max(filter_factor(f.filter, _GUIDE_COLOUR) * f.exptime for f in frames)
        flux = _GUIDE_PEAK * SATURATION * 2 * np.pi * sigma**2 / best
        guide = (bx + origin[0], by + origin[1], float(flux))
        return NightPlan(
            name=night, index=index, frames=frames, field="cluster", origin=origin,
            fwhm_range=fwhm_range, date0=date0, number0=min(f.number for f in frames),
            cadence=cadence, banding=3.0, n_hot=220, guide=guide, box_center=(bx, by),
            box_size=bsize,
        )
    frames = _hard_frames(night, seed)
    if night == "drift_lowsnr":
        return NightPlan(
            name=night, index=index, frames=frames, field="sparse", origin=(0.0, 0.0),
            fwhm_range=fwhm_range, date0=date0, number0=1, cadence=cadence, banding=30.0,
            n_hot=260,
        )
    # crowded_jumps: the cluster core in the middle of the reference frame
    origin = (-(SHAPE[1] - 1) / 2 + 3.3, -(SHAPE[0] - 1) / 2 - 2.6)
    return NightPlan(
        name=night, index=index, frames=frames, field="cluster", origin=origin,
        fwhm_range=fwhm_range, date0=date0, number0=1, cadence=cadence, banding=4.0, n_hot=220,
    )


def truth_table(night: str, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """The night's ``truth.csv`` as a DataFrame: file, dx, dy, bad, kind (light frames only)."""
    plan = night_plan(night, seed)
    return pd.DataFrame({
        C.FILE: [f.file for f in plan.frames],
        C.DX: [f.dx for f in plan.frames],
        C.DY: [f.dy for f in plan.frames],
        C.BAD: [int(f.bad) for f in plan.frames],
        C.KIND: [f.kind for f in plan.frames],
    })


# --------------------------------------------------------------------------- sky catalogues
@dataclass(frozen=True)
class Catalogue:
    """Objects on the sky: position (sky pixels), flux (ADU/s) per filter and PSF scale."""

    x: np.ndarray
    y: np.ndarray
    flux: dict              # filter -> array of fluxes, ADU/s
    size: np.ndarray        # PSF width relative to a point source (1 for stars)

    @classmethod
    def from_colours(cls, x, y, vflux, colour) -> Catalogue:
        """Stars with V flux ``vflux`` (ADU/s) and colour index ``colour``."""
        x, y, vflux, colour = (np.asarray(v, dtype=float) for v in (x, y, vflux, colour))
        return cls(x, y, {f: vflux * filter_factor(f, colour) for f in FILTERS},
                   np.ones(x.size))

    def select(self, keep: np.ndarray) -> Catalogue:
        return Catalogue(self.x[keep], self.y[keep], {f: v[keep] for f, v in self.flux.items()},
                         self.size[keep])

    def plus(self, other: Catalogue) -> Catalogue:
        return Catalogue(np.append(self.x, other.x), np.append(self.y, other.y),
                         {f: np.append(v, other.flux[f]) for f, v in self.flux.items()},
                         np.append(self.size, other.size))


def _power_law_fluxes(rng, n: int, fmin: float, fmax: float, slope: float) -> np.ndarray:
    """Fluxes with N(>F) proportional to F**-slope between fmin and fmax."""
    u = rng.uniform(0.0, 1.0, n)
    lo, hi = fmin ** -slope, fmax ** -slope
    return (lo - u * (lo - hi)) ** (-1.0 / slope)


@lru_cache(maxsize=4)
def cluster_catalogue(seed: int = DEFAULT_SEED) -> Catalogue:
    """The globular-cluster field around the sky origin (the cluster centre).

    A Plummer sphere of 1100 stars (scale radius 45 px, projected) concentrated toward the core,
    on 450 field stars spread uniformly over 1600 x 1100 sky pixels.
    """
    rng = _rng(seed, _KEY_SKY, 0)
    n_cl, a = 1100, 45.0
    # projected Plummer radius: r = a * sqrt(u / (1 - u)) for u uniform
    u = rng.uniform(0.0, 0.985, n_cl)
    r = a * np.sqrt(u / (1.0 - u))
    phi = rng.uniform(0.0, 2 * np.pi, n_cl)
    xc, yc = r * np.cos(phi), r * np.sin(phi)
    fc = _power_law_fluxes(rng, n_cl, 2.5, 2.5e5, 0.65)
    cc = rng.normal(0.85, 0.25, n_cl)
    n_f = 450
    xf = rng.uniform(-800.0, 800.0, n_f)
    yf = rng.uniform(-550.0, 550.0, n_f)
    ff = _power_law_fluxes(rng, n_f, 2.5, 1.0e5, 0.6)
    cf = rng.normal(0.7, 0.35, n_f)
    return Catalogue.from_colours(np.concatenate([xc, xf]), np.concatenate([yc, yf]),
                                  np.concatenate([fc, ff]), np.concatenate([cc, cf]))


@lru_cache(maxsize=4)
def sparse_catalogue(seed: int = DEFAULT_SEED) -> Catalogue:
    """A sparse field (no cluster) large enough for the drift night's whole path."""
    rng = _rng(seed, _KEY_SKY, 1)
    n = 330
    x = rng.uniform(-60.0, 1120.0, n)
    y = rng.uniform(-260.0, 560.0, n)
    f = _power_law_fluxes(rng, n, 5.0, 4.0e3, 0.5)
    c = rng.normal(0.7, 0.35, n)
    return Catalogue.from_colours(x, y, f, c)


def _box_rects(plan: NightPlan, frame: FramePlan) -> list[tuple[float, float, float, float]]:
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


@lru_cache(maxsize=16)
def night_catalogue(night: str, seed: int = DEFAULT_SEED) -> Catalogue:
    """The stars of one night: its field, plus (seed nights) the guide star at the search-box
    centre, the zone around it cleared of other stars and, on march_09_2018, the neighbours
    that catch the box when the pre-shifts are left out."""
    plan = night_plan(night, seed)
    cat = cluster_catalogue(seed) if plan.field == "cluster" else sparse_catalogue(seed)
    if plan.guide is None:
        return cat
    gx, gy, gflux = plan.guide
    # Clear every box the seed's method looks at (pre-shifted, raw and re-measured, for every
    # frame of the night, with a margin for PSF wings) of stars brighter than 0.3 % of the
    # guide star, so the box holds the guide star alone unless a pre-shift is left out.
    margin = 8.0
    bright = np.max([cat.flux[f] / filter_factor(f, _GUIDE_COLOUR) for f in FILTERS], axis=0)
    bright = bright > 0.003 * gflux
    inside = np.zeros(cat.x.size, bool)
    for frame in plan.frames:
        for x0, x1, y0, y1 in _box_rects(plan, frame):
            inside |= ((cat.x > x0 - margin) & (cat.x < x1 + margin)
                       & (cat.y > y0 - margin) & (cat.y < y1 + margin))
    cat = cat.select(~(inside & bright))
    cat = cat.plus(Catalogue.from_colours([gx], [gy], [gflux], [_GUIDE_COLOUR]))
    for (ox, oy), ratios, size in _PLANTED.get(night, ()):
        guide_flux = {f: gflux * filter_factor(f, _GUIDE_COLOUR) for f in FILTERS}
        cat = cat.plus(Catalogue(np.array([gx + ox]), np.array([gy + oy]),
                                 {f: np.array([ratios[f] * guide_flux[f]]) for f in FILTERS},
                                 np.array([float(size)])))
    return cat


# --------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class Detector:
    """What stays fixed to the detector through a night: pattern and hot pixels."""

    pattern: np.ndarray       # gradient + row banding, ADU (float32, SHAPE)
    hot_index: np.ndarray     # flat indices of hot pixels
    hot_value: np.ndarray     # their excess, ADU


@lru_cache(maxsize=8)
def _seed_box_mask(night: str, seed: int) -> np.ndarray:
    """Detector pixels that the seed's method reads in any frame of the night (with a margin).

    The generator keeps these pixels free of cosmic rays and hot pixels, so that the seed's
    method has the fair chance it had on the real data: the box around the guide star is clean.
    """
    plan = night_plan(night, seed)
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


@lru_cache(maxsize=8)
def detector(night: str, seed: int = DEFAULT_SEED) -> Detector:
    """The night's fixed pattern (a gradient plus row banding) and hot pixels."""
    plan = night_plan(night, seed)
    rng = _rng(seed, plan.index, _KEY_DETECTOR)
    ny, nx = SHAPE
    yy = (np.arange(ny) / (ny - 1) - 0.5)[:, None]
    xx = (np.arange(nx) / (nx - 1) - 0.5)[None, :]
    gx = rng.uniform(6.0, 14.0) * rng.choice([-1.0, 1.0])
    gy = rng.uniform(4.0, 10.0) * rng.choice([-1.0, 1.0])
    vignette = rng.uniform(3.0, 8.0)
    gradient = gx * xx + gy * yy - vignette * (xx**2 + yy**2)
    period = rng.uniform(19.0, 41.0)
    rows = (plan.banding * rng.normal(0.0, 1.0, ny)
            + 0.7 * plan.banding * np.sin(2 * np.pi * np.arange(ny) / period
                                          + rng.uniform(0, 2 * np.pi)))
    pattern = (gradient + rows[:, None]).astype(np.float32)
    idx = rng.choice(nx * ny, size=plan.n_hot, replace=False)
    value = np.exp(rng.uniform(np.log(150.0), np.log(40000.0), plan.n_hot))
    if plan.box_center is not None:
        keep = ~_seed_box_mask(night, seed).ravel()[idx]
        idx, value = idx[keep], value[keep]
    return Detector(pattern=pattern, hot_index=idx, hot_value=value)


# --------------------------------------------------------------------------- rendering
_STAMP_RADII = (4, 7, 11, 16)


def render_stars(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                 sigma_x: float, sigma_y: float) -> np.ndarray:
    """An image of Gaussian stars, each integrated over the pixels, added as small stamps.

    Parameters
    ----------
    shape : (ny, nx)
        Image shape.
    x, y : 1-D arrays
        Star positions, pixels (0-based, pixel centres at integers).
    flux : 1-D array
        Total flux of each star (image units).
    sigma_x, sigma_y : float
        Gaussian widths along x and y, pixels.

    Returns
    -------
    2-D float64 array of ``shape``. Stars whose stamp misses the image are skipped; stamps are
    cut at the image edges.
    """
    ny, nx = shape
    x, y, flux = (np.asarray(v, dtype=float).ravel() for v in (x, y, flux))
    out = np.zeros(ny * nx)
    if x.size == 0:
        return out.reshape(shape)
    smax = max(sigma_x, sigma_y)
    peak = flux / (2 * np.pi * sigma_x * sigma_y)
    # radius where the profile drops below 0.05 ADU
    need = smax * np.sqrt(2 * np.log(np.maximum(peak / 0.05, 1.0 + 1e-9)))
    done = np.zeros(x.size, bool)
    for radius in _STAMP_RADII:
        sel = ~done & ((need <= radius) | (radius == _STAMP_RADII[-1]))
        done |= sel
        sel &= (x > -radius - 1) & (x < nx + radius) & (y > -radius - 1) & (y < ny + radius)
        if not sel.any():
            continue
        xs, ys, fs = x[sel], y[sel], flux[sel]
        off = np.arange(-radius, radius + 1)
        cols = np.rint(xs).astype(int)[:, None] + off[None, :]
        rows = np.rint(ys).astype(int)[:, None] + off[None, :]
        gx = _pixel_integrated(cols, xs, sigma_x)
        gy = _pixel_integrated(rows, ys, sigma_y)
        stamps = fs[:, None, None] * gy[:, :, None] * gx[:, None, :]
        ok = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        flat = rows[:, :, None] * nx + cols[:, None, :]
        out += np.bincount(flat[ok], weights=stamps[ok], minlength=ny * nx)
    return out.reshape(shape)


def _pixel_integrated(pix: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    s = math.sqrt(2.0) * sigma
    c = centre[:, None]
    return 0.5 * (erf((pix + 0.5 - c) / s) - erf((pix - 0.5 - c) / s))


def _cosmic_rays(rng, exptime: float, forbidden: np.ndarray | None) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Flat indices and values of cosmic-ray hits: sharp, 1-3 px, a few to a few tens."""
    ny, nx = SHAPE
    n = int(rng.poisson(3.0 + 0.3 * exptime))
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


def frame_header(plan: NightPlan, frame: FramePlan | None, *, bias_index: int = 0) -> dict:
    """Header keywords of a light frame (or, with ``frame=None``, of bias frame ``bias_index``),
    in the style of the SBIG ST-7 on the Monash 11-inch telescope."""
    if frame is None:
        date = plan.date0 - timedelta(seconds=600 - 30 * bias_index)
        kind = {"PICTTYPE": 2, "IMAGETYP": "Bias Frame", "OBJECT": "Bias", "EXPTIME": 0.0}
    else:
        date = plan.date0 + timedelta(seconds=(frame.number - plan.number0) * plan.cadence)
        kind = {"PICTTYPE": 1, "IMAGETYP": "Light Frame",
                "OBJECT": "NGC 3201" if plan.field == "cluster" else "Sparse field",
                "FILTER": frame.filter, "EXPTIME": float(frame.exptime)}
    return {
        **kind,
        "DATE-OBS": date.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
        "TELESCOP": "Monash 11-inch",
        "INSTRUME": "SBIG ST-7",
        "XPIXSZ": 9.0,
        "YPIXSZ": 9.0,
        "XBINNING": 1,
        "YBINNING": 1,
        "FOCALLEN": 2800.0,
        "APTDIA": 280.0,
        "EGAIN": GAIN,
        "CCD-TEMP": -10.0,
        "BUNIT": "adu",
        "ORIGIN": "starshift.sample",
    }


def render_frame(night: str, index: int, seed: int = DEFAULT_SEED
                 ) -> tuple[np.ndarray, dict, dict]:
    """Render light frame ``index`` (file-name order) of a sample night, without disk I/O.

    Returns
    -------
    data : 2-D float32 array, shape (510, 765)
        The reduced frame in ADU.
    header : dict
        FITS keywords (see :func:`frame_header`).
    truth : dict
        ``file, dx, dy, bad, kind`` as in ``truth.csv``, plus ``fwhm`` (pixels).
    """
    plan = night_plan(night, seed)
    frame = plan.frames[index]
    rng = _rng(seed, plan.index, index)
    det = detector(night, seed)
    cat = night_catalogue(night, seed)
    ny, nx = SHAPE

    # observing conditions of this exposure
    fwhm = rng.uniform(*plan.fwhm_range)
    ell = rng.uniform(0.0, 0.08)
    sigma = fwhm / 2.3548
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
    else:
        parts = [(0.0, 1.0)]
    stars = np.zeros(SHAPE)
    for size in np.unique(cat.size):
        sel = cat.size == size
        for t, frac in parts:
            stars += render_stars(SHAPE, fx[sel] + t * jump[0], fy[sel] + t * jump[1],
                                  flux[sel] * frac, sx * size, sy * size)

    # photon noise on sky, stars and scattered light; read noise; the fixed pattern
    expected = sky + stars
    electrons = rng.poisson(np.maximum(expected, 0.0) * GAIN)
    data = electrons / GAIN + rng.normal(0.0, READ_NOISE / GAIN, SHAPE)
    data += det.pattern
    flat = data.reshape(-1)
    flat[det.hot_index] += det.hot_value * rng.uniform(0.97, 1.03, det.hot_index.size)
    forbidden = _seed_box_mask(night, seed) if plan.box_center is not None else None
    cr_idx, cr_val = _cosmic_rays(rng, frame.exptime, forbidden)
    np.add.at(flat, cr_idx, cr_val)
    np.minimum(data, SATURATION, out=data)

    truth = {C.FILE: frame.file, C.DX: frame.dx, C.DY: frame.dy, C.BAD: int(frame.bad),
             C.KIND: frame.kind, "fwhm": float(fwhm)}
    return data.astype(np.float32), frame_header(plan, frame), truth


def render_bias(night: str, index: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, dict]:
    """Bias frame ``index`` (0 or 1) of a night: bias level, read noise, banding, no stars."""
    plan = night_plan(night, seed)
    rng = _rng(seed, plan.index, _KEY_BIAS + index)
    det = detector(night, seed)
    banding = det.pattern.mean(axis=1, keepdims=True) - det.pattern.mean()  # rows only
    data = BIAS_LEVEL + rng.normal(0.0, READ_NOISE / GAIN, SHAPE) + banding
    return data.astype(np.float32), frame_header(plan, None, bias_index=index)


def bias_file_name(index: int) -> str:
    return f"Bias_{index + 1:04d}.fit"


# --------------------------------------------------------------------------- writing
def _fits_header(cards: dict) -> fits.Header:
    hdr = fits.Header()
    for key, value in cards.items():
        hdr[key] = (value, HEADER_COMMENTS.get(key, ""))
    return hdr


def generate_night(out_dir: str | os.PathLike, night: str, seed: int = DEFAULT_SEED,
                   progress: bool = False) -> Path:
    """Write one sample night under ``out_dir/<night>/``; returns the night directory."""
    from .io import write_frame, write_table

    plan = night_plan(night, seed)
    night_dir = Path(out_dir) / night
    night_dir.mkdir(parents=True, exist_ok=True)
    indices: Iterable[int] = range(len(plan.frames))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=night, unit="frame", leave=False)
    for i in indices:
        data, header, _ = render_frame(night, i, seed)
        write_frame(night_dir / plan.frames[i].file, data, _fits_header(header))
    for j in range(2):
        data, header = render_bias(night, j, seed)
        write_frame(night_dir / bias_file_name(j), data, _fits_header(header))
    write_table(truth_table(night, seed), night_dir / "truth.csv")
    log.info("%s: %d light frames, 2 bias frames, truth.csv", night_dir, len(plan.frames))
    return night_dir


def generate_sample(out_dir: str | os.PathLike, seed: int = DEFAULT_SEED,
                    nights: Sequence[str] | None = None, progress: bool = False) -> list[Path]:
    """Write the sample nights (default: all five) under ``out_dir/<night>/``.

    Parameters
    ----------
    out_dir : path
        Parent directory; created if needed.
    seed : int
        Random seed. The same seed gives byte-identical files on every run.
    nights : sequence of str, optional
        Night names (see :data:`ALL_NIGHTS`); default all five.
    progress : bool
        Show a tqdm progress bar per night.

    Returns
    -------
    list of Path
        The night directories, in the order generated.
    """
    names = list(ALL_NIGHTS if nights is None else nights)
    for night in names:
        _check_night(night)
    log.info("generating %d sample night(s) under %s (seed %d)", len(names), out_dir, seed)
    return [generate_night(out_dir, night, seed, progress) for night in names]
