"""The commands of the event API's clients: each checked field by field (:func:`parse_command`)
and carried out on the controller (:class:`Commands`), which also keeps which client handles
which client tools. Which connection may send which commands is decided by :mod:`.api`
(:data:`ALL_COMMANDS` on the Unix socket, at most :data:`PAGE_COMMANDS` on the TCP port)."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from ..audio.volume import parse_change
from ..controller import Controller
from ..decide import inputs as i

MAX_TEXT = 60_000  # characters of a say / contextual_update text


class CommandError(ValueError):
    """A command the API refuses; the message goes back to the client."""


@dataclass(frozen=True)
class _Field:
    kind: type  # object: any JSON value, checked by the command's own rule below
    required: bool = True


_COMMANDS: dict[str, dict[str, _Field]] = {
    "start_listening": {}, "stop_listening": {}, "stop": {}, "mute": {}, "unmute": {},
    "say": {"text": _Field(str)},
    "contextual_update": {"text": _Field(str), "context_id": _Field(str, False)},
    "tool_result": {"tool_call_id": _Field(str), "result": _Field(str), "is_error": _Field(bool, False)},
    "handle_tools": {"tools": _Field(list)},
    "mcp_tool_approval": {"tool_call_id": _Field(str), "approved": _Field(bool)},
    "volume": {"value": _Field(object)},
}


def parse_command(message: str | bytes) -> dict[str, Any]:
    """The command in ``message``, checked field by field; :class:`CommandError` says what is wrong."""
    try:
        cmd = json.loads(message)
    except (ValueError, RecursionError):
        raise CommandError('commands are JSON objects with a "type", e.g. {"type": "stop"}') from None
    if not isinstance(cmd, dict):
        raise CommandError(f'a command is a JSON object with a "type", not {type(cmd).__name__}')
    name = cmd.get("type")
    if not isinstance(name, str) or name not in _COMMANDS:
        raise CommandError(f"unknown command {str(name)[:40]!r}; known: {', '.join(_COMMANDS)}")
    fields = _COMMANDS[name]
    extra = sorted(set(cmd) - set(fields) - {"type"})
    if extra:
        raise CommandError(f"{name} takes no field {', '.join(repr(k[:40]) for k in extra)}"
                           f" (its fields: {', '.join(fields) or 'none'})")
    for key, spec in fields.items():
        if key not in cmd:
            if spec.required:
                raise CommandError(f"{name} needs {key!r} ({spec.kind.__name__})")
            continue
        value = cmd[key]
        if spec.kind is not object and type(value) is not spec.kind:  # exactly: true is no number, "false" no boolean
            raise CommandError(f"{name}.{key} must be a {spec.kind.__name__}, got {type(value).__name__}")
    for key in ("text",):
        if key in cmd and (not cmd[key].strip() or len(cmd[key]) > MAX_TEXT):
            raise CommandError(f"{name} needs a non-empty {key!r} of at most {MAX_TEXT} characters")
    if name == "handle_tools" and not all(isinstance(t, str) and 0 < len(t) <= 200 for t in cmd["tools"]):
        raise CommandError('handle_tools.tools must be a list of tool names (or ["*"] for every tool)')
    if name == "volume":
        try:
            cmd["value"] = parse_change(cmd["value"])
        except ValueError as e:
            raise CommandError(f"volume.value: {e}") from None
    return cmd


ALL_COMMANDS = frozenset(_COMMANDS)
PAGE_COMMANDS = frozenset({"start_listening", "stop_listening", "stop", "mute", "unmute"})


class Commands:
    """Carries out the commands of the connected clients on the controller, and keeps which
    client handles which client tools (``handle_tools``) until it goes (:meth:`forget`)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self._tools: dict[Hashable, frozenset[str]] = {}

    def run(self, client: Hashable, message: str | bytes, allowed: frozenset[str]) -> dict[str, Any]:
        """The reply to ``message`` from ``client``, which may send the commands of ``allowed``."""
        if not allowed:
            return _api_error("this connection is a view: commands are taken on the Unix socket "
                              "(pi-agent status shows where)")
        try:
            cmd = parse_command(message)
        except CommandError as e:
            return _api_error(str(e))
        name: str = cmd["type"]
        if name not in allowed:
            return _api_error(f"the page may send only {', '.join(sorted(allowed))}")
        c = self._controller
        simple: dict[str, i.Input] = {
            "start_listening": i.StartListening(), "stop_listening": i.StopListening(),
            "stop": i.Stop(), "mute": i.SetMuted(True), "unmute": i.SetMuted(False),
        }
        if name in simple:
            c.dispatch(simple[name])
        elif name == "say":
            c.dispatch(i.Say(cmd["text"]))
        elif name == "contextual_update":
            c.dispatch(i.ContextualUpdate(cmd["text"], cmd.get("context_id")))
        elif name == "tool_result":
            if not c.tool_result(cmd["tool_call_id"], cmd["result"], cmd.get("is_error", False)):
                return _api_error(f"no pending tool call {cmd['tool_call_id'][:80]!r}")
        elif name == "volume":
            if c.volume is None:
                return _api_error("this daemon has no volume control")
            return {"type": "ack", "command": name, "volume": c.volume.change(cmd["value"])}
        elif name == "mcp_tool_approval":
            if not c.mcp_approval(cmd["tool_call_id"], cmd["approved"]):
                return _api_error(f"no MCP tool call awaiting approval {cmd['tool_call_id'][:80]!r}")
        else:  # handle_tools
            self._tools[client] = frozenset(cmd["tools"])
            self._tools_changed()
        return {"type": "ack", "command": name}

    def forget(self, client: Hashable) -> None:
        """``client`` is gone: the client tools it handled are no longer handled by it."""
        if self._tools.pop(client, None) is not None:
            self._tools_changed()

    def _tools_changed(self) -> None:
        handled = frozenset().union(*self._tools.values()) if self._tools else frozenset()
        self._controller.dispatch(i.ToolHandlers(handled))


def _api_error(message: str) -> dict[str, Any]:
    return {"type": "error", "source": "api", "message": message}
