"""Prometheus metrics, on a registry of the daemon's own (not the global one)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily


class Metrics:
    """Every figure ``/metrics`` shows. Cheap to update from the event loop."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.reconnects = Counter("pi_agent_reconnects", "Connection attempts after a failure or an end", registry=r)
        self.conversations = Counter("pi_agent_conversations", "Conversations opened", registry=r)
        self.conversation_seconds = Histogram(
            "pi_agent_conversation_duration_seconds", "How long conversations stayed open",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=r)
        self.messages_in = Counter("pi_agent_messages_received", "Server messages by type", ["type"], registry=r)
        self.messages_out = Counter("pi_agent_messages_sent", "Client messages by type", ["type"], registry=r)
        self.protocol_errors = Counter("pi_agent_protocol_errors", "Server frames skipped as malformed", registry=r)
        self.audio_dropped = Counter(
            "pi_agent_audio_dropped_frames", "Audio frames not sent or not played, by reason",
            ["reason"], registry=r)
        self.connected = Gauge("pi_agent_connected", "1 while a conversation is open", registry=r)
        self.ping_ms = Gauge("pi_agent_server_ping_ms", "Round trip the server last reported (ping_ms)", registry=r)
        self.response_latency = Histogram(
            "pi_agent_response_latency_seconds", "End of user speech to first agent audio",
            buckets=(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=r)
        self.barge_in_seconds = Histogram(
            "pi_agent_barge_in_flush_seconds", "Interruption received to playback flushed",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1), registry=r)
        self._device_counts: dict[str, Callable[[], int]] = {}
        r.register(_DeviceCollector(self._device_counts))

    def watch_device_counter(self, name: str, read: Callable[[], int]) -> None:
        """Expose a device's own counter (overflows, underruns) read at scrape time."""
        self._device_counts[name] = read

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DeviceCollector:
    def __init__(self, reads: dict[str, Callable[[], int]]) -> None:
        self._reads = reads

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self):  # type: ignore[no-untyped-def]
        fam = GaugeMetricFamily("pi_agent_audio_device_events", "Capture overflows and playback underruns",
                                labels=["event"])
        for name, read in list(self._reads.items()):
            try:
                fam.add_metric([name], float(read()))
            except Exception:  # a device being reopened: skip this scrape
                continue
        yield fam
