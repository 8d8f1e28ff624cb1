"""``pi-agent``: the command line.

Configuration is read and validated before any audio device, GPIO pin or socket is
touched: a bad setting is one line per problem on stderr and exit code 78 (EX_CONFIG),
which the systemd unit lists in ``RestartPreventExitStatus=``.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import (EX_CONFIG, ApiSettings, AudioSettings, ButtonSettings, CaptureSettings, LedSettings, LogSettings,
                     SectionT, Settings, config_path, load_section, load_settings)
from .errors import AccessDenied, ConfigError, ConfigUnreadable, DeviceError, PiAgentError, access_hint

log = logging.getLogger("pi_agent.cli")


EX_UNAVAILABLE = 69  # `devices` found no device
EX_SOFTWARE = 70     # our own bug
EX_OSERR = 71        # the system refused something else
EX_NOPERM = 77       # this user may not read the config, open the socket or a device
EX_USAGE = 2         # argparse's own, for a flag a command does not take

# Commands that take no settings from the config file, and why (an explicit --config is refused).
NO_CONFIG = {
    "demo": "the demo runs on built-in settings (the fake agent, WAV files, mock pins)",
    "fake-agent": "the fake agent takes its options as flags (pi-agent fake-agent --help)",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command, choice or flag."""

    def error(self, message: str) -> NoReturn:
        # "invalid choice: 'x' (choose from 'a', 'b')"; Python 3.12.8+ and 3.13 leave the choices unquoted
        choice = re.search(r"invalid choice: '?(.*?)'? \(choose from (.*)\)$", message)
        if choice:
            options = [o.strip("'") for o in choice.group(2).split(", ")]
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
            if close:
                head = message.split(" (choose from")[0]
                message = f"{head}: did you mean '{close[0]}'? (choose from {choice.group(2)})"
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = sorted({o for parser in _all_parsers(self) for a in parser._actions for o in a.option_strings})
            hints = [f"{close[0]} for {word}"
                     for word in unknown.group(1).split() if word.startswith("--")
                     for close in [difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)] if close]
            if hints:
                message += f" (did you mean {', '.join(hints)}?)"
        super().error(message)


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _all_parsers(sub)
    return found


def _common() -> _Parser:
    """The options every command takes, before or after its name (``pi-agent --config X
    check`` and ``pi-agent check --config X``): SUPPRESS, so that one given before the
    command is not reset by the command's own default."""
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: $PI_AGENT_CONFIG, else /etc/pi-agent/config.toml)")
    common.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=argparse.SUPPRESS,
                        help="override log.level")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at debug level, and show the traceback of an unexpected error")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="pi-agent", parents=[common],
        description="Voice-assistant daemon for the Raspberry Pi, for ElevenLabs Conversational AI agents.",
        epilog="Settings come from PI_AGENT_* environment variables, then the TOML file "
               "(--config, $PI_AGENT_CONFIG, /etc/pi-agent/config.toml); see the README. "
               "--config, --log-level and -v go before or after the command.")
    parser.add_argument("--version", action="version", version=f"pi-agent {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser,
                                help="what to do (pi-agent COMMAND --help for its options)")

    def command(name: str, summary: str, more: str = "") -> argparse.ArgumentParser:
        """A command: ``summary`` in the list of commands, with ``more`` in its own --help."""
        text = summary[:1].upper() + summary[1:] + (f": {more}" if more else "") + "."
        return sub.add_parser(name, help=summary, description=text, parents=[common])

    command("run", "run the daemon (what the systemd unit starts)")
    demo = command("demo", "run the daemon against the built-in fake agent", "no sound card, no network, no "
                   "account; built-in settings, so --config is refused")
    demo.add_argument("--out", metavar="WAV", help="where to write the reply audio "
                      "(default: pi-agent-demo-reply-<uid>.wav in the temp directory)")
    fake = command("fake-agent", "serve a fake ElevenLabs agent on loopback", "protocol-faithful, for tests and "
                   "the demo; its options are flags, so --config is refused")
    from .fake_agent import add_arguments
    add_arguments(fake)
    status = command("status", "print the running daemon's state", "from its event API: a summary on a "
                     "terminal, JSON when piped or with --json")
    status.add_argument("--follow", "-f", action="store_true", help="keep printing events as they happen")
    status.add_argument("--json", action="store_true", help="print JSON even on a terminal")
    status.add_argument("--port", type=int, help="read the TCP view on this port instead of the Unix socket "
                        "(no transcripts)")
    say = command("say", "send TEXT to the agent and play the reply", "through the running daemon if there is "
                  "one, else on its own")
    say.add_argument("text", metavar="TEXT", help="what the user says")
    say.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds (default 30)")
    volume = command("volume", "set the running daemon's speaker volume", "0 (silent) to 100 (as received), or "
                     "up or down a step of 10; kept across restarts under systemd")
    volume.add_argument("level", metavar="N|up|down", type=_volume_change, help="the volume, or up or down")
    command("devices", "list the audio devices", "which open at 16 kHz, and which the config picks; "
            "exit 69 when there is none")
    command("check", "check config, devices, pins and the agent", "one pass/fail line each")
    leds = command("test-leds", "show every state's LED pattern in turn")
    leds.add_argument("--seconds", type=float, default=2.0, help="how long each pattern shows (default 2)")
    button = command("test-button", "print button presses, holds and long holds")
    button.add_argument("--seconds", type=float, default=30.0, help="how long to listen (default 30)")
    speaker = command("test-speaker", "play a tone on the speaker")
    speaker.add_argument("--seconds", type=float, default=1.0, help="how long the tone lasts (default 1)")
    speaker.add_argument("--freq", type=float, default=440.0, help="its frequency in Hz (default 440)")
    mic = command("test-mic", "record a few seconds", "print the level and whether VAD hears speech")
    mic.add_argument("--seconds", type=float, default=None, help="how long (default: 3, or 30 with --wake-word)")
    mic.add_argument("--play", action="store_true", help="play the recording back")
    mic.add_argument("--wake-word", action="store_true", help="print each detection of capture.wake_word with "
                     "its probability, and the near misses, to tune capture.wake_word_threshold")
    mic.add_argument("--echo", action="store_true", help="play a test signal and record it: the echo's level "
                     "and delay, how far cancellation brings it down, and whether audio.echo = aec will work")
    return parser


def _volume_change(text: str) -> int | str:
    from .audio.volume import parse_change
    try:
        return parse_change(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments, with the common options filled in wherever they were given."""
    args = _parser().parse_args(argv)
    for name, default in (("config", None), ("log_level", None), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.verbose and not args.log_level:
        args.log_level = "debug"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    cmd = args.command
    if args.config and cmd in NO_CONFIG:
        print(f"pi-agent {cmd}: --config is not used here: {NO_CONFIG[cmd]}; leave it out", file=sys.stderr)
        return EX_USAGE
    if not args.verbose:  # gpiozero tries each pin library in turn; the error that follows says what to do
        warnings.filterwarnings("ignore", message="Falling back from")
    try:
        return _dispatch(args)
    except ConfigUnreadable as e:
        print(f"pi-agent: configuration error: {e}", file=sys.stderr)
        # The service cannot fix that by restarting: 78 is in the unit's RestartPreventExitStatus=.
        return EX_CONFIG if cmd == "run" else EX_NOPERM
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"pi-agent: configuration error: {line}", file=sys.stderr)
        return EX_CONFIG
    except AccessDenied as e:
        print(f"pi-agent {cmd}: {e}", file=sys.stderr)
        return EX_NOPERM
    except DeviceError as e:
        print(f"pi-agent {cmd}: {e}", file=sys.stderr)
        return EX_UNAVAILABLE
    except PiAgentError as e:
        print(f"pi-agent {cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except PermissionError as e:
        if args.verbose:
            raise
        where = f"{e.filename}: {access_hint(e.filename)}" if e.filename else "use sudo, or join the device's group"
        print(f"pi-agent {cmd}: permission denied: {where}", file=sys.stderr)
        return EX_NOPERM
    except OSError as e:
        if args.verbose:
            raise
        print(f"pi-agent {cmd}: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return EX_OSERR
    except Exception as e:  # a bug: one line here; -v shows the traceback
        if args.verbose or cmd == "run":  # the daemon's journal keeps the whole story
            raise
        print(f"pi-agent {cmd}: unexpected error: {type(e).__name__}: {str(e)[:200]} "
              f"(a bug: run it again with -v for the traceback, and report it)", file=sys.stderr)
        return EX_SOFTWARE


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
        return _devices(_section(args, "audio", AudioSettings), config_path(args.config))
    from . import diagnostics as diag
    if cmd == "test-leds":
        leds = _section(args, "leds", LedSettings)
        _logging(_log_level(args))
        return asyncio.run(diag.test_leds(leds, args.seconds))
    if cmd == "test-button":
        button = _section(args, "button", ButtonSettings)
        pin = _section(args, "leds", LedSettings).button_pin(button.pin)  # a voice HAT preset's button
        _logging(_log_level(args))
        return asyncio.run(diag.test_button(button.model_copy(update={"pin": pin}), args.seconds))
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
        return asyncio.run(client.status(api, args.follow, as_json=args.json or not sys.stdout.isatty()))
    if cmd == "volume":
        from .service import client
        return asyncio.run(client.volume(_section(args, "api", ApiSettings), args.level))
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


def _devices(audio: AudioSettings, path: Path | None) -> int:
    """The table; then which devices the config picks. No device at all: the hint, exit 69."""
    from .audio.listing import format_device_table, list_devices
    try:
        devices = list_devices()
    except DeviceError as e:
        print(f"pi-agent devices: {e}", file=sys.stderr)
        return 1
    if not devices:
        hint = " ".join(format_device_table(devices).split()).strip("()")
        print(f"pi-agent devices: no audio device found: {hint}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(format_device_table(devices))
    source = path or "the defaults and environment"
    print(f"\n{source} picks: input_device = {audio.input_device!r}, output_device = {audio.output_device!r}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
