"""Serving format: a slow weight format is served from a faster copy made once, never from a stale one."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from nomoat.config import RuntimeConfig
from nomoat.llm import formats, llamacpp, runtime
from nomoat.llm.gguf_check import quantization, read_header

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")


@pytest.fixture
def q4_1(tiny_gguf: Path, tmp_path: Path) -> Path:
    return llamacpp.quantize(tiny_gguf, tmp_path / "tiny-q4_1.gguf", "q4_1", threads=1)


def load(path: Path, fast: bool = True) -> runtime.Model:
    return runtime.load(path, RuntimeConfig(n_ctx=256, n_threads=1, fast_format=fast))


def test_a_q4_1_model_is_served_from_a_q8_0_copy_made_once(q4_1: Path, nomoat_home: Path) -> None:
    model = load(q4_1)
    assert quantization(read_header(q4_1)) == "Q4_1"
    assert model.path != q4_1 and model.path.is_relative_to(nomoat_home / "cache" / "formats")
    assert quantization(read_header(model.path)) == "Q8_0"
    assert model.ref.path == q4_1  # the model is still named and trained from the file the user gave
    made = model.path.stat().st_mtime_ns
    runtime._cache.clear()
    assert load(q4_1).path == model.path and model.path.stat().st_mtime_ns == made  # reused, not remade
    assert not list(model.path.parent.glob("*.partial"))
    text = model.generate(model.tokenize("the"), None).text()
    assert isinstance(text, str)


def test_a_changed_model_file_gets_a_new_copy(q4_1: Path, tmp_path: Path) -> None:
    from tiny_gguf import write_tiny_llama

    first = formats.served_path(q4_1)
    other = write_tiny_llama(tmp_path / "other.gguf", seed=1)  # other weights, same shapes and size
    llamacpp.quantize(other, q4_1, "q4_1", threads=1)  # replaced in place
    second = formats.served_path(q4_1)
    assert second != first
    assert second.read_bytes() != first.read_bytes()


def test_fast_formats_off_and_fast_formats_are_served_as_they_are(q4_1: Path, tiny_gguf: Path) -> None:
    assert load(q4_1, fast=False).path == q4_1
    assert formats.served_path(tiny_gguf) == tiny_gguf  # f32: not a slow format
