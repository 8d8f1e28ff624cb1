"""Prometheus metrics, on a registry of the daemon's own (not the global one).

Counts kept by the parts themselves (the engine's :class:`~pi_agent.engine.conversation.Stats`
and outbox, the devices' overflow and underrun counters) are read at scrape time:
nothing is pushed per audio frame. Only durations are observed as they happen, and the
two counts of :meth:`Metrics.count_turn` and :meth:`Metrics.count_exchange` (once per turn).

For a fleet (issue 24): ``pi_agent_info{device,location,version}``, the state as one gauge per
state (``pi_agent_state{state}``), ``pi_agent_device_up{device}``, the turns and the exchanges,
when the microphone last gave anything but digital silence, and the process's own figures
(``process_start_time_seconds``, memory, CPU, open files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__
from .decide.states import State
from .engine.conversation import Engine

STATES = tuple(State)  # every state has its series, 1 for the current one


class Metrics:
    """Every figure ``/metrics`` shows."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.conversation_seconds = Histogram(
            "pi_agent_conversation_duration_seconds", "How long conversations stayed open",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=r)
        self.response_latency = Histogram(
            "pi_agent_response_latency_seconds", "End of user speech to first agent audio",
            buckets=(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=r)
        self.barge_in_seconds = Histogram(
            "pi_agent_barge_in_flush_seconds", "Interruption received to playback flushed",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1), registry=r)
        self._device_counts: dict[str, Callable[[], int]] = {}
        self._engine: Engine | None = None
        self._playback_dropped: Callable[[], int] = lambda: 0
        self._wake_words: Callable[[], int] | None = None
        self._echo: Callable[[], float | None] | None = None
        self._info: tuple[str, str, str] | None = None
        self._state: Callable[[], State] | None = None
        self._devices_up: dict[str, Callable[[], bool]] = {}
        self._last_sound: Callable[[], float | None] | None = None
        self.turns = 0  # user turns started (count_turn)
        self.exchanges = 0  # replies that played out (count_exchange)
        self.ducks = 0  # times a voice over the reply lowered it (aec, audio.duck_db)
        r.register(_Collector(self))
        ProcessCollector(registry=r)

    def set_identity(self, device: str, location: str, version: str = __version__) -> None:
        """``pi_agent_info{device,location,version} 1``: which kiosk this is (``device_name``, ``location``)."""
        self._info = (device, location, version)

    def watch_state(self, state: Callable[[], State]) -> None:
        """``pi_agent_state{state}``: 1 for the current state, 0 for the others."""
        self._state = state

    def watch_device(self, device: str, up: Callable[[], bool]) -> None:
        """``pi_agent_device_up{device}``: 1 while the device is open and not failed."""
        self._devices_up[device] = up

    def watch_microphone_sound(self, last_sound: Callable[[], float | None]) -> None:
        """``pi_agent_microphone_last_sound_timestamp_seconds``: the Unix time of the last frame
        that was not digital silence (None: none yet, shown as 0)."""
        self._last_sound = last_sound

    def count_turn(self) -> None:
        self.turns += 1

    def count_exchange(self) -> None:
        self.exchanges += 1

    def watch_engine(self, engine: Engine, playback_dropped: Callable[[], int]) -> None:
        """Expose the engine's counters, and the agent audio the speaker had no room for."""
        self._engine = engine
        self._playback_dropped = playback_dropped

    def watch_wake_word(self, detections: Callable[[], int]) -> None:
        """Expose the wake-word detector's count of detections (wake_word mode)."""
        self._wake_words = detections

    def watch_echo(self, attenuation_db: Callable[[], float | None]) -> None:
        """Expose the echo canceller's running echo attenuation (``audio.echo = aec``)."""
        self._echo = attenuation_db

    def watch_device_counter(self, name: str, read: Callable[[], int]) -> None:
        """Expose a device's own counter (overflows, underruns) read at scrape time."""
        self._device_counts[name] = read

    def totals(self) -> dict[str, int]:
        """The main counters as plain numbers (the event API snapshot)."""
        engine = self._engine
        if engine is None:
            return {}
        stats = engine.stats
        return {"reconnects": stats.reconnects, "conversations": stats.conversations,
                "messages_in": sum(stats.messages_in.values()), "messages_out": sum(stats.messages_out.values()),
                "audio_dropped": sum(self._audio_dropped().values()), "protocol_errors": stats.protocol_errors}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _audio_dropped(self) -> dict[str, int]:
        assert self._engine is not None
        dropped = dict(self._engine.stats.audio_dropped)
        for reason, n in self._engine.outbox.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
        playback = self._safe(self._playback_dropped)
        if playback:
            dropped["playback_full"] = playback
        return dropped

    def collect(self) -> Iterator[Metric]:
        yield from self._fleet()
        engine = self._engine
        if engine is not None:
            stats = engine.stats
            yield _counter("pi_agent_reconnects", "Connection attempts after a failure or an end", stats.reconnects)
            yield _counter("pi_agent_conversations", "Conversations opened", stats.conversations)
            yield _labelled("pi_agent_messages_received", "Server messages by type", "type", stats.messages_in)
            yield _labelled("pi_agent_messages_sent", "Client messages by type", "type", stats.messages_out)
            yield _counter("pi_agent_protocol_errors", "Server frames skipped as malformed", stats.protocol_errors)
            yield _labelled("pi_agent_audio_dropped_frames", "Audio frames not sent or not played, by reason",
                            "reason", self._audio_dropped())
            yield _labelled("pi_agent_messages_dropped", "Messages to the agent dropped because too many waited",
                            "type", dict(engine.outbox.dropped_messages))
            connected = GaugeMetricFamily("pi_agent_connected", "1 while a conversation is open")
            connected.add_metric([], 1.0 if engine.is_open else 0.0)
            yield connected
            ping = GaugeMetricFamily("pi_agent_server_ping_ms", "Round trip the server last reported (ping_ms)")
            ping.add_metric([], float(stats.ping_ms or 0))
            yield ping
        if self._wake_words is not None:
            yield _counter("pi_agent_wake_word_detections", "Times the wake word was heard",
                           self._safe(self._wake_words) or 0)
        if self._echo is not None:
            value = self._echo()
            if value is not None:
                echo = GaugeMetricFamily("pi_agent_echo_attenuation_db",
                                         "How far the echo canceller brought the speaker's echo down lately (dB)")
                echo.add_metric([], round(value, 1))
                yield echo
            yield _counter("pi_agent_reply_ducks", "Times a voice heard over the reply lowered it (audio.duck_db)",
                           self.ducks)
        devices = GaugeMetricFamily("pi_agent_audio_device_events", "Capture overflows and playback underruns",
                                    labels=["event"])
        for name, read in list(self._device_counts.items()):
            value = self._safe(read)
            if value is not None:
                devices.add_metric([name], float(value))
        yield devices

    def _fleet(self) -> Iterator[Metric]:
        """What a fleet's dashboards and alerts need: which device, its state, its devices, its use."""
        if self._info is not None:
            info = GaugeMetricFamily("pi_agent_info", "This device: its device_name, location and pi-agent version",
                                     labels=["device", "location", "version"])
            info.add_metric(list(self._info), 1.0)
            yield info
        if self._state is not None:
            current = self._state()
            states = GaugeMetricFamily("pi_agent_state", "1 for the daemon's current state, 0 for the others",
                                       labels=["state"])
            for state in STATES:
                states.add_metric([state.value], 1.0 if state is current else 0.0)
            yield states
        if self._devices_up:
            up = GaugeMetricFamily("pi_agent_device_up", "1 while the audio device is open and has not failed",
                                   labels=["device"])
            for name, read in list(self._devices_up.items()):
                try:
                    value = bool(read())
                except Exception:  # being reopened: down for this scrape
                    value = False
                up.add_metric([name], 1.0 if value else 0.0)
            yield up
        yield _counter("pi_agent_turns", "User turns started (the daemon began listening to the user)", self.turns)
        yield _counter("pi_agent_exchanges", "Exchanges completed: agent replies that played out to the end",
                       self.exchanges)
        if self._last_sound is not None:
            last = self._last_sound()
            sound = GaugeMetricFamily("pi_agent_microphone_last_sound_timestamp_seconds",
                                      "Unix time of the microphone's last frame that was not digital silence "
                                      "(all zero samples); 0 while there has been none")
            sound.add_metric([], round(last, 3) if last is not None else 0.0)
            yield sound

    @staticmethod
    def _safe(read: Callable[[], int]) -> int | None:
        try:
            return int(read())
        except Exception:  # a device being reopened: skip this scrape
            return None


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))


def _labelled(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family
