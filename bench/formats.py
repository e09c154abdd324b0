"""Weight formats for serving the bundled model: perplexity gap and speed of each, side by side in one run.

    python -u bench/formats.py [--formats q8_0,q4_0,f16] [--windows 8] [--threads N] [--kb gitdoc]

The bundled model ships as Q4_1 and only as Q4_1, so the reference is that file (what a user runs today); every
other format is requantized from it with llama.cpp, as `nomoat.llm.formats` does. f16 made from it holds its
weights exactly, yet its perplexity differs a little: llama.cpp's Q4_1 matmuls round the activations to 8 bits
(Q8_1), f16's do not. Held-out text: ``--windows`` windows of 512 tokens from a seeded sample of the git-doc
chunks (bench/answers.py ingests it on the first run). For each format: perplexity over the windows, its gap
against Q4_1, prefill tok/s (512 tokens in one batch) and single-token decode tok/s, the formats alternating
window by window so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import CACHE  # noqa: E402


def held_out_windows(kb: str, windows: int, size: int = 512, seed: int = 0) -> list[list[int]]:
    from nomoat.kb import store
    from nomoat.llm import runtime

    with store.connect(kb) as conn:
        texts = [text for _, text in store.all_chunk_texts(conn)]
    random.Random(seed).shuffle(texts)
    model = runtime.load("default")
    tokens: list[int] = []
    for text in texts:
        tokens += model.tokenize(text + "\n\n")
        if len(tokens) >= windows * size:
            break
    return [tokens[i * size : (i + 1) * size] for i in range(windows)]


def main() -> None:
    from nomoat.config import RuntimeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="q8_0,q4_0,f16", help="formats made from the bundled Q4_1 (comma-separated)")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=RuntimeConfig().n_threads)
    ap.add_argument("--kb", default="gitdoc")
    args = ap.parse_args()
    os.environ.setdefault("NOMOAT_HOME", str(CACHE / "nomoat-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from answers import ensure_kb
    from nomoat.llm import llamacpp
    from nomoat.llm.models import resolve

    ensure_kb(args.kb)
    bundled = resolve("default").path
    folder = Path(tempfile.mkdtemp(prefix="nomoat-formats-"))
    files = {"q4_1 (bundled)": bundled}
    for quant in args.formats.split(","):
        files[quant] = llamacpp.quantize(bundled, folder / f"{quant}.gguf", quant, threads=args.threads)
    windows = held_out_windows(args.kb, args.windows)
    runs: dict[str, list[dict]] = {name: [] for name in files}
    for i, window in enumerate(windows):
        for name in list(files) if i % 2 == 0 else list(files)[::-1]:
            runs[name].append(llamacpp.perplexity(files[name], window, decode_tokens=32, threads=args.threads))
        print(f"window {i + 1}/{len(windows)}", file=sys.stderr, flush=True)

    def ppl(name: str) -> float:
        return math.exp(statistics.fmean(math.log(r["ppl"]) for r in runs[name]))

    ref = "q4_1 (bundled)"
    pre0 = statistics.median(r["prefill_tok_s"] for r in runs[ref])
    dec0 = statistics.median(r["decode_tok_s"] for r in runs[ref])
    print(f"\n{len(windows)} windows x 512 tokens, threads={args.threads}; ratios against the bundled Q4_1\n")
    print("| format | MiB | perplexity | gap | prefill tok/s | ratio | decode tok/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, path in files.items():
        pre = statistics.median(r["prefill_tok_s"] for r in runs[name])
        dec = statistics.median(r["decode_tok_s"] for r in runs[name])
        gap = (ppl(name) - ppl(ref)) / ppl(ref)
        print(f"| {name} | {path.stat().st_size / 2**20:.1f} | {ppl(name):.4f} | {gap:+.2%} | {pre:.1f} | "
              f"{pre / pre0:.2f} | {dec:.1f} | {dec / dec0:.2f} |")  # fmt: skip
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
