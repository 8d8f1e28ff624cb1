"""The old home of the PortAudio plumbing, kept so that existing imports still work.

What was here now lives with its owner; new code imports from there:

- :mod:`.native`: fd 2 capture around native calls (:func:`quiet_native_stderr`),
  :data:`PORTAUDIO_LOCK`, PortAudio instances (:func:`new_pyaudio`, :func:`portaudio`);
- :mod:`.listing`: devices by name: listing, the admin's table, lookup
  (:func:`resolve`), format negotiation (:func:`negotiate`, :func:`unique`);
- :mod:`.streams`: a stream's open, start, abort and close, and :class:`CallbackDevice`;
- :mod:`.guard`: :class:`StreamGuard`, the watchdog on a running stream.

This module only re-exports those names.
"""

from __future__ import annotations

from .guard import StreamGuard
from .listing import (
    PROBE_RATE,
    DeviceInfo,
    Kind,
    format_device_table,
    is_supported,
    list_devices,
    match_device,
    negotiate,
    resolve,
    unique,
)
from .native import PORTAUDIO_LOCK, CapturedStderr, new_pyaudio, portaudio, quiet_native_stderr
from .streams import CallbackDevice, abort_stream, close_quietly, open_stream, start_stream

__all__ = [
    "PORTAUDIO_LOCK",
    "PROBE_RATE",
    "CallbackDevice",
    "CapturedStderr",
    "DeviceInfo",
    "Kind",
    "StreamGuard",
    "abort_stream",
    "close_quietly",
    "format_device_table",
    "is_supported",
    "list_devices",
    "match_device",
    "negotiate",
    "new_pyaudio",
    "open_stream",
    "portaudio",
    "quiet_native_stderr",
    "resolve",
    "start_stream",
    "unique",
]
