"""Heavy modules imported where they are used, not where they are named.

``from .._lazy import ndimage`` gives an object that imports ``scipy.ndimage`` on its first
attribute access: the modules that filter images can be imported (by ``starshift.config``, the
CLI, the DVC stages that only read tables) without paying for scipy (0.3 s per process), and the
processes that filter pay once, when they first do.
"""

from __future__ import annotations

import importlib
import sys
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
