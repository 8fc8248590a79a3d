"""Keeping secrets (the LLM API key) out of every file and stream the data engine writes.

The rule: no run of 6 or more consecutive characters of a secret reaches a log, a failure record,
a state or output file, stdout or stderr, whether a service echoes the key whole, its first
characters, a middle part, inside JSON or URL-encoded. A secret is registered once (`register`) and
`scrub` replaces every such run, in each of the encodings a reply may use, by `***`.

Chokepoints that call `scrub`: the LLM client (error messages and reply texts, before anything
else sees them), the engine's file writers (`preprocess.layout`), the formatter of every logging
handler and the process's stdout/stderr (`guard_streams`, installed by the command line).
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
import sys
import threading
from urllib.parse import quote, quote_plus

MIN_RUN = 6  # a run of this many characters of a secret is a leak
MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern | None = None


def _encodings(secret: str) -> set[str]:
    """The forms in which a service may echo `secret`: as is, URL-encoded, JSON- and HTML-escaped."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
             json.dumps(secret)[1:-1].replace("/", "\\/"), html.escape(secret)}
    return {f for f in forms if len(f) >= MIN_RUN}


def _trie_pattern(words: list[str]) -> str:
    """A regex matching exactly `words` (all of one length), as a trie of alternatives."""
    heads: dict[str, list[str]] = {}
    for word in words:
        heads.setdefault(word[0], []).append(word[1:])
    branches = [re.escape(head) + (_trie_pattern(tails) if tails[0] else "") for head, tails in sorted(heads.items())]
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def register(secret: str | None) -> None:
    """Treat `secret` as a secret from now on (shorter than MIN_RUN characters: nothing to hide)."""
    global _pattern
    if not secret or len(secret) < MIN_RUN:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        grams = sorted({form[i:i + MIN_RUN] for s in _secrets for form in _encodings(s)
                        for i in range(len(form) - MIN_RUN + 1)})
        # a lookahead finds every (overlapping) start of a 6-character window of a secret; the
        # alternatives form a trie, so a position that starts no window costs one character test
        _pattern = re.compile("(?=" + _trie_pattern(grams) + ")")


def active() -> bool:
    return _pattern is not None


def scrub(text: str) -> str:
    """`text` with every run of MIN_RUN or more characters of a registered secret replaced by '***'."""
    pattern = _pattern
    if pattern is None or not isinstance(text, str) or not text:
        return text
    merged: list[list[int]] = []  # overlapping 6-character windows merge into the maximal leaked runs
    for m in pattern.finditer(text):
        start, stop = m.start(), m.start() + MIN_RUN
        if merged and start <= merged[-1][1]:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    if not merged:
        return text
    out, pos = [], 0
    for start, stop in merged:
        out += [text[pos:start], MASK]
        pos = stop
    out.append(text[pos:])
    return "".join(out)


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter: the whole formatted record (message, arguments, traceback) is scrubbed."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record))


def guard_handlers(logger: logging.Logger | None = None) -> None:
    """Make every handler of `logger` (default: the root logger) scrub what it writes."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))


class RedactingStream(io.TextIOBase):
    """A text stream that scrubs everything written to it before passing it on."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self):
        return getattr(self.inner, "encoding", "utf-8")


def guard_streams() -> None:
    """Scrub sys.stdout and sys.stderr (the command line installs this before anything is printed)."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
