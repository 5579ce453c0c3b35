"""HTTP/1.1 over one connection for the http check: h11 events in, failures out in HTTP's words.

h11 does the framing (status line, headers, chunked and Content-Length bodies) so the probe does
not parse HTTP itself; this module only turns what h11 and the socket report into what the
server did. Guarantees of `HttpWire`:

- `send` and `next_event` raise `ProbeError` for anything the server does (a reset, a close
  before the end, bytes that are not HTTP, invalid HTTP) and nothing else, `TimeoutError` and
  `CancelledError` apart (the caller's deadline).
- A message never carries h11's wording or a Python type: it says what the server sent or did
  ("invalid status line "HTTP/1.1 OK-ish"", "the server closed the connection after 12 of 100
  bytes of the body"), quoting at most a few dozen bytes of it, escaped, on one line. An h11
  message this module does not know becomes "invalid HTTP response", never the message itself.
"""

from __future__ import annotations

import ast
import asyncio
import re
import ssl

import h11

from agent.model import Reason
from checks.net import READ_SIZE, ProbeError, connection_lost, quote_bytes, write
from checks.tls import ssl_failure

# The longest head (and chunk-size line) read: a longer one is refused, not buffered.
MAX_HEAD = 16 * 1024
# How much of the start of the answer is kept to quote when it is not HTTP.
_START = 32


class HttpWire:
    """h11 over one asyncio stream (plain or TLS). One request, one response; not reused."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.reader, self.writer = reader, writer
        self.start = b""  # the first bytes received, to tell "not HTTP" from "cut short" and quote them
        self.eof = False
        self.informational = 0  # 1xx responses received
        self.head: h11.Response | None = None  # the final response's head, once received
        self.body_bytes = 0  # of that response, as decoded from its framing

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.conn.send(e) or b"" for e in events)
        try:
            write(self.writer, data)
            await self.writer.drain()
        except ssl.SSLError as exc:
            raise ssl_failure(exc, "after the handshake") from None
        except OSError as exc:
            raise connection_lost(exc, "while sending the request") from None

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._failure(str(exc)) from None
            if isinstance(event, h11.Event):
                self._note(event)
                return event
            if event is h11.PAUSED:  # only after a complete response, or an upgrade we never ask for
                raise ProbeError(Reason.PROTOCOL_ERROR, "invalid HTTP response")
            self.conn.receive_data(await self._read())

    def _note(self, event: h11.Event) -> None:
        if isinstance(event, h11.InformationalResponse):
            self.informational += 1
        elif isinstance(event, h11.Response):
            self.head = event
        elif isinstance(event, h11.Data):
            self.body_bytes += len(event.data)

    async def _read(self) -> bytes:
        try:
            data = await self.reader.read(READ_SIZE)
        except ssl.SSLError as exc:
            raise ssl_failure(exc, "after the handshake") from None
        except OSError as exc:
            raise connection_lost(exc, "before a complete response") from None
        self.eof = not data
        had = len(self.start)
        if had < _START:
            self.start += data[: _START - had]
            # Fail fast on a peer that is not speaking HTTP, instead of waiting for a head that never ends.
            if had < 5 <= len(self.start) and not self.start.startswith(b"HTTP/"):
                raise self._not_http()
        return data

    def _not_http(self) -> ProbeError:
        start = quote_bytes(self.start)
        return ProbeError(Reason.PROTOCOL_ERROR, f"not an HTTP response (it starts with {start})")

    def _failure(self, detail: str) -> ProbeError:
        """What h11 refused, said as what the server did."""
        if not self.eof:
            return ProbeError(Reason.PROTOCOL_ERROR, _invalid(detail, in_body=self.head is not None))
        if not self.start:
            return ProbeError(Reason.CONNECTION_RESET, "the server closed the connection without a response")
        if not b"HTTP/".startswith(self.start[:5]):
            return self._not_http()
        return ProbeError(Reason.CONNECTION_RESET, f"the server closed the connection {self._where()}")

    def _where(self) -> str:
        """Where in the response the server closed the connection."""
        if self.head is None:
            if self.informational:
                return "after a 1xx response, before the final response"
            return "in the middle of the response head"
        headers = dict(self.head.headers)
        if b"transfer-encoding" in headers:
            return f"after {self.body_bytes} bytes of a chunked body, before its last chunk"
        length = headers.get(b"content-length", b"").decode("ascii", "replace")
        of = f" of {length}" if length else ""
        return f"after {self.body_bytes}{of} bytes of the body"


def _quoted_bytes(detail: str) -> str:
    """The bytes h11 quotes in `detail` (as `bytearray(b'...')`), quoted our way; '' if none."""
    m = re.search(r"bytearray\((b(['\"]).*\2)\)$", detail)
    if m is None:
        return ""
    try:
        data = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return ""
    if not isinstance(data, bytes):
        return ""
    return " " + quote_bytes(data.rstrip(b"\r\n"))


def _invalid(detail: str, in_body: bool) -> str:
    """h11's reason for refusing a response (`detail`), in HTTP's words."""
    if detail.startswith("illegal status line"):
        return f"invalid status line{_quoted_bytes(detail)}"
    if detail.startswith(("illegal request line", "no response line")):
        return "invalid status line (the response does not start with one)"
    if m := re.search(r"status_code should be in range .*, not (-?\d+)$", detail):
        return f"invalid status code {int(m.group(1)):03d}"
    if detail.startswith("illegal header line"):
        return f"invalid header line{_quoted_bytes(detail)}"
    if detail.startswith("continuation line at start of headers"):
        return "invalid header line (the first header is a continuation line)"
    if detail.startswith("conflicting Content-Length"):
        return "conflicting Content-Length headers"
    if detail.startswith("bad Content-Length"):
        return "invalid Content-Length header"
    if detail.startswith("multiple Transfer-Encoding"):
        return "more than one Transfer-Encoding header"
    if detail.startswith("Only Transfer-Encoding: chunked"):
        return "unsupported Transfer-Encoding (a response body is framed only by chunked)"
    if detail.startswith("illegal chunk header"):
        return f"invalid chunk size line{_quoted_bytes(detail)}"
    if detail.startswith("malformed chunk footer"):
        return "invalid chunked body (a chunk's data is not followed by CRLF)"
    if detail.startswith("Receive buffer too long"):
        what = "chunk size line" if in_body else "response head"
        return f"{what} longer than {MAX_HEAD // 1024} KiB"
    if "_SWITCH_UPGRADE" in detail:
        return "101 Switching Protocols, but the request asked for no upgrade"
    return "invalid HTTP response"
