"""The blink GIF: a night's aligned frames, one after the other, as an astronomer blinks them.

Pure function: arrays in, GIF bytes out. When the frames are aligned, the stars stand still
while the frames blink; a frame that is off, trailed or doubled jumps out. Each whole frame is
reduced to about 500 px wide by area averaging (a block mean) and shown in one fixed asinh
stretch computed from the reference, so what changes from frame to frame is the data, not the
display. Each GIF frame carries the file name and status; rejected frames are labelled in red,
with their reason, and framed in red; failed frames (nothing to show) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import columns as C
from .gif import DIM, FG, Canvas, evenly_spaced, grey_index, palette, save_gif
from .stretch import asinh_stretch, block_mean

#: Width of the displayed frame, px (never enlarged).
BLINK_WIDTH = 510
#: Display time of a GIF frame, ms (3 frames per second).
BLINK_MS = 333
#: Grey levels of the frames: the sky of a whole frame is most of the GIF's bytes.
BLINK_LEVELS = 64
#: Grey levels spanned by one sky sigma of the (block-averaged) reference at the sky, and the
#: black point in sky sigmas *above* the sky: the sky's noise shows as a faint texture, and
#: stars, satellite trails or clouds stand out.
BLINK_NOISE_LEVELS = 1.0
BLINK_BLACK = -1.0
RED = (235, 60, 50)
_REDS = [tuple(int(round(22 + (c - 22) * f)) for c in RED) for f in (0.35, 0.6, 0.8, 1.0)]


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def blink_selection(candidates: Sequence[int], statuses: Sequence[str], max_frames: int | None,
                    reference: int | None = None) -> list[int]:
    """Which of the ``candidates`` (frame indices, night order) a blink of at most
    ``max_frames`` frames shows: the reference and every rejected frame first (they are what a
    person wants to look at), then the others at the centres of equal parts of the night; in
    night order."""
    cand = list(candidates)
    if max_frames is None or len(cand) <= max_frames:
        return cand
    must = [i for i in cand if i == reference or str(statuses[i]) == C.REJECTED]
    must = [must[k] for k in evenly_spaced(len(must), max_frames)]
    rest = [i for i in cand if i not in must]
    k = max_frames - len(must)  # the others at the centres of k equal parts of the night
    more = [rest[int((j + 0.5) * len(rest) / k)] for j in range(k)] if rest and k else []
    return sorted(must + more)


def blink_gif(frames: Sequence[np.ndarray | None], names: Sequence[str],
              statuses: Sequence[str], *, max_frames: int | None,
              reasons: Sequence[str] | None = None, reference: int = 0, title: str = "",
              width: int = BLINK_WIDTH, duration_ms: int = BLINK_MS,
              levels: int = BLINK_LEVELS, noise_levels: float = BLINK_NOISE_LEVELS,
              black: float = BLINK_BLACK) -> bytes:
    """Animated GIF of a night's aligned frames, labelled with name and status.

    Parameters
    ----------
    frames : sequence of 2-D arrays (or None)
        The aligned (shifted) frames of the night, in night order; ``None`` for a frame
        with nothing to show (a failed one).
    names, statuses : sequences of str
        File name and status (``kept``, ``rejected``, ``failed``) of each frame.
    max_frames : int or None
        At most this many GIF frames, spread evenly over the frames shown (the first and the
        last included); None shows all (``report.blink_max_frames`` in the report stage).
    reasons : sequence of str, optional
        Why a frame was rejected, written under its name.
    reference : int
        Index of the reference frame: the stretch is computed from it, and it is labelled.
    title : str
        Written in every GIF frame's header (e.g. the night).
    width : int
        Displayed width of a frame, px: frames are block-averaged down to it (never enlarged).
    duration_ms : int
        Display time of each GIF frame, milliseconds. The animation loops forever.
    levels : int
        Grey levels of the frames (2 to 250).
    noise_levels, black : float
        The asinh stretch (:func:`starshift.report.stretch.asinh_stretch`): grey levels of one
        sky sigma at the sky, and the black point in sky sigmas below the sky (negative:
        above it).

    Returns
    -------
    bytes
        The GIF, y up (as ds9). Failed frames (and ``None`` frames) are skipped.

    Raises
    ------
    ValueError
        When the lengths differ or no frame can be shown.
    """
    n = len(frames)
    if not len(names) == len(statuses) == n or (reasons is not None and len(reasons) != n):
        raise ValueError("blink_gif: frames, names, statuses (and reasons) differ in length")
    if not 2 <= int(levels) <= 250:
        raise ValueError(f"blink_gif: levels={levels}: use 2 to 250")
    shown = [i for i in range(n) if frames[i] is not None and str(statuses[i]) != C.FAILED]
    if not shown:
        raise ValueError("blink_gif: no frame to show (all failed)")
    ref_i = reference if 0 <= reference < n and frames[reference] is not None else shown[0]
    shown = blink_selection(shown, statuses, max_frames, ref_i)
    ref = block_mean(frames[ref_i], width)
    stretch = asinh_stretch(ref, hi=float(np.nanpercentile(ref, 99.95)),
                            noise_levels=noise_levels, below=black)
    h, w = ref.shape
    colors = palette(256 - len(_REDS), _REDS)
    n_grey, red = 256 - len(_REDS), 256 - 1
    pad, top, bottom = 10, 52, 22
    cw, ch = w + 2 * pad, top + h + bottom
    chars = max(20, int(w / 6.2))
    # one canvas for every frame: its three header lines and its frame change, the rest stays
    cv = Canvas(cw, ch, colors)
    name_t = cv.text(pad, 6, "", size=10, weight="bold")
    count_t = cv.text(cw - pad, 7, "", size=9, ha="right", color=DIM)
    label_t = cv.text(pad, 26, "", size=9)
    slot = cv.paste(pad, top, np.zeros((h, w), dtype=np.uint8))
    cv.text(pad, top + h + 5,
            f"aligned frames, block mean to {w} x {h} px; one asinh stretch from the "
            "reference; failed frames left out", size=7.5, color=DIM)
    cv.changing(name_t, count_t, label_t)
    head = f"{title}: " if title else ""
    images = []
    for k, i in enumerate(shown):
        data = block_mean(frames[i], width)
        if data.shape != (h, w):
            raise ValueError(f"blink_gif: {names[i]} has another shape than the reference")
        status = str(statuses[i])
        cv.retext(name_t, _fit(f"{head}{names[i]}", chars - 12))
        cv.retext(count_t, f"{k + 1}/{len(shown)}")
        is_rej = status == C.REJECTED
        why = str(reasons[i]) if reasons is not None and isinstance(reasons[i], str) else ""
        label = status + (" (reference)" if i == ref_i else "") + (f": {why}" if why else "")
        cv.retext(label_t, _fit(label, chars), color=RED if is_rej else FG,
                  weight="bold" if is_rej else "normal")
        tile = grey_index(stretch(data)[::-1], levels, n_grey)  # y up
        if is_rej:  # a red frame around a rejected frame
            tile[:3, :] = tile[-3:, :] = tile[:, :3] = tile[:, -3:] = red
        cv.replace(slot, tile)
        images.append(cv.image())
    return save_gif(images, duration_ms)
