"""Text folded so that a denied word is found however it is dressed up.

:func:`fold` applies, in order: NFKC (full-width and mathematical letters become plain ones), removal of
invisible format characters (zero-width space/joiner, soft hyphen, word joiner), removal of accents, case
folding, a map of the Cyrillic and Greek letters that look like Latin ones (``ѕаlаrу`` -> ``salary``), and the
collapse of single letters separated by spaces or punctuation (``s a l a r y``, ``s.a.l.a.r.y`` -> ``salary``).
:func:`unleet` also reads digits and symbols as the letters they stand for (``p4yr0ll`` -> ``payroll``); it is
applied to word lists only, because an owner's regular expression may well mean a digit.

Known gaps (docs/benchmarks.md lists what the red-team set shows): words split into pieces of two or more
letters (``sal ary``), synonyms, paraphrases, other languages and encodings such as base64 or ROT13.
"""

from __future__ import annotations

import re
import unicodedata

CONFUSABLES = str.maketrans(
    {
        # Cyrillic letters that look Latin (lower case: fold() case-folds first)
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "һ": "h", "ӏ": "l", "ɡ": "g",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
        "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ς": "s", "σ": "s", "μ": "u", "ζ": "z",
    }
)  # fmt: skip
LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
                      "!": "i", "|": "l", "+": "t"})  # fmt: skip
# Three or more single letters/digits, each followed by 1-3 separators: "s a l a r y", "s-a-l-a-r-y".
_SPACED = re.compile(r"(?<![^\W_])[^\W_](?:(?:[\W_]{1,3})[^\W_](?![^\W_])){2,}")
_SEPARATORS = re.compile(r"[\W_]+")


def fold(text: str) -> str:
    """``text`` in the form rules are matched against (see the module's docstring)."""
    return _SPACED.sub(lambda m: _SEPARATORS.sub("", m.group()), _letters(text))


def spelled_runs(text: str) -> list[str]:
    """The runs of single spaced letters in ``text``, collapsed (``CEO's s a l a r y`` -> ``["ssalary"]``). A run
    has no word boundaries of its own, so word lists are matched inside it (:func:`word_pattern` ``bounded=False``):
    a stray letter before or after cannot hide the word."""
    return [_SEPARATORS.sub("", m.group()) for m in _SPACED.finditer(_letters(text))]


def _letters(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.casefold().translate(CONFUSABLES)


def unleet(folded: str) -> str:
    """A folded text with digits and symbols read as letters, spaced letters collapsed again."""
    text = folded.translate(LEET)
    return _SPACED.sub(lambda m: _SEPARATORS.sub("", m.group()), text)


def word_pattern(word: str, bounded: bool = True) -> str:
    """A regular expression for one word-list entry, matched against folded text: whole words (anywhere, when not
    ``bounded``), any run of separators between the words of a phrase, and a trailing ``*`` for any ending."""
    prefix = word.rstrip().endswith("*")
    parts = [re.escape(p) for p in _SEPARATORS.split(fold(word.rstrip().rstrip("*"))) if p]
    body = r"[\W_]*".join(parts) + (r"[^\W_]*" if prefix else "")
    return rf"(?<![^\W_]){body}(?![^\W_])" if bounded else body
