"""Progress bars (tqdm's): drawn on a terminal only, and tqdm imported only to draw one.

A bar redrawn with carriage returns is for a person watching a terminal; written into a log,
a CI job's output or a pipe it is noise. (A run without a bar also skips tqdm's import, about
10 ms after astropy's.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def on_terminal() -> bool:
    """Whether standard error is a terminal: where progress bars are drawn."""
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(items: Iterable, show: bool, **kw) -> Iterable:
    """``tqdm(items, **kw)`` when ``show``, else ``items`` itself."""
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, **kw)
