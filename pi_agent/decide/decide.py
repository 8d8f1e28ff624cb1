"""``decide(model, input, now) -> (model, effects)``: every decision the daemon takes.

One function over an immutable :class:`~pi_agent.decide.model.Model`: an input goes in
(an engine event, a gate verdict, a button gesture, an API command, a device report, a
deadline), the next model and the effects to carry out come out. State changes go
through the one transition table (:mod:`.states`) and are logged and published as
effects; an input the current state does not allow changes nothing.

This module holds the one dispatch (:data:`_HANDLERS`, by the input's type) and the small
rules; the rules are kept by the owner of what they decide about:

- :mod:`.turn`: the user's turn (gate verdicts, wake word, button, listen, stop, mute);
- :mod:`.reply`: the agent's reply and the speaker;
- :mod:`.link`: the conversation's link (connecting, open, queued, closed, failures);
- :mod:`.tools`: client and MCP tool calls;
- :mod:`.step`: one decision in the making, and the moves several of them share.
"""

from __future__ import annotations

from ..engine import events as ev
from ..engine import protocol as p
from . import effects as fx
from . import inputs as i
from . import captions, link, reply, tools, turn
from .model import Model
from .states import State, Trigger
from .step import Handler, Step

S, T = State, Trigger


def decide(model: Model, event: i.Input, now: float) -> tuple[Model, list[fx.Effect]]:
    """The next model and the effects of ``event`` arriving at ``now``."""
    step = Step(model, now)
    _HANDLERS[type(event)](step, event)
    captions.follow(step)
    return step.m, step.effects


def _ready(s: Step, _: i.Ready) -> None:
    s.fire(T.READY)


def _tick(s: Step, _: i.Tick) -> None:
    """A deadline of the model has come: each owner's waits that are over."""
    reply.thinking_timeout(s)
    tools.expire(s)
    turn.close_follow_up(s)
    reply.stall(s)
    captions.expire(s)


# --- devices ---------------------------------------------------------------------------------


def _device_failed(s: Step, event: i.DeviceFailed) -> None:
    errors = dict(s.m.device_errors)
    before = errors.pop(event.which, None)
    errors[event.which] = f"{event.which}: {event.message}"  # the latest failure last
    s.set(device_errors=tuple(errors.items()))
    head = event.message.partition("\n")[0]  # its first line, not the device table some carry
    if before is None:
        s.log("error", f"{event.which} device failed: {event.message}; the daemon keeps running and reopens it")
    elif before.partition("\n")[0] != f"{event.which}: {head}":  # a reopen failed, for a new reason
        s.log("warning", f"{event.which} device still down: {head}")
    s.publish(type="error", source=event.which, message=event.message)
    s.fire(T.FAIL)


def _device_recovered(s: Step, event: i.DeviceRecovered) -> None:
    errors = dict(s.m.device_errors)
    if errors.pop(event.which, None) is None:
        return
    s.set(device_errors=tuple(errors.items()))
    s.log("info", f"{event.which} device is back")
    if s.m.state is S.ERROR and not errors and not s.m.fatal:
        s.fire(T.RECOVER)


# --- what the agent says besides audio ---------------------------------------------------------


def _agent_response(s: Step, event: ev.AgentResponse) -> None:
    if s.m.config.transcripts:
        s.do(fx.Log("info", f"agent: {event.text}", transcript=True))
    s.publish(type="agent_response", text=event.text, event_id=event.event_id)


def _tool_response(s: Step, event: ev.AgentToolResponse) -> None:
    if event.tool_name == "end_call":
        s.log("info", "the agent is ending the call")
    s.publish(type="agent_tool_response", tool_name=event.tool_name, is_error=event.is_error)


_HANDLERS: dict[type, Handler] = {
    # everywhere but the conversation
    i.Ready: _ready,
    i.TurnStarted: turn.started,
    i.TurnEnded: turn.ended,
    i.WakeWord: turn.wake_word,
    i.PlayedOut: reply.played_out,
    i.Tick: _tick,
    i.Button: turn.button,
    i.StartListening: lambda s, e: turn.start_listening(s),
    i.StopListening: lambda s, e: turn.stop_listening(s),
    i.Stop: lambda s, e: turn.stop(s),
    i.SetMuted: lambda s, e: turn.set_muted(s, e.muted),
    i.Say: lambda s, e: s.do(fx.Send("user_message", p.encode_user_message(e.text))),
    i.ContextualUpdate: lambda s, e: s.do(fx.Send("contextual_update",
                                                  p.encode_contextual_update(e.text, e.context_id))),
    i.ToolResult: tools.result,
    i.McpApproval: tools.mcp_approval,
    i.DeviceFailed: _device_failed,
    i.DeviceRecovered: _device_recovered,
    i.ToolHandlers: lambda s, e: s.set(tool_handlers=e.tools),
    i.OpenConversation: lambda s, e: s.do(fx.Request()),
    i.ShuttingDown: lambda s, e: s.set(shutting_down=True),
    # the conversation
    ev.Connecting: link.connecting,
    ev.Opened: link.opened,
    ev.AgentAudio: reply.agent_audio,
    ev.Interrupted: reply.interrupted,
    ev.UserTranscript: turn.user_transcript,
    ev.AgentResponse: _agent_response,
    ev.AgentCorrection: lambda s, e: s.publish(type="agent_response_correction", original=e.original,
                                               corrected=e.corrected, event_id=e.event_id),
    ev.AgentTextPart: lambda s, e: s.publish(type="agent_response_part", part=e.part, text=e.text,
                                             event_id=e.event_id),
    ev.AgentResponseComplete: lambda s, e: s.publish(type="agent_response_complete", event_id=e.event_id),
    ev.AgentResponseMetadata: lambda s, e: s.publish(type="agent_response_metadata", event_id=e.event_id,
                                                     metadata=dict(e.data)),
    ev.ToolCall: tools.call,
    ev.McpToolCall: tools.mcp_call,
    ev.Queued: link.queued,
    ev.AgentToolResponse: _tool_response,
    ev.ServerError: link.server_error,
    ev.Notice: lambda s, e: s.log(e.level, e.text),
    ev.Closed: link.closed,
}
