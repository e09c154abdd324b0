"""Eval's answer cache: generated answers by (configuration identity, question), appended and fsynced one by one,
so an interrupted eval resumes and a rerun only redraws its report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Answerer = Callable[[str], "str | dict[str, Any]"]
"""A configuration: question -> answer text, or ``{"answer", "citations"}`` as ``nomoat ask`` returns."""


class AnswerCache:
    """Generated answers by (configuration identity, question), appended to a JSONL file as they come: re-running
    a report costs nothing, and a crash loses at most the answer in flight. ``identities`` maps a configuration
    name to everything its answers depend on (model file, knowledge-base state, decoding settings)."""

    def __init__(self, path: Path | None, identities: dict[str, str]):
        self.path, self.identities, self.hits = path, identities, 0
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):  # a torn last line from a crash
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry

    def answer(self, name: str, question: str, ask: Answerer) -> dict[str, Any]:
        """The cached answer, or ``ask(question)`` timed and stored: ``{"answer", "citations", "seconds"}``."""
        key = hashlib.sha256(f"{self.identities.get(name, name)}\n{question}".encode()).hexdigest()
        if key in self.entries:
            self.hits += 1
            return self.entries[key]
        start = time.perf_counter()
        got = ask(question)
        got = got if isinstance(got, dict) else {"answer": got}
        entry = {"key": key, "answer": got["answer"], "citations": got.get("citations") or [],
                 "mode": got.get("mode"), "fallback": got.get("fallback_reason"),
                 "seconds": round(time.perf_counter() - start, 4)}  # fmt: skip
        self.entries[key] = entry
        if self.path is not None:
            self._append(entry)
        return entry

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a+b") as f:  # type: ignore[arg-type]
            if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":  # a torn line: do not glue onto it
                f.write(b"\n")
            f.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
