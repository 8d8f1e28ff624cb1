"""The rules of the agent's reply: its audio, the server's interruption, the speaker
playing it out (or running dry before its last chunk), and the waits for it (thinking
for too long, a stalled reply)."""

from __future__ import annotations

from ..engine import events as ev
from . import effects as fx
from . import inputs as i
from .model import REPLY_STALL, THINKING_TIMEOUT, Link
from .states import State, Trigger
from .step import Step, end_turn

S, T = State, Trigger


def agent_audio(s: Step, event: ev.AgentAudio) -> None:
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
        end_turn(s)
    s.fire(T.AGENT_SPEAKS)


def interrupted(s: Step, event: ev.Interrupted) -> None:
    s.do(fx.Flush(barge_in=True))
    s.publish(type="interruption", event_id=event.event_id)
    if s.m.state is S.SPEAKING:
        s.log("info", f"interrupted by the user (interruption {event.event_id})")
        s.fire(T.LISTEN)
    else:  # the service also sends one before it answers text input: nothing was playing
        s.log("debug", f"interruption {event.event_id} while the agent was not speaking")


def played_out(s: Step, _: i.PlayedOut) -> None:
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
    _played(s)


def _played(s: Step) -> None:
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


def thinking_timeout(s: Step) -> None:
    """At its deadline: no reply came; back to idle."""
    if s.m.state is S.THINKING and s.m.thinking_since is not None and s.now - s.m.thinking_since >= THINKING_TIMEOUT:
        s.log("info", f"no reply within {THINKING_TIMEOUT:g} s; back to idle")
        s.fire(T.STOP)


def stall(s: Step) -> None:
    """At its deadline: the speaker ran dry and the reply's last chunk never came."""
    if s.m.state is S.SPEAKING and s.m.dry_since is not None and s.now - s.m.dry_since >= REPLY_STALL:
        s.log("info", f"no more of the reply within {REPLY_STALL:g} s of the speaker running dry, and no chunk "
              "marked as its last (is_final): done speaking; from now on a reply ends when the speaker runs dry "
              "until the server marks a last chunk again")
        s.set(marks_final=False)
        _played(s)
