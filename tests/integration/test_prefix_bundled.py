"""The saved prompt start (llm/prefix.py) on the bundled SmolLM2-135M with ask's own prompts: a new process that
loads it answers exactly as one that evaluates the whole prompt."""

from __future__ import annotations

import pytest
from test_lookup_bundled import HITS, QUESTIONS

from nomoat.answer import rag
from nomoat.config import RagConfig, RuntimeConfig
from nomoat.llm import prefix, runtime
from nomoat.llm.models import resolve

pytestmark = pytest.mark.integration


def test_answers_with_the_loaded_start_are_the_whole_prompts_answers() -> None:
    config = RagConfig()
    gen = config.generation()
    whole = runtime.Model(resolve("default"), RuntimeConfig(n_ctx=2048, prefix_cache=False))
    cached = runtime.Model(resolve("default"), RuntimeConfig(n_ctx=2048))
    loaded = []
    for i, question in enumerate(QUESTIONS * 2):
        hits = HITS[i % 3 :] + HITS[: i % 3]  # the sources differ in order: only the fixed start is shared
        messages, _ = rag.build_prompt(question, hits, whole, gen, config)
        prompt = cached.encode_chat(messages)
        whole.llama.reset()
        cached.llama.reset()  # cold, as a new `nomoat ask` process is
        expected = whole.generate(prompt, gen).text()
        before = len(list((prefix._folder()).glob("*.kv")))
        assert cached.generate(prompt, gen).text() == expected, question
        loaded.append(before)
    assert loaded[0] == 0 and loaded[-1] == 1  # learned on the second prompt, loaded by the later ones
