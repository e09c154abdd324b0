"""HTML -> markdown-like text: headings as ``#`` lines, list items ``- ``, table rows ``a | b``, ``<pre>`` a fence;
navigation, scripts and other page furniture are skipped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from nomoat.kb.readers.text import Extracted, decode, normalize

_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I)

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "aside", "header", "footer", "iframe"}
_SKIP_TAGS |= {"object", "canvas", "select", "button"}
_SKIP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_IMPLIED_END = {"p", "li", "dt", "dd", "tr", "td", "th", "option", "thead", "tbody", "tfoot", "colgroup", "optgroup"}
_BLOCKS = {"div", "section", "article", "main", "blockquote", "ul", "ol", "dl", "table", "figure", "figcaption"}
_BLOCKS |= {"address", "details", "summary", "form", "fieldset", "caption", "body", "center", "pre"} | _IMPLIED_END
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _HTMLText(HTMLParser):
    """Renders the visible body as markdown-like blocks. Keeps a stack of open elements to know when a skipped
    subtree (script, nav, ...) ends; elements with optional end tags (p, li, td, ...) only mark block boundaries."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []  # finished blocks and their separators
        self.parts: list[str] = []  # text of the block being read
        self.stack: list[tuple[str, bool]] = []  # open elements: (tag, starts a skipped subtree)
        self.skip = self.pre = self.heading = self.cells = 0
        self.title: list[str] | None = None  # collecting <title> text while not None
        self.title_text = ""
        self.mode = self.last_mode = "p"  # "li" and "row" blocks follow each other without a blank line
        self.after_br = False

    def flush(self) -> None:
        raw, self.parts = "".join(self.parts), []
        if self.pre:
            text = f"```\n{raw.strip(chr(10)).rstrip()}\n```" if raw.strip() else ""
        else:
            text = " ".join(raw.split())
            if text == "-":  # a list item whose text comes in a nested block: keep its marker
                self.parts = ["- "]
                return
            if text and self.heading:
                text = "#" * self.heading + " " + text.replace("¶", "").strip()
        if text:
            if self.out:
                tight = self.after_br or (self.mode in ("li", "row") and self.mode == self.last_mode)
                self.out.append("\n" if tight else "\n\n")
            self.out.append(text)
            self.last_mode, self.after_br = self.mode, False

    def block(self, mode: str = "p") -> None:
        """A block boundary (only where text is being collected as normal paragraphs)."""
        if self.skip or self.pre or self.heading:
            return
        self.flush()
        if self.parts != ["- "]:  # else a list item's marker still waits for its text
            self.mode = mode
            self.parts = ["- "] if mode == "li" else []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.title = [] if not any(t == "svg" for t, _ in self.stack) else None
        elif tag in ("br", "hr") and self.pre and not self.skip:
            self.parts.append("\n")
        elif tag in ("br", "hr"):
            self.block()
            self.after_br = tag == "br" and not self.skip
        elif tag in ("td", "th") and not (self.skip or self.pre or self.heading):
            self.parts.append(" | " if self.cells else "")
            self.cells += 1
        elif tag in _IMPLIED_END:
            self.block({"li": "li", "tr": "row"}.get(tag, "p"))
            self.cells = 0
        elif tag not in _VOID and len(self.stack) < 512:  # deeper nesting is not tracked: no quadratic worst case
            a = dict(attrs)
            skip = tag in _SKIP_TAGS or a.get("role") in _SKIP_ROLES or "headerlink" in (a.get("class") or "")
            if tag in ("header", "footer") or a.get("role") in ("banner", "contentinfo"):
                skip = skip and not any(t in ("article", "main") for t, _ in self.stack)  # an article's own header
            if skip or tag in _BLOCKS or tag in _HEADINGS:
                self.block()
            self.stack.append((tag, skip))
            self.skip += skip
            if not self.skip and tag == "pre":
                self.pre += 1
            elif not self.skip and tag in _HEADINGS and not self.pre:
                self.heading = _HEADINGS[tag]

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.title_text, self.title = self.title_text or " ".join("".join(self.title or []).split()), None
        elif tag in _IMPLIED_END:
            if tag not in ("td", "th"):
                self.block()
        else:
            for i in range(len(self.stack) - 1, max(-1, len(self.stack) - 64), -1):
                if self.stack[i][0] == tag:
                    while len(self.stack) > i:
                        self.pop()
                    return

    def pop(self) -> None:
        tag, skip = self.stack.pop()
        if not self.skip and ((tag == "pre" and self.pre) or (tag in _HEADINGS and self.heading)):
            self.flush()
            self.pre, self.heading = (self.pre - 1, self.heading) if tag == "pre" else (self.pre, 0)
        elif tag in _BLOCKS:
            self.block()
        self.skip -= skip

    def handle_data(self, data: str) -> None:
        if self.title is not None:
            self.title.append(data)
        elif not self.skip:
            self.parts.append(data)


def read_html(data: bytes) -> Extracted:
    m = _META_CHARSET.search(data[:4096])
    parser = _HTMLText()
    parser.feed(normalize(decode(data, m.group(1).decode("ascii") if m else None)))
    parser.close()
    while parser.stack:
        parser.pop()
    parser.flush()
    return Extracted("".join(parser.out), "html", title=parser.title_text[:200])
