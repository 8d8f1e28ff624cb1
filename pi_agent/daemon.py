"""Assembles the daemon from its parts and runs it until asked to stop.

Parts come in through :class:`Parts` (constructor injection): the demo and the tests
hand in WAV-file audio and gpiozero's mock pins; ``pi-agent run`` builds the real ones
from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .audio import AudioInput, AudioOutput
from .audio.formats import MicEncoder, decode_pcm
from .audio.gate import CaptureGate
from .config import Settings
from .controller import Controller, Status
from .errors import DeviceError, DeviceNotFound
from .events import EventHub
from .metrics import Metrics
from .service.api import ApiServer
from .service.systemd import Notifier, watchdog_loop
from .session import Session

log = logging.getLogger("pi_agent.daemon")

DEVICE_RETRY_MAX = 30.0
SHUTDOWN_CLOSE_WAIT = 1.0  # at most this long for the agent to answer our close
SHUTDOWN_BUDGET = 1.5  # all of the shutdown: systemd and the README promise exit within 2 s


@dataclass
class Parts:
    """What the daemon talks to. ``None`` fields are built from the settings."""

    audio_in: AudioInput | None = None
    audio_out: AudioOutput | None = None
    pin_factory: Any = None
    notifier: Notifier | None = None
    session_kwargs: dict[str, Any] = field(default_factory=dict)  # connect=, fetch_url=, backoff=, ...


def make_audio_input(settings: Settings) -> AudioInput:
    a = settings.audio
    if a.input_wav is not None:
        from .audio.files import WavFileInput
        return WavFileInput(a.input_wav)
    from .audio.capture import PyAudioInput
    return PyAudioInput(a.input_device, channel=a.input_channel)


def make_audio_output(settings: Settings) -> AudioOutput:
    a = settings.audio
    if a.output_wav is not None:
        from .audio.files import WavFileOutput
        return WavFileOutput(a.output_wav, rate=a.output_rate or 16000, period_ms=a.period_ms)
    from .audio.playback import PyAudioOutput
    return PyAudioOutput(a.output_device, period_ms=a.period_ms, rate=a.output_rate, earcons=a.earcons)


def make_vad(aggressiveness: int) -> Callable[[bytes], bool]:
    import webrtcvad

    from .audio import MIC_RATE

    vad = webrtcvad.Vad(aggressiveness)
    return lambda frame: vad.is_speech(frame, MIC_RATE)


def encoder_for(fmt: str) -> Callable[[bytes], bytes]:
    return MicEncoder(fmt).encode


class GrowthAlarm:
    """Says in the log when a device counter grows: one warning line per ``interval`` at
    most, with the count since the last line (an admin sees choppy audio explained in
    ``journalctl`` without a flood)."""

    def __init__(self, read: Callable[[], int], message: str, *, interval: float = 60.0) -> None:
        self._read = read
        self._message = message  # %d: how many since the last line
        self._interval = interval
        self._reported = read()
        self._quiet_until = float("-inf")

    def check(self, now: float) -> None:
        try:
            value = self._read()
        except Exception:  # a device being reopened: look again next time
            return
        if value < self._reported:  # a counter that restarted
            self._reported = value
        if value > self._reported and now >= self._quiet_until:
            log.warning(self._message, value - self._reported)
            self._reported = value
            self._quiet_until = now + self._interval


class Daemon:
    """The running daemon: controller, session, devices, GPIO, API, systemd notifications."""

    def __init__(self, settings: Settings, parts: Parts | None = None) -> None:
        parts = parts or Parts()
        self.settings = settings
        self.metrics = Metrics()
        self.hub = EventHub()
        self.audio_in = parts.audio_in or make_audio_input(settings)
        self.audio_out = parts.audio_out or make_audio_output(settings)
        self.notifier = parts.notifier or Notifier.from_env()
        c = settings.capture
        preroll = c.preroll
        if c.mode == "push_to_talk":  # streaming starts at the hold: keep what came before it
            preroll = max(preroll, min(2.0, settings.button.hold_time + 0.1))
        self.gate = CaptureGate(c.mode, make_vad(c.vad_aggressiveness), preroll=preroll,
                                hangover=c.hangover, privacy=c.privacy)
        self.controller = Controller(settings, gate=self.gate, output=self.audio_out,
                                     metrics=self.metrics, hub=self.hub, decode_audio=decode_pcm)
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self.session = Session(settings.session, agent_id=settings.agent_id, server_url=settings.server_url,
                               api_key=api_key, listener=self.controller, metrics=self.metrics,
                               encoder_factory=encoder_for, **parts.session_kwargs)
        self.controller.attach(self.session)
        self.api = (ApiServer(settings.api.port, self.controller, self.hub, self.metrics, self._counters)
                    if settings.api.port else None)
        self._pin_factory = parts.pin_factory
        self.leds: Any = None
        self.button: Any = None
        self._last_tick = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._mic_failed = asyncio.Event()
        self._spk_failed = asyncio.Event()
        self._open_devices: set[str] = set()
        self.metrics.watch_device_counter("capture_overflows", lambda: self.audio_in.overflows)
        self.metrics.watch_device_counter("playback_underruns", lambda: self.audio_out.underruns)
        self.metrics.watch_device_counter("playback_device_underflows", self._device_underflows)
        self._alarms = [
            GrowthAlarm(lambda: self.audio_in.overflows, "the microphone lost %d frame(s): the audio "
                        "thread or the event loop fell behind (CPU too busy?)"),
            GrowthAlarm(lambda: self.audio_out.underruns, "the speaker ran dry %d time(s) in the middle "
                        "of a reply: the agent's audio arrived late (slow or lossy network?)"),
            GrowthAlarm(self._device_underflows, "the speaker's device buffer ran empty %d time(s): the "
                        "audio thread was late (CPU too busy? PI_AGENT_AUDIO__PERIOD_MS=20 gives it more time)"),
        ]

    def _device_underflows(self) -> int:
        return int(getattr(self.audio_out, "device_underflows", 0))

    def _counters(self) -> dict[str, Any]:
        def total(counter: Any) -> int:
            return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))
        m = self.metrics
        extra: dict[str, Any] = {"counters": {
            "reconnects": total(m.reconnects), "conversations": total(m.conversations),
            "messages_in": total(m.messages_in), "messages_out": total(m.messages_out),
            "audio_dropped": total(m.audio_dropped), "protocol_errors": total(m.protocol_errors),
            "capture_overflows": self.audio_in.overflows, "playback_underruns": self.audio_out.underruns,
        }}
        if self.leds is not None and getattr(self.leds, "picture", None) is not None:
            pic = self.leds.picture
            extra["leds"] = {"top": pic.top.value, "connection": pic.connection.value,
                             "activity": pic.activity.value, "rgb": pic.rgb.value, "color": list(pic.color)}
        else:
            from .gpio.leds import LedInputs, picture
            s = self.controller.status
            pic = picture(LedInputs(s.state, s.connected, s.muted, s.backing_off, s.error))
            extra["leds"] = {"top": pic.top.value, "connection": pic.connection.value,
                             "activity": pic.activity.value, "rgb": pic.rgb.value, "color": list(pic.color)}
        return extra

    # --- GPIO -----------------------------------------------------------------------------

    def _open_gpio(self, loop: asyncio.AbstractEventLoop) -> None:
        leds, button = self.settings.leds, self.settings.button
        if leds.connection_pin is not None or leds.activity_pin is not None or leds.rgb_pins is not None:
            from .gpio.leds import LedDriver, LedInputs, picture
            try:
                self.leds = LedDriver(leds.connection_pin, leds.activity_pin, leds.rgb_pins,
                                      leds.active_high, self._pin_factory)
            except DeviceError as e:
                log.error("LEDs unavailable: %s (the daemon runs without them)", e)
            else:
                driver = self.leds
                self.controller.observe(lambda s: driver.apply(
                    picture(LedInputs(s.state, s.connected, s.muted, s.backing_off, s.error))))
        if button.pin is not None:
            from .gpio.button import ButtonInput, ButtonPolicy
            try:
                self.button = ButtonInput(button.pin, pull_up=button.pull_up, bounce_time=button.bounce_time,
                                          hold_time=button.hold_time, long_hold_time=button.long_hold_time,
                                          pin_factory=self._pin_factory)
            except DeviceError as e:
                log.error("button unavailable: %s (the daemon runs without it)", e)
            else:
                policy = ButtonPolicy()
                self.button.start(loop, lambda ev: self.controller.on_button(ev, policy))

    def _close_gpio(self) -> None:
        for part in (self.button, self.leds):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()

    # --- devices --------------------------------------------------------------------------

    async def _keep_device(self, which: str, open_: Callable[[], Any], close: Callable[[], Any],
                           failed: asyncio.Event) -> None:
        """Open a device; when it fails (missing, unplugged), reopen with backoff, forever."""
        delay = 1.0
        while True:
            try:
                await open_()
            except DeviceError as e:
                self.controller.device_failed(which, str(e))
                if isinstance(e, DeviceNotFound):
                    self._relist_devices(which)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DEVICE_RETRY_MAX)
                continue
            self.controller.device_recovered(which)
            self._open_devices.add(which)
            delay = 1.0
            await failed.wait()
            failed.clear()
            self._open_devices.discard(which)
            with contextlib.suppress(Exception):
                await close()

    def _relist_devices(self, missing: str) -> None:
        """PortAudio lists devices only when it starts, and an open stream keeps it started:
        a device plugged in later stays invisible. Close the other PortAudio device briefly
        (its keeper reopens it at once) so that the next attempt sees a fresh list."""
        other = "speaker" if missing == "microphone" else "microphone"
        device = self.audio_out if other == "speaker" else self.audio_in
        if other not in self._open_devices or type(device).__name__ not in ("PyAudioInput", "PyAudioOutput"):
            return  # the retry backoff (up to 30 s) bounds how often this happens
        log.info("reopening the %s so that PortAudio lists the devices again (looking for the %s)", other, missing)
        (self._spk_failed if other == "speaker" else self._mic_failed).set()

    def _device_error(self, which: str, failed: asyncio.Event) -> Callable[[DeviceError], None]:
        def report(error: DeviceError) -> None:
            self.controller.device_failed(which, str(error))
            failed.set()
        return report

    async def _ticker(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(0.05)
            self._last_tick = now = time.monotonic()
            self.controller.tick()
            ticks += 1
            if ticks % 20 == 0:
                for alarm in self._alarms:
                    alarm.check(now)

    # --- run ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        loop = asyncio.get_running_loop()
        log.info("pi-agent %s starting: agent %s at %s, %s policy, %s capture, %s", __version__,
                 self.settings.agent_id, self.settings.server_url, self.settings.session.policy,
                 self.settings.capture.mode, self.settings.audio.echo)
        self.controller.observe(self._notify_status)
        try:
            self._open_gpio(loop)
            if self.api is not None:
                try:
                    await self.api.start()
                except OSError as e:
                    log.error("cannot start the event API on 127.0.0.1:%d: %s (set PI_AGENT_API__PORT "
                              "to a free port, or 0 to turn it off)", self.settings.api.port, e.strerror or e)
                    return 1
            spawn = self._spawn
            spawn(self._keep_device("speaker", lambda: self.audio_out.open(self._device_error("speaker", self._spk_failed)),
                                    self.audio_out.close, self._spk_failed), "speaker")
            spawn(self._keep_device("microphone", lambda: self.audio_in.open(
                self.controller.on_mic_frame, self._device_error("microphone", self._mic_failed)),
                self.audio_in.close, self._mic_failed), "microphone")
            await asyncio.sleep(0)  # let the devices open before READY when they can
            self.controller.ready()
            spawn(self.session.run(), "session")
            spawn(self._ticker(), "ticker")
            spawn(watchdog_loop(self.notifier, lambda: time.monotonic() - self._last_tick < 5.0), "watchdog")
            self.notifier.ready(f"state: {self.controller.state.value}")
            stopper = asyncio.ensure_future(stop.wait())
            pending = {stopper, *self._tasks}
            while not stop.is_set():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done - {stopper}:
                    if not t.cancelled() and t.exception() is not None:
                        # A bug of ours: say so loudly; systemd restarts us (Restart=on-failure).
                        log.critical("internal task %s died: %r; exiting", t.get_name(), t.exception(),
                                     exc_info=t.exception())
                        stopper.cancel()
                        return 1
            return 0
        finally:
            await self._shutdown()

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _notify_status(self, status: Status) -> None:
        text = f"state: {status.state.value}" + (" (connected)" if status.connected else "")
        self.notifier.status(text)

    async def _shutdown(self) -> None:
        """Close everything within :data:`SHUTDOWN_BUDGET`, whatever hangs: a frozen sound
        server makes device closes block, a dead link the WebSocket close handshake."""
        self.notifier.stopping()
        log.info("shutting down")
        deadline = time.monotonic() + SHUTDOWN_BUDGET
        self.controller.shut_down()  # no more speech: nothing may ask for a new conversation
        closing = [asyncio.ensure_future(self.audio_in.close())]
        if self.session.is_open:
            self.session.end("shutdown")
            session_deadline = min(deadline - 0.2, time.monotonic() + SHUTDOWN_CLOSE_WAIT)
            while self.session.is_open and time.monotonic() < session_deadline:
                await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        closing.append(asyncio.ensure_future(self.audio_out.close()))
        if self.api is not None:
            closing.append(asyncio.ensure_future(self.api.close()))
        _, stuck = await asyncio.wait(closing, timeout=max(0.05, deadline - time.monotonic()))
        for task in stuck:  # abandoned: a blocking close goes on in its own thread, we do not wait
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
        if stuck:
            log.warning("%d close(s) did not finish within the %g s shutdown budget; abandoned them",
                        len(stuck), SHUTDOWN_BUDGET)
        self._close_gpio()
        self.notifier.close()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run_daemon(settings: Settings, parts: Parts | None = None, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    daemon = Daemon(settings, parts)
    return await daemon.run(stop)


__all__ = ["Daemon", "Parts", "run_daemon"]
