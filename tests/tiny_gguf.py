"""Write a tiny random Llama GGUF (byte-level BPE vocabulary, 2 layers, width 32) that llama.cpp really loads.

Unit tests use it instead of the 98 MB bundled model: it loads in milliseconds and produces (random) text
through exactly the same code path. Built with ``gguf.GGUFWriter`` so keys come from ``gguf.Keys``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2


def _byte_tokens() -> list[str]:
    # GPT-2's reversible byte -> printable unicode map (https://github.com/openai/gpt-2/blob/master/src/encoder.py)
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    table = dict(zip(keep, chars, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tiny_llama(
    path: Path,
    *,
    chat_template: str | None = CHATML,
    n_layers: int = 2,
    hidden: int = 32,
    context_length: int = 512,
    seed: int = 0,
    architecture: bool = True,
    vocabulary: bool = True,
    declared_layers: int | None = None,
    declared_width: int | None = None,
) -> Path:
    """Write the model to ``path``. The keyword switches build deliberately broken variants for tests."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = SPECIALS + _byte_tokens() + ["Ġt", "he", "Ġthe"]
    types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS))
    merges = ["Ġ t", "h e", "Ġt he"]
    vocab, heads, kv_heads, ff = len(tokens), 4, 2, hidden * 2
    head_dim = hidden // heads

    writer = gguf.GGUFWriter(str(path), "llama" if architecture else "")
    if not architecture:
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_name("tiny-random-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(declared_width or hidden)
    writer.add_feed_forward_length(ff)
    writer.add_block_count(declared_layers or n_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if vocabulary:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", weight(vocab, hidden))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ff, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ff, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
