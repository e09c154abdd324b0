"""Shared fixtures: every test gets its own NOMOAT_HOME and runs offline; tiny models are built here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (tiny_gguf, fakes, hostile_files)

from tiny_gguf import write_tiny_llama


@pytest.fixture(autouse=True)
def nomoat_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point all nomoat state at a fresh temp dir and forbid hub downloads (tests never write to ~)."""
    home = tmp_path_factory.mktemp("nomoat-home")
    monkeypatch.setenv("NOMOAT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid tiny random Llama GGUF with a ChatML template (read-only: copy it before corrupting)."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_4k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_gguf`` with a 4096-token context: its byte-level tokens need room for a prompt with sources."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-4k.gguf", context_length=4096)
