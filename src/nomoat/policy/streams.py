"""The policy around the server's generation work (``work(emit, stop) -> result``, see ``serving/engine.py``).

:func:`guard_work` checks every message the client sent before the model runs (a client writes the whole
history, earlier "assistant" turns included), then passes the work's text through a sentence
:class:`~nomoat.policy.enforce.Guard`: the client, streaming or not, only ever receives screened sentences.
A refusal ends with ``finish_reason: "content_filter"`` (OpenAI's value for filtered output). The rule's name
goes to the server log; the client gets it under ``"nomoat": {"policy": ...}`` only when the policy says
``tell_rule = true``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nomoat.policy.rules import Policy

log = logging.getLogger("nomoat.policy")
Emit = Callable[[str], None]
Work = Callable[[Emit, threading.Event], Any]


class _Either:
    """A stop flag set when either the client left (``stop``) or the policy ended the answer (``guard``)."""

    def __init__(self, stop: threading.Event, guard: Any) -> None:
        self._stop, self._guard = stop, guard

    def is_set(self) -> bool:
        return self._stop.is_set() or self._guard.is_set()


def guard_work(policy: Policy, work: Work, inputs: Sequence[str], *, plain: bool) -> Work:
    """``work`` under ``policy``; ``inputs`` are the request's message texts, ``plain`` is True for plain
    generation (refused outright by ``kb_only``)."""

    def guarded(emit: Emit, stop: threading.Event) -> Any:
        refusal = policy.check_input(list(inputs), plain=plain)
        if refusal is not None:
            _log(refusal)
            emit(policy.wording(refusal))
            result = {"prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "content_filter"}
            return _tell(policy, result, [refusal], refused=True)
        guard = policy.stream(emit)
        result = work(guard.feed, _Either(stop, guard))  # type: ignore[arg-type]
        guard.close()
        extra = result.get("nomoat") if isinstance(result, dict) else None  # a KB answer: rag screened its quotes
        events = [*guard.events, *((extra or {}).pop("policy", None) or [])]
        for e in events:
            if e["action"] != "scrubbed":
                _log(e)
        refused = guard.withdrawn is not None or bool(extra and extra.get("mode") == "refused")
        if refused:
            result["finish_reason"] = "content_filter"
        return _tell(policy, result, events, refused=refused) if events else result

    return guarded


def _log(e: dict[str, Any]) -> None:
    log.warning("policy: rule %r %s the %s", e["rule"], e["action"], "question" if e["where"] == "input" else "answer")


def _tell(policy: Policy, result: dict[str, Any], events: list[dict[str, Any]], *, refused: bool) -> dict[str, Any]:
    """The result with what the client may know: that the policy refused, and the rule only with tell_rule."""
    extra = result.setdefault("nomoat", {})
    extra["policy_refused"] = refused
    if policy.tell_rule:
        extra["policy"] = events
    return result
