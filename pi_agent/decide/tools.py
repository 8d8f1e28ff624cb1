"""The rules of tool calls: client tools that an event-API client answers, MCP tools that
need approval (by the settings or by asking the event API), and the time each may take."""

from __future__ import annotations

from ..engine import events as ev
from ..engine import protocol as p
from . import effects as fx
from . import inputs as i
from .model import PendingTool
from .step import Step


def _answer_tool(s: Step, tool_call_id: str, result: str, is_error: bool) -> None:
    s.set(tools=tuple(t for t in s.m.tools if t.tool_call_id != tool_call_id))
    s.do(fx.Send("client_tool_result", p.encode_tool_result(tool_call_id, result, is_error=is_error)))


def _answer_mcp(s: Step, tool_call_id: str, tool_name: str, approved: bool) -> None:
    s.set(tools=tuple(t for t in s.m.tools if t.tool_call_id != tool_call_id))
    s.do(fx.Send("mcp_tool_approval_result", p.encode_mcp_approval(tool_call_id, approved)))
    s.publish(type="mcp_tool_approval", tool_name=tool_name, tool_call_id=tool_call_id, approved=approved)


def result(s: Step, event: i.ToolResult) -> None:
    tool = s.m.pending_tool(event.tool_call_id)
    if tool is not None and not tool.mcp:
        _answer_tool(s, event.tool_call_id, event.result, event.is_error)


def mcp_approval(s: Step, event: i.McpApproval) -> None:
    tool = s.m.pending_tool(event.tool_call_id)
    if tool is not None and tool.mcp:
        verdict = "approved" if event.approved else "denied"
        s.log("info", f"MCP tool {tool.tool_name!r} {verdict} by an event-API client")
        _answer_mcp(s, tool.tool_call_id, tool.tool_name, event.approved)


def call(s: Step, event: ev.ToolCall) -> None:
    s.publish(type="client_tool_call", tool_name=event.tool_name, tool_call_id=event.tool_call_id,
              parameters=dict(event.parameters), expects_response=event.expects_response)
    if not event.expects_response:  # the agent goes on at once: nothing to answer, nothing to wait for
        s.log("debug", f"client tool call {event.tool_name!r} expects no response")
        return
    handlers = s.m.tool_handlers
    if event.tool_name in handlers or "*" in handlers:
        deadline = s.now + s.m.config.tool_timeout
        s.set(tools=(*s.m.tools, PendingTool(event.tool_call_id, event.tool_name, deadline)))
    else:  # nobody said they answer it: no point in keeping the agent waiting
        _answer_tool(s, event.tool_call_id, f"client tool {event.tool_name!r} is not available on this device", True)


def mcp_call(s: Step, event: ev.McpToolCall) -> None:
    s.publish(type="mcp_tool_call", tool_name=event.tool_name, tool_call_id=event.tool_call_id, state=event.state)
    if event.state != "awaiting_approval" or s.m.pending_tool(event.tool_call_id) is not None:
        return
    config, name = s.m.config, event.tool_name
    if name in config.mcp_allow:
        s.log("info", f"MCP tool {name!r} approved ([session] mcp_allow)")
        _answer_mcp(s, event.tool_call_id, name, True)
    elif config.mcp_approval == "ask":
        wait = config.tool_timeout
        if event.approval_timeout is not None:  # answer before the agent gives up on its own
            wait = max(0.0, min(wait, event.approval_timeout - 1.0))
        s.log("info", f"MCP tool {name!r} awaits approval: asking event-API clients (mcp_tool_approval_request, "
              f"{wait:g} s)")
        s.set(tools=(*s.m.tools, PendingTool(event.tool_call_id, name, s.now + wait, mcp=True)))
        s.publish(type="mcp_tool_approval_request", tool_name=name, tool_call_id=event.tool_call_id,
                  description=event.description, parameters=dict(event.parameters), timeout=wait)
    else:
        s.log("info", f"MCP tool {name!r} denied: it needs approval ([session] mcp_approval = \"deny\"; "
              f"mcp_allow = [\"{name}\"] approves it, mcp_approval = \"ask\" asks the event API)")
        _answer_mcp(s, event.tool_call_id, name, False)


def expire(s: Step) -> None:
    """At their deadlines: a client tool nobody answered fails; an MCP tool nobody approved is denied."""
    for tool in s.m.tools:
        if tool.deadline > s.now:
            continue
        if tool.mcp:
            s.log("warning", f"MCP tool {tool.tool_name!r}: no event-API client approved it within "
                  f"{s.m.config.tool_timeout:g} s (api.tool_timeout); denied")
            _answer_mcp(s, tool.tool_call_id, tool.tool_name, False)
        else:
            _answer_tool(s, tool.tool_call_id, f"client tool {tool.tool_name!r} did not answer in time", True)
