"""The policy file: TOML the owner writes, validated on load, every mistake named with its line.

::

    refusal = "I can't discuss that here."   # what a refusal says (default: PolicyConfig.refusal)
    kb_only = true                           # refuse plain chat: answers only from a knowledge base
    max_answer_chars = 1500                  # longer answers are cut at a sentence end
    scrub = ["email", "phone"]               # personal data replaced in answers: email, phone, card, iban, ip
    tell_rule = false                        # API clients see which rule refused (default: only the owner)

    [[deny]]                                 # any number of these
    name = "salaries"                        # what the log and --json call it (the client never sees the words)
    words = ["salary", "salaries", "pay grade", "bonus*"]   # whole words; a phrase's words; * = any ending
    patterns = ['\\bearns?\\s+\\$\\d']       # Python regular expressions, case-insensitive
    on = ["input", "output"]                 # check questions, answers, or both (the default)
    refusal = "Ask HR about pay."            # optional: this rule's own wording

:func:`find` picks the policy a command uses: ``--policy FILE``, else ``policy.toml`` in NOMOAT_HOME when it
exists, else none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nomoat.config import PolicyConfig
from nomoat.errors import UserError
from nomoat.policy.normalize import word_pattern

SCRUB_KINDS = ("email", "phone", "card", "iban", "ip")
"""Personal-data classes :mod:`nomoat.dataset.pii` detects."""
SIDES = ("input", "output")
_TOP = {"refusal", "kb_only", "max_answer_chars", "scrub", "tell_rule", "deny"}
_DENY = {"name", "words", "patterns", "on", "refusal"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PolicyError(UserError):
    """A policy file that cannot be used; the message starts with ``FILE:LINE:``."""


@dataclass(frozen=True)
class Deny:
    """One ``[[deny]]`` rule: words and patterns, for questions, answers or both."""

    name: str
    words: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    on: frozenset[str] = frozenset(SIDES)
    refusal: str | None = None
    word_regex: re.Pattern[str] | None = None
    """All ``words`` as one expression over folded text (:mod:`nomoat.policy.normalize`)."""
    spelled_regex: re.Pattern[str] | None = None
    """The same words without word boundaries, for runs of spelled-out letters."""


@dataclass(frozen=True)
class Policy:
    """A loaded policy. Checking is in :mod:`nomoat.policy.enforce`; these methods are its entry points."""

    deny: tuple[Deny, ...] = ()
    scrub: tuple[str, ...] = ()
    kb_only: bool = False
    max_answer_chars: int | None = None
    refusal: str = field(default_factory=lambda: PolicyConfig().refusal)
    tell_rule: bool = False
    source: str = "<policy>"

    def check_input(self, texts: str | Sequence[str], *, plain: bool = False) -> dict[str, Any] | None:
        """The refusal event (``{"rule", "action": "refused", "where": "input"}``) for the first input rule that
        matches any of ``texts`` (or ``kb_only`` when ``plain``), else None."""
        from nomoat.policy import enforce

        return enforce.check_input(self, [texts] if isinstance(texts, str) else list(texts), plain=plain)

    def screen_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A ``nomoat ask`` answer with the output rules applied (see :func:`enforce.screen_answer`)."""
        from nomoat.policy import enforce

        return enforce.screen_answer(self, answer)

    def stream(self, emit: Callable[[str], None] | None) -> Any:
        """A :class:`enforce.Guard`: feed it pieces, it passes screened sentences on to ``emit``."""
        from nomoat.policy import enforce

        return enforce.Guard(self, emit)

    def refused_answer(self, event: dict[str, Any], model: str) -> dict[str, Any]:
        """``nomoat ask``'s answer for a refusal event (see :func:`enforce.refused_answer`)."""
        from nomoat.policy import enforce

        return enforce.refused_answer(self, event, model)

    def wording(self, event: dict[str, Any]) -> str:
        """What the client reads for a refusal event: the rule's own wording, else the policy's."""
        rule = next((d for d in self.deny if d.name == event.get("rule")), None)
        return rule.refusal if rule is not None and rule.refusal else self.refusal


def find(policy: str | Path | Policy | None) -> Policy | None:
    """The policy a command runs under: ``policy`` (a file, or already loaded), else NOMOAT_HOME's policy file
    when it exists, else None. Raises PolicyError for a file that is missing or invalid."""
    if isinstance(policy, Policy):
        return policy
    if policy is not None:
        path = Path(policy).expanduser()
        if not path.is_file():
            raise PolicyError(f"--policy {policy}: no such file")
        return load(path)
    from nomoat import paths

    workspace = paths.home() / PolicyConfig().file
    return load(workspace) if workspace.is_file() else None


def load(path: str | Path) -> Policy:
    """Read and validate a policy file. Raises PolicyError ``FILE:LINE: what is wrong``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy ({exc})") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<policy>") -> Policy:
    """A policy from TOML text (``source`` names it in errors)."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = found.group(1) if found else "?"
        raise PolicyError(f"{source}:{line}: not valid TOML ({str(exc).split(' (at ')[0]})") from None
    lines = _key_lines(text)

    def fail(message: str, key: str | None = None, table: tuple[str, int] | None = None) -> PolicyError:
        line = lines.get((table, key)) or lines.get((table, None)) or lines.get(((str(key), 0), None)) or 1
        return PolicyError(f"{source}:{line}: {message}")

    for key in data:
        if key not in _TOP:
            raise fail(f"unknown setting {key!r} (known: {', '.join(sorted(_TOP))})", key)
    refusal = _string(data, "refusal", fail) or PolicyConfig().refusal
    kb_only = _bool(data, "kb_only", fail)
    tell_rule = _bool(data, "tell_rule", fail)
    most = data.get("max_answer_chars")
    if most is not None and (type(most) is not int or most < 1):
        raise fail("max_answer_chars must be a whole number of characters, at least 1", "max_answer_chars")
    scrub = data.get("scrub", [])
    if not isinstance(scrub, list) or any(s not in SCRUB_KINDS for s in scrub):
        raise fail(f"scrub must be a list of {', '.join(map(repr, SCRUB_KINDS))}", "scrub")
    rules = data.get("deny", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise fail("deny must be tables: write each rule under its own [[deny]] line", "deny")
    deny = [_deny(rule, i, fail) for i, rule in enumerate(rules)]
    names = [d.name for d in deny]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise fail(f"two deny rules are named {name!r}: names must differ", "name", ("deny", i))
    return Policy(deny=tuple(deny), scrub=tuple(dict.fromkeys(scrub)), kb_only=kb_only, max_answer_chars=most,
                  refusal=refusal, tell_rule=tell_rule, source=source)  # fmt: skip


Fail = Callable[..., PolicyError]


def _deny(rule: dict[str, Any], i: int, fail: Fail) -> Deny:
    table = ("deny", i)
    for key in rule:
        if key not in _DENY:
            hint = " (settings go above the first [[deny]])" if key in _TOP else ""
            raise fail(f"unknown key {key!r} in a deny rule (known: {', '.join(sorted(_DENY))}){hint}", key, table)
    name = rule.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("every deny rule needs a name: 1-64 letters, digits, '.', '_' or '-'", "name", table)
    words, patterns = rule.get("words", []), rule.get("patterns", [])
    for key, value in (("words", words), ("patterns", patterns)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise fail(f"deny rule {name!r}: {key} must be a list of non-empty strings", key, table)
    if not words and not patterns:
        raise fail(f"deny rule {name!r} has neither words nor patterns", "name", table)
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise fail(f"deny rule {name!r}: pattern {pattern!r} is not a regular expression ({exc})",
                       "patterns", table) from None  # fmt: skip
    for word in words:
        if not any(ch.isalnum() for ch in word):
            raise fail(f"deny rule {name!r}: word {word!r} has no letters or digits", "words", table)
    on = rule.get("on", list(SIDES))
    if not isinstance(on, list) or not on or any(side not in SIDES for side in on):
        raise fail(f"deny rule {name!r}: on must list 'input', 'output' or both", "on", table)
    refusal = rule.get("refusal")
    if refusal is not None and (not isinstance(refusal, str) or not refusal.strip()):
        raise fail(f"deny rule {name!r}: refusal must be a non-empty string", "refusal", table)
    regex = re.compile("|".join(word_pattern(w) for w in words)) if words else None
    spelled = re.compile("|".join(word_pattern(w, bounded=False) for w in words)) if words else None
    return Deny(name=name, words=tuple(words), patterns=tuple(compiled), on=frozenset(on), refusal=refusal,
                word_regex=regex, spelled_regex=spelled)  # fmt: skip


def _string(data: dict[str, Any], key: str, fail: Fail) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise fail(f"{key} must be a non-empty string", key)
    return value


def _bool(data: dict[str, Any], key: str, fail: Fail) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise fail(f"{key} must be true or false", key)
    return value


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


def _key_lines(text: str) -> dict[tuple[tuple[str, int] | None, str | None], int]:
    """Where each key is written: ``{(table, key): line}``, table None at the top or ``("deny", i)`` for the
    i-th ``[[deny]]``; ``(table, None)`` is the table's header line. The TOML is already known to parse."""
    found: dict[tuple[tuple[str, int] | None, str | None], int] = {}
    table: tuple[str, int] | None = None
    counts: dict[str, int] = {}
    depth = 0  # inside a multi-line array, lines are values, not keys
    for n, line in enumerate(text.splitlines(), 1):
        if depth == 0 and (m := _ARRAY_HEADER.match(line)):
            name = m.group(1)
            table = (name, counts.get(name, 0))
            counts[name] = table[1] + 1
            found.setdefault((table, None), n)
        elif depth == 0 and (m := _HEADER.match(line)):
            table = (m.group(1), 0)
            found.setdefault((table, None), n)
        elif depth == 0 and (m := _KEY.match(line)):
            found.setdefault((table, m.group(1).strip("\"'")), n)
            if m.group(1) == "deny":
                found.setdefault((None, "deny"), n)
        depth = max(0, depth + _brackets(line))
    return found


def _brackets(line: str) -> int:
    """Open minus closed square brackets outside strings and comments (good enough for policy files)."""
    depth, quote = 0, ""
    for c in line:
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#":
            break
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
    return depth
