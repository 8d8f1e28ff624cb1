"""Keeping a device open: the microphone's and the speaker's keepers.

A :class:`DeviceKeeper` opens its device and, whenever it cannot (missing, busy, a sound
server that does not answer) or the open device fails (unplugged: its ``on_error``),
closes it and opens it again after a delay from :class:`~pi_agent.engine.backoff.Backoff`:
0.5 s, doubling to :data:`RETRY_MAX`. So a device that comes back is in use again within
a few seconds however long it was away, and a device that stays missing costs one open
attempt every few seconds. A close that hangs cannot hold up the next open: the devices
abandon a call stuck in a dead stream (see :mod:`.switch` and :mod:`.streams`).

PortAudio lists the devices only when it starts, and an open PortAudio stream keeps it
started: a device plugged in later stays invisible while the *other* device is open. A
keeper whose device is not found asks its partner (:meth:`DeviceKeeper.pair`) to reopen
briefly, if the partner's device is on PortAudio; at most on a schedule of its own (1 s,
doubling to 30 s) so that a device that stays missing does not keep interrupting the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ..engine.backoff import Backoff
from ..errors import DeviceError, DeviceNotFound
from . import ErrorCallback

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5  # s before the first retry
RETRY_MAX = 4.0  # s between retries at most: a device that is back is used within this
RELIST_FIRST = 1.0  # s before a missing device may ask its partner to reopen again
RELIST_MAX = 30.0


def _steady() -> float:
    return 1.0  # no jitter: nothing else competes for a local device


class DeviceKeeper:
    """Keeps one device open, forever (until its task is cancelled).

    ``open_(on_error)`` opens the device or raises :class:`DeviceError`; ``close()`` never
    raises. ``on_failed(which, message)`` is told of a failure (an open that failed, once
    per distinct message until the device is back; a failure of the open device, always);
    ``on_back(which)`` when the device is open again. ``portaudio``: the device is on
    PortAudio, so reopening it makes PortAudio list the devices afresh.
    """

    def __init__(self, which: str, open_: Callable[[ErrorCallback], Awaitable[None]],
                 close: Callable[[], Awaitable[None]], *, on_failed: Callable[[str, str], None],
                 on_back: Callable[[str], None], portaudio: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.which = which
        self.portaudio = portaudio
        self.is_open = False
        self._open, self._close = open_, close
        self._on_failed, self._on_back = on_failed, on_back
        self._clock, self._sleep = clock, sleep
        self._failed = asyncio.Event()
        self._retry = Backoff(initial=RETRY_FIRST, cap=RETRY_MAX, rng=_steady)
        self._relist = Backoff(initial=RELIST_FIRST, cap=RELIST_MAX, rng=_steady)
        self._relist_at = 0.0
        self._said: str | None = None  # the open failure last reported
        self._partner: DeviceKeeper | None = None

    @staticmethod
    def pair(a: DeviceKeeper, b: DeviceKeeper) -> None:
        """``a`` and ``b`` share PortAudio's device list: each may ask the other to reopen."""
        a._partner, b._partner = b, a

    async def run(self) -> None:
        while True:
            try:
                await self._open(self._device_failed)
            except DeviceError as e:
                if str(e) != self._said:
                    self._said = str(e)
                    self._on_failed(self.which, str(e))
                if isinstance(e, DeviceNotFound):
                    self._ask_partner_to_relist()
                await self._sleep(self._retry.next_delay())
                continue
            self._retry.reset()
            self._relist.reset()
            self._relist_at = 0.0
            self._said = None
            self.is_open = True
            self._on_back(self.which)
            await self._failed.wait()
            self._failed.clear()
            self.is_open = False
            with contextlib.suppress(Exception):
                await self._close()

    def reopen(self) -> None:
        """Close the open device and open it again at once."""
        if self.is_open:
            self._failed.set()

    def _device_failed(self, error: DeviceError) -> None:
        self._on_failed(self.which, str(error))
        self._failed.set()

    def _ask_partner_to_relist(self) -> None:
        partner, now = self._partner, self._clock()
        if partner is None or not partner.is_open or not partner.portaudio or now < self._relist_at:
            return
        self._relist_at = now + self._relist.next_delay()
        log.info("reopening the %s so that PortAudio lists the devices again (looking for the %s)",
                 partner.which, self.which)
        partner.reopen()
