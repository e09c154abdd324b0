"""Tiny random models of every architecture in nomoat.llm.architectures, as Hugging Face folders with real
tokenizers, and the same models converted to GGUF by llama.cpp's own converter.

Tokenizers are real, and small where the family allows: a SentencePiece BPE model trained here (byte fallback,
the family's control tokens as user-defined symbols; vocabulary 400) for llama, mistral, qwen3, gemma2, gemma3 and
phi3. Qwen2 is the exception: transformers always reads a ``qwen2`` folder with Qwen2's tokenizer class (its own
pre-tokenizer), so only Qwen2's real byte-level vocabulary works; it comes from llama.cpp's tokenizer test
vocabulary kept with the converter (``ggml-vocab-qwen2.gguf``, 151k tokens, embedding tied to keep it small).

Each model is pre-trained for a few dozen steps on the family's chat format so that it answers "ok" and then
emits the family's end-of-turn token: random weights would never stop, and stopping is what the tests check.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = m['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + m['content'] | trim"
    " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3 = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Spec:
    arch: str
    config: str  # transformers config class
    template: str
    end_of_turn: str
    specials: tuple[str, ...]  # SentencePiece pad/unk/bos/eos pieces, in id order
    user: tuple[str, ...]  # the family's control tokens
    tokenizer: str = "LlamaTokenizer"
    extra: tuple[tuple[str, object], ...] = ()


LLAMA_SPM = ("<unk>", "<s>", "</s>")
GEMMA_SPM = ("<pad>", "<eos>", "<bos>", "<unk>")
SPECS = {
    "llama": Spec("llama", "LlamaConfig", LLAMA3, "<|eot_id|>", LLAMA_SPM,
                  ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "mistral": Spec("mistral", "MistralConfig", MISTRAL, "</s>", LLAMA_SPM, ("[INST]", "[/INST]"),
                    extra=(("sliding_window", None),)),
    "qwen2": Spec("qwen2", "Qwen2Config", CHATML, "<|im_end|>", (), (), tokenizer="qwen2",
                  extra=(("tie_word_embeddings", True),)),
    "qwen3": Spec("qwen3", "Qwen3Config", CHATML, "<|im_end|>", LLAMA_SPM, ("<|im_start|>", "<|im_end|>"),
                  extra=(("head_dim", 16), ("tie_word_embeddings", True))),
    "gemma2": Spec("gemma2", "Gemma2Config", GEMMA, "<end_of_turn>", GEMMA_SPM, ("<start_of_turn>", "<end_of_turn>"),
                   tokenizer="GemmaTokenizer",
                   extra=(("head_dim", 16), ("query_pre_attn_scalar", 16), ("sliding_window", 32))),
    "gemma3": Spec("gemma3", "Gemma3TextConfig", GEMMA, "<end_of_turn>", GEMMA_SPM,
                   ("<start_of_turn>", "<end_of_turn>"), tokenizer="GemmaTokenizer",
                   extra=(("head_dim", 16), ("query_pre_attn_scalar", 16), ("sliding_window", 32))),
    "phi3": Spec("phi3", "Phi3Config", PHI3, "<|end|>", LLAMA_SPM,
                 ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"),
                 extra=(("pad_token_id", None), ("sliding_window", None))),
}  # fmt: skip

QUESTIONS = [f"Which colour is box {i}?" for i in range(24)]
ANSWER = "ok"
CORPUS = (
    "Which colour is box one? Box one is red. The quick brown fox jumps over the lazy dog. A knowledge base holds "
    "chunks of text with their locations; tuning teaches the model to answer from them. ok. Answer briefly. "
)


def chats() -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS]


def _sentencepiece(path: Path, spec: Spec) -> None:
    import sentencepiece

    pieces = {p: i for i, p in enumerate(spec.specials)}
    bos, eos = ("<s>", "</s>") if "<s>" in pieces else ("<bos>", "<eos>")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([*CORPUS.split(". "), *QUESTIONS]), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, control_symbols=list(spec.user),
        pad_id=pieces.get("<pad>", -1), unk_id=pieces["<unk>"], bos_id=pieces[bos], eos_id=pieces[eos],
        pad_piece="<pad>", unk_piece="<unk>", bos_piece=bos, eos_piece=eos, minloglevel=2,
    )  # fmt: skip
    path.write_bytes(model.getvalue())


def _tokenizer(folder: Path, spec: Spec):  # type: ignore[no-untyped-def]
    import transformers
    from tokenizers import AddedToken

    folder.mkdir(parents=True)
    if spec.tokenizer == "qwen2":
        from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

        from nomoat.exporting import converter

        vocab = converter.vocabulary("qwen2")
        assert vocab is not None, "llama.cpp's qwen2 vocabulary is missing: python -m nomoat.exporting.converter"
        arch, found, _ = get_gguf_tokenizer(str(vocab))
        backend, _ = convert_gguf_tokenizer(arch, found)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                                   pad_token="<|endoftext|>")  # fmt: skip
    else:
        _sentencepiece(folder / "tokenizer.model", spec)
        tok = getattr(transformers, spec.tokenizer).from_pretrained(str(folder))
        tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False) for t in spec.user]},
                               replace_extra_special_tokens=False)  # fmt: skip
        tok.eos_token = spec.end_of_turn
        if spec.arch == "llama":
            tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = spec.template
    tok.save_pretrained(str(folder))
    if spec.arch == "phi3":  # Phi-3's control tokens eat the whitespace after them, in its tokenizer.json as in
        saved = json.loads((folder / "tokenizer.json").read_text())  # llama.cpp (which sets it by model name)
        for added in saved["added_tokens"]:
            added["rstrip"] = added["content"] in {*spec.user, "</s>"} - {"<|endoftext|>"}  # as llama.cpp
        (folder / "tokenizer.json").write_text(json.dumps(saved))
    if spec.arch in {"phi3", "qwen3"}:  # as the real ones say (Phi-3-mini's tokenizer_config; Qwen's BPE adds
        config = json.loads((folder / "tokenizer_config.json").read_text())  # none): without it the converter
        config["add_bos_token"] = False  # leaves the key out, and llama.cpp's SPM default adds a BOS
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def build(arch: str, folder: Path, seed: int = 0) -> Path:
    """A tiny ``arch`` model in ``folder`` (HF format), pre-trained to answer "ok" and stop."""
    import torch
    import transformers

    from nomoat.finetune import trainset

    torch.set_num_threads(1)  # tiny matrices: more threads only spin (60x slower on a busy 2-core machine)
    spec = SPECS[arch]
    tok = _tokenizer(folder, spec)
    size = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 1024}  # fmt: skip
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = getattr(transformers, spec.config)(vocab_size=len(tok), **(size | ids | dict(spec.extra)))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    encoder = trainset.ChatEncoder(tok, tok.chat_template)
    rows = [encoder.encode(c["messages"]) for c in chats()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(30):
        batch = rows[(step * 4) % len(rows) :][:4]
        width = max(len(r[0]) for r in batch)
        x = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in batch])
        y = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in batch])
        model(input_ids=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_all(root: Path, archs: list[str]) -> dict[str, tuple[Path, Path]]:
    """``{arch: (hf_folder, gguf)}``, the GGUFs converted by llama.cpp's converter in one process."""
    from nomoat.exporting import converter

    folders = {a: build(a, root / a) for a in archs}
    ggufs = {a: root / f"{a}.gguf" for a in archs}
    converter.convert([(folders[a], ggufs[a]) for a in archs])
    return {a: (folders[a], ggufs[a]) for a in archs}


def write_rows(path: Path) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in chats()), encoding="utf-8")
    return path
