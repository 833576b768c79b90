"""Slack mrkdwn text helpers: escaping of untrusted text, truncation with a marker, chunking."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "MARKER",
    "SECTION_LIMIT",
    "as_text",
    "chunk_lines",
    "code",
    "escape",
    "fit",
    "fit_line",
    "key_text",
    "short_time",
    "timestamp",
]

MARKER = "…"
SECTION_LIMIT = 3000  # Slack: section text and context element text
_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})")
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    """Slack's three control characters as entities: no `<!channel>`, `<@U..>` or `<url|x>`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fit(raw: str, limit: int) -> str:
    """`raw` escaped, cut so the escaped result (marker included) is at most `limit` chars.

    Cutting happens on the raw text so an entity is never split in half.
    """
    escaped = escape(raw)
    if len(escaped) <= limit:
        return escaped
    budget = limit - len(MARKER)
    size = 0
    end = 0
    for char in raw:
        width = len(_ESCAPES.get(char, char))
        if size + width > budget:
            break
        size += width
        end += 1
    return escape(raw[:end]) + MARKER


def code(raw: str, limit: int) -> str:
    """An inline code span of untrusted text: one line, backticks replaced so it cannot close."""
    flat = " ".join(raw.split())
    # U+02CB looks like a backtick but does not end the span.
    flat = flat.replace("`", "\u02cb")
    return f"`{fit(flat, limit)}`" if flat else "`-`"


def short_time(value: object) -> str:
    """`13:44:05` from an RFC 3339 time; the value itself if it does not look like one."""
    if not isinstance(value, str):
        return "?"
    match = _TIME.search(value)
    return match.group(2) if match else value[:20]


def timestamp(value: object) -> str:
    """`2023-05-25 13:44:05Z` from an RFC 3339 time (seconds are enough to read)."""
    if not isinstance(value, str):
        return "?"
    match = _TIME.search(value)
    return f"{match.group(1)} {match.group(2)}Z" if match else value[:30]


def chunk_lines(lines: list[str], limit: int = SECTION_LIMIT) -> list[str]:
    """Join lines into texts of at most `limit` chars each (each line already fits)."""
    chunks: list[str] = []
    current = ""
    for line in lines:
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit and current:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def as_text(value: object) -> str:
    """A field value as display text; null and Falco's `<NA>` become empty."""
    if value is None or value == "<NA>":
        return ""
    return value if isinstance(value, str) else str(value)


def key_text(key: object) -> str:
    """A group key as `field=value, ...`."""
    if isinstance(key, Mapping):
        return ", ".join(f"{k}={as_text(v) or '<NA>'}" for k, v in key.items())
    return as_text(key)


def fit_line(text: str) -> str:
    """Already-escaped mrkdwn cut to the section limit (it is built from fitted parts)."""
    if len(text) <= SECTION_LIMIT:
        return text
    cut = text[: SECTION_LIMIT - len(MARKER)]
    return _PARTIAL_ENTITY.sub("", cut) + MARKER
