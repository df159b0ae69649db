"""Heavy modules imported where they are used, not where they are named.

``from .._lazy import ndimage`` gives an object that imports ``scipy.ndimage`` on its first
attribute access: the modules that filter images can be imported (by ``starshift.config``, the
CLI, the DVC stages that only read tables) without paying for scipy (0.3 s per process), and the
processes that filter pay once, when they first do.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from contextlib import suppress
from types import ModuleType


class LazyModule:
    """A module imported on first use (attribute access)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


ndimage = LazyModule("scipy.ndimage")
fft = LazyModule("scipy.fft")


#: numpy's submodules that starshift never uses and that scipy (1.15 on, through its vendored
#: ``array_api_compat``, which reads every public attribute of numpy to copy the namespace)
#: imports only to copy their names. ``numpy.f2py`` alone compiles about a hundred regular
#: expressions and imports ``charset_normalizer``.
UNUSED_NUMPY = ("f2py", "testing", "polynomial")


def defer_unused_numpy() -> list[str]:
    """Make numpy's :data:`UNUSED_NUMPY` attributes lazy modules, if numpy is imported and
    they are not: scipy's first import then costs about 0.08 s less (0.32 s against 0.24 s,
    median of 8 processes, benchmark machine). Touching one imports the real submodule,
    which then takes its place in numpy's namespace; nothing else changes. The console
    script calls this (:func:`starshift.cli._imports_done`); a library user's process is left
    as it is. Returns the names deferred.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return []
    done = []
    for name in UNUSED_NUMPY:
        if f"numpy.{name}" not in sys.modules and name not in vars(np):
            setattr(np, name, LazyModule(f"numpy.{name}"))
            done.append(name)
    return done


#: the scipy module whose ``xp_capabilities`` decorator rewrites docstrings at import
_ARRAY_API = "scipy._lib._array_api"


class _NoteSkipped:
    """Stands in for scipy's ``FunctionDoc`` in ``xp_capabilities`` (scipy 1.15 on): the
    decorator parses the docstring of every function it marks, appends a note on array-API
    support to its Notes and renders it back; this keeps the docstring as written instead."""

    def __init__(self, func) -> None:
        self._doc = getattr(func, "__doc__", None) or ""
        self._sections: dict[str, list] = {}

    def __getitem__(self, section: str) -> list:
        return self._sections.setdefault(section, [])

    def __str__(self) -> str:  # the decorator drops the rendered first line (the signature)
        return "\n" + self._doc


class _OnImport:
    """Import hook (on :data:`sys.meta_path`) for the module ``name``: when it is first
    imported, ``run(exec_module, module, spec)`` executes it in place of its loader's
    ``exec_module``, then the hook removes itself."""

    def __init__(self, name: str, run) -> None:
        self.name, self.run = name, run

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        with suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module
        spec.loader.exec_module = lambda module: self.run(exec_module, module, spec)
        return spec


def _install(name: str, run) -> bool:
    """Put an :class:`_OnImport` hook for ``name`` first on :data:`sys.meta_path`, unless the
    module is imported already (too late) or has a hook; returns whether it was put."""
    if name in sys.modules or any(isinstance(f, _OnImport) and f.name == name
                                  for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _OnImport(name, run))
    return True


def _exec_and_skip_notes(exec_module, module, spec) -> None:
    exec_module(module)
    if hasattr(module, "FunctionDoc") and hasattr(module, "xp_capabilities"):
        module.FunctionDoc = _NoteSkipped


def skip_scipy_doc_notes() -> bool:
    """Keep scipy from rewriting the docstrings of the functions it marks for array-API
    support while it imports them (``xp_capabilities``: every function of ``scipy.ndimage``,
    ``scipy.fft`` and ``scipy.special`` parsed and rendered again with numpydoc's parser).
    Nothing else changes: the functions are the same objects, their docstrings lose only the
    added note. The console script calls this (:func:`starshift.cli.run`); a library user's
    process is left as it is. Returns whether the hook was installed (False once scipy's
    module is imported: too late).
    """
    return _install(_ARRAY_API, _exec_and_skip_notes)


#: astropy's module whose import imports ``astropy.units`` for two type annotations only
_DATA = "astropy.utils.data"
_UNITS_LINE = "from astropy.units import Quantity, UnitBase\n"
#: astropy's FITS codecs, which subclass numcodecs' ``Codec`` when numcodecs is installed
_CODECS = "astropy.io.fits.hdu.compressed._codecs"


def _exec_without_units(exec_module, module, spec) -> None:
    """Execute ``astropy.utils.data`` with its annotations unevaluated (PEP 563) and without
    the import of ``astropy.units`` they alone use; as it is if its source is not the one
    expected (the line once, and nowhere else a name from it)."""
    try:
        source = spec.loader.get_source(module.__name__)
    except (ImportError, OSError):
        source = None
    if not source or source.count(_UNITS_LINE) != 1:
        exec_module(module)
        return
    import __future__

    code = compile(source.replace(_UNITS_LINE, "\n"), spec.origin, "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, module.__dict__)  # astropy's own source, one import line less


def _exec_without_numcodecs(exec_module, module, spec) -> None:
    """Execute astropy's FITS codecs with numcodecs hidden, so that they subclass astropy's
    own ``Codec`` stand-in (as without numcodecs installed); numcodecs stays importable."""
    if "numcodecs" in sys.modules:
        exec_module(module)
        return
    sys.modules["numcodecs"] = None  # an import of it raises ImportError
    try:
        exec_module(module)
    finally:
        if sys.modules.get("numcodecs", False) is None:
            del sys.modules["numcodecs"]


def lighten_astropy_import() -> list[str]:
    """Keep ``import astropy.io.fits`` from importing what starshift's FITS reading and writing
    never use: ``astropy.units`` (astropy 8's ``astropy.utils.data`` imports it for two type
    annotations; the FITS scripts' import was kept free of it upstream, astropy PR 8166) and
    numcodecs (present where zarr is, e.g. with the test extra's ccdproc through reproject;
    astropy's FITS codecs only subclass its ``Codec`` so that other packages can use them).
    ``astropy.units`` is imported as usual by whatever uses it (photutils, astropy.wcs),
    numcodecs by whatever imports it. The console script calls this
    (:func:`starshift.cli.run`); a library user's process is left as it is. Returns the
    modules hooked. Measured: ``starshift align`` on march_29_2018 in 1.18 s against 1.39 s
    (median of 11 alternating runs, same outputs).
    """
    return [name for name, run in ((_DATA, _exec_without_units),
                                   (_CODECS, _exec_without_numcodecs)) if _install(name, run)]
