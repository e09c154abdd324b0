"""Chat rows → token ids with a loss mask, and length-grouped batches: the data side of ``nomoat tune``.

Rows are formatted exactly as ``nomoat chat`` formats a prompt at inference (the model's own chat template,
rendered in the sandbox of :mod:`nomoat.runtime`, content tokenized with special-token parsing off), so the
model is trained on the very token sequences it will later see. Loss is taken only on assistant tokens plus
the end-of-turn token that closes each answer (so the tuned model still knows when to stop).

Batches group rows of similar length (HF's "length-grouped sampler" idea): each batch pads to its own longest
row, so almost no compute is spent on padding, while the order stays random from epoch to epoch.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomoat.errors import UserError

IGNORE = -100  # label of tokens that carry no loss (prompt, template text, padding)
_SHOWN = 3  # bad lines named in an error
_SPACE = " \t\n\v\f\r"  # what llama.cpp's RSTRIP/LSTRIP remove (C isspace)


@dataclass(frozen=True)
class Example:
    line: int
    ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


class ChatEncoder:
    """Tokenize chats for training with a Hugging Face (fast) tokenizer and a chat template."""

    def __init__(self, tokenizer: Any, template_source: str | None):
        from nomoat.llm.chatformats import detect
        from nomoat.llm.templates import CHATML_TEMPLATE, compile_template

        self.tokenizer = tokenizer
        self.template = compile_template(template_source or CHATML_TEMPLATE)
        self.bos = tokenizer.bos_token or ""
        self.eos = tokenizer.eos_token or ""
        # The token that closes an answer is the chat format's (Gemma's <end_of_turn>, not its <eos>).
        family = detect(template_source or CHATML_TEMPLATE)
        self.end_of_turn = family.end_of_turn if family else self.eos
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._fragments = self._fragment_pattern()

    def _fragment_pattern(self) -> re.Pattern[str] | None:
        """Where template text splits around added tokens, for tokenizers that put a word-start '▁' before
        text (SentencePiece). llama.cpp's SPM tokenizer starts every text fragment (the first, and each one after
        a control token) with one space (``add_space_prefix``), while transformers adds '▁' only at the start of
        the whole text and not before a space: tokenizing each fragment as llama.cpp does at inference gives
        training the same ids. ``_prefix`` is what makes transformers add exactly one: nothing if it always
        prepends, a space if it skips text that already starts with one."""
        self._prefix, self._rstrip, self._lstrip = "", set(), set()
        if self._backend is None:
            return None
        probe = self._backend.encode("a", add_special_tokens=False)
        tokens = [t for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.content]
        added = [t.content for t in tokens]
        # Tokens that eat the whitespace beside them (Phi-3's, in its tokenizer.json as in llama.cpp): split
        # apart, the fragments must drop it themselves.
        self._rstrip = {t.content for t in tokens if t.rstrip}
        self._lstrip = {t.content for t in tokens if t.lstrip}
        if not probe.tokens or not probe.tokens[0].startswith("\u2581") or not added:
            return None
        if self._backend.encode(" a", add_special_tokens=False).ids == probe.ids:
            self._prefix = " "
        return re.compile("(" + "|".join(map(re.escape, sorted(added, key=len, reverse=True))) + ")")

    def _tokens(self, text: str, special: bool) -> list[int]:
        if self._fragments is None:
            return self._fragment_tokens(text, special)
        ids: list[int] = []
        parts = self._fragments.split(text) if special else [text]
        for k, piece in enumerate(parts):
            if k % 2:  # an added token
                ids += self._fragment_tokens(piece, special=True)
                continue
            if k and parts[k - 1] in self._rstrip:
                piece = piece.lstrip(_SPACE)
            if k + 1 < len(parts) and parts[k + 1] in self._lstrip:
                piece = piece.rstrip(_SPACE)
            if piece:
                ids += self._fragment_tokens(self._prefix + piece, special)
        return ids

    def _fragment_tokens(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        if self._backend is None:  # slow tokenizer: no switch for special tokens, so defuse look-alikes
            from nomoat.llm.templates import defuse

            own = getattr(self.tokenizer, "all_special_tokens", None) or ()  # the tokenizer's own, then known ones
            return self.tokenizer.encode(text if special else defuse(text, own), add_special_tokens=False)
        # A document containing "<|im_end|>" must stay those characters, never close a turn (as at inference).
        self._backend.encode_special_tokens = not special
        try:
            return self._backend.encode(text, add_special_tokens=False).ids
        finally:
            self._backend.encode_special_tokens = False

    def encode(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """(ids, labels) of one chat; labels are IGNORE except on assistant content and its end-of-turn."""
        return self._encode(messages, add_generation_prompt=False)

    def encode_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a prompt that asks the model for the next assistant turn."""
        return self._encode(messages, add_generation_prompt=True)[0]

    def _encode(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        from nomoat.llm.templates import render_template

        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        masked = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
        rendered = render_template(
            self.template, masked, add_generation_prompt=add_generation_prompt, bos_token=self.bos, eos_token=self.eos
        )
        ids: list[int] = []
        labels: list[int] = []
        rest, trained_before = rendered, False
        for mark, message in zip(marks, messages, strict=True):
            before, found, rest = rest.partition(mark)
            if not found:
                raise UserError("the model's chat template changes message text; nomoat tune cannot mask it")
            self._template_text(before, trained_before, ids, labels)
            content = self._tokens(message["content"], special=False)
            trained_before = message["role"] == "assistant"
            ids += content
            labels += content if trained_before else [IGNORE] * len(content)
        self._template_text(rest, trained_before, ids, labels)
        first = self.tokenizer.bos_token_id
        if getattr(self.tokenizer, "add_bos_token", False) and first is not None and ids[:1] != [first]:
            ids.insert(0, first)
            labels.insert(0, IGNORE)
        return ids, labels

    def _template_text(self, text: str, after_answer: bool, ids: list[int], labels: list[int]) -> None:
        # After an answer, the template's text up to and including the end-of-turn token is trained too.
        head, tail = "", text
        if after_answer and self.end_of_turn and self.end_of_turn in text:
            cut = text.index(self.end_of_turn) + len(self.end_of_turn)
            head, tail = text[:cut], text[cut:]
        head_ids, tail_ids = self._tokens(head, special=True), self._tokens(tail, special=True)
        ids += head_ids + tail_ids
        labels += head_ids + [IGNORE] * len(tail_ids)


def load(path: str | Path, encoder: ChatEncoder, max_length: int, skip_invalid: bool = False) -> list[Example]:
    """Read and tokenize a chat JSONL file. Bad lines (malformed, no assistant answer, too long) raise a
    UserError naming their line numbers, unless ``skip_invalid`` (then they are left out and counted)."""
    from nomoat.dataset.formats import read_rows

    examples: list[Example] = []
    bad: list[str] = []
    for line, row, error in read_rows(path):
        if row is not None:
            ids, labels = encoder.encode(row["messages"])
            if len(ids) > max_length:
                error = f"{len(ids)} tokens, longer than the {max_length}-token limit (--max-length)"
            elif not any(t != IGNORE for t in labels):
                error = "no assistant tokens to learn from"
            else:
                examples.append(Example(line, ids, labels))
                continue
        bad.append(f"line {line}: {error}")
    if bad and not skip_invalid:
        more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
        raise UserError(f"{path}: {'; '.join(bad[:_SHOWN])}{more}; fix them or pass --skip-invalid")
    if not examples:
        raise UserError(f"{path}: no usable rows")
    return examples


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of row indices: shuffled, grouped by length within mega-batches, order shuffled.

    Deterministic in (seed, epoch), which is what lets ``--resume`` replay exactly the same data order.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 32
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], pad_id: int = 0) -> tuple[Any, Any]:
    """Right-padded (input_ids, labels) tensors. No attention mask is needed: with causal attention, real
    tokens never look at the padding that follows them, and padding carries no loss."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return ids, labels


def load_eval(path: str | Path | None, encoder: ChatEncoder, max_length: int, most: int) -> list[Example]:
    """The first ``most`` usable eval rows of ``path`` (bad ones left out); [] with a note when there are none:
    an empty eval split (a tiny knowledge base) is no reason to refuse training."""
    if not path:
        return []
    try:
        rows = load(path, encoder, max_length, skip_invalid=True)
    except UserError as exc:
        print(f"nomoat: {exc}; eval loss is not measured", file=sys.stderr)
        return []
    return rows[:most]


def sample_chats(eval_data: str | Path | None, data: str | Path) -> list[list[dict[str, str]]]:
    """Chats for the side-by-side answers at the end of a run: held-out ones when there are any, else training ones."""
    from nomoat.dataset.formats import read_rows

    for source in (eval_data, data):
        chats = [row["messages"] for _, row, _ in read_rows(source) if row is not None] if source else []
        if chats:
            return chats
    return []
