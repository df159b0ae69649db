"""Heavy modules imported where they are used, not where they are named.

``from .._lazy import ndimage`` gives an object that imports ``scipy.ndimage`` on its first
attribute access: the modules that filter images can be imported (by ``starshift.config``, the
CLI, the DVC stages that only read tables) without paying for scipy (0.3 s per process), and the
processes that filter pay once, when they first do.
"""

from __future__ import annotations

import importlib
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
