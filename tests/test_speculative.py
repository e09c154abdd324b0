"""Prompt-lookup speculative decoding: the drafts, and answers token-identical to plain decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.llm import runtime
from nomoat.llm.lookup import NgramIndex, keep_prefix
from nomoat.llm.models import resolve

SOURCE = (
    "Sources:\n[1] git-reset(1): git reset --soft <commit> moves HEAD to <commit> and keeps the index and the "
    "working tree; --mixed resets the index but not the working tree; --hard resets both.\n"
    "[2] git-stash(1): git stash saves your local modifications away and reverts the working directory to "
    "match the HEAD commit.\n\nQuestion: how do I undo the last commit but keep my changes?"
)
MESSAGES = [{"role": "system", "content": "Answer from the numbered sources; cite them like [1]."},
            {"role": "user", "content": SOURCE}]  # fmt: skip


def test_draft_copies_what_followed_the_last_ngram() -> None:
    index = NgramIndex([5, 6, 7, 8, 9, 1, 6, 7], max_n=2)
    assert index.draft(3) == [8, 9, 1]  # "6 7" occurred before, followed by 8 9 1
    assert index.draft(1) == [8]
    assert index.draft(0) == []


def test_draft_prefers_the_longest_then_the_latest_match() -> None:
    # "3" alone was last followed by 9; the bigram "2 3" by 4: the longer match wins.
    assert NgramIndex([2, 3, 4, 3, 9, 2, 3], max_n=2).draft(2) == [4, 3]
    # Two earlier "2 3": the later one's continuation is drafted.
    assert NgramIndex([2, 3, 4, 2, 3, 5, 2, 3], max_n=2).draft(1) == [5]


def test_no_draft_without_a_match() -> None:
    assert NgramIndex([1, 2, 3], max_n=3).draft(4) == []
    assert NgramIndex([], max_n=3).draft(4) == []
    index = NgramIndex([1, 2], max_n=2)
    index.extend([1])
    assert index.draft(4) == [2, 1]  # appended tokens are indexed too


def _tokens(model: runtime.Model, lookup: int, gen: GenerationConfig) -> tuple[list[int], runtime.Generation]:
    model.config.lookup_tokens = lookup
    try:
        model.llama.reset()
        result = model.chat(MESSAGES, gen)
        text = result.text()
    finally:
        model.config.lookup_tokens = 0
    return model.tokenize(text), result


@pytest.fixture(scope="module")
def model(tiny_gguf_4k: Path) -> runtime.Model:
    return runtime.Model(resolve(tiny_gguf_4k), RuntimeConfig(n_ctx=2048, n_threads=1))


@pytest.mark.parametrize("draft", [1, 4, 10])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_lookup_gives_the_same_tokens_as_plain_decoding(model: runtime.Model, draft: int, temperature: float) -> None:
    gen = GenerationConfig(max_tokens=96, temperature=temperature, seed=3)
    plain, plain_run = _tokens(model, 0, gen)
    fast, fast_run = _tokens(model, draft, gen)
    assert fast == plain
    assert fast_run.completion_tokens == plain_run.completion_tokens
    assert fast_run.finish_reason == plain_run.finish_reason
    assert fast_run.drafting.drafted > 0  # the test exercised drafts, not only single-token steps
    # the first token comes from the prompt's logits, each decode call after it gives 1 + its accepted drafts
    assert fast_run.drafting.steps + fast_run.drafting.accepted + 1 >= fast_run.completion_tokens
    assert plain_run.drafting.drafted == 0


def test_lookup_reuses_and_keeps_a_consistent_cache(model: runtime.Model) -> None:
    """A second question after a lookup answer reuses the cached prefix and still answers as a fresh model."""
    gen = GenerationConfig(max_tokens=48, temperature=0.0)
    model.config.lookup_tokens = 6
    try:
        model.llama.reset()
        model.chat(MESSAGES, gen).text()
        follow = [*MESSAGES[:1], {"role": "user", "content": SOURCE.replace("undo", "revert")}]
        warm = model.chat(follow, gen).text()
        model.llama.reset()
        cold = model.chat(follow, gen).text()
    finally:
        model.config.lookup_tokens = 0
    assert warm == cold


def _last_logits(llama: object) -> np.ndarray:
    return np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).copy()  # type: ignore[attr-defined]


def test_reused_prefix_gives_the_logits_of_a_fresh_prompt(model: runtime.Model) -> None:
    first = model.encode_chat(MESSAGES)
    second = model.encode_chat([*MESSAGES[:1], {"role": "user", "content": SOURCE.replace("undo", "revert")}])
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    llama = model.llama
    llama.reset()
    llama.eval(first)
    keep_prefix(llama, second)
    assert llama.n_tokens == shared  # the common prefix stayed in the KV cache
    llama.eval(second[llama.n_tokens :])
    reused = _last_logits(llama)
    llama.reset()
    llama.eval(second)
    fresh = _last_logits(llama)
    np.testing.assert_allclose(reused, fresh, rtol=1e-4, atol=1e-4)
    assert reused.argmax() == fresh.argmax()
