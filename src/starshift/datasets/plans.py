"""What a synthetic night holds: its frames, where each one points (the truth), its conditions.

Plans are plain frozen dataclasses, built without pixels; the night names, the default seed and
the random-number keys live here too, so every module draws from the same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..errors import StarshiftError
from .detector import ST7, Camera

#: the three nights copied from the real NGC 3201 nights of the seed analysis
SEED_NIGHTS = ("march_29_2018", "april_30_2018", "march_09_2018")
#: two harder nights for the automatic aligner
HARD_NIGHTS = ("drift_lowsnr", "crowded_jumps")
#: the default sample (what ``starshift sample`` and the DVC pipeline generate)
ALL_NIGHTS = SEED_NIGHTS + HARD_NIGHTS
#: test nights generated on demand only (``--nights``): frames that must be rejected, a faint
#: broad-PSF camera
EXTRA_NIGHTS = ("bad_frames", "faint_broad")
#: every night the generator knows, in the order that numbers their random sequences
KNOWN_NIGHTS = ALL_NIGHTS + EXTRA_NIGHTS
DEFAULT_SEED = 2018

# spawn keys (second and later entries of the SeedSequence) for things that are not frames
KEY_NIGHT = 100_000       # [seed, night, KEY_NIGHT]: the night's layout (offsets)
KEY_DETECTOR = 100_001    # [seed, night, KEY_DETECTOR]: hot pixels, fixed pattern
KEY_BIAS = 100_100        # [seed, night, KEY_BIAS + i]: bias frame i
KEY_SKY = 999             # [seed, KEY_SKY, k]: star field k (0 cluster, 1 sparse, 2 faint)


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """The generator of ``SeedSequence([seed, *key])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


def check_night(night: str) -> None:
    """Raise :class:`~starshift.errors.StarshiftError` unless ``night`` is a known night."""
    if night not in KNOWN_NIGHTS:
        raise StarshiftError(
            f"sample night {night!r} does not exist; choose from {', '.join(KNOWN_NIGHTS)}")


@dataclass(frozen=True)
class Telescope:
    """Header facts of the optics: ``TELESCOP``, ``FOCALLEN`` (mm), ``APTDIA`` (mm)."""

    name: str
    focal_length: float
    aperture: float


#: the Monash 11-inch telescope of the seed nights
MONASH_11 = Telescope("Monash 11-inch", 2800.0, 280.0)


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
    kind: str = "science"  # 'reference', 'science' or what is wrong with it
    bad: bool = False


@dataclass(frozen=True)
class NightPlan:
    """Layout of one night: its frames (in file-name order; the first is the reference),
    where the reference frame points on the sky, and the night's observing conditions."""

    name: str
    index: int
    frames: tuple[FramePlan, ...]
    field: str                              # 'cluster', 'sparse' or 'faint'
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
    camera: Camera = ST7
    telescope: Telescope = MONASH_11
    target: str = ""                        # OBJECT keyword (default from ``field``)
    truth_columns: tuple[str, ...] = ()     # FramePlan attributes added to truth.csv

    @property
    def shape(self) -> tuple[int, int]:
        """numpy shape of the night's frames."""
        return self.camera.shape
