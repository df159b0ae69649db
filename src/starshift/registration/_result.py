"""What :func:`~starshift.registration.estimate_shift` returns.

:class:`ShiftEstimate` is the shift of one frame, its uncertainty and how it was found;
:class:`StarMatches`, attached to estimates of the ``'stars'`` method, lists the stars behind
it (positions in both images, fluxes, which survived clipping), for per-frame quality metrics
such as the transparency (``flux / ref_flux``) or a rotation and scale fitted to ``(ref_x,
ref_y)`` against ``(x, y)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class StarMatches:
    """The reference stars found in a frame by the fine step, one entry per star.

    The stars listed are those measured in both images that entered the combination;
    ``used`` marks the ones that survived sigma clipping and make the estimate. Arrays are
    read-only copies.

    Attributes
    ----------
    ref_x, ref_y : ndarray of float
        Centroids in the reference, in the reference's pixel coordinates.
    x, y : ndarray of float
        Centroids of the same stars in the frame, in the frame's pixel coordinates (the array
        as passed to :func:`~starshift.registration.estimate_shift`, or ``np.rot90(frame, 2)``
        when the estimate is ``flipped``). Both are 0-based, x first (the column), pixel
        centres at integers: ``ref_x - x`` is each star's ``dx``.
    ref_flux, flux : ndarray of float
        Each star's flux above its local background in the reference and in the frame, in the
        images' data units: the sum of the background-subtracted pixels weighted by the
        centroid's circular Gaussian window (peak weight 1, sigma ``FWHM / 2 sqrt(2 ln 2)`` of
        the reference's FWHM, at least 0.6 px), centred on the centroid. The same window is used
        in both images, so ``flux / ref_flux`` is the frame's transparency relative to the
        reference (for equal seeing; a wider PSF lowers it).
    used : ndarray of bool
        True for the stars that survived sigma clipping.
    """

    ref_x: np.ndarray
    ref_y: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ref_flux: np.ndarray
    flux: np.ndarray
    used: np.ndarray

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            a = np.array(getattr(self, f.name), dtype=bool if f.name == "used" else np.float64)
            if a.ndim != 1 or a.shape != np.shape(self.ref_x):
                raise ValueError(f"StarMatches.{f.name}: expected a 1-D array like ref_x, got "
                                 f"shape {a.shape}")
            a.flags.writeable = False
            object.__setattr__(self, f.name, a)

    def __len__(self) -> int:
        return int(self.x.size)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StarMatches):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays(),
                                                        strict=True))

    def __hash__(self) -> int:
        return hash(tuple(a.tobytes() for a in self._arrays()))

    def __repr__(self) -> str:
        return f"StarMatches({len(self)} stars, {int(self.used.sum())} used)"


@dataclass(frozen=True)
class ShiftEstimate:
    """Result of :func:`~starshift.registration.estimate_shift`.

    Attributes
    ----------
    dx, dy : float
        Shift that moves the frame onto the reference (``reference - frame``), x first, pixels.
        ``nan`` when failed.
    sigma_dx, sigma_dy : float
        1-sigma uncertainties of ``dx`` and ``dy`` in pixels (``nan`` when failed); for the
        ``'stars'`` method, the stars' noise and the systematics they show (a changing PSF
        asymmetry, a field rotation or scale change; see :mod:`starshift.registration`).
    n_stars : int
        Number of stars used in the fine step (0 for correlation-only or failed).
    method : str
        ``'stars'``, ``'correlation'`` or ``'failed'``.
    ok : bool
        False when no shift could be estimated.
    reason : str
        ``''`` when ok, otherwise one short sentence saying why it failed.
    matches : StarMatches or None
        For the ``'stars'`` method, the stars behind the estimate; None otherwise.
    flipped : bool
        True when the frame only matched rotated by 180 deg (a German-equatorial mount's
        meridian flip): ``dx, dy`` then move ``np.rot90(frame, 2)`` onto the reference, and the
        ``matches`` positions ``x, y`` are in that rotated frame.
    """

    dx: float
    dy: float
    sigma_dx: float
    sigma_dy: float
    n_stars: int
    method: str
    ok: bool
    reason: str = ""
    matches: StarMatches | None = None
    flipped: bool = False


def _failed(reason: str) -> ShiftEstimate:
    """A failed estimate, saying why."""
    nan = float("nan")
    return ShiftEstimate(nan, nan, nan, nan, 0, "failed", False, reason)
