"""Malformed model files give one clean line and exit code 1: never a traceback, never a segfault."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nomoat.errors import ModelError
from nomoat.llm.gguf_check import quantization, read_header
from tiny_gguf import write_tiny_llama


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _tensor_field(data: bytes, name: bytes, field: str) -> int:
    """Byte offset of a field in the tensor-table entry of ``name`` (n_dims, dim0, type or offset)."""
    start = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, start)[0]
    return {"n_dims": start, "dim0": start + 4, "type": start + 4 + 8 * n_dims, "offset": start + 8 + 8 * n_dims}[field]


def _value_offset(data: bytes, key: bytes) -> int:
    return data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4  # after key and value type


# name -> function(valid bytes) -> corrupt bytes; all must be rejected before llama.cpp sees them
BYTE_CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "ten-bytes": lambda d: d[:10],
    "header-only": lambda d: d[:24],
    "cut-in-metadata": lambda d: d[:200],
    "cut-at-half": lambda d: d[: len(d) // 2],
    "cut-last-byte": lambda d: d[:-1],
    "wrong-magic": lambda d: b"GGML" + d[4:],
    "text-file": lambda d: b"this is not a model\n" * 10,
    "zip-file": lambda d: b"PK\x03\x04" + d[4:200],
    "version-99": lambda d: _patch(d, 4, struct.pack("<I", 99)),
    "tensor-count-huge": lambda d: _patch(d, 8, struct.pack("<Q", 2**60)),
    "kv-count-huge": lambda d: _patch(d, 16, struct.pack("<Q", 2**40)),
    "kv-count-too-many": lambda d: _patch(d, 16, struct.pack("<Q", struct.unpack_from("<Q", d, 16)[0] + 3)),
    "key-length-huge": lambda d: _patch(d, 24, struct.pack("<Q", 2**50)),
    "bad-value-type": lambda d: _patch(d, 24 + 8 + struct.unpack_from("<Q", d, 24)[0], struct.pack("<I", 77)),
    "array-length-huge": lambda d: _patch(d, _value_offset(d, b"tokenizer.ggml.tokens") + 4, struct.pack("<Q", 2**33)),
    "tensor-type-unknown": lambda d: _patch(d, _tensor_field(d, b"output.weight", "type"), struct.pack("<I", 999)),
    "tensor-offset-outside": lambda d: _patch(
        d, _tensor_field(d, b"output.weight", "offset"), struct.pack("<Q", 2**40)
    ),
    "tensor-dims-7": lambda d: _patch(d, _tensor_field(d, b"output.weight", "n_dims"), struct.pack("<I", 7)),
    "tensor-dim-zero": lambda d: _patch(d, _tensor_field(d, b"output.weight", "dim0"), struct.pack("<Q", 0)),
    "tensor-dim-huge": lambda d: _patch(d, _tensor_field(d, b"token_embd.weight", "dim0"), struct.pack("<Q", 2**45)),
    "unaligned-offset": lambda d: _patch(d, _tensor_field(d, b"output.weight", "offset"), struct.pack("<Q", 3)),
}

# name -> keyword arguments of write_tiny_llama that make a structurally valid but unusable model
SEMANTIC_CORRUPTIONS: dict[str, dict] = {
    "no-architecture": {"architecture": False},
    "no-vocabulary": {"vocabulary": False},
    "missing-layers": {"declared_layers": 3},
    "width-mismatch": {"declared_width": 48},
    "broken-template": {"chat_template": "{% for m in messages %}{{ m.content"},
    "template-escape": {"chat_template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"},
    "template-escape-globals": {"chat_template": "{{ cycler.__init__.__globals__.os.popen('id').read() }}"},
}


@pytest.fixture(scope="module")
def malformed(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("malformed")
    valid = tiny_gguf.read_bytes()
    files = {}
    for name, corrupt in BYTE_CORRUPTIONS.items():
        files[name] = root / f"{name}.gguf"
        files[name].write_bytes(corrupt(valid))
    for name, kwargs in SEMANTIC_CORRUPTIONS.items():
        files[name] = write_tiny_llama(root / f"{name}.gguf", **kwargs)
    files["directory"] = root / "dir.gguf"
    files["directory"].mkdir()
    files["missing"] = root / "does-not-exist.gguf"
    return files


def test_valid_file_parses(tiny_gguf: Path) -> None:
    header = read_header(tiny_gguf)
    assert header.architecture == "llama"
    assert header.arch_value("block_count") == 2
    assert quantization(header) == "F32"
    assert len(header.tensors) == 3 + 2 * 9


@pytest.mark.parametrize("name", sorted(BYTE_CORRUPTIONS))
def test_byte_corruption_is_rejected_before_llama_cpp(malformed: dict[str, Path], name: str) -> None:
    with pytest.raises(ModelError) as info:
        read_header(malformed[name])
    assert "\n" not in str(info.value)


def test_at_least_twenty_malformed_files_fail_cleanly_in_the_cli(malformed: dict[str, Path]) -> None:
    """Each file goes through the real CLI and llama.cpp in its own process: exit 1, one line, no traceback."""
    assert len(malformed) >= 20
    for name, path in malformed.items():
        proc = _chat_once(path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, f"{name}: rc={proc.returncode} stderr={proc.stderr[-500:]}"
        assert len(lines) == 1 and lines[0].startswith("nomoat: error:"), f"{name}: {proc.stderr[-500:]}"


def test_random_bit_flips_never_crash(tiny_gguf: Path, tmp_path: Path) -> None:
    """Flip bits in the header and tensor table: the file may still load (a flipped float) or fail cleanly."""
    valid = bytearray(tiny_gguf.read_bytes())
    header_end = read_header(tiny_gguf).tensors and _tensor_field(bytes(valid), b"blk.1.ffn_down.weight", "offset")
    rng = random.Random(1234)
    outcomes = {0: 0, 1: 0}
    for i in range(12):
        data = bytearray(valid)
        for _ in range(3):
            pos = rng.randrange(0, header_end + 8)
            data[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{i}.gguf"
        path.write_bytes(bytes(data))
        proc = _chat_once(path)
        assert proc.returncode in outcomes, f"flip{i}: rc={proc.returncode} {proc.stderr[-500:]}"
        outcomes[proc.returncode] += 1
        if proc.returncode == 1:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert outcomes[1] > 0  # the check really rejects something


def test_copy_of_valid_file_runs(tiny_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf, path)
    proc = _chat_once(path)
    assert proc.returncode == 0, proc.stderr


def _chat_once(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nomoat", "chat", "--once", "hi", "--max-tokens", "2", "--json", "--model", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
