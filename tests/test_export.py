"""nomoat export on a tiny tuned run: merge, GGUF (f16 and q8_0) that llama.cpp loads with its metadata intact,
parity by perplexity (and that it catches a broken export), the HF folder, the Modelfile, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from nomoat.cli import main  # noqa: E402
from nomoat.errors import UserError  # noqa: E402
from nomoat.exporting import export, ggufio  # noqa: E402
from nomoat.finetune import basemodel, runs, tune  # noqa: E402
from nomoat.llm import llamacpp, models, runtime  # noqa: E402


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a trained (non-zero) adapter on the tiny model; exports write into copies' own folders."""
    from tiny_gguf import write_tiny_llama

    root = tmp_path_factory.mktemp("export")
    model = write_tiny_llama(root / "tiny.gguf")
    rows = [
        {"messages": [{"role": "user", "content": f"Name box {i}."}, {"role": "assistant", "content": f"Box {i}."}]}
        for i in range(12)
    ]
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tune.run(data, model=model, output=root / "run", steps=6, rank=4, lr=1e-2, batch_size=4, progress=False)
    return root / "run"


def test_merge_equals_the_adapter_on_top(tuned: Path) -> None:
    from peft import PeftModel

    config = runs.read_json(tuned / "config.json")
    ids = torch.tensor([[5, 70, 80, 90, 100, 7]])
    with torch.no_grad():
        on_top = PeftModel.from_pretrained(basemodel.load(config["model"]).load_weights(), str(tuned / "adapter"))
        plain = basemodel.load(config["model"]).load_weights()
        merged = export.merge(basemodel.load(config["model"]), tuned / "adapter", torch.float32)
        a, b, c = (m(input_ids=ids).logits for m in (on_top, merged, plain))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(b, c, atol=1e-3)  # the adapter really changes the model


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_keeps_metadata_and_passes_parity(tuned: Path, tmp_path: Path, quant: str) -> None:
    import gguf

    result = export.run(tuned, format="gguf", quant=quant, output=tmp_path)
    (record,) = result["files"]
    path = Path(record["path"])
    assert record["passed"] and record["gap"] <= export.PARITY[quant] and record["quant"] == quant
    assert record["sha256"] == basemodel.sha256_file(path)
    reader = gguf.GGUFReader(str(path))
    base = gguf.GGUFReader(str(runs.read_json(tuned / "config.json")["model"]))
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.tokens"):
        assert reader.fields[key].contents() == base.fields[key].contents()
    assert reader.fields["nomoat.run_id"].contents() == tuned.name
    assert not list(tmp_path.glob("*.partial"))
    model = runtime.load(path)  # llama.cpp loads it and answers through the template
    assert model.chat([{"role": "user", "content": "hi"}]).text() is not None
    exports = runs.read_json(tuned / "manifest.json")["exports"]
    assert any(e["path"] == str(path) and e["sha256"] == record["sha256"] for e in exports)


def test_a_broken_export_fails_parity_and_is_not_delivered(
    tuned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ggufio, "permute", lambda weights, n_head, n_head_kv: weights)  # forget the q/k layout
    with pytest.raises(UserError, match="parity"):
        export.run(tuned, format="gguf", quant="f16", output=tmp_path)
    assert not list(tmp_path.glob("*.gguf*"))


def test_hf_export_loads_in_transformers(tuned: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    (record,) = export.run(tuned, format="hf", output=tmp_path)["files"]
    folder = Path(record["path"])
    assert (folder / "config.json").exists() and not list(folder.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    merged = export.merge(basemodel.load(runs.read_json(tuned / "config.json")["model"]), tuned / "adapter", None)
    ids = torch.tensor([[5, 70, 80, 90]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_ollama_modelfile_and_chat_with_the_run(tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = export.run(tuned, format="ollama", quant="q8_0", output=tmp_path)["files"]
    modelfile = Path(next(f["path"] for f in files if f["format"] == "ollama")).read_text()
    gguf_name = Path(files[0]["path"]).name
    assert modelfile.startswith(f"FROM ./{gguf_name}\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>assistant" in modelfile
    ref = models.resolve(tuned)  # --model RUN: the newest GGUF export of the run
    assert ref.kind == "gguf" and ref.source == "run" and ref.path.suffix == ".gguf"
    assert main(["chat", "--model", str(tuned), "--once", "hi", "--no-kb", "--max-tokens", "4"]) == 0
    # `nomoat models` lists exports of runs under $NOMOAT_HOME/runs
    named = runs.runs_dir() / "named-run"
    named.parent.mkdir(parents=True, exist_ok=True)
    named.symlink_to(tuned)
    assert any(m["path"] == str(ref.path) for m in models.available())
    assert models.resolve("named-run").path == ref.path  # a run by name


def test_cli_export_json_and_errors(tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tuned), "--quant", "f16", "-o", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"][0]["format"] == "gguf"
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "no run at" in capsys.readouterr().err


def test_adapter_gguf_applies_on_the_base_in_llama_cpp(tuned: Path, tmp_path: Path) -> None:
    import gguf

    (record,) = export.run(tuned, format="adapter", output=tmp_path)["files"]
    assert record["passed"] and record["gap"] <= export.ADAPTER_PARITY
    reader = gguf.GGUFReader(record["path"])
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0  # rank 4, alpha 2 x rank
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    # without the adapter the base is measurably different: the check is not trivially passed
    tokens = export.parity_tokens(basemodel.load(record["base"]), runs.read_json(tuned / "config.json"))
    plain = llamacpp.perplexity(Path(record["base"]), tokens, decode_tokens=1)["ppl"]
    assert abs(plain - record["ppl_torch"]) / record["ppl_torch"] > export.ADAPTER_PARITY


def test_adapter_on_base_matches_the_merged_gguf_next_token_distribution(tuned: Path, tmp_path: Path) -> None:
    import numpy as np

    result = export.run(tuned, format="all", quant="f16", output=tmp_path)
    paths = {f["format"]: Path(f["path"]) for f in result["files"]}
    config = runs.read_json(tuned / "config.json")
    tokens = export.parity_tokens(basemodel.load(config["model"]), config)
    merged = llamacpp.perplexity(paths["gguf"], tokens, decode_tokens=1)["logprobs"]
    on_base = llamacpp.perplexity(Path(config["model"]), tokens, lora=paths["adapter"], decode_tokens=1)["logprobs"]
    kl = float((np.exp(merged) * (merged - on_base)).sum(axis=1).mean())
    assert kl < 1e-3, kl


def test_gguf_round_trip_holds_the_merged_tensors(tuned: Path, tmp_path: Path) -> None:
    import gguf

    (record,) = export.run(tuned, format="gguf", quant="f16", output=tmp_path)["files"]
    config = runs.read_json(tuned / "config.json")
    merged = export.merge(basemodel.load(config["model"]), tuned / "adapter", torch.float32).state_dict()
    tensors = {t.name: t for t in gguf.GGUFReader(record["path"]).tensors}
    heads, kv = 4, 2  # the tiny model's attention layout
    expect = {
        "blk.1.ffn_down.weight": merged["model.layers.1.mlp.down_proj.weight"].numpy(),
        "blk.0.attn_q.weight": ggufio.permute(merged["model.layers.0.self_attn.q_proj.weight"].numpy(), heads, heads),
        "blk.0.attn_k.weight": ggufio.permute(merged["model.layers.0.self_attn.k_proj.weight"].numpy(), heads, kv),
        "output_norm.weight": merged["model.norm.weight"].numpy(),
    }
    for name, want in expect.items():
        got = np.asarray(tensors[name].data, dtype=np.float32).reshape(want.shape)
        assert np.allclose(got, want, atol=2e-3), name
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("stage", ["quantize", "hf"])
def test_killing_an_export_midway_leaves_no_file_at_the_final_path(tuned: Path, tmp_path: Path, stage: str) -> None:
    import subprocess
    import sys

    # The process SIGKILLs itself in the middle of writing: during quantization (the f16 GGUF is written) or
    # while the HF folder is being filled.
    code = f"""
import os, signal, sys
from nomoat.exporting import export, ggufio  # noqa: E402
from nomoat.llm import llamacpp  # noqa: E402
from nomoat.finetune import runs  # noqa: E402
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if {stage!r} == "quantize":
    llamacpp.quantize = die
else:
    export.write_hf = lambda model, tok, folder: runs.replace_dir(folder, die)
export.run(sys.argv[1], format="gguf" if {stage!r} == "quantize" else "hf", quant="q8_0", output=sys.argv[2])
"""
    done = subprocess.run([sys.executable, "-c", code, str(tuned), str(tmp_path)], capture_output=True, timeout=300)
    assert done.returncode == -9
    assert list(tmp_path.glob("*.partial"))  # it really died while writing
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".partial")]
