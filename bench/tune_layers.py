"""What a short ``nomoat tune`` on RAG rows gains from training fewer layers or a higher learning rate, in one run.

    python -u bench/tune_layers.py DATA.jsonl [--time 5m] [--variants 1:2e-4,0.33:2e-4,0.33:1e-3]

Each variant (``lora_layers:lr``) is one ``nomoat tune DATA --time T`` on the same rows, eval split and seed,
one after the other. Printed per variant: optimizer steps reached, seconds per step, train tokens/s and the eval
loss before and after; then each variant's steps and final eval loss as ratios to the first. A learn loop's tune
has a fixed time, so what counts is the eval loss reached in that time, not per step.

DATA: RAG rows as ``nomoat learn`` builds them (``nomoat data build --for rag``), e.g. the data file a
``bench/learn.py`` run left in its NOMOAT_HOME (``learn/bench/data.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tune(data: Path, budget: str, layers: str, lr: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "nomoat", "tune", str(data), "--time", budget, "--lora-layers", layers, "--lr", lr,
           "-o", str(out), "--json"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=os.environ | {"HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, text=True, check=True)
    summary = json.loads(done.stdout)
    summary["wall_s"] = time.perf_counter() - start
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--time", default="5m", help="each variant's tune budget (default 5m)")
    ap.add_argument("--variants", default="1:2e-4,0.33:2e-4,0.33:1e-3", help="lora_layers:lr, comma-separated")
    args = ap.parse_args()
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (layers, lr) in enumerate(variants):
            s = tune(args.data, args.time, layers, lr, Path(tmp) / f"run{i}")
            results.append(s)
            print(f"lora_layers {layers:>5s} lr {lr:>6s}: {s['steps']:3d} steps, "
                  f"{s['seconds'] / max(1, s['steps']):5.1f} s/step, {s['train_tok_s']} train tok/s, "
                  f"eval loss {s.get('eval_loss_start')} -> {s.get('eval_loss_end')}", flush=True)  # fmt: skip
    first = results[0]
    print("\nratios to the first variant:")
    for (layers, lr), s in zip(variants, results, strict=True):
        print(f"  lora_layers {layers:>5s} lr {lr:>6s}: steps x{s['steps'] / max(1, first['steps']):.2f}, "
              f"final eval loss x{s['eval_loss_end'] / first['eval_loss_end']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
