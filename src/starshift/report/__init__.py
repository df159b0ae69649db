"""Report building blocks: pure functions from arrays and tables to tables and image bytes.

Nothing here touches the disk; the report stage (:mod:`starshift.report.build`) writes what
these return through :mod:`starshift.io`. Heavy libraries (photutils, matplotlib, Pillow,
scipy) are imported inside the functions that need them, so importing this package stays
cheap. Images carry no timestamps or version metadata: the same input gives the same bytes.

- :mod:`.photometry` -- star selection on the reference, aperture photometry before and after
  shifting with each interpolation order, and a per-order summary.
- :mod:`.gif` -- the animated order-0 vs order-1 comparison (and the GIF canvas).
- :mod:`.blink` -- the blink GIF of a night's aligned frames, labelled with their status.
- :mod:`.stack` -- stacks of aligned frames (ccdproc's Combiner arithmetic, astropy's sigma
  clip), their FWHM beside the single frames'.
- :mod:`.quality_plot` -- every per-frame quality metric with the night's limits.
- :mod:`.plots` -- residual per frame, flux change per order, sweep summary (PNG bytes).
- :mod:`.stretch` -- the asinh display stretch and block means shared by the images.

The settings the report stage passes (``gif_size``, ``gif_scale``, ``gif_levels``,
``gif_max_frames``, ``blink_max_frames``, ``stack_method``) have their defaults in one place,
:class:`starshift.config.ReportConfig`; the builders take them as required arguments.
"""

from .blink import blink_gif, blink_selection
from .gif import comparison_layout, difference_limit, order_comparison_gif, shifted_cutout
from .photometry import (
    estimate_saturation,
    select_stars,
    shift_photometry,
    star_candidates,
    summarise_photometry,
)
from .plots import flux_change_plot, residual_figure, residual_plot, sweep_plot
from .quality_plot import quality_figure, quality_plot
from .stack import stack, stack_fwhm, stack_png
from .stretch import AsinhStretch, asinh_stretch, block_mean

__all__ = [
    "AsinhStretch",
    "asinh_stretch",
    "blink_gif",
    "blink_selection",
    "block_mean",
    "comparison_layout",
    "difference_limit",
    "estimate_saturation",
    "flux_change_plot",
    "order_comparison_gif",
    "quality_figure",
    "quality_plot",
    "residual_figure",
    "residual_plot",
    "select_stars",
    "shift_photometry",
    "shifted_cutout",
    "stack",
    "stack_fwhm",
    "stack_png",
    "star_candidates",
    "summarise_photometry",
    "sweep_plot",
]
