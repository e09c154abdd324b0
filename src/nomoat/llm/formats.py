"""The weight format a GGUF is served in: a slow format is requantized once per machine to a faster one.

On x86 llama.cpp has no fast kernels for Q4_1, the format the bundled model ships in: Q8_0 made from it
prefills 1.4x faster (and a knowledge-base answer is mostly prefill: the numbered sources), at a perplexity gap
of a few hundredths of a percent, because Q8_0 holds Q4_1's values almost exactly (docs/benchmarks.md, "Serving
format"). Q4_0 prefills faster still but requantizing 4-bit weights to another 4-bit grid loses quality, so it
is not chosen. The copy is made the first time the model loads (seconds), kept under the cache folder, and
keyed by the source file's path, size and modification time: a model file changed in place gets a new copy, never
the old one.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from nomoat import paths

SLOW_FORMATS = {"Q4_1": "q8_0"}
"""Served format of each format measured slow here (x86): what it is requantized to."""


def served_path(path: Path, fast: bool = True) -> Path:
    """The file llama.cpp should load for ``path``: a cached faster copy when its format is slow here, else
    ``path`` itself. ``fast=False`` (``RuntimeConfig.fast_format``) serves every file as it is."""
    if not fast or platform.machine().lower() not in ("x86_64", "amd64"):
        return path
    from nomoat.llm.gguf_check import quantization, read_header

    target = SLOW_FORMATS.get(quantization(read_header(path)))
    if target is None:
        return path
    copy = _copy_path(path, target)
    if not copy.exists():
        _make(path, copy, target)
    return copy


def _copy_path(path: Path, target: str) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return paths.cache_dir() / "formats" / f"{path.stem}-{key}.{target}.gguf"


def _make(path: Path, copy: Path, target: str) -> None:
    """Requantize ``path`` into ``copy`` atomically: a crash leaves no half-written model to be served later."""
    from nomoat.llm.llamacpp import quantize

    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_name(f".{copy.name}.{os.getpid()}.partial")
    try:
        quantize(path, partial, target)
        paths.fsync(partial)
        os.replace(partial, copy)
        paths.fsync_dir(copy.parent)
    finally:
        partial.unlink(missing_ok=True)
