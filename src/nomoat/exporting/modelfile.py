"""The Ollama Modelfile beside an exported GGUF: FROM, a TEMPLATE in Ollama's Go syntax for the model's chat
format, and its stop parameters. The template is only written when it renders the probe conversation exactly as
the model's own Jinja template does (:func:`nomoat.llm.chatformats.matches`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nomoat.errors import UserError
from nomoat.finetune import basemodel
from nomoat.llm import chatformats
from nomoat.paths import atomic_write


def write(gguf_path: Path, base: basemodel.Base) -> dict[str, Any]:
    """``<gguf stem>.Modelfile``; UserError naming the reason when the template has no Ollama equivalent."""
    from nomoat.llm.templates import CHATML_TEMPLATE

    template = base.chat_template or CHATML_TEMPLATE  # what training and chat use for a model without one
    fmt = chatformats.detect(template)
    if fmt is None:
        names = ", ".join(f.name for f in chatformats.FORMATS)
        raise UserError(f"no Ollama Modelfile: the base's chat template is none of {names}; "
                        "the GGUF itself carries the template for llama.cpp")  # fmt: skip
    tok = base.tokenizer
    same, jinja, go = chatformats.matches(fmt, template, tok.bos_token or "", tok.eos_token or "")
    if not same:
        raise UserError(f"no Ollama Modelfile: the model's template renders a conversation differently from "
                        f"Ollama's {fmt.name} template ({jinja[:60]!r} vs {go[:60]!r})")  # fmt: skip
    stops = [*fmt.stops, *([tok.eos_token] if tok.eos_token else [])]
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{fmt.go_template}"""']
    lines += [f"PARAMETER stop {quote(s)}" for s in dict.fromkeys(stops)]
    path = atomic_write(gguf_path.with_suffix(".Modelfile"), "\n".join(lines) + "\n")
    return {"format": "ollama", "chat_format": fmt.name, "path": str(path), "bytes": path.stat().st_size,
            "sha256": basemodel.sha256_file(path)}  # fmt: skip


def quote(value: str) -> str:
    """``value`` as one quoted Modelfile argument. The tokenizer's strings come from a stranger's model files:
    a quote, backslash or line break in them could end the argument and start a new instruction (``SYSTEM``,
    ``ADAPTER``), so those are refused rather than guessed at (Ollama's parser has no escape for a newline)."""
    if not value or any(c in value for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"no Ollama Modelfile: the stop string {value[:40]!r} cannot be written safely")
    return f'"{value}"'
