"""The rules of the conversation's link: an attempt starting, the conversation opening,
the service's queue, the close and what follows it (a retry, an error), and failures
said once. The link's phase is :attr:`~pi_agent.decide.model.Model.link`, written only
here, from the engine's events."""

from __future__ import annotations

from ..engine import events as ev
from ..engine.backoff import Outcome
from . import effects as fx
from .model import MAX_REPORTED, QUEUED_TEXT, Link
from .states import State, Trigger
from .step import Step, end_turn, stop_playback

S, T = State, Trigger


def connecting(s: Step, event: ev.Connecting) -> None:
    s.set(link=Link.CONNECTING)
    if event.attempt > 1:
        s.log("info", f"connecting to the agent (attempt {event.attempt})")
    else:
        s.log("debug", "connecting to the agent")
    if s.m.state is not S.SPEAKING and not (s.m.state is S.ERROR and s.m.device_error is not None):
        s.fire(T.CONNECT)  # a device still failing stays the state shown; the link connects behind it


def opened(s: Step, event: ev.Opened) -> None:
    s.set(session_error=None, fatal=False, conversation_id=event.conversation_id, reported=frozenset())
    s.log("info", f"conversation {event.conversation_id} open (agent audio {event.agent_output_audio_format}, "
          f"mic audio {event.user_input_audio_format})")
    s.publish(type="connection", connected=True, conversation_id=event.conversation_id,
              agent_output_audio_format=event.agent_output_audio_format,
              user_input_audio_format=event.user_input_audio_format)
    if not s.m.queued:
        _admitted(s)


def _admitted(s: Step) -> None:
    """The conversation is open and what is sent reaches the agent."""
    s.set(link=Link.OPEN)
    if s.m.state is S.ERROR and s.m.device_error is None:
        s.fire(T.RECOVER)
        s.fire(T.CONNECT)
    s.fire(T.LISTEN if s.m.in_turn or s.m.config.mode == "always" else T.OPENED)
    if s.m.muted:
        s.fire(T.MUTE)


def queued(s: Step, event: ev.Queued) -> None:
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


def server_error(s: Step, event: ev.ServerError) -> None:
    _log_once(s, "warning", f"server {event.kind.replace('_', ' ')}: {event.error_type or 'error'} "
              f"{(event.message or '')[:200]} (code {event.code})")
    s.publish(type="error", source="server", kind=event.kind, error_type=event.error_type, code=event.code,
              message=event.message)


def closed(s: Step, event: ev.Closed) -> None:
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
        end_turn(s)
    if event.outcome in (Outcome.ENDED, Outcome.CLOSED):
        s.log("info", f"{'conversation ended' if was_connected else 'stopped connecting'}: {event.reason}{nxt}")
        if s.m.state is not S.SPEAKING:
            s.fire(T.CLOSED)
        return
    stop_playback(s)
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


def _log_once(s: Step, level: fx.Level, text: str) -> None:
    """The same failure again and again (a bad key): one line at ``level``, then debug."""
    s.log("debug" if text in s.m.reported else level, text)
    _remember(s, text)


def _remember(s: Step, text: str) -> None:
    reported = s.m.reported if len(s.m.reported) < MAX_REPORTED else frozenset()
    s.set(reported=reported | {text})
