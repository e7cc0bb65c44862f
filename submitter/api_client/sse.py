"""Server-sent events: the WHATWG event-stream parser, sans IO."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent"]


@dataclass(frozen=True)
class ServerSentEvent:
    type: str
    data: str
    last_id: str | None


class SSEDecoder:
    """The WHATWG event-stream parser, fed bytes as they arrive.

    Lines end in CR, LF or CRLF (also split across chunks); `:` lines are comments;
    `data` lines join with newlines; the last event id survives events and reconnections
    (it is what `Last-Event-ID` resumes from), as does the `retry` delay in seconds.
    """

    _BREAK = re.compile(r"\r\n|\r|\n")

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self.retry: float | None = None
        self._id_buffer = last_id
        self.reset()

    def reset(self) -> None:
        """A new connection: what was half-received on the last one is discarded."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._after_cr = False
        self._first = True
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._decoder.decode(chunk)
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        if not text:
            return []
        self._after_cr = text.endswith("\r")
        lines = self._BREAK.split(self._partial + text)
        self._partial = lines.pop()
        return [event for event in map(self.line, lines) if event is not None]

    def line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value) / 1000
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_id = self._id_buffer
        data, kind = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(kind or "message", "\n".join(data), self.last_id)
