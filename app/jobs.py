"""The worker's job, as pure functions: what a note's analysis is and what an event on the stream holds.

The API appends `{id}` to STREAM when a note is created; a worker of GROUP reads it, analyses the note
and writes the result to the note's row. Postgres is the source of truth: an event is only a hint that
a note is waiting, so a lost event delays a note (the worker's sweep finds it) but never loses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

STREAM = "notes:events"
GROUP = "workers"
# XADD trims the stream to about this many entries. A note whose event is trimmed away before a worker
# read it is found by the sweep (processed_at IS NULL), so the bound costs latency, never a note.
STREAM_MAXLEN = 10_000
# With tracing on (app.tracing), an entry also carries the request's trace context in these fields.
TRACE_FIELDS = (b"traceparent", b"tracestate", b"baggage")

SUMMARY_CHARS = 120
MAX_TAGS = 20
# A word: letters or digits, joined by an apostrophe or a hyphen ("don't", "well-known" count once).
WORD = re.compile(r"\w+(?:['\u2019-]\w+)*")
# A tag: "#name" at the start or after whitespace (not the fragment of a URL), up to 50 characters.
TAG = re.compile(r"(?<!\S)#(\w[\w-]{0,49})")


@dataclass(frozen=True)
class Analysis:
    words: int
    summary: str
    tags: list[str]


def analyse(title: str, body: str) -> Analysis:
    """Word count of the body, its first line as a short summary (the title when it is empty), tags."""
    first_line = next((line for line in body.splitlines() if line.strip()), "") or title
    tags: list[str] = []
    for match in TAG.finditer(f"{title}\n{body}"):
        tag = match.group(1).lower()
        if tag not in tags:
            tags.append(tag)
    return Analysis(
        words=len(WORD.findall(body)), summary=shorten(first_line, SUMMARY_CHARS), tags=tags[:MAX_TAGS]
    )


def shorten(text: str, limit: int) -> str:
    """Whitespace collapsed; cut at a word boundary with an ellipsis when longer than `limit`."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and not text[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "\u2026"


def event(note_id: int) -> dict[str, str]:
    """The stream entry for a created note."""
    return {"id": str(note_id)}


def trace_context(fields: Mapping[bytes, bytes] | None) -> dict[str, str]:
    """The W3C trace context the API added to an entry (`traceparent`, `tracestate`, `baggage`), if any."""
    return {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in (fields or {}).items()
        if key in TRACE_FIELDS
    }


def note_id(fields: Mapping[bytes, bytes] | None) -> int | None:
    """The note id of a stream entry, or None for an entry that is malformed or was trimmed away."""
    raw = (fields or {}).get(b"id", b"")
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        return None
    return int(raw)
