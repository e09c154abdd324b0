from __future__ import annotations

import os
from pathlib import Path

import pytest

from nomoat import paths
from nomoat.errors import UserError


def test_home_follows_env(nomoat_home: Path) -> None:
    assert paths.home() == nomoat_home
    assert paths.kb_path("notes") == nomoat_home / "kb" / "notes.sqlite"


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "x" * 65, ".hidden", "a b", "kb\x00"])
def test_names_cannot_escape(bad: str) -> None:
    with pytest.raises(UserError):
        paths.check_name(bad)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    paths.atomic_write(target, "first")
    paths.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no partial left behind


def test_atomic_writer_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), paths.atomic_writer(target) as fh:
        fh.write("half of the new conte")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_survives_kill(tmp_path: Path) -> None:
    """A process killed mid-write leaves only a .partial, never a truncated file at the final path."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "big.bin"
    code = (
        "import os, sys; from nomoat.paths import atomic_writer\n"
        f"with atomic_writer({str(target)!r}, 'wb') as fh:\n"
        "    fh.write(b'x' * 1024); fh.flush(); print('writing', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
