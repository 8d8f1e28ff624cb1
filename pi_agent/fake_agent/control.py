"""The control API: what a test (in process, or over ``GET /_fake/control``) can make the fake do.

Close a conversation with any code, send an ``error`` or ``client_error``, end the call,
send garbage, make the agent speak, flood, interrupt, make tool calls, and queue faults
for the next signed-URL requests and handshakes. :class:`Controls` is part of
:class:`~.server.FakeAgent`; :meth:`Controls.control` runs an action named by a string, as
the HTTP route does. The actions check their arguments (``ValueError``) and find the
conversation (``LookupError``); the conversation's own parts do the rest.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .conversation import Conversation
from .faults import GARBAGE_KINDS, SIGNED_URL_FAULT_KINDS
from .routes import OPEN_TIMEOUT
from .wire import ERROR_CODES, SPEC_CLOSE_CODES, close_code_ok


class Controls:
    """The control methods of :class:`~.server.FakeAgent`, which holds what they act on.

    They act on the newest open conversation unless given ``conversation=<id>``. They
    raise ``LookupError`` when there is no such open conversation and ``ValueError`` for
    bad arguments.
    """

    _sessions: dict[str, Conversation]
    _url_faults: deque[dict[str, Any]]
    _handshake_faults: deque[int]

    if TYPE_CHECKING:
        async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0,
                           what: str = "condition") -> None: ...

    def _session(self, conversation: str | None) -> Conversation:
        """The open conversation ``conversation``, else the newest open one."""
        if conversation is not None:
            session = self._sessions.get(conversation)
            if session is None:
                raise LookupError(f"no open conversation {conversation!r}")
            return session
        if not self._sessions:
            raise LookupError("no open conversation")
        return next(reversed(self._sessions.values()))

    async def close_conversation(
        self, code: int = 1000, reason: str = "", error_type: str | None = None, conversation: str | None = None
    ) -> str:
        """Close with ``code``; when ``error_type`` is given, first an ``error`` event (if the
        1.0.0 contract allows ``code`` in it) and, with the ``client_error`` option, a
        ``client_error``. Returns the conversation id."""
        if not close_code_ok(code):
            raise ValueError(f"close code {code} cannot be sent in a close frame")
        if error_type is not None and error_type not in ERROR_CODES:
            raise ValueError(f"unknown error_type {error_type!r}")
        session = self._session(conversation)
        if error_type is not None:
            await session.error_and_close(error_type, code, reason or error_type)
        else:
            await session.close(code, reason)
        return session.record.id

    async def client_error(
        self, code: int = 1011, error_name: str = "unknown", message: str | None = None,
        conversation: str | None = None,
    ) -> str:
        """Send 1.1.0's ``client_error`` (alone, whatever the option), then close with ``code``."""
        if not close_code_ok(code):
            raise ValueError(f"close code {code} cannot be sent in a close frame")
        if not error_name:
            raise ValueError("error_name must not be empty")
        session = self._session(conversation)
        await session.client_error_and_close(code, error_name, message or f"fake client_error: {error_name}")
        return session.record.id

    async def end_call(self, conversation: str | None = None) -> str:
        """The agent ends the call now (``end_call`` tool response, close 1000)."""
        session = self._session(conversation)
        await session.end_call()
        return session.record.id

    async def max_duration(self, conversation: str | None = None) -> str:
        """Act as if the maximum duration was reached (error 1000, close 1000)."""
        session = self._session(conversation)
        await session.error_and_close("max_duration_exceeded", 1000, "Maximum conversation duration exceeded")
        return session.record.id

    async def send_error(
        self, error_type: str = "unknown", code: int | None = None, message: str | None = None,
        conversation: str | None = None,
    ) -> str:
        """Send an ``error`` event, then close with its code, as the server does."""
        if error_type not in ERROR_CODES:
            raise ValueError(f"unknown error_type {error_type!r}; expected one of {', '.join(ERROR_CODES)}")
        code = ERROR_CODES[error_type] if code is None else code
        if code not in SPEC_CLOSE_CODES:
            raise ValueError(f"error code {code} is not one of the spec's {SPEC_CLOSE_CODES}")
        session = self._session(conversation)
        await session.error_and_close(error_type, code, message or f"fake error: {error_type}")
        return session.record.id

    async def send_garbage(self, kind: str, size: int | None = None, conversation: str | None = None) -> str:
        """Send malformed frames (see :data:`GARBAGE_KINDS`); ``size`` sets the ``huge`` padding."""
        if kind not in GARBAGE_KINDS:
            raise ValueError(f"unknown garbage kind {kind!r}; expected one of {', '.join(GARBAGE_KINDS)}")
        session = self._session(conversation)
        await session.garbage(kind, size)
        return session.record.id

    async def queue_status(self, conversation: str | None = None) -> str:
        """Send the in-the-wild ``queue_status`` and close 3008."""
        session = self._session(conversation)
        await session.queue_status()
        return session.record.id

    async def agent_speak(self, text: str | None = None, conversation: str | None = None) -> int:
        """Start an agent turn now; return its event id."""
        return await self._session(conversation).turns.start_turn("control", text=text)

    async def tool_call(
        self, name: str, parameters: Mapping[str, object] | None = None, conversation: str | None = None,
        expects_response: bool | None = None,
    ) -> str:
        """Send ``client_tool_call`` now (the result is recorded when it comes); return the conversation id.
        ``expects_response`` defaults to the ``tool_expects_response`` option."""
        session = self._session(conversation)
        before = len(session.record.tool_calls)
        call = session.tools.call_tool(name, parameters or {}, expects_response=expects_response)
        session.spawn(call, f"tool {name}")
        await self.wait_for(lambda: len(session.record.tool_calls) > before, 5.0, "the tool call")
        return session.record.id

    async def mcp_tool_call(
        self, name: str, parameters: Mapping[str, object] | None = None, conversation: str | None = None
    ) -> str:
        """Send ``mcp_tool_call`` awaiting approval now (the outcome is recorded in
        ``record.mcp_calls``); return its ``tool_call_id``."""
        session = self._session(conversation)
        before = len(session.record.mcp_calls)
        session.spawn(session.tools.ask_mcp_approval(name, parameters or {}), f"mcp {name}")
        await self.wait_for(lambda: len(session.record.mcp_calls) > before, 5.0, "the MCP tool call")
        return session.record.mcp_calls[before].tool_call_id

    def signed_url_fault(
        self, status: int | None = None, kind: str | None = None, seconds: float = 5.0, count: int = 1
    ) -> None:
        """Make the next ``count`` signed-URL requests fail with HTTP ``status``, or with
        ``kind``: ``timeout`` (hold ``seconds``, then answer), ``not_json``, ``not_ws_url``."""
        if (status is None) == (kind is None):
            raise ValueError("give exactly one of status and kind")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        if kind is not None and kind not in SIGNED_URL_FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(SIGNED_URL_FAULT_KINDS)}")
        if not 0 <= seconds < OPEN_TIMEOUT - 5:
            raise ValueError(f"seconds must be in [0, {OPEN_TIMEOUT - 5:g})")
        if count < 1:
            raise ValueError("count must be >= 1")
        for _ in range(count):
            self._url_faults.append({"status": status, "kind": kind, "seconds": seconds})

    def reject_handshake(self, status: int = 403, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket handshakes with HTTP ``status``."""
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        if count < 1:
            raise ValueError("count must be >= 1")
        self._handshake_faults.extend([status] * count)

    async def control(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Run a control action named as in ``GET /_fake/control?action=...`` with string params."""

        def num(name: str, default: float | None = None, kind: type = int) -> Any:
            value = params.get(name)
            if value is None:
                if default is None:
                    raise ValueError(f"{action}: parameter {name!r} is required")
                return default
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{action}: parameter {name!r} must be a number, got {value!r}") from None

        conv = params.get("conversation")
        if action == "close":
            cid = await self.close_conversation(num("code", 1000), params.get("reason", ""), params.get("error_type"),
                                                conv)
            return {"conversation": cid}
        if action == "end_call":
            return {"conversation": await self.end_call(conv)}
        if action == "max_duration":
            return {"conversation": await self.max_duration(conv)}
        if action == "error":
            code = num("code") if "code" in params else None
            cid = await self.send_error(params.get("error_type", "unknown"), code, params.get("message"), conv)
            return {"conversation": cid}
        if action == "garbage":
            size = num("size") if "size" in params else None
            return {"conversation": await self.send_garbage(params.get("kind", ""), size, conv)}
        if action == "queue_status":
            return {"conversation": await self.queue_status(conv)}
        if action == "signed_url_fault":
            status = num("status") if "status" in params else None
            self.signed_url_fault(status, params.get("kind"), num("seconds", 5.0, float), num("count", 1))
            return {"pending": len(self._url_faults)}
        if action == "reject_handshake":
            self.reject_handshake(num("status", 403), num("count", 1))
            return {"pending": len(self._handshake_faults)}
        if action == "agent_speak":
            return {"event_id": await self.agent_speak(params.get("text"), conv)}
        if action == "flood":
            return {"event_id": await self._session(conv).turns.flood(num("seconds", 3600.0, float))}
        if action == "interrupt":
            session = self._session(conv)
            turn = session.turns.turn
            await session.turns.interrupt()
            return {"event_id": turn.event_id if turn is not None else None,
                    "interruption_id": turn.interruption_id if turn is not None else None}
        if action == "client_error":
            cid = await self.client_error(num("code", 1011), params.get("error_name", "unknown"),
                                          params.get("message"), conv)
            return {"conversation": cid}
        if action in ("tool_call", "mcp_tool_call"):
            name = params.get("name")
            if not name:
                raise ValueError(f"{action}: parameter 'name' is required")
            try:
                parameters = json.loads(params.get("parameters", "{}"))
            except ValueError:
                raise ValueError(f"{action}: 'parameters' must be a JSON object") from None
            if not isinstance(parameters, dict):
                raise ValueError(f"{action}: 'parameters' must be a JSON object")
            if action == "mcp_tool_call":
                return {"tool_call_id": await self.mcp_tool_call(name, parameters, conv)}
            expects = params.get("expects_response")
            if expects not in (None, "true", "false"):
                raise ValueError("tool_call: 'expects_response' must be true or false")
            return {"conversation": await self.tool_call(name, parameters, conv,
                                                         None if expects is None else expects == "true")}
        raise ValueError(f"unknown action {action!r}")
