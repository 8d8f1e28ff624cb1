"""PortAudio devices by name, rate/channel negotiation, and plumbing shared by the streams.

Devices are chosen by name, by a unique part of a name, or ``default`` — never by
index, because ALSA card numbers change across reboots and replugs. The name is
resolved again on every open. A name that matches nothing, or more than one
device, fails with a :class:`DeviceError` whose message lists every device.

PortAudio (through ALSA) prints a screenful of probe noise to the process's
stderr when it initialises or opens devices. :func:`quiet_native_stderr`
captures fd 2 around those calls so the journal stays readable; whatever is
not recognisable library noise is written back.

Also here, because capture and playback both need it: :class:`StreamGuard` (the
event-loop watchdog that reports a dead or stalled stream once). Blocking PortAudio
calls go through :func:`pi_agent.threads.run_blocking`, since a stalled sound
server can hang ``open``/``close`` forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyaudio

from ..errors import DeviceError, DeviceNotFound, InternalError
from ..threads import run_blocking

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]

PROBE_RATE = 16_000

# --------------------------------------------------------------------------- native stderr

_STDERR_LOCK = threading.Lock()
_NOISE = re.compile(
    r"^(ALSA lib |Expression '|Cannot connect to server|jack server is not running|"
    r"JackShmReadWritePtr|Cannot lock down|connect\(2\) call to|attempt to connect to server failed|"
    r"Jack: |bt_audio_service_open|Cannot open device|Cannot open DB environment|\s*$)"
)


class CapturedStderr:
    """What C libraries wrote to fd 2 inside a :func:`quiet_native_stderr` block."""

    def __init__(self, fd: int | None):
        self._fd = fd
        self.noise: list[str] = []
        """Library-noise lines, filled when the block ends."""

    def text(self) -> str:
        """Everything captured so far (readable inside the block, e.g. for an error message)."""
        if self._fd is None:
            return ""
        try:
            size = os.fstat(self._fd).st_size
            return os.pread(self._fd, size, 0).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def alsa_lines(self) -> list[str]:
        """The ALSA messages captured so far: they usually say why an open failed."""
        return [line.strip() for line in self.text().splitlines() if line.startswith("ALSA lib")]


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[CapturedStderr]:
    """Capture what C libraries write to fd 2 inside the block.

    ALSA, PortAudio and JACK print their probe noise straight to fd 2. Inside the
    block fd 2 points at a temporary file; afterwards recognisable library noise
    is kept in ``captured.noise`` and any other line is written back to stderr
    (so another thread's log line is delayed, never lost). Serialised by a lock
    because fd 2 is process-wide. Without a usable fd 2 the block simply runs.
    """
    with _STDERR_LOCK:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep clean
            yield CapturedStderr(None)
            return
        with tempfile.TemporaryFile() as tmp:
            captured = CapturedStderr(tmp.fileno())
            try:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield captured
                finally:
                    os.dup2(saved, 2)
                text = captured.text()
            finally:
                os.close(saved)
        for line in text.splitlines():
            if _NOISE.match(line):
                if line.strip():
                    captured.noise.append(line)
            else:
                with contextlib.suppress(OSError):
                    os.write(2, (line + "\n").encode())


PORTAUDIO_LOCK = threading.RLock()
"""Serialises PortAudio set-up and tear-down (initialise, terminate, open, close, probe):
PortAudio's bookkeeping of instances and open streams is not thread-safe, and the
backends open and close from worker threads."""


def new_pyaudio() -> pyaudio.PyAudio:
    """Initialise PortAudio with its ALSA/JACK probe noise kept out of the journal."""
    with PORTAUDIO_LOCK, quiet_native_stderr() as captured:
        pa = pyaudio.PyAudio()
    if captured.noise:
        log.debug("PortAudio initialisation printed %d lines of library noise", len(captured.noise))
    return pa


@contextlib.contextmanager
def portaudio(pa: pyaudio.PyAudio | None = None) -> Iterator[pyaudio.PyAudio]:
    """Yield ``pa``, or a fresh PortAudio instance that is terminated afterwards."""
    if pa is not None:
        yield pa
        return
    own = new_pyaudio()
    try:
        yield own
    finally:
        with PORTAUDIO_LOCK, quiet_native_stderr():
            own.terminate()


def _error_detail(exc: BaseException, captured: CapturedStderr) -> str:
    """A short reason from a PortAudio error plus the last ALSA lines that explain it."""
    alsa = captured.alsa_lines()
    tail = f" (ALSA: {' | '.join(alsa[-3:])})" if alsa else ""
    if isinstance(exc, OSError) and len(exc.args) >= 2:
        return f"{exc.args[1]} [{exc.args[0]}]{tail}"
    return f"{exc}{tail}"


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device as listed for the admin and used to open streams."""

    index: int
    """PortAudio's index for this run only: never store it."""
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_rate: float
    input_16k: bool | None = None
    """Whether a 16 kHz mono capture opens (None: not probed or no input)."""
    output_16k: bool | None = None
    """Whether a 16 kHz mono playback opens (None: not probed or no output)."""
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Kind) -> int:
        """Maximum channel count in the given direction."""
        return self.max_input_channels if kind == "input" else self.max_output_channels


def is_supported(pa: pyaudio.PyAudio, info: DeviceInfo, kind: Kind, rate: int, channels: int) -> bool:
    """Whether PortAudio says the device opens with s16 at ``rate`` and ``channels``."""
    kwargs: dict[str, object]
    if kind == "input":
        kwargs = {"input_device": info.index, "input_channels": channels, "input_format": pyaudio.paInt16}
    else:
        kwargs = {"output_device": info.index, "output_channels": channels, "output_format": pyaudio.paInt16}
    with PORTAUDIO_LOCK, quiet_native_stderr():
        try:
            return bool(pa.is_format_supported(rate, **kwargs))
        except (ValueError, OSError):
            return False


def list_devices(pa: pyaudio.PyAudio | None = None, *, probe: bool = True) -> list[DeviceInfo]:
    """Every PortAudio device; with ``probe``, also whether each opens at 16 kHz mono."""
    with PORTAUDIO_LOCK, portaudio(pa) as p:
        try:
            default_in = int(p.get_default_input_device_info()["index"])
        except OSError:
            default_in = -1
        try:
            default_out = int(p.get_default_output_device_info()["index"])
        except OSError:
            default_out = -1
        devices: list[DeviceInfo] = []
        for index in range(p.get_device_count()):
            raw = p.get_device_info_by_index(index)
            try:
                host_api = str(p.get_host_api_info_by_index(int(raw["hostApi"]))["name"])
            except (OSError, KeyError):
                host_api = "?"
            info = DeviceInfo(
                index=index,
                name=str(raw["name"]),
                host_api=host_api,
                max_input_channels=int(raw["maxInputChannels"]),
                max_output_channels=int(raw["maxOutputChannels"]),
                default_rate=float(raw["defaultSampleRate"]),
                default_input=index == default_in,
                default_output=index == default_out,
            )
            if probe:
                info = dataclasses.replace(
                    info,
                    input_16k=is_supported(p, info, "input", PROBE_RATE, 1) if info.max_input_channels else None,
                    output_16k=is_supported(p, info, "output", PROBE_RATE, 1) if info.max_output_channels else None,
                )
            devices.append(info)
        return devices


def format_device_table(devices: Sequence[DeviceInfo]) -> str:
    """A plain-text table of devices for the admin (``pi-agent devices``, error messages)."""
    if not devices:
        look = "`aplay -l`, `arecord -l`" if shutil.which("aplay") else "`cat /proc/asound/cards`"
        return (
            f"  (PortAudio found no audio devices: is a sound card attached ({look}),\n"
            "   and is this user in the audio group?)"
        )

    def flag(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "no")

    rows = [("index", "in", "out", "16k in", "16k out", "rate", "name")]
    for d in devices:
        marks = [m for m, on in (("default input", d.default_input), ("default output", d.default_output)) if on]
        name = d.name + (f"  [{', '.join(marks)}]" if marks else "")
        rows.append(
            (
                str(d.index),
                str(d.max_input_channels),
                str(d.max_output_channels),
                flag(d.input_16k),
                flag(d.output_16k),
                f"{d.default_rate:g}",
                name,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = []
    for r in rows:
        cells = [r[i].rjust(widths[i]) if i in (0, 1, 2, 5) else r[i].ljust(widths[i]) for i in range(6)]
        lines.append("  " + "  ".join(cells) + "  " + r[6])
    return "\n".join(lines)


# --------------------------------------------------------------------------- lookup


def match_device(name: str, kind: Kind, devices: Sequence[DeviceInfo]) -> DeviceInfo:
    """Pick the device for ``name`` among ``devices`` (pure; see :func:`resolve`).

    ``default`` is PortAudio's default device for the direction; otherwise an exact
    (case-insensitive) name wins, else a unique case-insensitive part of a name.
    """
    wanted = name.strip()
    usable = [d for d in devices if d.channels(kind) > 0]
    if wanted.lower() == "default":
        for d in usable:
            if d.default_input if kind == "input" else d.default_output:
                return d
        exact_default = [d for d in usable if d.name.lower() == "default"]
        if exact_default:
            return exact_default[0]
        raise DeviceNotFound(
            f"there is no default {kind} device; choose one by name. Devices:\n" + format_device_table(devices)
        )
    if not wanted:
        raise DeviceError(
            f"empty {kind} device name; use 'default' or a name. Devices:\n" + format_device_table(devices)
        )
    exact = [d for d in usable if d.name.lower() == wanted.lower()]
    if exact:
        return exact[0]
    partial = [d for d in usable if wanted.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise DeviceNotFound(f"no {kind} device matches {wanted!r}. Devices:\n" + format_device_table(devices))
    names = ", ".join(repr(d.name) for d in partial)
    raise DeviceError(
        f"{kind} device name {wanted!r} is ambiguous: it matches {names}; use more of the name. "
        "Devices:\n" + format_device_table(devices)
    )


def resolve(
    name: str,
    kind: Kind,
    *,
    pa: pyaudio.PyAudio | None = None,
    devices: Sequence[DeviceInfo] | None = None,
) -> DeviceInfo:
    """Find the ``kind`` device called ``name`` (see :func:`match_device`) in the current list.

    Raises :class:`DeviceError` listing every device (with its 16 kHz ability) when
    the name matches nothing or is ambiguous.
    """
    with portaudio(pa) as p:
        listed = list(devices) if devices is not None else list_devices(p, probe=False)
        try:
            return match_device(name, kind, listed)
        except DeviceError as exc:
            if devices is not None:
                raise
            # Re-list with the 16 kHz probe so the message helps the admin choose.
            head = str(exc).split("\n", 1)[0]
            raise type(exc)(head + "\n" + format_device_table(list_devices(p, probe=True))) from None


def negotiate(
    pa: pyaudio.PyAudio,
    info: DeviceInfo,
    kind: Kind,
    *,
    rates: Sequence[int],
    channels: Sequence[int],
) -> tuple[int, int]:
    """The first ``(rate, channels)`` the device accepts, rates taking precedence."""
    tried: list[str] = []
    seen: set[tuple[int, int]] = set()
    for rate in rates:
        for ch in channels:
            if (rate, ch) in seen or ch < 1 or rate <= 0:
                continue
            seen.add((rate, ch))
            if is_supported(pa, info, kind, rate, ch):
                return rate, ch
            tried.append(f"{rate} Hz x{ch}")
    raise DeviceError(
        f"{kind} device {info.name!r} accepts none of the formats tried (16-bit, {', '.join(tried) or 'none'})"
    )


def unique(values: Sequence[int | None]) -> list[int]:
    """Drop ``None`` and repeats, keeping order."""
    out: list[int] = []
    for v in values:
        if v is not None and v not in out:
            out.append(int(v))
    return out


def open_stream(pa: pyaudio.PyAudio, what: str, **kwargs: object) -> pyaudio.PyAudio.Stream:
    """``pa.open(..., start=False)`` with ALSA noise captured into the error message."""
    with PORTAUDIO_LOCK, quiet_native_stderr() as captured:
        try:
            return pa.open(start=False, **kwargs)
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot open {what}: {_error_detail(exc, captured)}") from exc


def start_stream(stream: pyaudio.PyAudio.Stream, what: str) -> None:
    """Start a stream; a failure becomes a :class:`DeviceError`."""
    with PORTAUDIO_LOCK, quiet_native_stderr() as captured:
        try:
            stream.start_stream()
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot start {what}: {_error_detail(exc, captured)}") from exc


def abort_stream(stream: Any) -> None:
    """Pa_AbortStream: stop a PyAudio stream at once, dropping what the device holds.

    PyAudio wraps only Pa_StopStream, which plays out the device's buffer first (a period
    or two, ~40 ms at 40 ms periods); its C module has the abort. Not under
    :data:`PORTAUDIO_LOCK`: a barge-in must not wait for another device being opened,
    and start/stop touch nothing but this stream."""
    from pyaudio import _portaudio

    _portaudio.abort_stream(stream._stream)
    stream._is_running = False  # so that PyAudio's start_stream() starts it again


def close_quietly(stream: pyaudio.PyAudio.Stream | None, pa: pyaudio.PyAudio | None, what: str) -> None:
    """Close a stream (aborting it) and terminate an owned PortAudio; never raises."""
    with PORTAUDIO_LOCK, quiet_native_stderr():
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # a dead device may fail in any way here
                log.debug("closing %s: %r", what, exc)
        if pa is not None:
            try:
                pa.terminate()
            except Exception as exc:
                log.debug("terminating PortAudio for %s: %r", what, exc)


class StreamGuard:
    """Watches a PortAudio stream from the event loop; reports its death once.

    The audio thread calls :meth:`tick` on every callback (or read) and may call
    :meth:`fail_threadsafe`. A loop timer checks that the stream is still active and
    that callbacks keep coming: no callback for ``stall_timeout`` once the stream runs
    steadily (``start_timeout`` while it starts up: PulseAudio-backed devices can pause
    for over a second after priming) counts as a dead device. ``on_error`` is then
    called once, on the loop thread.

    The timer is due only when a stall would have become visible (``stall_timeout``
    after the last callback), so a healthy stream costs the loop one wake-up per
    ``stall_timeout``, and a stream stopped on purpose (:meth:`pause`) none at all.
    """

    STEADY_CALLBACKS = 10
    SLACK = 0.005  # s past the moment a stall becomes visible

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        what: str,
        on_error: Callable[[DeviceError], None],
        *,
        stall_timeout: float = 0.5,
        start_timeout: float = 3.0,
    ):
        self.loop = loop
        self.what = what
        self.on_error = on_error
        self.stall_timeout = stall_timeout
        self.start_timeout = start_timeout
        self.callbacks = 0
        """Callbacks since the stream was opened."""
        self.last_callback = time.monotonic()
        self.failed = False
        self._since_start = 0  # callbacks since the stream last started
        self._stopped = True
        self._paused = False
        self._fail_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._is_active: Callable[[], bool] = lambda: True

    # audio thread -------------------------------------------------------------
    def tick(self) -> None:
        """Record a callback (audio thread)."""
        self.last_callback = time.monotonic()
        self.callbacks += 1
        self._since_start += 1

    def fail_threadsafe(self, error: DeviceError) -> None:
        """Report a failure from any thread (only the first one counts)."""
        if self._fail_scheduled or self._stopped:
            return
        self._fail_scheduled = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            self.loop.call_soon_threadsafe(self.fail, error)

    # loop thread --------------------------------------------------------------
    def start(self, is_active: Callable[[], bool]) -> None:
        """Begin watching a stream that has just started (loop thread)."""
        self._is_active = is_active
        self._stopped = False
        self.resume()

    def pause(self) -> None:
        """The stream is being stopped on purpose: expect no callbacks until :meth:`resume`."""
        self._paused = True
        self._cancel()

    def resume(self) -> None:
        """The stream is (being) started again: callbacks are due, after a start-up allowance."""
        if self._stopped:
            return
        self._paused = False
        self._since_start = 0
        self.last_callback = time.monotonic()
        self._arm()

    def stop(self) -> None:
        """Stop watching; later failures are ignored (loop thread)."""
        self._stopped = True
        self._cancel()

    def fail(self, error: DeviceError) -> None:
        """Report ``error`` through ``on_error`` unless already reported (loop thread)."""
        if self.failed or self._stopped:
            return
        self.failed = True
        self.stop()
        log.error("%s failed: %s", self.what, error)
        try:
            self.on_error(error)
        except Exception:
            log.exception("on_error handler raised for %s", self.what)

    def _limit(self) -> float:
        return self.stall_timeout if self._since_start >= self.STEADY_CALLBACKS else self.start_timeout

    def _arm(self) -> None:
        self._cancel()
        due = max(0.0, self.last_callback + self._limit() - time.monotonic()) + self.SLACK
        self._timer = self.loop.call_later(due, self._check)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._stopped or self._paused:
            return
        try:
            active = self._is_active()
        except Exception as exc:
            self.fail(DeviceError(f"{self.what}: PortAudio stream unusable ({exc!r})"))
            return
        silent_for = time.monotonic() - self.last_callback
        if not active:
            self.fail(DeviceError(f"{self.what} stopped (device unplugged or sound server gone?)"))
            return
        if silent_for > self._limit():
            self.fail(DeviceError(f"{self.what} stalled: no audio callback for {silent_for:.1f} s (device gone?)"))
            return
        self._arm()


class CallbackDevice:
    """What the PortAudio microphone and speaker share: a device named by the user and
    resolved afresh on every open, a callback stream opened and closed off the loop (a stuck
    sound server cannot hang the daemon) under :data:`PORTAUDIO_LOCK`, and a
    :class:`StreamGuard` that reports the device's death once.

    A subclass names itself (:attr:`noun`) and builds its stream in :meth:`_make_stream`,
    on a worker thread; starting it, cleaning up after a failure and closing are here.
    """

    noun = "device"

    def __init__(
        self,
        device: str,
        *,
        pa: pyaudio.PyAudio | None,
        rate: int | None,
        channels: int | None,
        period_ms: int,
        stall_timeout: float,
        start_timeout: float,
        open_timeout: float,
        close_timeout: float,
        quality: str,
    ):
        self.device_name = device
        self.forced_rate = rate
        self.forced_channels = channels
        self.period_ms = period_ms
        self.stall_timeout = stall_timeout
        self.start_timeout = start_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.quality = quality
        self._pa_given = pa

        self.device: DeviceInfo | None = None
        """The device in use (after open)."""
        self.rate: int | None = None
        """The device sample rate in use (after open)."""
        self.channels: int | None = None
        """The device channel count in use (after open)."""

        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: StreamGuard | None = None
        self._stream: Any = None
        self._pa_owned: pyaudio.PyAudio | None = None
        self._broken = False  # the callback failed: it only returns silence until reopened

    @property
    def callbacks(self) -> int:
        """PortAudio callbacks since the last open (diagnostics, tests)."""
        return self._guard.callbacks if self._guard is not None else 0

    @property
    def what(self) -> str:
        """How log lines and errors name this device."""
        return f"{self.noun} {self.device_name!r}"

    def _make_stream(self, pa: pyaudio.PyAudio) -> Any:
        """Resolve the device, negotiate a format and open (not start) the stream; worker thread."""
        raise NotImplementedError

    async def _open_stream(self, on_error: Callable[[DeviceError], None]) -> None:
        """Open and start the stream on a worker thread, then watch it."""
        if self._stream is not None:
            raise InternalError(f"{self.what} is already open")
        loop = self._loop = asyncio.get_running_loop()
        self._broken = False
        guard = self._guard = StreamGuard(
            loop, self.what, on_error, stall_timeout=self.stall_timeout, start_timeout=self.start_timeout
        )
        self._stream, self._pa_owned = await run_blocking(
            self._open_blocking,
            timeout=self.open_timeout,
            what=f"opening {self.what}",
            error=DeviceError,
            hint=" (sound server stuck?)",
            dispose=lambda opened: close_quietly(opened[0], opened[1], self.what),
        )
        guard.start(self._stream.is_active)

    def _open_blocking(self) -> tuple[Any, pyaudio.PyAudio | None]:
        with PORTAUDIO_LOCK:  # resolve, probe and open as one step
            owned = None if self._pa_given is not None else new_pyaudio()
            pa = self._pa_given if self._pa_given is not None else owned
            if pa is None:  # pragma: no cover - new_pyaudio() either returns or raises
                raise InternalError("no PortAudio instance")
            stream = None
            try:
                stream = self._make_stream(pa)
                start_stream(stream, self.what)
                return stream, owned
            except BaseException:
                close_quietly(stream, owned, self.what)
                raise

    async def _close_stream(self) -> None:
        """Stop watching, then stop and release the stream; never raises."""
        if self._guard is not None:
            self._guard.stop()
        stream, pa_owned = self._stream, self._pa_owned
        self._stream = self._pa_owned = None
        if stream is None and pa_owned is None:
            return
        try:
            await run_blocking(
                lambda: close_quietly(stream, pa_owned, self.what),
                timeout=self.close_timeout,
                what=f"closing {self.what}",
                error=DeviceError,
                hint=" (sound server stuck?)",
            )
        except DeviceError as exc:
            log.warning("%s; abandoning it", exc)
        log.info("%s closed", self.what)
