"""The CLI's side of the event API: ``pi-agent status``, ``pi-agent say`` and ``pi-agent volume``
talking to a running daemon over its Unix socket (or, for ``status``, the TCP view)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect, unix_connect

from ..config import ApiSettings
from ..errors import AccessDenied, access_hint
from .api import HOST
from .socket_paths import client_socket_paths

OPEN_TIMEOUT = 3.0


class Unreachable(Exception):
    """No daemon answers where we looked; the message says where that was."""


@contextlib.asynccontextmanager
async def open_daemon(api: ApiSettings, *, view: bool = True) -> AsyncIterator[tuple[ClientConnection, str]]:
    """The first daemon that answers: on a Unix socket (full access), else (``view``) the TCP
    view. Yields the connection and where it is."""
    tried: list[str] = []
    denied: list[Path] = []
    for path in client_socket_paths(api.socket):
        try:
            if not path.exists():
                continue
        except PermissionError:  # /run/pi-agent is 0750 pi-agent:pi-agent
            denied.append(path)
            continue
        try:
            ws = await unix_connect(str(path), uri="ws://localhost/events", open_timeout=OPEN_TIMEOUT,
                                    compression=None, max_size=None)
        except PermissionError:
            denied.append(path)
            continue
        except (OSError, TimeoutError, websockets.InvalidHandshake) as e:
            tried.append(f"{path} ({_why(e)})")
            continue
        async with ws:
            yield ws, str(path)
        return
    if view and api.port:
        url = f"ws://{HOST}:{api.port}/events"
        try:
            ws = await connect(url, open_timeout=OPEN_TIMEOUT, compression=None)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as e:
            tried.append(f"{url} ({_why(e)})")
        else:
            async with ws:
                yield ws, f"{url} (a view: no transcripts; the Unix socket gives everything)"
            return
    if denied:
        raise AccessDenied(f"cannot open the daemon's socket {denied[0]}: permission denied: {access_hint(denied[0])}")
    raise Unreachable("; ".join(tried) or "no socket or port is configured ([api] socket, [api] port)")


def _why(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or e)[:120]


def _print(text: str) -> None:
    print(text, flush=True)


async def status(api: ApiSettings, follow: bool, as_json: bool = True) -> int:
    """Print the snapshot (``as_json``: JSON, else a short summary for a person); with
    ``follow``, then every event (JSON lines, or a line each on a terminal), until the daemon
    goes or the reader does (``| head -1``). Exit 0; 1 if no daemon answers; 77 (EX_NOPERM)
    if its socket is not ours to open (the AccessDenied goes to the caller)."""
    try:
        async with open_daemon(api) as (ws, where):
            snapshot = json.loads(await ws.recv())
            snapshot["api"] = where
            if not follow:
                _print(json.dumps(snapshot, indent=2) if as_json else summary(snapshot))
                return 0
            show = None if as_json else _Terminal()
            _print(show.snapshot(snapshot) if show else json.dumps(snapshot))
            reader_gone = _reader_gone()
            try:
                while True:
                    recv = asyncio.ensure_future(ws.recv())
                    either: list[asyncio.Future[Any]] = [recv, reader_gone]
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                    if reader_gone.done():
                        recv.cancel()
                        _silence_stdout()
                        return 0
                    message = recv.result()
                    text = message if isinstance(message, str) else message.decode(errors="replace")
                    if show is None:
                        _print(text)
                    else:
                        show.event(json.loads(text))
            except websockets.ConnectionClosed:
                return 0
            finally:
                reader_gone.cancel()
    except Unreachable as e:
        print(f"pi-agent status: cannot reach the daemon: {e}; is pi-agent running?", file=sys.stderr)
        return 1
    except BrokenPipeError:  # status --follow | head -1: the reader has what it wanted
        _silence_stdout()
    except websockets.ConnectionClosed:
        return 0 if follow else 1
    return 0


def summary(s: dict[str, Any]) -> str:
    """The snapshot for a person: a handful of lines (``status --json`` gives it all)."""
    flags = [f"{s.get('policy')} policy", f"{s.get('mode')} capture"]
    flags += ["muted"] if s.get("muted") else []
    flags += ["queued for the agent"] if s.get("queued") else []
    flags += [f"volume {s['volume']}"] if "volume" in s else []
    counters = s.get("counters") or {}
    shown = {"conversations": "conversations", "reconnects": "reconnects", "audio_dropped": "audio dropped",
             "protocol_errors": "protocol errors", "capture_overflows": "mic overflows",
             "playback_underruns": "speaker underruns"}
    rows = [("state", f"{s.get('state')} ({', '.join(flags)})"),
            ("connected", "yes" if s.get("connected") else "no"),
            ("conversation", str(s.get("conversation_id") or "none")),
            ("problem", str(s.get("problem") or "none")),
            ("counters", ", ".join(f"{label} {counters[k]}" for k, label in shown.items() if k in counters) or "-"),
            ("event API", str(s.get("api")))]
    return "\n".join(f"{name + ':':<14}{value}" for name, value in rows)


class _Terminal:
    """``status --follow`` on a terminal: one line per thing said, the agent's line
    rewritten in place as its text streams (JSON lines go to pipes instead)."""

    def __init__(self) -> None:
        self._streaming = ""  # the agent's words so far, on the current (unfinished) line

    def snapshot(self, s: dict[str, Any]) -> str:
        conn = f"conversation {s.get('conversation_id')}" if s.get("connected") else "no conversation"
        extra = f"; {s['problem']}" if s.get("problem") else ""
        return f"pi-agent: {s.get('state')} ({conn}, {s.get('mode')} capture){extra} [{s.get('api')}]"

    def event(self, e: dict[str, Any]) -> None:
        kind = e.get("type")
        if kind == "agent_response_part":
            if e.get("part") == "start":
                self._finish()
            self._streaming += str(e.get("text", ""))
            width = shutil.get_terminal_size().columns - 8
            sys.stdout.write("\r\x1b[Kagent: " + self._streaming[-width:])
            sys.stdout.flush()
        elif kind == "agent_response":
            self._streaming = ""
            self._line(f"agent: {e.get('text', '')}")
        elif kind == "interruption":
            if self._streaming:
                self._streaming += " \u2014"
                self._finish()
            self._line("(interrupted)")
        elif kind == "user_transcript":
            self._line(f"you:   {e.get('text', '')}")
        elif kind == "state":
            self._line(f"  {e.get('previous')} -> {e.get('state')}")
        elif kind not in ("status", "agent_response_complete", "ack"):
            self._line(f"  {kind}: {json.dumps({k: v for k, v in e.items() if k != 'type'})[:200]}")

    def _finish(self) -> None:
        if self._streaming:
            sys.stdout.write("\r\x1b[Kagent: " + self._streaming + "\n")
            self._streaming = ""

    def _line(self, text: str) -> None:
        if self._streaming:  # the agent's line is left as it stands; the full text follows
            sys.stdout.write("\r\x1b[K")
        _print(text)


def _reader_gone() -> asyncio.Future[None]:
    """Done when stdout is a pipe whose reader has closed it (a poll of the write end reports
    an error then), so that ``--follow | head -1`` ends even when no event comes."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    try:
        fd = sys.stdout.fileno()
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (OSError, ValueError):
        is_pipe = False
    if is_pipe:
        def closed() -> None:
            loop.remove_reader(fd)
            if not gone.done():
                gone.set_result(None)
        loop.add_reader(fd, closed)
        gone.add_done_callback(lambda _: loop.remove_reader(fd))
    return gone


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit


async def say(api: ApiSettings, text: str, timeout: float) -> int | None:
    """``say`` through a running daemon: it speaks the reply, we print it. None when no
    daemon answers on a Unix socket (the caller then runs the exchange itself)."""
    try:
        async with open_daemon(api, view=False) as (ws, _):
            return await _exchange(ws, text, timeout)
    except Unreachable:
        return None
    except websockets.ConnectionClosed:
        print("pi-agent say: the daemon closed the connection", file=sys.stderr)
        return 1


async def _exchange(ws: ClientConnection, text: str, timeout: float) -> int:
    await ws.recv()  # the snapshot
    await ws.send(json.dumps({"type": "say", "text": text}))
    deadline = time.monotonic() + timeout
    responses: list[str] = []
    spoke = False
    answered_at: float | None = None
    while True:
        now = time.monotonic()
        if answered_at is not None and not spoke and now - answered_at > 2.0:
            break  # the daemon plays nothing (no speaker, or muted): the text is the answer
        wait = deadline - now if answered_at is None or spoke else min(deadline - now, 0.25)
        if wait <= 0:
            if answered_at is None:
                print(f"pi-agent say: no reply within {timeout:g} s", file=sys.stderr)
                return 1
            break
        try:
            event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), wait))
        except TimeoutError:
            continue
        kind = event.get("type")
        if kind == "error" and event.get("source") == "api":
            print(f"pi-agent say: {event.get('message')}", file=sys.stderr)
            return 1
        if kind == "agent_response":
            responses.append(str(event.get("text", "")))
            answered_at = answered_at or time.monotonic()
        elif kind == "state" and event.get("state") == "speaking":
            spoke = True
        elif kind == "state" and event.get("previous") == "speaking" and responses:
            break
    for response in responses:
        _print(response)
    return 0


async def volume(api: ApiSettings, change: int | str, timeout: float = 5.0) -> int:
    """``pi-agent volume``: send the change to the running daemon (its Unix socket) and print
    the level it is at now. Exit 0; 1 if no daemon answers or it refuses the change."""
    try:
        async with open_daemon(api, view=False) as (ws, _):
            await ws.recv()  # the snapshot
            await ws.send(json.dumps({"type": "volume", "value": change}))
            async with asyncio.timeout(timeout):
                while True:
                    reply: dict[str, Any] = json.loads(await ws.recv())
                    if reply.get("type") == "error" and reply.get("source") == "api":
                        print(f"pi-agent volume: {reply.get('message')}", file=sys.stderr)
                        return 1
                    if reply.get("type") == "ack" and reply.get("command") == "volume":
                        _print(f"volume {reply.get('volume')}")
                        return 0
    except Unreachable as e:
        print(f"pi-agent volume: cannot reach the daemon: {e}; is pi-agent running?", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"pi-agent volume: the daemon did not answer within {timeout:g} s", file=sys.stderr)
        return 1
    except websockets.ConnectionClosed:
        print("pi-agent volume: the daemon closed the connection", file=sys.stderr)
        return 1


__all__ = ["Unreachable", "open_daemon", "say", "status", "summary", "volume"]
