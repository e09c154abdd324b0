"""The usual start of cold prompts, saved by one process and loaded by the next (llm/prefix.py), on the tiny GGUF.
Each fresh ``runtime.Model`` has its own llama.cpp context, as a new ``nomoat ask`` process has."""

from __future__ import annotations

from pathlib import Path

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.llm import prefix, runtime
from nomoat.llm.models import resolve
from nomoat.paths import cache_dir

HEAD = "System: answer from the numbered sources only, cite them as [n], and say so when they do not answer. "
GREEDY = GenerationConfig(max_tokens=24, temperature=0.0, repeat_penalty=1.0)


def fresh(path: Path, cache: bool = True) -> runtime.Model:
    return runtime.Model(resolve(path), RuntimeConfig(n_ctx=1024, n_threads=1, prefix_cache=cache))


def answer(model: runtime.Model, text: str) -> list[int]:
    tokens: list[int] = []
    prompt = model.tokenize(text)

    def recording(*args: object) -> object:
        for token in model._sample(*args):  # type: ignore[arg-type]
            tokens.append(token)
            yield token

    model.generate(prompt, GREEDY, source=recording).text()  # type: ignore[arg-type]
    return tokens


def test_the_shared_start_is_learned_saved_and_loaded_by_the_next_process(tiny_gguf: Path) -> None:
    first = fresh(tiny_gguf)
    answer(first, HEAD + "Question one: which box is red?")
    assert not list((cache_dir() / "prefix").glob("*.kv"))  # one prompt: nothing shared yet
    second = fresh(tiny_gguf)
    learned = answer(second, HEAD + "Question two: which box is blue?")
    [state] = (cache_dir() / "prefix").glob("*.kv")
    shared = len(prefix._read_tokens(state) or [])
    assert shared >= len(second.tokenize(HEAD)) - 1 and shared <= prefix.MAX_TOKENS

    third = fresh(tiny_gguf)
    prompt = third.tokenize(HEAD + "Question two: which box is blue?")
    assert prefix.prepare(third.llama, third.path, prompt) == shared  # loaded, not evaluated
    assert third.llama.n_tokens == shared and list(third.llama.input_ids[:shared]) == prompt[:shared]
    third.llama.reset()
    assert answer(third, HEAD + "Question two: which box is blue?") == learned  # the same greedy answer

    plain = answer(fresh(tiny_gguf, cache=False), HEAD + "Question two: which box is blue?")
    assert plain == learned  # and the answer of a whole-prompt evaluation


def test_other_prompts_a_warm_cache_and_a_damaged_file_are_left_alone(tiny_gguf: Path) -> None:
    answer(fresh(tiny_gguf), HEAD + "Question one?")
    answer(fresh(tiny_gguf), HEAD + "Question two?")
    [state] = (cache_dir() / "prefix").glob("*.kv")
    model = fresh(tiny_gguf)
    other = model.tokenize("Something else entirely, with no system prompt in front of it at all, none.")
    assert prefix.prepare(model.llama, model.path, other) == 0 and model.llama.n_tokens == 0

    warm = fresh(tiny_gguf)
    warm.llama.eval(warm.tokenize("Already working on something."))
    before = warm.llama.n_tokens
    assert prefix.prepare(warm.llama, warm.path, warm.tokenize(HEAD + "Question three?")) == 0
    assert warm.llama.n_tokens == before  # in-process reuse is llama-cpp-python's own

    raw = state.read_bytes()
    state.write_bytes(raw[: len(raw) // 2])  # cut by a crash or a full disk
    damaged = fresh(tiny_gguf)
    expected = answer(fresh(tiny_gguf, cache=False), HEAD + "Question four?")
    assert answer(damaged, HEAD + "Question four?") == expected  # not loaded: evaluated whole
    assert not state.exists()  # and the damaged file is gone
    answer(fresh(tiny_gguf), HEAD + "Question five?")
    assert prefix._read_tokens(state)  # shared with question four: saved again, whole


def test_a_loaded_start_gives_the_logits_of_a_fresh_prompt(tiny_gguf: Path) -> None:
    import numpy as np

    answer(fresh(tiny_gguf), HEAD + "Question one?")
    answer(fresh(tiny_gguf), HEAD + "Question two?")  # learned and saved here
    loaded, whole = fresh(tiny_gguf), fresh(tiny_gguf, cache=False)
    prompt = loaded.tokenize(HEAD + "Question three, a new one?")
    n = prefix.prepare(loaded.llama, loaded.path, prompt)
    assert n > prefix.MIN_TOKENS
    logits = []
    for model, tokens in ((loaded, prompt[n:]), (whole, prompt)):
        model.llama.eval(tokens)  # the last token's logits stay in the context
        logits.append(np.ctypeslib.as_array(model.llama._ctx.get_logits(), shape=(model.llama.n_vocab(),)).copy())
    assert np.abs(logits[1]).max() > 0  # real logits
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_a_model_file_changed_under_the_cache_never_gets_the_old_state(tiny_gguf: Path, tmp_path: Path) -> None:
    import os
    import shutil

    model_file = shutil.copy(tiny_gguf, tmp_path / "mine.gguf")
    answer(fresh(model_file), HEAD + "Question one?")
    answer(fresh(model_file), HEAD + "Question two?")
    assert list((cache_dir() / "prefix").glob("*.kv"))
    stat = os.stat(model_file)
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten in place, say
    changed = fresh(model_file)
    prompt = changed.tokenize(HEAD + "Question three?")
    assert prefix.prepare(changed.llama, changed.path, prompt) == 0 and changed.llama.n_tokens == 0
