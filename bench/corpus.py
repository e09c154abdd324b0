"""Benchmark corpora fetched from Debian archives (reused by bench/embeddings.py, bench/retrieval.py, bench/ocr.py).

``git_doc_html()`` gives Debian's git documentation (~180 HTML manual pages), ``postgres_doc_html()``
PostgreSQL 15's manual (~1,170 DocBook HTML pages, each wrapped in the same navigation header and footer: a second
retrieval corpus of a different kind, so choices are not tuned to git-doc alone) and ``r_doc_pdf()`` R's manuals
as PDF (R-intro, R-data, ...: LaTeX/texinfo output with a real text layer), each through ``apt-get download``, so
the benchmarks need no model hub and no scraping: one signed package from the configured apt mirror.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def debian_package(name: str, cache: Path = CACHE) -> Path:
    """The folder that package ``name`` is extracted into under ``cache``, downloading it the first time.

    Raises ``RuntimeError`` if ``apt-get``/``dpkg`` are missing or the download fails (try ``apt-get update``).
    """
    root = cache / name
    done = root / ".complete"
    if not done.exists():
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob(f"{name}_*.deb"):
            old.unlink()
        print(f"fetching {name} with apt-get download ...", file=sys.stderr)
        try:
            subprocess.run(["apt-get", "download", name], cwd=cache, check=True, capture_output=True)
            (deb,) = cache.glob(f"{name}_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise RuntimeError(
                f"could not fetch {name} ({exc}; {detail.decode(errors='replace').strip()}); "
                "run `apt-get update` and retry"
            ) from exc
        deb.unlink()
        done.touch()
    return root


def git_doc_html(cache: Path = CACHE) -> list[Path]:
    """Sorted paths of git-doc's HTML pages."""
    return sorted((debian_package("git-doc", cache) / "usr/share/doc/git/html").glob("*.html"))


def postgres_doc_html(cache: Path = CACHE) -> list[Path]:
    """Sorted paths of PostgreSQL 15's HTML manual pages (postgresql-doc-15), without its stylesheet and figures."""
    return sorted((debian_package("postgresql-doc-15", cache) / "usr/share/doc/postgresql-doc-15/html").glob("*.html"))


def r_doc_pdf(cache: Path = CACHE) -> dict[str, Path]:
    """R's manuals as PDF, by name ("R-intro", "R-data", ...), from r-doc-pdf."""
    return {p.stem: p for p in sorted((debian_package("r-doc-pdf", cache) / "usr/share/R/doc/manual").glob("*.pdf"))}


if __name__ == "__main__":
    for paths in (git_doc_html(), postgres_doc_html()):
        print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB under {paths[0].parent}")
