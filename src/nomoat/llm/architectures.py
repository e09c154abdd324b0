"""The architectures ``nomoat tune`` and ``nomoat export`` support, and what each stage must do for each.

Chat works with any GGUF llama.cpp runs; training and export touch the weights, so they are limited to the rows
of :data:`TABLE`. A model outside it is refused with one line naming its architecture, before anything loads.

What the columns mean (docs/architecture.md has the table in prose):

* ``gguf`` -- llama.cpp's ``general.architecture`` for it (Mistral is written as ``llama`` by llama.cpp).
* Tensor names: HF <-> GGUF names come from gguf-py's table for ``gguf`` (what transformers reads GGUFs with).
* ``permute_qk`` -- llama.cpp stores q/k rows interleaved for its rotary kernel (llama, mistral); export
  permutes them back, as ``convert_hf_to_gguf.py`` does and transformers' loader undoes.
* ``norm_offset`` -- GGUF norm weights are HF's plus this (Gemma's RMSNorm multiplies by ``1 + w``).
* ``tied`` -- whether the LM head may share the embedding (then the GGUF has no ``output.weight``).
* ``biases`` / ``fused`` -- the q/k/v biases (Qwen2) and fused projections (Phi-3's ``qkv_proj`` and
  ``gate_up_proj``): LoRA wraps them as they are and the adapter keeps the fused GGUF names.
* ``carried`` -- config settings llama.cpp must honour, as HF config key -> GGUF key under the architecture
  (sliding window, soft-capping). Export checks each one in the written GGUF and refuses a file that lost one.
* ``notes`` -- what llama.cpp does differently, in one line (shown by ``nomoat models --json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nomoat.errors import UserError


@dataclass(frozen=True)
class Architecture:
    name: str
    hf_types: tuple[str, ...]  # config.json model_type values
    gguf: str
    permute_qk: bool = False
    norm_offset: float = 0.0
    tied: bool = False
    biases: str = "none"
    fused: tuple[str, ...] = ()
    carried: tuple[tuple[str, str], ...] = ()
    gguf_only: tuple[str, ...] = ()  # GGUF tensors with no HF parameter (copied from the base as they are)
    notes: str = ""

    def carried_settings(self, config: Any) -> dict[str, tuple[Any, str]]:
        """``{hf_key: (value, gguf_key)}`` of the carried settings this model sets (None/0 means unset)."""
        out = {}
        for hf_key, gguf_key in self.carried:
            value = getattr(config, hf_key, None)
            if value:
                out[hf_key] = (value, f"{self.gguf}.{gguf_key}")
        return out


_SOFTCAPS = (("attn_logit_softcapping", "attn_logit_softcapping"),
             ("final_logit_softcapping", "final_logit_softcapping"))  # fmt: skip
_WINDOW = ("sliding_window", "attention.sliding_window")

TABLE: tuple[Architecture, ...] = (
    Architecture(
        "llama",
        ("llama",),
        "llama",
        permute_qk=True,
        tied=True,
        notes="Llama 2/3.x, SmolLM2, TinyLlama: q/k rows permuted for llama.cpp's rotary layout",
    ),
    Architecture(
        "mistral",
        ("mistral",),
        "llama",
        permute_qk=True,
        notes="written as llama by llama.cpp; its llama graph has no sliding window, so a Mistral "
        "sliding_window is not carried (identical up to the window, 4096 tokens for v0.1)",
    ),
    Architecture(
        "qwen2",
        ("qwen2",),
        "qwen2",
        tied=True,
        biases="q, k, v",
        notes="Qwen2/2.5: q/k/v biases; small sizes tie the embedding",
    ),
    Architecture("qwen3", ("qwen3",), "qwen3", tied=True, notes="Qwen3: per-head q/k RMSNorm (attn_q_norm)"),
    Architecture(
        "gemma2",
        ("gemma2",),
        "gemma2",
        norm_offset=1.0,
        tied=True,
        carried=(_WINDOW, *_SOFTCAPS),
        notes="norms stored +1; attention and final logits soft-capped; sliding window on alternate "
        "layers; query_pre_attn_scalar must equal head_dim (llama.cpp assumes it)",
    ),
    Architecture(
        "gemma3",
        ("gemma3_text",),
        "gemma3",
        norm_offset=1.0,
        tied=True,
        carried=(_WINDOW, _SOFTCAPS[1]),
        notes="text models (270M, 1B); norms stored +1; 5 sliding-window layers per global one",
    ),
    Architecture(
        "phi3",
        ("phi3",),
        "phi3",
        fused=("qkv_proj", "gate_up_proj"),
        gguf_only=("rope_factors_long.weight", "rope_factors_short.weight"),
        notes="Phi-3/3.5/4-mini: fused qkv and gate_up (attn_qkv, ffn_up); llama.cpp runs Phi "
        "without its sliding window (identical up to the window)",
    ),
)

NAMES = tuple(a.name for a in TABLE)


def for_hf(model_type: str | None) -> Architecture:
    """The row for a config.json ``model_type``; UserError naming it when unsupported."""
    for arch in TABLE:
        if model_type in arch.hf_types:
            return arch
    raise _unsupported(model_type)


def for_gguf(architecture: str | None) -> Architecture:
    """The row for a GGUF ``general.architecture`` (``llama`` also covers Mistral files)."""
    for arch in TABLE:
        if arch.gguf == architecture:
            return arch
    raise _unsupported(architecture)


def supported(architecture: str | None, kind: str) -> bool:
    """Whether tune/export support a model of this architecture (``kind``: "gguf" or "hf")."""
    names = {a.gguf for a in TABLE} if kind == "gguf" else {t for a in TABLE for t in a.hf_types}
    return architecture in names


def _unsupported(name: str | None) -> UserError:
    return UserError(
        f"nomoat tune/export do not support the {name or 'unknown'!r} architecture "
        f"(supported: {', '.join(NAMES)}); chat still runs any GGUF llama.cpp loads"
    )
