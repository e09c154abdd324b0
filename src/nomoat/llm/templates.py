"""Chat templates come from model files, i.e. from strangers: they compile and render here, in Jinja's
``ImmutableSandboxedEnvironment``, so ``{{ ''.__class__.__mro__ }}``-style payloads raise instead of running.

Used at inference (:mod:`nomoat.llm.runtime`) and in training (:mod:`nomoat.finetune.trainset`), so both render
a conversation the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from nomoat.errors import ModelError

Message = dict[str, str]

# Used when a GGUF has no chat template. ChatML is what SmolLM2, Qwen and many small models use.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


MAX_RENDER_CHARS = 4 * 2**20
"""Longest rendered prompt (a 128k-token context is ~0.5 M characters); a template making more is stopped."""
MAX_RENDER_SECONDS = 2.0
"""Longest a render may take (real templates take milliseconds); checked per output piece and loop step."""
_MAX_EXPONENT = 256
_MAX_REPEAT = 2**20


def _environment() -> Any:
    """The sandbox, also bounding what the sandbox itself does not: ``x ** huge``, ``'s' * huge``, and loops that
    run long without output (every ``range()`` step checks the render's deadline)."""
    import time

    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

    class Bounded(ImmutableSandboxedEnvironment):  # type: ignore[misc]
        intercepted_binops = frozenset({"*", "**"})
        deadline = float("inf")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                        raise SecurityError("repetition makes a value too large")
            return super().call_binop(context, operator, left, right)

        def check_time(self) -> None:
            if time.monotonic() > self.deadline:
                raise SecurityError(f"rendering took over {MAX_RENDER_SECONDS:g} s")

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"], autoescape=False)

    def timed_range(*args: int) -> Any:
        for i in safe_range(*args):
            env.check_time()
            yield i

    env.globals["range"] = timed_range
    return env


def compile_template(source: str) -> Any:
    """Compile a chat template in an immutable sandbox (no attribute escapes, no mutation of inputs), with bounds on
    output size, time and arithmetic (see :func:`render_template`)."""
    from jinja2 import TemplateError

    env = _environment()

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except (TemplateError, RecursionError, MemoryError, ValueError, OverflowError) as exc:
        raise ModelError(f"the model's chat template does not compile: {str(exc)[:200]}") from None


def render_template(template: Any, messages: Sequence[Message], **variables: Any) -> str:
    """Render a compiled template; sandbox violations, template errors, and output past MAX_RENDER_CHARS or
    MAX_RENDER_SECONDS become a one-line ModelError (so do the arithmetic errors a hostile template provokes:
    ``range(10**6)``, a huge integer printed, ...), never a traceback."""
    import time

    from jinja2 import TemplateError
    from jinja2.sandbox import SecurityError

    env = template.environment
    env.deadline = time.monotonic() + MAX_RENDER_SECONDS
    parts, size = [], 0
    try:
        for piece in template.generate(messages=list(messages), **variables):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise SecurityError(f"it renders over {MAX_RENDER_CHARS:,} characters")
            parts.append(piece)
            env.check_time()
    except SecurityError as exc:
        raise ModelError(f"the model's chat template tried an unsafe operation and was stopped: {exc}") from None
    except TemplateError as exc:
        raise ModelError(f"the model's chat template failed: {exc}") from None
    except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError, IndexError, KeyError) as exc:
        raise ModelError(f"the model's chat template failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        env.deadline = float("inf")
    return "".join(parts)


# Spelled-out control tokens of the common families, for when the tokenizer's own list is not at hand: ChatML and
# Llama 3 (<|...|>), Llama 2 / Mistral, Gemma, reasoning models, DeepSeek (full-width bars: <｜User｜>).
KNOWN_SPECIALS = ("<|", "<s>", "</s>", "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>", "<eos>", "<bos>",
                  "<pad>", "<unk>", "<think>", "</think>", "<｜")  # fmt: skip


def defuse(text: str, specials: Iterable[str] = ()) -> str:
    """``text`` with every special-token spelling broken by a zero-width joiner after its first character, for
    tokenizers that cannot turn special-token parsing off. ``specials``: the tokenizer's own special tokens (the
    list that matters); :data:`KNOWN_SPECIALS` are always added."""
    tokens = {t for t in (*specials, *KNOWN_SPECIALS) if len(t) >= 2 and not t.isspace()}
    for token in sorted(tokens, key=len, reverse=True):
        text = text.replace(token, token[0] + "\u200d" + token[1:])
    return text
