"""Chat with a GGUF in llama.cpp: load it (the served file, see formats), tokenize a chat safely, generate.

Chat templates render in a sandbox (:mod:`nomoat.llm.templates`). Text from users and documents is tokenized
with special-token parsing *off*: a document containing ``<|im_end|>`` stays those characters and can never close
a turn. Only the template's own text is parsed for special tokens (see :meth:`Model.encode_chat`).
"""

from __future__ import annotations

import codecs
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.errors import ModelError, UserError
from nomoat.llm import formats, lookup, prefix
from nomoat.llm.llamacpp import load_llama
from nomoat.llm.lookup import Drafting
from nomoat.llm.models import ModelRef, resolve
from nomoat.llm.templates import CHATML_TEMPLATE, Message, compile_template, defuse, render_template

_ROLES = {"system", "user", "assistant"}

TokenSource = Callable[[list[int], GenerationConfig, int, Drafting], Iterator[int]]
"""``source(prompt, gen, max_new, drafting)``: the token ids sampled after ``prompt`` (an end-of-generation token
included), at most ``max_new``; closing the iterator stops sampling."""


@dataclass
class Generation:
    """An answer being generated: iterate for text pieces; afterwards the counters are final."""

    pieces: Iterator[str]
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | None while running
    notices: list[str] = field(default_factory=list)
    drafting: Drafting = field(default_factory=Drafting)  # decode calls and lookup drafts (bench reads it)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def text(self) -> str:
        return "".join(self.pieces)


class Model:
    """A GGUF model loaded in llama.cpp, with its chat template. Not thread-safe: hold ``lock`` to generate."""

    def __init__(self, ref: ModelRef, config: RuntimeConfig | None = None):
        from nomoat.llm.gguf_check import read_header

        if ref.kind != "gguf":
            raise ModelError(f"{ref.path} is a Hugging Face folder; chat needs a .gguf (see `nomoat export`)")
        self.ref, self.config = ref, config or RuntimeConfig()
        self.header = read_header(ref.path)  # validates before llama.cpp sees the file
        trained_ctx = self.header.arch_value("context_length") or self.config.n_ctx
        self.n_ctx = min(self.config.n_ctx, int(trained_ctx))
        # Our sandboxed compile first: its error names the template; llama.cpp's loader would fail less clearly.
        self.template = compile_template(self.header.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE)
        self.path = formats.served_path(ref.path, self.config.fast_format)  # the file llama.cpp runs
        self.llama = load_llama(self.path, self.config, self.n_ctx)
        self.lock = threading.Lock()
        self.bos = self._token_text(self.llama.token_bos())
        self.eos = self._token_text(self.llama.token_eos())

    @property
    def name(self) -> str:
        return self.ref.name

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    # -- tokenization -------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text`` without BOS. ``special=False`` keeps control-token look-alikes as plain text."""
        if not text:
            return []
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """Text of ``tokens``; ``special=True`` also spells out control tokens such as ``<|im_end|>``."""
        return self.llama.detokenize(list(tokens), special=special).decode("utf-8", errors="replace")

    def encode_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> list[int]:
        """Render the chat template and tokenize it, parsing special tokens only in the template's own text.

        The template is rendered once with each message's content replaced by a unique marker; the text
        between markers is the template's (parsed with special tokens on), the markers are swapped for
        the real content (special tokens off). If a template transforms content so the markers vanish,
        we fall back to rendering the real content with every control-token string defused.
        """
        _check_messages(messages)
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        masked = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
        rendered = self._render(masked, add_generation_prompt)
        tokens: list[int] = []
        rest = rendered
        for mark, message in zip(marks, messages, strict=True):
            before, found, after = rest.partition(mark)
            if not found:
                return self._encode_defused(messages, add_generation_prompt)
            tokens += self.tokenize(before, special=True) + self.tokenize(message["content"], special=False)
            rest = after
        tokens += self.tokenize(rest, special=True)
        if self.llama._model.add_bos_token() and self.bos and (not tokens or tokens[0] != self.llama.token_bos()):
            tokens.insert(0, self.llama.token_bos())
        return tokens

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return render_template(
            self.template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos,
            eos_token=self.eos,
        )

    def _encode_defused(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        defused = [{**m, "content": defuse(m["content"], self.special_tokens())} for m in messages]
        return self.tokenize(self._render(defused, add_generation_prompt), special=True)

    def special_tokens(self) -> tuple[str, ...]:
        """The spellings of the vocabulary's control and user-defined tokens (read once from llama.cpp)."""
        if getattr(self, "_specials", None) is None:
            model, found = self.llama._model, []
            for i in range(model.n_vocab()):
                if model.token_get_attr(i) & (1 << 3 | 1 << 4):  # LLAMA_TOKEN_ATTR_CONTROL | USER_DEFINED
                    with contextlib.suppress(UnicodeDecodeError):
                        found.append(model.token_get_text(i))
            self._specials = tuple(found)
        return self._specials

    # -- generation ---------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Message],
        gen: GenerationConfig | None = None,
        *,
        on_notice: Callable[[str], None] | None = None,
        source: TokenSource | None = None,
    ) -> Generation:
        """Stream an assistant reply to ``messages``; trims old turns to fit the context (with a notice).
        ``source``: where the sampled tokens come from (see :meth:`generate`)."""
        gen = gen or GenerationConfig()
        tokens, notices = self.fit(messages, gen.max_tokens)
        for notice in notices:
            if on_notice:
                on_notice(notice)
        return self.generate(tokens, gen, notices=notices, source=source)

    def fit(self, messages: Sequence[Message], max_tokens: int) -> tuple[list[int], list[str]]:
        """Tokens of the prompt that fit the context with room to answer; oldest turns go first.

        Keeps the system message and the last message; if the last message alone is too long, its start is
        cut (questions usually come at the end of a pasted text). Returns the tokens and notices for the user.
        """
        budget = self.n_ctx - answer_room(max_tokens, self.n_ctx)
        messages = list(messages)
        tokens = self.encode_chat(messages)
        dropped = 0
        while len(tokens) > budget and len(messages) > 1 + (messages[0]["role"] == "system"):
            del messages[1 if messages[0]["role"] == "system" else 0]
            dropped += 1
            tokens = self.encode_chat(messages)
        notices = [f"trimmed {dropped} earlier message(s) to fit the {self.n_ctx}-token context"] if dropped else []
        cut = 0
        while len(tokens) > budget:  # re-tokenizing a cut text can shift a few tokens: repeat until it fits
            last = self.tokenize(messages[-1]["content"])
            excess = len(tokens) - budget + 8
            if excess >= len(last):
                raise UserError(f"the prompt does not fit the model's {self.n_ctx}-token context; shorten it")
            messages[-1] = {**messages[-1], "content": "…" + self.detokenize(last[excess:])}
            tokens, cut = self.encode_chat(messages), cut + excess
        if cut:
            notices.append(f"cut the start of your message ({cut} tokens) to fit the {self.n_ctx}-token context")
        return tokens, notices

    def generate(
        self, prompt: Sequence[int], gen: GenerationConfig | None = None, *, notices: list[str] | None = None,
        source: TokenSource | None = None,
    ) -> Generation:  # fmt: skip
        """Sample after ``prompt`` tokens; stops on end-of-generation tokens, ``gen.stop`` strings, or length.

        ``source(prompt, gen, max_new, drafting)`` yields the sampled token ids; by default this model's own
        llama.cpp context (``llama.generate``, or prompt lookup). ``nomoat serve --parallel`` passes its batch
        engine's (:mod:`nomoat.llm.batching`). Either way the text, stop strings and counters are made here."""
        gen = gen or GenerationConfig()
        prompt = list(prompt)
        if len(prompt) >= self.n_ctx:
            raise UserError(f"the prompt ({len(prompt)} tokens) does not fit the {self.n_ctx}-token context")
        max_new = max(1, min(gen.max_tokens, self.n_ctx - len(prompt)))
        result = Generation(iter(()), prompt_tokens=len(prompt), notices=list(notices or []))
        lookup_on = source is None and self.config.lookup_tokens > 0
        result.pieces = self._text(source or self._sample, prompt, gen, max_new, result, lookup_on)
        return result

    def seed(self, gen: GenerationConfig) -> int:
        """The sampling seed of an answer: its own, else the runtime's."""
        return self.config.seed if gen.seed is None else gen.seed

    def _sample(self, prompt: list[int], gen: GenerationConfig, max_new: int, drafting: Drafting) -> Iterator[int]:
        llama = self.llama
        llama.set_seed(self.seed(gen))
        if self.config.lookup_tokens > 0:
            config = self.config
            return lookup.generate(llama, prompt, sampling(gen), draft_tokens=config.lookup_tokens,
                                   max_n=config.lookup_ngram, max_new=max_new, stats=drafting)  # fmt: skip
        if self.config.prefix_cache:
            prefix.prepare(llama, self.path, prompt)  # a cold cache: the saved start of the prompt, if it is this one
        return llama.generate(prompt, **sampling(gen))

    def _text(self, source: TokenSource, prompt: list[int], gen: GenerationConfig, max_new: int,
              result: Generation, lookup_on: bool) -> Iterator[str]:  # fmt: skip
        """Text pieces of the sampled tokens: UTF-8 decoded incrementally (a character split across tokens waits
        for its end), the last characters held back while a stop string may be forming; sets the counters."""
        import llama_cpp

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = [s for s in gen.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1  # chars held back in case a stop string is forming
        pending = ""
        llama = self.llama
        vocab = llama._model.vocab
        tokens = source(prompt, gen, max_new, result.drafting)
        result.finish_reason = "length"
        with contextlib.closing(tokens):  # closing ends the source's sampling loop (or frees its batch sequence)
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    result.finish_reason = "stop"
                    break
                result.completion_tokens += 1
                pending += decoder.decode(llama.detokenize([token]))
                cut = _find_stop(pending, stops)
                if cut is not None:
                    pending = pending[:cut]
                    result.finish_reason = "stop"
                    break
                if len(pending) > hold:
                    out, pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
                    yield out
                if result.completion_tokens >= max_new:
                    break
        if not lookup_on:
            result.drafting.steps = result.completion_tokens  # plain decoding: one decode per token
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending


def sampling(gen: GenerationConfig) -> dict[str, Any]:
    """``gen`` as llama-cpp-python's sampler settings (``Llama.generate`` / ``Llama._init_sampler`` keywords)."""
    return {"temp": gen.temperature, "top_k": gen.top_k, "top_p": gen.top_p, "min_p": 0.0,
            "repeat_penalty": gen.repeat_penalty}  # fmt: skip


def answer_room(max_tokens: int, n_ctx: int) -> int:
    """Tokens a prompt must leave free in an ``n_ctx`` context for an answer of up to ``max_tokens``: all of them,
    but at most half the context (a long answer is cut rather than the prompt refused), and at least 16."""
    return max(16, min(max_tokens, n_ctx // 2))


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise UserError("no messages to answer")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"message {i} must be {{'role': system|user|assistant, 'content': str}}")


_cache: dict[tuple[Any, ...], Model] = {}
_cache_lock = threading.Lock()


def load(model: str | Path | ModelRef | None = None, config: RuntimeConfig | None = None) -> Model:
    """Load (or reuse) a model. The same path and settings return the same :class:`Model` in a process."""
    ref = model if isinstance(model, ModelRef) else resolve(model)
    config = config or RuntimeConfig()
    stat = ref.path.stat()
    key = (str(ref.path), stat.st_size, stat.st_mtime_ns, config.n_ctx, config.n_threads, config.n_batch,
           config.lookup_tokens, config.lookup_ngram, config.fast_format)  # fmt: skip
    with _cache_lock:
        if key not in _cache:
            _cache[key] = Model(ref, replace(config))
        return _cache[key]
