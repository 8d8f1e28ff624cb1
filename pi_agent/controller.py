"""The controller: carries out what :func:`~pi_agent.decide.decide.decide` decides.

Every input (an engine event, a gate verdict, a button gesture, an API command, a
device report, a deadline) goes through :meth:`Controller.dispatch`: the decision
function returns the next model and the effects, and this class carries them out on
the speaker, the capture gate, the engine, the event API, the metrics and the log.
It decides nothing itself. The mic path (:meth:`Controller.on_mic_frame`) runs the
gate on each frame and hands the frames to the engine.

Everything here runs on the event loop's thread: device and GPIO threads only hand
data over (``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from .audio import AudioOutput
from .audio.wakeword import phrase as wake_phrase
from .audio.gate import CaptureGate
from .audio.volume import Volume
from .config import Settings
from .decide import effects as fx
from .decide import inputs as i
from .decide.button import ButtonEvent
from .decide.captions import shown as shown_captions
from .decide.decide import decide
from .decide.model import QUEUED_TEXT, Model, Status, deadline, health, may_hold_mic, status
from .decide.states import State, Trigger
from .engine.conversation import Engine
from .events import EventHub
from .metrics import Metrics
from .net.session import Session

log = logging.getLogger("pi_agent.controller")
transcript_log = logging.getLogger("pi_agent.transcript")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
TIMER_SLACK = 0.001  # s past a deadline, so that it is found due

#: The journal's ``PI_AGENT_EVENT`` of a decision's log line, by how its text starts (the
#: decisions say what happened in words; the journal also gives a name to filter on).
EVENTS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), name) for pattern, name in (
    (r"connecting to the agent \(attempt \d+\)", "reconnect"),
    (r"conversation \S+ open \(", "conversation_open"),
    (r"conversation ended: ", "conversation_ended"),
    (r"disconnected: ", "disconnected"),
    (r"cannot open a conversation: ", "connect_failed"),
    (r"server [a-z ]+: ", "server_error"),
    (re.escape(QUEUED_TEXT), "queued"),
    (r"admitted by the agent's service", "admitted"),
    (r"the agent's service kept this device queued", "queue_timeout"),
    (r"\w+ device failed: ", "device_lost"),
    (r"\w+ device is back", "device_back"),
    (r"interrupted by the user", "interruption"),
    (r"wake word heard (?:\(|over the reply)", "wake_word"),
    (r"microphone muted", "muted"),
    (r"microphone unmuted", "unmuted"),
    (r"no reply within ", "no_reply"),
    (r"no more of the reply within ", "reply_stalled"),
    (r"the agent is ending the call", "end_call"),
))


def event_of(text: str) -> str | None:
    """The ``PI_AGENT_EVENT`` name of a decision's log line, or None for none."""
    for pattern, name in EVENTS:
        if pattern.match(text):
            return name
    return None


Observer = Callable[[Status], None]


class Controller:
    """The one owner of the :class:`~pi_agent.decide.model.Model`. See the module docstring."""

    def __init__(self, settings: Settings, *, gate: CaptureGate, output: AudioOutput, engine: Engine,
                 metrics: Metrics, hub: EventHub, clock: Callable[[], float] = time.monotonic) -> None:
        self.model = Model(config=settings.decide_config())
        self._wake_phrase = wake_phrase(settings.capture.wake_word) if settings.capture.mode == "wake_word" else None
        self.gate = gate
        self.output = output
        self.engine = engine
        self.metrics = metrics
        self.hub = hub
        self.session: Session | None = None  # set by attach()
        self.volume: Volume | None = None  # the speaker's volume (the daemon sets it): a device matter, not decided
        self._clock = clock
        self._echo_tail = settings.audio.echo_tail
        self._duck_db = settings.audio.duck_db
        self._observers: list[Observer] = []
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._speaker_timer: asyncio.Handle | None = None
        self._silence = b""  # a frame of digital silence, as long as the microphone's frames
        self._sound_at: float | None = None  # clock() of the last frame that was not digital silence

    def attach(self, session: Session) -> None:
        self.session = session

    def observe(self, observer: Observer) -> None:
        """Call ``observer(status)`` now and whenever the status changes (LEDs, sd_notify)."""
        self._observers.append(observer)
        observer(self.status)

    @property
    def state(self) -> State:
        return self.model.state

    @property
    def status(self) -> Status:
        return status(self.model)

    def health(self) -> tuple[bool, str]:
        return health(self.model)

    def snapshot(self, extra: dict[str, Any], *, captions: bool = True) -> dict[str, Any]:
        """What a new event-API client gets first; ``captions``: with the current exchange's words
        (the page's and the Unix socket's clients; not the status view's), and the wake word's
        phrase in wake_word mode (for the page's "Say ..." hint)."""
        s = self.status
        return {"type": "snapshot", "state": s.state.value, "connected": s.connected,
                "conversation_id": s.conversation_id, "mode": self.model.config.mode,
                "policy": "persistent" if self.engine.persistent else "on_demand", "muted": s.muted,
                "queued": s.queued, "wake_word": self._wake_phrase,
                **({"exchange": shown_captions(self.model.captions)} if captions else {}), **extra}

    # --- inputs -------------------------------------------------------------------------------

    def dispatch(self, event: i.Input) -> None:
        """Decide about ``event`` and carry the decision out."""
        before = self.model
        self.model, effects = decide(before, event, self._clock())
        for effect in effects:
            _CARRY_OUT[type(effect)](self, effect)
        after = status(self.model)
        if after != status(before):
            for observer in self._observers:
                try:
                    observer(after)
                except Exception:  # an LED or notifier failure must not stop the conversation
                    log.exception("status observer %r failed", observer, extra=self._log_fields())
        self._arm_timers()
        if self.session is not None:
            self.session.pump()

    def on_mic_frame(self, frame: bytes) -> None:
        """One 20 ms mic frame, on the loop thread: through the gate, into the engine. The gate is
        told whether the user's turn is on (the model holds that) and reports what it saw; the
        model takes its verdicts (TurnStarted, TurnEnded) before the next frame."""
        model = self.model
        if model.shutting_down:
            return
        now = self._clock()
        silence = self._silence
        if frame != silence:  # anything but all zero samples: one memcmp, about 50 ns a frame
            if len(frame) == len(silence):
                self._sound_at = now
            else:  # the first frame, or a new frame size: the next frame is compared
                self._silence = bytes(len(frame))
        config = model.config
        speaker = self.output.audible_until() + self._echo_tail if config.half_duplex or config.aec else 0.0
        if model.dry_since is not None and config.half_duplex:  # a reply stalled on the link: not over yet
            speaker = max(speaker, now + self._echo_tail)
        engine, session = self.engine, self.session
        quiet = False  # session.quiet_keepalive: the gate may hold the mic back (and nothing is audible)
        if may_hold_mic(model) and engine.is_open:
            quiet = now >= (speaker or self.output.audible_until() + self._echo_tail)
        out = self.gate.process(frame, now, in_turn=model.in_turn,
                                echo_mute_until=speaker if config.half_duplex else 0.0,
                                speaker_until=speaker if config.aec else 0.0, muted=model.muted,
                                open_until=model.follow_up_until or 0.0, quiet=quiet)
        if out.held != engine.quiet:
            engine.hush(out.held)  # the keepalive's interval changes: its deadline moves
            if session is not None:
                session.pump()
        if out.duck is not None:
            self._duck(out.duck)
        if out.wake is not None:
            self.dispatch(i.WakeWord(out.wake))
        if out.started:
            self.dispatch(i.TurnStarted())
            engine.send_preroll(out.preroll, out.preroll_was_sent, now)  # queued: the frames below wait behind it
        if session is None:
            for f in out.frames:
                engine.send_audio(f, out.speech, now)
        else:
            for f in out.frames:  # written at once, or queued and pumped
                session.send_audio(f, out.speech, now)
        if out.ended:
            self.dispatch(i.TurnEnded(out.nothing_said))

    def _duck(self, on: bool) -> None:
        """A voice over the reply began or ended: the reply is lowered meanwhile (a device matter,
        like the volume; the gate says when)."""
        self.output.duck(10 ** (-self._duck_db / 20) if on else 1.0)
        self.metrics.ducks += on
        log.debug("a voice over the reply: %s", f"lowered by {self._duck_db:g} dB" if on else "back to its volume")

    def last_sound(self) -> float | None:
        """The Unix time of the microphone's last frame that was not digital silence (None: none yet)."""
        at = self._sound_at
        return None if at is None else time.time() - (self._clock() - at)

    def on_button(self, event: ButtonEvent) -> None:
        self.dispatch(i.Button(event, heard_speech=self.gate.heard_speech))

    def tool_result(self, tool_call_id: str, result: str, is_error: bool) -> bool:
        """Answer a pending client tool call; False if there is none by that id."""
        tool = self.model.pending_tool(tool_call_id)
        if tool is None or tool.mcp:
            return False
        self.dispatch(i.ToolResult(tool_call_id, result, is_error))
        return True

    def mcp_approval(self, tool_call_id: str, approved: bool) -> bool:
        """Approve or deny an MCP tool call awaiting approval; False if none by that id waits."""
        tool = self.model.pending_tool(tool_call_id)
        if tool is None or not tool.mcp:
            return False
        self.dispatch(i.McpApproval(tool_call_id, approved))
        return True

    # --- timers -------------------------------------------------------------------------------

    def _arm_timers(self) -> None:
        """The model's next deadline, and the speaker's end while the agent speaks."""
        loop = asyncio.get_running_loop()
        due = deadline(self.model)
        if due != self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._deadline = due
            self._timer = (None if due is None else
                           loop.call_later(max(0.0, due - self._clock()) + TIMER_SLACK, self._on_deadline))
        # While the speaker is dry before the reply's last chunk, only new audio wakes the watch.
        speaking = self.model.state is State.SPEAKING and self.model.dry_since is None
        if speaking and self._speaker_timer is None:
            self._speaker_timer = loop.call_soon(self._watch_speaker)
        elif not speaking and self._speaker_timer is not None:
            self._speaker_timer.cancel()
            self._speaker_timer = None

    def _on_deadline(self) -> None:
        self._timer = self._deadline = None
        self.dispatch(i.Tick())

    def _watch_speaker(self) -> None:
        """While the agent speaks: wake when the speaker should have played everything."""
        self._speaker_timer = None
        if self.model.state is not State.SPEAKING:
            return
        now = self._clock()
        until = self.output.audible_until()
        if until <= now:
            self.dispatch(i.PlayedOut())
            return
        self.engine.touch(now)  # still playing: the conversation is not idle
        self._speaker_timer = asyncio.get_running_loop().call_later(until - now + TIMER_SLACK, self._watch_speaker)

    # --- effects ------------------------------------------------------------------------------

    def _state_change(self, effect: fx.StateChange) -> None:
        t = effect.transition
        if t.state is not t.previous:
            log.info("state %s -> %s", t.previous, t.state, extra=self._log_fields("state", t.state))
            self.hub.publish({"type": "state", "state": t.state.value, "previous": t.previous.value})
            if t.state is State.LISTENING:
                self.metrics.count_turn()
            elif t.trigger is Trigger.AGENT_DONE:
                self.metrics.count_exchange()

    def _flush(self, effect: fx.Flush) -> None:
        started = time.perf_counter()
        self.output.flush()
        if not effect.barge_in:  # a local stop: the rest of that reply is dropped whatever its ids
            self.engine.interrupt_locally()
        if effect.barge_in:
            self.metrics.barge_in_seconds.observe(time.perf_counter() - started)

    def _play(self, effect: fx.Play) -> None:
        if effect.new_turn:
            self.output.end_stream()  # the previous turn is complete: its end is no underrun
        self.output.play(effect.pcm, effect.rate)

    def _log(self, effect: fx.Log) -> None:
        fields = self._log_fields("transcript" if effect.transcript else event_of(effect.text))
        (transcript_log if effect.transcript else log).log(LEVELS[effect.level], "%s", effect.text, extra=fields)

    def _log_fields(self, event: str | None = None, state: State | None = None) -> dict[str, str | None]:
        """What the journal adds to a line of ours (:mod:`pi_agent.service.journal`): the state
        (after the decision, or ``state``), the open conversation and the event's name."""
        return {"pi_agent_state": (state or self.model.state).value,
                "pi_agent_conversation_id": self.model.conversation_id, "pi_agent_event": event}

    def _observe(self, effect: fx.Observe) -> None:
        histogram = (self.metrics.response_latency if effect.metric == "response_latency"
                     else self.metrics.conversation_seconds)
        histogram.observe(effect.seconds)


_CARRY_OUT: dict[type, Callable[[Controller, Any], None]] = {
    fx.StateChange: Controller._state_change,
    fx.Flush: Controller._flush,
    fx.Earcon: lambda c, e: c.output.play_earcon(e.name),
    fx.Play: Controller._play,
    fx.Request: lambda c, e: c.engine.request(c._clock()),
    fx.Send: lambda c, e: c.engine.send_message(e.kind, e.text, c._clock()),
    fx.Gate: lambda c, e: c.gate.apply(e.command),
    fx.Publish: lambda c, e: c.hub.publish(dict(e.event)),
    fx.Log: Controller._log,
    fx.Observe: Controller._observe,
}
