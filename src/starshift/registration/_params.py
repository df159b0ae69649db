"""Parameters of the automatic shift estimator, as two validated, frozen dataclasses.

:class:`ReferenceParams`
    What :func:`~starshift.registration.prepare_reference` bakes into a
    :class:`~starshift.registration.PreparedReference`: the coarse images, the star catalogue,
    the saturation level and the noise model. Changing one of them means preparing the
    reference again.
:class:`FrameParams`
    The per-frame decisions of :func:`~starshift.registration.estimate_shift` (accepting the
    coarse match, searching and combining stars) and the choice of
    :func:`~starshift.registration.choose_reference`; they may change from one frame to the
    next. A prepared reference keeps the FrameParams it was prepared with as the default for
    its frames, and its catalogue uses two of them: stars are chosen isolated over
    ``search_radius`` and bright enough for ``match_threshold``.

Every field is a plain ``float``, ``int`` or ``bool``. Construction converts numeric values
of other types (numpy scalars, whole-number floats for an ``int``) and checks every value; a
wrong type raises :class:`TypeError`, a value out of range :class:`ValueError`, both naming the
parameter. :func:`resolve_params` applies keyword parameters (fields of either class) on top of
given instances: the keyword interface of the public functions.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = ["FrameParams", "ReferenceParams", "resolve_params"]

#: A value check: a predicate and what to say when it fails.
_Rule = tuple[Callable[[Any], bool], str]

_FINITE: _Rule = (math.isfinite, "must be a finite number")
_POSITIVE: _Rule = (lambda v: v > 0, "must be positive")
_AT_LEAST_ONE: _Rule = (lambda v: v >= 1, "must be at least 1")


def _non_negative(zero_means: str) -> _Rule:
    return (lambda v: 0 <= v < math.inf, f"use 0 ({zero_means}) or a positive number")


def _coerce(name: str, kind: type, value: Any) -> Any:
    """``value`` as a plain ``kind`` (bool, int or float), or TypeError naming ``name``."""
    if kind is bool:
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{name}={value!r}: expected a bool")
        return bool(value)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r}: expected {'an int' if kind is int else 'a number'}")
    if kind is int:
        if not (isinstance(value, numbers.Integral)
                or (math.isfinite(value) and value == int(value))):
            raise TypeError(f"{name}={value!r}: expected an int")
        return int(value)
    return float(value)


class _Validated:
    """Base of the parameter dataclasses: converts each field to its annotated type, then
    checks it against the class's ``_RULES`` (field name -> predicate and explanation)."""

    _RULES: ClassVar[Mapping[str, _Rule]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _coerce(f.name, f.type, getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # frozen: set once, here
            rule = self._RULES.get(f.name)
            if rule is not None and not rule[0](value):
                raise ValueError(f"{f.name}={value!r}: {rule[1]}")


@dataclass(frozen=True)
class ReferenceParams(_Validated):
    """Parameters that shape a prepared reference (see the module docstring).

    Attributes
    ----------
    max_shift_fraction : float
        Largest shift searched, as a fraction of the frame size on each axis, in (0, 0.9].
    coarse_bin : int
        Binning factor of the coarse correlation; 0 picks the smallest power of 2 that brings
        the long side to at most 256 px while the short side keeps 64 px or more (at least 2
        when the short side has 128 px or more): 4 for a 765 x 510 frame.
    background_box : int
        Side (pixels) of the blocks of the median background mesh that removes smooth,
        non-separable background before correlating; 0 disables the mesh.
    highpass_scale : float
        Structures larger than about this (pixels) are damped in the correlation (Gaussian
        high-pass in Fourier space); 0 disables it.
    coarse_threshold : float
        Pixels below this many noise sigmas (after binning) are ignored by the correlation.
    coarse_clip : float
        Pixel values are capped at this many noise sigmas above the threshold (saturated cores
        weigh no more than other bright stars).
    suppress_hot_pixels : bool
        Erode away structures without a 2 x 2 core (hot pixels, cosmic rays) before
        correlating (2 x 2 block minimum; a sliding one for an odd ``coarse_bin``), and
        despike the star cutouts.
    remove_banding : bool
        Subtract robust row and column medians (fixed patterns, banding, gradients): from the
        binned image for the correlation, from the star cutouts for the centroids.
    n_stars : int
        Largest number of reference stars used in the fine step (brightest first).
    detect_threshold : float
        Peak signal-to-noise a catalogue star needs in the reference smoothed for detection:
        by a 1 px Gaussian, or, for broad stars (FWHM 5 px or more) and when that finds too few
        stars, by a Gaussian matched to the stars' FWHM.
    isolation : float
        A catalogue star has no other source brighter than ``blend_ratio`` times its peak within
        this many FWHM.
    blend_ratio : float
        See ``isolation``.
    saturation : float
        Saturation level (data units); 0 detects it (the frame maximum when several pixels sit
        at it). Stars peaking above ``saturation_fraction`` of it are not used.
    saturation_fraction : float
        See ``saturation`` (keeps stars out of the non-linear regime).
    fwhm : float
        Star FWHM in pixels; 0 measures it on the reference.
    gain : float
        Detector gain (e-/ADU) of the Poisson part of the per-star noise model; 0 leaves it
        out. With 8 or more stars its scale is fitted, so it only needs to be roughly right.
        A reference whose pixel noise is below 1/sqrt(12) (the rounding of whole ADU) is not
        in ADU (scaled to 0-1, or a mean of many frames): its sky's level over its variance
        is used instead, in the data's units.
    """

    max_shift_fraction: float = 0.4
    coarse_bin: int = 0
    background_box: int = 32
    highpass_scale: float = 40.0
    coarse_threshold: float = 2.0
    coarse_clip: float = 10.0
    suppress_hot_pixels: bool = True
    remove_banding: bool = True
    n_stars: int = 40
    detect_threshold: float = 6.0
    isolation: float = 3.0
    blend_ratio: float = 0.1
    saturation: float = 0.0
    saturation_fraction: float = 0.9
    fwhm: float = 0.0
    gain: float = 1.0

    _RULES: ClassVar[Mapping[str, _Rule]] = {
        "max_shift_fraction": (lambda v: 0 < v <= 0.9, "use a value in (0, 0.9]"),
        "coarse_bin": _non_negative("automatic"),
        "background_box": _non_negative("no background mesh"),
        "highpass_scale": _non_negative("no high-pass filter"),
        "coarse_threshold": _FINITE,
        "coarse_clip": (lambda v: 0 < v < math.inf, "must be a positive number of sigmas"),
        "n_stars": _AT_LEAST_ONE,
        "detect_threshold": _FINITE,
        "isolation": _non_negative("no isolation needed"),
        "blend_ratio": _non_negative("no neighbour allowed"),
        "saturation": (lambda v: v >= 0, "use 0 (detect it) or the level in data units"),
        "saturation_fraction": _POSITIVE,
        "fwhm": _non_negative("measure it"),
        "gain": _non_negative("no Poisson noise term"),
    }


@dataclass(frozen=True)
class FrameParams(_Validated):
    """Per-frame parameters (see the module docstring).

    Attributes
    ----------
    min_significance : float
        The correlation peak must exceed the mean of the correlation surface by this many of its
        standard deviations, else the frame is reported failed (no overlap / nothing to match).
    min_similarity : float
        Smallest normalised cross-correlation of the cleaned images over their overlap at the
        chosen shift (1 = identical; unrelated fields give ~0.05-0.25, true matches on the
        sample nights 0.69-0.97), else the frame is reported failed.
    detect_flip : bool
        When the frame does not match as it is (or only weakly, similarity below 0.5), try it
        rotated by 180 deg (``np.rot90(frame, 2)``: a German-equatorial mount's meridian flip);
        if that matches (clearly better), the estimate is of the rotated frame, with
        ``flipped=True``. Frames that match normally cost nothing more.
    search_radius : float
        How far (pixels) from its coarse position a star is looked for; 0 picks
        ``max(4, coarse_bin)`` (the coarse shift is good to well under ``coarse_bin``).
    match_threshold : float
        A star's peak in the frame (3x3 box sum) must exceed this many noise sigmas.
    min_stars : int
        Fewest stars for the ``'stars'`` method; with fewer, the correlation fallback is used.
    clip_sigma : float
        Sigma-clipping threshold when combining per-star offsets.
    max_star_scatter : float
        If the per-star offsets scatter more than this (pixels, robust), the star matches are
        not trusted and the correlation fallback is used.
    sigma_floor : float
        Smallest systematic per-star centroid error (pixels), added in quadrature to the noise
        model; with 8 or more stars the floor actually used is fitted to their scatter.
    refine : bool
        Run the star step; False returns the coarse shift refined to sub-pixel by the
        full-resolution correlation (the few-star fallback).
    ref_star_fraction : float
        :func:`~starshift.registration.choose_reference` picks the sharpest frame among those
        with at least this fraction of the largest star count, in [0, 1].
    """

    min_significance: float = 7.0
    min_similarity: float = 0.35
    detect_flip: bool = True
    search_radius: float = 0.0
    match_threshold: float = 5.0
    min_stars: int = 3
    clip_sigma: float = 3.0
    max_star_scatter: float = 1.0
    sigma_floor: float = 0.003
    refine: bool = True
    ref_star_fraction: float = 0.7

    _RULES: ClassVar[Mapping[str, _Rule]] = {
        "min_significance": _FINITE,
        "min_similarity": _FINITE,
        "search_radius": _non_negative("automatic"),
        "match_threshold": _FINITE,
        "min_stars": _AT_LEAST_ONE,
        "clip_sigma": _POSITIVE,
        "max_star_scatter": _POSITIVE,
        "sigma_floor": _non_negative("no floor"),
        "ref_star_fraction": (lambda v: 0 <= v <= 1, "use a fraction in [0, 1]"),
    }


REFERENCE_KEYS = tuple(f.name for f in dataclasses.fields(ReferenceParams))
FRAME_KEYS = tuple(f.name for f in dataclasses.fields(FrameParams))


def _instance(value: Any, cls: type, name: str) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__} or None, got {type(value).__name__}")
    return value


def split_keywords(kw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword parameters split into ReferenceParams and FrameParams fields.

    Raises
    ------
    TypeError
        For a name that is a field of neither, listing the valid ones.
    """
    unknown = sorted(set(kw) - set(REFERENCE_KEYS) - set(FRAME_KEYS))
    if unknown:
        raise TypeError(f"unknown parameter(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(REFERENCE_KEYS + FRAME_KEYS)}")
    return ({k: v for k, v in kw.items() if k in REFERENCE_KEYS},
            {k: v for k, v in kw.items() if k in FRAME_KEYS})


def resolve_params(params: ReferenceParams | None, frame_params: FrameParams | None,
                   kw: Mapping[str, Any]) -> tuple[ReferenceParams, FrameParams]:
    """``params`` and ``frame_params`` (defaults when None) with the keywords ``kw`` applied.

    ``kw`` may name fields of either class; the results are validated.
    """
    ref = _instance(params, ReferenceParams, "params")
    frame = _instance(frame_params, FrameParams, "frame_params")
    ref_kw, frame_kw = split_keywords(kw)
    return (dataclasses.replace(ref, **ref_kw) if ref_kw else ref,
            dataclasses.replace(frame, **frame_kw) if frame_kw else frame)
