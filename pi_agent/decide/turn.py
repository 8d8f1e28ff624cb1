"""The rules of the user's turn: the capture gate's verdicts, the wake word, the button,
listening started and stopped (button, API), stop, mute, and the server's transcript
that ends a turn. The turn is :attr:`~pi_agent.decide.model.Model.in_turn`, held only in
the model: the gate is told it with each frame and takes ``Gate`` commands."""

from __future__ import annotations

from ..engine import events as ev
from . import effects as fx
from . import inputs as i
from .button import ButtonEvent, ButtonIntent
from .effects import GateCommand
from .states import State, Trigger
from .step import Step, end_turn, stop_playback

S, T = State, Trigger


def started(s: Step, _: i.TurnStarted) -> None:
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


def _over(s: Step) -> None:
    s.set(in_turn=False, speech_ended_at=s.now)
    if s.fire(T.SPEECH_END) and s.m.config.push_to_talk:
        s.earcon("done")


def ended(s: Step, event: i.TurnEnded) -> None:
    if not event.nothing_said:
        _over(s)
        return
    # A press or the wake word, then silence: nothing for the agent to answer.
    s.set(in_turn=False)
    s.log("info", "nothing was said; " + ("waiting for the wake word again" if s.m.config.wake_word
                                          else "no longer listening"))
    if s.m.state is S.LISTENING:
        s.fire(T.STOP)


def wake_word(s: Step, event: i.WakeWord) -> None:
    """The wake word: a new turn (the gate starts it), or the stop word over the agent."""
    m = s.m
    s.publish(type="wake_word", probability=round(event.probability, 3))
    if m.state is S.SPEAKING:
        s.log("info", f"wake word heard over the reply (probability {event.probability:.2f}): stopping it")
        stop_playback(s)
        if m.in_turn and m.connected:
            s.fire(T.LISTEN)
    elif m.in_turn:
        s.log("debug", f"wake word heard during the user's turn (probability {event.probability:.2f})")
        return
    else:
        s.log("info", f"wake word heard (probability {event.probability:.2f})")
    s.earcon("listening")


def start_listening(s: Step) -> None:
    """Button press / API: stop the agent if it speaks, then listen."""
    m = s.m
    if m.muted:
        s.log("info", "muted: unmute first (long press or the unmute command)")
        return
    if m.state is S.SPEAKING:
        stop_playback(s)
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


def stop_listening(s: Step) -> None:
    if s.m.config.push_to_talk:
        s.do(fx.Gate(GateCommand.RELEASE))  # the gate ends the turn on the next frame
    elif s.m.in_turn:
        s.do(fx.Gate(GateCommand.END_TURN))
        _over(s)


def stop(s: Step) -> None:
    """Stop everything in progress: the agent's speech, the user's turn."""
    s.set(follow_up_until=None)
    stop_playback(s)
    s.do(fx.Gate(GateCommand.RELEASE))
    end_turn(s)
    s.fire(T.STOP)


def set_muted(s: Step, muted: bool) -> None:
    if muted == s.m.muted:
        return
    s.set(muted=muted, talk_from_down=False, follow_up_until=None)
    s.log("info", f"microphone {'muted' if muted else 'unmuted'}")
    s.publish(type="mute", muted=muted)
    if muted:
        s.do(fx.Gate(GateCommand.RELEASE))
        end_turn(s)
        s.fire(T.MUTE)
    else:
        s.fire(T.UNMUTE)


def button(s: Step, event: i.Button) -> None:
    ptt = s.m.config.push_to_talk
    if ptt and event.event is ButtonEvent.LONG_HOLD and event.heard_speech:
        # A long push-to-talk hold while speaking is a long question, not a request to
        # mute: only a silent long hold toggles mute in this mode.
        s.log("debug", "long push-to-talk hold with speech: still talking")
        return
    if ptt and s.m.talk_from_down and event.event in (ButtonEvent.PRESS, ButtonEvent.HOLD_END):
        s.set(talk_from_down=False)  # released: the interrupting turn is over
        stop_listening(s)
    policy, intents = s.m.button.decide(event.event, s.m.state)
    s.set(button=policy)
    for intent in intents:
        s.log("debug", f"button {event.event} -> {intent}")
        if intent is ButtonIntent.STOP:
            stop(s)
            if ptt and event.event is ButtonEvent.DOWN:
                # Push-to-talk: the press that stops the agent also starts the user's turn.
                s.set(talk_from_down=True)
                start_listening(s)
        elif intent is ButtonIntent.START_LISTENING:
            if ptt and not s.m.config.toggle:
                s.log("info", "push-to-talk: hold the button while you speak")
            else:
                start_listening(s)
        elif intent in (ButtonIntent.STOP_LISTENING, ButtonIntent.TALK_END):
            stop_listening(s)
        elif intent is ButtonIntent.TALK_START:
            start_listening(s)
        elif intent is ButtonIntent.TALK_CANCEL:
            s.do(fx.Gate(GateCommand.RELEASE))
            end_turn(s)
        elif intent is ButtonIntent.TOGGLE_MUTE:
            set_muted(s, not s.m.muted)


def user_transcript(s: Step, event: ev.UserTranscript) -> None:
    if s.m.config.transcripts:
        s.do(fx.Log("info", f"user: {event.text}", transcript=True))
    s.publish(type="user_transcript", text=event.text, event_id=event.event_id)
    if s.m.state is S.LISTENING and not s.m.config.push_to_talk:
        s.do(fx.Gate(GateCommand.END_TURN))
        _over(s)


def close_follow_up(s: Step) -> None:
    """At its deadline: the wake_word mode's follow-up window closes."""
    if s.m.follow_up_until is not None and s.m.follow_up_until <= s.now:
        s.set(follow_up_until=None)
        s.log("debug", "no follow-up: waiting for the wake word again")
