"""Every architecture in the table, from both sources: a tiny random model (HF folder with a real tokenizer, and
the same model converted to GGUF by llama.cpp's converter) goes tune --steps 3 -> export --format all --quant q8_0
-> parity -> chat --model, which answers and stops on the family's end-of-turn token; the Modelfile's template
renders the probe conversation as the GGUF's own template does. Plus the table's refusals and listings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("sentencepiece")

import tiny_models  # noqa: E402
from nomoat.cli import main  # noqa: E402
from nomoat.errors import UserError  # noqa: E402
from nomoat.exporting import converter, export  # noqa: E402
from nomoat.finetune import basemodel, trainset, tune  # noqa: E402
from nomoat.llm import architectures, chatformats, models, runtime  # noqa: E402
from nomoat.llm.gguf_check import read_header  # noqa: E402

ARCHS = list(tiny_models.SPECS)
# Qwen2 needs its real 151k-token vocabulary (see tiny_models): building its tokenizer, and transformers parsing
# every vocabulary string of its GGUF with gguf.GGUFReader, take minutes on 2 cores, so it runs in the
# integration tier.
SLOW = {("qwen2", "hf"), ("qwen2", "gguf")}

_built: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        converter.locate()
    except UserError as exc:
        pytest.skip(str(exc))
    return tmp_path_factory.mktemp("archs")


def model(root: Path, arch: str) -> tuple[Path, Path]:
    """(hf folder, gguf) of ``arch``; the fast ones are built and converted together on first use."""
    if arch not in _built:
        group = [arch] if arch == "qwen2" else [a for a in ARCHS if a != "qwen2"]
        _built.update(tiny_models.build_all(root, group))
    return _built[arch]


def source_params() -> list:
    return [
        pytest.param(a, s, id=f"{a}-{s}", marks=[pytest.mark.integration] if (a, s) in SLOW else [])
        for a in ARCHS
        for s in ("hf", "gguf")
    ]


@pytest.mark.parametrize(("arch", "source"), source_params())
def test_tune_export_parity_chat(root: Path, arch: str, source: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    hf, gguf = model(root, arch)
    spec = tiny_models.SPECS[arch]
    data = tiny_models.write_rows(tmp_path / "rows.jsonl")
    run = tmp_path / "run"
    summary = tune.run(data, model=hf if source == "hf" else gguf, output=run, steps=3, rank=4, batch_size=4,
                       threads=1, progress=False)  # fmt: skip
    assert summary["steps"] == 3

    files = {f["format"]: f for f in export.run(run, format="all", quant="q8_0", output=tmp_path / "out")["files"]}
    assert set(files) == {"hf", "adapter", "gguf", "ollama"}
    assert files["gguf"]["passed"] and files["gguf"]["gap"] <= export.PARITY["q8_0"]
    assert files["adapter"]["passed"] and files["adapter"]["gap"] <= export.ADAPTER_PARITY
    exported = read_header(files["gguf"]["path"])
    row = architectures.for_hf(json.loads((hf / "config.json").read_text())["model_type"])
    # a Mistral GGUF says "llama" (llama.cpp writes it so): its row is then llama's, which does the same
    expected = arch if source == "hf" else architectures.for_gguf(row.gguf).name
    assert exported.architecture == row.gguf and files["gguf"]["architecture"] == expected
    for hf_key, value in dict(spec.extra).items():  # carried settings survive (sliding window of Gemma: 32)
        if (hf_key, f"attention.{hf_key}") in row.carried and value:
            assert exported.arch_value(f"attention.{hf_key}") == value

    # the Modelfile's Go template renders the probe conversation exactly as the exported GGUF's Jinja template
    fmt = chatformats.detect(exported.metadata["tokenizer.chat_template"])
    assert fmt is not None and fmt.end_of_turn == spec.end_of_turn and files["ollama"]["chat_format"] == fmt.name
    text = Path(files["ollama"]["path"]).read_text()
    assert f'TEMPLATE """{fmt.go_template}"""' in text and f'PARAMETER stop "{spec.end_of_turn}"' in text
    loaded = runtime.load(files["gguf"]["path"])
    same, jinja, go = chatformats.matches(fmt, exported.metadata["tokenizer.chat_template"], loaded.bos, loaded.eos)
    assert same, (jinja, go)

    # chat --model RUN answers and stops on the end-of-turn token (llama.cpp's end-of-generation)
    capsys.readouterr()
    argv = ["chat", "--model", str(run), "--once", "Which colour is box 3?", "--no-kb", "--max-tokens", "24"]
    assert main([*argv, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"].strip() and answer["finish_reason"] == "stop", answer


@pytest.mark.parametrize("arch", [a if a != "qwen2" else pytest.param(a, marks=pytest.mark.integration)
                                  for a in ARCHS])  # fmt: skip
def test_training_tokens_are_llama_cpps(root: Path, arch: str) -> None:
    """Rows are tokenized for training as llama.cpp tokenizes the prompt at inference (same template, same ids)."""
    hf, gguf = model(root, arch)
    messages = [{"role": "user", "content": "Which colour is box 3?"}]
    for source in (hf, gguf):
        base = basemodel.load(source)
        ids = trainset.ChatEncoder(base.tokenizer, base.chat_template).encode_prompt(messages)
        assert ids == runtime.load(gguf).encode_chat(messages), source.name


def test_an_architecture_outside_the_table_fails_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "falcon-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    (folder / "model.safetensors").write_bytes(b"")
    data = tiny_models.write_rows(tmp_path / "rows.jsonl")
    with pytest.raises(UserError, match=r"'falcon' architecture") as err:
        tune.run(data, model=folder, output=tmp_path / "run", steps=1, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    assert main(["tune", str(data), "--model", str(folder), "--steps", "1"]) == 1


def test_models_shows_architecture_parameters_and_support(root: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    hf, gguf = model(root, "gemma3")
    for info in (models.describe(models.resolve(hf)), models.describe(models.resolve(gguf))):
        assert info["tune_export"] is True and info["parameters"] > 10_000 and info["context_length"] == 1024
    assert models.describe(models.resolve(gguf))["architecture"] == "gemma3"
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert models.describe(models.resolve(other))["tune_export"] is False
    assert main(["models", str(gguf), str(other)]) == 0
    out = capsys.readouterr().out
    assert "TUNE/EXPORT" in out and "chat only" in out and "gemma3" in out


def test_export_refuses_a_gguf_that_lost_a_carried_setting(root: Path, tmp_path: Path) -> None:
    from nomoat.exporting import ggufio

    hf, gguf = model(root, "gemma2")
    config = basemodel.load(hf).config
    row = architectures.for_hf("gemma2")
    ggufio.check_carried(gguf, row, config)  # llama.cpp's converter carried them
    config.sliding_window = 64
    with pytest.raises(UserError, match="sliding_window=64"):
        ggufio.check_carried(gguf, row, config)
