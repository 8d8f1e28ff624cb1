"""The agent's audio formats: wire names, sample rates, sample encodings.

The one table of the formats the protocol names (``agent_output_audio_format`` /
``user_input_audio_format``): raw mono PCM s16le at several rates, or G.711 mu-law at
8 kHz, one byte a sample. The decoder accepts only these names; the codecs that turn
them into samples (numpy, soxr) are :mod:`pi_agent.audio.formats`'. The fake agent keeps
its own copy on purpose (:mod:`pi_agent.fake_agent.audio`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ProtocolError

Encoding = Literal["pcm", "ulaw"]


@dataclass(frozen=True)
class AudioFormat:
    """One agent audio format: its wire name, sample rate and sample encoding."""

    name: str
    rate: int
    encoding: Encoding

    @property
    def bytes_per_sample(self) -> int:
        """2 for PCM s16le, 1 for mu-law."""
        return 2 if self.encoding == "pcm" else 1


FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        AudioFormat("pcm_8000", 8_000, "pcm"),
        AudioFormat("pcm_16000", 16_000, "pcm"),
        AudioFormat("pcm_22050", 22_050, "pcm"),
        AudioFormat("pcm_24000", 24_000, "pcm"),
        AudioFormat("pcm_44100", 44_100, "pcm"),
        AudioFormat("pcm_48000", 48_000, "pcm"),
        AudioFormat("ulaw_8000", 8_000, "ulaw"),
    )
}
"""Every audio format the agent protocol names, by wire name."""


def get_format(name: str) -> AudioFormat:
    """Look a format up by wire name; an unknown name is the peer's fault (:class:`ProtocolError`)."""
    try:
        return FORMATS[name]
    except KeyError:
        known = ", ".join(FORMATS)
        raise ProtocolError(f"unsupported audio format {name!r} (supported: {known})") from None
