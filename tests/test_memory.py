"""Memory planning before a tune: the estimate, and the refusal (with the estimate) when it cannot fit,
tested with a fake memory limit (NOMOAT_MEMORY_LIMIT)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nomoat.config import TuneConfig
from nomoat.errors import UserError
from nomoat.finetune import memory

LLAMA_7B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, vocab_size=32000)


def test_estimate_of_a_7b_base() -> None:
    plan = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(batch_size=4, max_length=1024), bf16=True)
    assert plan.load == 4 * 6_738_415_616  # fp32 while transformers loads it
    assert plan.weights == 2 * 6_738_415_616  # then bf16
    assert 20 * memory.GIB < plan.peak < 40 * memory.GIB
    fsdp = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(), bf16=True, shards=4)
    assert fsdp.weights == plan.weights // 4
    two = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(), bf16=True, processes=2)
    assert two.peak == 2 * memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(), bf16=True).peak


def test_refused_with_the_estimate_when_it_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(), bf16=False)
    monkeypatch.setenv(memory.LIMIT_ENV, "24G")
    with pytest.raises(UserError, match=r"needs about \d+\.\d GiB .* only 24\.0 GiB are free"):
        memory.check(plan)
    monkeypatch.setenv(memory.LIMIT_ENV, "1T")
    memory.check(plan)


def test_on_gpus_fsdp_divides_what_each_device_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    free = {"cpu": 256 * memory.GIB, "cuda:0": 16 * memory.GIB}
    monkeypatch.setattr(memory, "available", lambda device="cpu": free[device])
    whole = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(batch_size=1, max_length=1024), bf16=True)
    assert whole.peak < free["cpu"]  # the same plan fits the host
    with pytest.raises(UserError, match=r"needs about \d+\.\d GiB per GPU .* only 16\.0 GiB are free on the GPU"):
        memory.check(whole, "cuda:0")
    sharded = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(batch_size=1, max_length=1024), bf16=True,
                              shards=8, processes=8)  # fmt: skip
    assert sharded.gpu_peak < whole.gpu_peak - 10 * memory.GIB  # 12.6 GiB of bf16 weights, 1/8 of them each
    free["cpu"] = 100 * memory.GIB  # 8 processes each load the fp32 base on the host first
    with pytest.raises(UserError, match=r"to load the base .* free in memory"):
        memory.check(sharded, "cuda:0")
    free["cpu"] = 1024 * memory.GIB
    memory.check(sharded, "cuda:0")


def test_sizes_and_real_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)
    assert memory.available() is None or memory.available() > 0
    assert memory._parse_size("8G") == 8 * memory.GIB and memory._parse_size("512MiB") == 512 * 2**20
    with pytest.raises(UserError, match="NOMOAT_MEMORY_LIMIT"):
        memory._parse_size("lots")


def test_tune_refuses_up_front_under_a_fake_limit(tiny_gguf: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    pytest.importorskip("torch")
    from nomoat.finetune import tune

    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row) + "\n")
    monkeypatch.setenv(memory.LIMIT_ENV, "64M")  # the tiny model itself needs far less, Python and torch more
    with pytest.raises(UserError, match=r"needs about .* GiB .* only 0\.1 GiB are free") as err:
        tune.run(data, model=tiny_gguf, output=tmp_path / "run", steps=1, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "adapter").exists() and not list((tmp_path / "run").glob("*.safetensors"))


def test_the_estimate_follows_the_real_rows() -> None:
    """RAG rows: long prompts, short answers. Logits are computed for the labelled tokens only."""
    worst = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(max_length=2048), bf16=True)
    rag = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(max_length=2048), bf16=True, rows=(1400, 40))
    assert rag.activations == worst.activations * 1400 // 2048
    assert rag.logits == worst.logits * 40 // 2048
    capped = memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(max_length=1024), bf16=True, rows=(5000, 5000))
    assert capped.peak == memory.estimate(LLAMA_7B, 6_738_415_616, TuneConfig(max_length=1024), bf16=True).peak
