"""The composition root: builds the daemon from typed parts and runs it until asked to stop.

Parts come in through :class:`~pi_agent.parts.Parts` (constructor injection): the demo
and the tests hand in WAV-file audio, gpiozero's mock pins, a connector or a signed-URL
fetcher of their own; :mod:`pi_agent.parts` builds the real ones from the settings. The
devices are kept open by :class:`~pi_agent.audio.keeper.DeviceKeeper`; signals and reloads
are :mod:`pi_agent.run`'s. The tasks run in a
task group (one that dies takes the daemon down with a clear line, and systemd restarts
it); shutdown closes everything within :data:`SHUTDOWN_BUDGET`, whatever hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import __version__
from .alarms import GrowthAlarm
from .audio.capture import PyAudioInput
from .audio.streams import CallbackDevice
from .audio.echo import FrameClock
from .audio.gate import CaptureGate, WakeWord
from .audio.keeper import DeviceKeeper
from .audio.output import BufferedOutput
from .audio.volume import Volume, state_path
from .audio.playback import PyAudioOutput
from .config import Settings
from .controller import Controller
from .parts import Parts, make_audio_input, make_audio_output, make_echo_canceller, make_vad, make_wake_word
from .decide import inputs as i
from .decide.leds import LedInputs, picture
from .decide.model import Status
from .decide.states import State
from .errors import DeviceError
from .events import EventHub
from .metrics import Metrics
from .net.conversation import build_conversation
from .service.api import ApiServer, server_socket_path
from .service.logging import redact
from .service.systemd import Notifier, watchdog_loop

if TYPE_CHECKING:
    from gpiozero import Factory as PinFactory

else:
    PinFactory = Any

log = logging.getLogger("pi_agent.daemon")

ALARM_INTERVAL = 5.0  # s between looks at the device counters
SHUTDOWN_CLOSE_WAIT = 1.0  # at most this long for the agent to answer our close
SHUTDOWN_BUDGET = 1.5  # all of the shutdown: systemd and the README promise exit within 2 s

class Daemon:
    """The running daemon: controller, engine and session, devices, GPIO, API, systemd."""

    def __init__(self, settings: Settings, parts: Parts | None = None) -> None:
        parts = parts or Parts()
        self.settings = settings
        self.metrics = Metrics()
        self.hub = EventHub(redact=redact)
        self.audio_in = parts.audio_in or make_audio_input(settings.audio)
        self.audio_out = parts.audio_out or make_audio_output(settings.audio)
        self.echo = make_echo_canceller(settings.audio, self.audio_out)
        self.notifier = parts.notifier or Notifier.from_env()
        c = settings.capture
        preroll = c.preroll
        if c.mode == "push_to_talk":  # streaming starts at the hold: keep what came before it
            preroll = max(preroll, min(2.0, settings.button.hold_time + 0.1))
        detector = make_wake_word(c) if parts.wake_word is None else None
        self.wake_word: WakeWord | None = parts.wake_word or detector
        self._wake_word_text = detector.description if detector is not None else "wake word"
        self.gate = CaptureGate(c.mode, parts.vad or make_vad(c.vad_aggressiveness), wake_word=self.wake_word,
                                preroll=preroll, hangover=c.hangover, privacy=c.privacy,
                                duck=settings.audio.echo == "aec" and settings.audio.duck_db > 0)
        if self.wake_word is not None:
            self.metrics.watch_wake_word(lambda: self.gate.wake_words)
        if self.echo is not None:
            self.metrics.watch_echo(lambda: self.echo.attenuation_db if self.echo else None)
        self.engine, self.session = build_conversation(
            settings, on_event=lambda event: self.controller.dispatch(event), backoff=parts.backoff,
            connect=parts.connect, fetch_url=parts.fetch_url, clock=parts.clock)
        self.controller = Controller(settings, gate=self.gate, output=self.audio_out, engine=self.engine,
                                     metrics=self.metrics, hub=self.hub, clock=parts.clock)
        self.controller.attach(self.session)
        out = self.audio_out
        self.volume = Volume(settings.audio.volume, apply=out.set_volume if isinstance(out, BufferedOutput) else None,
                             path=state_path(), on_change=self._volume_changed)
        self.controller.volume = self.volume
        socket_path = server_socket_path(settings.api.socket)
        self.api = (ApiServer(settings.api, self.controller, self.hub, self.metrics, self._snapshot_extra,
                              socket_path=socket_path, names=(settings.device(),))
                    if settings.api.port or socket_path is not None or settings.api.metrics_listen else None)
        self._pin_factory = parts.pin_factory
        self.leds: Any = None
        self.button: Any = None
        self.volume_buttons: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing: list[asyncio.Future[Any]] = []  # device and API closes under way
        self._shutdown_by: float | None = None  # when everything must be closed
        on_failed = lambda which, message: self.controller.dispatch(i.DeviceFailed(which, message))  # noqa: E731
        on_back = lambda which: self.controller.dispatch(i.DeviceRecovered(which))  # noqa: E731
        out, mic = self.audio_out, self.audio_in
        self.speaker_keeper = DeviceKeeper("speaker", out.open, out.close, on_failed=on_failed, on_back=on_back,
                                           portaudio=isinstance(out, CallbackDevice))
        self.mic_keeper = DeviceKeeper("microphone", lambda on_error: mic.open(self._on_mic_frame(), on_error),
                                       mic.close, on_failed=on_failed, on_back=on_back,
                                       portaudio=isinstance(mic, CallbackDevice))
        DeviceKeeper.pair(self.speaker_keeper, self.mic_keeper)
        m = self.metrics
        m.watch_engine(self.engine, lambda: self.audio_out.dropped_frames)
        m.watch_device_counter("capture_overflows", lambda: self.audio_in.overflows)
        m.watch_device_counter("playback_underruns", lambda: self.audio_out.underruns)
        m.watch_device_counter("playback_device_underflows", self._device_underflows)
        m.set_identity(settings.device(), settings.location)
        m.watch_state(lambda: self.controller.state)
        m.watch_device("microphone", lambda: self._device_up(self.mic_keeper))
        m.watch_device("speaker", lambda: self._device_up(self.speaker_keeper))
        m.watch_microphone_sound(self.controller.last_sound)
        self._alarms = [
            GrowthAlarm(lambda: self.audio_in.overflows, "the microphone lost %d frame(s): the audio "
                        "thread or the event loop fell behind (CPU too busy?)"),
            GrowthAlarm(lambda: self.audio_out.underruns, "the speaker ran dry %d time(s) in the middle "
                        "of a reply: the agent's audio arrived late (slow or lossy network?)"),
            GrowthAlarm(self._device_underflows, "the speaker's device buffer ran empty %d time(s): the "
                        "audio thread was late (CPU too busy? PI_AGENT_AUDIO__PERIOD_MS=20 gives it more time)"),
        ]

    def _device_up(self, keeper: DeviceKeeper) -> bool:
        """Open, and no failure of it reported since (the model keeps the devices' failures)."""
        return keeper.is_open and all(which != keeper.which for which, _ in self.controller.model.device_errors)

    def _device_underflows(self) -> int:
        return self.audio_out.device_underflows if isinstance(self.audio_out, PyAudioOutput) else 0

    def _snapshot_extra(self) -> dict[str, Any]:
        counters: dict[str, Any] = {**self.metrics.totals(), "capture_overflows": self.audio_in.overflows,
                                    "playback_underruns": self.audio_out.underruns}
        return {"counters": counters, "leds": _leds(self.controller.status), "problem": self._problem(),
                "volume": self.volume.level}

    def _problem(self) -> str | None:
        ok, reason = self.controller.health()
        return None if ok else reason

    def _publish_status(self, status: Status) -> None:
        """For screens (the kiosk page): the state as the LEDs show it, and what is wrong."""
        self.hub.publish({"type": "status", "state": status.state.value, "connected": status.connected,
                          "muted": status.muted, "queued": status.queued, "problem": self._problem(),
                          "leds": _leds(status), "volume": self.volume.level})

    def _volume_changed(self, level: int) -> None:
        """A ``volume`` event (the Unix socket), and the status again for screens (the page)."""
        self.hub.publish({"type": "volume", "volume": level})
        self._publish_status(self.controller.status)

    # --- GPIO -----------------------------------------------------------------------------

    def _open_gpio(self, loop: asyncio.AbstractEventLoop) -> None:
        leds, button = self.settings.leds, self.settings.button
        if leds.driver_kind() is not None:
            from .gpio.leds import open_leds
            try:
                self.leds = open_leds(leds, self._pin_factory)
            except DeviceError as e:
                log.error("LEDs unavailable: %s (the daemon runs without them)", e)
            else:
                driver = self.leds
                self.controller.observe(lambda s: driver.apply(
                    picture(LedInputs.of(s))))
        button_pin = leds.button_pin(button.pin)  # [button] pin, else the [leds] preset HAT's
        if button_pin is not None:
            from .gpio.button import ButtonInput
            try:
                self.button = ButtonInput(button_pin, pull_up=button.pull_up, bounce_time=button.bounce_time,
                                          hold_time=button.hold_time, long_hold_time=button.long_hold_time,
                                          pin_factory=self._pin_factory)
            except DeviceError as e:
                log.error("button unavailable: %s (the daemon runs without it)", e)
            else:
                self.button.start(loop, self.controller.on_button)
        if button.volume_up_pin is not None or button.volume_down_pin is not None:
            from .gpio.volume import VolumeButtons
            buttons = VolumeButtons(button.volume_up_pin, button.volume_down_pin, pull_up=button.pull_up,
                                    bounce_time=button.bounce_time, pin_factory=self._pin_factory)
            try:
                buttons.start(loop, self.volume.change)
            except DeviceError as e:
                log.error("volume buttons unavailable: %s (the daemon runs without them)", e)
            else:
                self.volume_buttons = buttons

    def _close_gpio(self) -> None:
        for part in (self.button, self.volume_buttons, self.leds):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()

    # --- devices --------------------------------------------------------------------------

    async def _watch_alarms(self) -> None:
        while True:
            await asyncio.sleep(ALARM_INTERVAL)
            now = time.monotonic()
            for alarm in self._alarms:
                alarm.check(now)

    # --- run ------------------------------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        """Open the GPIO and the event API (the devices open in their own tasks)."""
        try:
            self._open_gpio(asyncio.get_running_loop())
            if self.api is not None:
                await self.api.start()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (0) or a task dies (1, after a critical line)."""
        log.info("pi-agent %s starting: agent %s at %s, %s policy, %s capture, %s", __version__,
                 self.settings.agent_id, self.settings.server_url, self.settings.session.policy,
                 self.settings.capture.mode, self.settings.audio.echo)
        if self.wake_word is not None:
            log.info("listening for the %s; follow-ups without it for %g s after a reply",
                     self._wake_word_text, self.settings.capture.follow_up)
        self.controller.observe(self._notify_status)
        self.controller.observe(self._publish_status)
        self.controller.observe(self._capture_latency)
        died: BaseExceptionGroup[Exception] | None = None
        try:
            async with self:
                try:
                    async with asyncio.TaskGroup() as tasks:
                        await self._run_tasks(tasks, stop)
                except* Exception as group:  # a bug of ours: say so loudly; systemd restarts us
                    died = group
        except OSError as e:  # the event API could not listen
            log.error("cannot start the event API: %s (set [api] port to a free port or 0, [api] socket "
                      "to a usable path or off, and [api] metrics_listen to a free address:port or empty)",
                      e.strerror or e)
            return 1
        if died is not None:
            for exc in died.exceptions:
                log.critical("internal task died: %r; exiting", exc, exc_info=exc)
            return 1
        return 0

    async def _run_tasks(self, tasks: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
            task = tasks.create_task(coro, name=name)
            self._tasks.append(task)
            return task

        spawn(self.speaker_keeper.run(), "speaker")
        spawn(self.mic_keeper.run(), "microphone")
        await asyncio.sleep(0)  # let the devices open before READY when they can
        self.controller.dispatch(i.Ready())
        session = spawn(self.session.run(), "session")
        spawn(self._watch_alarms(), "alarms")
        spawn(watchdog_loop(self.notifier, lambda: not session.done()), "watchdog")
        self.notifier.ready(f"state: {self.controller.state.value}")
        await stop.wait()
        await self._close_conversation()
        for task in self._tasks:
            task.cancel()

    def _on_mic_frame(self) -> Callable[[bytes], None]:
        """Where the microphone's frames go: the controller, through the echo canceller with aec."""
        echo, on_frame = self.echo, self.controller.on_mic_frame
        if echo is None:
            return on_frame
        clock = FrameClock()

        def cancel(frame: bytes) -> None:
            now = time.monotonic()
            for cleaned in echo.push(frame, clock.stamp(now, hold=echo.cancelling(now))):
                on_frame(cleaned)
        return cancel

    def _capture_latency(self, status: Status) -> None:
        """The microphone is read every 20 ms while an exchange is under way, and a few times a
        second otherwise (``audio.idle_read_ms``): see :func:`low_latency_capture`."""
        if isinstance(self.audio_in, PyAudioInput):
            self.audio_in.set_low_latency(low_latency_capture(status))

    def _notify_status(self, status: Status) -> None:
        text = f"state: {status.state.value}" + (" (connected)" if status.connected else
                                                  " (waiting for the agent: queued)" if status.queued else "")
        self.notifier.status(text)

    async def _close_conversation(self) -> None:
        """Stop listening at once, then close the conversation with 1000 (bounded wait).
        Idempotent: the first call starts the shutdown budget."""
        if self._shutdown_by is not None:
            return
        self._shutdown_by = time.monotonic() + SHUTDOWN_BUDGET
        self.notifier.stopping()
        log.info("shutting down")
        self.controller.dispatch(i.ShuttingDown())  # no more speech: nothing may ask for a new conversation
        self._closing.append(asyncio.ensure_future(self.audio_in.close()))
        await self.session.close(min(self._shutdown_by - 0.2 - time.monotonic(), SHUTDOWN_CLOSE_WAIT))

    async def _shutdown(self) -> None:
        """Close everything within :data:`SHUTDOWN_BUDGET`, whatever hangs: a frozen sound
        server makes device closes block, a dead link the WebSocket close handshake."""
        await self._close_conversation()  # if the tasks did not get to it (a task died, the API failed)
        assert self._shutdown_by is not None
        closing = [*self._closing, asyncio.ensure_future(self.audio_out.close())]
        if self.api is not None:
            closing.append(asyncio.ensure_future(self.api.close()))
        _, stuck = await asyncio.wait(closing, timeout=max(0.05, self._shutdown_by - time.monotonic()))
        for task in stuck:  # abandoned: a blocking close goes on in its own thread, we do not wait
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
        if stuck:
            log.warning("%d close(s) did not finish within the %g s shutdown budget; abandoned them",
                        len(stuck), SHUTDOWN_BUDGET)
        self._close_gpio()
        self.notifier.close()


def _leds(status: Status) -> dict[str, Any]:
    pic = picture(LedInputs.of(status))
    return {"top": pic.top.value, "connection": pic.connection.value, "activity": pic.activity.value,
            "rgb": pic.rgb.value, "color": list(pic.color)}


_PROMPT = frozenset({State.LISTENING, State.SPEAKING})


def low_latency_capture(status: Status) -> bool:
    """Whether the microphone's frames must reach the loop as soon as the device has them:
    while the user speaks (the end of a turn must reach the agent at once: it waits for it
    to answer) and while the agent speaks (a voice that interrupts it, in full duplex).
    Otherwise frames may come several at a time: a turn that starts then has its first
    syllable whole, only up to ``audio.idle_read_ms`` later at the agent, and is read at
    once from then on."""
    return status.state in _PROMPT


__all__ = ["Daemon", "Parts"]
