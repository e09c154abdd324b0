"""`nomoat serve` under load: concurrent streaming clients for a fixed time, on loopback, against the ceiling.

In one run (same machine, same model):

0. the ceiling: raw llama.cpp batched decode, B sequences' next tokens in one ``llama_decode`` (B = 1, 8, 16;
   sampling and HTTP excluded), in this process before any server starts; then the batch engine alone (B threads
   calling ``Batched.chat``, no HTTP), with the median time of its pure decode steps;
1. ``nomoat serve --parallel 1`` (one generation at a time, the old path): one client alone for
   ``--baseline-seconds`` (the peer);
2. ``nomoat serve --parallel P``: one client alone, then each of ``--clients`` (e.g. 8,16) clients at once for
   ``--seconds``; each sends streaming chat requests back to back and, after a 429 (queue full), waits the
   server's Retry-After and tries again.

    python bench/serve.py [--clients 8,16] [--seconds 30] [--parallel P] [--model X.gguf] [--threads N]
                          [--client-nice 19]

Prints, per phase: requests, errors (anything but 200/429, broken streams, error events), 429s, p50/p95 time to
first token (from sending the request to the first text; includes waiting in the queue), aggregate completion
tokens/s, and its ratio to the raw ceiling at B = clients; and one client's tokens/s at --parallel P vs 1.
Memory is the batched server's RSS after its warm-up vs after the loaded phases.
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
import threading
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


def raw_decode(model: str | None, sizes: list[int], steps: int, threads: int | None) -> dict[int, float]:
    """Tokens/s of ``steps`` decode calls of B sequences' next token each (after a 16-token prompt per sequence),
    straight through llama.cpp: what batching could give at best, with no sampling, Python or HTTP around it."""
    import llama_cpp
    from llama_cpp import _internals

    from nomoat.config import RuntimeConfig
    from nomoat.llm import runtime

    config = RuntimeConfig(n_ctx=256)
    config.n_threads = threads or config.n_threads
    llama = runtime.load(model, config).llama
    prompt = llama.tokenize(b"The quick brown fox jumps over the lazy dog, and then it ran far away into the woods",
                            add_bos=False)[:16]  # fmt: skip
    speeds = {}
    for b in sizes:
        params = type(llama.context_params).from_buffer_copy(llama.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = 256 * b, b, False
        params.n_batch = max(params.n_batch, len(prompt) * b)
        ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        for seq in range(b):
            batch.add_sequence(prompt, seq, logits_all=False)
        assert llama_cpp.llama_decode(ctx.ctx, batch.batch) == 0
        start = time.perf_counter()
        for step in range(steps):
            batch.reset()
            for seq in range(b):
                i = batch.batch.n_tokens
                batch.batch.token[i], batch.batch.n_seq_id[i] = prompt[step % len(prompt)], 1
                batch.batch.pos[i] = len(prompt) + step
                batch.batch.seq_id[i][0], batch.batch.logits[i] = seq, True
                batch.batch.n_tokens += 1
            assert llama_cpp.llama_decode(ctx.ctx, batch.batch) == 0
        speeds[b] = round(b * steps / (time.perf_counter() - start), 1)
        batch.close()
        ctx.close()
    return speeds


def engine_alone(model: str | None, sizes: list[int], max_tokens: int, threads: int | None) -> dict[int, dict]:
    """The batch engine without HTTP: B threads each calling ``Batched.chat`` twice at once; tokens/s, and the
    time of a pure decode step (one token of each of B sequences), to read against the raw ceiling."""
    import threading

    import llama_cpp

    from nomoat.config import GenerationConfig, RuntimeConfig
    from nomoat.llm import runtime
    from nomoat.llm.batching import Batched

    config = RuntimeConfig()
    config.n_threads = threads or config.n_threads
    loaded, decode, out = runtime.load(model, config), llama_cpp.llama_decode, {}
    for b in sizes:
        pure: list[float] = []

        def timed(ctx: Any, batch: Any, b: int = b, pure: list[float] = pure) -> int:
            start = time.perf_counter()
            code = decode(ctx, batch)
            if batch.n_tokens == b:
                pure.append(time.perf_counter() - start)
            return code

        llama_cpp.llama_decode = timed
        engine, done = Batched(loaded, b), []

        def client(i: int, engine: Batched = engine, done: list[int] = done) -> None:
            for r in range(2):
                answer = engine.chat([{"role": "user", "content": PROMPTS[(i + r) % len(PROMPTS)]}],
                                     GenerationConfig(max_tokens=max_tokens))  # fmt: skip
                answer.text()
                done.append(answer.completion_tokens)

        start = time.perf_counter()
        workers = [threading.Thread(target=client, args=(i,)) for i in range(b)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - start
        engine.close()
        llama_cpp.llama_decode = decode
        step = statistics.median(pure) if pure else float("nan")
        out[b] = {"tokens_per_s": round(sum(done) / seconds, 1), "decode_step_ms": round(1000 * step, 1),
                  "decode_tok_s": round(b / step, 1) if pure else None}  # fmt: skip
    return out


def start_server(args: argparse.Namespace, home: str, parallel: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "nomoat", "serve", "--port", "0", "--max-queue", str(args.max_queue)]
    cmd += ["--parallel", str(parallel)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--model", args.model] if args.model else []
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


def niced(nice: int, *args: Any) -> dict[str, Any]:
    """``phase(*args)`` in a thread of its own at ``nice`` (Linux keeps a nice value per thread), so the load
    generator takes the CPUs only when the server it measures leaves them idle; the servers, started from the main
    thread, keep theirs."""
    out: dict[str, Any] = {}

    def run() -> None:
        if nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        try:
            out["result"] = asyncio.run(phase(*args))
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def serve_phases(args: argparse.Namespace, parallel: int, clients: list[int]) -> dict[str, Any]:
    """One server: warm-up, one client alone, then each client count; phases keyed "1", "8", ..."""
    with tempfile.TemporaryDirectory(prefix="nomoat-bench-serve-") as home:
        proc, url = start_server(args, home, parallel)
        try:
            niced(args.client_nice, url, 1, 0.1, args.max_tokens)  # warm-up: first prompt, allocations
            out: dict[str, Any] = {"rss_start_mib": round(rss_mib(proc.pid), 1)}
            out["1"] = niced(args.client_nice, url, 1, args.baseline_seconds, args.max_tokens)
            for n in clients:
                out[str(n)] = niced(args.client_nice, url, n, args.seconds, args.max_tokens)
            out["rss_end_mib"] = round(rss_mib(proc.pid), 1)
            out["health"] = httpx.get(url + "health").json()
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def show(name: str, r: dict[str, Any], ceiling: float | None = None) -> None:
    vs = f" = {r['tokens_per_s'] / ceiling:.2f}x raw ({ceiling})" if ceiling else ""
    print(f"{name:>22}: {r['requests']} requests in {r['seconds']} s, {r['errors']} errors, "
          f"{r['rejected_429']} x 429, TTFT p50 {r['ttft_p50_s']} s / p95 {r['ttft_p95_s']} s, "
          f"{r['tokens_per_s']} tok/s{vs}")  # fmt: skip
    for sample in r["error_samples"]:
        print(f"{'':>24}error: {sample}")


def main() -> None:
    from nomoat.config import ServeConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="8,16", help="comma-separated client counts (default 8,16)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--baseline-seconds", type=float, default=15)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=8, help="the server's queue (its default is 8)")
    parser.add_argument("--parallel", type=int, default=ServeConfig.parallel, help="the batched server's --parallel")
    parser.add_argument("--raw-steps", type=int, default=48, help="decode calls per raw batch size")
    parser.add_argument("--model", help="GGUF to serve (default: the bundled model)")
    parser.add_argument("--threads", type=int, help="llama.cpp threads for the server (default: all CPUs)")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="the load generator's nice value (19: it yields the CPUs to the server)")  # fmt: skip
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]

    sizes = sorted({1, *clients})
    raw = raw_decode(args.model, sizes, args.raw_steps, args.threads)
    print("raw llama.cpp batched decode (ceiling): " + ", ".join(f"B={b} {v} tok/s" for b, v in raw.items()))
    alone = engine_alone(args.model, sizes, args.max_tokens, args.threads)
    for b, r in alone.items():
        print(f"engine alone (no HTTP), B={b}: {r['tokens_per_s']} tok/s; a pure decode step {r['decode_step_ms']} ms "
              f"= {r['decode_tok_s']} tok/s = {r['decode_tok_s'] / raw[b]:.2f}x raw")  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF)  # the client's CPU from here on (the engine phase ran here)
    old = serve_phases(args, 1, [])
    batched = serve_phases(args, args.parallel, clients)
    show("--parallel 1, 1 client", old["1"], raw[1])
    show(f"--parallel {args.parallel}, 1 client", batched["1"], raw[1])
    for n in clients:
        show(f"--parallel {args.parallel}, {n} clients", batched[str(n)], raw[n])
    one = batched["1"]["tokens_per_s"] / old["1"]["tokens_per_s"] if old["1"]["tokens_per_s"] else float("nan")
    print(f"one client, --parallel {args.parallel} / --parallel 1: {one:.2f}")
    after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"bench client CPU: {client_cpu:.1f} s (it shares the CPUs with the server)")
    print(f"server RSS (--parallel {args.parallel}): {batched['rss_start_mib']:.0f} MiB after warm-up -> "
          f"{batched['rss_end_mib']:.0f} MiB after load; --parallel 1: {old['rss_start_mib']:.0f} MiB; "
          f"health after: {batched['health']}")  # fmt: skip
    summary = {"raw": raw, "engine_alone": alone, "parallel_1": old, f"parallel_{args.parallel}": batched,
               "one_client_ratio": round(one, 2), "max_tokens": args.max_tokens, "max_queue": args.max_queue,
               "model": args.model or "default", "client_nice": args.client_nice}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
