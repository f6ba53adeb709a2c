"""HTTP/1.1 as uvicorn's httptools protocol serves it, with the limits a hostile client meets.

- A request head (request line and headers) of more than `MAX_HEAD_BYTES`, or with more than
  `MAX_HEADER_FIELDS` fields, is answered 431 `{"error": "RequestHeaderFieldsTooLarge", ...}` and
  the connection closed. While a head is incomplete the parser is fed no more than the room left
  under the limit, so a head never costs more than about `MAX_HEAD_BYTES` of memory (uvicorn alone
  read a 50 MB header whole); a pipelined head is counted from the first read after the previous
  request ended, so it may get one read (at most 256 KB) more.
- A request that is not complete, head and body, `request_timeout_s` after its first byte (for the
  first request of a connection: after connecting) closes the connection, after a 408 when its
  head was incomplete. A connection idle between requests is closed by uvicorn's own keep-alive
  timeout, and one upgraded to a websocket by the websocket protocol's own rules.

`http_protocol(settings.request_timeout_s)` is the class to give `uvicorn.Config(http=...)`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import error_response

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADER_FIELDS = 100
REQUEST_TIMEOUT_S = 30.0

log = logging.getLogger("trackd.http")

# Where a connection is: `idle` between requests (what arrives starts a head), `head` after the
# first byte of a request, `body` once its headers are complete (until the request is).
Phase = Literal["idle", "head", "body"]


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head that breaks a limit. It never leaves
    this module: `LimitedHttpProtocol` answers it with a 431."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on request heads and on the time to send a request.

    The deadline costs one clock read per request: one timer per connection is armed when a
    request starts and, when it fires, either closes a request that is still incomplete or is
    re-armed for the one in progress (a kept-alive connection serving many requests re-arms it at
    most once per `request_timeout_s`)."""

    request_timeout_s: float = REQUEST_TIMEOUT_S

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase: Phase = "idle"
        self._head_bytes = 0  # bytes fed to the parser since the current head started
        self._started_at: float | None = None  # loop time the request being received started
        self._deadline: asyncio.TimerHandle | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._started_at = self.loop.time()  # a connection that sends nothing is a slow request too
        self._deadline = self.loop.call_later(self.request_timeout_s, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_deadline()  # the websocket protocol owns the connection from here
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        """uvicorn's `data_received`, feeding an incomplete head at most the room under the limit."""
        self._unset_keepalive_if_required()
        try:
            if self._phase == "body" or self._head_bytes + len(data) < MAX_HEAD_BYTES:  # nearly always
                self._head_bytes += len(data)
                self.parser.feed_data(data)
            else:
                self._feed_bounded(memoryview(data))
        except _Refused as exc:
            self._refuse(431, "RequestHeaderFieldsTooLarge", str(exc))
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):  # raised in a callback, wrapped by the parser
                self._refuse(431, "RequestHeaderFieldsTooLarge", str(exc.__context__))
            else:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)

    def _feed_bounded(self, rest: memoryview) -> None:
        """Feed `rest` in pieces no longer than the room left under the head limit while a head is
        incomplete (a head that starts in the piece ending the previous request counts from the
        next piece)."""
        while rest and not self.transport.is_closing():
            if not self._head_open():
                self.parser.feed_data(rest)
                return
            room = MAX_HEAD_BYTES - self._head_bytes
            piece, rest = rest[:room], rest[room:]
            self._head_bytes += len(piece)
            self.parser.feed_data(piece)
            if self._head_open() and self._head_bytes >= MAX_HEAD_BYTES:
                raise _Refused(f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"
        if self._started_at is None:
            self._started_at = self.loop.time()
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout_s, self._check_deadline)

    def on_headers_complete(self) -> None:
        # Counted once the head is complete: its bytes already bound the parser's work on it.
        if len(self.headers) > MAX_HEADER_FIELDS:
            raise _Refused(f"more than {MAX_HEADER_FIELDS} header fields")
        self._phase = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase, self._head_bytes, self._started_at = "idle", 0, None
        super().on_message_complete()

    # Limits

    def _head_open(self) -> bool:
        """Whether what arrives next belongs to a request head (counted against the limit)."""
        return self._phase != "body"

    def _check_deadline(self) -> None:
        self._deadline = None
        if self._started_at is None or self.transport.is_closing():
            return  # idle: the next request arms it again
        left = self._started_at + self.request_timeout_s - self.loop.time()
        if left > 0:  # a later request than the one that armed it
            self._deadline = self.loop.call_later(left, self._check_deadline)
            return
        detail = f"the request was not complete within {self.request_timeout_s:g} s"
        if self._phase == "head":
            self._refuse(408, "RequestTimeout", detail)
        else:  # the application has the request: closing tells it the client is gone
            log.debug("%s: closed, %s", self.client, detail)
            self.transport.close()

    def _cancel_deadline(self) -> None:
        self._started_at = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer `status` with the usual `{"error", "detail"}` body and close the connection."""
        log.debug("%s: %d, %s", self.client, status, detail)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an earlier request's answer is being written: no second one in it
            return
        answer = error_response(status, code, detail)
        content = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *answer.raw_headers]:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"connection: close\r\n\r\n", bytes(answer.body)])
        self.transport.write(b"".join(content))
        self.transport.close()


def http_protocol(request_timeout_s: float = REQUEST_TIMEOUT_S) -> type[LimitedHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this request timeout."""
    if request_timeout_s == REQUEST_TIMEOUT_S:
        return LimitedHttpProtocol
    timeout = request_timeout_s

    class Configured(LimitedHttpProtocol):
        request_timeout_s = timeout

    return Configured
