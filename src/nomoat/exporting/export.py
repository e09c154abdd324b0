"""``nomoat export RUN``: the tuned model as files that run elsewhere, each checked before it is delivered.

* ``hf``: the LoRA merged into the base, as a Hugging Face folder (config, tokenizer, safetensors weights).
* ``gguf``: the merged model as a GGUF for llama.cpp/Ollama, written from the *base GGUF itself*: every
  metadata key (architecture, tokenizer, chat template, stop tokens) is copied, only the weights are replaced,
  so nothing a runtime needs can be lost on the way. Then requantized by llama.cpp (``--quant``).
* ``adapter``: the LoRA alone as a GGUF adapter that llama.cpp applies on top of the base GGUF
  (``--lora`` in llama.cpp, ``ADAPTER`` in an Ollama Modelfile).
* ``ollama``: the GGUF plus ``<name>.Modelfile`` (FROM, TEMPLATE, PARAMETER stop):
  ``ollama create mymodel -f <name>.Modelfile``.

Parity, run by every GGUF export: perplexity of held-out text under llama.cpp (the exported file) vs the merged
torch model on the same tokens. Outside the tolerance (2% for f16/q8_0) the file is not delivered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nomoat.config import EXPORT_FORMATS, GGUF_QUANTS, ExportConfig
from nomoat.errors import UserError
from nomoat.finetune import basemodel, runs, trainset
from nomoat.paths import atomic_write, read_json

PARITY = {"f16": 0.02, "q8_0": 0.02, "q4_0": 0.15, "q4_k_m": 0.10}  # allowed relative perplexity gap per GGUF_QUANTS
ADAPTER_PARITY = 0.03  # base GGUF (as shipped) + adapter GGUF in llama.cpp vs the merged fp32 torch model
PARITY_TOKENS = 512


def run(
    run: str | Path, *, format: str | None = None, quant: str | None = None, output: str | Path | None = None
) -> dict[str, Any]:
    """Export a tune run; returns ``{"run", "files": [{"format", "path", "sha256", "bytes", ...}]}``.

    ``format`` and ``quant`` default to :class:`ExportConfig`'s."""
    import torch

    format, quant = format or ExportConfig.format, quant or ExportConfig.quant
    if format not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)} (got {format!r})")
    if quant not in GGUF_QUANTS:
        raise UserError(f"--quant must be one of {', '.join(GGUF_QUANTS)} (got {quant!r})")
    run_dir = runs.find_run(run)
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
    if not (run_dir / "adapter" / "adapter_model.safetensors").is_file():
        raise UserError(f"{run_dir} has no adapter yet (the run never reached a checkpoint)")
    config = read_json(run_dir / "config.json")
    base = basemodel.load(config["model"])
    if base.sha256 != config["base"]["sha256"]:
        raise UserError(f"the base model {config['model']} changed since the run; export needs the same file")
    merged = merge(base, run_dir / "adapter", torch.float32)
    out = Path(output).expanduser() if output else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{base.ref.name}-{run_dir.name}"
    files: list[dict[str, Any]] = []
    if format in ("hf", "all"):
        files.append(write_hf(merged, base.tokenizer, out / f"{stem}-hf"))
    tokens = parity_tokens(base, config) if format != "hf" else []
    if format in ("adapter", "all"):
        files.append(write_adapter_gguf(base, merged, run_dir / "adapter", out / f"{stem}.lora.gguf", tokens))
    if format in ("gguf", "ollama", "all"):
        gguf_file = write_gguf(base, merged, out / f"{stem}.{quant}.gguf", quant, run_dir.name, tokens)
        files.append(gguf_file)
        if format in ("ollama", "all"):
            files.append(write_modelfile(Path(gguf_file["path"]), base))
    runs.update_manifest(run_dir, exports=[*manifest.get("exports", []), *files])
    return {"run": str(run_dir), "files": files}


def merge(base: basemodel.Base, adapter: Path, dtype: Any) -> Any:
    """The base model with the LoRA folded into its weights (a plain transformers model)."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT warns about transformers deprecations users cannot act on
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base.load_weights(dtype), str(adapter))
    return model.merge_and_unload().eval()


def write_hf(model: Any, tokenizer: Any, folder: Path) -> dict[str, Any]:
    def write(partial: Path) -> None:
        model.save_pretrained(str(partial), safe_serialization=True)
        tokenizer.save_pretrained(str(partial))

    runs.replace_dir(folder, write)
    weights = sorted(folder.glob("*.safetensors"))
    return {
        "format": "hf",
        "path": str(folder),
        "bytes": sum(w.stat().st_size for w in weights),
        "sha256": {w.name: basemodel.sha256_file(w) for w in weights},
    }


# -- GGUF -----------------------------------------------------------------------------------------
def write_gguf(base: basemodel.Base, model: Any, dest: Path, quant: str, run_id: str, tokens: list[int]) -> dict:
    """Write the merged model as a GGUF (f16 first, then ``quant``), check parity, return its record."""
    from nomoat.llm import runtime

    if base.ref.kind != "gguf":
        raise UserError("GGUF export needs a GGUF base model for now (the run's base is a Hugging Face folder)")
    f16 = dest.with_name(dest.name + ".f16.partial")
    try:
        _write_f16(base, model, f16, run_id)
        final = dest.with_name(dest.name + ".partial")
        if quant == "f16":
            f16.rename(final)
        else:
            runtime.quantize(f16, final, quant)
        report = parity(final, model, tokens, PARITY[quant])
        if not report["passed"]:
            raise UserError(
                f"export failed its parity check: perplexity {report['ppl_gguf']:.3f} under llama.cpp vs "
                f"{report['ppl_torch']:.3f} in torch ({report['gap']:.1%} > {PARITY[quant]:.0%}); not delivered"
            )
        final.replace(dest)
    finally:
        for leftover in (f16, dest.with_name(dest.name + ".partial")):
            leftover.unlink(missing_ok=True)
    return {"format": "gguf", "quant": quant, "path": str(dest), "bytes": dest.stat().st_size,
            "sha256": basemodel.sha256_file(dest), **report}  # fmt: skip


def _write_f16(base: basemodel.Base, model: Any, path: Path, run_id: str) -> None:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(base.ref.path))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    weights = _gguf_weights(model, arch)
    writer = gguf.GGUFWriter(str(path), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_string("nomoat.run_id", run_id)
    writer.add_string("nomoat.base_sha256", base.sha256)
    for tensor in reader.tensors:
        if tensor.name not in weights:
            raise UserError(f"cannot export: the merged model has no weight for GGUF tensor {tensor.name}")
        data = weights[tensor.name]
        data = data.astype(np.float16) if data.ndim == 2 else data.astype(np.float32)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_weights(model: Any, arch: str) -> dict[str, Any]:
    """The merged weights under their GGUF names, q/k rows permuted back to llama.cpp's rotary layout."""
    names = _gguf_names(model)
    config = model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    out = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name not in names:
            continue
        data = tensor.detach().float().cpu().numpy()
        gguf_name = names[hf_name]
        if arch == "llama" and ".attn_q." in gguf_name:
            data = _permute(data, heads, heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            data = _permute(data, heads, kv_heads)
        out[gguf_name] = data
    return out


def _gguf_names(model: Any) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, from the same table transformers uses to read GGUFs."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    return {hf: gg for gg, hf in get_gguf_hf_weights_map(model, TensorProcessor()).items()}


def _permute(weights: Any, n_head: int, n_head_kv: int | None) -> Any:
    # The inverse of transformers' GGUF loader (and what llama.cpp's convert_hf_to_gguf.py does).
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def write_adapter_gguf(base: basemodel.Base, model: Any, adapter: Path, dest: Path, tokens: list[int]) -> dict:
    """The PEFT adapter as a llama.cpp LoRA GGUF (what llama.cpp's convert_lora_to_gguf.py writes), checked by
    perplexity of base GGUF + adapter under llama.cpp against the merged torch model."""
    import gguf
    from safetensors.torch import load_file

    if base.ref.kind != "gguf":
        raise UserError("adapter GGUF export needs a GGUF base model for now")
    settings = read_json(adapter / "adapter_config.json")
    arch = str(gguf.GGUFReader(str(base.ref.path)).fields[gguf.Keys.General.ARCHITECTURE].contents())
    names = _gguf_names(model)
    heads, kv_heads = model.config.num_attention_heads, getattr(model.config, "num_key_value_heads", None)
    partial = dest.with_name(dest.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for key, tensor in sorted(lora.items()):
        if ".lora_A." not in key:
            continue
        hf_name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        gguf_name = names.get(hf_name)
        if gguf_name is None:
            raise UserError(f"cannot export the adapter: no GGUF tensor for {hf_name}")
        lora_a = tensor.float().numpy()
        lora_b = lora[key.replace("lora_A", "lora_B")].float().numpy()
        if arch == "llama" and ".attn_q." in gguf_name:  # the delta is B @ A: its rows (B's) follow q/k's layout
            lora_b = _permute(lora_b, heads, heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            lora_b = _permute(lora_b, heads, kv_heads)
        writer.add_tensor(f"{gguf_name}.lora_a", lora_a)
        writer.add_tensor(f"{gguf_name}.lora_b", lora_b)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        report = parity(base.ref.path, model, tokens, ADAPTER_PARITY, lora=partial)
        if not report["passed"]:
            raise UserError(f"the adapter GGUF failed its parity check ({report['gap']:.1%} perplexity gap)")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return {"format": "adapter", "path": str(dest), "base": str(base.ref.path), "bytes": dest.stat().st_size,
            "sha256": basemodel.sha256_file(dest), **report}  # fmt: skip


# -- parity ---------------------------------------------------------------------------------------
def parity_tokens(base: basemodel.Base, config: dict[str, Any]) -> list[int]:
    """Held-out text (the run's eval rows, else its training rows) as one window of tokens."""
    from nomoat.dataset.formats import read_rows

    encoder = trainset.ChatEncoder(base.tokenizer, base.chat_template)
    tokens: list[int] = []
    for source in (config.get("eval_data"), config["data"]):
        if not source:
            continue
        for _, row, _ in read_rows(source):
            if row is not None:
                tokens += encoder.encode(row["messages"])[0]
            if len(tokens) >= PARITY_TOKENS:
                return tokens[:PARITY_TOKENS]
    if len(tokens) < 16:
        raise UserError("not enough text in the run's data to check the export's parity")
    return tokens


def parity(path: Path, model: Any, tokens: list[int], limit: float, lora: Path | None = None) -> dict[str, Any]:
    """Perplexity of the same tokens under llama.cpp (the exported file) and the merged torch model."""
    import math

    import torch

    from nomoat.llm import runtime

    measured = runtime.perplexity(path, tokens, lora=lora)
    with torch.no_grad():
        ids = torch.tensor([tokens])
        ppl_torch = math.exp(float(model(input_ids=ids, labels=ids).loss))
    gap = abs(measured["ppl"] - ppl_torch) / ppl_torch
    return {"ppl_gguf": round(measured["ppl"], 4), "ppl_torch": round(ppl_torch, 4), "gap": round(gap, 5),
            "passed": gap <= limit, "prefill_tok_s": round(measured["prefill_tok_s"], 1),
            "decode_tok_s": round(measured["decode_tok_s"], 1)}  # fmt: skip


# -- Ollama ----------------------------------------------------------------------------------------
def write_modelfile(gguf_path: Path, base: basemodel.Base) -> dict[str, Any]:
    """An Ollama Modelfile beside the GGUF: its chat template (Go syntax for ChatML) and stop tokens."""
    template = base.chat_template or ""
    if "<|im_start|>" not in template:
        raise UserError("an Ollama Modelfile is written for ChatML models only for now (the base is not ChatML)")
    go_template = (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    )
    stops = [s for s in ("<|im_end|>", base.tokenizer.eos_token) if s]
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{go_template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops)]
    path = atomic_write(gguf_path.with_suffix(".Modelfile"), "\n".join(lines) + "\n")
    return {"format": "ollama", "path": str(path), "bytes": path.stat().st_size, "sha256": basemodel.sha256_file(path)}


def format_export(result: dict[str, Any]) -> str:
    lines = [f"run: {result['run']}"]
    for f in result["files"]:
        extra = ""
        if f["format"] in ("gguf", "adapter"):
            kind = f.get("quant", "LoRA on the base GGUF")
            extra = (f" ({kind}: perplexity {f['ppl_gguf']:.3f} vs torch {f['ppl_torch']:.3f}, parity ok; "
                     f"decode {f['decode_tok_s']:.0f} tok/s)")  # fmt: skip
        lines.append(f"{f['format']}: {f['path']} [{f['bytes'] / 2**20:.1f} MiB]{extra}")
    return "\n".join(lines)
