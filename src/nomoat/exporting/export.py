"""``nomoat export RUN``: the tuned model as files that run elsewhere, each checked before it is delivered.

* ``hf``: the LoRA merged into the base, as a Hugging Face folder (config, tokenizer, safetensors weights).
* ``gguf``: the merged model as a GGUF for llama.cpp/Ollama, then requantized by llama.cpp (``--quant``). From a
  GGUF base it is written from *the base GGUF itself* (every metadata key copied: tokenizer, chat template, stop
  tokens, sliding window; only the weights replaced, :mod:`.ggufio`); from an HF-folder base, llama.cpp's own
  ``convert_hf_to_gguf.py`` converts the merged folder (:mod:`.converter`).
* ``adapter``: the LoRA alone as a GGUF adapter that llama.cpp applies on top of the base GGUF (``--lora`` in
  llama.cpp, ``ADAPTER`` in an Ollama Modelfile); an HF-folder base is converted too, so it has a GGUF to go on.
* ``ollama``: the GGUF plus ``<name>.Modelfile`` (:mod:`.modelfile`): ``ollama create mymodel -f <name>.Modelfile``.

Every GGUF passes :mod:`.parity` (llama.cpp vs torch perplexity on held-out tokens) and keeps the settings its
architecture row says llama.cpp must honour; otherwise nothing is delivered.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from nomoat.config import EXPORT_FORMATS, GGUF_QUANTS, ExportConfig
from nomoat.errors import UserError
from nomoat.exporting import converter, ggufio, modelfile
from nomoat.exporting.parity import ADAPTER_PARITY, PARITY, parity, parity_tokens, require
from nomoat.finetune import basemodel, runs
from nomoat.paths import fsync, fsync_dir, read_json

# the tokenizer of an HF-folder base is copied as it is (save_pretrained may drop tokenizer.model, which
# llama.cpp's converter needs for SentencePiece models such as Gemma and Phi-3)
TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "generation_config.json",
)  # fmt: skip


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
    if base.ref.kind == "hf" and format != "hf":
        converter.locate()  # fail before the merge when llama.cpp's converter is missing
    merged = merge(base, run_dir / "adapter", torch.float32)
    out = Path(output).expanduser() if output else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    job = _Export(base, merged, run_dir, out, f"{base.ref.name}-{run_dir.name}", quant)
    files = job.files(format, parity_tokens(base, config) if format != "hf" else [])
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


def write_hf(model: Any, base: basemodel.Base, folder: Path) -> dict[str, Any]:
    def write(partial: Path) -> None:
        model.save_pretrained(str(partial), safe_serialization=True)
        base.tokenizer.save_pretrained(str(partial))
        if base.ref.kind == "hf":
            for name in TOKENIZER_FILES:
                if (base.ref.path / name).is_file():
                    shutil.copyfile(base.ref.path / name, partial / name)

    runs.replace_dir(folder, write)
    weights = sorted(folder.glob("*.safetensors"))
    return {
        "format": "hf",
        "path": str(folder),
        "bytes": sum(w.stat().st_size for w in weights),
        "sha256": {w.name: basemodel.sha256_file(w) for w in weights},
    }


class _Export:
    """One export of one run into ``out``: which files, in which order, each checked before it is renamed."""

    def __init__(self, base: basemodel.Base, merged: Any, run_dir: Path, out: Path, stem: str, quant: str):
        self.base, self.merged, self.run_dir, self.out, self.stem, self.quant = base, merged, run_dir, out, stem, quant
        self.arch = base.architecture
        self.partials: list[Path] = []

    def files(self, format: str, tokens: list[int]) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = []
        try:
            if format in ("hf", "all"):
                files.append(write_hf(self.merged, self.base, self.out / f"{self.stem}-hf"))
            if format == "hf":
                return files
            want_gguf, want_adapter = format in ("gguf", "ollama", "all"), format in ("adapter", "all")
            f16, base_gguf = self._f16_files(want_gguf, want_adapter, files)
            if want_adapter:
                files.append(self._adapter(base_gguf, tokens))
            if want_gguf:
                files.append(self._gguf(f16, tokens))
                if format == "ollama":
                    files.append(modelfile.write(Path(files[-1]["path"]), self.base))
                elif format == "all":
                    try:  # the checked files above stay delivered (and in the manifest) without a Modelfile
                        files.append(modelfile.write(Path(files[-1]["path"]), self.base))
                    except UserError as exc:
                        print(f"nomoat: {exc}", file=sys.stderr)
            return files
        finally:
            for leftover in self.partials:
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    def _partial(self, name: str) -> Path:
        path = self.out / f"{name}.partial"
        self.partials.append(path)
        return path

    def _f16_files(self, gguf: bool, adapter: bool, files: list[dict[str, Any]]) -> tuple[Path, Path]:
        """(merged f16 GGUF, base GGUF the adapter applies to), written as needed."""
        f16 = self._partial(f"{self.stem}.f16.gguf")
        if self.base.ref.kind == "gguf":
            if gguf:
                extra = {"nomoat.run_id": self.run_dir.name, "nomoat.base_sha256": self.base.sha256}
                ggufio.write_from_base(self.base.ref.path, self.merged, self.arch, f16, extra)
            return f16, self.base.ref.path
        # HF-folder base: llama.cpp's converter, on the merged folder (and the base, for the adapter), in one go
        jobs = []
        if gguf:
            hf = next((Path(f["path"]) for f in files if f["format"] == "hf"), None)
            if hf is None:
                hf = self._partial(f"{self.stem}-hf")
                write_hf(self.merged, self.base, hf)
            jobs.append((hf, f16))
        base_gguf = self.out / f"{self.base.ref.name}.f16.gguf"
        base_partial = self._partial(base_gguf.name)
        if adapter and not base_gguf.is_file():
            jobs.append((self.base.ref.path, base_partial))
        if jobs:
            converter.convert(jobs)
        if base_partial.is_file():
            publish(base_partial, base_gguf)
        return f16, base_gguf

    def _gguf(self, f16: Path, tokens: list[int]) -> dict[str, Any]:
        from nomoat.llm import llamacpp

        dest = self.out / f"{self.stem}.{self.quant}.gguf"
        final = self._partial(dest.name)
        if self.quant == "f16":
            f16.rename(final)
        else:
            llamacpp.quantize(f16, final, self.quant)
        report = parity(final, self.merged, tokens, PARITY[self.quant])
        require(report, PARITY[self.quant], "export")
        ggufio.check_carried(final, self.arch, self.merged.config)
        publish(final, dest)
        return {"format": "gguf", "quant": self.quant, "path": str(dest), "bytes": dest.stat().st_size,
                "sha256": basemodel.sha256_file(dest), "architecture": self.arch.name, **report}  # fmt: skip

    def _adapter(self, base_gguf: Path, tokens: list[int]) -> dict[str, Any]:
        """The LoRA as a GGUF adapter, checked by perplexity of base GGUF + adapter in llama.cpp."""
        from nomoat.llm.gguf_check import read_header

        dest = self.out / f"{self.stem}.lora.gguf"
        partial = self._partial(dest.name)
        gguf_arch = read_header(base_gguf).architecture
        ggufio.write_adapter(self.merged, self.arch, gguf_arch, self.run_dir / "adapter", partial)
        report = parity(base_gguf, self.merged, tokens, ADAPTER_PARITY, lora=partial)
        require(report, ADAPTER_PARITY, "the adapter GGUF")
        publish(partial, dest)
        return {"format": "adapter", "path": str(dest), "base": str(base_gguf), "bytes": dest.stat().st_size,
                "sha256": basemodel.sha256_file(dest), **report}  # fmt: skip


def format_export(result: dict[str, Any]) -> str:
    lines = [f"run: {result['run']}"]
    for f in result["files"]:
        extra = ""
        if f["format"] in ("gguf", "adapter"):
            kind = f.get("quant", "LoRA on the base GGUF")
            extra = (f" ({kind}: perplexity {f['ppl_gguf']:.3f} vs torch {f['ppl_torch']:.3f}, parity ok; "
                     f"decode {f['decode_tok_s']:.0f} tok/s)")  # fmt: skip
        if f["format"] == "adapter":
            extra += f"; apply it to {f['base']}"
        lines.append(f"{f['format']}: {f['path']} [{f['bytes'] / 2**20:.1f} MiB]{extra}")
    return "\n".join(lines)


def publish(partial: Path, dest: Path) -> None:
    """Rename a finished file to its final name durably: its bytes reach the disk before the rename, and the
    rename before we report it (a crash never leaves a final name pointing at a short or empty file)."""
    fsync(partial)
    partial.replace(dest)
    fsync_dir(dest.parent)
