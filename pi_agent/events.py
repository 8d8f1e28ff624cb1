"""In-process publish/subscribe of daemon events (the event API's feed).

Every subscriber gets its own bounded queue; one that falls too far behind is dropped
(its queue receives ``None``) instead of letting memory grow.
"""

from __future__ import annotations

import asyncio
from typing import Any

Event = dict[str, Any]


class EventHub:
    def __init__(self, maxsize: int = 512) -> None:
        self._maxsize = maxsize
        self._queues: set[asyncio.Queue[Event | None]] = set()

    def subscribe(self) -> asyncio.Queue[Event | None]:
        q: asyncio.Queue[Event | None] = asyncio.Queue(self._maxsize)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event | None]) -> None:
        self._queues.discard(q)

    def publish(self, event: Event) -> None:
        for q in list(self._queues):
            if q.qsize() >= self._maxsize - 1:
                self._queues.discard(q)  # too slow: cut it off, with an end marker
                q.put_nowait(None)
            else:
                q.put_nowait(event)

    @property
    def subscribers(self) -> int:
        return len(self._queues)
