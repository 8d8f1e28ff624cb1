"""The one way the daemon runs a blocking call: in a daemon thread, with a time limit.

A sound server that stopped answering can block PortAudio's open or close for good,
and a signed-URL request can hang until its own timeout; the event loop must never
wait with them, and SIGTERM must not either (the interpreter does not join daemon
threads at exit, unlike ``asyncio.to_thread``'s workers).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import PiAgentError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_blocking(
    fn: Callable[[], T],
    *,
    timeout: float,
    what: str,
    error: type[PiAgentError],
    hint: str = "",
    dispose: Callable[[T], None] | None = None,
) -> T:
    """``fn()`` in a daemon thread; after ``timeout`` seconds raise ``error`` naming ``what``.

    If we give up (timeout or cancellation), a result that arrives later is handed to
    ``dispose`` (on the loop, or in the thread if the loop is gone). Exceptions from
    ``fn`` are re-raised here: the thread never dies silently.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    abandoned = False

    def deliver(ok: bool, value: T | BaseException) -> None:
        if abandoned or fut.done():
            if ok and dispose is not None:
                dispose(value)  # type: ignore[arg-type]  # ok: value is the T that fn returned
            elif not ok:
                log.debug("%s failed after we gave up: %r", what, value)
        elif ok:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            fut.set_exception(value)  # type: ignore[arg-type]  # not ok: value is the exception

    def work() -> None:
        outcome: tuple[bool, T | BaseException]
        try:
            outcome = (True, fn())
        except BaseException as exc:  # handed to the awaiting task
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # loop closed: we are alone now
            if outcome[0] and dispose is not None:
                try:
                    dispose(outcome[1])  # type: ignore[arg-type]
                except Exception:
                    log.exception("disposing the result of %s", what)

    threading.Thread(target=work, name=f"pi-agent: {what}", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        abandoned = True
        raise error(f"{what} did not finish within {timeout:g} s{hint}") from None
    except asyncio.CancelledError:
        abandoned = True
        raise
