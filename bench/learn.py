"""``nomoat learn`` on a real folder in a fresh NOMOAT_HOME: budget vs wall time, and what the loop gained.

    python -u bench/learn.py [--corpus git-doc|postgres|r-manuals] [--time 30m]

The corpus (Debian's git-doc HTML, postgresql-doc-15's HTML pages, or R's manuals as PDF) is copied once to
bench/.cache/learn-corpus/; each run starts from an empty NOMOAT_HOME (bench/.cache/learn-home-<corpus>-<time>), so
ingest counts in the budget. Prints the wall time against the budget, then from the eval report: per configuration
token F1, the share of answerable questions answered in the model's own words that passed the fact check, how it
answered (and why its own words were quoted instead), abstention on unanswerable questions, and the paired gains.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import CACHE, git_doc_html, postgres_doc_html, r_doc_pdf  # noqa: E402

FILES = {"git-doc": git_doc_html, "postgres": postgres_doc_html, "r-manuals": lambda: list(r_doc_pdf().values())}


def corpus_folder(name: str) -> Path:
    """A stable copy of the corpus (learn records the folder; the same path each run)."""
    folder = CACHE / "learn-corpus" / name
    if not folder.is_dir():
        files = FILES[name]()
        folder.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, folder / f.name)
    return folder


def cell(ci: list[float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:.2f} [{ci[1]:.2f}-{ci[2]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=sorted(FILES), default="git-doc")
    ap.add_argument("--time", default="30m", help="the learn budget (default 30m)")
    args = ap.parse_args()
    folder = corpus_folder(args.corpus)
    home = CACHE / f"learn-home-{args.corpus}-{args.time}"
    shutil.rmtree(home, ignore_errors=True)
    env = os.environ | {"NOMOAT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nomoat", "learn", str(folder), "--kb", "bench", "--time", args.time,
                           "--json"], env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"nomoat learn failed ({done.returncode})")
    state = json.loads(done.stdout)
    print(f"\n{args.corpus}: budget {state['budget_s'] / 60:.0f} min, wall {wall / 60:.1f} min "
          f"(wall / budget {wall / state['budget_s']:.2f})")  # fmt: skip
    for name, stage in state["stages"].items():
        print(f"  {name:7s} {stage['seconds'] / 60:6.1f} min (planned {state.get('plan', {}).get(name, 0) / 60:.1f})")
    result = json.loads(Path(state["report"]).with_suffix(".json").read_text())
    print(f"\n{result['questions']} held-out questions, {result['unanswerable']} unanswerable; "
          f"train rows {state['stages']['data']['train']}, tune steps {state['stages']['tune']['steps']}")  # fmt: skip
    print(f"{'configuration':14s} {'token F1':>18s} {'own words, checked':>20s} {'abstains (unans.)':>18s}  answered")
    for name, row in result["table"].items():
        modes = ", ".join(f"{m} {v:.0%}" for m, v in (row.get("modes") or {}).items())
        print(f"{name:14s} {cell(row['f1']):>18s} {cell(row.get('generated')):>20s} "
              f"{cell(row['abstain_unanswerable']):>18s}  {modes}")  # fmt: skip
    for name, row in result["table"].items():
        if row.get("fallbacks"):
            print(f"{name} quoted because: " + "; ".join(f"{why} ({n})" for why, n in row["fallbacks"].items()))
    for pair, ci in result["gains"].items():
        print(f"token F1 {pair}: {ci[0]:+.3f} [{ci[1]:+.3f} to {ci[2]:+.3f}]")
    print(f"report: {state['report']}")


if __name__ == "__main__":
    main()
