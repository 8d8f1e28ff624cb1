"""``decide(model, input, now) -> (model, effects)``: every decision the daemon takes.

One function over an immutable :class:`~pi_agent.decide.model.Model`: an input goes in
(an engine event, a gate verdict, a button gesture, an API command, a device report, a
deadline), the next model and the effects to carry out come out. State changes go
through the one transition table (:mod:`.states`) and are logged and published as
effects; an input the current state does not allow changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..engine import events as ev
from ..engine import protocol as p
from ..engine.backoff import Outcome
from . import effects as fx
from . import inputs as i
from .button import ButtonEvent, ButtonIntent
from .effects import GateCommand
from .model import MAX_REPORTED, QUEUED_TEXT, REPLY_STALL, THINKING_TIMEOUT, Link, Model, PendingTool
from . import states
from .states import State, Trigger

S, T = State, Trigger


class _Step:
    """One decision in the making: the model so far and the effects so far. Local to one call."""

    __slots__ = ("effects", "m", "now")

    def __init__(self, model: Model, now: float) -> None:
        self.m = model
        self.now = now
        self.effects: list[fx.Effect] = []

    def set(self, **changes: Any) -> None:
        self.m = replace(self.m, **changes)

    def do(self, *effects: fx.Effect) -> None:
        self.effects.extend(effects)

    def log(self, level: fx.Level, text: str) -> None:
        self.effects.append(fx.Log(level, text))

    def publish(self, **event: Any) -> None:
        self.effects.append(fx.Publish(event))

    def earcon(self, name: str) -> None:
        if name in self.m.config.earcons:
            self.effects.append(fx.Earcon(name))

    def fire(self, trigger: Trigger) -> bool:
        """Apply ``trigger`` if the table allows it here; False (and a debug line) if not."""
        if not states.can(self.m.state, trigger):
            self.log("debug", f"trigger {trigger} ignored in state {self.m.state}")
            return False
        t = states.fire(self.m.state, trigger)
        self.effects.append(fx.StateChange(t))
        if t.state is not t.previous:
            self.set(state=t.state, thinking_since=self.now if t.state is S.THINKING else self.m.thinking_since)
        return True


def decide(model: Model, event: i.Input, now: float) -> tuple[Model, list[fx.Effect]]:
    """The next model and the effects of ``event`` arriving at ``now``."""
    step = _Step(model, now)
    _HANDLERS[type(event)](step, event)
    return step.m, step.effects


def _ready(s: _Step) -> None:
    s.fire(T.READY)


# --- the user's turn -----------------------------------------------------------------------


def _turn_started(s: _Step, _: i.TurnStarted) -> None:
    if not s.m.connected:
        s.do(fx.Request())
    s.set(in_turn=True, follow_up_until=None)
    if s.m.state is S.SPEAKING:
        # Talking over the agent (full duplex): the server decides whether that is a
        # barge-in (a cough is not) and says so with `interruption`; we flush then.
        return
    if s.m.connected:
        s.fire(T.LISTEN)
    elif s.m.state is S.IDLE:
        s.fire(T.CONNECT)
    # offline or error: the engine is waiting out a backoff; the speech is kept meanwhile


def _turn_over(s: _Step) -> None:
    s.set(in_turn=False, speech_ended_at=s.now)
    if s.fire(T.SPEECH_END) and s.m.config.push_to_talk:
        s.earcon("done")


def _turn_ended(s: _Step, event: i.TurnEnded) -> None:
    if not event.nothing_said:
        _turn_over(s)
        return
    # A press or the wake word, then silence: nothing for the agent to answer.
    s.set(in_turn=False)
    s.log("info", "nothing was said; " + ("waiting for the wake word again" if s.m.config.wake_word
                                          else "no longer listening"))
    if s.m.state is S.LISTENING:
        s.fire(T.STOP)


def _wake_word(s: _Step, event: i.WakeWord) -> None:
    """The wake word: a new turn (the gate starts it), or the stop word over the agent."""
    m = s.m
    s.publish(type="wake_word", probability=round(event.probability, 3))
    if m.state is S.SPEAKING:
        s.log("info", f"wake word heard over the reply (probability {event.probability:.2f}): stopping it")
        _stop_playback(s)
        if m.in_turn and m.connected:
            s.fire(T.LISTEN)
    elif m.in_turn:
        s.log("debug", f"wake word heard during the user's turn (probability {event.probability:.2f})")
        return
    else:
        s.log("info", f"wake word heard (probability {event.probability:.2f})")
    s.earcon("listening")


def _end_turn(s: _Step) -> None:
    """End the user's turn without the turn's ending effects (stop, mute, a closed session)."""
    s.do(fx.Gate(GateCommand.END_TURN))
    s.set(in_turn=False)


def _start_listening(s: _Step) -> None:
    """Button press / API: stop the agent if it speaks, then listen."""
    m = s.m
    if m.muted:
        s.log("info", "muted: unmute first (long press or the unmute command)")
        return
    if m.state is S.SPEAKING:
        _stop_playback(s)
    if m.config.push_to_talk:
        s.do(fx.Gate(GateCommand.PRESS))  # the gate starts the turn on the next frame
    else:
        if not m.in_turn:  # a turn already on goes on as it is
            s.do(fx.Gate(GateCommand.START_TURN))
            s.set(in_turn=True)  # the VAD hangover (or the server's transcript) ends it
        if not m.connected:
            s.do(fx.Request())
        s.fire(T.LISTEN if m.connected else T.CONNECT)
    s.earcon("listening")


def _stop_listening(s: _Step) -> None:
    if s.m.config.push_to_talk:
        s.do(fx.Gate(GateCommand.RELEASE))  # the gate ends the turn on the next frame
    elif s.m.in_turn:
        s.do(fx.Gate(GateCommand.END_TURN))
        _turn_over(s)


def _stop_playback(s: _Step) -> None:
    s.do(fx.Flush())
    if s.m.state is S.SPEAKING:
        s.fire(T.STOP)


def _stop(s: _Step) -> None:
    """Stop everything in progress: the agent's speech, the user's turn."""
    s.set(follow_up_until=None)
    _stop_playback(s)
    s.do(fx.Gate(GateCommand.RELEASE))
    _end_turn(s)
    s.fire(T.STOP)


def _set_muted(s: _Step, muted: bool) -> None:
    if muted == s.m.muted:
        return
    s.set(muted=muted, talk_from_down=False, follow_up_until=None)
    s.log("info", f"microphone {'muted' if muted else 'unmuted'}")
    s.publish(type="mute", muted=muted)
    if muted:
        s.do(fx.Gate(GateCommand.RELEASE))
        _end_turn(s)
        s.fire(T.MUTE)
    else:
        s.fire(T.UNMUTE)


# --- time and the speaker --------------------------------------------------------------------


def _tick(s: _Step, _: i.Tick) -> None:
    if s.m.state is S.THINKING and s.m.thinking_since is not None and s.now - s.m.thinking_since >= THINKING_TIMEOUT:
        s.log("info", f"no reply within {THINKING_TIMEOUT:g} s; back to idle")
        s.fire(T.STOP)
    for tool in s.m.tools:
        if tool.deadline > s.now:
            continue
        if tool.mcp:
            s.log("warning", f"MCP tool {tool.tool_name!r}: no event-API client approved it within "
                  f"{s.m.config.tool_timeout:g} s (api.tool_timeout); denied")
            _answer_mcp(s, tool.tool_call_id, tool.tool_name, False)
        else:
            _answer_tool(s, tool.tool_call_id, f"client tool {tool.tool_name!r} did not answer in time", True)
    if s.m.follow_up_until is not None and s.m.follow_up_until <= s.now:
        s.set(follow_up_until=None)
        s.log("debug", "no follow-up: waiting for the wake word again")
    if s.m.state is S.SPEAKING and s.m.dry_since is not None and s.now - s.m.dry_since >= REPLY_STALL:
        s.log("info", f"no more of the reply within {REPLY_STALL:g} s of the speaker running dry, and no chunk "
              "marked as its last (is_final): done speaking; from now on a reply ends when the speaker runs dry "
              "until the server marks a last chunk again")
        s.set(marks_final=False)
        _reply_played(s)


def _played_out(s: _Step, _: i.PlayedOut) -> None:
    m = s.m
    if m.state is not S.SPEAKING:
        return
    if m.marks_final and not m.reply_complete:
        # The server marks each reply's last chunk and this one's has not come: a slow link,
        # not the end of the reply. Still speaking (the mic stays closed in half duplex).
        if m.dry_since is None:
            s.log("debug", "the speaker ran dry before the reply's last chunk: still speaking")
            s.set(dry_since=s.now)
        return
    _reply_played(s)


def _reply_played(s: _Step) -> None:
    m = s.m
    s.set(dry_since=None)
    if m.config.mode == "always" and m.connected:
        s.fire(T.LISTEN)
        return
    s.fire(T.AGENT_DONE)
    # Catch up with what happened while the reply played.
    if m.link in (Link.CONNECTING, Link.BACKING_OFF):
        s.fire(T.CONNECT)
    elif m.in_turn and m.connected:
        s.fire(T.LISTEN)
    elif m.config.wake_word and m.config.follow_up > 0 and not m.in_turn:
        # The user may answer without the wake word for a moment (the gate opens for speech).
        s.set(follow_up_until=s.now + m.config.follow_up)


# --- the button and the API ------------------------------------------------------------------


def _button(s: _Step, event: i.Button) -> None:
    ptt = s.m.config.push_to_talk
    if ptt and event.event is ButtonEvent.LONG_HOLD and event.heard_speech:
        # A long push-to-talk hold while speaking is a long question, not a request to
        # mute: only a silent long hold toggles mute in this mode.
        s.log("debug", "long push-to-talk hold with speech: still talking")
        return
    if ptt and s.m.talk_from_down and event.event in (ButtonEvent.PRESS, ButtonEvent.HOLD_END):
        s.set(talk_from_down=False)  # released: the interrupting turn is over
        _stop_listening(s)
    policy, intents = s.m.button.decide(event.event, s.m.state)
    s.set(button=policy)
    for intent in intents:
        s.log("debug", f"button {event.event} -> {intent}")
        if intent is ButtonIntent.STOP:
            _stop(s)
            if ptt and event.event is ButtonEvent.DOWN:
                # Push-to-talk: the press that stops the agent also starts the user's turn.
                s.set(talk_from_down=True)
                _start_listening(s)
        elif intent is ButtonIntent.START_LISTENING:
            if ptt and not s.m.config.toggle:
                s.log("info", "push-to-talk: hold the button while you speak")
            else:
                _start_listening(s)
        elif intent in (ButtonIntent.STOP_LISTENING, ButtonIntent.TALK_END):
            _stop_listening(s)
        elif intent is ButtonIntent.TALK_START:
            _start_listening(s)
        elif intent is ButtonIntent.TALK_CANCEL:
            s.do(fx.Gate(GateCommand.RELEASE))
            _end_turn(s)
        elif intent is ButtonIntent.TOGGLE_MUTE:
            _set_muted(s, not s.m.muted)


def _send(s: _Step, kind: str, text: str) -> None:
    s.do(fx.Send(kind, text))


def _answer_tool(s: _Step, tool_call_id: str, result: str, is_error: bool) -> None:
    s.set(tools=tuple(t for t in s.m.tools if t.tool_call_id != tool_call_id))
    _send(s, "client_tool_result", p.encode_tool_result(tool_call_id, result, is_error=is_error))


def _answer_mcp(s: _Step, tool_call_id: str, tool_name: str, approved: bool) -> None:
    s.set(tools=tuple(t for t in s.m.tools if t.tool_call_id != tool_call_id))
    _send(s, "mcp_tool_approval_result", p.encode_mcp_approval(tool_call_id, approved))
    s.publish(type="mcp_tool_approval", tool_name=tool_name, tool_call_id=tool_call_id, approved=approved)


def _tool_result(s: _Step, event: i.ToolResult) -> None:
    tool = s.m.pending_tool(event.tool_call_id)
    if tool is not None and not tool.mcp:
        _answer_tool(s, event.tool_call_id, event.result, event.is_error)


def _mcp_approval(s: _Step, event: i.McpApproval) -> None:
    tool = s.m.pending_tool(event.tool_call_id)
    if tool is not None and tool.mcp:
        verdict = "approved" if event.approved else "denied"
        s.log("info", f"MCP tool {tool.tool_name!r} {verdict} by an event-API client")
        _answer_mcp(s, tool.tool_call_id, tool.tool_name, event.approved)


# --- the conversation (engine events) --------------------------------------------------------


def _connecting(s: _Step, event: ev.Connecting) -> None:
    s.set(link=Link.CONNECTING)
    if event.attempt > 1:
        s.log("info", f"connecting to the agent (attempt {event.attempt})")
    else:
        s.log("debug", "connecting to the agent")
    if s.m.state is not S.SPEAKING:
        s.fire(T.CONNECT)


def _opened(s: _Step, event: ev.Opened) -> None:
    s.set(session_error=None, fatal=False, conversation_id=event.conversation_id, reported=frozenset())
    s.log("info", f"conversation {event.conversation_id} open (agent audio {event.agent_output_audio_format}, "
          f"mic audio {event.user_input_audio_format})")
    s.publish(type="connection", connected=True, conversation_id=event.conversation_id,
              agent_output_audio_format=event.agent_output_audio_format,
              user_input_audio_format=event.user_input_audio_format)
    if not s.m.queued:
        _admitted(s)


def _admitted(s: _Step) -> None:
    """The conversation is open and what is sent reaches the agent."""
    s.set(link=Link.OPEN)
    if s.m.state is S.ERROR and s.m.device_error is None:
        s.fire(T.RECOVER)
        s.fire(T.CONNECT)
    s.fire(T.LISTEN if s.m.in_turn or s.m.config.mode == "always" else T.OPENED)
    if s.m.muted:
        s.fire(T.MUTE)


def _agent_audio(s: _Step, event: ev.AgentAudio) -> None:
    s.do(fx.Play(event.pcm, event.rate, event.new_turn))
    if event.final:
        s.set(marks_final=True, reply_complete=True, dry_since=None)
    elif event.new_turn or s.m.dry_since is not None:
        s.set(reply_complete=False, dry_since=None)
    m = s.m
    if m.state in (S.SPEAKING, S.MUTED):
        return
    if m.speech_ended_at is not None:
        s.do(fx.Observe("response_latency", s.now - m.speech_ended_at))
        s.set(speech_ended_at=None)
    if m.in_turn and m.config.half_duplex:
        _end_turn(s)
    s.fire(T.AGENT_SPEAKS)


def _interrupted(s: _Step, event: ev.Interrupted) -> None:
    s.do(fx.Flush(barge_in=True))
    s.publish(type="interruption", event_id=event.event_id)
    if s.m.state is S.SPEAKING:
        s.log("info", f"interrupted by the user (interruption {event.event_id})")
        s.fire(T.LISTEN)
    else:  # the service also sends one before it answers text input: nothing was playing
        s.log("debug", f"interruption {event.event_id} while the agent was not speaking")


def _user_transcript(s: _Step, event: ev.UserTranscript) -> None:
    if s.m.config.transcripts:
        s.do(fx.Log("info", f"user: {event.text}", transcript=True))
    s.publish(type="user_transcript", text=event.text, event_id=event.event_id)
    if s.m.state is S.LISTENING and not s.m.config.push_to_talk:
        s.do(fx.Gate(GateCommand.END_TURN))
        _turn_over(s)


def _agent_response(s: _Step, event: ev.AgentResponse) -> None:
    if s.m.config.transcripts:
        s.do(fx.Log("info", f"agent: {event.text}", transcript=True))
    s.publish(type="agent_response", text=event.text, event_id=event.event_id)


def _text_part(s: _Step, event: ev.AgentTextPart) -> None:
    s.publish(type="agent_response_part", part=event.part, text=event.text, event_id=event.event_id)


def _correction(s: _Step, event: ev.AgentCorrection) -> None:
    s.publish(type="agent_response_correction", original=event.original, corrected=event.corrected,
              event_id=event.event_id)


def _tool_call(s: _Step, event: ev.ToolCall) -> None:
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


def _mcp_tool_call(s: _Step, event: ev.McpToolCall) -> None:
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


def _queued(s: _Step, event: ev.Queued) -> None:
    s.publish(type="queue_status", status=event.status)
    was = s.m.queued
    s.set(queued=event.waiting)
    if event.waiting:
        if not was:
            s.log("warning", f"{QUEUED_TEXT}; speech and messages are kept until it admits this device")
            s.set(link=Link.CONNECTING)
            if s.m.state is S.IDLE:
                s.fire(T.CONNECT)
        return
    if event.status == "timed_out":
        s.log("warning", "the agent's service kept this device queued until it gave up (all agents busy)")
    elif was:
        s.log("info", "admitted by the agent's service" if event.status == "admitted"
              else f"out of the agent's queue ({event.status[:40]!r})")
        if s.m.conversation_id is not None:  # its metadata came first
            _admitted(s)


def _tool_response(s: _Step, event: ev.AgentToolResponse) -> None:
    if event.tool_name == "end_call":
        s.log("info", "the agent is ending the call")
    s.publish(type="agent_tool_response", tool_name=event.tool_name, is_error=event.is_error)


def _server_error(s: _Step, event: ev.ServerError) -> None:
    _log_once(s, "warning", f"server {event.kind.replace('_', ' ')}: {event.error_type or 'error'} "
              f"{(event.message or '')[:200]} (code {event.code})")
    s.publish(type="error", source="server", kind=event.kind, error_type=event.error_type, code=event.code,
              message=event.message)


def _notice(s: _Step, event: ev.Notice) -> None:
    s.log(event.level, event.text)


def _closed(s: _Step, event: ev.Closed) -> None:
    was_connected = s.m.connected
    if event.was_open:
        s.do(fx.Observe("conversation_seconds", event.lasted))
    s.set(link=Link.CLOSED if event.retry_in is None else Link.BACKING_OFF, conversation_id=None, tools=(),
          queued=False)
    s.publish(type="connection", connected=False, reason=event.reason, outcome=event.outcome.value,
              retry_in=event.retry_in, code=event.code)
    nxt = f"; retrying in {event.retry_in:.1f} s" if event.retry_in is not None else ""
    # A new conversation follows (renewal, reconnect): the user's turn goes on and what
    # they say meanwhile is pre-buffered; ending it would drop speech until VAD retriggers.
    if event.retry_in is None:
        _end_turn(s)
    if event.outcome in (Outcome.ENDED, Outcome.CLOSED):
        s.log("info", f"{'conversation ended' if was_connected else 'stopped connecting'}: {event.reason}{nxt}")
        if s.m.state is not S.SPEAKING:
            s.fire(T.CLOSED)
        return
    _stop_playback(s)
    s.set(session_error=event.reason, fatal=event.outcome is Outcome.FATAL)
    if s.m.fatal:
        _log_once(s, "error", f"cannot open a conversation: {event.reason}{nxt}")
        s.publish(type="error", source="session", message=event.reason)
        if s.fire(T.FAIL):
            s.earcon("error")
        return
    first = event.reason not in s.m.reported
    s.log("warning" if was_connected or first else "info", f"disconnected: {event.reason}{nxt}")
    _remember(s, event.reason)
    if s.m.state is not S.ERROR or s.m.device_error is None:
        if s.m.state is S.ERROR:
            s.fire(T.RECOVER)
        if s.fire(T.LOST) and was_connected:
            s.earcon("offline")


def _log_once(s: _Step, level: fx.Level, text: str) -> None:
    """The same failure again and again (a bad key): one line at ``level``, then debug."""
    s.log("debug" if text in s.m.reported else level, text)
    _remember(s, text)


def _remember(s: _Step, text: str) -> None:
    reported = s.m.reported if len(s.m.reported) < MAX_REPORTED else frozenset()
    s.set(reported=reported | {text})


# --- devices and the rest ----------------------------------------------------------------------


def _device_failed(s: _Step, event: i.DeviceFailed) -> None:
    errors = dict(s.m.device_errors)
    first = errors.pop(event.which, None) is None
    errors[event.which] = f"{event.which}: {event.message}"  # the latest failure last
    s.set(device_errors=tuple(errors.items()))
    if first:
        s.log("error", f"{event.which} device failed: {event.message}; the daemon keeps running and reopens it")
    s.publish(type="error", source=event.which, message=event.message)
    s.fire(T.FAIL)


def _device_recovered(s: _Step, event: i.DeviceRecovered) -> None:
    errors = dict(s.m.device_errors)
    if errors.pop(event.which, None) is None:
        return
    s.set(device_errors=tuple(errors.items()))
    s.log("info", f"{event.which} device is back")
    if s.m.state is S.ERROR and not errors and not s.m.fatal:
        s.fire(T.RECOVER)


_Handler = Callable[[_Step, Any], None]
_HANDLERS: dict[type, _Handler] = {
    # everywhere but the conversation
    i.Ready: lambda s, e: _ready(s),
    i.TurnStarted: _turn_started,
    i.TurnEnded: _turn_ended,
    i.WakeWord: _wake_word,
    i.PlayedOut: _played_out,
    i.Tick: _tick,
    i.Button: _button,
    i.StartListening: lambda s, e: _start_listening(s),
    i.StopListening: lambda s, e: _stop_listening(s),
    i.Stop: lambda s, e: _stop(s),
    i.SetMuted: lambda s, e: _set_muted(s, e.muted),
    i.Say: lambda s, e: _send(s, "user_message", p.encode_user_message(e.text)),
    i.ContextualUpdate: lambda s, e: _send(s, "contextual_update", p.encode_contextual_update(e.text, e.context_id)),
    i.ToolResult: _tool_result,
    i.McpApproval: _mcp_approval,
    i.DeviceFailed: _device_failed,
    i.DeviceRecovered: _device_recovered,
    i.ToolHandlers: lambda s, e: s.set(tool_handlers=e.tools),
    i.OpenConversation: lambda s, e: s.do(fx.Request()),
    i.ShuttingDown: lambda s, e: s.set(shutting_down=True),
    # the conversation
    ev.Connecting: _connecting,
    ev.Opened: _opened,
    ev.AgentAudio: _agent_audio,
    ev.Interrupted: _interrupted,
    ev.UserTranscript: _user_transcript,
    ev.AgentResponse: _agent_response,
    ev.AgentCorrection: _correction,
    ev.AgentTextPart: _text_part,
    ev.AgentResponseComplete: lambda s, e: s.publish(type="agent_response_complete", event_id=e.event_id),
    ev.AgentResponseMetadata: lambda s, e: s.publish(type="agent_response_metadata", event_id=e.event_id,
                                                     metadata=dict(e.data)),
    ev.ToolCall: _tool_call,
    ev.McpToolCall: _mcp_tool_call,
    ev.Queued: _queued,
    ev.AgentToolResponse: _tool_response,
    ev.ServerError: _server_error,
    ev.Notice: _notice,
    ev.Closed: _closed,
}
