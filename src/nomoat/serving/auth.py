"""Who may use ``nomoat serve``: a key every request must carry, by default a random one (Jupyter's way).

Loopback is not a user boundary: on a shared machine every local user can reach 127.0.0.1. So unless told
otherwise the server makes up a token, prints it once inside the UI's URL, and leaves it in a file only its user
can read (``$NOMOAT_HOME/serve.token``, mode 0600) for the same user's scripts. Where the key comes from, first
match wins: ``--no-auth`` (loopback only), ``--api-key-file``, ``--api-key`` (visible in ``ps``, so a warning),
``$NOMOAT_API_KEY``, else a new token.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path

from nomoat import paths
from nomoat.errors import UserError

API_KEY_ENV = "NOMOAT_API_KEY"
TOKEN_FILE = "serve.token"


def token_path() -> Path:
    """Where the server started last leaves its token (readable by its user only)."""
    return paths.home() / TOKEN_FILE


def read_token() -> str | None:
    """The token of the server this user started last, or None. For local clients: ``Bearer <token>``."""
    try:
        return token_path().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_token(token: str) -> Path:
    """Write ``token`` to :func:`token_path` with mode 0600 from the start (never readable by others, not even
    between create and chmod), atomically: a reader sees the old token or the new one."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    paths.fsync_dir(path.parent)
    return path


def forget_token(token: str) -> None:
    """Remove the token file if it still holds ``token`` (another server may have replaced it since)."""
    if read_token() == token:
        with contextlib.suppress(OSError):
            token_path().unlink()


def key_from_file(file: str | os.PathLike[str]) -> str:
    try:
        key = Path(file).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --api-key-file {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not key or any(c.isspace() for c in key):
        raise UserError(f"--api-key-file {file}: the key must be one word on one line")
    return key


def resolve_key(
    api_key: str | None, api_key_file: str | None, no_auth: bool, host: str, warn: bool = True
) -> tuple[str | None, bool]:
    """``(key, generated)``: the key requests must carry (None only for ``--no-auth``) and whether it was made up
    here. Raises UserError for ``--no-auth`` beyond loopback or together with a key."""
    from nomoat.serving.security import is_loopback

    if no_auth:
        if api_key or api_key_file:
            raise UserError("--no-auth and an API key exclude each other: choose one")
        if not is_loopback(host):
            raise UserError(f"--no-auth is refused on {host}: it only works on a loopback address (127.0.0.1)")
        return None, False
    if api_key_file:
        return key_from_file(api_key_file), False
    if api_key:
        if warn:
            print(
                f"nomoat serve: warning: a key given with --api-key shows in `ps` to every local user; "
                f"prefer ${API_KEY_ENV} or --api-key-file",
                file=sys.stderr,
            )
        return api_key, False
    if os.environ.get(API_KEY_ENV, "").strip():
        return os.environ[API_KEY_ENV].strip(), False
    return secrets.token_urlsafe(24), True
