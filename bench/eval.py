"""The whole chain on a real corpus: ingest -> data build -> tune (short) -> export -> eval, then the same eval again
without its answer cache to check that the same seed gives the same table.

    python -u bench/eval.py [--run RUN] [--time 5m] [--limit 30]

The corpus is Debian's git-doc (bench/corpus.py), ingested into the knowledge base ``gitdoc`` under
bench/.cache/nomoat-home; the dataset is built from it by ``nomoat data build --no-model`` (bench/tune.py). With
``--run`` an existing tune run is exported and evaluated instead of tuning a new one. Prints the table and the
ratios that matter: tuned vs base, and each with retrieval vs without.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import CACHE  # noqa: E402
from tune import DATA, build_dataset  # noqa: E402

NOMOAT = [sys.executable, "-m", "nomoat"]


def nomoat(*args: str) -> dict:
    """Run one CLI command with --json, its progress bars on stderr; the parsed result."""
    start = time.perf_counter()
    proc = subprocess.run([*NOMOAT, *args, "--json"], stdout=subprocess.PIPE, text=True, check=True)
    print(f"$ nomoat {' '.join(args)}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="an existing tune run on the git-doc dataset (default: tune a new one)")
    ap.add_argument("--time", default="5m", help="tuning budget for a new run (default 5m)")
    ap.add_argument("--limit", default="30", help="held-out questions (default 30)")
    args = ap.parse_args()
    os.environ["NOMOAT_HOME"] = str(CACHE / "nomoat-home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not DATA.exists():
        build_dataset()  # ingests git-doc into the gitdoc KB, then `nomoat data build --no-model`
    out = CACHE / "eval"
    run = args.run
    if run is None:
        run = out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        nomoat("tune", str(DATA), "--time", args.time, "-o", str(run))
    nomoat("export", str(run), "--format", "gguf", "--quant", "q8_0")
    report = out / "report.html"
    eval_args = ("eval", str(run), "--kb", "gitdoc", "--limit", args.limit, "-o", str(report))
    report.with_suffix(".cache.jsonl").unlink(missing_ok=True)
    first = nomoat(*eval_args)
    report.with_suffix(".cache.jsonl").rename(report.with_suffix(".first-cache.jsonl"))
    second = nomoat(*eval_args)  # no cache: every answer generated again

    from nomoat.evaluation.report import format_table

    print("\n" + format_table(first))
    table = first["table"]
    f1 = {name: row["f1"][0] for name, row in table.items()}
    print(f"\ntuned / base token F1: {f1['tuned'] / max(f1['base'], 1e-9):.2f}x;  "
          f"base+RAG / base: {f1['base+RAG'] / max(f1['base'], 1e-9):.2f}x;  "
          f"tuned+RAG / base+RAG: {f1['tuned+RAG'] / max(f1['base+RAG'], 1e-9):.2f}x")  # fmt: skip
    print(f"held-out perplexity tuned / base: {table['tuned']['perplexity'] / table['base']['perplexity']:.2f}x")

    def metrics(result: dict) -> dict:
        return {n: {k: v for k, v in row.items() if not k.startswith("seconds")} for n, row in result["table"].items()}

    same = metrics(first) == metrics(second)
    print(f"same seed, answers generated twice: {'identical' if same else 'DIFFERENT'} tables (latency aside)")
    print(f"report: {report}")


if __name__ == "__main__":
    main()
