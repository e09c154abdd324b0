"""SIGKILL at random moments in ingest, data build, tune and export (issue 18): the next run completes, the state
a kill leaves is sound, and what the next run makes equals what an uninterrupted run makes.

    python bench/kills.py [--per-stage 50] [--stage ingest --stage data ...] [--seed 0]

Each stage runs nomoat in a fresh process on a small real input, first once without a kill (the reference and
its wall time), then in trials: start the stage from its usual state, SIGKILL the process at a moment drawn
uniformly over the reference's working time, from its first write (KB file, state file, run folder, export
file) to its end (a process that ends first is not counted: the trial is drawn again),
check what the kill left, run the same command to the end, and compare with the reference.

- ingest: ``nomoat ingest`` of git-doc's 40 shortest pages with the real embedder. Trials alternate the corpus
  between two versions (3 pages edited) and every fifth starts from no KB, so kills land in first ingests and in
  updates. After the kill ``store.verify`` (integrity_check, FTS = vectors = chunks, done documents whole); after the
  next run, verify again and the KB's chunks equal a clean ingest of that version.
- data: ``nomoat data build`` on a 3-page KB, pairs written by a tiny random GGUF (llama.cpp for real; the tiny
  model keeps a trial to seconds), from no output. After the kill: a file at a final path is the reference's,
  byte for byte; after the next run: train and eval files equal the reference and the state file is gone.
- tune: ``nomoat tune``'s code on 32 rows, 30 steps of a tiny random model, a checkpoint after every step (the
  CLI's is every ``checkpoint_every_s``), then ``--resume``. The adapter equals the uninterrupted run's, tensor
  for tensor.
- export: ``nomoat export RUN --format gguf`` into an empty folder. After the kill a final file is the
  reference's; after the next run the GGUF equals it byte for byte.

Left-over ``*.partial`` scratch files after the completing run are counted (they never sit at a final path).
Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]
STAGES = ("ingest", "data", "tune", "export")
NOMOAT = [sys.executable, "-m", "nomoat"]
TUNE_STEPS = 30
TUNE = (  # nomoat tune's own code, with a checkpoint after every step so that kills land between checkpoints
    "import sys; from nomoat.finetune import settings, tune; "
    "settings.OVERRIDABLE = (*settings.OVERRIDABLE, 'checkpoint_every_s'); "
    "tune.run(resume=sys.argv[2], progress=False) if sys.argv[1] == 'resume' else "
    "tune.run(sys.argv[2], model=sys.argv[3], output=sys.argv[4], steps=int(sys.argv[5]), batch_size=4, rank=4, "
    "lr=1e-2, checkpoint_every_s=0.0, progress=False)"
)


def run(argv: list[str], kill_after: float | None = None,
        watch: Callable[[], bool] | None = None) -> tuple[int, float, float | None]:  # fmt: skip
    """(return code, wall seconds, seconds until ``watch()`` first held) of ``argv``; SIGKILLed ``kill_after``
    seconds in (return code -9 when it was)."""
    started, seen = time.monotonic(), None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            now = time.monotonic() - started
            if seen is None and watch is not None and watch():
                seen = now
            if kill_after is not None and now >= kill_after:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return -9, now, seen
            time.sleep(0.005)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv[:4])} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return 0, time.monotonic() - started, seen


def partials(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.partial*"))


def trials(name: str, n: int, rng: random.Random, prepare: Callable[[int], list[str]],
           after_kill: Callable[[int], list[str]], finish: Callable[[int], list[str] | None],
           check: Callable[[int], list[str]], landed: Callable[[int], str],
           working: Callable[[], bool]) -> dict[str, Any]:  # fmt: skip
    """``n`` killed trials: ``prepare(k)`` sets the state up and gives the command, ``after_kill(k)`` and
    ``check(k)`` return problems found, ``finish(k)`` the completing command (None: nothing is left to run),
    ``landed(k)`` where the kill fell. Kill moments are drawn over the part of the reference run from when
    ``working()`` first held (the stage's first write: before it, a kill only lands in imports) to its end."""
    _, reference_s, first_write = run(prepare(-1), watch=working)
    window = (first_write or 0.0, reference_s)
    problems, where, k, missed = [], Counter(), 0, 0
    print(f"{name}: reference run {reference_s:.1f} s, first write at {window[0]:.1f} s", file=sys.stderr, flush=True)
    while k < n:
        code, _, _ = run(prepare(k), kill_after=rng.uniform(*window))
        if code != -9:
            missed += 1  # it finished before its kill moment: draw again
            continue
        where[landed(k)] += 1
        problems += [f"trial {k} after the kill: {p}" for p in after_kill(k)]
        if (completing := finish(k)) is not None:
            run(completing)
        problems += [f"trial {k} after the next run: {p}" for p in check(k)]
        k += 1
        if k % 10 == 0:
            print(f"{name}: {k}/{n} kills, {len(problems)} problems", file=sys.stderr, flush=True)
    return {"kills": n, "problems": problems, "kill_landed": dict(where), "finished_before_kill": missed,
            "kill_window_s": [round(w, 2) for w in window]}  # fmt: skip


def small_pages() -> list[Path]:
    """git-doc's shortest command pages (a few chunks each): a trial takes seconds, not minutes."""
    from corpus import git_doc_html

    return sorted((p for p in git_doc_html() if p.name.startswith("git-")), key=lambda p: p.stat().st_size)


# -- ingest --------------------------------------------------------------------------------------------------------
def kb_problems(kb: str) -> list[str]:
    from nomoat import paths
    from nomoat.kb import store

    if not paths.kb_path(kb).exists():
        return []
    conn = store.open_kb(kb, create=False)
    try:
        return store.verify(conn)
    finally:
        conn.close()


def kb_content(kb: str) -> list[tuple[Any, ...]]:
    from nomoat.kb import store

    conn = store.open_kb(kb, create=False)
    try:
        sql = """SELECT d.path, c.ord, c.text, length(v.embedding) FROM chunks c JOIN documents d ON d.id = c.doc_id
                 JOIN chunk_vectors v ON v.id = c.id ORDER BY 1, 2"""
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def remove_kb(kb: str) -> None:
    from nomoat import paths

    for path in paths.kb_path(kb).parent.glob(f"{kb}.sqlite*"):
        path.unlink()


def ingest_stage(work: Path, n: int, rng: random.Random) -> dict[str, Any]:
    from nomoat import paths

    pages = small_pages()[:40]
    corpus = work / "pages"
    corpus.mkdir()
    versions = [{p.name: p.read_bytes() for p in pages}, {}]
    versions[1] = dict(versions[0])
    for name in sorted(versions[0])[:3]:  # version 2: three pages edited
        versions[1][name] = versions[0][name].replace(b"</body>", b"<p>Edited: a new closing paragraph.</p></body>")

    def put(version: int) -> None:
        for name, data in versions[version].items():
            if not (corpus / name).exists() or (corpus / name).read_bytes() != data:
                (corpus / name).write_bytes(data)

    references = []
    for version in (0, 1):
        put(version)
        run([*NOMOAT, "ingest", str(corpus), "--kb", f"clean{version}"])
        references.append(kb_content(f"clean{version}"))

    def prepare(k: int) -> list[str]:
        if k < 0 or k % 5 == 0:
            remove_kb("kills")
        put(max(k, 0) % 2)
        return [*NOMOAT, "ingest", str(corpus), "--kb", "kills"]

    def check(k: int) -> list[str]:
        found = kb_problems("kills")
        if kb_content("kills") != references[k % 2]:
            found.append("the KB differs from a clean ingest")
        return found

    def landed(k: int) -> str:
        from nomoat import paths
        from nomoat.kb import store

        if not paths.kb_path("kills").exists():
            return "before the KB existed"
        with store.connect("kills") as conn:
            done = {r[0]: r[1] for r in conn.execute("SELECT path, sha256 FROM documents WHERE status = 'done'")}
        current = {str(corpus / n): hashlib.sha256(d).hexdigest() for n, d in versions[max(k, 0) % 2].items()}
        up_to_date = sum(done.get(path) == sha for path, sha in current.items())
        return "all pages already in" if up_to_date == len(current) else "mid-ingest"

    return trials("ingest", n, rng, prepare, lambda k: kb_problems("kills"), prepare, check, landed,
                  working=lambda: paths.kb_path("kills").exists())  # fmt: skip


# -- data build ----------------------------------------------------------------------------------------------------
def data_stage(work: Path, n: int, rng: random.Random, tiny: Path) -> dict[str, Any]:
    pages = work / "data-pages"
    pages.mkdir()
    for page in small_pages()[40:43]:
        shutil.copy(page, pages)
    run([*NOMOAT, "ingest", str(pages), "--kb", "data"])
    out = work / "data"
    names = ("train.jsonl", "train.eval.jsonl")
    argv = [*NOMOAT, "data", "build", "--kb", "data", "--model", str(tiny), "--max", "200", "--time", "30m",
            "-o", str(out / "train.jsonl")]  # fmt: skip
    reference: dict[str, bytes] = {}

    def prepare(k: int) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        return argv

    def after_kill(k: int) -> list[str]:
        if not reference:
            reference.update({name: (out.parent / "data-reference" / name).read_bytes() for name in names})
        return [f"{n} is not the reference's" for n in names if (out / n).exists() and
                (out / n).read_bytes() != reference[n]]  # fmt: skip

    def check(k: int) -> list[str]:
        found = [f"{n} differs from the reference" for n in names if (out / n).read_bytes() != reference[n]]
        if (out / "train.jsonl.state.jsonl").exists():
            found.append("the state file is left")
        return found + ([f"{partials(out)} .partial files left"] if partials(out) else [])

    def landed(k: int) -> str:
        if (out / "train.jsonl").exists():
            return "after the output was written"
        return "in the model phase" if (out / "train.jsonl.state.jsonl").exists() else "before the model phase"

    prepare(-1)
    run(argv)
    shutil.copytree(out, out.parent / "data-reference")
    return trials("data", n, rng, prepare, after_kill, lambda k: argv, check, landed,
                  working=lambda: (out / "train.jsonl.state.jsonl").exists())  # fmt: skip


# -- tune ----------------------------------------------------------------------------------------------------------
def tune_data(work: Path) -> Path:
    colours = ["red", "blue", "green", "amber"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Which colour is box {i}?"},
                {"role": "assistant", "content": f"Box {i} is {colours[i % 4]}."},
            ]
        }
        for i in range(40)
    ]
    (work / "boxes.eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    path = work / "boxes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    return path


def adapter(run_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def tune_stage(work: Path, n: int, rng: random.Random, tiny: Path) -> dict[str, Any]:
    import numpy as np

    from nomoat.finetune import runs

    data, reference_dir, trial_dir = tune_data(work), work / "tune-reference", work / "tune-trial"
    start = [sys.executable, "-c", TUNE, "new", str(data), str(tiny)]

    def prepare(k: int) -> list[str]:
        target = reference_dir if k < 0 else trial_dir
        shutil.rmtree(target, ignore_errors=True)
        return [*start, str(target), str(TUNE_STEPS)]

    def finish(k: int) -> list[str] | None:
        if runs.is_complete(trial_dir):
            return None  # killed after its manifest said complete, on its way out: nothing left to run
        if (trial_dir / "config.json").exists():
            return [sys.executable, "-c", TUNE, "resume", str(trial_dir)]
        return prepare(k)  # killed before the run existed: starting it is the next run

    def check(k: int) -> list[str]:
        want, got = adapter(reference_dir), adapter(trial_dir)
        same = want.keys() == got.keys() and all(np.array_equal(want[t], got[t]) for t in want)
        steps = [r["step"] for r in runs.read_metrics(trial_dir)]
        return ([] if same else ["the adapter differs from the uninterrupted run's"]) + (
            [] if steps == list(range(TUNE_STEPS + 1)) else [f"metrics steps {steps}"]) + (
            [f"{partials(trial_dir)} .partial files left"] if partials(trial_dir) else [])  # fmt: skip

    def after_kill(k: int) -> list[str]:
        found = runs.load_checkpoint(trial_dir) if (trial_dir / "config.json").exists() else None
        return [] if found is None or found[1].step <= TUNE_STEPS else [f"checkpoint step {found[1].step}"]

    def landed(k: int) -> str:
        if not (trial_dir / "config.json").exists():
            return "before the run existed"
        if runs.is_complete(trial_dir):
            return "after the run was complete"
        found = runs.load_checkpoint(trial_dir)
        return "before the first checkpoint" if found is None else "after a checkpoint"

    return trials("tune", n, rng, prepare, after_kill, finish, check, landed,
                  working=lambda: (reference_dir / "config.json").exists())  # fmt: skip


# -- export --------------------------------------------------------------------------------------------------------
def export_stage(work: Path, n: int, rng: random.Random) -> dict[str, Any]:
    tuned, out, reference_dir = work / "tune-reference", work / "export", work / "export-reference"
    argv = [*NOMOAT, "export", str(tuned), "--format", "gguf", "--quant", "q8_0", "-o", str(out)]
    reference: dict[str, bytes] = {}

    def prepare(k: int) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        return argv

    def finals() -> list[Path]:
        return [p for p in out.iterdir() if ".partial" not in p.name]

    def after_kill(k: int) -> list[str]:
        if not reference:
            reference.update({p.name: p.read_bytes() for p in reference_dir.iterdir() if ".partial" not in p.name})
        return [f"{p.name} is not the reference's" for p in finals() if p.read_bytes() != reference.get(p.name)]

    def check(k: int) -> list[str]:
        got = {p.name: p.read_bytes() for p in finals()}
        found = [] if got == reference else [f"files {sorted(got)} differ from the reference's {sorted(reference)}"]
        return found + ([f"{partials(out)} .partial files left"] if partials(out) else [])

    def landed(k: int) -> str:
        return "while files were being written" if any(out.iterdir()) else "before any file"

    prepare(-1)
    run(argv)
    shutil.copytree(out, reference_dir)
    return trials("export", n, rng, prepare, after_kill, lambda k: argv, check, landed,
                  working=lambda: any(out.iterdir()))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-stage", type=int, default=50)
    parser.add_argument("--stage", choices=STAGES, action="append", help="default: all four, in order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(BENCH / ".cache" / "kills.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nomoat-kills-"))
    os.environ["NOMOAT_HOME"] = str(work / "home")
    from tiny_gguf import write_tiny_llama

    tiny = write_tiny_llama(work / "tiny.gguf", context_length=2048)
    rng, result, started = random.Random(args.seed), {}, time.monotonic()
    stages = args.stage or list(STAGES)
    if "export" in stages and "tune" not in stages:
        stages.insert(stages.index("export"), "tune")  # export needs the tuned run
    for stage in stages:
        began = time.monotonic()
        if stage == "ingest":
            result[stage] = ingest_stage(work, args.per_stage, rng)
        elif stage == "data":
            result[stage] = data_stage(work, args.per_stage, rng, tiny)
        elif stage == "tune":
            result[stage] = tune_stage(work, args.per_stage, rng, tiny)
        else:
            result[stage] = export_stage(work, args.per_stage, rng)
        result[stage]["wall_s"] = round(time.monotonic() - began, 1)
        print(stage, json.dumps(result[stage])[:400], file=sys.stderr, flush=True)
    result["wall_s"] = round(time.monotonic() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
