"""In-process publish/subscribe of daemon events (the event API's feed).

Each event is serialised once, whatever the number of subscribers. Every subscriber
gets its own bounded queue; one that falls too far behind is cut off (its queue
receives ``None``) instead of letting memory grow. A *view* subscriber (the TCP
port: any local process, the daemon's own pages) gets only the events in
:data:`VIEW_EVENTS`: what the daemon is doing, never what anybody said.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

Event = dict[str, Any]

VIEW_EVENTS = frozenset({"state", "connection", "mute", "interruption"})


class Subscription:
    """One subscriber's queue of JSON texts (None: cut off, too slow)."""

    __slots__ = ("queue", "view_only")

    def __init__(self, maxsize: int, view_only: bool) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize)
        self.view_only = view_only


class EventHub:
    def __init__(self, maxsize: int = 512) -> None:
        self._maxsize = maxsize
        self._subs: set[Subscription] = set()

    def subscribe(self, *, view_only: bool = False) -> Subscription:
        sub = Subscription(self._maxsize, view_only)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: Event) -> None:
        if not self._subs:
            return
        text = json.dumps(event)
        private = event.get("type") not in VIEW_EVENTS
        for sub in list(self._subs):
            if private and sub.view_only:
                continue
            if sub.queue.qsize() >= self._maxsize - 1:
                self._subs.discard(sub)  # too slow: cut it off, with an end marker
                sub.queue.put_nowait(None)
            else:
                sub.queue.put_nowait(text)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
