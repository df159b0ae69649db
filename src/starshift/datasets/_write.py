"""Writing nights to disk, through :mod:`starshift.io` (the only module that writes files)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

from astropy.io import fits

from .._progress import progress_bar
from ..executors import cores, ordered_map
from ..io import write_frame, write_table, write_text
from .extra import truth_readme
from .nights import bias_file_name, night_plan, render_bias, render_frame, truth_table
from .plans import ALL_NIGHTS, DEFAULT_SEED, check_night

log = logging.getLogger(__name__)

#: number of bias frames written with each night
N_BIAS = 2

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


def fits_header(cards: dict) -> fits.Header:
    """A FITS header holding ``cards`` (keyword -> value) in order, with their comments."""
    hdr = fits.Header()
    for key, value in cards.items():
        hdr[key] = (value, HEADER_COMMENTS.get(key, ""))
    return hdr


def generate_night(out_dir: str | os.PathLike, night: str, seed: int = DEFAULT_SEED,
                   progress: bool = False) -> Path:
    """Write one night under ``out_dir/<night>/``: its light frames, bias frames, truth.csv
    (and, for the test nights, a README.md saying what the truth means).

    Parameters
    ----------
    out_dir : path
        Parent directory; the night's directory is created if needed.
    night : str
        Night name (any of :data:`~starshift.datasets.KNOWN_NIGHTS`).
    seed : int
        Random seed.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Path
        The night directory.
    """
    plan = night_plan(night, seed)
    night_dir = Path(out_dir) / night
    night_dir.mkdir(parents=True, exist_ok=True)
    indices: Iterable[int] = range(len(plan.frames))
    # frames are rendered side by side (each has its own random numbers: the same bytes),
    # and written here, in order
    rendered = ordered_map(partial(_render, night, seed), indices,
                           jobs=min(cores(), len(plan.frames)))
    rendered = progress_bar(rendered, progress, total=len(plan.frames), desc=night,
                            unit="frame", leave=False)
    for i, (data, header) in enumerate(rendered):
        write_frame(night_dir / plan.frames[i].file, data, fits_header(header))
    for j in range(N_BIAS):
        data, header = render_bias(night, j, seed)
        write_frame(night_dir / bias_file_name(j), data, fits_header(header))
    write_table(truth_table(night, seed), night_dir / "truth.csv")
    readme = truth_readme(night)
    if readme is not None:  # the test nights say what their truth means
        write_text(night_dir / "README.md", readme)
    log.info("%s: %d light frames, %d bias frames, truth.csv", night_dir, len(plan.frames),
             N_BIAS)
    return night_dir


def _render(night: str, seed: int, index: int) -> tuple:
    data, header, _ = render_frame(night, index, seed)
    return data, header


def generate_sample(out_dir: str | os.PathLike, seed: int = DEFAULT_SEED,
                    nights: Sequence[str] | None = None, progress: bool = False) -> list[Path]:
    """Write the sample nights (default: the five of :data:`ALL_NIGHTS`) under
    ``out_dir/<night>/``.

    Parameters
    ----------
    out_dir : path
        Parent directory; created if needed.
    seed : int
        Random seed. The same seed gives byte-identical files on every run.
    nights : sequence of str, optional
        Night names (see :data:`~starshift.datasets.KNOWN_NIGHTS`: the default five and the
        extra test nights); default the five of :data:`ALL_NIGHTS`.
    progress : bool
        Show a tqdm progress bar per night.

    Returns
    -------
    list of Path
        The night directories, in the order generated.

    Raises
    ------
    StarshiftError
        If a night does not exist (before anything is written).
    """
    names = list(ALL_NIGHTS if nights is None else nights)
    for night in names:
        check_night(night)
    log.info("generating %d sample night(s) under %s (seed %d)", len(names), out_dir, seed)
    return [generate_night(out_dir, night, seed, progress) for night in names]
