"""The controller: the event loop's one decision-maker.

It owns the state machine and wires the capture gate, the session, the speaker, the
button and the local API to it. Everything here runs on the event loop's thread:
device and GPIO threads only hand data over (``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol as p
from .audio import AudioOutput
from .audio.gate import CaptureGate, GateOutput
from .backoff import Outcome
from .config import Settings
from .errors import InternalError, ProtocolError
from .events import EventHub
from .metrics import Metrics
from .session import CloseInfo, Session
from .states import State, StateMachine, Trigger

log = logging.getLogger("pi_agent.controller")
transcript_log = logging.getLogger("pi_agent.transcript")

THINKING_TIMEOUT = 15.0  # s in "thinking" with no reply before going back to idle
TOOL_RESULT_TIMEOUT = 10.0  # s an event-API client has to answer a client tool call


@dataclass(frozen=True, slots=True)
class Status:
    """Everything the LEDs, systemd STATUS= and the API snapshot show."""

    state: State
    connected: bool
    muted: bool
    backing_off: bool
    error: bool
    conversation_id: str | None


Observer = Callable[[Status], None]


class Controller:
    """Implements :class:`~pi_agent.session.SessionListener`; feeds on mic frames and commands."""

    def __init__(
        self,
        settings: Settings,
        *,
        gate: CaptureGate,
        output: AudioOutput,
        metrics: Metrics,
        hub: EventHub,
        decode_audio: Callable[[str, bytes], tuple[bytes, int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.output = output
        self.metrics = metrics
        self.hub = hub
        self._decode_audio = decode_audio
        self._clock = clock
        self.machine = StateMachine()
        self.session: Session | None = None  # set by attach()
        self.connected = False
        self.muted = False
        self.backing_off = False
        self.device_error: str | None = None
        self._device_errors: dict[str, str] = {}  # device -> its failure, while it is down
        self.session_error: str | None = None
        self.conversation_id: str | None = None
        self._observers: list[Observer] = []
        self._half_duplex = settings.audio.echo == "half_duplex"
        self._echo_tail = settings.audio.echo_tail
        self._speech_ended_at: float | None = None
        self._thinking_since = 0.0
        self._pending_tools: dict[str, asyncio.TimerHandle] = {}
        self._reported_errors: set[str] = set()
        self._talk_from_down = False  # push-to-talk turn started by the press that stopped the agent
        self._fatal = False  # the last attempt failed in a way retrying cannot fix
        self._hold_heard_speech = False  # push-to-talk: VAD heard the user during this hold
        self._shutting_down = False

    def attach(self, session: Session) -> None:
        self.session = session

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)
        observer(self.status)

    # --- status ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def status(self) -> Status:
        return Status(self.state, self.connected, self.muted, self.backing_off,
                      self.device_error is not None or self._fatal, self.conversation_id)

    def health(self) -> tuple[bool, str]:
        """For /healthz and the watchdog: unhealthy while in ``error`` or ``offline``."""
        if self.state is State.ERROR:
            return False, self.device_error or self.session_error or "error"
        if self.state is State.OFFLINE:
            return False, "offline: " + (self.session_error or "reconnecting")
        return True, self.state.value

    def _changed(self) -> None:
        status = self.status
        for observer in self._observers:
            try:
                observer(status)
            except Exception:  # an LED or notifier failure must not stop the conversation
                log.exception("status observer %r failed", observer)

    def fire(self, trigger: Trigger) -> bool:
        """Apply ``trigger`` if the table allows it here; log and publish the transition."""
        if not self.machine.can(trigger):
            log.debug("trigger %s ignored in state %s", trigger, self.state)
            return False
        try:
            t = self.machine.fire(trigger)
        except InternalError:  # pragma: no cover - can() said yes
            log.exception("state machine refused %s", trigger)
            return False
        if t.state is not t.previous:
            log.info("state %s -> %s", t.previous, t.state)
            self.hub.publish({"type": "state", "state": t.state.value, "previous": t.previous.value})
            if t.state is State.THINKING:
                self._thinking_since = self._clock()
        self._changed()
        return True

    def ready(self) -> None:
        """Start-up finished (devices and API up)."""
        self.fire(Trigger.READY)

    # --- microphone -------------------------------------------------------------------------

    def shut_down(self) -> None:
        """The daemon is stopping: mic frames are ignored from now on, so speech can no
        longer ask for a conversation while the devices and the session close."""
        self._shutting_down = True

    def on_mic_frame(self, frame: bytes) -> None:
        """One 20 ms mic frame, on the loop thread."""
        if self._shutting_down:
            return
        now = self._clock()
        echo_until = self.output.audible_until() + self._echo_tail if self._half_duplex else 0.0
        out = self.gate.process(frame, now, echo_mute_until=echo_until, muted=self.muted)
        if out.started:
            self._turn_started(out)
            self._hold_heard_speech = False
        if self.gate.button and not self._hold_heard_speech and self.gate.is_speech(frame):
            self._hold_heard_speech = True
        session = self.session
        if session is not None:
            for f in out.frames:
                session.send_audio(f, speech=out.speech)
        if out.ended:
            self._turn_ended()
        self.tick(now)

    def _turn_started(self, out: GateOutput) -> None:
        session = self.session
        if session is not None:
            if not session.is_open:
                session.request()
            if out.preroll and not (out.preroll_was_sent and session.is_open):
                for f in out.preroll:
                    session.send_audio(f, speech=True)
        if self.state is State.SPEAKING:
            # Talking over the agent (full duplex): the server decides whether that is a
            # barge-in (a cough is not) and says so with `interruption`; we flush then.
            return
        if self.connected:
            self.fire(Trigger.LISTEN)
        elif self.state is State.IDLE:
            self.fire(Trigger.CONNECT)
        # offline or error: the session is waiting out a backoff; the speech is kept meanwhile

    def _turn_ended(self) -> None:
        self._speech_ended_at = self._clock()
        if self.fire(Trigger.SPEECH_END) and self.gate.mode == "push_to_talk":
            self._earcon("done")

    def tick(self, now: float | None = None) -> None:
        """Timers: the speaker has played out, thinking for too long. Called every frame."""
        now = self._clock() if now is None else now
        state = self.state
        if state is State.SPEAKING:
            if self.output.audible_until() <= now:
                if self.gate.mode == "always" and self.connected:
                    self.fire(Trigger.LISTEN)
                else:
                    self.fire(Trigger.AGENT_DONE)
                    self._after_speech()
            elif self.session is not None:
                self.session.touch()
        elif state is State.THINKING and now - self._thinking_since > THINKING_TIMEOUT:
            log.info("no reply within %g s; back to idle", THINKING_TIMEOUT)
            self.fire(Trigger.STOP)

    def _after_speech(self) -> None:
        """The speaker went quiet: catch up with a connection change that happened meanwhile."""
        session = self.session
        if session is not None and not self.connected and session.wanted:
            self.fire(Trigger.CONNECT)
        elif self.gate.in_turn and self.connected:
            self.fire(Trigger.LISTEN)

    # --- session listener -------------------------------------------------------------------

    def on_connecting(self, attempt: int) -> None:
        self.backing_off = False
        if attempt > 1:
            log.info("connecting to the agent (attempt %d)", attempt)
        else:
            log.debug("connecting to the agent")
        if self.state is not State.SPEAKING:
            self.fire(Trigger.CONNECT)
        self._changed()

    def on_open(self, metadata: p.ConversationMetadata) -> None:
        self.connected = True
        self.session_error = None
        self._fatal = False
        self.conversation_id = metadata.conversation_id
        self._reported_errors.clear()
        log.info("conversation %s open (agent audio %s, mic audio %s)", metadata.conversation_id,
                 metadata.agent_output_audio_format, metadata.user_input_audio_format)
        self.hub.publish({"type": "connection", "connected": True,
                          "conversation_id": metadata.conversation_id,
                          "agent_output_audio_format": metadata.agent_output_audio_format,
                          "user_input_audio_format": metadata.user_input_audio_format})
        if self.state is State.ERROR and self.device_error is None:
            self.fire(Trigger.RECOVER)
            self.fire(Trigger.CONNECT)
        if self.gate.in_turn or self.gate.mode == "always":
            self.fire(Trigger.LISTEN)
        else:
            self.fire(Trigger.OPENED)
        if self.muted:
            self.fire(Trigger.MUTE)
        self._changed()

    def on_audio(self, audio: bytes, fmt: str, new_turn: bool) -> None:
        try:
            pcm, rate = self._decode_audio(fmt, audio)
        except ProtocolError as e:
            self.metrics.protocol_errors.inc()
            log.warning("skipped agent audio: %s", e)
            return
        if new_turn:
            self.output.end_stream()  # the previous turn is complete: its end is no underrun
        self.output.play(pcm, rate)
        if self.state is not State.SPEAKING and self.state is not State.MUTED:
            if self._speech_ended_at is not None:
                self.metrics.response_latency.observe(self._clock() - self._speech_ended_at)
                self._speech_ended_at = None
            if self.gate.in_turn and self._half_duplex:
                self.gate.end_turn()
            self.fire(Trigger.AGENT_SPEAKS)

    def on_interruption(self, event_id: int) -> None:
        started = time.perf_counter()
        self.output.flush()
        self.metrics.barge_in_seconds.observe(time.perf_counter() - started)
        log.info("interrupted by the user (agent turn %d)", event_id)
        self.hub.publish({"type": "interruption", "event_id": event_id})
        if self.state is State.SPEAKING:
            self.fire(Trigger.LISTEN)

    def on_event(self, event: p.ServerEvent) -> None:
        if isinstance(event, p.UserTranscript):
            if self.settings.log.transcripts:
                transcript_log.info("user: %s", event.text)
            self.hub.publish({"type": "user_transcript", "text": event.text, "event_id": event.event_id})
            if self.state is State.LISTENING and self.gate.mode != "push_to_talk":
                self.gate.end_turn()
                self._turn_ended()
        elif isinstance(event, p.AgentResponse):
            if self.settings.log.transcripts:
                transcript_log.info("agent: %s", event.text)
            self.hub.publish({"type": "agent_response", "text": event.text, "event_id": event.event_id})
        elif isinstance(event, p.AgentResponseCorrection):
            self.hub.publish({"type": "agent_response_correction", "original": event.original,
                              "corrected": event.corrected, "event_id": event.event_id})
        elif isinstance(event, p.ClientToolCall):
            self._tool_call(event)
        elif isinstance(event, p.AgentToolResponse):
            if event.tool_name == "end_call":
                log.info("the agent is ending the call")
            self.hub.publish({"type": "agent_tool_response", "tool_name": event.tool_name,
                              "is_error": event.is_error})
        elif isinstance(event, p.ErrorEvent):
            log.warning("server error event: %s %s (code %s)", event.error_type or "error",
                        (event.message or event.reason or "")[:200], event.code)
            self.hub.publish({"type": "error", "source": "server", "error_type": event.error_type,
                              "code": event.code, "message": event.message or event.reason})
        elif isinstance(event, p.VadScore | p.TentativeUserTranscript | p.InternalTurnProbability):
            pass
        else:
            log.debug("server event %s", type(event).__name__)

    def on_closed(self, info: CloseInfo) -> None:
        was_connected = self.connected
        self.connected = False
        self.conversation_id = None
        for handle in self._pending_tools.values():
            handle.cancel()
        self._pending_tools.clear()
        self.hub.publish({"type": "connection", "connected": False, "reason": info.reason,
                          "outcome": info.outcome.value, "retry_in": info.retry_in, "code": info.code})
        nxt = f"; retrying in {info.retry_in:.1f} s" if info.retry_in is not None else ""
        # A new conversation follows (renewal, reconnect): the user's turn goes on and what
        # they say meanwhile is pre-buffered; ending it would drop speech until VAD retriggers.
        if info.retry_in is None:
            self.gate.end_turn()
        if info.outcome in (Outcome.ENDED, Outcome.CLOSED):
            log.info("%s: %s%s", "conversation ended" if was_connected else "stopped connecting", info.reason, nxt)
            if self.state is not State.SPEAKING:
                self.fire(Trigger.CLOSED)
            self.backing_off = info.retry_in is not None
            self._changed()
            return
        self._stop_playback()
        self.backing_off = info.retry_in is not None
        self.session_error = info.reason
        self._fatal = info.outcome is Outcome.FATAL
        if self._fatal:
            self._log_once(logging.ERROR, f"cannot open a conversation: {info.reason}{nxt}")
            self.hub.publish({"type": "error", "source": "session", "message": info.reason})
            if self.fire(Trigger.FAIL):
                self._earcon("error")
        else:
            level = logging.WARNING if was_connected or info.reason not in self._reported_errors else logging.INFO
            log.log(level, "disconnected: %s%s", info.reason, nxt)
            self._reported_errors.add(info.reason)
            if self.state is not State.ERROR or self.device_error is None:
                if self.state is State.ERROR:
                    self.fire(Trigger.RECOVER)
                if self.fire(Trigger.LOST) and was_connected:
                    self._earcon("offline")
        self._changed()

    def _log_once(self, level: int, message: str) -> None:
        """Same failure again and again (bad key): one line at ``level``, then debug."""
        if message in self._reported_errors:
            log.debug("%s", message)
        else:
            self._reported_errors.add(message)
            log.log(level, "%s", message)

    def _tool_call(self, call: p.ClientToolCall) -> None:
        session = self.session
        self.hub.publish({"type": "client_tool_call", "tool_name": call.tool_name,
                          "tool_call_id": call.tool_call_id, "parameters": dict(call.parameters)})
        if self.hub.subscribers == 0 or session is None:
            self._answer_tool(call.tool_call_id, f"client tool {call.tool_name!r} is not available on this device", True)
            return
        loop = asyncio.get_running_loop()
        self._pending_tools[call.tool_call_id] = loop.call_later(
            TOOL_RESULT_TIMEOUT, self._answer_tool, call.tool_call_id,
            f"client tool {call.tool_name!r} did not answer in time", True)

    def _answer_tool(self, tool_call_id: str, result: str, is_error: bool) -> None:
        handle = self._pending_tools.pop(tool_call_id, None)
        if handle is not None:
            handle.cancel()
        if self.session is not None:
            self.session.send_message("client_tool_result", p.encode_tool_result(tool_call_id, result, is_error=is_error))

    # --- user commands (button, event API, CLI) ----------------------------------------------

    def on_button(self, event: Any, policy: Any) -> None:
        """A :class:`~pi_agent.gpio.button.ButtonEvent`, turned into intents by the policy."""
        from .gpio.button import ButtonIntent as I

        from .gpio.button import ButtonEvent as E

        ptt = self.gate.mode == "push_to_talk"
        if ptt and event is E.LONG_HOLD and self._hold_heard_speech:
            # A long push-to-talk hold while speaking is a long question, not a request to
            # mute: only a silent long hold toggles mute in this mode.
            log.debug("long push-to-talk hold with speech: still talking")
            return
        if ptt and self._talk_from_down and event in (E.PRESS, E.HOLD_END):
            self._talk_from_down = False  # released: the interrupting turn is over
            self.stop_listening()
        for intent in policy.decide(event, self.state):
            log.debug("button %s -> %s", event, intent)
            if intent is I.STOP:
                self.stop()
                if ptt and event is E.DOWN:
                    # Push-to-talk: the press that stops the agent also starts the user's turn.
                    self._talk_from_down = True
                    self.start_listening()
            elif intent is I.START_LISTENING:
                if ptt and not self.settings.capture.toggle:
                    log.info("push-to-talk: hold the button while you speak")
                else:
                    self.start_listening()
            elif intent is I.STOP_LISTENING:
                self.stop_listening()
            elif intent is I.TALK_START:
                self.start_listening()
            elif intent is I.TALK_END:
                self.stop_listening()
            elif intent is I.TALK_CANCEL:
                self.gate.button = False
                self.gate.end_turn()
            elif intent is I.TOGGLE_MUTE:
                self.set_muted(not self.muted)

    def start_listening(self) -> None:
        """Button press / API: stop the agent if it speaks, then listen."""
        if self.muted:
            log.info("muted: unmute first (long press or the unmute command)")
            return
        if self.state is State.SPEAKING:
            self._stop_playback()
        session = self.session
        if self.gate.mode == "push_to_talk":
            self.gate.button = True
        else:
            self.gate.in_turn = True  # the VAD hangover (or the server's transcript) ends it
            if session is not None:
                if not session.is_open:
                    session.request()
                if self.connected:
                    self.fire(Trigger.LISTEN)
                else:
                    self.fire(Trigger.CONNECT)
        self._earcon("listening")

    def stop_listening(self) -> None:
        if self.gate.mode == "push_to_talk":
            self.gate.button = False  # the gate ends the turn on the next frame
        elif self.gate.end_turn():
            self._turn_ended()

    def stop(self) -> None:
        """Stop everything in progress: the agent's speech, the user's turn."""
        self._stop_playback()
        self.gate.button = False
        self.gate.end_turn()
        self.fire(Trigger.STOP)

    def set_muted(self, muted: bool) -> None:
        if muted == self.muted:
            return
        self.muted = muted
        self._talk_from_down = False
        log.info("microphone %s", "muted" if muted else "unmuted")
        self.hub.publish({"type": "mute", "muted": muted})
        if muted:
            self.gate.button = False
            self.gate.end_turn()
            self.fire(Trigger.MUTE)
        else:
            self.fire(Trigger.UNMUTE)
        self._changed()

    def say(self, text: str) -> None:
        if self.session is not None:
            self.session.send_message("user_message", p.encode_user_message(text))

    def contextual_update(self, text: str) -> None:
        if self.session is not None:
            self.session.send_message("contextual_update", p.encode_contextual_update(text))

    def tool_result(self, tool_call_id: str, result: str, is_error: bool) -> bool:
        if tool_call_id not in self._pending_tools:
            return False
        self._answer_tool(tool_call_id, result, is_error)
        return True

    def _stop_playback(self) -> None:
        self.output.flush()
        if self.session is not None and self.session.conversation is not None:
            self.session.conversation.interrupt_locally()
        if self.state is State.SPEAKING:
            self.fire(Trigger.STOP)

    def _earcon(self, name: str) -> None:
        if name in self.settings.audio.earcons:
            self.output.play_earcon(name)

    # --- devices ----------------------------------------------------------------------------

    def device_failed(self, which: str, message: str) -> None:
        first = which not in self._device_errors
        self._device_errors[which] = self.device_error = f"{which}: {message}"
        if first:
            log.error("%s device failed: %s; the daemon keeps running and reopens it", which, message)
        self.hub.publish({"type": "error", "source": which, "message": message})
        self.fire(Trigger.FAIL)
        self._changed()

    def device_recovered(self, which: str) -> None:
        if self._device_errors.pop(which, None) is None:
            return
        self.device_error = next(iter(self._device_errors.values()), None)  # another may still be down
        log.info("%s device is back", which)
        if self.state is State.ERROR and self.device_error is None and not self._fatal:
            self.fire(Trigger.RECOVER)
        self._changed()

    def snapshot(self, extra: dict[str, Any]) -> dict[str, Any]:
        s = self.status
        return {"type": "snapshot", "state": s.state.value, "connected": s.connected,
                "conversation_id": s.conversation_id, "mode": self.gate.mode,
                "policy": self.settings.session.policy, "muted": s.muted, **extra}
