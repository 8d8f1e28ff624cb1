"""sd_notify: tell systemd when the daemon is ready, what it is doing, that it is alive.

Implements the datagram protocol of ``sd_notify(3)`` directly (no ``systemd-python``):
newline-separated ``KEY=value`` assignments sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that
variable every call is a no-op, so the daemon runs the same in a terminal.

Nothing here raises: the service manager is an observer, and a lost notification
must never take the daemon down. A failed send is logged once, at debug level.

The watchdog: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` and kills the
service when ``WATCHDOG=1`` stops arriving. :func:`watchdog_loop` pings from the
event loop, so a blocked loop stops the pings, and only while ``is_healthy()``
holds, so a stuck state stops them too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to the service manager. Idempotent :meth:`close`.

    Build it with :meth:`from_env` in the daemon; tests may pass an address directly.
    ``address`` is the value of ``$NOTIFY_SOCKET`` (``/path`` or ``@abstract``);
    ``None`` or an unusable value makes every method a no-op.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _parse_address(address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._closed = False
        self._failure_logged = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (``os.environ`` by default).

        The watchdog counts as enabled only if ``WATCHDOG_PID`` is unset or names this
        process, as ``sd_watchdog_enabled(3)`` specifies.
        """
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw_usec = env.get("WATCHDOG_USEC", "")
        raw_pid = env.get("WATCHDOG_PID", "")
        try:
            if raw_usec and (not raw_pid or int(raw_pid) == os.getpid()):
                usec = int(raw_usec)
        except ValueError:
            log.debug("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", raw_usec, raw_pid)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (started by systemd with a notify socket, not closed)."""
        return self._address is not None and not self._closed

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
        recommends; ``None`` when systemd asked for no watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished: config read, devices open, local API listening."""
        return self.send("READY=1", *(_status(status) if status is not None else ()))

    def status(self, text: str) -> bool:
        """One line of free text for ``systemctl status`` (the daemon's state)."""
        return self.send(*_status(text))

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun (SIGHUP); ``READY=1`` follows once it is done."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def watchdog(self) -> bool:
        """Keep-alive for ``WatchdogSec=``."""
        return self.send("WATCHDOG=1")

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram. True if it was handed to the socket."""
        address = self._address
        if address is None or self._closed or not assignments:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(assignments).encode("utf-8", "replace"), address)
        except OSError as e:
            if not self._failure_logged:
                self._failure_logged = True
                log.debug("sd_notify to %r failed (%s); later failures are not logged", address, e)
            return False
        return True

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier({self._address!r}, watchdog_interval={self.watchdog_interval})"


def _parse_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` to a ``sendto`` address: ``@x`` is abstract (leading NUL), ``/x`` a path."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock:/other forms are for VMs and containers; a daemon on a Pi never gets them.
    log.debug("ignoring unsupported NOTIFY_SOCKET=%r", value)
    return None


def _status(text: str) -> tuple[str]:
    """A STATUS= assignment; newlines would start a new assignment, so they become spaces."""
    return ("STATUS=" + " ".join(text.splitlines()),)


async def watchdog_loop(
    notifier: Notifier,
    is_healthy: Callable[[], bool],
    *,
    interval: float | None = None,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` (default ``notifier.watchdog_interval``) while
    ``is_healthy()`` is true. Runs until cancelled; returns at once if there is no watchdog.

    Pings stop while the event loop is blocked (this coroutine cannot run) and while
    ``is_healthy()`` is false or raises; systemd then restarts the service after
    ``WatchdogSec=``, unless health comes back first.
    """
    period = notifier.watchdog_interval if interval is None else interval
    if period is None or period <= 0 or not notifier.enabled:
        return
    healthy = True
    while True:
        error: Exception | None = None
        try:
            now_healthy = bool(is_healthy())
        except Exception as e:  # a bug in the check must not end the pings' judge
            now_healthy, error = False, e
        if now_healthy:
            notifier.watchdog()
            if not healthy:
                log.warning("watchdog: healthy again, WATCHDOG=1 pings resumed")
        elif healthy:  # log the change, not every tick
            log.warning("watchdog: daemon unhealthy%s, WATCHDOG=1 pings withheld; systemd restarts "
                        "the service unless it recovers", " (health check failed)" if error else "",
                        exc_info=error)
        healthy = now_healthy
        await asyncio.sleep(period)
