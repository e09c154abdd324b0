"""`nomoat serve` under load: N concurrent streaming clients for a fixed time, on loopback.

Starts its own server (`nomoat serve --port 0`, a temporary NOMOAT_HOME), warms it up, then runs two phases
against it in the same run:

1. one client alone for ``--baseline-seconds`` (the peer: what the server does with no contention);
2. ``--clients`` clients at once for ``--seconds``; each sends streaming chat requests back to back and, after a
   429 (queue full), waits the server's Retry-After and tries again.

    python bench/serve.py [--clients 16] [--seconds 60] [--max-tokens 64] [--threads N] [--max-queue 8]

Prints, per phase: requests, errors (anything but 200/429, broken streams, error events), 429s, p50/p95 time to
first token (from sending the request to the first text; includes waiting in the queue), aggregate completion
tokens/s, and the ratio of the loaded phase's tokens/s to the lone client's. Memory drift is the server's RSS
after the warm-up vs after the loaded phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH_KEY = "bench-serve-key-0123456789"
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List some tips for learning a new language.",
    "Describe a walk through a forest in autumn.",
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args: argparse.Namespace, home: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "nomoat", "serve", "--port", "0", "--max-queue", str(args.max_queue)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, "NOMOAT_HOME": home, "HF_HUB_OFFLINE": "1", "NOMOAT_API_KEY": BENCH_KEY}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("nomoat serve: http://"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[2]


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streaming chat request: ``{"status", "ttft", "tokens"}`` or ``{"status", "error"}``."""
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first, tokens, done = None, 0, False
    try:
        async with client.stream("POST", url + "v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"status": response.status_code, "error": response.status_code != 429}
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"status": 200, "error": chunk["error"]["message"]}
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return {"status": 0, "error": repr(exc)}
    if not done:
        return {"status": 200, "error": "stream ended without [DONE]"}
    return {"status": 200, "ttft": first if first is not None else time.perf_counter() - start, "tokens": tokens}


async def phase(url: str, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    deadline = time.perf_counter() + seconds

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        n = i
        while time.perf_counter() < deadline:
            result = await one_request(client, url, PROMPTS[n % len(PROMPTS)], max_tokens)
            results.append(result)
            n += 1
            if result["status"] == 429:
                await asyncio.sleep(1.0)  # the server's Retry-After

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 2)
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}  # serve wants a key (issue 18)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
    wall = time.perf_counter() - start  # requests started before the deadline are waited for and counted
    ok = [r for r in results if r["status"] == 200 and not r.get("error")]
    ttfts = sorted(r["ttft"] for r in ok)
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(results),
        "ok": len(ok),
        "errors": sum(1 for r in results if r.get("error") and r["status"] != 429),
        "rejected_429": sum(1 for r in results if r["status"] == 429),
        "ttft_p50_s": round(statistics.median(ttfts), 2) if ttfts else None,
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 2) if ttfts else None,
        "tokens": sum(r["tokens"] for r in ok),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "error_samples": [r["error"] for r in results if r.get("error") and r["status"] != 429][:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--baseline-seconds", type=float, default=15)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=8, help="the server's queue (its default is 8)")
    parser.add_argument("--threads", type=int, help="llama.cpp threads for the server (default: all CPUs)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nomoat-bench-serve-") as home:
        proc, url = start_server(args, home)
        try:
            asyncio.run(phase(url, 1, 0.1, args.max_tokens))  # warm-up: first prompt, allocations
            rss_start = rss_mib(proc.pid)
            alone = asyncio.run(phase(url, 1, args.baseline_seconds, args.max_tokens))
            loaded = asyncio.run(phase(url, args.clients, args.seconds, args.max_tokens))
            rss_end = rss_mib(proc.pid)
            healthy = httpx.get(url + "health").json()
        finally:
            proc.terminate()
            proc.wait(30)

    for name, r in (("1 client (peer)", alone), (f"{args.clients} clients", loaded)):
        print(f"{name:>16}: {r['requests']} requests in {r['seconds']} s, {r['errors']} errors, "
              f"{r['rejected_429']} x 429, TTFT p50 {r['ttft_p50_s']} s / p95 {r['ttft_p95_s']} s, "
              f"{r['tokens_per_s']} tok/s")  # fmt: skip
        for sample in r["error_samples"]:
            print(f"{'':>18}error: {sample}")
    ratio = loaded["tokens_per_s"] / alone["tokens_per_s"] if alone["tokens_per_s"] else float("nan")
    client_cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(f"bench client CPU: {client_cpu.ru_utime + client_cpu.ru_stime:.1f} s (it shares the CPUs with the server)")
    print(f"aggregate tok/s ratio {args.clients} clients / 1 client: {ratio:.2f}")
    print(f"server RSS: {rss_start:.0f} MiB after warm-up -> {rss_end:.0f} MiB after load "
          f"({rss_end - rss_start:+.1f} MiB); health after: {healthy}")  # fmt: skip
    summary = {"alone": alone, "loaded": loaded, "ratio": round(ratio, 2), "rss_start_mib": round(rss_start, 1),
               "rss_end_mib": round(rss_end, 1), "max_tokens": args.max_tokens,
               "max_queue": args.max_queue}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
