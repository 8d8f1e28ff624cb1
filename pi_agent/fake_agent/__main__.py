"""``python -m pi_agent.fake_agent``: run the fake agent in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from ..errors import ConfigError
from .options import add_arguments, options_from_args
from .server import serve


async def _main(ns: argparse.Namespace) -> None:
    task = asyncio.create_task(serve(options_from_args(ns)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pi_agent.fake_agent", description="Run the fake ElevenLabs agent.")
    add_arguments(parser)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_main(ns))
    except ConfigError as exc:
        parser.error(str(exc))
    except OSError as exc:  # e.g. the port is taken
        print(f"fake agent: cannot listen on {ns.host}:{ns.port}: {exc.strerror or exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
