"""Pseudo queries for a knowledge base's own chunks: what ``kb adapt`` teaches the query encoder with.

No labelled questions exist for a user's files, so each chunk is asked about in three cheap ways that need no
model (GPL's query generator needs a T5 trained on MS MARCO, which cannot be installed offline here):

* ``extract``   the dataset stage's extractive questions ("What does --soft do in git-reset?");
* ``heading``   the chunk's own section heading ("Recovering stash entries"), when it says more than the title;
* ``sentence``  one of the chunk's sentences (the inverse cloze task of Lee et al., ACL 2019), with the words of
                its document's name and title dropped half the time, because people asking rarely use them.

The positive of every query is the chunk it came from; the negatives are every chunk of *other* documents.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import PurePath
from typing import NamedTuple

from nomoat.dataset.extract import extract_pairs
from nomoat.text import sentences

_WORD = re.compile(r"\w[\w.+-]*")
MIN_WORDS, MAX_WORDS = 5, 30
"""A sentence query's length in words: shorter ones name nothing, longer ones read like the passage itself."""


class Query(NamedTuple):
    text: str
    chunk_id: int
    document: str
    """The chunk's document path: a query's hits are judged by document, as ``search`` caps them."""
    kind: str


def pseudo_queries(
    chunks: Iterable[tuple[int, str, str, str, str]], rng: random.Random, per_chunk: int = 3
) -> list[Query]:
    """Up to ``per_chunk`` queries for each ``(chunk id, document path, title, heading, text)``, de-duplicated
    across the knowledge base (a query two chunks would both claim teaches nothing)."""
    seen: dict[str, int] = {}
    found: list[Query] = []
    for chunk_id, path, title, heading, text in chunks:
        for q in _chunk_queries(chunk_id, path, title, heading, text, rng)[:per_chunk]:
            key = " ".join(q.text.lower().split())
            seen[key] = seen.get(key, 0) + 1
            found.append(q)
    return [q for q in found if seen[" ".join(q.text.lower().split())] == 1]


def _chunk_queries(chunk_id: int, path: str, title: str, heading: str, text: str, rng: random.Random) -> list[Query]:
    subject = title or PurePath(path).stem
    extracted = [Query(p.question, chunk_id, path, "extract") for p in extract_pairs(text, subject, heading)]
    rng.shuffle(extracted)
    section = heading.rsplit(">", 1)[-1].strip()
    headed = (
        [Query(section, chunk_id, path, "heading")]
        if len(section.split()) >= 2 and section.lower() not in (subject.lower())
        else []
    )
    named = {w.lower() for w in _WORD.findall(f"{PurePath(path).stem.replace('-', ' ')} {title}")}
    spans = [s for s in sentences(text) if MIN_WORDS <= len(text[s[0] : s[1]].split()) <= MAX_WORDS]
    rng.shuffle(spans)
    said = []
    for a, b in spans[:2]:
        words = text[a:b].split()
        if rng.random() < 0.5:
            kept = [w for w in words if w.strip(".,:;()'\"`").lower() not in named]
            words = kept if len(kept) >= MIN_WORDS - 1 else words
        said.append(Query(" ".join(words), chunk_id, path, "sentence"))
    # one of each kind first, so a per-chunk limit keeps the mix
    return [*headed, *extracted[:1], *said, *extracted[1:]]
