"""Robustness figures for issue 18: fuzzed files through nomoat's parsers, and the server under a connection flood.

    python bench/robustness.py [--per-kind 1000] [--soak-seconds 60] [--file-timeout 10]

1. Fuzz: ``--per-kind`` files per kind (GGUF, PDF, DOCX, HTML, text in odd encodings, dataset JSONL), mutated from
   valid seeds (bit flips, truncation, splices, repeated slices, size-field lies; DOCX also inside its XML). Each
   kind runs in its own process (a native crash kills only it, and is counted). Per file: a clean result, or a
   one-line error of the kind the parser promises (ReadError, ModelError/UserError, a per-row dataset error);
   anything else is a crash, a multi-line message counts as a traceback, a file past ``--file-timeout`` as a hang.
   Peak RSS is the kind's process's maximum.
2. Flood: a real server (fake model) with 64 idle TCP connections, then with 63 POSTs whose announced body never
   comes: /health requests served out of 20, with uvicorn's old settings ("before") and nomoat's ("after").
3. Soak (short): ``--soak-seconds`` of mixed traffic on loopback with a key: streaming and not, clients leaving
   mid-stream, slow senders, oversized and malformed bodies, wrong keys. 5xx on well-formed requests, p95 time to
   first streamed piece, RSS drift, tracebacks in the log.

Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
KINDS = ("gguf", "pdf", "docx", "html", "text", "jsonl")


# -- fuzz ---------------------------------------------------------------------------------------------------------
def seeds(kind: str, tmp: Path) -> list[tuple[str, bytes]]:
    from hostile_files import HTML, make_docx, make_pdf

    if kind == "gguf":
        from tiny_gguf import write_tiny_llama

        return [(".gguf", write_tiny_llama(tmp / "seed.gguf").read_bytes())]
    if kind == "pdf":
        return [(".pdf", make_pdf(["Hello world\nSecond line (with parens)", "Page two\nmore"]))]
    if kind == "docx":
        blocks = [("Title", "Report"), ("Heading1", "Intro"), ("", "Some text\tafter a tab"), ("List", "item"),
                  ("table", [["a", "b"], ["1", "2"]])]  # fmt: skip
        return [(".docx", make_docx(blocks))]  # type: ignore[arg-type]
    if kind == "html":
        return [(".html", HTML.encode())]
    if kind == "text":
        texts = [("Привет, как дела?\nЭто тест.", "cp1251"), ("héllo wörld\r\nçà", "latin-1"),
                 ("日本語のテキスト", "shift_jis"), ("\ufeffbom text\n", "utf-8"), ("utf sixteen\n", "utf-16"),
                 ("mixed\x00nul", "utf-8")]  # fmt: skip
        return [(".txt", t.encode(enc)) for t, enc in texts]
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"instruction": "do", "input": "x", "output": "y"}]  # fmt: skip
    return [(".jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\n")]


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    how = rng.choice(("flip", "truncate", "splice", "repeat", "lie", "lie", "digits"))
    if how == "flip" or not b:
        for _ in range(rng.randint(1, 32)):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del b[rng.randrange(len(b)) :]
    elif how == "splice":
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b[rng.randrange(len(b)) : rng.randrange(len(b))] = b[i:j] or bytes(rng.randrange(256) for _ in range(16))
    elif how == "repeat":  # a slice many times over: expansion
        i = rng.randrange(len(b))
        piece = bytes(b[i : i + rng.randint(1, 64)])
        b[i:i] = piece * rng.randint(2, 20_000)
    elif how == "lie":  # a size or count field claims far more than is there
        i = rng.randrange(max(1, len(b) - 8))
        value = rng.choice((2**32 - 1, 2**31 - 1, 2**63 - 1, 2**64 - 1, 10**9))
        b[i : i + 8] = value.to_bytes(8, "little", signed=False)
    else:  # a number in a text format (PDF /Length, xref offsets, JSON) becomes huge
        digits = [k for k, c in enumerate(b) if 48 <= c <= 57]
        if digits:
            k = rng.choice(digits)
            b[k : k + 1] = str(rng.choice((10**12, 2**63, 999999999))).encode()
    return bytes(b)


def mutate_docx(data: bytes, rng: random.Random) -> bytes:
    """Half the DOCX cases mutate inside the zip (valid archive, hostile XML), where the XML bounds are hit."""
    if rng.random() < 0.5:
        return mutate(data, rng)
    import io

    out = io.BytesIO()
    try:
        src = zipfile.ZipFile(io.BytesIO(data))
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for info in src.infolist():
                part = src.read(info)
                if info.filename == "word/document.xml":
                    part = mutate(part, rng)
                z.writestr(info.filename, part)
    except Exception:  # an earlier round broke the archive: mutate its bytes instead
        return mutate(data, rng)
    return out.getvalue()


def consume(kind: str, path: Path) -> str:
    """Run the parser nomoat uses for ``kind``; return "ok" or the promised error's message (else it raises)."""
    from nomoat.errors import UserError
    from nomoat.kb.readers import ReadError, read_file

    try:
        if kind == "gguf":
            from nomoat.llm.gguf_check import read_header

            read_header(path)
        elif kind == "jsonl":
            from nomoat.dataset.formats import read_rows

            errors = [e for _, _, e in read_rows(path) if e]
            if errors:
                return str(errors[0])
        else:
            read_file(path, resolved=True)
    except (ReadError, UserError) as exc:  # ModelError is a UserError
        return str(exc) or type(exc).__name__
    return "ok"


class Hang(BaseException):
    pass


def fuzz_kind(kind: str, n: int, seed: int, file_timeout: float) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{kind}")
    counts: Counter[str] = Counter()
    crashes: list[str] = []
    reasons: Counter[str] = Counter()
    slowest = 0.0

    def alarm(signum: int, frame: Any) -> None:
        raise Hang

    signal.signal(signal.SIGALRM, alarm)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = seeds(kind, tmp)
        for i in range(n):
            suffix, data = base[i % len(base)]
            for _ in range(rng.randint(1, 3)):
                data = mutate_docx(data, rng) if kind == "docx" else mutate(data, rng)
            path = tmp / f"f{i}{suffix}"
            path.write_bytes(data)
            started = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, file_timeout)
            try:
                result = consume(kind, path)
                counts["ok" if result == "ok" else "refused"] += 1
                if result != "ok":
                    reasons[result.replace(str(path), "FILE").split(":")[0][:60]] += 1
                    if "\n" in result or "Traceback" in result:
                        counts["traceback"] += 1
            except Hang:
                counts["hang"] += 1
            except Exception as exc:
                counts["crash"] += 1
                crashes.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.monotonic() - started)
            path.unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"files": n, **{k: counts.get(k, 0) for k in ("ok", "refused", "crash", "traceback", "hang")},
            "slowest_s": round(slowest, 2), "peak_rss_mib": round(peak, 1),
            "top_reasons": reasons.most_common(5), "crash_samples": crashes[:5]}  # fmt: skip


def fuzz(n: int, seed: int, file_timeout: float) -> dict[str, Any]:
    out = {}
    for kind in KINDS:
        cmd = [sys.executable, __file__, "--fuzz-kind", kind, "--per-kind", str(n), "--seed", str(seed),
               "--file-timeout", str(file_timeout)]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:  # died: a native crash (or worse) counts for the kind
            out[kind] = {"died": proc.returncode, "stderr": proc.stderr[-400:]}
        else:
            out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[kind]["wall_s"] = round(time.monotonic() - started, 1)
        print(kind, json.dumps(out[kind]), file=sys.stderr, flush=True)
    return out


# -- serve: flood and soak -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def server(old: bool, **config: Any) -> Iterator[str]:
    import uvicorn

    from fakes import FakeEmbedder
    from nomoat.config import ServeConfig
    from nomoat.serving import bind, create_app
    from nomoat.serving.connections import uvicorn_config
    from test_serve import FakeModel

    settings = ServeConfig(**config)
    app = create_app(FakeModel("Paris is the capital of France and a city of many bridges."), settings,
                     embedder=FakeEmbedder())  # fmt: skip
    if old:  # what `nomoat serve` ran with before issue 18
        uv = uvicorn.Config(app, log_level="warning", limit_concurrency=64, timeout_graceful_shutdown=5)
    else:
        uv = uvicorn_config(app, settings)
    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(uv)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)


def flood(old: bool) -> dict[str, int]:
    import httpx

    result = {}
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
    for name, count, payload in (("idle_64", 64, b""), ("stuck_post_63", 63, head)):
        with server(old) as url:
            port = int(url.rsplit(":", 1)[1])
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
            for s in held:
                if payload:
                    s.sendall(payload)
            time.sleep(0.3)
            ok = 0
            for _ in range(20):
                with contextlib.suppress(httpx.HTTPError):
                    ok += httpx.get(url + "/health", timeout=3).status_code == 200
            for s in held:
                s.close()
            result[name] = ok
    return result


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


QUESTIONS = ("How do I undo the last commit?", "What does git stash do?", "How do I rename a branch?",
             "capital of France?")  # fmt: skip


async def soak(url: str, key: str, seconds: float, models: tuple[str, ...] = ("fake-model",)) -> dict[str, Any]:
    import httpx

    auth = {"Authorization": f"Bearer {key}"}
    chat = {"model": models[0], "messages": [{"role": "user", "content": QUESTIONS[-1]}], "max_tokens": 16}
    stats: Counter[str] = Counter()
    ttft: list[float] = []
    deadline = time.monotonic() + seconds

    async def well_formed(client: httpx.AsyncClient, stream: bool) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            body = {**chat, "model": random.choice(models),
                    "messages": [{"role": "user", "content": random.choice(QUESTIONS)}]}  # fmt: skip
            stats[f"model_{body['model']}"] += 1
            if stream:
                async with client.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True},
                                         headers=auth) as r:  # fmt: skip
                    first = True
                    async for line in r.aiter_lines():
                        if first and line.startswith("data: {") and _piece(line[6:]):
                            ttft.append(time.perf_counter() - started)
                            first = False
                    status = r.status_code
            else:
                status = (await client.post(url + "/v1/chat/completions", json=body, headers=auth)).status_code
            stats["well_formed"] += 1
            stats["5xx"] += status >= 500
            stats["429"] += status == 429
            stats["other_non_200"] += status != 200 and status < 500 and status != 429

    async def hostile(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            kind = random.choice(("leave", "slow", "big", "bad_json", "wrong_key"))
            stats[f"hostile_{kind}"] += 1
            with contextlib.suppress(httpx.HTTPError):
                if kind == "leave":  # leaves mid-stream
                    async with client.stream("POST", url + "/v1/chat/completions", json={**chat, "stream": True},
                                             headers=auth) as r:  # fmt: skip
                        async for _ in r.aiter_lines():
                            break
                elif kind == "slow":
                    body = json.dumps(chat).encode()

                    async def trickle(body: bytes = body) -> Any:
                        for i in range(0, len(body), 16):
                            await asyncio.sleep(0.05)
                            yield body[i : i + 16]

                    await client.post(url + "/v1/chat/completions", content=trickle(),
                                      headers={**auth, "Content-Type": "application/json"})  # fmt: skip
                elif kind == "big":
                    await client.post(url + "/v1/chat/completions", content=b"x" * (2 * 2**20),
                                      headers={**auth, "Content-Type": "application/json"})  # fmt: skip
                elif kind == "bad_json":
                    await client.post(url + "/v1/chat/completions", content=b'{"model": ',
                                      headers={**auth, "Content-Type": "application/json"})  # fmt: skip
                else:
                    await client.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(well_formed(client, True), well_formed(client, True), well_formed(client, False),
                             hostile(client), hostile(client))  # fmt: skip
    p95 = statistics.quantiles(ttft, n=20)[-1] if len(ttft) >= 20 else None
    return {**stats, "p95_ttft_ms": round(p95 * 1000, 1) if p95 else None}


def _piece(payload: str) -> str:
    choices = json.loads(payload).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count, self.lines = 0, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        self.count += bool(record.exc_info) or "Traceback" in record.getMessage()


def serve_figures(soak_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"flood_before": flood(old=True), "flood_after": flood(old=False)}
    handler = Tracebacks()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the client's own request lines are not the server's
    key = "soak-key-0123456789"
    with server(False, api_key=key) as url:
        asyncio.run(soak(url, key, min(5.0, soak_seconds)))  # warm-up
        before = rss_mib()
        out["soak"] = asyncio.run(soak(url, key, soak_seconds))
        out["soak"]["rss_drift_mib"] = round(rss_mib() - before, 1)
        out["soak"]["seconds"] = soak_seconds
    out["soak"]["log_tracebacks"], out["soak"]["log_lines"] = handler.count, handler.lines
    return out


def real_soak(seconds: float) -> dict[str, Any]:
    """The soak against a real ``nomoat serve`` process: the bundled model, a KB of 30 git-doc pages (real
    embedder), the default token auth given through $NOMOAT_API_KEY. RSS and tracebacks are the server's own."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from corpus import git_doc_html

    home = Path(os.environ["NOMOAT_HOME"])
    pages = home / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    for page in [p for p in git_doc_html() if p.name.startswith("git-")][:30]:
        (pages / page.name).write_bytes(page.read_bytes())
    nomoat = [sys.executable, "-m", "nomoat"]
    subprocess.run([*nomoat, "ingest", str(pages), "--kb", "soak"], check=True, capture_output=True)
    key, log = "soak-key-0123456789", home / "serve.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NOMOAT_API_KEY": key}
    with log.open("wb") as fh:
        proc = subprocess.Popen([*nomoat, "serve", "--port", str(port), "--kb", "soak"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"nomoat serve ended: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        served = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        models = tuple(m["id"] for m in served if "embed" not in m["id"])  # chat models and KBs
        asyncio.run(soak(url, key, min(30.0, seconds), models))  # warm-up: the model and embedder loaded
        before = rss_mib(proc.pid)
        out = asyncio.run(soak(url, key, seconds, models))
        out["rss_drift_mib"], out["rss_mib"] = round(rss_mib(proc.pid) - before, 1), round(before, 1)
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text(errors="replace")
    out.update(seconds=seconds, models=list(models), log_lines=text.count("\n"),
               log_tracebacks=text.count("Traceback"), server_exit=proc.returncode)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-kind", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--file-timeout", type=float, default=10.0)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument("--skip", choices=("fuzz", "serve"), action="append", default=[])
    parser.add_argument(
        "--real-soak",
        action="store_true",
        help="only the soak, against a real `nomoat serve` (bundled model, a git-doc KB)",
    )
    parser.add_argument("--out", default="bench/.cache/robustness.json")
    parser.add_argument("--fuzz-kind", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("NOMOAT_HOME", tempfile.mkdtemp(prefix="nomoat-robust-"))
    if args.real_soak:
        result = {"real_soak": real_soak(args.soak_seconds)}
        print(json.dumps(result, indent=2))
        Path(args.out).write_text(json.dumps(result, indent=2))
        return
    if args.fuzz_kind:
        print(json.dumps(fuzz_kind(args.fuzz_kind, args.per_kind, args.seed, args.file_timeout)))
        return
    started = time.monotonic()
    result: dict[str, Any] = {"per_kind": args.per_kind, "file_timeout_s": args.file_timeout}
    if "fuzz" not in args.skip:
        result["fuzz"] = fuzz(args.per_kind, args.seed, args.file_timeout)
    if "serve" not in args.skip:
        result["serve"] = serve_figures(args.soak_seconds)
    result["wall_s"] = round(time.monotonic() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
