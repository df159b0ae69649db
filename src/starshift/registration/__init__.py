"""Shift estimation between astronomical frames: the automatic method and the seed's box.

A shift ``(dx, dy)`` is what moves a frame onto the reference, ``reference - frame``, x first,
in pixels: a sky point at reference pixel ``(xr, yr)`` appears in the moving frame at
``(xr - dx, yr - dy)``. numpy's (y, x) order is used only inside this package.

Typical use, from a notebook::

    from starshift.registration import FrameParams, estimate_shift, prepare_reference

    prep = prepare_reference(frames[0])                 # once per night
    est = estimate_shift(prep, frames[7])               # est.dx, est.dy, est.sigma_dx, ...
    est = estimate_shift(prep, frames[8], min_stars=5)  # per-frame parameters as keywords
    est = estimate_shift(prep, frames[9], FrameParams(clip_sigma=4.0))  # or as a dataclass

Parameters are fields of :class:`ReferenceParams` (they shape the prepared reference) and
:class:`FrameParams` (per frame), passed as keywords or as the dataclasses; a
:class:`PreparedReference` remembers both, so an estimate needs at most new FrameParams. For
the ``'stars'`` method, :attr:`ShiftEstimate.matches` lists the stars behind the estimate
(:class:`StarMatches`: positions and fluxes in both images).

The seed's measurement, one star centroided in a search box (``method=box``), is
:func:`box_centroid` (:mod:`starshift.registration.box`).

The automatic method
--------------------
The estimate has two steps (:func:`estimate_shift`):

**Coarse.** Both images are reduced to small, cleaned images of what moves with the sky, then
cross-correlated with one small real FFT:

* hot pixels, their pairs and clusters, cosmic rays, bleed columns: the minimum of every
  non-overlapping 2 x 2 block (a grey erosion that also halves each axis in the one pass over
  the full-resolution pixels) removes anything without a bright 2 x 2 core; the result is then
  summed over blocks, to ``coarse_bin`` (4 for a 765 x 510 frame);
* row and column fixed patterns (banding, bias columns) and any additive-separable gradient:
  robust row, then column medians of the binned image are subtracted (banding is per row or
  column, so it survives binning as a per-binned-row or -column pattern);
* smooth non-separable background (vignetting, amplifier glow, a cluster's diffuse light) is
  removed with a mesh of block medians, and a [1, 2, 1] smoothing matches faint stars;
* each pixel becomes ``clip(value / noise - coarse_threshold, 0, coarse_clip)``: only
  significant signal counts, a saturated core weighs no more than any bright star, and weak
  fixed patterns cannot add up over the whole frame to pin the correlation at zero shift;
* satellite, aircraft and meteor trails (in one frame only, they would outweigh its stars):
  straight strips of signal at least ``STREAK_LENGTH`` coarse px long and
  ``STREAK_ELONGATION`` times longer than wide (``_coarse``), found by a Hough transform of
  each connected patch that large (none on ordinary frames), are zeroed one after the
  other, so crossing trails go too;
* a Gaussian high-pass (``highpass_scale``) in Fourier space damps what is left of the
  large-scale structure.

The correlation is zero-padded (no wrap-around), normalised by the square root of the overlap
area (uniform noise over lags, so large shifts are not penalised) and searched up to
``max_shift_fraction`` of the frame; for large frames it is computed on 2 x 2 sums of the
coarse images (a four times smaller FFT) and each peak taken is then refined on the coarse
images themselves, from their correlation at the lags around it (uphill, then parabolas).
When the highest peak does not clearly dominate, the best few peaks are compared by height
times the normalised cross-correlation (NCC) of the coarse images over their overlap. The
chosen peak must stand ``min_significance`` standard deviations above the correlation surface
and have an NCC of at least ``min_similarity``, else the frame is reported failed (no overlap,
nothing to match). The coarse shift is good to well under ``coarse_bin`` pixels (within 0.7 px
on the sample nights), and the star search below allows ``max(4, coarse_bin)``.

**Stars of any size.** The reference's sources are detected on the frame smoothed by a 1 px
Gaussian, which suits sharp stars; when the FWHM measured from them is 5 px or more, or they
give fewer than 10 usable stars, detection is repeated with a Gaussian matched to the stars'
FWHM (after a 2 x 2 grey opening that removes hot pixels and cosmic rays), its width from that
first estimate and refined once from what it finds: a broad star (a faint one, or a defocused
ring with a dark centre) is then one smooth peak, found well below a peak S/N of 5 per pixel
(its matched-filter S/N is ~7 times its peak S/N per pixel at FWHM 9 px). Everything
downstream follows the measured FWHM: the centroid window, the cutouts, the isolation radius
and, from FWHM 6 px, a box of about half the FWHM (not 3 x 3) to locate each star before
centroiding it.

**Fine.** The reference's brightest unsaturated, isolated, star-shaped sources (prepared once)
are looked for within ``search_radius`` of where the coarse shift puts them, in cutouts from
which the frame's row and column patterns (robust medians at full resolution, from a subsample
of its pixels) are subtracted; each is centroided with iterative Gaussian-windowed moments (2-D
Newton steps; no PSF model, unbiased for any symmetric PSF) on a background-subtracted,
despiked cutout, all stars at once. Each star's error is propagated from the pixel noise in
both images, in two parts: local background noise and the star's own Poisson noise (through
``gain``). After sigma clipping, the offsets are averaged with weights from a fitted error
model, ``variance = b^2 background + q^2 Poisson + f^2`` with ``b``, ``q`` (weak priors around
1) and the floor ``f >= sigma_floor`` fitted to the stars' scatter by restricted maximum
likelihood; so the uncertainty of the mean stays honest when the gain is unknown or the noise
model is off. With fewer than ``min_stars`` usable stars the coarse peak is refined on the
full-resolution frame by direct correlation with stamps of the reference's sources (3-point
Gaussian peak interpolation), with an uncertainty propagated from the pixel noise of both
images.

**Systematics.** Two things make the shift of a pair of real frames less well defined than
the stars' noise says, and the ``'stars'`` uncertainty includes both, in quadrature, when the
stars show them significantly (else they add nothing):

* a PSF whose asymmetry changes between the images (coma, tracking, focus, a core
  undersampled by the pixels): every centroid definition then gives another shift. The stars
  are centroided again with a window twice as wide; half the significant mean change of their
  offsets is added.
* a field rotation or scale change: the offsets vary linearly over the field, and their mean is
  the shift at the stars' mean position, not at the frame's centre. A similarity transform is
  fitted to the offsets; when its rotation/scale is significant (3 sigma), the difference
  between the shift at the centre and at the stars' mean position, and the field's spread over
  the stars divided by their effective number, are added.

**Meridian flip.** A frame that does not match (or matches only weakly, similarity below
0.5) is tried rotated by 180 deg, an exact pixel permutation (``detect_flip``); if that matches
clearly better, the estimate is that of ``np.rot90(frame, 2)``, with ``flipped=True``. Frames
that match normally cost nothing more.

Everything expensive about the reference is done once by :func:`prepare_reference`. Per frame,
the full-resolution pixels are read by one pass (the 2 x 2 minimum) and a subsample (the row
and column medians); the rest is one small FFT pair and array arithmetic on a few dozen small
cutouts (~2-3 ms for a 765 x 510 frame on one core). The frame is used as given, without a
copy: a non-finite pixel where it would matter (a NaN anywhere, or inside a star's cutout)
sends the estimate to a float32 copy with those pixels masked, as if they had been seen first.

Modules
-------
``_params``: the parameter dataclasses. ``_clean``: input checks and image cleaning (banding,
2 x 2 minima, binning, background mesh, saturation). ``_coarse``: the coarse correlation.
``_sources``: source detection (1 px or matched filter), FWHM and the reference's catalogue.
``_centroid``: cutouts and windowed centroids (normal and wide window). ``_combine``:
combination of the per-star offsets, the error-model fit and the systematics.
``_template``: the few-star fallback (full-resolution correlation with source stamps).
``_reference``: the entry points. ``_result``: the result types. ``box``: the seed's box.
"""

from ._clean import MIN_SIZE
from ._params import FrameParams, ReferenceParams
from ._reference import PreparedReference, choose_reference, estimate_shift, prepare_reference
from ._result import ShiftEstimate, StarMatches
from .box import CentroidFailed, InvalidBox, box_centroid, box_slices

__all__ = [
    "MIN_SIZE",
    "CentroidFailed",
    "FrameParams",
    "InvalidBox",
    "PreparedReference",
    "ReferenceParams",
    "ShiftEstimate",
    "StarMatches",
    "box_centroid",
    "box_slices",
    "choose_reference",
    "estimate_shift",
    "prepare_reference",
]
