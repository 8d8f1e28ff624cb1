"""What the daemon is built from: :class:`Parts`, and the factories that build each part
from the settings (the microphone, the speaker, the VAD, the echo canceller, the wake word).

The demo and the tests hand in parts of their own (WAV-file audio, gpiozero's mock pins, a
connector or a signed-URL fetcher); ``pi-agent run`` and the diagnostics build the real ones
here, so a setting means the same thing to all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .audio import AudioInput, AudioOutput
from .audio.capture import PyAudioInput
from .audio.earcons import sound_names
from .audio.gate import WakeWord
from .audio.playback import PyAudioOutput
from .config import AudioSettings, CaptureSettings
from .engine.backoff import Backoff
from .errors import ConfigError
from .net.session import Connector
from .net.signed_url import SignedUrlFetcher
from .service.systemd import Notifier

if TYPE_CHECKING:
    from gpiozero import Factory as PinFactory

    from .audio.echo import EchoCanceller
    from .audio.wakeword import WakeWordDetector
else:
    PinFactory = Any


Vad = Callable[[bytes], bool]


@dataclass
class Parts:
    """What the daemon talks to. ``None`` fields are built from the settings."""

    audio_in: AudioInput | None = None
    audio_out: AudioOutput | None = None
    pin_factory: PinFactory | None = None
    notifier: Notifier | None = None
    vad: Vad | None = None
    wake_word: WakeWord | None = None  # wake_word mode's detector (default: the configured model)
    connect: Connector | None = None  # opens the WebSocket (default: pi_agent.net.link.open_link)
    fetch_url: SignedUrlFetcher | None = None  # fetches a signed URL (default: HTTPS to the server)
    backoff: Backoff | None = None
    clock: Callable[[], float] = time.monotonic


def make_audio_input(a: AudioSettings) -> AudioInput:
    if a.input_wav is not None:
        from .audio.files import WavFileInput
        return WavFileInput(a.input_wav)
    return PyAudioInput(a.input_device, channel=a.input_channel, idle_read_ms=a.idle_read_ms)


def make_audio_output(a: AudioSettings) -> AudioOutput:
    """The speaker; the earcons' own sounds (``audio.earcon_sounds``) are read here, once
    (:class:`ConfigError` if one cannot be), and resampled to the device's rate when it opens."""
    earcons = sound_names(a.earcons, a.earcon_sounds)
    if a.output_wav is not None:
        from .audio.files import WavFileOutput
        return WavFileOutput(a.output_wav, rate=a.output_rate or 16000, period_ms=a.period_ms, earcons=earcons)
    return PyAudioOutput(a.output_device, period_ms=a.period_ms, rate=a.output_rate, earcons=earcons,
                         standby_after=a.standby_after, lead_in=a.lead_in)


def make_vad(aggressiveness: int) -> Vad:
    import webrtcvad

    from .audio import MIC_RATE

    vad = webrtcvad.Vad(aggressiveness)
    return lambda frame: bool(vad.is_speech(frame, MIC_RATE))


def make_echo_canceller(a: AudioSettings, speaker: AudioOutput) -> EchoCanceller | None:
    """``audio.echo = aec``: the canceller, fed by ``speaker``; :class:`ConfigError` if it cannot run."""
    if a.echo != "aec":
        return None
    from .audio.echo import EchoCanceller, FarEnd
    if not isinstance(speaker, PyAudioOutput):
        raise ConfigError("audio.echo = aec needs a sound card's speaker to hear what it plays, not a WAV file "
                          "or a stand-in: use half_duplex or full_duplex with audio.output_wav")
    far = FarEnd()
    echo = EchoCanceller(far, noise_suppression=a.noise_suppression)
    speaker.far_end = far
    return echo


def make_wake_word(c: CaptureSettings) -> WakeWordDetector | None:
    """The wake_word mode's detector (None in the other modes); :class:`ConfigError` if it cannot run."""
    if c.mode != "wake_word":
        return None
    from .audio.wakeword import WakeWordDetector
    return WakeWordDetector(c.wake_word, c.wake_word_threshold)


__all__ = ["Parts", "Vad", "make_audio_input", "make_audio_output", "make_echo_canceller", "make_vad", "make_wake_word"]
