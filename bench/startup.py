"""How fast ``nomoat --help`` starts: this tree vs another checkout, interleaved in one run.

    python bench/startup.py --against /tmp/old/src [--runs 30]

Each run is a fresh interpreter (``python -X importtime -c "...main(['--help'])"``); the script prints the median
wall time of each tree, their ratio, and the total self-time of nomoat's own imports as ``-X importtime`` reports
it. Interleaving the two trees run by run keeps a noisy machine's drift out of the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CODE = "from nomoat.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"


def one(src: Path) -> tuple[float, float, int]:
    """(wall seconds, microseconds of nomoat's own imports, modules imported) of one cold start from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", CODE], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    own, modules = 0, 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if not parts[0].isdigit():
            continue  # the header line
        modules += 1
        if parts[2].lstrip().startswith("nomoat"):
            own += int(parts[0])
    return wall, own, modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, required=True, help="the other tree's src/ folder")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"this tree": here, "other": args.against.resolve()}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, src in trees.items():
            results[name].append(one(src))
    print(f"{'tree':10s} {'median wall ms':>15s} {'nomoat imports ms':>18s} {'modules':>8s}")
    medians = {}
    for name, rows in results.items():
        medians[name] = statistics.median(r[0] for r in rows)
        own = statistics.median(r[1] for r in rows) / 1000
        print(f"{name:10s} {medians[name] * 1000:15.1f} {own:18.1f} {rows[0][2]:8d}")
    print(f"ratio this/other (wall): {medians['this tree'] / medians['other']:.3f}")


if __name__ == "__main__":
    main()
