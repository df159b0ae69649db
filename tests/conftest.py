"""Shared test helpers: tiny synthetic frames with stars at known positions."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from starshift._stats import FWHM_PER_SIGMA
from starshift.datasets import render_stars


def trail(shape, x0, y0, angle, amp, width=1.3):
    """A satellite or aircraft trail: a straight line through (x0, y0) at ``angle`` (rad) with
    a Gaussian profile of ``width`` px (sigma) and peak ``amp`` ADU, across the whole frame."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    d = -(xx - x0) * np.sin(angle) + (yy - y0) * np.cos(angle)
    return amp * np.exp(-0.5 * (d / width) ** 2)


def gaussian_frame(shape=(120, 160), stars=((80.0, 60.0, 20000.0),), fwhm=4.0, sky=100.0,
                   noise=3.0, seed=0):
    """A frame with Gaussian stars (x, y, total flux) on a flat sky plus Gaussian noise.

    The stars are those of the synthetic nights (:func:`starshift.datasets.render_stars`:
    integrated over the pixels), so every test draws stars the same way.
    """
    rng = np.random.default_rng(seed)
    x, y, flux = (np.array([star[i] for star in stars], dtype=float) for i in range(3))
    sigma = fwhm / FWHM_PER_SIGMA
    data = sky + render_stars(shape, x, y, flux, sigma, sigma)
    if noise:
        data += rng.normal(0, noise, shape)
    return data


def write_fits(path, data, **cards):
    hdr = fits.Header()
    for key, value in cards.items():
        hdr[key.upper()] = value
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=hdr).writeto(path)
    return path


#: a small night: the star drifts; truth is the shift onto the first frame (ref - frame)
NIGHT_SHIFTS = {"f01.fit": (0.0, 0.0), "f02.fit": (3.3, -2.2), "f03.fit": (-4.1, 1.6),
                "f04.fit": (6.2, 5.4)}
REF_STAR = (80.0, 60.0)


def tiny_sweep_conf(root, small_night):
    """A copy of the project's conf/ under ``root`` with a night ``tiny`` (the small night,
    box method) for sweeps; returns the conf directory."""
    import shutil
    from pathlib import Path

    conf = Path(root) / "conf"
    shutil.copytree(Path(__file__).resolve().parents[1] / "conf", conf)
    (conf / "night" / "tiny.yaml").write_text(
        f"input_dir: {small_night}\nmethod: box\ncentroid:\n  box_center: [80, 60]\n"
        "  box_size: 21\n")
    return conf


@pytest.fixture
def small_night(tmp_path):
    """Four light frames (PICTTYPE=1), one bias (PICTTYPE=2); truth in NIGHT_SHIFTS."""
    d = tmp_path / "night"
    d.mkdir()
    for i, (name, (dx, dy)) in enumerate(NIGHT_SHIFTS.items()):
        x, y = REF_STAR[0] - dx, REF_STAR[1] - dy
        data = gaussian_frame(stars=((x, y, 30000.0), (x - 45, y + 30, 8000.0)), seed=i)
        write_fits(d / name, data, picttype=1, imagetyp="Light Frame", filter="V", exptime=30.0)
    write_fits(d / "bias.fit", np.full((120, 160), 100.0), picttype=2, imagetyp="Bias Frame")
    return d


@pytest.fixture
def project(tmp_path, small_night, monkeypatch):
    """A copy of the project's conf/ with one more night, ``tiny`` (the small night, with the
    seed's box method), composed into params.yaml; the working directory is the project."""
    import shutil
    from pathlib import Path

    from starshift.pipeline.compose import add_night, compose

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "conf", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    add_night("tiny", str(small_night), "conf", method="box", box_center=[80, 60], box_size=21)
    compose("params.yaml", "conf", ["report.n_stars=2", "report.gif_size=32"])
    return tmp_path


def stage_paths(project, frames) -> dict:
    """Where the pipeline's stages put the night ``tiny``'s outputs in ``project``."""
    w = project / "data" / "tiny"
    return {"frames": frames, "shifts": w / "shifts.csv", "shifted": w / "shifted",
            "residuals": w / "residuals.csv", "diagnostics": w / "diagnostics.csv",
            "thresholds": w / "thresholds.csv", "compare": w / "box_vs_auto.csv",
            "report": project / "reports" / "tiny", "plots": project / "reports" / "plots" / "tiny",
            "metrics": project / "metrics" / "tiny.json", "stack": w / "stack",
            "index": project / "reports" / "index.md"}
