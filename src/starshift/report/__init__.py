"""Report building blocks: pure functions from arrays and tables to tables and image bytes.

Nothing here touches the disk; the report stage (:mod:`starshift.report.build`) writes what
these return through :mod:`starshift.io`. Heavy libraries (photutils, matplotlib, Pillow)
are imported inside the functions that need them, so importing this package stays cheap.

- :mod:`.photometry` -- star selection on the reference, aperture photometry before and after
  shifting with each interpolation order, and a per-order summary.
- :mod:`.gif` -- the animated order-0 vs order-1 comparison.
- :mod:`.plots` -- residual per frame, flux change per order, sweep summary (PNG bytes).
"""

from .gif import order_comparison_gif, shifted_cutout
from .photometry import (
    estimate_saturation,
    select_stars,
    shift_photometry,
    star_candidates,
    summarise_photometry,
)
from .plots import flux_change_plot, residual_plot, sweep_plot

__all__ = [
    "estimate_saturation",
    "flux_change_plot",
    "order_comparison_gif",
    "residual_plot",
    "select_stars",
    "shift_photometry",
    "shifted_cutout",
    "star_candidates",
    "summarise_photometry",
    "sweep_plot",
]
