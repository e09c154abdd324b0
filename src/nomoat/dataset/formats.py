"""Chat datasets in JSONL: detect the format of a row, convert it to the canonical form, validate, describe.

The canonical row (what every later stage reads)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "meta": {...}}

An optional leading system message, then user/assistant messages that alternate, starting with the user
and ending with the assistant; every content is a non-empty string; ``meta`` is an optional object.
Accepted inputs: OpenAI ``{"messages": [...]}``, ShareGPT ``{"conversations": [{"from", "value"}]}``
and Alpaca ``{"instruction", "input", "output"}``. Bad rows are reported with their line number, never dropped
silently.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from nomoat.errors import UserError
from nomoat.paths import atomic_writer

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "system": "system"}
SHAREGPT_ROLES |= dict.fromkeys(("gpt", "assistant", "chatgpt", "bing", "bard"), "assistant")
UNKNOWN_SOURCE = "(unknown)"
_SHOWN_BAD = 3  # bad lines named in the error when a file has no valid row
_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}

Row = dict[str, Any]
Line = tuple[int, Any, "str | None"]  # (line number, parsed value or None, error or None)
Converted = tuple[int, "Row | None", "str | None", "str | None"]  # (line, row, format, error)


def detect_format(row: dict) -> str | None:
    """``"messages"`` (OpenAI), ``"sharegpt"``, ``"alpaca"``, or None when the row matches none of them."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


def to_messages(row: dict) -> Row:
    """The canonical form of ``row``; raises ``ValueError(reason)`` when it is not a valid chat example."""
    fmt = detect_format(row)
    if fmt == "messages":
        messages = _from_openai(row["messages"])
    elif fmt == "sharegpt":
        messages = _from_sharegpt(row["conversations"])
    elif fmt == "alpaca":
        messages = _from_alpaca(row)
    else:
        raise ValueError("unknown format: expected messages, conversations, or instruction/output")
    _check_order(messages)
    out: Row = {"messages": messages}
    if "meta" in row:
        if not isinstance(row["meta"], dict):
            raise ValueError("meta: expected an object")
        out["meta"] = row["meta"]
    return out


def _message(n: int, role: Any, content: Any) -> dict[str, str]:
    if role not in ROLES:
        raise ValueError(f"message {n}: role {role!r} is not system/user/assistant")
    if not isinstance(content, str):
        raise ValueError(f"message {n}: content: expected a string")
    if not content.strip():
        raise ValueError(f"message {n}: empty content")
    return {"role": role, "content": content}


def _items(value: Any, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise ValueError(f"{field}: expected a list")
    if not value:
        raise ValueError(f"{field}: empty list")
    for n, item in enumerate(value, 1):
        if not isinstance(item, dict):
            raise ValueError(f"message {n}: expected an object")
    return value


def _from_openai(value: Any) -> list[dict[str, str]]:
    return [_message(n, m.get("role"), m.get("content")) for n, m in enumerate(_items(value, "messages"), 1)]


def _from_sharegpt(value: Any) -> list[dict[str, str]]:
    messages = []
    for n, turn in enumerate(_items(value, "conversations"), 1):
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise ValueError(f"message {n}: from {speaker!r} is not human/user/gpt/assistant/system")
        messages.append(_message(n, role, turn.get("value")))
    return messages


def _from_alpaca(row: dict) -> list[dict[str, str]]:
    for field in ("instruction", "output"):
        if field not in row:
            raise ValueError(f"{field}: missing")
    for field in ("instruction", "input", "output"):
        if field in row and not isinstance(row[field], str) and not (field == "input" and row[field] is None):
            raise ValueError(f"{field}: expected a string")
        if field != "input" and not row[field].strip():
            raise ValueError(f"{field}: empty")
    prompt = row["instruction"]
    if (row.get("input") or "").strip():
        prompt += "\n\n" + row["input"]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def _check_order(messages: list[dict[str, str]]) -> None:
    start = 1 if messages[0]["role"] == "system" else 0
    body = [m["role"] for m in messages[start:]]
    if "system" in body:
        raise ValueError(f"message {start + body.index('system') + 1}: a system message is only allowed first")
    if not body:
        raise ValueError("no user/assistant messages")
    if body[0] != "user":
        raise ValueError(f"message {start + 1}: the first message after any system message must be from the user")
    for n, (prev, role) in enumerate(itertools.pairwise(body), start + 2):
        if prev == role:
            raise ValueError(f"message {n}: roles must alternate user/assistant")
    if body[-1] != "assistant":
        raise ValueError("last message must be from the assistant")


def _parse_lines(path: str | os.PathLike[str]) -> Iterator[Line]:
    """Open ``path`` now (a missing file fails at once) and parse its non-blank lines lazily; UserError if bad."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    return _lines(path, fh)


def _lines(path: Path, fh: IO[bytes]) -> Iterator[Line]:
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}: line {lineno} is not UTF-8 text; convert the file to UTF-8") from None
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as e:
                yield lineno, None, f"invalid JSON: {e.msg} at column {e.colno}"
            except RecursionError:  # "[[[[..." thousands deep: found by bench/robustness.py
                yield lineno, None, "invalid JSON: nested too deeply"


def _convert(value: Any) -> tuple[Row | None, str | None, str | None]:
    """(canonical row, format, None) or (None, None, reason) for one parsed line."""
    if not isinstance(value, dict):
        return None, None, f"expected a JSON object, got {_JSON_TYPES.get(type(value), 'null')}"
    try:
        return to_messages(value), detect_format(value), None
    except ValueError as e:
        return None, None, str(e)


def _rows_with_format(path: str | os.PathLike[str]) -> Iterator[Converted]:
    lines = _parse_lines(path)  # opens the file now, so a missing one fails before anything else happens
    return ((n, None, None, err) if err is not None else (n, *_convert(value)) for n, value, err in lines)


def read_rows(path: str | os.PathLike[str]) -> Iterator[tuple[int, Row | None, str | None]]:
    """(1-based line number, canonical row or None, error or None) per non-blank line of a JSONL file."""
    return ((lineno, row, error) for lineno, row, _fmt, error in _rows_with_format(path))


def write_rows(path: str | os.PathLike[str], rows: Iterable[Row]) -> int:
    """Write ``rows`` as UTF-8 JSONL (one object per line) atomically; returns how many were written."""
    n = 0
    with atomic_writer(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _no_valid_rows(src: str | os.PathLike[str], bad: list[dict]) -> UserError:
    if not bad:
        return UserError(f"{src}: no rows (the file is empty)")
    shown = "; ".join(f"line {b['line']}: {b['error']}" for b in bad[:_SHOWN_BAD])
    more = f" (and {len(bad) - _SHOWN_BAD} more bad lines)" if len(bad) > _SHOWN_BAD else ""
    hint = "each line must be one JSON chat example (messages, ShareGPT or Alpaca)"
    return UserError(f"{src}: no valid rows ({hint}); {shown}{more}")


def import_file(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict:
    """Convert ``src`` (any accepted format, mixed is fine) to canonical JSONL at ``dest``, atomically.

    Returns ``{"rows", "bad": [{"line", "error"}], "formats": {format: count}, "output"}``. Raises UserError when
    ``src`` cannot be read as UTF-8 or has no valid row (``dest`` is then left untouched).
    """
    bad: list[dict] = []
    formats: Counter[str] = Counter()
    rows = _rows_with_format(src)  # a missing src fails here, before dest is touched
    with atomic_writer(dest, "w") as fh:
        for lineno, row, fmt, error in rows:
            if row is None or fmt is None:
                bad.append({"line": lineno, "error": error})
                continue
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            formats[fmt] += 1
        if not formats:
            raise _no_valid_rows(src, bad)
    return {"rows": formats.total(), "bad": bad, "formats": dict(formats), "output": str(dest)}


def _summary(values: list[int]) -> dict[str, int | float | None]:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def _meta_str(meta: dict, key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) and value else None


def stats(path: str | os.PathLike[str], count_tokens: Callable[[str], int] | None = None) -> dict:
    """Describe a dataset: counts, per-row turns/chars/tokens (min/mean/max), ``meta.source`` and ``meta.generator``.

    Turns, chars and tokens cover the user and assistant messages only (``tokens`` sums ``count_tokens`` over them,
    None without it). Rows with no ``meta.source`` count under ``"(unknown)"``; generators count rows that name one.
    """
    bad: list[dict] = []
    turns: list[int] = []
    chars: list[int] = []
    tokens: list[int] = []
    n_messages = 0
    sources: Counter[str] = Counter()
    generators: Counter[str] = Counter()
    for lineno, row, error in read_rows(path):
        if row is None:
            bad.append({"line": lineno, "error": error})
            continue
        texts = [m["content"] for m in row["messages"] if m["role"] != "system"]
        n_messages += len(row["messages"])
        turns.append(len(texts))
        chars.append(sum(len(t) for t in texts))
        if count_tokens is not None:
            tokens.append(sum(count_tokens(t) for t in texts))
        meta = row.get("meta", {})
        sources[_meta_str(meta, "source") or UNKNOWN_SOURCE] += 1
        if generator := _meta_str(meta, "generator"):
            generators[generator] += 1
    return {
        "rows": len(turns),
        "bad": bad,
        "messages": n_messages,
        "turns_per_row": _summary(turns),
        "chars": _summary(chars),
        "tokens": _summary(tokens) if count_tokens is not None else None,
        "sources": dict(sources),
        "generators": dict(generators),
    }


def format_import(r: dict[str, Any]) -> str:
    """What ``nomoat data import`` prints: rows written, formats seen, bad lines by number."""
    lines = [f"{r['rows']} rows -> {r['output']} (formats: {r['formats']})"]
    lines += [f"  line {b['line']}: {b['error']}" for b in r["bad"]]
    return "\n".join(lines)


def format_stats(s: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in s.items())
