"""The session: the thin I/O shell around the conversation engine.

It moves bytes and time between the world and :class:`~pi_agent.engine.conversation.Engine`
and decides nothing: it sleeps until the engine's next deadline, carries out the
engine's actions (connect, ping, close, abort), writes what the engine has to send,
feeds it what the link reads, and hands the engine's events to the owner
(``on_event``: the controller). Everything runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import websockets

from .. import __version__
from ..engine import events as ev
from ..engine.backoff import Outcome, classify_http_status
from ..engine.conversation import MAX_FRAME, Engine
from ..errors import ConnectError
from .link import Link, open_link
from .signed_url import clock_error, parse_retry_after, reason_text, redact_url

log = logging.getLogger("pi_agent.session")

WAKE_SLACK = 0.001  # s past a deadline, so that the engine finds it due


class Connector(Protocol):
    """Opens one WebSocket connection (:func:`~pi_agent.net.link.open_link` or a test's own)."""

    def __call__(self, url: str, handler: Session, *, timeout: float, max_size: int,
                 user_agent: str) -> Awaitable[Link]: ...


class Session:
    """Carries out what the engine asks and feeds it what happens. See the module docstring.

    ``url()`` gives the URL for one conversation (public, or freshly signed); ``connect``
    opens the socket; ``on_event`` receives every engine event, in order.
    """

    def __init__(self, engine: Engine, *, url: Callable[[], Awaitable[str]],
                 on_event: Callable[[ev.Event], None], connect_timeout: float,
                 connect: Connector = open_link, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._url = url
        self._on_event = on_event
        self._connect_timeout = connect_timeout
        self._connect = connect
        self._clock = clock
        self._link: Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sleeping_until = math.inf
        self._pumping = False
        self._again = False
        self._gone: asyncio.Future[None] | None = None  # set when the link is closed (shutdown)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: wake at the engine's deadlines (or when it has an earlier one)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.engine.tick(self._clock())
                self.pump()
                deadline = self.engine.next_deadline()
                self._sleeping_until = math.inf if deadline is None else deadline
                waiter = self._waiter = loop.create_future()
                timer = (None if deadline is None else
                         loop.call_later(max(0.0, deadline - self._clock()) + WAKE_SLACK, _settle, waiter))
                try:
                    await waiter
                finally:
                    if timer is not None:
                        timer.cancel()
        finally:
            if self._connecting is not None:
                self._connecting.cancel()
            if self._link is not None:
                self._link.abort()

    def pump(self) -> None:
        """Carry out the engine's actions, write what it has to send, hand on its events.
        Call after feeding the engine anything; re-entrant calls fold into the running one."""
        if self._pumping:
            self._again = True
            return
        engine = self.engine
        self._pumping = True
        try:
            while True:
                self._again = False
                for action in engine.actions():
                    self._carry_out(action)
                link = self._link
                if link is not None:
                    for text in engine.data_to_send(self._clock()):
                        link.send_text(text)
                for event in engine.events():
                    self._on_event(event)
                if not self._again:
                    break
        finally:
            self._pumping = False
        deadline = engine.next_deadline()
        if deadline is not None and deadline < self._sleeping_until and self._waiter is not None:
            _settle(self._waiter)  # the loop sleeps past a new, earlier deadline: wake it

    def send_audio(self, frame: bytes, speech: bool, now: float) -> None:
        """One mic frame: written at once when the engine says it can go (one call, no pump: a
        frame every 20 ms), else queued by the engine and pumped."""
        text = self.engine.audio_to_send(frame, speech, now)
        link = self._link
        if text is None or link is None:  # (an open engine has a link: None is not seen)
            self.pump()
        else:
            link.send_text(text)

    async def close(self, timeout: float) -> None:
        """Shutdown: the conversation is closed with 1000 (the link dropped if that takes
        longer than ``timeout``); no new one is opened."""
        self.engine.shutdown(self._clock())
        if self._connecting is not None:
            self._connecting.cancel()
        self.pump()
        if self._link is not None:
            self._gone = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._gone), timeout)
            except TimeoutError:
                if self._link is not None:
                    self._link.abort()

    def _carry_out(self, action: ev.Action) -> None:
        link = self._link
        if isinstance(action, ev.Connect):
            self._connecting = asyncio.get_running_loop().create_task(self._open(), name="pi-agent-connect")
        elif link is None:
            return  # the connection went meanwhile
        elif isinstance(action, ev.Ping):
            link.ping()
        elif isinstance(action, ev.Close):
            link.close(action.code, action.reason)
        else:
            link.abort()

    async def _open(self) -> None:
        """One attempt: the URL (signed if need be), then the socket and the handshake."""
        engine = self.engine
        try:
            try:
                url = await self._url()
            except ConnectError as e:
                engine.connect_failed(Outcome.RETRY if e.retryable else Outcome.FATAL, str(e), self._clock(),
                                      e.retry_after)
                return
            log.debug("connecting to %s", redact_url(url))
            try:
                await self._connect(url, self, timeout=self._connect_timeout, max_size=MAX_FRAME,
                                    user_agent=f"pi-agent/{__version__}")
            except websockets.InvalidStatus as e:
                status = e.response.status_code
                outcome = classify_http_status(status)
                hint = " (check the API key and agent_id)" if outcome is Outcome.FATAL else ""
                engine.connect_failed(outcome, f"handshake refused: HTTP {status}{hint}", self._clock(),
                                      parse_retry_after(e.response.headers.get("Retry-After")))
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as e:
                # a TLS refusal because the clock is not set yet says so (NTP has not answered yet)
                engine.connect_failed(Outcome.RETRY, clock_error(e) or f"cannot connect: {reason_text(e)}",
                                      self._clock())
            except Exception as e:  # a bug of ours must not stop the reconnecting
                log.exception("unexpected error while connecting")
                engine.connect_failed(Outcome.RETRY, f"cannot connect: internal error {type(e).__name__}",
                                      self._clock())
        finally:
            self._connecting = None
            self.pump()

    # --- what the link reports (LinkHandler) ---------------------------------------------------

    def link_open(self, link: Link) -> None:
        self._link = link
        self.engine.connection_open(self._clock())
        self.pump()

    def link_closing(self) -> None:
        self.engine.closing(self._clock())
        self.pump()

    def link_heard(self) -> None:
        self.engine.heard(self._clock())

    def link_frame(self, data: str | bytes) -> None:
        self.engine.receive(data, self._clock())
        self.pump()

    def link_closed(self, code: int | None, reason: str, sent_code: int | None) -> None:
        self._link = None
        self.engine.connection_closed(self._clock(), code=code, reason=reason, sent_code=sent_code)
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self.pump()

    def link_pause(self) -> None:
        self.engine.pause_writing()

    def link_resume(self) -> None:
        self.engine.resume_writing()
        self.pump()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
