"""The fixed start of prompts, kept across processes: llama.cpp's KV state of it, saved once, loaded by the next
process instead of evaluated again.

Every ``nomoat ask`` is a new process, and its prompt starts with the same ~100 tokens (the template's opening and
ask's system prompt): half a second or more of prefill on 2 cores (docs/benchmarks.md). Within one process
``Llama.generate`` already reuses the previous prompt's common prefix; this carries it to the next process:

* a cold prompt (nothing in the KV cache) that starts with the saved prefix loads its state
  (``llama_state_seq_set_data``) and evaluates only the rest;
* otherwise its first tokens are remembered; when the next cold prompt shares at least ``MIN_TOKENS`` of them,
  that shared start is evaluated alone and its state saved (``llama_state_seq_get_data``) for later processes.

One prefix per served model file (the newest), keyed by the file's identity, llama.cpp's version and the KV cache
types; at most ``MAX_TOKENS`` tokens, so the state stays the fixed head of the prompt (a few MB), not the user's
sources. Files are written atomically; one that does not load is deleted and ignored.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from nomoat.llm import llamacpp

MIN_TOKENS = 32  # a shorter shared start saves too little to be worth a file
MAX_TOKENS = 256
_MAGIC = b"nomoat-prefix-1\n"


def prepare(llama: Any, served: Path, prompt: list[int]) -> int:
    """Before ``llama.generate(prompt)``: load or learn the saved prefix when the cache is cold. Returns the
    prompt tokens now in the KV cache (0: nothing done, ``generate`` evaluates the whole prompt)."""
    if llama.n_tokens or len(prompt) <= MIN_TOKENS:
        return 0
    folder = _folder()
    key = _key(llama, served)
    state, tokens = folder / f"{key}.kv", _read_tokens(folder / f"{key}.kv")
    if tokens and prompt[: len(tokens)] == tokens and len(tokens) < len(prompt):
        if _load(llama, state, tokens):
            return len(tokens)
        state.unlink(missing_ok=True)
    return _learn(llama, folder / f"{key}.tokens", state, prompt)


def _learn(llama: Any, seen: Path, state: Path, prompt: list[int]) -> int:
    from nomoat.paths import atomic_write

    try:
        before = json.loads(seen.read_text())
    except (OSError, ValueError):
        before = []
    head = prompt[:MAX_TOKENS]
    if head != before:  # a cold prompt that keeps coming back is not written again (atomic writes fsync)
        atomic_write(seen, json.dumps(head))
    shared = 0
    while shared < min(len(before), len(head), len(prompt) - 1) and before[shared] == head[shared]:
        shared += 1  # at most len(prompt) - 1: generate must evaluate at least one token
    if shared < MIN_TOKENS:
        return 0
    llama.reset()
    llama.eval(prompt[:shared])
    _save(llama, state, prompt[:shared])
    return shared


def _save(llama: Any, path: Path, tokens: list[int]) -> None:
    from nomoat.paths import atomic_write

    state = llamacpp.sequence_state(llama)
    if state:
        header = json.dumps(tokens).encode()
        atomic_write(path, _MAGIC + struct.pack("<I", len(header)) + header + state)


def _read_tokens(path: Path) -> list[int] | None:
    try:
        with path.open("rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            (length,) = struct.unpack("<I", f.read(4))
            tokens = json.loads(f.read(min(length, 16 * MAX_TOKENS)))
    except (OSError, ValueError, struct.error):
        return None
    return tokens if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens) else None


def _load(llama: Any, path: Path, tokens: list[int]) -> bool:
    try:
        raw = path.read_bytes()
        body = raw[len(_MAGIC) + 4 + struct.unpack("<I", raw[len(_MAGIC) : len(_MAGIC) + 4])[0] :]
    except (OSError, struct.error):
        return False
    return llamacpp.restore_sequence(llama, body, tokens)


def _key(llama: Any, served: Path) -> str:
    stat = served.stat()
    params = llama.context_params
    parts = (str(served.resolve()), stat.st_size, stat.st_mtime_ns, llamacpp.version(), params.type_k,
             params.type_v, getattr(params, "flash_attn_type", None))  # fmt: skip
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]


def _folder() -> Path:
    from nomoat.paths import cache_dir

    folder = cache_dir() / "prefix"
    folder.mkdir(exist_ok=True)
    return folder
