"""Connections that keep the server waiting are closed: uvicorn's h11 protocol with a header and a body timeout.

uvicorn bounds only the wait between two requests of a kept-alive connection (its timeout_keep_alive). A client
that opens a connection and sends nothing, sends its headers a byte at a time, or stops in the middle of a body
would hold the connection, and for a body the request's task, for as long as it likes. This protocol, given to
uvicorn as its `http` class, closes such a connection: each request's headers must be complete within
`header_timeout` seconds of the connection opening (or of the previous response), and while a body is being
received at most `body_timeout` seconds may pass without a byte of it arriving. Time the server itself spends
(converting, or not reading a body it has paused) never counts against the client.
"""
from __future__ import annotations

import asyncio

import h11
from loguru import logger
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADERS, BODY = "headers", "body"


class TimedH11Protocol(H11Protocol):
    """uvicorn's H11Protocol, timing what the client owes; subclassed with the timeouts by `timed_protocol`."""
    header_timeout: float = 30.0
    body_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.stall_timer: asyncio.TimerHandle | None = None
        self.waiting: str | None = None
        self.received = 0
        super().connection_made(transport)
        self._follow_state()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)
        self._follow_state(reset_body=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_state()

    def connection_lost(self, exc: Exception | None) -> None:
        self._wait(None)
        super().connection_lost(exc)

    def _follow_state(self, reset_body: bool = False) -> None:
        """Time what the client owes now: the next request's headers (counted from when they became due, not
        restarted by each byte), the rest of a body (restarted by each byte), or nothing."""
        if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed or a WebSocket now
            self._wait(None)
        elif self.conn.their_state is h11.IDLE:
            if self.waiting != HEADERS:
                self.received = 0
                self._wait(HEADERS)
        elif self.conn.their_state is h11.SEND_BODY:
            if reset_body or self.waiting != BODY:
                self._wait(BODY)
        else:
            self._wait(None)

    def _wait(self, what: str | None) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        self.waiting = what
        seconds = self.header_timeout if what == HEADERS else self.body_timeout
        self.stall_timer = self.loop.call_later(seconds, self._stalled) if what else None

    def _stalled(self) -> None:
        self.stall_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.waiting == BODY and self.flow.read_paused:  # the application is not reading: not the client's delay
            self._wait(BODY)
            return
        self._log_stall()
        self.transport.close()

    def _log_stall(self) -> None:
        client = "%s:%d" % self.client if self.client else "a client"
        if self.waiting == HEADERS and self.received == 0:
            logger.info(f"closed an idle connection from {client}: no request within {self.header_timeout:g} s")
        elif self.waiting == HEADERS:
            logger.warning(f"closed the connection from {client}: its request headers were not complete within "
                           f"{self.header_timeout:g} s (--header_timeout)")
        else:
            logger.warning(f"closed the connection from {client}: no byte of the body of {self.scope['method']} "
                           f"{self.scope['path']} arrived for {self.body_timeout:g} s (--body_timeout)")


def timed_protocol(header_timeout: float, body_timeout: float) -> type[TimedH11Protocol]:
    """The protocol class to give uvicorn (`http=`) for these timeouts, in seconds."""
    return type("TimedH11Protocol", (TimedH11Protocol,),
                {"header_timeout": header_timeout, "body_timeout": body_timeout})
