"""Synthetic nights with ground truth: the package's embedded default data.

Five nights make the default sample (:data:`ALL_NIGHTS`, what ``starshift sample`` and the DVC
pipeline generate), each written into ``<out_dir>/<night>/`` with its light frames, two bias
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

Two more *test nights* (:data:`EXTRA_NIGHTS`) are generated on demand only (``starshift sample
--nights bad_frames,faint_broad``), never by default: ``bad_frames`` (one frame of each way a
frame goes wrong, marked in truth.csv, and a meridian flip) and ``faint_broad`` (a faint,
broad-PSF 1392 x 1040 camera); see :mod:`starshift.datasets.extra`.

Every frame carries what real small-telescope frames carry: a PSF whose width changes from frame
to frame, Poisson and read noise, saturated bright stars, cosmic rays, hot pixels and a faint
pattern (gradient and row banding) fixed to the detector while the stars move. The hot pixels
and the pattern make a naive FFT (phase) cross-correlation of two raw frames peak at zero shift.

Everything is deterministic: each frame's random numbers come from
``SeedSequence([seed, night_index, frame_index])`` (and each night's layout from its own
sequence), so the same seed gives the same bytes, whichever nights are generated.

The pure functions (:func:`night_plan`, :func:`truth_table`, :func:`render_frame`,
:func:`render_stars`) build arrays and tables without touching the disk; :func:`generate_sample`
writes them through :mod:`starshift.io`.

Modules: :mod:`.plans` (night names, frame and night plans), :mod:`._seed` (the seed nights),
:mod:`.sky` (catalogues), :mod:`.detector` (camera), :mod:`.render` (stars),
:mod:`.nights` (everything by night name), :mod:`.extra` (the test nights), :mod:`._write`
(disk).
"""

from ._seed import SEED_BOXES, SEED_TABLE_COLUMNS, seed_file_name, seed_table
from ._write import generate_night, generate_sample
from .detector import (
    BIAS_LEVEL,
    GAIN,
    READ_NOISE,
    SATURATION,
    SHAPE,
    ST7,
    Camera,
    Detector,
)
from .extra import (
    BAD_FRAME_KINDS,
    ICX285,
    ST7_SUBFRAME,
    ExposurePlan,
    faint_catalogue,
    faint_snr,
    frame_positions,
)
from .nights import (
    bias_file_name,
    detector,
    frame_header,
    night_catalogue,
    night_plan,
    render_bias,
    render_frame,
    truth_table,
)
from .plans import (
    ALL_NIGHTS,
    DEFAULT_SEED,
    EXTRA_NIGHTS,
    HARD_NIGHTS,
    KNOWN_NIGHTS,
    SEED_NIGHTS,
    FramePlan,
    NightPlan,
)
from .render import render_field, render_stars
from .sky import FILTERS, THROUGHPUT, Catalogue, cluster_catalogue, filter_factor, sparse_catalogue

__all__ = [
    "ALL_NIGHTS",
    "BAD_FRAME_KINDS",
    "BIAS_LEVEL",
    "Camera",
    "Catalogue",
    "DEFAULT_SEED",
    "Detector",
    "EXTRA_NIGHTS",
    "ExposurePlan",
    "FILTERS",
    "FramePlan",
    "GAIN",
    "HARD_NIGHTS",
    "ICX285",
    "KNOWN_NIGHTS",
    "NightPlan",
    "READ_NOISE",
    "SATURATION",
    "SEED_BOXES",
    "SEED_NIGHTS",
    "SEED_TABLE_COLUMNS",
    "SHAPE",
    "ST7",
    "ST7_SUBFRAME",
    "THROUGHPUT",
    "bias_file_name",
    "cluster_catalogue",
    "detector",
    "faint_catalogue",
    "faint_snr",
    "filter_factor",
    "frame_header",
    "frame_positions",
    "generate_night",
    "generate_sample",
    "night_catalogue",
    "night_plan",
    "render_bias",
    "render_field",
    "render_frame",
    "render_stars",
    "seed_file_name",
    "seed_table",
    "sparse_catalogue",
    "truth_table",
]
