"""starshift: align astronomical science frames so every star lands on the same pixel.

The algorithms are pure functions on numpy arrays (:mod:`starshift.registration`,
:mod:`starshift.shift`, :mod:`starshift.quality`); file I/O lives in
:mod:`starshift.io`; :mod:`starshift.stages` ties them together for the CLI, DVC and sweeps.

Sign convention everywhere: a shift ``(dx, dy)`` is what moves a frame onto the reference,
``position_in_reference - position_in_frame``, x first, in pixels.
"""

__version__ = "0.1.0"
