"""Shared pytest set-up and fixtures. Helpers live beside the tests as ``support_*.py``
modules of this package (``from .support_audio import ...``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .support_audio import VirtualAudio, missing_tools

# gpiozero must never look for real pins in the test run.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture(scope="session")
def virtual_audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    """The private PulseAudio server + ALSA config, for the whole session."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    va = VirtualAudio(tmp_path_factory.mktemp("vaudio"))
    try:
        va.start()  # a server that is installed but will not start is a failure, not a skip
        yield va
    finally:
        va.stop()


@pytest.fixture
def alsa_devices(virtual_audio: VirtualAudio, monkeypatch: pytest.MonkeyPatch) -> VirtualAudio:
    """Make PortAudio (initialised inside the test) see the virtual devices."""
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(virtual_audio.alsa_conf))
    return virtual_audio
