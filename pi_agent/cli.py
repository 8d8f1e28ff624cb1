"""``pi-agent``: the command line.

Configuration is read and validated before any audio device, GPIO pin or socket is
touched: a bad setting is one line per problem on stderr and exit code 78 (EX_CONFIG),
which the systemd unit lists in ``RestartPreventExitStatus=``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import (EX_CONFIG, ApiSettings, AudioSettings, ButtonSettings, CaptureSettings, LedSettings, LogSettings,
                     SectionT, Settings, config_path, load_section, load_settings)
from .errors import ConfigError, DeviceError

log = logging.getLogger("pi_agent.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pi-agent",
        description="Voice-assistant daemon for the Raspberry Pi, for ElevenLabs Conversational AI agents.",
        epilog="Settings come from PI_AGENT_* environment variables, then the TOML file "
               "(--config, $PI_AGENT_CONFIG, /etc/pi-agent/config.toml); see the README.")
    parser.add_argument("--version", action="version", version=f"pi-agent {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override log.level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("run", help="run the daemon (what the systemd unit starts)")
    demo = sub.add_parser("demo", help="run the whole daemon against the built-in fake agent: "
                          "no sound card, no network, no account")
    demo.add_argument("--out", metavar="WAV", help="where to write the reply audio "
                      "(default: pi-agent-demo-reply-<uid>.wav in the temp directory)")
    fake = sub.add_parser("fake-agent", help="serve a protocol-faithful fake ElevenLabs agent on loopback")
    from .fake_agent import add_arguments
    add_arguments(fake)
    status = sub.add_parser("status", help="print the running daemon's state from its event API")
    status.add_argument("--follow", "-f", action="store_true", help="keep printing events as they happen")
    status.add_argument("--port", type=int, help="read the TCP view on this port instead of the Unix socket "
                        "(no transcripts)")
    say = sub.add_parser("say", help="send TEXT to the agent as a user message and play the reply")
    say.add_argument("text", metavar="TEXT")
    say.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    sub.add_parser("devices", help="list the audio devices, and which open at 16 kHz")
    sub.add_parser("check", help="check the config, the devices, the GPIO pins and that the agent "
                   "answers; one pass/fail line each")
    leds = sub.add_parser("test-leds", help="show every state's LED pattern in turn")
    leds.add_argument("--seconds", type=float, default=2.0, help="per pattern")
    button = sub.add_parser("test-button", help="print button presses, holds and long holds")
    button.add_argument("--seconds", type=float, default=30.0)
    speaker = sub.add_parser("test-speaker", help="play a tone on the speaker")
    speaker.add_argument("--seconds", type=float, default=1.0)
    speaker.add_argument("--freq", type=float, default=440.0)
    mic = sub.add_parser("test-mic", help="record a few seconds; print the level and whether VAD hears speech")
    mic.add_argument("--seconds", type=float, default=None, help="how long (default: 3, or 30 with --wake-word)")
    mic.add_argument("--play", action="store_true", help="play the recording back")
    mic.add_argument("--wake-word", action="store_true", help="print each detection of capture.wake_word with "
                     "its probability, and the near misses, to tune capture.wake_word_threshold")
    mic.add_argument("--echo", action="store_true", help="play a test signal and record it: the echo's level "
                     "and delay, how far cancellation brings it down, and whether audio.echo = aec will work")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"pi-agent: configuration error: {line}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log"] = {"level": args.log_level}
    return load_settings(args.config, **overrides)


def _section(args: argparse.Namespace, name: str, kind: type[SectionT]) -> SectionT:
    return load_section(args.config, name, kind)


def _log_level(args: argparse.Namespace) -> str:
    return str(args.log_level or _section(args, "log", LogSettings).level)


def _logging(level: str, secrets: Sequence[str] = ()) -> None:
    from .service.logging import route_native_stderr, setup_logging
    route_native_stderr()  # ALSA/PortAudio lines become log records too (priority, rate limit)
    setup_logging(level, secrets=secrets)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection is ours to say


def _dispatch(args: argparse.Namespace) -> int:
    """Each command reads only the settings it uses: diagnostics need no agent_id, and a
    mistake in a section a command does not use is not its to report."""
    cmd = args.command
    if cmd == "fake-agent":
        _logging(args.log_level or "info")
        return _run_fake_agent(args)
    if cmd == "demo":
        from .demo import run_demo
        _logging(args.log_level or "info")
        return asyncio.run(run_demo(out=Path(args.out) if args.out else None))
    if cmd == "devices":
        return _devices()
    from . import diagnostics as diag
    if cmd == "test-leds":
        leds = _section(args, "leds", LedSettings)
        _logging(_log_level(args))
        return asyncio.run(diag.test_leds(leds, args.seconds))
    if cmd == "test-button":
        button = _section(args, "button", ButtonSettings)
        _logging(_log_level(args))
        return asyncio.run(diag.test_button(button, args.seconds))
    if cmd == "test-speaker":
        audio = _section(args, "audio", AudioSettings)
        _logging(_log_level(args))
        return asyncio.run(diag.test_speaker(audio, args.seconds, args.freq))
    if cmd == "test-mic":
        audio, capture = _section(args, "audio", AudioSettings), _section(args, "capture", CaptureSettings)
        _logging(_log_level(args))
        if args.echo:
            return asyncio.run(diag.test_echo(audio, args.seconds or 6.0))
        seconds = args.seconds if args.seconds is not None else 30.0 if args.wake_word else 3.0
        return asyncio.run(diag.test_mic(audio, capture, seconds, args.play, args.wake_word))
    if cmd == "status":
        from .service import client
        api = _section(args, "api", ApiSettings)
        if args.port is not None:
            api = api.model_copy(update={"port": args.port, "socket": "off"})
        return asyncio.run(client.status(api, args.follow))
    if cmd == "say":
        from .service import client
        code = asyncio.run(client.say(_section(args, "api", ApiSettings), args.text, args.timeout))
        if code is not None:
            return code
        # No daemon is running: hold the exchange ourselves (this needs the whole configuration).
    settings = _settings(args)
    secrets = [settings.api_key.get_secret_value()] if settings.api_key else []
    _logging(settings.log.level, secrets)
    if cmd == "run":
        from .run import run_daemon
        return asyncio.run(run_daemon(settings, reload=lambda: _settings(args)))
    if cmd == "say":
        from .demo import run_say
        return asyncio.run(run_say(settings, args.text, timeout=args.timeout))
    if cmd == "check":
        path = config_path(args.config)
        return asyncio.run(diag.check(settings, str(path) if path else "environment and defaults"))
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the choices


def _run_fake_agent(args: argparse.Namespace) -> int:
    from .run import install_signal_handlers
    from .fake_agent import options_from_args, serve

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        server = asyncio.create_task(serve(options_from_args(args)))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if server.done():
            exc = server.exception()
            if isinstance(exc, OSError):
                print(f"pi-agent fake-agent: cannot listen: {exc.strerror or exc}", file=sys.stderr)
                return 1
            if exc is not None:
                raise exc
            return 0
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        return 0

    return asyncio.run(main())


def _devices() -> int:
    from .audio.listing import format_device_table, list_devices
    try:
        print(format_device_table(list_devices()))
    except DeviceError as e:
        print(f"pi-agent devices: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
