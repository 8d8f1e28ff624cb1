"""pi-agent: a voice-assistant daemon for the Raspberry Pi, for ElevenLabs agents."""

__version__ = "0.1.0"
