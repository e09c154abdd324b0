"""Benchmark corpora fetched from Debian archives (reused by bench/embeddings.py and bench/retrieval.py).

``git_doc_html()`` gives Debian's git documentation (~180 HTML manual pages) through ``apt-get download``,
so the benchmark needs no model hub and no scraping: one signed package from the configured apt mirror.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def git_doc_html(cache: Path = CACHE) -> list[Path]:
    """Sorted paths of git-doc's HTML pages, downloading and extracting the package into ``cache`` once.

    Raises ``RuntimeError`` if ``apt-get``/``dpkg`` are missing or the download fails (try ``apt-get update``).
    """
    root = cache / "git-doc"
    html = root / "usr/share/doc/git/html"
    done = root / ".complete"
    if not done.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob("git-doc_*.deb"):
            old.unlink()
        print("fetching git-doc with apt-get download ...", file=sys.stderr)
        try:
            subprocess.run(["apt-get", "download", "git-doc"], cwd=cache, check=True, capture_output=True)
            (deb,) = cache.glob("git-doc_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise RuntimeError(
                f"could not fetch git-doc ({exc}; {detail.decode(errors='replace').strip()}); "
                "run `apt-get update` and retry"
            ) from exc
        deb.unlink()
        done.touch()
    return sorted(html.glob("*.html"))


if __name__ == "__main__":
    paths = git_doc_html()
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB under {paths[0].parent}")
