"""In-process publish/subscribe of daemon events (the event API's feed).

Each event is serialised once, whatever the number of subscribers. Every subscriber
gets its own bounded queue; one that falls too far behind is cut off (its queue
receives ``None``) instead of letting memory grow. A subscriber sees the events of its
level: ``full`` (the Unix socket) everything; ``captions`` (the kiosk page) what the
daemon does and what was said, as a screen shows it; ``status`` (any local program on
the TCP port) only what the daemon does. What a subscriber receives has the registered
secrets masked (``redact``: the daemon passes the log's redactor), so a server message that
echoes the API key reaches no client with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Literal

Event = dict[str, Any]
Level = Literal["full", "captions", "status"]

STATUS_EVENTS = frozenset({"state", "status", "connection", "mute", "interruption", "queue_status"})
CAPTION_EVENTS = STATUS_EVENTS | {"user_transcript", "agent_response", "agent_response_part",
                                  "agent_response_correction", "agent_response_complete",
                                  "captions_cleared"}
_SHOWN: dict[Level, frozenset[str] | None] = {"full": None, "captions": CAPTION_EVENTS, "status": STATUS_EVENTS}


class Subscription:
    """One subscriber's queue of JSON texts (None: cut off, too slow)."""

    __slots__ = ("level", "queue")

    def __init__(self, maxsize: int, level: Level) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize)
        self.level = level


class EventHub:
    def __init__(self, maxsize: int = 512, redact: Callable[[str], str] = lambda text: text) -> None:
        self._maxsize = maxsize
        self._redact = redact
        self._subs: set[Subscription] = set()

    def subscribe(self, level: Level = "full") -> Subscription:
        sub = Subscription(self._maxsize, level)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: Event) -> None:
        if not self._subs:
            return
        text = self._redact(json.dumps(event))
        kind = event.get("type")
        for sub in list(self._subs):
            shown = _SHOWN[sub.level]
            if shown is not None and kind not in shown:
                continue
            if sub.queue.qsize() >= self._maxsize - 1:
                self._subs.discard(sub)  # too slow: cut it off, with an end marker
                sub.queue.put_nowait(None)
            else:
                sub.queue.put_nowait(text)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
