"""nomoat: your own small LLM from your own files, offline.

Every CLI command is also a function here, taking the command's flags as arguments::

    import nomoat
    nomoat.ingest(["~/notes"])                          # {"added": ..., "chunks": ...}
    nomoat.ask("How do I undo a commit?")               # {"answer", "grounded", "citations", ...}
    nomoat.chat("What is the capital of France?", no_kb=True)
    nomoat.tune("data.jsonl", time="20m")

They are plain functions of :mod:`nomoat.api`, imported on first use, so ``import nomoat`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "ask",
    "build_dataset",
    "chat",
    "dataset_stats",
    "evaluate",
    "export",
    "import_dataset",
    "ingest",
    "kb_info",
    "learn",
    "list_kbs",
    "models",
    "remove_kb",
    "search",
    "serve",
    "tune",
]


def __getattr__(name: str) -> Any:
    # The functions live in nomoat.api, imported on first use: `import nomoat` (and `nomoat --help`) stay light.
    if name in __all__:
        from nomoat import api

        return getattr(api, name)
    raise AttributeError(f"module 'nomoat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
