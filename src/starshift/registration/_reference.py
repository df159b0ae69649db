"""The public entry points: prepare a reference, estimate a frame's shift, choose a reference.

:func:`prepare_reference` does everything expensive about the reference once
(:class:`PreparedReference`: coarse image and spectrum, star catalogue, saturation level,
fallback template); :func:`estimate_shift` runs the coarse step (and, for a frame that does not
match, the same on the frame rotated by 180 deg: a meridian flip), then the fine (star) step
with its systematics or the correlation fallback, on one frame; :func:`choose_reference` picks
the sharpest frame among those with the most stars. See :mod:`starshift.registration` for the
method.

Problems of the data (no overlap, nothing to match, no finite pixels) give a failed
:class:`ShiftEstimate` with a reason; problems of the call (wrong shapes or parameters) raise.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._stats import mad_sigma, sampled_median
from ._centroid import _measure, _wide_centroids
from ._clean import (
    _as_image,
    _banding,
    _checked,
    _finite,
    _frame_saturation,
    _NonFinite,
    _remove_banding,
    _saturation_level,
)
from ._coarse import (
    _Coarse,
    _coarse_image,
    _coarse_ref,
    _coarse_setup,
    _CoarseRef,
    _correlate,
    _Peak,
)
from ._combine import _combine, _field_systematic, _window_systematic
from ._params import REFERENCE_KEYS, FrameParams, ReferenceParams, resolve_params
from ._result import ShiftEstimate, StarMatches, _failed
from ._sources import _Catalogue, _catalogue, _detect, _geometry, _Sources, _star_like
from ._template import _make_template, _refine_correlation, _Template

log = logging.getLogger(__name__)


class PreparedReference:
    """A reference frame prepared once per night for :func:`estimate_shift`.

    Holds the reference's coarse image and filtered correlation spectrum, its star catalogue
    and the parameters it was prepared with. Build it with :func:`prepare_reference`; treat it
    as opaque.

    Attributes
    ----------
    shape : tuple of int
        (ny, nx) of the reference.
    params : ReferenceParams
        The parameters it was prepared with; every estimate against it uses them.
    frame_params : FrameParams
        The per-frame parameters it was prepared with: the default of :func:`estimate_shift`.
    fwhm : float
        Star FWHM used (pixels).
    saturation : float
        Saturation level of the reference (data units; ``inf`` when none was found).
    ok : bool
        False when the reference has nothing to match; ``reason`` then says why.
    n_catalogue : int
        Number of catalogue stars for the fine step.
    star_positions : ndarray
        (n, 2) catalogue star positions (x, y) in reference pixels.
    """

    def __init__(self, shape: tuple[int, int], params: ReferenceParams,
                 frame_params: FrameParams, coarse: _Coarse, coarse_ref: _CoarseRef | None,
                 catalogue: _Catalogue, fwhm: float, saturation: float,
                 template: _Template | None, ok: bool = True, reason: str = "",
                 noise: ReferenceParams | None = None):
        self.shape = shape
        self.params = params
        self.frame_params = frame_params
        self._coarse = coarse
        self._cref = coarse_ref
        self._cat = catalogue
        self.fwhm = fwhm
        self.saturation = saturation
        self._template = template
        self.ok = ok
        self.reason = reason
        #: the parameters of the per-star noise model: ``params``, or with the gain the data's
        #: sky gives for data that cannot be in ADU (:func:`_noise_params`)
        self._noise = params if noise is None else noise

    @property
    def n_catalogue(self) -> int:
        """Number of catalogue stars for the fine step."""
        return int(self._cat.x.size)

    @property
    def star_positions(self) -> np.ndarray:
        """(n, 2) array of catalogue star positions (x, y) in reference pixels."""
        return np.column_stack([self._cat.x, self._cat.y])

    def __repr__(self) -> str:
        return (f"PreparedReference(shape={self.shape}, n_catalogue={self.n_catalogue}, "
                f"fwhm={self.fwhm:.2f}, bin={self._coarse.bin}, ok={self.ok})")


def prepare_reference(reference: np.ndarray, params: ReferenceParams | None = None,
                      frame_params: FrameParams | None = None, **kw: Any) -> PreparedReference:
    """Prepare a reference frame once for many calls of :func:`estimate_shift`.

    Parameters
    ----------
    reference : 2-D array
        The reference frame (any size of at least 16 x 16 px; NaNs allowed).
    params : ReferenceParams, optional
        The parameters that shape the prepared reference (defaults when None).
    frame_params : FrameParams, optional
        The per-frame parameters (defaults when None): kept as the default of
        :func:`estimate_shift` for this reference; the catalogue takes stars isolated over
        their ``search_radius`` and bright enough for their ``match_threshold``.
    **kw
        Any field of :class:`ReferenceParams` or :class:`FrameParams`, applied on top of
        ``params`` and ``frame_params``.

    Returns
    -------
    PreparedReference
        Opaque object to pass as ``reference`` to :func:`estimate_shift`. If the reference has
        nothing to match (blank, all NaN) it is still returned, with ``ok=False``, and every
        estimate against it fails with that reason.

    Raises
    ------
    ValueError, TypeError
        For a non-2-D or too-small array, or an unknown / ill-typed / out-of-range parameter.
    """
    p, fp = resolve_params(params, frame_params, kw)
    raw = np.asarray(reference)
    img, bad = _as_image(raw, "reference")
    coarse = _coarse_setup(img.shape, p)

    def unusable(reason: str) -> PreparedReference:
        return PreparedReference(img.shape, p, fp, coarse, None, _Catalogue.empty(),
                                 float("nan"), math.inf, None, False, reason)

    if bad is not None and bad.all():
        return unusable("the reference frame has no finite pixels")
    # the frame as given, for the stars' peaks and the template (``img`` is about to lose its
    # banding): the given array itself when ``img`` holds its float32 pixels unchanged,
    # read only, rather than a copy (a frame less at the peak: 104 MB on 26 MP)
    rawf = raw if bad is None and raw.dtype == np.float32 else img.copy()
    cimg, sigma, _ = _coarse_image(img, p, coarse, bad)
    if p.remove_banding:
        _remove_banding(img)
    if not sigma > 0 or not np.any(cimg > 0):
        return unusable("the reference frame is blank (no signal)")
    cref = _coarse_ref(cimg, coarse)
    noise_p = _noise_params(p, rawf, bad)
    cat, fwhm, sat, src = _catalogue(rawf, img, bad, noise_p, fp, coarse.bin)
    template = _make_template(src, rawf, fwhm, sat, noise_p)
    log.debug("reference %s: %d catalogue stars, FWHM %.2f px, bin %d", img.shape,
              cat.x.size, fwhm, coarse.bin)
    return PreparedReference(img.shape, p, fp, coarse, cref, cat, fwhm, sat, template,
                             noise=noise_p)


#: The standard deviation of rounding to whole numbers (1 / sqrt(12)): frames in ADU, whole
#: numbers as read out, are never less noisy than this.
ADU_QUANTUM = 1.0 / math.sqrt(12.0)


def _noise_params(p: ReferenceParams, img: np.ndarray, bad: np.ndarray | None
                  ) -> ReferenceParams:
    """``p``, or ``p`` with the gain the data's own sky gives when the reference's pixel noise
    is below :data:`ADU_QUANTUM`: such data is not in ADU (a calibrated frame scaled to 0-1,
    as Siril writes 32-bit frames, or a mean of many), and ``gain`` (e-/ADU) would put a
    Poisson variance in its units many times too large (0.26 px instead of 0.09 px on the
    real microobs night scaled to 0-1). The sky's level over its variance is the gain in the
    data's units had all the sky's noise been Poisson (the read noise and a pedestal make it
    a little high: the fit of the per-star errors scales the Poisson part within ~3x); with no
    positive sky (background subtracted) the Poisson part is left out (``gain=0``)."""
    if not p.gain > 0:
        return p
    noise = mad_sigma(img, bad=bad)
    if not noise < ADU_QUANTUM:
        return p
    v = img.ravel() if bad is None else img[~bad]
    level = sampled_median(v[:: max(v.size // 40000, 1)])
    gain = float(level / noise**2) if noise > 0 and level > 0 else 0.0
    log.debug("pixel noise %.3g < %.3f: not ADU; gain %.3g from the sky", noise, ADU_QUANTUM,
              gain)
    return dataclasses.replace(p, gain=gain)


def _resolve(reference: np.ndarray | PreparedReference, params: FrameParams | None,
             kw: dict[str, Any]) -> tuple[PreparedReference, FrameParams]:
    """The prepared reference and the per-frame parameters of one :func:`estimate_shift`."""
    if not isinstance(reference, PreparedReference):
        prep = prepare_reference(reference, frame_params=params, **kw)
        return prep, prep.frame_params
    base = reference.params
    p, fp = resolve_params(base, reference.frame_params if params is None else params, kw)
    changed = [k for k in REFERENCE_KEYS if getattr(p, k) != getattr(base, k)]
    if changed:
        raise ValueError(
            f"parameter(s) {', '.join(changed)} differ from those the reference was prepared "
            "with; prepare it again with them")
    return reference, fp


def estimate_shift(reference: np.ndarray | PreparedReference, moving: np.ndarray,
                   params: FrameParams | None = None, **kw: Any) -> ShiftEstimate:
    """Estimate the shift that moves ``moving`` onto ``reference``, automatically.

    Coarse FFT cross-correlation of cleaned, binned images finds offsets of any size up to
    ``max_shift_fraction`` of the frame; centroids of the reference's isolated bright stars then
    give the sub-pixel shift and its uncertainty (see :mod:`starshift.registration`).

    Parameters
    ----------
    reference : 2-D array or PreparedReference
        The reference frame, or the result of :func:`prepare_reference` (much faster when
        aligning many frames).
    moving : 2-D array
        The frame to align, same shape as the reference. NaNs are allowed. It is used as
        given, never modified.
    params : FrameParams, optional
        The per-frame parameters; None takes those the reference was prepared with (for an
        array reference, the defaults).
    **kw
        Any field of :class:`FrameParams`, applied on top of ``params``. Fields of
        :class:`ReferenceParams` are accepted too: with an array reference they prepare it;
        with a PreparedReference they must equal those it was prepared with (else
        ValueError), so one set of keywords serves both calls.

    Returns
    -------
    ShiftEstimate
        ``dx, dy`` (reference - frame, x first: a sky point at reference pixel ``(x, y)`` is at
        ``(x - dx, y - dy)`` in ``moving``), their 1-sigma uncertainties, the number of stars
        used, the method (``'stars'``, ``'correlation'`` or ``'failed'``) and, for ``'stars'``,
        the star matches. A frame that cannot be matched (no overlap, nothing to match, blank
        or non-finite) gives ``ok=False`` and a ``reason``. A frame that only matches rotated
        by 180 deg (with ``detect_flip``) gives ``flipped=True``, and ``dx, dy`` then move
        ``np.rot90(moving, 2)`` onto the reference.

    Raises
    ------
    ValueError, TypeError
        Programmer errors: arrays that are not 2-D or differ in shape, unknown, ill-typed or
        out-of-range parameters.
    """
    if not isinstance(reference, PreparedReference):
        ref_shape = np.shape(reference)
        if np.ndim(moving) == 2 and len(ref_shape) == 2 and ref_shape != np.shape(moving):
            raise ValueError(f"moving frame shape {np.shape(moving)} differs from the "
                             f"reference's {ref_shape}")
    prep, fp = _resolve(reference, params, kw)
    raw_in = _checked(moving, "moving")
    if raw_in.shape != prep.shape:
        raise ValueError(f"moving frame shape {raw_in.shape} differs from the reference's "
                         f"{prep.shape}")
    if not prep.ok:
        return _failed(prep.reason)
    with np.errstate(all="ignore"):
        try:
            # the frame as given (no copy): integer frames are finite, and a float frame's
            # non-finite pixels are caught where they would matter (_NonFinite)
            return _estimate(prep, fp, raw_in, raw_in, None, raw_in.dtype.kind == "f")
        except _NonFinite:  # a float32 copy with the non-finite pixels filled and masked
            img, bad = _as_image(raw_in, "moving")
            return _estimate(prep, fp, raw_in, img, bad, False)


#: A match whose similarity (NCC) is below this is doubtful enough to compare with the frame
#: rotated by 180 deg (true matches on the sample nights have 0.69-0.97, unrelated fields
#: 0.05-0.25): a nearly point-symmetric field (a cluster core) can match its own rotation
#: weakly, and the rotation is then taken if it matches clearly better
_FLIP_DOUBT = 0.5


def _estimate(prep: PreparedReference, fp: FrameParams, raw: np.ndarray, img: np.ndarray,
              bad: np.ndarray | None, unchecked: bool) -> ShiftEstimate:
    """The estimate proper, of the frame as it is or, after a meridian flip, rotated by 180 deg.

    ``img``: the frame, the caller's array itself (never modified), or a float32 copy with the
    ``bad`` (non-finite) pixels filled; ``raw``: the caller's array, for saturation. When
    ``unchecked`` (``img`` is the caller's float array), :class:`_NonFinite` is raised as soon
    as a non-finite pixel shows up anywhere it would be used.

    The frame rotated by 180 deg (``np.rot90(frame, 2)``) is only looked at when the frame
    fails to match as it is, or matches with a similarity below ``_FLIP_DOUBT``, and
    ``detect_flip`` is set: frames that match normally cost nothing more.
    """
    if bad is not None and bad.all():
        return _failed("the frame has no finite pixels")
    if bad is not None and bad.mean() > 0.9:
        return _failed("more than 90% of the frame's pixels are not finite")
    coarse = _coarse_match(prep, img, bad, unchecked)
    if coarse is None:
        return _failed("the frame is blank (no signal above the noise)")
    pk, core = coarse
    matched = _accepted(pk, fp)
    if fp.detect_flip and (not matched or pk.ncc < _FLIP_DOUBT):
        res = _flipped(prep, fp, raw, img, bad, unchecked, pk if matched else None)
        if res is not None:
            return res
    if not matched:
        return _failed(f"no match with the reference (correlation peak {pk.significance:.1f} "
                       f"sigma, similarity {pk.ncc:.2f}): no overlap or nothing to match")
    return _refined(prep, fp, raw, img, bad, unchecked, core, pk)


def _coarse_match(prep: PreparedReference, img: np.ndarray, bad: np.ndarray | None,
                  unchecked: bool) -> tuple[_Peak, np.ndarray | None] | None:
    """The coarse correlation peak of a frame and its 2 x 2 minimum image (see
    :func:`_estimate` for the arguments); None for a blank frame."""
    p = prep.params
    c = prep._coarse
    cimg, sigma, core = _coarse_image(img, p, c, bad)
    if not (sigma > 0 and cimg.max() > 0):
        if unchecked:  # perhaps NaN pixels: see with them masked
            raise _NonFinite
        return None
    pk = _correlate(prep._cref, cimg, c)
    if unchecked and not math.isfinite(pk.significance):
        raise _NonFinite  # NaN pixels reached the correlation
    log.debug("coarse shift (%.2f, %.2f), significance %.1f, ncc %.3f", pk.dx, pk.dy,
              pk.significance, pk.ncc)
    return pk, core


def _accepted(pk: _Peak, fp: FrameParams) -> bool:
    """Whether a coarse peak is a match: significant and similar enough."""
    return pk.significance >= fp.min_significance and pk.ncc >= fp.min_similarity


def _flipped(prep: PreparedReference, fp: FrameParams, raw: np.ndarray, img: np.ndarray,
             bad: np.ndarray | None, unchecked: bool, as_is: _Peak | None
             ) -> ShiftEstimate | None:
    """The estimate of the frame rotated by 180 deg (``flipped=True``), or None when the
    rotated frame does not match, or matches no better than the frame as it is (``as_is``:
    its accepted peak, None when it failed), or its fine step fails."""
    rot_img = np.ascontiguousarray(img[::-1, ::-1])  # np.rot90(img, 2), an exact permutation
    rot_raw = rot_img if raw is img else np.ascontiguousarray(raw[::-1, ::-1])
    rot_bad = None if bad is None else np.ascontiguousarray(bad[::-1, ::-1])
    coarse = _coarse_match(prep, rot_img, rot_bad, unchecked)
    if coarse is None:
        return None
    pk, core = coarse
    if not _accepted(pk, fp):
        return None
    # the rotation must match clearly better (height above the surface times similarity, as
    # candidate peaks are compared) than a doubtful match of the frame as it is
    if as_is is not None and pk.significance * pk.ncc < 2.0 * as_is.significance * as_is.ncc:
        return None
    log.debug("the frame matches rotated by 180 deg (meridian flip)")
    res = _refined(prep, fp, rot_raw, rot_img, rot_bad, unchecked, core, pk)
    return dataclasses.replace(res, flipped=True) if res.ok else None


def _refined(prep: PreparedReference, fp: FrameParams, raw: np.ndarray, img: np.ndarray,
             bad: np.ndarray | None, unchecked: bool, core: np.ndarray | None, pk: _Peak
             ) -> ShiftEstimate:
    """The sub-pixel estimate from an accepted coarse peak: the star step, or with too few
    stars the correlation fallback (see :func:`_estimate` for the arguments)."""
    p = prep.params
    dx0, dy0 = pk.dx, pk.dy
    # row and column patterns at full resolution: subtracted from each cutout, not the frame
    bands = _banding(img) if p.remove_banding else None
    if fp.refine and prep.n_catalogue > 0:
        res = _fine(prep, fp, raw, img, bands, bad, unchecked, core, dx0, dy0)
        if res is not None:
            return res
    if unchecked and not _finite(img):
        raise _NonFinite
    res = None
    if prep._template is not None:
        clean = np.array(img, dtype=np.float32)
        if bands is not None:
            clean -= bands[0][:, None]
            clean -= bands[1][None, :]
        res = _refine_correlation(prep._template, prep._noise, clean, dx0, dy0, bad)
    if res is not None:
        return res
    return _failed("could not refine the correlation peak (too little signal where the "
                   "reference has stars)")


def _fine(prep: PreparedReference, fp: FrameParams, raw: np.ndarray, img: np.ndarray,
          bands: tuple[np.ndarray, np.ndarray] | None, bad: np.ndarray | None,
          unchecked: bool, core: np.ndarray | None, dx0: float, dy0: float
          ) -> ShiftEstimate | None:
    """Star-centroid step; None when fewer than ``min_stars`` consistent stars."""
    p = prep._noise
    cat = prep._cat
    _, search, half = _geometry(prep.fwhm, fp.search_radius, prep._coarse.bin)
    ny, nx = img.shape
    px = cat.x - dx0
    py = cat.y - dy0
    ix = np.rint(px).astype(np.int64)
    iy = np.rint(py).astype(np.int64)
    inside = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    if np.count_nonzero(inside) < fp.min_stars:
        return None
    sel = np.nonzero(inside)[0]
    m = _measure(img, bands, raw, bad, px[sel], py[sel], prep.fwhm, search, half, p,
                 fp.match_threshold,
                 lambda peaks: _frame_saturation(raw, p, core, prep.saturation, unchecked, peaks),
                 unchecked)
    if np.count_nonzero(m.ok) < fp.min_stars:
        return None
    s = sel[m.ok]
    d = (cat.xy[s] - m.xy[m.ok]).T  # (axis, star)
    e2 = m.err[:, m.ok] ** 2  # (part, star, axis)
    m2 = cat.err2[:, :, s] + e2.transpose(2, 0, 1)  # (axis, part, star)
    comb = _combine(d, m2, fp)
    if comb is None:
        return None
    dx, dy, sdx, sdy, n, used = comb
    sys_x, sys_y = _systematics(prep, img, bands, unchecked, s[used], m.xy[m.ok][used],
                                d[:, used], m2[:, :, used], fp.sigma_floor)
    sdx, sdy = math.hypot(sdx, sys_x), math.hypot(sdy, sys_y)
    matches = StarMatches(ref_x=cat.x[s], ref_y=cat.y[s], x=m.x[m.ok], y=m.y[m.ok],
                          ref_flux=cat.flux[s], flux=m.flux[m.ok], used=used)
    return ShiftEstimate(dx, dy, sdx, sdy, n, "stars", True, "", matches)


def _systematics(prep: PreparedReference, img: np.ndarray,
                 bands: tuple[np.ndarray, np.ndarray] | None, unchecked: bool, idx: np.ndarray,
                 xy: np.ndarray, d: np.ndarray, m2: np.ndarray, floor: float) -> np.ndarray:
    """The systematic errors (x, y) of the stars' shift: how much it moves with the centroid's
    window (:func:`_window_systematic`: changing asymmetric PSFs) and how far a rotation or
    scale change of the field leaves it from the frame's shift at its centre
    (:func:`_field_systematic`), in quadrature.

    ``idx``: the catalogue stars used, ``xy`` their centroids in ``img`` (the frame, minus
    ``bands``), ``d`` their offsets (axis, star), ``m2`` their noise-model variances (axis,
    part, star), ``floor`` the smallest systematic per star.
    """
    cat = prep._cat
    wide, _ = _wide_centroids(img, bands, xy, prep.fwhm, unchecked)
    delta = ((cat.wide_xy[idx] - wide) - (cat.xy[idx] - xy)).T
    var = m2.sum(axis=1) + floor**2
    window = _window_systematic(delta, var)
    ny, nx = prep.shape
    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    field = _field_systematic(d, var, cat.xy[idx], centre)
    log.debug("systematics: window (%.4f, %.4f), field (%.4f, %.4f) px", *window, *field)
    return np.hypot(window, field)


def choose_reference(frames: Sequence[np.ndarray], params: ReferenceParams | None = None,
                     frame_params: FrameParams | None = None, **kw: Any) -> int:
    """Index of the best reference: the sharpest frame among those with the most stars.

    Stars (isolated-or-not sources with peak S/N above ``detect_threshold``, not saturated, not
    hot pixels) are counted in every frame; among frames with at least ``ref_star_fraction``
    of the largest count, the one with the smallest median FWHM is chosen.

    Parameters
    ----------
    frames : sequence of 2-D arrays
        The night's frames (same shape), iterated once in order: any object with ``len()``
        whose iteration reads each frame when it is reached keeps one in memory at a time.
    params : ReferenceParams, optional
        Source detection and saturation parameters (defaults when None).
    frame_params : FrameParams, optional
        For ``ref_star_fraction`` (defaults when None).
    **kw
        Any field of :class:`ReferenceParams` or :class:`FrameParams`, applied on top.

    Returns
    -------
    int
        Index into ``frames`` (0 if no frame has stars).

    Raises
    ------
    ValueError, TypeError
        For an empty sequence, frames that are not 2-D or differ in shape, or an unknown /
        ill-typed / out-of-range parameter.
    """
    p, fp = resolve_params(params, frame_params, kw)
    if len(frames) == 0:
        raise ValueError("choose_reference needs at least one frame")
    shape = None
    counts, fwhms = [], []
    for i, frame in enumerate(frames):
        img, bad = _as_image(frame, f"frames[{i}]")
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise ValueError(f"frames[{i}] has shape {img.shape}, frames[0] {shape}")
        if bad is not None and bad.all():
            counts.append(0)
            fwhms.append(math.inf)
            continue
        raw = img.copy()
        if p.remove_banding:
            _remove_banding(img)
        sat = _saturation_level(raw, p)

        def count(src: _Sources, fwhm: float, sat: float = sat) -> tuple[int, int]:
            good = ((src.snr >= p.detect_threshold) & _star_like(src, fwhm)
                    & (src.raw_peak < p.saturation_fraction * sat))
            n = int(np.count_nonzero(good))
            return n, n

        _, fwhm, n = _detect(raw, img, p, bad, sat, count)
        counts.append(n)
        fwhms.append(fwhm if n else math.inf)
        log.debug("frame %d: %d stars, FWHM %.2f", i, counts[-1], fwhms[-1])
    best = max(counts)
    if best == 0:
        return 0
    cand = [i for i, n in enumerate(counts) if n >= fp.ref_star_fraction * best]
    return min(cand, key=lambda i: (fwhms[i], -counts[i], i))
