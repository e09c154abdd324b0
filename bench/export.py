"""Export quality and speed per quantization: size, perplexity vs the merged torch model, decode and prefill.

    python -u bench/export.py [--run bench/.cache/tune/run20] [--quants f16,q8_0,q4_0,q4_k_m]

The run is a ``nomoat tune`` run (default: the 20-minute git-doc run of docs/benchmarks.md). Every quant is
exported by ``nomoat export`` (which checks parity itself) and measured on the same held-out tokens in one run;
ratios are against f16. The LoRA adapter GGUF on the shipped base is measured the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


QUESTION = "What does the --soft option of git reset do?"


def chat_once(path: Path) -> tuple[str, str]:
    """One greedy answer from the exported file through llama.cpp and its own chat template."""
    from nomoat.config import GenerationConfig
    from nomoat.llm import runtime

    greedy = GenerationConfig(temperature=0, max_tokens=128)
    generation = runtime.load(path).chat([{"role": "user", "content": QUESTION}], greedy)
    text = generation.text()
    return str(generation.finish_reason), text.replace("\n", " ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=HERE / ".cache" / "tune" / "run20")
    ap.add_argument("--quants", default="f16,q8_0,q4_0,q4_k_m")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NOMOAT_HOME", str(HERE / ".cache" / "nomoat-home"))
    from nomoat.errors import UserError
    from nomoat.exporting import export

    out = Path(tempfile.mkdtemp(prefix="nomoat-bench-export-"))
    rows, answers = [], []
    try:
        for quant in args.quants.split(","):
            try:
                (record,) = export.run(args.run, format="gguf", quant=quant, output=out)["files"]
            except UserError as exc:
                print(f"{quant}: {exc}")
                continue
            rows.append((quant, record))
            answers.append((quant, *chat_once(Path(record["path"]))))
        (adapter,) = export.run(args.run, format="adapter", output=out)["files"]
        rows.append(("LoRA GGUF + base", adapter))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("\nchat through each file (greedy; finish 'stop' = the end-of-turn token was produced):")
    for quant, finish, text in answers:
        print(f"  {quant:7s} [{finish}] {text[:110]!r}")
    first = rows[0][1]
    print(f"\n{'format':18s} {'MiB':>7s} {'PPL gguf':>9s} {'PPL torch':>9s} {'gap':>6s} {'decode':>7s} "
          f"{'vs f16':>6s} {'prefill':>8s} {'vs f16':>6s}")  # fmt: skip
    for name, r in rows:
        print(
            f"{name:18s} {r['bytes'] / 2**20:7.1f} {r['ppl_gguf']:9.3f} {r['ppl_torch']:9.3f} {r['gap']:6.1%} "
            f"{r['decode_tok_s']:7.1f} {r['decode_tok_s'] / first['decode_tok_s']:6.2f} "
            f"{r['prefill_tok_s']:8.1f} {r['prefill_tok_s'] / first['prefill_tok_s']:6.2f}"
        )


if __name__ == "__main__":
    main()
