"""Chat formats per model family: the end-of-turn token training must teach, and the Ollama TEMPLATE and stop
parameters export writes.

A model's own Jinja template (in its GGUF or tokenizer_config.json) stays the source of truth for training and
llama.cpp. Ollama does not run Jinja: its Modelfile needs a Go template, so export picks the family by the
template's control tokens and *checks* the choice: :func:`matches` renders a probe conversation with the model's
Jinja template and with the family's Go template (:func:`render_go`, the subset these templates use) and the
Modelfile is only written when both give the same text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nomoat.errors import UserError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    markers: tuple[str, ...]  # all present in a Jinja template of this family
    end_of_turn: str  # the token closing an assistant turn (trained, and a stop)
    go_template: str  # Ollama's TEMPLATE; BOS is left to the runtime (the GGUF's add_bos_token)
    stops: tuple[str, ...]
    system: bool = True  # whether the family has a system role of its own


FORMATS: tuple[ChatFormat, ...] = (
    ChatFormat(
        "chatml", ("<|im_start|>", "<|im_end|>"), "<|im_end|>",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ("<|im_end|>",),
    ),
    ChatFormat(
        "llama3", ("<|start_header_id|>", "<|eot_id|>"), "<|eot_id|>",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|eot_id|>",),
    ),
    ChatFormat(
        "gemma", ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>",
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ("<end_of_turn>",), system=False,
    ),
    ChatFormat(
        "phi3", ("<|assistant|>", "<|end|>"), "<|end|>",
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        ("<|end|>", "<|endoftext|>"),
    ),
    ChatFormat(
        "mistral", ("[INST]", "[/INST]"), "</s>",
        '{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
        '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}',
        ("</s>", "[INST]"), system=False,
    ),
)  # fmt: skip

PROBE = (
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which colour is box 1?"},
    {"role": "assistant", "content": "Box 1 is red."},
    {"role": "user", "content": "And box 2?"},
)


def detect(template: str | None) -> ChatFormat | None:
    """The family whose control tokens the Jinja ``template`` uses, or None (no template, or another format)."""
    for fmt in FORMATS:
        if template and all(m in template for m in fmt.markers):
            return fmt
    return None


def probe(fmt: ChatFormat) -> list[dict[str, str]]:
    """The conversation both renderings are compared on (without a system turn for families that have none)."""
    return [dict(m) for m in PROBE if fmt.system or m["role"] != "system"]


def matches(fmt: ChatFormat, template: str, bos: str, eos: str) -> tuple[bool, str, str]:
    """(same, jinja_text, go_text) for the probe conversation; a leading BOS is the runtime's, not compared."""
    from nomoat.llm.templates import compile_template, render_template

    messages = probe(fmt)
    jinja = render_template(compile_template(template), messages, add_generation_prompt=True,
                            bos_token=bos, eos_token=eos)  # fmt: skip
    go = render_go(fmt.go_template, messages)
    jinja, go = (t.removeprefix(bos) if bos else t for t in (jinja, go))
    return jinja == go, jinja, go


# -- a Go text/template subset: range .Messages, if/else if/else with eq .Role "x", .Role, .Content, {{- -}} --
_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def render_go(template: str, messages: Sequence[dict[str, str]]) -> str:
    """Render the subset of Go's text/template that :data:`FORMATS` use (Ollama's dialect), for checking."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    tokens.append(("text", template[pos:]))
    tree, end = _parse(tokens, 0)
    if end != len(tokens):
        raise UserError("unbalanced Go template")
    return _run(tree, {"Messages": list(messages)}, None)


def _parse(tokens: list[tuple[str, str]], i: int) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
        elif value == "end" or value == "else" or value.startswith("else if "):
            return nodes, i
        elif value.startswith("range "):
            body, i = _parse(tokens, i + 1)
            nodes.append(("range", value[6:].strip(), body))
            i += 1  # the {{ end }}
        elif value.startswith("if "):
            branches, i = [], i
            cond = value[3:].strip()
            while True:
                body, i = _parse(tokens, i + 1)
                branches.append((cond, body))
                kind, value = tokens[i]
                if value == "end":
                    break
                cond = value[8:].strip() if value.startswith("else if ") else None
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("expr", value))
            i += 1
    return nodes, i


def _run(nodes: list[Any], data: dict[str, Any], dot: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(str(_value(node[1], data, dot)))
        elif node[0] == "range":
            for item in _value(node[1], data, dot):
                out.append(_run(node[2], data, item))
        else:
            for cond, body in node[1]:
                if cond is None or _truth(cond, data, dot):
                    out.append(_run(body, data, dot))
                    break
    return "".join(out)


def _value(expr: str, data: dict[str, Any], dot: Any) -> Any:
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1]
    if expr.startswith("."):
        source = data if dot is None or expr == ".Messages" else dot
        return source[expr[1:].lower() if source is not data else expr[1:]]
    raise UserError(f"unsupported Go template expression: {expr}")


def _truth(cond: str, data: dict[str, Any], dot: Any) -> bool:
    parts = cond.split()
    if parts[0] == "eq" and len(parts) == 3:
        return _value(parts[1], data, dot) == _value(parts[2], data, dot)
    return bool(_value(cond, data, dot))
