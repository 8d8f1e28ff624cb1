"""The agent's tool calls in one fake conversation, and the answers still awaited.

A client tool call (``client_tool_call``, answered by ``client_tool_result``) and an MCP
tool call that needs the user's approval (``mcp_tool_call``, answered by
``mcp_tool_approval_result``). Both wait a bounded time, and both give up when the turn
that made them is interrupted; whatever comes is recorded in the conversation's record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .records import McpCall
from .wire import new_id, timestamp

if TYPE_CHECKING:
    from .conversation import Conversation

log = logging.getLogger("pi_agent.fake_agent")


class Tools:
    """The tool calls of one conversation and the results it still waits for."""

    def __init__(self, conv: Conversation) -> None:
        self.conv = conv
        self._pending_tools: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._pending_mcp: dict[str, asyncio.Future[bool]] = {}
        self._mcp_service_id = new_id("mcp_server")

    def on_tool_result(self, message: dict[str, Any]) -> None:
        """A ``client_tool_result`` arrived: record it, and hand it to the call waiting for it."""
        self.conv.record.tool_results.append(message)  # a result to a call that expected none is kept too
        future = self._pending_tools.get(str(message.get("tool_call_id")))
        if future is not None and not future.done():
            future.set_result(message)

    def on_approval_result(self, message: dict[str, Any]) -> None:
        """A ``mcp_tool_approval_result`` arrived: record it, and hand it to the call waiting for it."""
        rec = self.conv.record
        rec.mcp_approval_results.append(message)
        approved = message.get("is_approved")
        if not isinstance(approved, bool):
            rec.anomalies.append("mcp_tool_approval_result is_approved is not a boolean")
            return
        approval = self._pending_mcp.get(str(message.get("tool_call_id")))
        if approval is not None and not approval.done():
            approval.set_result(approved)

    def cancel_pending(self) -> None:
        """The conversation has ended: stop waiting for any result."""
        for fut in self._pending_tools.values():
            fut.cancel()
        for approval in self._pending_mcp.values():
            approval.cancel()

    async def call_tool(
        self,
        name: str,
        parameters: Mapping[str, object],
        *,
        event_id: int | None = None,
        stop: asyncio.Event | None = None,
        expects_response: bool | None = None,
    ) -> dict[str, Any] | None:
        """Send ``client_tool_call`` and wait (bounded) for its ``client_tool_result``; when
        it ``expects_response`` False (default: ``tool_expects_response``), go on at once."""
        conv, options = self.conv, self.conv.options
        expects = options.tool_expects_response if expects_response is None else expects_response
        call_id = new_id("toolu")
        call = {
            "tool_name": name,
            "tool_call_id": call_id,
            "parameters": dict(parameters),
            "event_id": event_id if event_id is not None else conv.next_event_id(),
            "expects_response": expects,
        }
        conv.record.tool_calls.append(call)
        log.info("conversation %s: client tool call %s (%s)%s", conv.record.id, name, call_id,
                 "" if expects else ", no result expected")
        if not expects:
            await conv.send({"type": "client_tool_call", "client_tool_call": call})
            return None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending_tools[call_id] = future
        try:
            await conv.send({"type": "client_tool_call", "client_tool_call": call})
            stopped: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                done, _ = await asyncio.wait(
                    [future, stopped], timeout=options.tool_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopped.cancel()
            if future in done:
                return future.result()
            if not done:
                conv.record.anomalies.append(
                    f"no client_tool_result for {call_id} within {options.tool_timeout:g} s")
            return None
        finally:
            self._pending_tools.pop(call_id, None)

    async def ask_mcp_approval(
        self, name: str, parameters: Mapping[str, object], *, stop: asyncio.Event | None = None
    ) -> McpCall:
        """An MCP tool call that needs the user's approval: ``mcp_tool_call`` in state
        ``awaiting_approval``, then wait for ``mcp_tool_approval_result`` (up to
        ``mcp_approval_timeout``); ``success`` when approved, ``failure`` when denied, timed
        out or cut short by an interruption. The outcome is recorded in ``record.mcp_calls``."""
        conv = self.conv
        timeout = conv.options.mcp_approval_timeout
        call_id = new_id("toolu")
        base = {
            "service_id": self._mcp_service_id,
            "tool_call_id": call_id,
            "tool_name": name,
            "tool_description": f"{name} (a tool of the fake agent's MCP server)",
            "parameters": dict(parameters),
        }
        call = McpCall(call_id, name, dict(parameters), time.monotonic(), timeout)
        approval: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending_mcp[call_id] = approval
        conv.record.mcp_calls.append(call)
        log.info("conversation %s: MCP tool call %s (%s) awaits approval", conv.record.id, name, call_id)
        try:
            await conv.send({"type": "mcp_tool_call", "mcp_tool_call": {
                **base, "timestamp": timestamp(), "state": "awaiting_approval",
                "approval_timeout_secs": max(1, math.ceil(timeout))}})
            stopped: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                done, _ = await asyncio.wait([approval, stopped], timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
        finally:
            self._pending_mcp.pop(call_id, None)
        if approval in done:
            call.outcome = "approved" if approval.result() else "denied"
        else:
            call.outcome = "interrupted" if done else "timed_out"
        call.waited = time.monotonic() - call.asked_at
        log.info("conversation %s: MCP tool call %s %s after %.1f s", conv.record.id, call_id, call.outcome,
                 call.waited)
        if conv.closing:  # the conversation is ending: nobody to tell
            return call
        if call.outcome == "approved":
            final = {"state": "success", "result": [{"type": "text", "text": f"{name}: done"}]}
        else:
            final = {"state": "failure", "error_message": {
                "denied": "The user denied the tool call",
                "timed_out": f"No approval within {timeout:g} s",
                "interrupted": "The tool call was cancelled by an interruption",
            }[call.outcome]}
        await conv.send({"type": "mcp_tool_call", "mcp_tool_call": {**base, "timestamp": timestamp(), **final}})
        return call
