"""Short feedback sounds ("earcons"), generated with numpy at the output device's rate.

Generated once when an output opens, so they need no asset files and no
resampling. Each is a sequence of soft tones with raised-cosine edges (no
clicks), peaking well below full scale so that mixing over speech rarely clips.

- ``listening``: two rising notes, "I am listening now".
- ``done``: two falling notes, "got it / finished".
- ``error``: a low, slightly rough double buzz.
- ``offline``: three descending notes, "lost the connection".

Any of them may be a sound of one's own instead (``audio.earcon_sounds``): a PCM WAV file
of any rate and channel count, read once at start (:func:`read_sound`, a bad file is a
:class:`~pi_agent.errors.ConfigError`), down-mixed to mono, and resampled (soxr, as the
agent's audio is) to the device's rate when the output opens. Its name travels with its
samples (:class:`EarconName`), so the outputs need nothing else to play it.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .formats import mix_down, resample

EARCON_NAMES: tuple[str, ...] = ("listening", "done", "error", "offline")
MAX_SOUND_SECONDS = 10.0  # an earcon of one's own is short; a longer file is refused (memory stays bounded)


class EarconSound:
    """A sound of one's own for an earcon: mono int16 samples at ``rate`` (from :func:`read_sound`)."""

    __slots__ = ("path", "rate", "samples")

    def __init__(self, samples: np.ndarray, rate: int, path: Path | None = None) -> None:
        self.samples = samples
        self.rate = rate
        self.path = path


class EarconName(str):
    """An earcon's name (equal to the plain name) carrying the sound that replaces the generated one."""

    sound: EarconSound | None

    def __new__(cls, name: str, sound: EarconSound | None = None) -> EarconName:
        self = super().__new__(cls, name)
        self.sound = sound
        return self


def check_sound(path: Path) -> str | None:
    """Why ``path`` cannot be an earcon's sound (one line), or None if it can."""
    try:
        read_sound(path)
    except ConfigError as e:
        return str(e)
    return None


def read_sound(path: Path) -> EarconSound:
    """A PCM WAV file (8/16/24/32-bit, any rate, any channels) as mono int16 samples at its own rate.
    Raises :class:`ConfigError` (one line) if it cannot be read or is not such a file."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if rate <= 0 or channels <= 0:
                raise ConfigError(f"{path}: a WAV file with no sample rate or no channels")
            if frames > MAX_SOUND_SECONDS * rate:
                raise ConfigError(f"{path}: {frames / rate:.1f} s long; an earcon may last {MAX_SOUND_SECONDS:g} s")
            data = w.readframes(frames)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a WAV file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (the service's user must be able to read it)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from None
    except (wave.Error, EOFError) as e:
        why = f" ({e})" if str(e) else " (too short)"
        raise ConfigError(f"{path}: not a PCM WAV file{why}; save it as 16-bit PCM WAV") from None
    samples = _to_int16(data, width)
    whole = len(samples) - len(samples) % channels  # a trailing partial frame is dropped
    return EarconSound(mix_down(samples[:whole].reshape(-1, channels)), rate, path)


def _to_int16(data: bytes, width: int) -> np.ndarray:
    usable = len(data) - len(data) % width
    raw = np.frombuffer(data[:usable], dtype=np.uint8)
    if width == 1:  # 8-bit WAV is unsigned
        return ((raw.astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
    # 24 and 32 bits: keep the top 16 bits of each little-endian sample
    return raw.reshape(-1, width)[:, width - 2:].copy().view("<i2").reshape(-1).astype(np.int16)


def sound_names(names: Iterable[str], sounds: Mapping[str, Path]) -> list[EarconName]:
    """The enabled earcons, each with its sound of one's own read (:func:`read_sound`) where it has one.
    Raises :class:`ConfigError` naming the setting if a file cannot be read."""
    out = []
    for name in names:
        path = sounds.get(name)
        try:
            out.append(EarconName(name, read_sound(path) if path is not None else None))
        except ConfigError as e:
            raise ConfigError(f"audio.earcon_sounds.{name}: {e}") from None
    return out

# name -> [(frequency Hz or a pair for a rough two-tone, duration s, gap after s)]
_SCORES: dict[str, list[tuple[float | tuple[float, float], float, float]]] = {
    "listening": [(660.0, 0.07, 0.02), (990.0, 0.09, 0.0)],
    "done": [(990.0, 0.07, 0.02), (660.0, 0.09, 0.0)],
    "error": [((220.0, 233.0), 0.12, 0.05), ((220.0, 233.0), 0.12, 0.0)],
    "offline": [(784.0, 0.08, 0.02), (587.0, 0.08, 0.02), (392.0, 0.14, 0.0)],
}


def _note(freq: float | tuple[float, float], seconds: float, rate: int) -> np.ndarray:
    n = max(1, round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    if isinstance(freq, tuple):
        wave = 0.5 * (np.sin(2 * np.pi * freq[0] * t) + np.sin(2 * np.pi * freq[1] * t))
    else:
        wave = np.sin(2 * np.pi * freq * t)
    edge = min(n // 2, max(1, int(0.008 * rate)))  # 8 ms raised-cosine fade in/out
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, edge))
    wave[:edge] *= ramp
    wave[n - edge :] *= ramp[::-1]
    return wave


def make_earcon(name: str, rate: int, *, level: float = 0.25) -> np.ndarray:
    """One earcon as float32 samples at ``rate`` scaled to int16 range (peak ``level`` of full scale)."""
    if name not in _SCORES:
        raise ValueError(f"unknown earcon {name!r} (known: {', '.join(EARCON_NAMES)})")
    parts: list[np.ndarray] = []
    for freq, seconds, gap in _SCORES[name]:
        parts.append(_note(freq, seconds, rate))
        if gap:
            parts.append(np.zeros(round(gap * rate)))
    return (np.concatenate(parts) * (level * 32767.0)).astype(np.float32)


def make_earcons(rate: int, names: Iterable[str] = EARCON_NAMES, *, level: float = 0.25) -> dict[str, np.ndarray]:
    """The enabled earcons, by name, at ``rate``: generated (see :func:`make_earcon`), or a
    name's own sound (an :class:`EarconName` carrying one) resampled to ``rate`` as it is."""
    earcons = {}
    for name in names:
        sound = getattr(name, "sound", None)
        if isinstance(sound, EarconSound):
            earcons[str(name)] = resample(sound.samples, sound.rate, rate).astype(np.float32)
        else:
            earcons[str(name)] = make_earcon(str(name), rate, level=level)
    return earcons
