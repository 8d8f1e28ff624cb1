"""One way for a test to wait until something holds: ``await wait_until(...)``.

Every test helper that waits for a condition (the daemon's event API, the fake agent
seen from a client or over HTTP, the page in the browser, the audio devices, the
session harness) goes through ``wait_until``, so a timeout always fails the same way:
an ``AssertionError`` that says what was awaited, for how long, and what was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,
    what: str,
    *,
    changed: asyncio.Event | Callable[[], asyncio.Event] | None = None,
    poll: float = 0.05,
    seen: Callable[[], object] | None = None,
) -> T:
    """Re-check ``predicate()`` until it returns something truthy, and return that.

    The predicate may be a coroutine function. Between checks the helper sleeps ``poll``
    seconds or, with ``changed``, waits for that event (at most ``poll`` seconds) and
    clears it before waiting; ``changed`` may also be a function returning the current
    event, for holders that replace the event after setting it. After ``timeout``
    seconds it raises ``AssertionError("timed out after <timeout> s waiting for
    <what>; seen: <seen()>")`` (``seen`` is optional: what the test saw instead).
    The predicate is always checked once, even with a zero timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f"; seen: {seen()}" if seen is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        if changed is None:
            await asyncio.sleep(min(poll, remaining))
            continue
        event = changed() if callable(changed) else changed
        event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), min(poll, remaining))
