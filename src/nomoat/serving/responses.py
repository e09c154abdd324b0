"""Response bodies in OpenAI's shapes (chat completion, its stream chunks, text completion, errors) and SSE.

Knowledge-base answers add one field OpenAI does not define, ``"nomoat"``, on the completion object (and on the
last stream chunk): ``{"kb", "grounded", "mode", "citations": [{"n", "path", "location", "quote", ...}]}``.
Clients that do not know it ignore it; the official Python client exposes it as ``response.model_extra``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

# The folders of an absolute path (POSIX or Windows, spaces allowed in names): "/home/a b/" or "C:\\Users\\A B\\".
# Not after a word character, dot, colon or slash, so URLs ("http://127.0.0.1:8000/v1") and relative paths stay.
_FOLDERS = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?[/\\](?:[^/\\'\"():\n]*[/\\])+")


def scrub(message: str) -> str:
    """Error text safe to send: absolute paths are cut to their last part, and only the first line is kept."""
    first = (message.strip().splitlines() or ["error"])[0]
    return _FOLDERS.sub("", first)[:500]


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": scrub(message), "type": kind, "param": param, "code": None}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(result.get("prompt_tokens", 0)), int(result.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(rid: str, model: str, text: str, result: dict[str, Any]) -> dict[str, Any]:
    body = {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": result["finish_reason"],
            }
        ],
        "usage": usage(result),
    }
    return with_extra(body, result)


def chat_chunk(rid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [choice]}  # fmt: skip


def text_completion(rid: str, model: str, text: str, result: dict[str, Any]) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": result["finish_reason"]}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(result)}  # fmt: skip


def text_chunk(rid: str, model: str, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(rid: str, model: str, obj: str, result: dict[str, Any]) -> dict[str, Any]:
    """The extra last chunk sent when the request asks ``stream_options: {"include_usage": true}``."""
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(result)}  # fmt: skip


def with_extra(body: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``body`` plus the ``"nomoat"`` field when the result has one (knowledge-base answers)."""
    if "nomoat" in result:
        body["nomoat"] = result["nomoat"]
    return body


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()
