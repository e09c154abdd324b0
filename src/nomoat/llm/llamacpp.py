"""llama.cpp as a library: open a GGUF safely on this CPU, close what is open at exit, requantize, measure.

With :mod:`nomoat.llm.runtime` (chat) and :mod:`nomoat.llm.batching` (serve's batch engine), the only modules
that import ``llama_cpp``. Kept apart from the chat model so :mod:`nomoat.llm.formats` can requantize without
importing it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nomoat.config import RuntimeConfig
from nomoat.errors import ModelError, UserError


def load_llama(path: Path, config: RuntimeConfig, n_ctx: int, **options: Any) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # pragma: no cover - install problem
        raise UserError(f"llama-cpp-python is not installed ({exc}); run `make install`") from None
    try:
        with _plain_cpu_buffers() if _cpu_has_amx() else contextlib.nullcontext():
            llama = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(config.n_batch, n_ctx),
                n_threads=config.n_threads,
                n_threads_batch=config.n_threads,
                seed=config.seed,
                verbose=False,
                **options,
            )
    except Exception as exc:  # any loader failure (ValueError, jinja2 errors in extra templates) is the file's
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"llama.cpp could not load {path.name}: {reason}") from None
    close_at_exit(llama)
    return llama


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """Requantize a GGUF with llama.cpp (``llama_model_quantize``); ``quant`` is one of ``config.GGUF_QUANTS``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.allow_requantize = True
    params.nthread = threads or RuntimeConfig().n_threads
    from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp logs every tensor to stderr

    with suppress_stdout_stderr(disable=False):
        failed = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0
    if failed:
        raise ModelError(f"llama.cpp could not quantize {src.name} to {quant}")
    return dst


def perplexity(path: Path, tokens: Sequence[int], *, lora: Path | None = None, decode_tokens: int = 32,
               threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Perplexity of ``tokens`` (one window) under the GGUF at ``path`` (plus a LoRA adapter GGUF), via
    llama.cpp's logits; also prefill and single-token decode speed, and the next-token log-probabilities
    (``logprobs``, one row per position but the last) for distribution comparisons."""
    import math
    import time

    import numpy as np

    config = RuntimeConfig(n_batch=max(64, len(tokens)))
    config.n_threads = threads or config.n_threads
    lora_path = str(lora) if lora else None
    llama = load_llama(path, config, max(64, len(tokens) + decode_tokens), logits_all=True, lora_path=lora_path)
    try:
        start = time.perf_counter()
        llama.eval(list(tokens))
        prefill = time.perf_counter() - start
        logits = np.asarray(llama.scores[: len(tokens) - 1], dtype=np.float64)
        start = time.perf_counter()
        for token in tokens[:decode_tokens]:  # one token per call, as in generation
            llama.eval([token])
        decode = time.perf_counter() - start
    finally:
        llama.close()
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logprobs[np.arange(len(tokens) - 1), np.asarray(tokens[1:])].mean()
    return {"ppl": math.exp(nll), "prefill_tok_s": len(tokens) / prefill,
            "decode_tok_s": decode_tokens / max(decode, 1e-9), "logprobs": logprobs}  # fmt: skip


def sequence_state(llama: Any) -> bytes | None:
    """Sequence 0's KV state of ``llama``'s context (``llama_state_seq_get_data``), or None if llama.cpp fails."""
    import ctypes

    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(llama._ctx.ctx, 0)
    data = (ctypes.c_uint8 * size)()
    return bytes(data) if llama_cpp.llama_state_seq_get_data(llama._ctx.ctx, data, size, 0) == size else None


def restore_sequence(llama: Any, state: bytes, tokens: Sequence[int]) -> bool:
    """Put ``state`` (from :func:`sequence_state` after evaluating ``tokens``) into sequence 0 of a reset context
    and tell llama-cpp-python which tokens it holds; False (and an empty sequence) if llama.cpp refuses it."""
    import ctypes

    import llama_cpp

    llama.reset()
    buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if not state or llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buffer, len(state), 0) != len(state):
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llama._ctx.ctx), 0, -1, -1)
        return False
    llama.input_ids[: len(tokens)] = tokens
    llama.n_tokens = len(tokens)
    llama._requires_eval = True  # the context's logits are not those of the last restored token
    return True


def version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


def _cpu_has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _plain_cpu_buffers() -> Iterator[None]:
    """Load with ``use_extra_bufts = False``: llama.cpp's AMX matmul segfaults on any batch > 1 token
    (ggml_backend_amx_mul_mat, upstream llama.cpp#20824). Building with -DGGML_AMX_*=OFF was meant to avoid
    it, but llama-cpp-python 0.3.36 built that way still contains the AMX kernels (seen 2026-11-29 on a CPU
    with AMX: segfault in ggml_backend_amx_mul_mat), so on AMX CPUs the extra buffer types stay off at load.
    Llama() has no argument for it; it reads the defaults from this function, which we wrap meanwhile."""
    import llama_cpp.llama_cpp as C

    default = C.llama_model_default_params

    def plain() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    C.llama_model_default_params = plain
    try:
        yield
    finally:
        C.llama_model_default_params = default


# llama-cpp-python frees its model in __del__; at interpreter exit its C bindings may already be gone, which
# prints "TypeError: 'NoneType' object is not callable". Closing live objects while Python is intact avoids it.
_live: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_registered = itertools.count()


def close_at_exit(thing: Any) -> None:
    """Call ``thing.close()`` at interpreter exit if it is still alive. Newest first: a batch engine
    (:mod:`nomoat.llm.batching`) stops before the model it decodes with is closed under a running decode."""
    _live[next(_registered)] = thing


@atexit.register
def _close_all() -> None:
    for key in sorted(_live.keys(), reverse=True):
        thing = _live.get(key)
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()
