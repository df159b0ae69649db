"""Everything that touches the disk: frame discovery, FITS read/write, tables, atomic writes.

No other module opens files. Writes go to a temporary name in the destination directory and are
renamed into place, so a killed run never leaves a half-written frame or table.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyWarning

from ._stats import CHUNK_BYTES, block_rows, blocks
from ._table import Table
from .errors import StarshiftError

log = logging.getLogger(__name__)

DEFAULT_GLOBS = ("*.fit", "*.fits", "*.fts")
#: Suffixes of compressed FITS files (gzip, fpack, bzip2): a glob pattern also matches the
#: compressed form of what it names, and an output frame is written uncompressed, without them.
COMPRESSED_SUFFIXES = (".gz", ".fz", ".bz2")
#: PICTTYPE value of a light (science) frame in SBIG/CCDOps/MaxIm headers.
PICTTYPE_LIGHT = 1


# --------------------------------------------------------------------------- discovery
def _no_case(pattern: str) -> str:
    """A glob pattern that matches letters in either case (camera software writes .FIT too)."""
    out, in_class = [], False
    for ch in pattern:
        if ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        out.append(f"[{ch.lower()}{ch.upper()}]" if ch.isalpha() and not in_class else ch)
    return "".join(out)


def split_globs(globs: str | Iterable[str] | None) -> list[str]:
    """The glob patterns of a ``glob`` setting (comma-separated string or list)."""
    if globs is None:
        return list(DEFAULT_GLOBS)
    if isinstance(globs, str):
        globs = globs.split(",")
    return [g.strip() for g in globs if g.strip()]


def _glob_files(directory: Path, globs: Iterable[str]) -> list[str]:
    """Names (paths relative to ``directory``, '/'-separated) of the files the globs match,
    compressed forms included (``a.fits.gz``, ``a.fits.fz`` for ``*.fits``)."""
    found: set[str] = set()
    for pattern in globs:
        for variant in (pattern, *(pattern + s for s in COMPRESSED_SUFFIXES)):
            found.update(p.relative_to(directory).as_posix()
                         for p in directory.glob(_no_case(variant)) if p.is_file())
    return sorted(found)


def output_name(name: str) -> str:
    """The name of a frame's output: an uncompressed FITS file, so without the input's
    compression suffix (``a.fits.gz`` -> ``a.fits``); other names unchanged."""
    for suffix in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def output_collision(names: Iterable[str]) -> tuple[str, str] | None:
    """Two input names that would be written under the same output name, or None."""
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(output_name(name), name)
        if first != name:
            return first, name
    return None


def is_light_frame(header: fits.Header) -> bool:
    """Whether a header describes a light (science) frame.

    PICTTYPE=1 decides when PICTTYPE is present; otherwise IMAGETYP containing 'light'
    (case-insensitive); a header with neither keyword counts as a light frame.
    """
    if "PICTTYPE" in header:
        try:
            return int(header["PICTTYPE"]) == PICTTYPE_LIGHT
        except (TypeError, ValueError):
            return False
    if "IMAGETYP" in header:
        return "light" in str(header["IMAGETYP"]).lower()
    return True


def read_header(path: str | os.PathLike, verify: bool = True) -> fits.Header:
    """The header of a FITS file's image (primary, or the first image extension).

    Reads only the header blocks of a plain file. Raises :class:`StarshiftError` naming the
    file when it cannot be read (missing, no permission, empty, not FITS, truncated header).
    With ``verify`` (the default) every card is made readable (:func:`standard_cards`);
    without, the cards are as parsed, for a caller that reads a few and falls back.
    """
    header = _parsed_header(path)
    return standard_cards(header, path, warn=False) if verify else header


def _parsed_header(path: str | os.PathLike) -> fits.Header:
    """The header of :func:`read_header`, its cards as parsed."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_BLOCK)
            if not head:
                raise StarshiftError(f"{path}: empty file (0 bytes)")
            if head.startswith(b"SIMPLE  =                    T"):
                while True:
                    end = _end_card(head)
                    if end >= 0:
                        header = fits.Header.fromstring(head[:end + 80].decode("ascii"))
                        if header.get("NAXIS", 0) or not header.get("EXTEND"):
                            return header
                        break  # an empty primary: the image is in an extension
                    more = fh.read(_BLOCK)
                    if not more:
                        raise StarshiftError(f"{path}: truncated FITS header (no END card)")
                    head += more
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS") == 2),
                           hdul[0])
                return hdu.header.copy()
    except StarshiftError:
        raise
    except PermissionError:
        raise StarshiftError(f"{path}: no permission to read it") from None
    except Exception as exc:
        raise StarshiftError(f"{path}: not a readable FITS file ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _end_card(buf: bytes) -> int:
    """Offset of the END card in ``buf`` (a FITS header's start), -1 when not there yet."""
    for start in range(0, len(buf) - 79, 80):
        if buf[start: start + 3] == b"END" and not buf[start + 3: start + 80].strip():
            return start
    return -1


@dataclass(frozen=True)
class Discovery:
    """What a directory holds: its light frames, and the matched files that cannot be read.

    Names are paths relative to the directory ('/'-separated), sorted. ``unreadable`` maps a
    name to the reason; ``n_other`` counts readable frames that are not light frames.
    """

    directory: Path
    lights: tuple[str, ...]
    unreadable: dict[str, str]
    n_other: int = 0

    @property
    def names(self) -> list[str]:
        """Every frame that gets a row: the light frames and the unreadable files, by name."""
        return sorted((*self.lights, *self.unreadable))


def discover(directory: str | os.PathLike, globs: str | Iterable[str] | None = None
             ) -> Discovery:
    """Find the light frames in ``directory`` by their headers (only the headers are read).

    Extensions match in any case (``.fit``, ``.FIT``, ``.fits``, ``.FITS``, ``.fts``).
    Selection follows :func:`is_light_frame`. A file the globs match but that cannot be read
    is listed in ``unreadable`` with its reason, never dropped silently. Raises
    :class:`StarshiftError` for a missing directory, when nothing matches, or when nothing
    matched is a light frame or unreadable.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise StarshiftError(f"{directory}: no such directory; give the folder holding the frames")
    globs = split_globs(globs)
    files = _glob_files(directory, globs)
    if not files:
        raise StarshiftError(
            f"{directory}: no files matching {', '.join(globs)}; check the path or the glob")
    lights, unreadable, other = [], {}, 0
    for name in files:
        try:
            header = read_header(directory / name, verify=False)
        except StarshiftError as exc:
            unreadable[name] = str(exc).removeprefix(f"{directory / name}: ")
            log.warning("%s", exc)
            continue
        if _light(header, directory / name):
            lights.append(name)
        else:
            other += 1
    if not lights and not unreadable:
        raise StarshiftError(
            f"{directory}: {len(files)} FITS file(s) but no light frame (PICTTYPE=1 or "
            "IMAGETYP containing 'light'); point at the science frames")
    return Discovery(directory, tuple(lights), unreadable, other)


def _light(header: fits.Header, path: Path) -> bool:
    """:func:`is_light_frame` of a header read without verifying its cards: as read when the
    keywords it looks at are standard, else after :func:`standard_cards` (as every other
    reader sees it). Verifying every card of every file cost discovery 13 of its 22 ms on a
    71-frame night; the two keywords alone are enough when they are standard."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", VerifyWarning)
            return is_light_frame(header)
    except Exception:  # a card astropy would fix or cannot parse: read it as the others do
        return is_light_frame(standard_cards(header, path, warn=False))


def find_light_frames(directory: str | os.PathLike, globs: str | Iterable[str] | None = None
                      ) -> list[Path]:
    """Paths of the readable light frames in ``directory``, sorted (see :func:`discover`)."""
    found = discover(directory, globs)
    return [found.directory / n for n in found.lights]


# --------------------------------------------------------------------------- FITS
#: FITS block size (bytes): headers and data are padded to multiples of it.
_BLOCK = 2880
#: BITPIX -> big-endian dtype of the stored values.
_BITPIX_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: BITPIX -> the float type its values are read as, exactly (float64 for the others).
_FLOAT_OF_BITPIX = {8: np.float32, 16: np.float32, -32: np.float32}
#: BITPIX -> the BZERO that marks unsigned (or, for 8, signed) integers stored with an offset.
_INT_OFFSETS = {8: -128.0, 16: 32768.0, 32: 2147483648.0, 64: 9223372036854775808.0}


def read_frame(path: str | os.PathLike) -> tuple[np.ndarray, fits.Header]:
    """Read the primary image of a FITS file and its header, as floating point.

    Float32 images (BITPIX = -32, what calibrated CCD frames usually are) and 8- or 16-bit
    integer images (what cameras write: every such value, with its unsigned offset, is exact
    in float32's 24-bit mantissa) come back as native float32: computing in float64 would
    only double the memory and the memory traffic of every pass over the frame, not add
    information (a 26 MP frame is 104 MB instead of 209 MB). 32- and 64-bit integer, scaled
    and float64 images come back as float64 with BZERO/BSCALE applied.

    A header without BUNIT is taken to be in ADU (BUNIT='adu' is added to the returned copy).
    The file itself is never modified.

    A plain 2-D primary image (what CCD cameras write: float, or integers with at most the
    unsigned-integer BZERO offset, no BLANK) is read directly from the file's bytes, with the
    header parsed by astropy: about 3 times faster than going through ``fits.open``, for the
    same values. Anything else (extensions, scaled or blanked integers, compressed files) is
    read through ``fits.open``.
    """
    path = Path(path)
    if not path.is_file():
        raise StarshiftError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            simple = _read_plain_image(path)
            if simple is not None:
                data, header = simple
            else:
                with fits.open(path, memmap=False) as hdul:
                    hdu = next((h for h in hdul if h.is_image and h.header.get("NAXIS") == 2),
                               None)
                    # the float type, chosen before astropy rescales the data (and the header)
                    as_type = _float_type(hdu.header) if hdu is not None else np.float64
                    if hdu is None or hdu.data is None or hdu.data.ndim != 2:
                        raise StarshiftError(f"{path}: no 2-D image in this FITS file")
                    data = np.asarray(hdu.data, dtype=as_type)
                    header = hdu.header.copy()
    except StarshiftError:
        raise
    except Exception as exc:
        raise StarshiftError(f"{path}: not a readable FITS file ({exc})") from exc
    standard_cards(header, path)
    if "BUNIT" not in header:
        header["BUNIT"] = ("adu", "assumed: no BUNIT in the input file")
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    return data, header


def standard_cards(header: fits.Header, path: str | os.PathLike = "",
                   warn: bool = True) -> fits.Header:
    """``header`` (modified) with every card readable, as astropy writes it.

    A value that is not FITS (``EXPTIME = NAN``, an unquoted word, a bad number) becomes a
    string, as astropy's own fix does when the card is written; a card even that cannot fix
    is left out. Done where a frame is read, so no later use of a header value can fail on
    it; ``warn`` logs one warning naming the file and the keywords. (Writing the card would
    verify it anyway: this costs the run nothing.)
    """
    broken = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VerifyWarning)
        for i, card in enumerate(header.cards):
            try:
                _ = card.image  # verifies the card, fixing what astropy can
            except Exception:
                broken.append(i)
    for i in reversed(broken):
        del header[i]
    fixed = {m.group(1) for w in caught if (m := re.search(r"Card '([^']*)'", str(w.message)))}
    if warn and (fixed or broken):
        log.warning("%s: header card(s) %s not FITS standard: read as text%s", path,
                    ", ".join(sorted(fixed)) or "-", f", {len(broken)} left out" if broken else "")
    return header


def _float_type(header: fits.Header) -> type:
    """The float type an image's values are exact in: float32 for float32 and for 8- and
    16-bit integers stored plainly or with the unsigned offset, else float64."""
    bitpix = header.get("BITPIX")
    plain = header.get("BSCALE", 1) == 1 and header.get("BZERO", 0) in (0, _INT_OFFSETS.get(bitpix))
    return _FLOAT_OF_BITPIX.get(bitpix, np.float64) if plain else np.float64


def _read_plain_image(path: Path) -> tuple[np.ndarray, fits.Header] | None:
    """The fast path of :func:`read_frame`; None when the file is not a plain 2-D image.

    The pixels are converted to float block by block as they are read (``CHUNK_BYTES`` at a
    time), so the file's bytes are never held whole: a 26 MP frame needs its 104 MB float32
    array and 4 MB more, not another 52 MB for the bytes.
    """
    with open(path, "rb") as fh:
        head = fh.read(_BLOCK)
        if not head.startswith(b"SIMPLE  =                    T"):
            return None
        while (end := _end_card(head)) < 0:  # the END card closes the header
            more = fh.read(_BLOCK)
            if len(more) < _BLOCK:
                return None
            head += more
        header = fits.Header.fromstring(head[:end + 80].decode("ascii"))
        bitpix = header.get("BITPIX")
        if header.get("NAXIS") != 2 or bitpix not in _BITPIX_DTYPES or "BLANK" in header:
            return None
        if header.get("GROUPS") or header.get("PCOUNT", 0) or header.get("GCOUNT", 1) != 1:
            return None
        bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
        if bscale != 1 or bzero not in (0, _INT_OFFSETS.get(bitpix)):
            return None
        nx, ny = header.get("NAXIS1"), header.get("NAXIS2")
        if not (isinstance(nx, int) and isinstance(ny, int) and nx > 0 and ny > 0):
            return None
        stored = np.dtype(_BITPIX_DTYPES[bitpix])
        data = np.empty((ny, nx), dtype=_float_type(header))
        flat = data.reshape(-1)
        buf = bytearray(CHUNK_BYTES)
        done = 0
        for part in blocks(flat):
            nbytes = part.size * stored.itemsize
            got = fh.readinto(memoryview(buf)[:nbytes])
            if got < nbytes:
                need = flat.size * stored.itemsize
                raise StarshiftError(f"{path}: truncated file ({done + got} of {need} data "
                                     "bytes); copy it again from the camera or the archive")
            part[...] = np.frombuffer(buf, dtype=stored, count=part.size)
            done += nbytes
    if bzero:
        data += data.dtype.type(bzero)  # exact: the offset values fit the mantissa
    return data, header




def write_frame(path: str | os.PathLike, data: np.ndarray, header: fits.Header | None = None
                ) -> None:
    """Write ``data`` as float32 with ``header`` to ``path`` atomically (temp file + rename).

    The bytes are those astropy's ``PrimaryHDU(data, header).writeto`` produces (a test checks
    it): the mandatory keywords, then the header's other cards in order (structural keywords
    and BZERO/BSCALE/BLANK dropped), END, and the big-endian float32 pixels, each padded to
    2880-byte blocks. Formatting them here skips astropy's HDU machinery, which costs 2-3
    times the time of writing the file.
    """
    path = Path(path)
    if header is None:
        header = fits.Header()
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"write_frame needs a 2-D image, got shape {data.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        head = _primary_header_bytes(header, data.shape)
    ny, nx = data.shape
    pad = (-4 * data.size) % _BLOCK
    rows = block_rows(4 * max(nx, 1))

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(head)
            # big-endian float32, converted a block of rows at a time (no whole-frame copy)
            block = np.empty((min(rows, ny), nx), dtype=">f4")
            for y in range(0, ny, rows):
                part = block[: min(rows, ny - y)]
                part[...] = data[y: y + rows]
                fh.write(part.data)
            fh.write(b"\0" * pad)

    _atomic(path, _write)


#: Keywords astropy's ``Header.strip`` drops (they describe the old HDU's layout), plus the
#: integer scaling keywords, which do not apply to float32 data.
_STRUCTURAL = frozenset({"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT",
                         "GROUPS", "BSCALE", "BZERO", "TFIELDS", "BLANK"})
_TABLE_KEYS = ("TFORM", "TSCAL", "TZERO", "TNULL", "TTYPE", "TUNIT", "TDISP", "TDIM", "THEAP",
               "TBCOL")
#: The first three cards of every float32 primary header, as astropy formats them.
_PRIMARY_START = "".join(fits.Card(*c).image for c in (
    ("SIMPLE", True, "conforms to FITS standard"),
    ("BITPIX", -32, "array data type"),
    ("NAXIS", 2, "number of array dimensions")))


def _primary_header_bytes(header: fits.Header, shape: tuple[int, int]) -> bytes:
    """Header block of a float32 primary image of ``shape`` carrying ``header``'s cards."""
    naxis = header.get("NAXIS", 0)
    tfields = header.get("TFIELDS", 0)
    drop = set(_STRUCTURAL)
    drop.update(f"NAXIS{i + 1}" for i in range(naxis if isinstance(naxis, int) else 0))
    if isinstance(tfields, int):
        drop.update(f"{k}{i + 1}" for k in _TABLE_KEYS for i in range(tfields))
    parts = [_PRIMARY_START, fits.Card("NAXIS1", shape[1]).image,
             fits.Card("NAXIS2", shape[0]).image]
    parts.extend(card.image for card in header.cards if card.keyword not in drop)
    parts.append("END".ljust(80))
    text = "".join(parts)
    return (text + " " * ((-len(text)) % _BLOCK)).encode("ascii")


# --------------------------------------------------------------------------- tables & text
def write_table(df, path: str | os.PathLike, float_format: str = "%.4f") -> None:
    """Write a per-frame table (a :class:`~starshift._table.Table` or a pandas DataFrame) as
    CSV atomically, with a fixed float format (byte-reproducible; the same bytes either way)."""
    path = Path(path)
    if isinstance(df, Table):
        text = df.to_csv(float_format)
    else:
        text = df.to_csv(index=False, float_format=float_format, lineterminator="\n")
    write_text(path, text)


def _existing_table(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise StarshiftError(f"{path}: no such table; run the stage that writes it first")
    return path


def read_table(path: str | os.PathLike):
    """Read a CSV table written by :func:`write_table`, as a pandas DataFrame."""
    import pandas as pd  # only the report and library callers pay its import

    path = _existing_table(path)
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise StarshiftError(f"{path}: not a readable CSV table ({exc})") from exc


def read_rows(path: str | os.PathLike) -> Table:
    """:func:`read_table` as a :class:`~starshift._table.Table` (typed alike), without pandas:
    for the stages that only read their table's rows back."""
    path = _existing_table(path)
    try:
        return Table.from_csv(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise StarshiftError(f"{path}: not a readable CSV table ({exc})") from exc


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    _atomic(Path(path), _write)


def _atomic(path: Path, writer) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        writer(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # full disk, read-only folder, a file in the way
            raise StarshiftError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


# --------------------------------------------------------------------------- output folders
class OutputFolder:
    """A run's output folder, written as a whole (see :func:`output_folder`)."""

    def __init__(self, path: Path, staging: Path):
        self.path = path
        self.staging = staging

    def require_free(self, nbytes: int) -> None:
        """Fail now, before any work, when the disk has less than ``nbytes`` free."""
        free = shutil.disk_usage(self.staging).free
        if free < nbytes:
            raise StarshiftError(f"{self.path}: only {free} bytes free on its disk, less than "
                                 f"the outputs need ({nbytes} bytes); free some space or "
                                 "choose another output folder")


def _hidden(path: Path, what: str) -> Path:
    return path.parent / f".{path.name}.{what}"


def run_folders(path: str | os.PathLike) -> tuple[Path, ...]:
    """The folders a run into output folder ``path`` writes: the folder, its staging, and the
    previous output while it is swapped out (what a killed run may leave)."""
    path = Path(path)
    return path, _hidden(path, "staging"), _hidden(path, "old")


@contextmanager
def output_folder(path: str | os.PathLike, marker: str | None = None):
    """Write a folder as the product of one run: locked, staged beside it, swapped in at the end.

    Yields an :class:`OutputFolder` whose ``staging`` directory receives the outputs. On
    success the previous folder (if any) is replaced by it as a whole; on any error or
    interruption the staging is removed and the previous folder stays as it was. A concurrent
    run into the same folder is refused with one line; what a killed run left (staging,
    half-swapped folders, temporary files) is cleaned up first. With ``marker``, an existing
    non-empty folder is replaced only if it holds that file (it is a previous run's output, not
    someone's own files).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StarshiftError(f"{path}: is a file, not a folder; choose another output folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    lock = _lock(path)
    staging, old = _hidden(path, "staging"), _hidden(path, "old")
    try:
        try:  # any error or interruption from here on leaves the folder as a whole run
            if old.exists():  # a run killed mid-swap: the previous output is the complete one
                if not path.exists():
                    os.rename(old, path)
                else:
                    shutil.rmtree(old)
            if staging.exists():
                shutil.rmtree(staging)
            if marker and path.is_dir() and any(path.iterdir()) \
                    and not (path / marker).exists():
                raise StarshiftError(f"{path}: holds files that are not a starshift output (no "
                                     f"{marker}); choose an empty or new output folder")
            if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):  # its files go
                raise StarshiftError(f"{path}: no permission to replace its files; choose a "
                                     "writable output folder")
            try:
                staging.mkdir()
                probe = staging / ".write-test"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise _unwritable(path, exc) from exc
            yield OutputFolder(path, staging)
            if path.exists():
                os.rename(path, old)
            os.rename(staging, path)
            if old.exists():
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if old.exists() and not path.exists():  # interrupted mid-swap: the previous back
                os.rename(old, path)
            shutil.rmtree(old, ignore_errors=True)
            raise
    finally:
        with suppress(OSError):  # ours: remove the lock file while still holding the lock
            os.unlink(_hidden(path, "lock"))
        _HELD_LOCKS.discard(lock)
        os.close(lock)


#: Descriptors of the output-folder locks this process holds. A forked child (a worker of the
#: night loop) closes its copies at once, so that only the run holds a lock, and a run killed
#: with kill -9 releases it even while its workers are still ending.
_HELD_LOCKS: set[int] = set()


def _close_held_locks() -> None:
    for fd in _HELD_LOCKS:
        with suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks)


def _unwritable(path: Path, exc: OSError) -> StarshiftError:
    return StarshiftError(f"{path}: cannot write there ({exc.strerror or exc}); choose a "
                          "writable output folder")


def _lock(path: Path) -> int:
    """Lock output folder ``path`` against other runs: the locked descriptor of its lock file.

    A run that finishes removes the lock file while holding it; a run that opened that file
    before then locks a removed file, so the lock is taken again on the file now there.
    """
    import fcntl

    name = _hidden(path, "lock")
    while True:
        try:
            fd = os.open(name, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise _unwritable(path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StarshiftError(f"{path}: another starshift run is writing this folder; wait "
                                 "for it to finish or choose another folder") from None
        try:
            current = os.stat(name).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            _HELD_LOCKS.add(fd)
            return fd
        os.close(fd)


# --------------------------------------------------------------------------- provenance
def params_hash(params) -> str:
    """Short, stable hash (12 hex digits) of a JSON-serialisable parameter tree."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

