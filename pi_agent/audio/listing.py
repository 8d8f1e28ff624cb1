"""PortAudio devices by name: listing, the admin's table, lookup, and format negotiation.

Devices are chosen by name, by a unique part of a name, or ``default`` — never by
index, because ALSA card numbers change across reboots and replugs. The name is
resolved again on every open. A name that matches nothing, or more than one
device, fails with a :class:`DeviceError` whose message lists every device.
Which sample rate and channel count a device opens with is negotiated here too
(:func:`negotiate`), from choices the caller orders.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyaudio

from ..errors import DeviceError, DeviceNotFound
from . import portaudio as pa_direct
from .native import PORTAUDIO_LOCK, portaudio, quiet_native_stderr

Kind = Literal["input", "output"]

PROBE_RATE = 16_000


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
    """Whether PortAudio says the device opens with s16 at ``rate`` and ``channels``.

    Through ctypes where PyAudio's PortAudio is a shared library (:mod:`.portaudio`): PyAudio's
    probe holds the GIL while PortAudio opens the device, and on a sound server that stopped
    answering that froze the whole daemon (its event loop, the agent's connection, the
    watchdog) for as long as the server did."""
    kwargs: dict[str, object]
    if kind == "input":
        kwargs = {"input_device": info.index, "input_channels": channels, "input_format": pyaudio.paInt16}
    else:
        kwargs = {"output_device": info.index, "output_channels": channels, "output_format": pyaudio.paInt16}
    lib = pa_direct.library()
    with PORTAUDIO_LOCK, quiet_native_stderr():
        if lib is not None and lib.device_name(info.index) == info.name:
            return lib.is_format_supported(info.index, kind, rate, channels)
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
