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


class _SkipDocNotes:
    """Import hook (on :data:`sys.meta_path`): when :data:`_ARRAY_API` is first imported, its
    ``FunctionDoc`` becomes :class:`_NoteSkipped`, then the hook removes itself."""

    def find_spec(self, name, path, target=None):
        if name != _ARRAY_API:
            return None
        with suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_skip(module) -> None:
            exec_module(module)
            if hasattr(module, "FunctionDoc") and hasattr(module, "xp_capabilities"):
                module.FunctionDoc = _NoteSkipped

        spec.loader.exec_module = exec_and_skip
        return spec


def skip_scipy_doc_notes() -> bool:
    """Keep scipy from rewriting the docstrings of the functions it marks for array-API
    support while it imports them (``xp_capabilities``: every function of ``scipy.ndimage``,
    ``scipy.fft`` and ``scipy.special`` parsed and rendered again with numpydoc's parser).
    Nothing else changes: the functions are the same objects, their docstrings lose only the
    added note. The console script calls this (:func:`starshift.cli.run`); a library user's
    process is left as it is. Returns whether the hook was installed (False once scipy's
    module is imported: too late).
    """
    if _ARRAY_API in sys.modules or any(isinstance(f, _SkipDocNotes) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _SkipDocNotes())
    return True
