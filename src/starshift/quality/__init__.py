"""Per-frame quality metrics and the night-relative rules that reject frames.

Everything here is a pure function on numpy arrays or a table (a pandas DataFrame, or the
pandas-free :class:`starshift._table.Table` of the align path): no I/O, no config.

**Metrics of one frame** (each a few milliseconds or less):

* :func:`star_shapes` -- median FWHM and elongation ``1 - b/a`` of the stars at known positions
  in an aligned frame (a tracking jump or wind shake doubles or trails them);
* :func:`similarity_fit` / :func:`affine_fit` -- the rotation, scale and translation that map the
  frame's matched star positions onto the reference's, sigma-clipped;
* :func:`corner_misalignment` -- the largest misalignment a pure shift leaves inside the frame
  when the frame is in fact rotated or scaled;
* :func:`transparency` -- the clipped median of ``flux / ref_flux`` over matched stars (clouds);
* :func:`sky_stats` -- the sky level and the sky noise.

**Rules of a night** (:func:`night_rules`): a frame is rejected when a metric is an outlier of
its own night (beyond the median of the frames it is compared with by ``k`` robust spreads, on
the bad side only, the spread floored so that ``k`` floors are the smallest deviation that
matters), or beyond a limit that physics gives (a residual or shift uncertainty in pixels, a
misaligned corner, trailed stars). Photometric metrics are compared within a filter and
exposure time. Limits are plain numbers in :class:`QualityLimits`; the thresholds used come back
with the decision, for a report.

Conventions
-----------
Positions are ``(x, y)`` pixel coordinates, x first (the column), pixel centres at integers. A
shift ``(dx, dy)`` moves a frame onto the reference: ``position_in_reference -
position_in_frame``. A fitted :class:`Transform` maps frame positions onto reference positions,
``ref = matrix @ frame + translation``; its ``rotation`` is positive when it turns the +x axis
towards +y, which is counter-clockwise on an image displayed with row 0 at the bottom (DS9,
matplotlib ``origin='lower'``), clockwise with row 0 at the top (``origin='upper'``). Fit a
frame that is aligned after a 180-degree flip (a meridian flip) in the flipped frame's
coordinates, or its rotation is 180 deg.

Modules
-------
``_shapes``
    :func:`star_shapes`.
``_geometry``
    :class:`Transform`, :func:`similarity_fit`, :func:`affine_fit`, :func:`corner_misalignment`.
``_photometry``
    :func:`transparency`, :func:`sky_stats`.
``_rules``
    :class:`QualityLimits`, :class:`NightDecision`, :func:`night_rules` and the legacy
    :func:`shape_rejection`.
``_robust``
    The iterative sigma clipping the metrics and the rules share.

Import the public names from here (``from starshift.quality import night_rules``); the
modules' layout is not part of the API.
"""

from __future__ import annotations

from .._stats import FWHM_PER_SIGMA as FWHM_PER_SIGMA  # importable from here, as before
from ._geometry import Transform, affine_fit, corner_misalignment, similarity_fit
from ._photometry import sky_stats, transparency
from ._rules import NightDecision, QualityLimits, night_rules, shape_rejection
from ._shapes import star_shapes

__all__ = [
    "NightDecision",
    "QualityLimits",
    "Transform",
    "affine_fit",
    "corner_misalignment",
    "night_rules",
    "shape_rejection",
    "similarity_fit",
    "sky_stats",
    "star_shapes",
    "transparency",
]
