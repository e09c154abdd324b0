"""nomoat serve's key (issue 18): a random token by default, printed once in the UI's URL and left in a 0600 file;
--api-key-file / $NOMOAT_API_KEY / --api-key; --no-auth only on loopback. Without the key no KB text is readable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fakes import FakeEmbedder
from nomoat.errors import UserError
from nomoat.serving import auth


def _serve(home: Path, model: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Any, str]:
    cmd = [sys.executable, "-m", "nomoat", "serve", "--port", "0", "--model", str(model), "--ctx", "256", *args]
    environ = {k: v for k, v in os.environ.items() if k != auth.API_KEY_ENV}
    environ.update({"NOMOAT_HOME": str(home), **(env or {})})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("nomoat serve: http://"):
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split()[2]


def test_a_server_without_a_key_makes_up_a_token_and_no_kb_text_is_readable_without_it(
    nomoat_home: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    from nomoat.kb import ingest

    (tmp_path / "office.md").write_text("# Office\n\nThe office wifi password is hunter42.\n")
    ingest.run([str(tmp_path)], kb="default", embedder=FakeEmbedder(), progress=False)
    proc, url = _serve(nomoat_home, tiny_gguf)
    try:
        base, _, token = url.partition("?token=")
        assert len(token) >= 32, url  # printed once, in the URL the UI takes it from
        file = nomoat_home / "serve.token"
        assert file.read_text().strip() == token
        assert stat.S_IMODE(file.stat().st_mode) == 0o600  # only this user's clients can read it
        assert auth.read_token() == token
        for path in ("/v1/models", "/api/kbs", "/api/kbs/default/chunks/1"):
            r = httpx.get(base.rstrip("/") + path)
            assert r.status_code == 401 and "hunter42" not in r.text, path
            r = httpx.get(base.rstrip("/") + path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
        chat = {"model": "nomoat-rag", "messages": [{"role": "user", "content": "wifi password?"}]}
        assert httpx.post(base + "v1/chat/completions", json=chat).status_code == 401
        assert httpx.get(base + "health").status_code == 200  # liveness, no data
        page = httpx.get(url)
        assert page.status_code == 200 and "<html" in page.text.lower()  # the UI page the URL opens
        r = httpx.get(base + "api/kbs/default/chunks/1", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "hunter42" in r.json()["text"] and r.json()["path"] == "office.md"
        client = openai.OpenAI(base_url=base + "v1", api_key=auth.read_token(), max_retries=0, timeout=60)
        assert "kb:default" in [m.id for m in client.models.list()]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(30)
    assert not (nomoat_home / "serve.token").exists()  # gone with its server


def test_a_key_on_the_command_line_warns_and_the_environment_or_a_file_do_not(
    nomoat_home: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    proc, url = _serve(nomoat_home, tiny_gguf, "--api-key", "cli-key-0123456789")
    try:
        assert "?token=" not in url and not (nomoat_home / "serve.token").exists()  # a chosen key is never echoed
        assert httpx.get(url + "v1/models", headers={"Authorization": "Bearer cli-key-0123456789"}).status_code == 200
        assert httpx.get(url + "v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
    assert "shows in `ps`" in (proc.stderr.read() if proc.stderr else "")
    keyfile = tmp_path / "key"
    keyfile.write_text("file-key-0123456789\n")
    assert auth.resolve_key(None, str(keyfile), False, "127.0.0.1") == ("file-key-0123456789", False)


def test_resolve_key_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any) -> None:
    monkeypatch.delenv(auth.API_KEY_ENV, raising=False)
    key, generated = auth.resolve_key(None, None, False, "127.0.0.1")
    assert generated and len(key or "") >= 32
    assert auth.resolve_key(None, None, False, "127.0.0.1")[0] != key  # a new one each start
    assert auth.resolve_key(None, None, True, "127.0.0.1") == (None, False)
    assert auth.resolve_key(None, None, True, "::1") == (None, False)
    for host in ("0.0.0.0", "192.168.1.5", "example.com"):
        with pytest.raises(UserError, match="--no-auth is refused"):
            auth.resolve_key(None, None, True, host)
    with pytest.raises(UserError, match="exclude each other"):
        auth.resolve_key("k", None, True, "127.0.0.1")
    monkeypatch.setenv(auth.API_KEY_ENV, " env-key ")
    assert auth.resolve_key(None, None, False, "0.0.0.0") == ("env-key", False)
    assert capsys.readouterr().err == ""
    assert auth.resolve_key("cli", None, False, "0.0.0.0") == ("cli", False)
    assert "shows in `ps`" in capsys.readouterr().err
    for bad in ("", "two words"):
        (tmp_path / "bad").write_text(bad)
        with pytest.raises(UserError, match="api-key-file"):
            auth.resolve_key(None, str(tmp_path / "bad"), False, "127.0.0.1")
    with pytest.raises(UserError, match="cannot read"):
        auth.resolve_key(None, str(tmp_path / "missing"), False, "127.0.0.1")


def test_the_token_file_is_private_from_its_first_byte(nomoat_home: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = auth.write_token("t0ken")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and auth.read_token() == "t0ken"
    auth.forget_token("other")  # another server's token: left alone
    assert path.exists()
    auth.forget_token("t0ken")
    assert not path.exists() and auth.read_token() is None
