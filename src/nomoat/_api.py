"""Make a stage module callable, so ``nomoat.ingest(paths, kb=...)`` and ``import nomoat.ingest`` coexist.

DESIGN.md's Python contract names functions after the stages (``nomoat.ingest``, ``nomoat.tune``, ...), and
the stage modules carry the same names. Importing a submodule rebinds the package attribute to the module,
which would shadow a plain function of that name; a callable module keeps both spellings working.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def expose(module_name: str, entry: Callable[..., Any]) -> None:
    """Make ``sys.modules[module_name](...)`` call ``entry(...)``. Call at the end of a stage module."""
    module = sys.modules[module_name]

    class _StageModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return entry(*args, **kwargs)

    _StageModule.__call__.__doc__ = entry.__doc__
    module.__class__ = _StageModule
