"""Enforcing a :class:`~nomoat.policy.rules.Policy`: questions before any generation, answers before they show.

* :func:`check_input`: the first input rule matching any of the texts (the question, earlier turns), or
  ``kb_only`` for plain chat. The caller then answers with the refusal and generates nothing.
* :class:`Guard`: a streamed answer released one complete sentence at a time, each screened first: a sentence
  that matches an output rule is withdrawn with everything after it (the answer ends with the refusal wording
  and generation stops), personal data is replaced (``[EMAIL]``), and the answer stops at ``max_answer_chars``.
  Nothing a rule would withdraw is ever passed on, at the cost of holding each sentence until it is complete.
* :func:`screen_text`: the same over a whole text, so a streamed and a non-streamed answer end the same.
* :func:`screen_answer`: ``nomoat ask``'s answer, which nothing has shown yet: a match in it or in a quote
  under it replaces the whole answer by the refusal (mode ``"refused"``); quotes are scrubbed too.

Every decision is an event ``{"rule", "action", "where"}`` (action ``refused`` / ``withdrawn`` / ``scrubbed``
/ ``cut``) listed under the result's ``"policy"``: the owner sees the rule's name in ``--json`` and the server
log; clients read only the wording, never the rule's words or patterns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nomoat.config import PolicyConfig
from nomoat.policy.normalize import fold, spelled_runs, unleet
from nomoat.text import sentences

Policy = Deny = Any  # nomoat.policy.rules' classes (whose methods call these functions: no import back)
Event = dict[str, Any]
KB_ONLY = "kb_only"
MAX_CHARS = "max_answer_chars"
SCRUB = "scrub"


def event(rule: str, action: str, where: str, **extra: Any) -> Event:
    return {"rule": rule, "action": action, "where": where, **extra}


def first_match(policy: Policy, text: str, side: str) -> Deny | None:
    """The first deny rule for ``side`` ("input"/"output") matching ``text``, folded (and read as leetspeak
    for word lists); patterns are tried on the raw text as well."""
    rules = [d for d in policy.deny if side in d.on]
    if not rules or not text:
        return None
    folded = fold(text)
    leet = unleet(folded)
    spelled = spelled_runs(text)
    for rule in rules:
        if rule.word_regex is not None and (rule.word_regex.search(folded) or rule.word_regex.search(leet)):
            return rule
        if rule.spelled_regex is not None and any(rule.spelled_regex.search(r) for r in spelled):
            return rule
        if any(p.search(text) or p.search(folded) for p in rule.patterns):
            return rule
    return None


def check_input(policy: Policy, texts: Sequence[str], *, plain: bool = False) -> Event | None:
    if plain and policy.kb_only:
        return event(KB_ONLY, "refused", "input")
    for text in texts:
        if (rule := first_match(policy, text, "input")) is not None:
            return event(rule.name, "refused", "input")
    return None


class Guard:
    """Screens a stream: :meth:`feed` each piece (False once the answer is over: stop generating), then
    :meth:`close` for the answer as shown. ``emit`` receives only screened text. ``events`` lists what fired."""

    def __init__(self, policy: Policy, emit: Callable[[str], None] | None = None, hold_chars: int | None = None):
        self.policy, self.emit = policy, emit
        self.hold = hold_chars or PolicyConfig().hold_chars
        self.buffer = ""
        self.shown: list[str] = []
        self.length = 0
        self.events: list[Event] = []
        self.stopped = False

    @property
    def withdrawn(self) -> Event | None:
        """The event that withdrew the answer, if one did."""
        return next((e for e in self.events if e["action"] == "withdrawn"), None)

    def is_set(self) -> bool:
        """Read like a ``threading.Event``: set once the answer is withdrawn or cut."""
        return self.stopped

    def feed(self, piece: str) -> bool:
        if self.stopped:
            return False
        self.buffer += piece
        while not self.stopped and (end := _sentence_end(self.buffer, self.hold)):
            ready, self.buffer = self.buffer[:end], self.buffer[end:]
            self._release(ready)
        return not self.stopped

    def close(self) -> str:
        """Release what is left (the last sentence) and return the whole answer as shown."""
        if not self.stopped and self.buffer.strip():
            self._release(self.buffer)
        self.buffer = ""
        return "".join(self.shown).strip()

    def _show(self, text: str) -> None:
        if not text:
            return
        self.shown.append(text)
        self.length += len(text)
        if self.emit is not None:
            self.emit(text)

    def _release(self, text: str) -> None:
        policy = self.policy
        rule = first_match(policy, text, "output")
        if rule is not None:
            self.stopped = True
            withdrawn = event(rule.name, "withdrawn", "output")
            self.events.append(withdrawn)
            gap = " " if self.shown and not self.shown[-1][-1:].isspace() else ""
            self._show(gap + policy.wording(withdrawn))
            return
        if policy.scrub:
            from nomoat.dataset.pii import scrub

            text, counts = scrub(text, policy.scrub)
            if counts:
                _count_scrubbed(self.events, counts)
        most = policy.max_answer_chars
        if most is not None and self.length + len(text.rstrip()) > most:
            text = cut(text, most - self.length, words=not self.length)
            self.stopped = True
            self.events.append(event(MAX_CHARS, "cut", "output"))
        self._show(text)


def _count_scrubbed(events: list[Event], counts: dict[str, int]) -> None:
    found = next((e for e in events if e["action"] == "scrubbed"), None)
    if found is None:
        found = event(SCRUB, "scrubbed", "output", kinds={})
        events.append(found)
    for kind, n in counts.items():
        found["kinds"][kind] = found["kinds"].get(kind, 0) + n


def _sentence_end(buffer: str, hold: int) -> int:
    """Where the first complete sentence of ``buffer`` ends (the next one has begun), 0 if none is complete yet;
    past ``hold`` characters, the last space before the held tail."""
    spans = sentences(buffer)
    if len(spans) >= 2:
        return spans[1][0]
    if len(buffer) > hold:
        space = max(buffer.rfind(" ", 0, len(buffer) - hold // 5), buffer.rfind("\n", 0, len(buffer) - hold // 5))
        return space + 1 if space > 0 else 0
    return 0


def cut(text: str, room: int, words: bool = True) -> str:
    """The longest prefix of ``text`` within ``room`` characters ending at a sentence end, else (``words``) at a
    word end, with an ellipsis: an answer whose first sentence is too long still says something."""
    if room <= 0:
        return ""
    if len(text.rstrip()) <= room:
        return text
    ends = [b for _, b in sentences(text) if b <= room]
    if ends:
        return text[: ends[-1]]
    if not words:
        return ""
    space = text.rfind(" ", 0, room)
    return (text[:space] if space > 0 else text[: room - 1]).rstrip() + "…"


def screen_text(policy: Policy, text: str) -> tuple[str, list[Event]]:
    """``text`` as a :class:`Guard` would have shown it, and the events."""
    guard = Guard(policy)
    guard.feed(text)
    return guard.close(), guard.events


def screen_answer(policy: Policy, answer: dict[str, Any]) -> dict[str, Any]:
    """A ``nomoat ask`` answer under the output rules: withdrawn whole (the refusal, mode ``"refused"``, no
    citations) when it or a quote matches a deny rule, else scrubbed and cut; ``"policy"`` lists the events."""
    result = dict(answer)
    for citation in result.get("citations") or []:
        if (rule := first_match(policy, str(citation.get("quote", "")), "output")) is not None:
            return refused_answer(policy, event(rule.name, "withdrawn", "output"), result.get("model", ""))
    text, events = screen_text(policy, result.get("answer", ""))
    withdrawn = next((e for e in events if e["action"] == "withdrawn"), None)
    if withdrawn is not None:
        return refused_answer(policy, withdrawn, result.get("model", ""))
    citations = []
    for citation in result.get("citations") or []:
        quote, counts = _scrubbed(policy, str(citation.get("quote", "")))
        if counts:
            _count_scrubbed(events, counts)
        citations.append({**citation, "quote": quote})
    result |= {"answer": text, "citations": citations}
    if events:
        result["policy"] = events
    return result


def _scrubbed(policy: Policy, text: str) -> tuple[str, dict[str, int]]:
    if not policy.scrub:
        return text, {}
    from nomoat.dataset.pii import scrub

    return scrub(text, policy.scrub)


def refused_answer(policy: Policy, refusal: Event, model: str) -> dict[str, Any]:
    """The answer ``nomoat ask`` gives when a rule refuses: the wording, no sources, mode ``"refused"``."""
    return {"answer": policy.wording(refusal), "grounded": False, "citations": [], "model": model,
            "mode": "refused", "policy": [refusal]}  # fmt: skip
