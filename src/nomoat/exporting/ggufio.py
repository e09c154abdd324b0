"""GGUF files written from a GGUF base: the merged model (every metadata key of the base copied, only the weights
replaced) and the LoRA as a llama.cpp adapter; plus the check that carried settings survived.

Weights go back into llama.cpp's layout with the inverse of what transformers' loader undoes, per
:mod:`nomoat.llm.architectures` row: q/k rows permuted for llama.cpp's rotary kernel (llama, mistral), norms
offset by +1 (Gemma), tensor names from gguf-py's table for the row's GGUF architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nomoat.errors import UserError
from nomoat.llm.architectures import Architecture
from nomoat.paths import read_json


def names(model: Any, arch: Architecture) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, from the same table transformers uses to read GGUFs."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    table = get_gguf_hf_weights_map(model, TensorProcessor(), model_type=arch.gguf)
    return {hf: gg for gg, hf in table.items()}


def permute(weights: Any, n_head: int, n_head_kv: int | None) -> Any:
    # The inverse of transformers' GGUF loader (and what llama.cpp's convert_hf_to_gguf.py does).
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rows_layout(data: Any, gguf_name: str, arch: Architecture, config: Any) -> Any:
    """Rows of a q/k weight (or of a LoRA B, whose rows are the delta's) in llama.cpp's order."""
    if not arch.permute_qk:
        return data
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    if ".attn_q." in gguf_name:
        return permute(data, heads, heads)
    if ".attn_k." in gguf_name:
        return permute(data, heads, kv_heads)
    return data


def weights(model: Any, arch: Architecture) -> dict[str, Any]:
    """The merged weights under their GGUF names, in llama.cpp's layout."""
    table = names(model, arch)
    out = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name not in table:
            continue
        data = tensor.detach().float().cpu().numpy()
        gguf_name = table[hf_name]
        data = _rows_layout(data, gguf_name, arch, model.config)
        if arch.norm_offset and gguf_name.endswith("norm.weight"):
            data = data + arch.norm_offset
        out[gguf_name] = data
    return out


def write_from_base(base_gguf: Path, model: Any, arch: Architecture, path: Path, extra: dict[str, str]) -> None:
    """An f16 GGUF of ``model`` with every metadata key of ``base_gguf`` (``extra`` strings added)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(base_gguf))
    merged = weights(model, arch)
    writer = gguf.GGUFWriter(str(path), str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents()))
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or field.name.startswith(
            "GGUF."
        ):
            continue  # written by GGUFWriter itself, or replaced below
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in extra.items():
        writer.add_string(key, value)
    for tensor in reader.tensors:
        if tensor.name in merged:
            data = merged[tensor.name]
            writer.add_tensor(tensor.name, data.astype(np.float16) if data.ndim == 2 else data.astype(np.float32))
        elif tensor.name in arch.gguf_only:  # no HF parameter (e.g. Phi-3's rope factors): kept as in the base
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
        else:
            raise UserError(f"cannot export: the merged model has no weight for GGUF tensor {tensor.name}")
    _finish(writer)


def write_adapter(model: Any, arch: Architecture, gguf_arch: str, adapter: Path, path: Path) -> None:
    """The PEFT adapter as a llama.cpp LoRA GGUF (what llama.cpp's convert_lora_to_gguf.py writes)."""
    import gguf
    from safetensors.torch import load_file

    settings = read_json(adapter / "adapter_config.json")
    table = names(model, arch)
    writer = gguf.GGUFWriter(str(path), gguf_arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for key, tensor in sorted(lora.items()):
        if ".lora_A." not in key:
            continue
        hf_name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        gguf_name = table.get(hf_name)
        if gguf_name is None:
            raise UserError(f"cannot export the adapter: no GGUF tensor for {hf_name}")
        lora_b = lora[key.replace("lora_A", "lora_B")].float().numpy()
        writer.add_tensor(f"{gguf_name}.lora_a", tensor.float().numpy())
        writer.add_tensor(f"{gguf_name}.lora_b", _rows_layout(lora_b, gguf_name, arch, model.config))
    _finish(writer)


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_carried(path: Path, arch: Architecture, config: Any) -> None:
    """UserError when a setting llama.cpp must honour (sliding window, soft-capping) is missing from ``path``
    or differs from the model's config: such a file would load and run, subtly wrong, beyond short prompts."""
    from nomoat.llm.gguf_check import read_header

    metadata = read_header(path).metadata
    for hf_key, (value, gguf_key) in arch.carried_settings(config).items():
        found = metadata.get(gguf_key)
        if found is None or abs(float(found) - float(value)) > 1e-6 * max(1.0, abs(float(value))):
            raise UserError(f"cannot export: {path.name} lost {hf_key}={value} ({gguf_key} is {found}); "
                            "not delivered")  # fmt: skip
