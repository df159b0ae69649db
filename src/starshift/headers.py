"""The header of a shifted frame: its WCS moved with the data, stale keywords gone, HISTORY.

Pure functions on :class:`astropy.io.fits.Header` (no disk): :func:`shifted_header` is what the
night loop writes into every aligned frame. No timestamps are written, so the same inputs give
the same header and reruns stay byte-identical.
"""

from __future__ import annotations

import logging

from astropy.io import fits

log = logging.getLogger(__name__)


#: Keywords that stop being true once the background is subtracted (display levels, the
#: camera's pedestal, data range): removed from a shifted frame's header.
STALE_AFTER_BACKGROUND = ("PEDESTAL", "CBLACK", "CWHITE", "DATAMIN", "DATAMAX")
#: Saturation keywords: moved down by the subtracted background.
SATURATION_KEYS = ("SATURATE", "SATLEVEL")
_WCS_SUFFIXES = ("", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def ascii_value(text: str) -> str:
    """``text`` as a FITS header card can hold it (non-ASCII characters escaped)."""
    return str(text).encode("ascii", "backslashreplace").decode("ascii")


def _flip_wcs(header: fits.Header, shape: tuple[int, int]) -> None:
    """Turn every WCS in ``header`` with a 180-degree rotation of the pixel grid.

    Pixel (x, y) (1-based, FITS) goes to (NAXIS1 + 1 - x, NAXIS2 + 1 - y): CRPIX is mirrored
    and the linear part (CD, PC, or CDELT without either) changes sign; SIP coefficients
    A_p_q, B_p_q (and the inverse AP, BP) pick up (-1)^(p+q+1).
    """
    n = (shape[1], shape[0])
    for a in _WCS_SUFFIXES:
        if f"CRPIX1{a}" not in header and f"CRPIX2{a}" not in header:
            continue
        for i in (1, 2):
            key = f"CRPIX{i}{a}"
            if key in header:
                _set_number(header, key, lambda v, i=i: n[i - 1] + 1 - v)
        linear = [f"{kind}{i}_{j}{a}" for kind in ("CD", "PC") for i in (1, 2) for j in (1, 2)]
        present = [k for k in linear if k in header]
        if not present:
            present = [f"CDELT{i}{a}" for i in (1, 2) if f"CDELT{i}{a}" in header]
        for k in present:
            _set_number(header, k, lambda v: -v)
    for key in list(header.keys()):
        parts = key.split("_")
        if len(parts) == 3 and parts[0] in ("A", "B", "AP", "BP") and parts[1].isdigit() \
                and parts[2].isdigit():
            sign = (-1) ** (int(parts[1]) + int(parts[2]) + 1)
            _set_number(header, key, lambda v, sign=sign: v * sign)


def _set_number(header: fits.Header, key: str, change) -> None:
    """``header[key] = change(its value)``; a value that is not a number is left, with a
    warning (a per-frame problem of the header, never a crash)."""
    try:
        header[key] = change(float(header[key]))
    except (TypeError, ValueError):
        log.warning("%s=%r is not a number: left as it was", key, header[key])


def _shift_wcs(header: fits.Header, dx: float, dy: float) -> None:
    """Move every WCS in ``header`` with data shifted by (dx, dy) px: CRPIX += shift."""
    for a in _WCS_SUFFIXES:
        for i, d in ((1, dx), (2, dy)):
            key = f"CRPIX{i}{a}"
            if key in header:
                _set_number(header, key, lambda v, d=d: v + d)


def shifted_header(header: fits.Header, shape: tuple[int, int], dx: float, dy: float, *,
                   flipped: bool = False, background: float = 0.0, order: int = 0,
                   reference: str = "", version: str = "") -> fits.Header:
    """The header of a frame rotated by 180 deg (if ``flipped``), shifted and background-
    subtracted: its WCS moved with the data, stale keywords removed, HISTORY of each step.

    ``header`` is not modified; ``shape`` is the data's (ny, nx). No timestamps are written,
    so the same inputs give the same header.
    """
    hdr = header.copy()
    tag = f"starshift {version}".strip()
    if flipped:
        _flip_wcs(hdr, shape)
        hdr.add_history(f"{tag}: rotated 180 deg (meridian flip), an exact pixel permutation")
    _shift_wcs(hdr, dx, dy)
    how = "whole pixels" if order == 0 else f"interpolation order {order}"
    hdr.add_history(f"{tag}: shifted by ({dx:+.4f}, {dy:+.4f}) px ({how}) onto "
                    f"{ascii_value(reference)}")
    if background:
        for key in STALE_AFTER_BACKGROUND:
            hdr.remove(key, ignore_missing=True, remove_all=True)
        for key in SATURATION_KEYS:
            if key in hdr:
                try:
                    hdr[key] = round(float(hdr[key]) - background, 6)
                except (TypeError, ValueError):
                    hdr.remove(key, remove_all=True)
        hdr.add_history(f"{tag}: median background {background:.6g} adu subtracted")
    return hdr
