"""The sky: filters, star catalogues (positions in sky pixels, fluxes per filter) and sky levels.

A catalogue's coordinates are "sky pixels": a frame pointing at origin ``(ox, oy)`` with true
shift ``(dx, dy)`` shows a catalogue object at ``(x - ox - dx, y - oy - dy)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .plans import DEFAULT_SEED, KEY_SKY, rng_for

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
        """The objects where ``keep`` is true."""
        return Catalogue(self.x[keep], self.y[keep], {f: v[keep] for f, v in self.flux.items()},
                         self.size[keep])

    def plus(self, other: Catalogue) -> Catalogue:
        """This catalogue's objects followed by ``other``'s (same filters)."""
        return Catalogue(np.append(self.x, other.x), np.append(self.y, other.y),
                         {f: np.append(v, other.flux[f]) for f, v in self.flux.items()},
                         np.append(self.size, other.size))


def power_law_fluxes(rng: np.random.Generator, n: int, fmin: float, fmax: float,
                     slope: float) -> np.ndarray:
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
    rng = rng_for(seed, KEY_SKY, 0)
    n_cl, a = 1100, 45.0
    # projected Plummer radius: r = a * sqrt(u / (1 - u)) for u uniform
    u = rng.uniform(0.0, 0.985, n_cl)
    r = a * np.sqrt(u / (1.0 - u))
    phi = rng.uniform(0.0, 2 * np.pi, n_cl)
    xc, yc = r * np.cos(phi), r * np.sin(phi)
    fc = power_law_fluxes(rng, n_cl, 2.5, 2.5e5, 0.65)
    cc = rng.normal(0.85, 0.25, n_cl)
    n_f = 450
    xf = rng.uniform(-800.0, 800.0, n_f)
    yf = rng.uniform(-550.0, 550.0, n_f)
    ff = power_law_fluxes(rng, n_f, 2.5, 1.0e5, 0.6)
    cf = rng.normal(0.7, 0.35, n_f)
    return Catalogue.from_colours(np.concatenate([xc, xf]), np.concatenate([yc, yf]),
                                  np.concatenate([fc, ff]), np.concatenate([cc, cf]))


@lru_cache(maxsize=4)
def sparse_catalogue(seed: int = DEFAULT_SEED) -> Catalogue:
    """A sparse field (no cluster) large enough for the drift night's whole path."""
    rng = rng_for(seed, KEY_SKY, 1)
    n = 330
    x = rng.uniform(-60.0, 1120.0, n)
    y = rng.uniform(-260.0, 560.0, n)
    f = power_law_fluxes(rng, n, 5.0, 4.0e3, 0.5)
    c = rng.normal(0.7, 0.35, n)
    return Catalogue.from_colours(x, y, f, c)
