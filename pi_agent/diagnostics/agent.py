"""``check``'s agent line: open one conversation the way the daemon does, then close it."""

from __future__ import annotations

import asyncio
import time

from ..config import Settings
from ..engine import events as ev
from ..errors import ConnectError
from ..net.conversation import build_conversation


async def reach_agent(settings: Settings) -> str:
    """Open one conversation the way the daemon does (signed URL with a key, the handshake,
    the metadata), then close it with 1000. Raises :class:`ConnectError` saying why not."""
    s = settings.session
    key = settings.api_key.get_secret_value() if settings.api_key else None
    loop = asyncio.get_running_loop()
    result: asyncio.Future[ev.Opened] = loop.create_future()

    def on_event(event: ev.Event) -> None:
        if result.done():
            return
        if isinstance(event, ev.Opened):
            result.set_result(event)
        elif isinstance(event, ev.Closed):
            result.set_exception(ConnectError(event.reason))

    # on demand whatever the configured policy: one conversation, the one engine.request asks for;
    # no microphone audio is sent, so it needs no encoder
    engine, session = build_conversation(settings, on_event=on_event, policy="on_demand",
                                         encoder_factory=lambda fmt: lambda pcm: pcm)
    started = time.monotonic()
    engine.request(started)
    runner = asyncio.create_task(session.run())
    try:
        opened = await asyncio.wait_for(result, 2 * s.connect_timeout + 2)
    except TimeoutError:
        raise ConnectError(f"no conversation within {2 * s.connect_timeout + 2:g} s") from None
    finally:
        await session.close(2.0)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    ms = (time.monotonic() - started) * 1000
    how = "signed URL fetched" if key else "public agent"
    return (f"{how}; conversation opened in {ms:.0f} ms (agent audio {opened.agent_output_audio_format}, "
            f"mic audio {opened.user_input_audio_format})")
