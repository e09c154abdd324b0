"""Where nomoat keeps its state, and how it writes files that must survive a crash.

Layout under ``NOMOAT_HOME`` (default: the platform's user data dir)::

    kb/<name>.sqlite      one knowledge base per SQLite file
    runs/<run-id>/        tune runs (config.json, metrics.jsonl, adapter, manifest.json)
    cache/                derived data that can be rebuilt (converted models, generation caches)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nomoat.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def home() -> Path:
    """The state directory: ``$NOMOAT_HOME`` if set, else the platform user data dir."""
    env = os.environ.get("NOMOAT_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs  # lazy: only needed when NOMOAT_HOME is unset

    return Path(platformdirs.user_data_dir("nomoat", appauthor=False))


def check_name(name: str, what: str = "name") -> str:
    """Validate a user-chosen name (knowledge base, run) so it can never escape its folder."""
    if not _NAME.match(name) or name in {".", ".."}:
        raise UserError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def kb_dir() -> Path:
    return home() / "kb"


def kb_path(name: str) -> Path:
    """The SQLite file of knowledge base ``name`` (the directory is created, the file is not)."""
    path = kb_dir() / f"{check_name(name, 'knowledge base name')}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    return home() / "runs"


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open ``<path>.<random>.partial`` for writing; on success fsync it and rename it over ``path``.

    A crash or exception at any point leaves either the old file or the new one at ``path``,
    never a half-written file (the partial is removed on exception).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`). Returns the path."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return Path(path)


def fsync_dir(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable (a rename is on disk only once its folder is)."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def fsync(path: Path) -> None:
    """Flush a file's contents to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, error: type[UserError] = UserError) -> Any:
    """A JSON file's value; ``error`` (a UserError) naming the file when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: unreadable ({exc})") from None


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
