"""uvicorn's HTTP/1.1 protocol with two deadlines it lacks, so idle sockets cannot fill the server.

- A request head must arrive within HEAD_SECONDS of the connection (or of the previous answer):
  uvicorn's h11 protocol times out only an idle kept-alive connection, and any byte re-arms that,
  so a client that sends nothing, or a header byte a second (slowloris), held its connection for
  ever; enough of them and every new client met uvicorn's "Service Unavailable".
- An answer whose client stops reading is dropped once its write buffer has stayed full for
  STALLED_WRITE_SECONDS: closing the transport waits for the buffer to drain, which a client that
  never reads never lets happen, so the socket is aborted instead.
The app (app.py) bounds the body's arrival and a streamed answer's writes itself; these deadlines
are for what happens before the app sees a request and after it has given up on one.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_SECONDS = 30
STALLED_WRITE_SECONDS = 60


class DeadlineH11Protocol(H11Protocol):
    """H11Protocol plus the request-head and stalled-write deadlines (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._expect_request_head()

    def _expect_request_head(self) -> None:
        self._cancel_head_timer()
        self._cycle_awaited = self.cycle
        self._head_timer = self.loop.call_later(HEAD_SECONDS, self.transport.abort)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._cycle_awaited:  # a whole request head arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        self._expect_request_head()  # before super(): a pipelined request it starts cancels it
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(STALLED_WRITE_SECONDS, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().connection_lost(exc)
