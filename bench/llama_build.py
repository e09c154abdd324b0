"""Which llama.cpp build and weight format is fastest here? Side by side, alternating, in one run.

Variants are llama-cpp-python wheels (unpacked into a temp dir and put first on PYTHONPATH of a worker
process), optionally loaded with ``use_extra_bufts=False`` (the runtime fix for the AMX crash, which also turns
off CPU weight repacking), and GGUF formats requantized from the bundled Q4_1 (Q8_0, Q4_0).

    python bench/llama_build.py --wheel avx512=PATH.whl --wheel avx2=PATH.whl [--no-extra-bufts avx512]
                                [--formats Q4_1,Q8_0,Q4_0] [--runs 3] [--threads 2]

Prints median prefill and decode tok/s per variant and the ratio to the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WORKER = r"""
import json, sys, time
import llama_cpp, llama_cpp.llama_cpp as C
model, threads, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if not extra:
    default = C.llama_model_default_params
    def patched():
        p = default(); p.use_extra_bufts = False; return p
    C.llama_model_default_params = patched
llm = llama_cpp.Llama(model, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
prompt = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 60).encode())[:512]
llm.eval(prompt[:8]); llm.reset()  # warm-up
t = time.perf_counter(); llm.eval(prompt); prefill = len(prompt) / (time.perf_counter() - t)
llm.reset(); llm.eval(prompt[:16])
n, t = 64, time.perf_counter()
for i in range(n):
    llm.eval([prompt[16 + i]])  # one token per decode call, like generation (sampling excluded)
decode = n / (time.perf_counter() - t)
print(json.dumps({"prefill": prefill, "decode": decode}))
"""


def quantize(src: Path, dst: Path, ftype: str, site: Path) -> None:
    code = (
        "import sys, llama_cpp as L\n"
        "p = L.llama_model_quantize_default_params(); p.ftype = getattr(L, 'LLAMA_FTYPE_MOSTLY_' + sys.argv[3]);"
        " p.allow_requantize = True\n"
        "assert L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p) == 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "-c", code, str(src), str(dst), ftype], check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", action="append", default=[], metavar="NAME=WHEEL", help="a build to compare")
    ap.add_argument("--no-extra-bufts", action="append", default=[], metavar="NAME", help="also run NAME this way")
    ap.add_argument("--formats", default="Q4_1", help="comma list of formats (requantized from the bundled Q4_1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    from nomoat.llm.models import bundled_path

    tmp = Path(tempfile.mkdtemp(prefix="nomoat-bench-"))
    sites = {}
    for spec in args.wheel:
        name, wheel = spec.split("=", 1)
        sites[name] = tmp / name
        zipfile.ZipFile(wheel).extractall(sites[name])
    if not sites:
        sites["installed"] = Path(os.path.dirname(os.path.dirname(__import__("llama_cpp").__file__)))
    first_site = next(iter(sites.values()))
    models = {}
    for fmt in args.formats.split(","):
        if fmt == "Q4_1":
            models[fmt] = bundled_path()
        else:
            models[fmt] = tmp / f"model-{fmt}.gguf"
            quantize(bundled_path(), models[fmt], fmt, first_site)

    variants = [(b, fmt, True) for b in sites for fmt in models]
    variants += [(b, fmt, False) for b in args.no_extra_bufts for fmt in models]
    results: dict[tuple, list[dict]] = {v: [] for v in variants}
    for run in range(args.runs):
        for v in variants if run % 2 == 0 else variants[::-1]:
            build, fmt, extra = v
            env = {**os.environ, "PYTHONPATH": str(sites[build])}
            cmd = [sys.executable, "-c", WORKER, str(models[fmt]), str(args.threads), "1" if extra else "0"]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            results[v].append(json.loads(out.strip().splitlines()[-1]))

    base = None
    print(f"threads={args.threads} runs={args.runs} (medians; ratio to the first row)")
    print(f"{'build':10}{'format':8}{'extra bufts':>12}{'prefill':>10}{'decode':>10}{'ratio p':>9}{'ratio d':>9}")
    for (build, fmt, extra), rows in results.items():
        p = statistics.median(r["prefill"] for r in rows)
        d = statistics.median(r["decode"] for r in rows)
        base = base or (p, d)
        print(f"{build:10}{fmt:8}{'on' if extra else 'off':>12}{p:10.1f}{d:10.1f}{p / base[0]:9.2f}{d / base[1]:9.2f}")


if __name__ == "__main__":
    main()
