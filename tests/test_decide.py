"""The decision function, tested as a table: model + input -> model + effects.

Every row of the state table is reached by at least one case (checked at the end), and
the cases cover how the button, the capture gate, the echo policy and the session
policy meet. No I/O, no clock: ``now`` is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from pi_agent.decide import effects as fx
from pi_agent.decide.button import ButtonEvent as B
from pi_agent.decide.button import ButtonPolicy
from pi_agent.decide import inputs as i
from pi_agent.decide.decide import decide
from pi_agent.decide.effects import GateCommand as G
from pi_agent.decide.model import THINKING_TIMEOUT, Config, Link, Model, PendingTool, deadline, health, status
from pi_agent.decide.states import TRANSITIONS, State, Trigger
from pi_agent.engine import events as ev
from pi_agent.engine.backoff import Outcome

S, T = State, Trigger
NOW = 100.0


def m(state: State = S.IDLE, mode: str = "vad", *, half_duplex: bool = True, toggle: bool = False,
      **fields: Any) -> Model:
    return Model(config=Config(mode, half_duplex, toggle), state=state, **fields)


CONNECTED = {"link": Link.OPEN, "conversation_id": "c1"}


def closed(outcome: Outcome, retry_in: float | None = 1.0, reason: str = "why", was_open: bool = True) -> ev.Closed:
    return ev.Closed(outcome, reason, retry_in, None, was_open, 3.0)


@dataclass
class Case:
    model: Model
    input: i.Input
    state: State  # the state after
    do: list[Any] = field(default_factory=list)  # these effects, in this order (others may come between)
    dont: list[Any] = field(default_factory=list)  # none of these effects
    model_has: dict[str, Any] = field(default_factory=dict)  # fields of the model after


def salient(effects: list[fx.Effect]) -> list[Any]:
    """The effects without the log lines (what the daemon does, not what it says)."""
    return [e for e in effects if not isinstance(e, fx.Log)]


CASES: dict[str, Case] = {
    # --- start-up and connecting ---
    "ready": Case(m(S.STARTING), i.Ready(), S.IDLE),
    "connecting at start": Case(m(S.STARTING), ev.Connecting(1), S.CONNECTING, model_has={"connecting": True}),
    "connecting from idle": Case(m(S.IDLE), ev.Connecting(1), S.CONNECTING),
    "retrying from offline": Case(m(S.OFFLINE, link=Link.BACKING_OFF), ev.Connecting(2), S.CONNECTING,
                                  model_has={"backing_off": False}),
    "retrying from error (a bad key, at the cap)": Case(m(S.ERROR, fatal=True), ev.Connecting(3), S.CONNECTING),
    "connecting while the reply plays keeps speaking": Case(m(S.SPEAKING), ev.Connecting(1), S.SPEAKING,
                                                             model_has={"connecting": True}),
    "opened with nobody talking": Case(m(S.CONNECTING), ev.Opened("c1", "pcm_16000", "pcm_16000"), S.IDLE,
                                       do=[fx.Publish({"type": "connection", "connected": True, "conversation_id": "c1",
                                                       "agent_output_audio_format": "pcm_16000",
                                                       "user_input_audio_format": "pcm_16000"})],
                                       model_has={"connected": True, "conversation_id": "c1"}),
    "opened during the user's turn": Case(m(S.CONNECTING, in_turn=True), ev.Opened("c1", "pcm_16000", "pcm_16000"),
                                          S.LISTENING),
    "opened in always mode listens": Case(m(S.CONNECTING, "always"), ev.Opened("c1", "pcm_16000", "pcm_16000"),
                                          S.LISTENING),
    "opened while muted stays muted": Case(m(S.CONNECTING, muted=True), ev.Opened("c1", "pcm_16000", "pcm_16000"),
                                           S.MUTED),
    "opened after a fatal error recovers": Case(m(S.ERROR, fatal=True, session_error="401"),
                                                ev.Opened("c1", "pcm_16000", "pcm_16000"), S.IDLE,
                                                model_has={"fatal": False, "session_error": None}),
    # --- the user's turn (capture gate) ---
    "speech when idle and connected": Case(m(S.IDLE, **CONNECTED), i.TurnStarted(), S.LISTENING,
                                           dont=[fx.Request()], model_has={"in_turn": True}),
    "speech when idle asks for a conversation": Case(m(S.IDLE), i.TurnStarted(), S.CONNECTING, do=[fx.Request()]),
    "speech while thinking is a new turn": Case(m(S.THINKING, **CONNECTED), i.TurnStarted(), S.LISTENING),
    "speech over the reply (full duplex) waits for the server": Case(
        m(S.SPEAKING, half_duplex=False, **CONNECTED), i.TurnStarted(), S.SPEAKING, dont=[fx.Flush()]),
    "speech while offline is kept for later": Case(m(S.OFFLINE), i.TurnStarted(), S.OFFLINE, do=[fx.Request()]),
    "the turn ends": Case(m(S.LISTENING, in_turn=True, **CONNECTED), i.TurnEnded(), S.THINKING,
                          dont=[fx.Earcon("done")], model_has={"in_turn": False, "speech_ended_at": NOW,
                                                              "thinking_since": NOW}),
    "a push-to-talk turn ends with a sound": Case(m(S.LISTENING, "push_to_talk", in_turn=True, **CONNECTED),
                                                  i.TurnEnded(), S.THINKING, do=[fx.Earcon("done")]),
    "the server's transcript ends a vad turn": Case(
        m(S.LISTENING, in_turn=True, **CONNECTED), ev.UserTranscript("hello", 3), S.THINKING,
        do=[fx.Publish({"type": "user_transcript", "text": "hello", "event_id": 3}), fx.Gate(G.END_TURN)]),
    "... not a push-to-talk one (the button does)": Case(
        m(S.LISTENING, "push_to_talk", in_turn=True, **CONNECTED), ev.UserTranscript("hello", 3), S.LISTENING,
        dont=[fx.Gate(G.END_TURN)]),
    # --- the agent's reply, echo ---
    "the reply starts": Case(m(S.THINKING, speech_ended_at=NOW - 1.0, **CONNECTED), ev.AgentAudio(b"\0\0", 16000, True),
                             S.SPEAKING, do=[fx.Play(b"\0\0", 16000, True), fx.Observe("response_latency", 1.0)]),
    "a reply over a half-duplex turn ends the turn": Case(
        m(S.LISTENING, in_turn=True, **CONNECTED), ev.AgentAudio(b"\0\0", 16000, True), S.SPEAKING,
        do=[fx.Gate(G.END_TURN)], model_has={"in_turn": False}),
    "a reply over a full-duplex turn keeps it": Case(
        m(S.LISTENING, half_duplex=False, in_turn=True, **CONNECTED), ev.AgentAudio(b"\0\0", 16000, True),
        S.SPEAKING, dont=[fx.Gate(G.END_TURN)], model_has={"in_turn": True}),
    "a reply from idle (a greeting)": Case(m(S.IDLE, **CONNECTED), ev.AgentAudio(b"\0\0", 16000, True), S.SPEAKING),
    "more of the reply": Case(m(S.SPEAKING, **CONNECTED), ev.AgentAudio(b"\0\0", 16000, False), S.SPEAKING,
                              do=[fx.Play(b"\0\0", 16000, False)]),
    "muted: the reply plays, the state stays": Case(m(S.MUTED, muted=True, **CONNECTED),
                                                    ev.AgentAudio(b"\0\0", 16000, True), S.MUTED),
    "the reply has played": Case(m(S.SPEAKING, **CONNECTED), i.PlayedOut(), S.IDLE),
    "... in always mode the user's turn follows": Case(m(S.SPEAKING, "always", **CONNECTED), i.PlayedOut(),
                                                       S.LISTENING),
    "... and a turn that went on meanwhile is picked up": Case(m(S.SPEAKING, in_turn=True, **CONNECTED),
                                                               i.PlayedOut(), S.LISTENING),
    "... and a reconnect that waited shows": Case(m(S.SPEAKING, link=Link.BACKING_OFF), i.PlayedOut(), S.CONNECTING),
    "the server's interruption": Case(m(S.SPEAKING, **CONNECTED), ev.Interrupted(4), S.LISTENING,
                                      do=[fx.Flush(barge_in=True),
                                          fx.Publish({"type": "interruption", "event_id": 4})]),
    # --- time ---
    "thinking for too long": Case(m(S.THINKING, thinking_since=NOW - THINKING_TIMEOUT, **CONNECTED), i.Tick(),
                                  S.IDLE),
    "not yet too long": Case(m(S.THINKING, thinking_since=NOW - 1, **CONNECTED), i.Tick(), S.THINKING),
    "a client tool that did not answer in time": Case(
        m(S.THINKING, tools=(PendingTool("t1", "weather", NOW),), **CONNECTED), i.Tick(), S.THINKING,
        do=[fx.Send("client_tool_result", '{"type":"client_tool_result","tool_call_id":"t1","result":"client tool '
                    '\'weather\' did not answer in time","is_error":true}')], model_has={"tools": ()}),
    # --- commands (button, API) ---
    "stop while speaking": Case(m(S.SPEAKING, **CONNECTED), i.Stop(), S.IDLE,
                                do=[fx.Flush(), fx.Gate(G.RELEASE), fx.Gate(G.END_TURN)]),
    "stop while listening": Case(m(S.LISTENING, in_turn=True, **CONNECTED), i.Stop(), S.IDLE,
                                 model_has={"in_turn": False}),
    "stop while thinking": Case(m(S.THINKING, **CONNECTED), i.Stop(), S.IDLE),
    "start listening when connected": Case(m(S.IDLE, **CONNECTED), i.StartListening(), S.LISTENING,
                                           do=[fx.Gate(G.START_TURN), fx.Earcon("listening")], dont=[fx.Request()]),
    "start listening asks for a conversation": Case(m(S.IDLE), i.StartListening(), S.CONNECTING,
                                                    do=[fx.Gate(G.START_TURN), fx.Request(), fx.Earcon("listening")]),
    "start listening over the reply stops it": Case(m(S.SPEAKING, **CONNECTED), i.StartListening(), S.LISTENING,
                                                    do=[fx.Flush(), fx.Gate(G.START_TURN)]),
    "start listening while muted does nothing": Case(m(S.MUTED, muted=True), i.StartListening(), S.MUTED,
                                                     dont=[fx.Gate(G.START_TURN), fx.Request()]),
    "start listening in push-to-talk holds the gate open": Case(
        m(S.IDLE, "push_to_talk", **CONNECTED), i.StartListening(), S.IDLE, do=[fx.Gate(G.PRESS)]),
    "stop listening ends a vad turn": Case(m(S.LISTENING, in_turn=True, **CONNECTED), i.StopListening(), S.THINKING,
                                           do=[fx.Gate(G.END_TURN)]),
    "stop listening releases push-to-talk": Case(m(S.LISTENING, "push_to_talk", in_turn=True, **CONNECTED),
                                                 i.StopListening(), S.LISTENING, do=[fx.Gate(G.RELEASE)]),
    "mute": Case(m(S.LISTENING, in_turn=True, **CONNECTED), i.SetMuted(True), S.MUTED,
                 do=[fx.Publish({"type": "mute", "muted": True}), fx.Gate(G.RELEASE), fx.Gate(G.END_TURN)],
                 model_has={"muted": True, "in_turn": False}),
    "mute when idle": Case(m(S.IDLE), i.SetMuted(True), S.MUTED),
    "mute while thinking": Case(m(S.THINKING, **CONNECTED), i.SetMuted(True), S.MUTED),
    "mute while speaking": Case(m(S.SPEAKING, **CONNECTED), i.SetMuted(True), S.MUTED),
    "unmute": Case(m(S.MUTED, muted=True), i.SetMuted(False), S.IDLE, model_has={"muted": False}),
    "say": Case(m(S.IDLE), i.Say("hi"), S.IDLE, do=[fx.Send("user_message", '{"type":"user_message","text":"hi"}')]),
    "contextual update": Case(m(S.IDLE), i.ContextualUpdate("door"), S.IDLE,
                              do=[fx.Send("contextual_update", '{"type":"contextual_update","text":"door"}')]),
    "open a conversation (pi-agent say)": Case(m(S.IDLE), i.OpenConversation(), S.IDLE, do=[fx.Request()]),
    "shutting down": Case(m(S.IDLE), i.ShuttingDown(), S.IDLE, model_has={"shutting_down": True}),
    # --- client tools ---
    "a tool call nobody can answer": Case(
        m(S.THINKING, **CONNECTED), ev.ToolCall("weather", "t1", {"city": "Lisbon"}), S.THINKING,
        do=[fx.Send("client_tool_result", '{"type":"client_tool_result","tool_call_id":"t1","result":"client tool '
                    '\'weather\' is not available on this device","is_error":true}')]),
    "a tool call a client handles": Case(
        m(S.THINKING, tool_handlers=frozenset({"weather"}), **CONNECTED), ev.ToolCall("weather", "t1", {}),
        S.THINKING, dont=[fx.Send], model_has={"tools": (PendingTool("t1", "weather", NOW + 10.0),)}),
    "a tool call a client handles with *": Case(
        m(S.THINKING, tool_handlers=frozenset({"*"}), **CONNECTED), ev.ToolCall("weather", "t1", {}),
        S.THINKING, dont=[fx.Send]),
    "a tool call only other tools are handled for": Case(
        m(S.THINKING, tool_handlers=frozenset({"lights"}), **CONNECTED), ev.ToolCall("weather", "t1", {}),
        S.THINKING, do=[fx.Send]),
    "its answer": Case(m(S.THINKING, tools=(PendingTool("t1", "weather", NOW + 5),), **CONNECTED),
                       i.ToolResult("t1", "sunny", False), S.THINKING, model_has={"tools": ()},
                       do=[fx.Send("client_tool_result", '{"type":"client_tool_result","tool_call_id":"t1",'
                                   '"result":"sunny","is_error":false}')]),
    "an answer to no call": Case(m(S.THINKING, **CONNECTED), i.ToolResult("t9", "x", False), S.THINKING,
                                 dont=[fx.Send]),
    # --- the conversation ends ---
    "a persistent conversation ends: the turn goes on into the next": Case(
        m(S.LISTENING, in_turn=True, **CONNECTED), closed(Outcome.ENDED, retry_in=0.4), S.IDLE,
        dont=[fx.Gate(G.END_TURN), fx.Flush()], model_has={"in_turn": True, "backing_off": True, "connected": False}),
    "an on_demand conversation closes: the turn ends": Case(
        m(S.LISTENING, in_turn=True, **CONNECTED), closed(Outcome.CLOSED, retry_in=None), S.IDLE,
        do=[fx.Observe("conversation_seconds", 3.0), fx.Gate(G.END_TURN)], model_has={"in_turn": False}),
    "ended while thinking": Case(m(S.THINKING, **CONNECTED), closed(Outcome.ENDED), S.IDLE),
    "ended while connecting": Case(m(S.CONNECTING), closed(Outcome.CLOSED, None, was_open=False), S.IDLE),
    "ended while idle": Case(m(S.IDLE, **CONNECTED), closed(Outcome.ENDED), S.IDLE),
    "given up while offline": Case(m(S.OFFLINE), closed(Outcome.CLOSED, None, was_open=False), S.IDLE),
    "ended while the goodbye plays: it plays out": Case(m(S.SPEAKING, **CONNECTED), closed(Outcome.ENDED), S.SPEAKING,
                                                        dont=[fx.Flush()]),
    "ended while muted": Case(m(S.MUTED, muted=True, **CONNECTED), closed(Outcome.ENDED), S.MUTED),
    "lost mid-reply: silence at once, offline": Case(
        m(S.SPEAKING, **CONNECTED), closed(Outcome.RETRY), S.OFFLINE,
        do=[fx.Flush(), fx.Earcon("offline")], model_has={"session_error": "why", "backing_off": True}),
    "lost while listening": Case(m(S.LISTENING, in_turn=True, **CONNECTED), closed(Outcome.RETRY), S.OFFLINE,
                                 model_has={"in_turn": True}),
    "lost while thinking": Case(m(S.THINKING, **CONNECTED), closed(Outcome.RETRY), S.OFFLINE),
    "lost while idle": Case(m(S.IDLE, **CONNECTED), closed(Outcome.RETRY), S.OFFLINE),
    "lost while muted": Case(m(S.MUTED, muted=True, **CONNECTED), closed(Outcome.RETRY), S.OFFLINE),
    "could not connect": Case(m(S.CONNECTING), closed(Outcome.RETRY, was_open=False), S.OFFLINE,
                              dont=[fx.Earcon("offline")]),
    "refused: error, once": Case(m(S.CONNECTING), closed(Outcome.FATAL, 60.0, "HTTP 401", False), S.ERROR,
                                 do=[fx.Log("error", "cannot open a conversation: HTTP 401; retrying in 60.0 s"),
                                     fx.Earcon("error")], model_has={"fatal": True}),
    "refused again: a debug line": Case(m(S.CONNECTING, reported=frozenset({"cannot open a conversation: HTTP 401; "
                                                                            "retrying in 60.0 s"})),
                                        closed(Outcome.FATAL, 60.0, "HTTP 401", False), S.ERROR,
                                        do=[fx.Log("debug", "cannot open a conversation: HTTP 401; "
                                                            "retrying in 60.0 s")]),
    "a network failure while a device is down stays in error": Case(
        m(S.ERROR, device_errors=(("microphone", "microphone: unplugged"),)), closed(Outcome.RETRY, was_open=False),
        S.ERROR),
    "a network failure after a fatal one is offline": Case(
        m(S.ERROR, fatal=True), closed(Outcome.RETRY, was_open=False), S.OFFLINE, model_has={"fatal": False}),
    # --- devices ---
    "the mic fails at start": Case(m(S.STARTING), i.DeviceFailed("microphone", "no such device"), S.ERROR,
                                   model_has={"device_errors": (("microphone", "microphone: no such device"),)}),
    "the speaker fails mid-reply": Case(m(S.SPEAKING, **CONNECTED), i.DeviceFailed("speaker", "gone"), S.ERROR),
    "... while connecting": Case(m(S.CONNECTING), i.DeviceFailed("speaker", "gone"), S.ERROR),
    "... while idle": Case(m(S.IDLE), i.DeviceFailed("speaker", "gone"), S.ERROR),
    "... while listening": Case(m(S.LISTENING, **CONNECTED), i.DeviceFailed("microphone", "gone"), S.ERROR),
    "... while thinking": Case(m(S.THINKING, **CONNECTED), i.DeviceFailed("microphone", "gone"), S.ERROR),
    "... while offline": Case(m(S.OFFLINE), i.DeviceFailed("microphone", "gone"), S.ERROR),
    "... while muted": Case(m(S.MUTED, muted=True), i.DeviceFailed("microphone", "gone"), S.ERROR),
    "a reopen that fails says why it is still down": Case(
        m(S.ERROR, device_errors=(("speaker", "speaker: gone"),)),
        i.DeviceFailed("speaker", "opening it: a call never returned"), S.ERROR,
        do=[fx.Log("warning", "speaker device still down: opening it: a call never returned")],
        model_has={"device_errors": (("speaker", "speaker: opening it: a call never returned"),)}),
    "... but not twice for the same reason (a device table that changed below it)": Case(
        m(S.ERROR, device_errors=(("microphone", "microphone: no such device 'usb'\n table 1"),)),
        i.DeviceFailed("microphone", "no such device 'usb'\n table 2"), S.ERROR,
        dont=[fx.Log("warning", "microphone device still down: no such device 'usb'")]),
    "the device is back": Case(m(S.ERROR, device_errors=(("speaker", "speaker: gone"),)),
                               i.DeviceRecovered("speaker"), S.IDLE, model_has={"device_errors": ()}),
    "one back, the other still down": Case(
        m(S.ERROR, device_errors=(("speaker", "speaker: gone"), ("microphone", "microphone: gone"))),
        i.DeviceRecovered("speaker"), S.ERROR),
    "back, but the key is still refused": Case(m(S.ERROR, fatal=True, device_errors=(("speaker", "speaker: gone"),)),
                                               i.DeviceRecovered("speaker"), S.ERROR),
    # --- the button ---
    "press while speaking stops it (vad)": Case(m(S.SPEAKING, **CONNECTED), i.Button(B.DOWN), S.IDLE,
                                                do=[fx.Flush()], dont=[fx.Gate(G.START_TURN)],
                                                model_has={"button": ButtonPolicy(swallow=True)}),
    "press while speaking in push-to-talk also starts the turn": Case(
        m(S.SPEAKING, "push_to_talk", **CONNECTED), i.Button(B.DOWN), S.IDLE,
        do=[fx.Flush(), fx.Gate(G.PRESS), fx.Earcon("listening")], model_has={"talk_from_down": True}),
    "... and its release ends that turn": Case(
        m(S.LISTENING, "push_to_talk", talk_from_down=True, button=ButtonPolicy(swallow=True), in_turn=True,
          **CONNECTED), i.Button(B.PRESS), S.LISTENING, do=[fx.Gate(G.RELEASE)], model_has={"talk_from_down": False}),
    "a click when idle starts listening (vad)": Case(m(S.IDLE, **CONNECTED), i.Button(B.PRESS), S.LISTENING,
                                                     do=[fx.Gate(G.START_TURN)]),
    "a click while listening ends the turn": Case(m(S.LISTENING, in_turn=True, **CONNECTED), i.Button(B.PRESS),
                                                  S.THINKING),
    "a click in push-to-talk says to hold": Case(m(S.IDLE, "push_to_talk", **CONNECTED), i.Button(B.PRESS), S.IDLE,
                                                 do=[fx.Log("info", "push-to-talk: hold the button while you speak")],
                                                 dont=[fx.Gate(G.PRESS)]),
    "a click with toggle starts the push-to-talk turn": Case(m(S.IDLE, "push_to_talk", toggle=True, **CONNECTED),
                                                             i.Button(B.PRESS), S.IDLE, do=[fx.Gate(G.PRESS)]),
    "a hold starts push-to-talk": Case(m(S.IDLE, "push_to_talk", **CONNECTED), i.Button(B.HOLD_START), S.IDLE,
                                       do=[fx.Gate(G.PRESS)], model_has={"button": ButtonPolicy(talking=True)}),
    "its release ends it": Case(m(S.LISTENING, "push_to_talk", in_turn=True, button=ButtonPolicy(talking=True),
                                  **CONNECTED), i.Button(B.HOLD_END), S.LISTENING, do=[fx.Gate(G.RELEASE)]),
    "a long silent hold mutes and drops the turn": Case(
        m(S.LISTENING, "push_to_talk", in_turn=True, button=ButtonPolicy(talking=True), **CONNECTED),
        i.Button(B.LONG_HOLD, heard_speech=False), S.MUTED, do=[fx.Gate(G.RELEASE), fx.Gate(G.END_TURN)],
        model_has={"muted": True}),
    "a long hold while talking is a long question": Case(
        m(S.LISTENING, "push_to_talk", in_turn=True, button=ButtonPolicy(talking=True), **CONNECTED),
        i.Button(B.LONG_HOLD, heard_speech=True), S.LISTENING, dont=[fx.Gate(G.END_TURN)]),
    "a long hold unmutes": Case(m(S.MUTED, muted=True), i.Button(B.LONG_HOLD), S.IDLE),
    "a click while muted does nothing": Case(m(S.MUTED, muted=True), i.Button(B.PRESS), S.MUTED,
                                             dont=[fx.Gate(G.START_TURN)]),
    "a click while connecting does nothing": Case(m(S.CONNECTING), i.Button(B.PRESS), S.CONNECTING),
    "a click when offline tries at once": Case(m(S.OFFLINE), i.Button(B.PRESS), S.CONNECTING, do=[fx.Request()]),
    # --- the wake word (the gate starts the turn itself: TurnStarted follows) ---
    "the wake word says it heard": Case(m(S.IDLE, "wake_word"), i.WakeWord(0.97), S.IDLE,
                                        do=[fx.Publish({"type": "wake_word", "probability": 0.97}),
                                            fx.Earcon("listening")]),
    "the wake word over the reply stops it (full duplex)": Case(
        m(S.SPEAKING, "wake_word", half_duplex=False, **CONNECTED), i.WakeWord(0.9), S.IDLE,
        do=[fx.Flush(), fx.Earcon("listening")]),
    "... and listens at once if the user's turn is on": Case(
        m(S.SPEAKING, "wake_word", half_duplex=False, in_turn=True, **CONNECTED), i.WakeWord(0.9), S.LISTENING,
        do=[fx.Flush()]),
    "the wake word within the user's turn is only noted": Case(
        m(S.LISTENING, "wake_word", in_turn=True, **CONNECTED), i.WakeWord(0.9), S.LISTENING,
        dont=[fx.Flush, fx.Earcon]),
    "the turn after the wake word opens a conversation": Case(m(S.IDLE, "wake_word"), i.TurnStarted(), S.CONNECTING,
                                                             do=[fx.Request()], model_has={"in_turn": True}),
    "a wake word and then silence: back to waiting": Case(
        m(S.LISTENING, "wake_word", in_turn=True, **CONNECTED), i.TurnEnded(nothing_said=True), S.IDLE,
        dont=[fx.Earcon], model_has={"in_turn": False, "speech_ended_at": None}),
    "a press and then silence while connecting": Case(
        m(S.CONNECTING, in_turn=True), i.TurnEnded(nothing_said=True), S.CONNECTING, model_has={"in_turn": False}),
    "the reply played out opens the follow-up window": Case(
        m(S.SPEAKING, "wake_word", **CONNECTED), i.PlayedOut(), S.IDLE, model_has={"follow_up_until": NOW + 5.0}),
    "... with follow_up = 0 it does not": Case(
        Model(config=Config("wake_word", follow_up=0.0), state=S.SPEAKING, **CONNECTED), i.PlayedOut(), S.IDLE,
        model_has={"follow_up_until": None}),
    "... nor in vad mode": Case(m(S.SPEAKING, **CONNECTED), i.PlayedOut(), S.IDLE, model_has={"follow_up_until": None}),
    "an answer in the window is a turn, and closes it": Case(
        m(S.IDLE, "wake_word", follow_up_until=NOW + 3, **CONNECTED), i.TurnStarted(), S.LISTENING,
        model_has={"follow_up_until": None}),
    "the window closes at its deadline": Case(m(S.IDLE, "wake_word", follow_up_until=NOW, **CONNECTED), i.Tick(),
                                              S.IDLE, model_has={"follow_up_until": None}),
    "... not before": Case(m(S.IDLE, "wake_word", follow_up_until=NOW + 1, **CONNECTED), i.Tick(), S.IDLE,
                           model_has={"follow_up_until": NOW + 1}),
    "stop closes the window": Case(m(S.IDLE, "wake_word", follow_up_until=NOW + 3, **CONNECTED), i.Stop(), S.IDLE,
                                   model_has={"follow_up_until": None}),
}


def run(case: Case) -> tuple[Model, list[fx.Effect]]:
    return decide(case.model, case.input, NOW)


def _matches(expected: Any, effect: fx.Effect) -> bool:
    return isinstance(effect, expected) if isinstance(expected, type) else effect == expected


@pytest.mark.parametrize("name", CASES)
def test_decision_table(name: str) -> None:
    case = CASES[name]
    after, effects = run(case)
    assert after.state is case.state, (after.state, salient(effects))
    rest = iter(effects)
    for expected in case.do:  # in this order
        assert any(_matches(expected, e) for e in rest), (expected, effects)
    for unwanted in case.dont:
        assert not any(_matches(unwanted, e) for e in effects), (unwanted, effects)
    for key, value in case.model_has.items():
        assert getattr(after, key) == value, (key, getattr(after, key))
    assert case.model.state is case.state or any(
        isinstance(e, fx.StateChange) and e.transition.state is case.state for e in effects)


def test_every_row_of_the_state_table_is_decided_somewhere() -> None:
    fired = {(e.transition.previous, e.transition.trigger)
             for case in CASES.values() for e in run(case)[1] if isinstance(e, fx.StateChange)}
    assert set(TRANSITIONS) - fired == set(), "rows no case reaches"


def test_a_state_change_is_logged_and_published_by_the_controller_only_when_the_state_changes() -> None:
    _, effects = decide(m(S.MUTED, muted=True, **CONNECTED), closed(Outcome.ENDED), NOW)
    [change] = [e for e in effects if isinstance(e, fx.StateChange)]
    assert change.transition.previous is change.transition.state is S.MUTED


def test_an_input_the_state_does_not_allow_changes_nothing_but_a_debug_line() -> None:
    model = m(S.STARTING)
    after, effects = decide(model, i.TurnEnded(), NOW)
    assert after.state is S.STARTING
    assert [e for e in effects if isinstance(e, fx.StateChange)] == []
    assert fx.Log("debug", "trigger speech_end ignored in state starting") in effects


def test_the_model_is_never_changed_in_place() -> None:
    for case in CASES.values():
        before = replace(case.model)
        run(case)
        assert case.model == before


def test_deadlines_and_health_are_derived_from_the_model() -> None:
    assert deadline(m(S.IDLE)) is None
    assert deadline(m(S.THINKING, thinking_since=10.0)) == 10.0 + THINKING_TIMEOUT
    assert deadline(m(S.THINKING, thinking_since=10.0, tools=(PendingTool("t", "x", 12.0),))) == 12.0
    assert deadline(m(S.IDLE, "wake_word", follow_up_until=7.0)) == 7.0
    assert status(m(S.IDLE, "wake_word", follow_up_until=7.0)).follow_up
    assert status(m(S.IDLE, "wake_word")).wake_word and not status(m(S.IDLE, "wake_word")).follow_up
    assert not status(m(S.IDLE)).wake_word
    assert health(m(S.IDLE)) == (True, "idle")
    assert health(m(S.OFFLINE, session_error="connection lost")) == (False, "offline: connection lost")
    assert health(m(S.ERROR, device_errors=(("speaker", "speaker: gone"),))) == (False, "speaker: gone")


def test_a_whole_exchange_through_the_table() -> None:
    """Inputs in the order a vad exchange brings them; the states a user would see."""
    model, seen, now = m(S.STARTING), [], 0.0
    for event in [i.Ready(), i.TurnStarted(), ev.Connecting(1), ev.Opened("c1", "pcm_16000", "pcm_16000"),
                  i.TurnEnded(), ev.UserTranscript("what time is it", 1), ev.AgentResponse("noon", 2),
                  ev.AgentAudio(b"\0\0", 16000, True), ev.AgentAudio(b"\0\0", 16000, False, final=True), i.PlayedOut(),
                  closed(Outcome.CLOSED, None)]:
        now += 0.5
        model, effects = decide(model, event, now)
        seen += [e.transition.state.value for e in effects
                 if isinstance(e, fx.StateChange) and e.transition.state is not e.transition.previous]
    assert seen == ["idle", "connecting", "listening", "thinking", "speaking", "idle"]
    assert not model.connected and not model.in_turn
