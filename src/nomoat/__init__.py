"""nomoat: your own small LLM from your own files, offline.

Every CLI command is also a function with the same arguments::

    import nomoat
    nomoat.chat("What is the capital of France?")        # {"answer": ..., "model": ...}
    nomoat.ingest(["~/notes"], kb="default")              # {"added": ..., ...}
    nomoat.search("query", k=5)                           # [{"path", "location", "score", "text", "chunk_id"}]

Stages are imported on first use, so ``import nomoat`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that implements it (the module is callable, see nomoat._api)
_STAGES = {
    "chat": "nomoat.chat",
    "models": "nomoat.models",
    "ingest": "nomoat.ingest",
    "search": "nomoat.retrieval",
    "ask": "nomoat.rag",
    "curate": "nomoat.curate",
    "tune": "nomoat.tune",
    "export": "nomoat.export",
    "evaluate": "nomoat.evaluate",
    "serve": "nomoat.serve",
}


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        return importlib.import_module(_STAGES[name])
    raise AttributeError(f"module 'nomoat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_STAGES])
