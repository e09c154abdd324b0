"""The base model as a torch module, for training and export: from a GGUF (dequantized) or an HF folder.

transformers reads GGUF files itself (``from_pretrained(dir, gguf_file=name)``) and dequantizes the weights to
fp32, so the bundled Q4_1 model trains without any other download. The model's identity is the sha256 of its
file(s); a run records it so export and eval can refuse to mix up base models.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomoat.errors import ModelError
from nomoat.llm.models import ModelRef, resolve


@dataclass
class Base:
    """A base model's tokenizer, chat template and identity; ``model`` is filled by :meth:`load_weights`."""

    tokenizer: Any
    chat_template: str | None
    ref: ModelRef
    sha256: str
    context_length: int | None = None
    architecture: Any = None  # the nomoat.llm.architectures row
    config: Any = None  # transformers PretrainedConfig
    model: Any = None  # transformers PreTrainedModel

    def describe(self) -> dict[str, Any]:
        return {"name": self.ref.name, "path": str(self.ref.path), "kind": self.ref.kind, "sha256": self.sha256,
                "architecture": self.architecture.name if self.architecture else None}  # fmt: skip

    def _where(self) -> dict[str, str]:
        if self.ref.kind == "gguf":
            return {"pretrained_model_name_or_path": str(self.ref.path.parent), "gguf_file": self.ref.path.name}
        return {"pretrained_model_name_or_path": str(self.ref.path)}

    def load_weights(self, dtype: Any = None) -> Any:
        """Load (and for a GGUF, dequantize) the weights: seconds for small models, so done after cheap checks."""
        from transformers import AutoModelForCausalLM

        with _quiet():
            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    **self._where(),
                    config=self.config,
                    dtype=dtype,
                    use_safetensors=True if self.ref.kind == "hf" else None,
                )
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelError(f"cannot load {self.ref.path} for training: {_first_line(exc)}") from None
        quantizer = getattr(self.model, "hf_quantizer", None)
        if self.ref.kind == "gguf" and quantizer is not None:
            # The weights are plain floats now; transformers still tags the model "GGUF-quantized", which makes
            # Trainer refuse it and save_pretrained write a quantization_config that other loaders trip on.
            quantizer.remove_quantization_config(self.model)
            self.model.config._is_quantized = False
        return self.model


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(ref: ModelRef) -> str:
    """sha256 of a GGUF file, or of an HF folder's config and weight files (names and contents)."""
    if ref.kind == "gguf":
        return sha256_file(ref.path)
    digest = hashlib.sha256()
    files = sorted(p for p in ref.path.iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    for p in files:
        digest.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return digest.hexdigest()


def load(model: str | Path | ModelRef | None = None) -> Base:
    """The tokenizer, config and identity of ``model`` ('default', a .gguf or an HF folder); weights come later.

    Raises UserError first, before reading anything heavy, when tune/export do not support its architecture."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from nomoat.llm.models import architecture

    ref = model if isinstance(model, ModelRef) else resolve(model)
    arch = architecture(ref)
    if ref.kind == "hf" and not any(ref.path.glob("*.safetensors")):
        raise ModelError(f"{ref.path} has no .safetensors weights (nomoat never loads pickled .bin files)")
    base = Base(None, None, ref, fingerprint(ref), architecture=arch)
    with _quiet():
        try:
            base.config = _config(ref)
            # From a GGUF the tokenizer is built from the file's vocabulary directly (AutoTokenizer would first
            # parse the whole file again only to learn the model type).
            tokenizer_class = PreTrainedTokenizerFast if ref.kind == "gguf" else AutoTokenizer
            base.tokenizer = tokenizer_class.from_pretrained(**base._where())
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"cannot read the tokenizer of {ref.path}: {_first_line(exc)}") from None
    if ref.kind == "gguf":
        _strip_as_llama_cpp(base.tokenizer, ref.path)
    base.context_length = getattr(base.config, "max_position_embeddings", None)
    template = getattr(base.tokenizer, "chat_template", None)
    base.chat_template = template if isinstance(template, str) else None
    return base


def _strip_as_llama_cpp(tokenizer: Any, path: Path) -> None:
    """llama.cpp makes the control tokens of a model *named* Phi-3 eat the whitespace after them (RSTRIP, set in
    llama-vocab.cpp from ``general.name``; the file does not store it). A tokenizer built from the GGUF gets the
    same flags, so training tokenizes as the runtime will."""
    from tokenizers import AddedToken

    name = str(_header(path).metadata.get("general.name") or "").lower()
    if "phi-3" not in name and "phi3" not in name:
        return
    keep = {"<unk>", "<s>", "<|endoftext|>"}  # llama.cpp's exceptions
    eats = [AddedToken(t.content, rstrip=True, lstrip=t.lstrip, normalized=False, special=True)
            for t in tokenizer.added_tokens_decoder.values() if t.content not in keep]  # fmt: skip
    tokenizer.backend_tokenizer.add_special_tokens(eats)


_CONFIGS: dict[tuple[str, int, int], Any] = {}
_HEADERS: dict[tuple[str, int, int], Any] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _header(path: Path) -> Any:
    """The GGUF's validated header, read once per process (the config and the tokenizer flags both need it)."""
    from nomoat.llm.gguf_check import read_header

    key = _file_key(path)
    if key not in _HEADERS:
        _HEADERS[key] = read_header(path)
    return _HEADERS[key]


# llama.cpp's Gemma 27B sizes (by layer count) scale queries by hidden/heads instead (src/models/gemma2.cpp)
_LLAMA_CPP_27B = {"gemma2": (46,), "gemma3": (62,)}


def _config(ref: ModelRef) -> Any:
    """The transformers config; for a GGUF read once per process (transformers parses every vocabulary string
    of the file to build it: seconds for a 150k-token vocabulary) and corrected where its GGUF mapping falls
    short: ``head_dim`` from ``attention.key_length`` (Qwen3's default of 128 is wrong for other widths),
    Gemma's ``query_pre_attn_scalar`` as llama.cpp computes it, and ``pad_token_id`` from the file (Phi-3's
    default of 32000 lies outside a smaller vocabulary)."""
    import copy

    from transformers import AutoConfig

    if ref.kind == "hf":
        return AutoConfig.from_pretrained(ref.path)
    key = _file_key(ref.path)
    if key not in _CONFIGS:
        config = AutoConfig.from_pretrained(ref.path.parent, gguf_file=ref.path.name)
        header = _header(ref.path)
        if header.arch_value("attention.key_length"):
            config.head_dim = int(header.arch_value("attention.key_length"))
        if hasattr(config, "query_pre_attn_scalar"):  # Gemma: llama.cpp scales queries by 1/sqrt(head_dim),
            large = header.arch_value("block_count") in _LLAMA_CPP_27B.get(header.architecture, ())  # the file
            config.query_pre_attn_scalar = (  # does not say; transformers would take 256
                config.hidden_size // config.num_attention_heads if large else config.head_dim
            )
        pad = header.metadata.get("tokenizer.ggml.padding_token_id")
        config.pad_token_id = pad if pad is not None and pad < config.vocab_size else None
        _CONFIGS[key] = config
    return copy.deepcopy(_CONFIGS[key])


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No hub access, no log noise, no progress bars from transformers (nomoat shows its own)."""
    import functools
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are the user's files, never fetched
    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)  # its GGUF dequantization bar ignores the switch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
