"""Prompt-lookup speculative decoding: draft the next tokens by copying what followed the last n-gram earlier in
the prompt or answer, check the whole draft in one forward pass, keep the part the model agrees with.

Grounded answers copy names, options and phrases from the numbered sources, so a draft taken from the prompt is
often right for several tokens, and one llama.cpp decode of ``1 + k`` tokens costs far less than ``1 + k``
decodes of one token on a CPU (Saxena 2023, https://github.com/apoorvumang/prompt-lookup-decoding; llama.cpp's
``lookup`` example). Acceptance is exact: at each drafted position the sampler draws from the model's own
logits, exactly as plain decoding would, and the draft is kept only while it equals what was drawn. The sampler
(penalties, greedy or seeded randomness) sees the same calls in the same order as without lookup, so with the
same logits greedy and seeded answers are token-identical (the tiny model's test). llama.cpp's CPU kernels,
though, give a token decoded inside a batch slightly different logits than decoded alone, so on a real model a
near tie can go the other way (measured in docs/benchmarks.md; the reason lookup is off by default).

llama-cpp-python's own ``Llama(draft_model=LlamaPromptLookupDecoding())`` verifies the same way but forces
``logits_all=True``: logits for every prompt token too (the output layer is a fifth of this 135M model) and an
``n_ctx x n_vocab`` float array (805 MB at 4096 x 49152). Here the prompt is evaluated as usual (logits for its
last token only) and only the drafted batches ask for logits at every position.

This module drives a ``llama_cpp.Llama`` through its methods and does not import ``llama_cpp`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Drafting:
    """What lookup did for one answer (read by the bench): decodes after the prompt and drafted/accepted tokens."""

    steps: int = 0
    """llama.cpp decode calls after the prompt; without lookup one per generated token."""
    drafted: int = 0
    """Draft tokens sent for checking."""
    accepted: int = 0
    """Draft tokens the model agreed with (each one a decode call saved)."""


class NgramIndex:
    """For each n-gram of ``min_n..max_n`` tokens, where it last occurred, among those whose next token is known.

    ``draft`` looks up the text's last n-gram, longest first, and returns the tokens that followed its latest
    earlier occurrence. O(max_n) per token appended.
    """

    def __init__(self, tokens: Sequence[int], max_n: int = 3, min_n: int = 1):
        self.tokens: list[int] = []
        self.sizes = range(max_n, min_n - 1, -1)
        self._seen: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending here are followed by ``token``
            for n in self.sizes:
                if end >= n:
                    self._seen[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens predicted to follow the text (empty when its last n-grams never occurred)."""
        if limit <= 0:
            return []
        for n in self.sizes:
            if len(self.tokens) >= n:
                start = self._seen.get(tuple(self.tokens[-n:]))
                if start is not None:
                    return self.tokens[start : start + limit]
        return []


def generate(
    llama: Any, prompt: Sequence[int], sampling: dict[str, Any], *, draft_tokens: int, max_n: int,
    max_new: int, stats: Drafting,
) -> Iterator[int]:  # fmt: skip
    """Tokens after ``prompt``, as ``Llama.generate(prompt, **sampling)`` yields them, with lookup drafts.

    ``draft_tokens`` bounds a draft; ``max_new`` the tokens the caller will take (no draft reaches past it).
    Like ``Llama.generate`` it reuses the KV cache of the previous prompt's common prefix, and it keeps
    ``llama.input_ids[:llama.n_tokens]`` equal to what the KV cache holds, so the next call can reuse it too.
    """
    llama._sampler = sampler = llama._init_sampler(**sampling)  # the chain Llama.generate builds
    prompt = list(prompt)
    keep_prefix(llama, prompt)
    llama.eval(prompt[llama.n_tokens :])  # logits for the last prompt token only
    index = NgramIndex(prompt, max_n=max_n)
    room = llama.n_ctx() - 1
    token = sampler.sample(llama._ctx, -1)
    produced = 0
    while True:
        yield token
        produced += 1
        index.extend([token])
        draft = index.draft(min(draft_tokens, max_new - produced - 1, room - llama.n_tokens - 1))
        batch = [token, *draft]
        n_past = llama.n_tokens
        llama._batch.set_batch(batch, n_past=n_past, logits_all=True)
        llama._ctx.decode(llama._batch)
        llama.input_ids[n_past : n_past + len(batch)] = batch
        llama.n_tokens = n_past + len(batch)
        stats.steps += 1
        stats.drafted += len(draft)
        for j in range(len(batch)):  # logits after batch[j] give the token at position n_past + j + 1
            token = sampler.sample(llama._ctx, j - len(batch))
            if j == len(draft) or token != draft[j]:
                break
            stats.accepted += 1
            yield token
            produced += 1
            index.extend([token])
        if j < len(draft):  # the draft's rest is wrong: forget its KV entries
            llama.n_tokens = n_past + j + 1
            llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
            llama._requires_eval = True  # as Llama.generate marks a truncated cache


def keep_prefix(llama: Any, prompt: list[int]) -> None:
    """Keep the KV entries of the longest common prefix with what is cached (at least one prompt token is left
    to evaluate, for fresh logits); reset when there is none or llama.cpp cannot drop the rest."""
    keep = 0
    for cached, new in zip(llama.input_ids[: llama.n_tokens], prompt, strict=False):
        if cached != new:
            break
        keep += 1
    keep = min(keep, len(prompt) - 1)
    if keep > 0 and llama._ctx.kv_cache_seq_rm(-1, keep, -1):
        llama.n_tokens = keep
    else:
        llama.reset()
