"""Validate a GGUF file before llama.cpp sees it.

llama.cpp trusts its input: a truncated file or a flipped bit in a length field can crash the process
instead of raising. So we parse the header, every metadata entry and the whole tensor table ourselves,
with every length bounded by the file size, and check that each tensor's data lies inside the file.

``gguf.GGUFReader`` does the same parsing but builds Python objects for every vocabulary string (~6 s for
the bundled model's 49k tokens + 49k merges); this streaming check skips those strings and takes ~0.1 s.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nomoat.errors import ModelError

GGUF_MAGIC = b"GGUF"
_MAX_COUNT = 1 << 24  # far above any real model (tensors, metadata entries, dims)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_KEEP_ARRAY = 64  # arrays longer than this are validated but not materialised

# GGUFValueType -> struct format of the scalar types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFHeader:
    """What nomoat needs from a GGUF file's header; ``metadata`` holds scalars, strings and short arrays."""

    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # name -> (ggml type, shape)
    tensor_types: dict[int, int] = field(default_factory=dict)  # ggml type -> parameter count

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: corrupt GGUF file ({what}); re-download or re-export it")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated at byte {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str) -> int:
        n = self.unpack("<Q")
        if n > _MAX_COUNT:
            raise self.fail(f"implausible {what} count {n}")
        return n

    def string(self, keep: bool = True) -> str | None:
        n = self.unpack("<Q")
        raw = self.take(n)  # bounds-checked against the file size
        if not keep:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"invalid UTF-8 string at byte {self.pos - n}") from None

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            itype, n = self.unpack("<I"), self.count("array")
            if itype == _ARRAY:
                raise self.fail("nested arrays")
            keep_items = keep and n <= _KEEP_ARRAY
            if itype in _SCALARS and not keep_items:
                self.take(n * struct.calcsize(_SCALARS[itype]))
                return n  # only the length of long arrays is kept
            items = [self.value(itype, keep_items) for _ in range(n)]
            return items if keep_items else n
        raise self.fail(f"unknown value type {vtype}")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and validate a GGUF file. Raises :class:`ModelError` with a one-line reason on any defect."""
    import gguf  # constants only: quant block sizes, file types

    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"not a model file: {path}")
    size = path.stat().st_size
    if size < 24:
        raise ModelError(f"{path}: not a GGUF model (file is only {size} bytes)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path)
        if cur.take(4) != GGUF_MAGIC:
            raise ModelError(f"{path}: not a GGUF model file (wrong magic bytes); nomoat runs .gguf models")
        header = GGUFHeader(path=path, version=cur.unpack("<I"))
        if header.version not in (2, 3):
            raise cur.fail(f"unsupported GGUF version {header.version}")
        n_tensors, n_kv = cur.count("tensor"), cur.count("metadata")
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.unpack("<I")
            header.metadata[key] = cur.value(vtype, keep=not key.startswith("tokenizer.ggml."))
        _read_tensor_table(cur, header, n_tensors, size, gguf)
    _check_required(header)
    return header


def _read_tensor_table(cur: _Cursor, header: GGUFHeader, n_tensors: int, size: int, gguf: Any) -> None:
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ttype, offset = cur.unpack("<I"), cur.unpack("<Q")
        if ttype not in gguf.GGML_QUANT_SIZES:
            raise cur.fail(f"tensor {name!r} has unknown type {ttype}")
        if name in header.tensors:
            raise cur.fail(f"duplicate tensor {name!r}")
        header.tensors[name] = (ttype, shape)
        infos.append((name, shape, ttype, offset))
    alignment = int(header.metadata.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"bad alignment {alignment}")
    data_start = -(-cur.pos // alignment) * alignment
    for name, shape, ttype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[ttype]
        n_elements = 1
        for d in shape:
            if d <= 0 or d > 1 << 40:
                raise cur.fail(f"tensor {name!r} has dimension {d}")
            n_elements *= d
        if shape[0] % block:
            raise cur.fail(f"tensor {name!r} row of {shape[0]} is not a multiple of its block size {block}")
        n_bytes = n_elements // block * type_size
        if offset % alignment or data_start + offset + n_bytes > size:
            raise cur.fail(f"tensor {name!r} lies outside the file (truncated download?)")
        header.tensor_types[ttype] = header.tensor_types.get(ttype, 0) + n_elements


def _check_required(header: GGUFHeader) -> None:
    def fail(what: str) -> ModelError:
        return ModelError(f"{header.path}: incomplete GGUF model ({what})")

    if "general.architecture" not in header.metadata:
        raise fail("no general.architecture")
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, int) or tokens == 0:
        raise fail("no tokenizer vocabulary")
    if not header.tensors:
        raise fail("no tensors")
    blocks = header.arch_value("block_count")
    if isinstance(blocks, int) and blocks > 0:
        # One pass over the tensor names (not layers x tensors: a block_count of 2**25 took minutes; bench/robustness)
        present = {int(p[1]) for p in (t.split(".", 2) for t in header.tensors) if p[0] == "blk" and p[1].isdigit()}
        missing = blocks - len({i for i in present if i < blocks})
        if missing:
            raise fail(f"{missing} of {blocks} layers have no tensors")
    embd = header.tensors.get("token_embd.weight")
    width = header.arch_value("embedding_length")
    if embd and isinstance(width, int) and embd[1][0] != width:
        raise fail(f"token_embd.weight width {embd[1][0]} != embedding_length {width}")
    if embd and len(embd[1]) > 1 and embd[1][1] != tokens:
        raise fail(f"token_embd.weight has {embd[1][1]} rows for {tokens} vocabulary tokens")


def quantization(header: GGUFHeader) -> str:
    """Human name of the dominant weight format, e.g. ``Q4_1``."""
    import gguf

    ftype = header.metadata.get("general.file_type")
    if isinstance(ftype, int):
        try:
            return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    if not header.tensor_types:
        return "?"
    dominant = max(header.tensor_types, key=lambda t: header.tensor_types[t])
    return gguf.GGMLQuantizationType(dominant).name
