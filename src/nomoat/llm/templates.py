"""Chat templates come from model files, i.e. from strangers: they compile and render here, in Jinja's
``ImmutableSandboxedEnvironment``, so ``{{ ''.__class__.__mro__ }}``-style payloads raise instead of running.

Used at inference (:mod:`nomoat.llm.runtime`) and in training (:mod:`nomoat.finetune.trainset`), so both render
a conversation the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nomoat.errors import ModelError

Message = dict[str, str]

# Used when a GGUF has no chat template. ChatML is what SmolLM2, Qwen and many small models use.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def compile_template(source: str) -> Any:
    """Compile a chat template in an immutable sandbox (no attribute escapes, no mutation of inputs)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"], autoescape=False
    )

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ModelError(f"the model's chat template does not compile: {exc}") from None


def render_template(template: Any, messages: Sequence[Message], **variables: Any) -> str:
    """Render a compiled template; sandbox violations and template errors become a one-line ModelError."""
    from jinja2 import TemplateError
    from jinja2.sandbox import SecurityError

    try:
        return template.render(messages=list(messages), **variables)
    except SecurityError as exc:
        raise ModelError(f"the model's chat template tried an unsafe operation and was stopped: {exc}") from None
    except TemplateError as exc:
        raise ModelError(f"the model's chat template failed: {exc}") from None


def defuse(text: str) -> str:
    """``text`` with control-token look-alikes (``<|im_end|>``, ``<s>``, ``[INST]``, ...) broken by a zero-width
    joiner, for tokenizers that cannot turn special-token parsing off."""
    for opener in ("<|", "<s>", "</s>", "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>"):
        text = text.replace(opener, opener[0] + "\u200d" + opener[1:])
    return text
