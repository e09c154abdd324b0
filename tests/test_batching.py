"""The batch engine (llm/batching.py) on the tiny random GGUF: the same tokens as unbatched decoding, per-request
settings kept apart, and sequences freed when a reader stops early."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.llm import runtime
from nomoat.llm.batching import Batched
from nomoat.llm.models import resolve

TEXTS = [f"Sources: box {i} is red, the quick brown fox jumps over the lazy dog {i * 7}" for i in range(8)]
LONG = 6  # TEXTS[6] runs greedy (repeat penalty 1.0) to 300 tokens without an end token: checked below
TIE = 1e-3  # top-two logit gap under which rounding of batched kernels may pick the other token (F32 model)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> runtime.Model:
    from tiny_gguf import write_tiny_llama

    path = write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-2k.gguf", context_length=2048)
    return runtime.Model(resolve(path), RuntimeConfig(n_ctx=1024, n_threads=1))


@pytest.fixture
def batched(model: runtime.Model) -> Iterator[Batched]:
    b = Batched(model, 4)
    try:
        yield b
    finally:
        b.close()


def _recording(source: Any, sink: list[int]) -> Any:
    def tokens(*args: Any) -> Iterator[int]:
        for token in source(*args):
            sink.append(token)
            yield token

    return tokens


def _running_once_settled(b: Batched, wait_s: float = 30.0) -> int:
    """Sequences still held after the engine's next steps: a reader that stopped early (a stop string) is
    freed at the engine's next step, which may come just after the reader returned."""
    deadline = time.monotonic() + wait_s
    while b.engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    return b.engine.running


def _plain_source(model: runtime.Model) -> Any:
    def tokens(prompt: list[int], gen: GenerationConfig, max_new: int, drafting: Any) -> Iterator[int]:
        model.llama.set_seed(model.seed(gen))
        return model.llama.generate(prompt, **runtime.sampling(gen))

    return tokens


def _plain(model: runtime.Model, text: str, gen: GenerationConfig) -> tuple[list[int], runtime.Generation]:
    tokens: list[int] = []
    model.llama.reset()
    result = model.generate(model.tokenize(text), gen, source=_recording(_plain_source(model), tokens))
    result.text()
    return tokens, result


def _together(b: Batched, texts: list[str], gens: list[GenerationConfig]) -> list[tuple[list[int], Any, str]]:
    """Each text generated in its own thread, all at once through the engine: (tokens, generation, text)."""
    out: list[Any] = [None] * len(texts)

    def run(i: int) -> None:
        tokens: list[int] = []
        result = b.model.generate(b.tokenize(texts[i]), gens[i], source=_recording(b.engine.tokens, tokens))
        out[i] = (tokens, result, result.text())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _top_two_gap(model: runtime.Model, prompt: list[int]) -> tuple[float, list[int]]:
    llama = model.llama
    llama.reset()
    llama.eval(prompt)
    logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).copy()
    top = np.argsort(logits)[::-1][:2]
    return float(logits[top[0]] - logits[top[1]]), [int(t) for t in top]


def _same_or_tie(model: runtime.Model, text: str, tokens: list[int], plain: list[int]) -> bool:
    """True if the tokens are the same, or part only where the unbatched model itself nearly could not choose
    (top-two gap under TIE) and the batched one took its runner-up. Asserts otherwise."""
    if tokens == plain:
        return True
    k = next((i for i, (a, p) in enumerate(zip(tokens, plain, strict=False)) if a != p), min(len(tokens), len(plain)))
    gap, top = _top_two_gap(model, model.tokenize(text) + plain[:k])
    assert k < min(len(tokens), len(plain)) and gap < TIE and tokens[k] in top, (text, k, gap)
    return False


def test_batched_greedy_gives_the_unbatched_tokens(model: runtime.Model, batched: Batched) -> None:
    gen = GenerationConfig(max_tokens=60, temperature=0.0, repeat_penalty=1.0)  # raw logits decide each token
    together = _together(batched, TEXTS, [gen] * len(TEXTS))
    assert batched.engine.steps < sum(len(t) for t, _, _ in together)  # sequences really shared decode calls
    for text, (tokens, result, _) in zip(TEXTS, together, strict=True):
        plain, plain_result = _plain(model, text, gen)
        if _same_or_tie(model, text, tokens, plain):
            assert (result.completion_tokens, result.finish_reason) == (
                plain_result.completion_tokens, plain_result.finish_reason)  # fmt: skip


def test_each_request_keeps_its_own_settings(model: runtime.Model, batched: Batched) -> None:
    greedy = GenerationConfig(max_tokens=40, temperature=0.0)
    reference, _ = _plain(model, TEXTS[0], greedy)
    plain_text = model.detokenize(reference)
    stop = plain_text[12:15]
    gens = [
        greedy,
        GenerationConfig(max_tokens=5, temperature=0.0, repeat_penalty=1.0),
        GenerationConfig(max_tokens=40, temperature=0.0, stop=(stop,)),
        GenerationConfig(max_tokens=30, temperature=0.9, seed=1),
        GenerationConfig(max_tokens=30, temperature=0.9, seed=1),
        GenerationConfig(max_tokens=30, temperature=0.9, seed=2),
    ]
    texts = [TEXTS[0], TEXTS[LONG], TEXTS[0], TEXTS[1], TEXTS[1], TEXTS[1]]
    out = _together(batched, texts, gens)
    assert out[0][0] == reference  # greedy beside sampled neighbours: its own tokens
    assert out[1][1].completion_tokens == 5 and out[1][1].finish_reason == "length"
    assert out[2][2] == plain_text[: plain_text.index(stop)] and out[2][1].finish_reason == "stop"
    assert out[3][0] == out[4][0]  # the same seed draws the same tokens in different sequences
    assert out[3][0] != out[5][0]  # another seed, another draw
    assert _running_once_settled(batched) == 0  # the stopped reader's sequence was given back too


def test_a_reader_that_stops_frees_its_sequence_for_the_next(model: runtime.Model) -> None:
    import llama_cpp

    gen = GenerationConfig(max_tokens=300, temperature=0.0, repeat_penalty=1.0)
    plain, plain_result = _plain(model, TEXTS[LONG], gen)
    assert plain_result.finish_reason == "length" and len(plain) == 300  # it would run long: a real early stop
    b = Batched(model, 1)  # one sequence: the next request can only run once the first gives it back
    try:
        first = b.generate(model.tokenize(TEXTS[LONG]), gen)
        pieces = iter(first)
        next(pieces), next(pieces)
        second: list[str] = []
        waiter = threading.Thread(target=lambda: second.append(b.generate(model.tokenize(TEXTS[0]), gen).text()))
        waiter.start()
        first.pieces.close()  # the client went away
        waiter.join(60)
        assert second and second[0] == model.detokenize(_plain(model, TEXTS[0], gen)[0])
        assert first.completion_tokens < 300
        memory = llama_cpp.llama_get_memory(b.engine.ctx.ctx)
        assert b.engine.running == 0 and llama_cpp.llama_memory_seq_pos_max(memory, 0) == -1  # KV cells emptied
    finally:
        b.close()


def test_each_step_holds_its_sequences_in_id_order(model: runtime.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp cuts a multi-stream batch into micro-batches of consecutive sequence ids: rows out of order (after
    requests came and went) would cost one forward pass per sequence. Steps keep ids sorted."""
    import llama_cpp

    calls: list[list[int]] = []
    decode = llama_cpp.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        calls.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return decode(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    long = GenerationConfig(max_tokens=300, temperature=0.0, repeat_penalty=1.0)
    short = GenerationConfig(max_tokens=3, temperature=0.0, repeat_penalty=1.0)
    b = Batched(model, 4)
    try:
        first = iter(b.generate(model.tokenize(TEXTS[LONG]), long))
        next(first)  # the long one holds sequence 0 from here on
        _together(b, TEXTS[:3], [short] * 3)  # three come and go beside it
        before = len(calls)
        _together(b, TEXTS[3:6], [short] * 3)  # three more join the long one, which is still running
        assert b.engine.running == 1
        assert any(len(set(c)) > 1 for c in calls[before:])  # the long one decoded beside the new ones
        assert all(c == sorted(c) for c in calls), [c for c in calls if c != sorted(c)][:3]
        first.close()
    finally:
        b.close()


def test_prompt_longer_than_a_step_is_fed_in_chunks(model: runtime.Model, batched: Batched) -> None:
    gen = GenerationConfig(max_tokens=20, temperature=0.0, repeat_penalty=1.0)
    text = " ".join(TEXTS + TEXTS[:3])  # ~700 byte-level tokens: more than one step of n_batch 512
    assert len(model.tokenize(text)) > batched.engine.n_batch
    (tokens, _, _), (short, _, _) = _together(batched, [text, TEXTS[2]], [gen, gen])
    _same_or_tie(model, text, tokens, _plain(model, text, gen)[0])
    _same_or_tie(model, TEXTS[2], short, _plain(model, TEXTS[2], gen)[0])


def test_closed_engine_refuses_and_empty_prompts_are_errors(model: runtime.Model) -> None:
    from nomoat.errors import ModelError, UserError

    b = Batched(model, 2)
    with pytest.raises(UserError):
        b.generate([], GenerationConfig()).text()
    b.close()
    with pytest.raises(ModelError):
        b.generate(model.tokenize("hi"), GenerationConfig()).text()


def test_serve_admits_as_many_as_the_model_decodes_together(tiny_gguf: Path) -> None:
    from nomoat.config import ServeConfig
    from nomoat.serving.app import Server

    plain = runtime.Model(resolve(tiny_gguf), RuntimeConfig(n_threads=1))
    assert Server(plain, ServeConfig(), None, None).slot.parallel == 1
    b = Batched(plain, 3)
    try:
        assert Server(b, ServeConfig(), None, None).slot.parallel == 3
    finally:
        b.close()
