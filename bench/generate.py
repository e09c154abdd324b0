"""nomoat's generation path vs raw llama-cpp-python on the same GGUF, threads and prompt, in one run.

Both sides use one loaded ``Llama`` (same weights, same context), alternate run by run (ABAB...) so machine
noise hits both alike, and reset the KV cache before each run so neither reuses the other's prompt.

    python bench/generate.py [--model default] [--threads N] [--runs 5] [--new-tokens 128]

Prints medians and the ratio nomoat / raw for decode tok/s and prefill tok/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.llm import runtime

PROMPT = (
    "You are reading the manual of a version control system. "
    "A commit records a snapshot of the project; branches are movable names for commits; "
    "merging joins histories and rebasing replays commits on a new base. "
    * 6
    + "\nWrite a long, detailed story about a developer who learns to use branches, in many paragraphs."
)


def raw_run(llama, prompt: list[int], new_tokens: int, seed: int) -> tuple[float, float, int]:
    """Raw llama-cpp-python streaming completion. Returns (time to first token, total time, tokens)."""
    llama.reset()
    start = time.perf_counter()
    first, count = None, 0
    for _ in llama.create_completion(
        prompt, max_tokens=new_tokens, temperature=0.2, top_k=40, top_p=0.95, min_p=0.0,
        repeat_penalty=1.1, seed=seed, stream=True,
    ):  # fmt: skip
        count += 1
        first = first or time.perf_counter()
    return (first or start) - start, time.perf_counter() - start, count


def nomoat_run(model: runtime.Model, prompt: list[int], new_tokens: int, seed: int) -> tuple[float, float, int]:
    model.llama.reset()
    start = time.perf_counter()
    gen = model.generate(prompt, GenerationConfig(max_tokens=new_tokens, temperature=0.2, seed=seed))
    first = None
    for _ in gen:
        first = first or time.perf_counter()
    return (first or start) - start, time.perf_counter() - start, gen.completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=RuntimeConfig().n_threads)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    model = runtime.load(args.model, RuntimeConfig(n_ctx=2048, n_threads=args.threads))
    prompt = model.encode_chat([{"role": "user", "content": PROMPT}])
    results: dict[str, list[tuple[float, float]]] = {"raw": [], "nomoat": []}
    nomoat_run(model, prompt, 8, 0)  # warm-up: page in weights, build kernels' buffers
    for i in range(args.runs):
        for side in ("raw", "nomoat") if i % 2 == 0 else ("nomoat", "raw"):
            fn = raw_run if side == "raw" else nomoat_run
            first, total, count = fn(model.llama if side == "raw" else model, prompt, args.new_tokens, seed=i)
            prefill = len(prompt) / first
            decode = (count - 1) / (total - first) if count > 1 else float("nan")
            results[side].append((prefill, decode))

    print(
        f"model={model.name} threads={args.threads} prompt={len(prompt)} tokens new<={args.new_tokens} runs={args.runs}"
    )
    print(f"{'':8}{'prefill tok/s':>15}{'decode tok/s':>15}")
    med = {s: (statistics.median(p for p, _ in r), statistics.median(d for _, d in r)) for s, r in results.items()}
    for side, (prefill, decode) in med.items():
        print(f"{side:8}{prefill:15.1f}{decode:15.1f}")
    print(
        f"{'ratio':8}{med['nomoat'][0] / med['raw'][0]:15.3f}{med['nomoat'][1] / med['raw'][1]:15.3f}   (nomoat / raw)"
    )


if __name__ == "__main__":
    main()
