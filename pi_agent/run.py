"""Running the daemon as a service: signals, the file limit, and reloading on SIGHUP.

:func:`run_daemon` runs one :class:`~pi_agent.daemon.Daemon` until SIGTERM or SIGINT; with
a reload function, SIGHUP reads the configuration again and restarts the daemon in-process
with a valid new one (an invalid one is one error line, and the old one stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable

from .audio.echo import require as require_echo_canceller
from .config import Settings
from .daemon import Daemon
from .errors import ConfigError
from .parts import Parts, make_wake_word
from .service.logging import setup_logging

log = logging.getLogger("pi_agent.daemon")


def _raise_file_limit(wanted: int = 4096) -> None:
    """Room for the event API's connections beside the devices and the agent's (the unit
    sets LimitNOFILE; a terminal's soft limit is often 1024). Best effort."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def install_signal_handlers(stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    for sig, event in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, reload)):
        if event is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, event.set)


async def run_daemon(settings: Settings, parts: Parts | None = None, stop: asyncio.Event | None = None,
                     reload: Callable[[], Settings] | None = None) -> int:
    """Run until SIGTERM or SIGINT. With ``reload``, SIGHUP reads the configuration again:
    a valid new one restarts the daemon with it in-process (the conversation is closed
    with 1000, the devices reopened); an invalid one is one error line, and the daemon
    goes on with the old."""
    stop = stop or asyncio.Event()
    hup = asyncio.Event()
    install_signal_handlers(stop, hup if reload is not None else None)
    _raise_file_limit()
    while True:
        daemon = Daemon(settings, parts)
        halt = asyncio.Event()
        runner = asyncio.ensure_future(daemon.run(halt))
        while True:
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hup.wait())]
            await asyncio.wait([runner, *waiters], return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if runner.done():
                return runner.result()
            if stop.is_set():
                halt.set()
                return await runner
            hup.clear()
            assert reload is not None
            try:
                new = reload()
                make_wake_word(new.capture)  # a model that does not load is refused like a bad setting
                if new.audio.echo == "aec":
                    require_echo_canceller()
            except ConfigError as e:
                for line in str(e).splitlines():
                    log.error("reload refused, the configuration in use stays: %s", line)
                continue
            if new == settings:
                log.info("reload: the configuration has not changed")
                continue
            log.info("reload: restarting with the new configuration")
            daemon.notifier.reloading()
            halt.set()
            await runner
            settings = new
            setup_logging(settings.log.level, secrets=[settings.api_key.get_secret_value()] if settings.api_key else ())
            break


__all__ = ["install_signal_handlers", "run_daemon"]
