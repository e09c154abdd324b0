"""Scrub personal data (PII) from text before it goes into a training dataset.

What :func:`scrub` replaces, in this order so that each span is replaced at most once:

- e-mail addresses ``local@domain.tld`` (also inside ``<...>`` and ``mailto:`` links) -> ``[EMAIL]``
- IBANs, compact or in groups of 4, whose ISO 13616 mod-97 check holds -> ``[IBAN]``
- payment card numbers, 13-19 digits compact or grouped, that pass the Luhn check -> ``[CARD]``
- IPv6 (full or compressed) and IPv4 addresses -> ``[IP]``
- phone numbers: ``+CC`` international, North American ``(555) 123-4567``, national ``020 7946 0958`` -> ``[PHONE]``

Why it is conservative: the datasets are mostly technical text, full of numbers that only look like personal data
(versions, dates, times, hashes, ports, issue numbers, ranges). A false positive corrupts the very text the model
should learn from; a false negative leaks personal data. So numbers that carry a checksum (cards, IBANs) are
verified rather than guessed, and a phone number needs a ``+`` or a recognisable national layout with at least
9 digits. Known limits: a bare dotted quad (``1.2.3.4``) is always taken for an IPv4 address; ``::1``-style
compressed IPv6 without a 3-4 digit group (loopback, Python slices ``a[1::2]``) is kept; an e-mail-like file name
such as ``icon@2x.png`` is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "card": "[CARD]", "ip": "[IP]", "phone": "[PHONE]"}

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?!\w)"
)
_FILE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp"})  # icon@2x.png

# Country, check digits, then 11-30 alphanumerics: compact, or in space-separated groups of 4 (last one shorter).
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b")

# 13-19 digits compact, or a 4-digit group then 2-4 more groups with one consistent separator (space or hyphen).
# Not inside a longer number or a run of number groups (tables, lists of years).
_CARD = re.compile(r"(?<![\w.+])(?<!\d[ -])(?:\d{13,19}|\d{4}([ -])\d{4,6}(?:\1\d{1,6}){1,3})(?!\w|[ .-]\d)")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")  # not inside 1.2.3.4.5
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?![\w:]|\.\d)")  # checked by _ipv6_ok
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}")

_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,4}){2,7}(?!\w|[.-]\d)")
_NOT_AFTER = r"(?<![\w.:/#+-])(?<!\d )"  # not inside a version, time, path, issue number or number list
_PHONE_NANP = re.compile(_NOT_AFTER + r"(?:\(\d{3}\) ?\d{3}[ .-]|\d{3}([.-])\d{3}\1)\d{4}(?!\w|[ .-]\d)")
_PHONE_NATIONAL = re.compile(_NOT_AFTER + r"0\d{1,4}([ -])\d{3,4}\1?\d{3,4}(?!\w|[ .-]\d)")  # trunk prefix 0

Check = Callable[[str], bool]


def _email_ok(s: str) -> bool:
    return s.rsplit(".", 1)[1].lower() not in _FILE_EXTENSIONS


def _iban_ok(s: str) -> bool:
    """ISO 13616: move the first 4 characters to the end, letters to 10..35; the number mod 97 must be 1."""
    iban = s.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card_ok(s: str) -> bool:
    """13-19 digits, a major-network first digit (2-6: Mastercard, Visa, Amex, Discover, JCB...) and Luhn."""
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits)


def _ipv6_ok(s: str) -> bool:
    """8 hex groups, or fewer with one ``::``; compressed needs 2+ groups, a digit and a 3-4 character group."""
    if s.count("::") > 1 or ":::" in s:
        return False
    if "::" not in s:
        groups = s.split(":")
        return len(groups) == 8 and all(_HEX_GROUP.fullmatch(g) for g in groups)
    head, tail = s.split("::")
    groups = (head.split(":") if head else []) + (tail.split(":") if tail else [])
    return (
        2 <= len(groups) <= 7
        and all(_HEX_GROUP.fullmatch(g) for g in groups)
        and any(c.isdigit() for c in s)
        and any(len(g) >= 3 for g in groups)
    )


def _phone_ok(s: str) -> bool:
    """With ``+``: country code and 7-14 more digits (8-16 in all, a ``(0)`` included); national: 9-11 digits."""
    n = sum(c.isdigit() for c in s)
    return 8 <= n <= 16 if s.startswith("+") else 9 <= n <= 11


_PASSES: tuple[tuple[str, re.Pattern[str], Check | None, bool], ...] = (
    # (kind, pattern, check on the matched text, trim: may the check drop trailing space-separated groups?)
    ("email", _EMAIL, _email_ok, False),
    ("iban", _IBAN, _iban_ok, True),  # trim: "AT61 1904 3002 3457 3201 EUR" -> "[IBAN] EUR"
    ("card", _CARD, _card_ok, False),
    ("ip", _IPV6, _ipv6_ok, False),
    ("ip", _IPV4, None, False),
    ("phone", _PHONE_INTL, _phone_ok, False),
    ("phone", _PHONE_NANP, _phone_ok, False),
    ("phone", _PHONE_NATIONAL, _phone_ok, False),
)


def _accepted_end(s: str, check: Check | None, trim: bool) -> int:
    """How much of s to replace: all of it, or with trim the longest prefix ending at a space that passes; 0: none."""
    if check is None:
        return len(s)
    ends = [i for i, c in enumerate(s) if c == " "] if trim else []
    return next((end for end in reversed([*ends, len(s)]) if check(s[:end])), 0)


def _replace(
    text: str, pattern: re.Pattern[str], kind: str, check: Check | None, trim: bool, counts: dict[str, int]
) -> str:
    def replacement(match: re.Match[str]) -> str:
        found = match.group()
        end = _accepted_end(found, check, trim)
        if not end:
            return found
        counts[kind] = counts.get(kind, 0) + 1
        return PLACEHOLDERS[kind] + found[end:]

    return pattern.sub(replacement, text)


def scrub(text: str, kinds: Collection[str] | None = None) -> tuple[str, dict[str, int]]:
    """Replace personal data in text by placeholders; return (clean text, {kind: count replaced}).

    Kinds are ``email``, ``phone``, ``card``, ``iban`` and ``ip`` (all of them, or only ``kinds``: the answer
    policy's ``scrub`` list); only kinds with a count above 0 appear.
    Scrubbing is idempotent: the placeholders contain nothing that any pattern matches.
    """
    counts: dict[str, int] = {}
    for kind, pattern, check, trim in _PASSES:
        if kinds is None or kind in kinds:
            text = _replace(text, pattern, kind, check, trim, counts)
    return text, counts
