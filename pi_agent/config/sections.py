"""The sections of the settings (``[session]``, ``[capture]``, ``[audio]``, ``[api]``, ``[leds]``,
``[button]``, ``[log]``): each field with its type, bounds, default and description (the
README's settings table is generated from these, :mod:`pi_agent.reference`)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..audio.wakeword import BUILTIN as WAKE_WORDS
from ..decide.apa102 import HAT_PRESETS, HatPreset
from ..engine.settings import EngineSettings

Earcon = Literal["listening", "done", "error", "offline"]


def _all_earcons() -> list[Earcon]:
    return ["listening", "done", "error", "offline"]


def listen_address(text: str) -> tuple[str, int]:
    """``"address:port"`` (an IPv4 address, or an IPv6 one in brackets) as (address, port).
    Raises ``ValueError`` saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be address:port, e.g. 0.0.0.0:9766 (every interface) or 192.168.1.20:9766")
    if host.startswith("[") and host.endswith("]"):
        host, version = host[1:-1], 6
    else:
        version = 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host[:40]!r} is not an IP address (an IPv6 address goes in brackets: [::]:9766)") from None
    if address.version != version:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::]:9766")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port[:10]!r} is not a number from 1 to 65535")
    return str(address), int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SessionSettings(_Section):
    """How conversations are opened, kept and re-opened."""

    policy: Literal["persistent", "on_demand"] = Field(
        "on_demand",
        description="persistent: a conversation is always open (a new one starts when the server "
        "ends one); on_demand: one opens on button press or speech and closes when idle",
    )
    idle_timeout: float = Field(30.0, gt=0, description="on_demand: close after this many seconds "
                                "with no user speech and no agent audio")
    quiet_keepalive: float = Field(0.0, ge=0, le=50, description="persistent: once no turn has been on "
                                   "for 3 s and no reply plays, send no microphone audio (instead of 50 "
                                   "messages, about 44 kB, a second) and keep the conversation open by "
                                   "100 ms of silence every this many seconds (the service closes one after "
                                   "60 s without input; 10 is a good value); when a turn starts (speech, a "
                                   "press, the wake word) the second before it goes first, then every frame "
                                   "again. Speech that starts no turn is not sent. 0, the default: every "
                                   "frame is sent")
    backoff_initial: float = Field(1.0, gt=0, description="first reconnect delay ceiling (s); "
                                   "doubles per failed attempt, with full jitter")
    backoff_max: float = Field(60.0, gt=0, description="reconnect delay cap (s); failures that "
                               "retrying cannot fix (bad key, unknown agent) retry only this often")
    backoff_reset_after: float = Field(30.0, ge=0, description="a connection must stay up this "
                                       "long (s) before the delay resets to backoff_initial")
    dead_peer_timeout: float = Field(20.0, gt=0, description="a connection on which nothing at all "
                                     "is received for this long is dropped and reopened (after a third of "
                                     "it in silence a WebSocket ping asks the server for an answer)")
    connect_timeout: float = Field(10.0, gt=0, description="limit (s) for the signed-URL request "
                                   "and for the WebSocket opening handshake")
    prebuffer: float = Field(5.0, ge=0, description="seconds of speech kept while a conversation "
                             "is being opened, sent first once it is open")
    user_id: str | None = Field(None, description="user_id sent with conversation_initiation_client_data")
    dynamic_variables: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="dynamic variables for the agent ([session.dynamic_variables] table)")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="conversation_config_override sent at start "
        "(e.g. [session.overrides.agent] first_message = \"Hi\"); the agent must allow them")
    mcp_approval: Literal["deny", "ask"] = Field(
        "deny", description="an MCP tool of the agent that needs approval: deny (answered at once), or ask: "
        "published on the event API (mcp_tool_approval_request) for a local program to approve, denied if "
        "none answers within api.tool_timeout")
    mcp_allow: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=256, description="MCP tools approved without asking (by tool name)")

    @field_validator("backoff_max")
    @classmethod
    def _cap_not_below_initial(cls, v: float, info: Any) -> float:
        initial = info.data.get("backoff_initial")
        if initial is not None and v < initial:
            raise ValueError(f"must be >= backoff_initial ({initial})")
        return v

    def engine_settings(self) -> EngineSettings:
        """What the conversation engine reads of these settings, as a plain frozen value."""
        return EngineSettings(
            policy=self.policy, idle_timeout=self.idle_timeout, quiet_keepalive=self.quiet_keepalive,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max, backoff_reset_after=self.backoff_reset_after,
            dead_peer_timeout=self.dead_peer_timeout, connect_timeout=self.connect_timeout,
            prebuffer=self.prebuffer, user_id=self.user_id, dynamic_variables=dict(self.dynamic_variables),
            overrides=dict(self.overrides))


class CaptureSettings(_Section):
    """When the microphone's audio is sent to the agent."""

    mode: Literal["push_to_talk", "vad", "wake_word", "always"] = Field(
        "vad", description="push_to_talk: while the button is held (or toggled); vad: when voice "
        "activity is detected; wake_word: nothing until the wake word is heard, then as vad (and the "
        "button still works); always: continuously (echo-cancelling hardware, kiosks)")
    toggle: bool = Field(False, description="push_to_talk: a press starts listening and the next press stops")
    vad_aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode, 0 (lenient) to 3 (strict)")
    preroll: float = Field(0.3, ge=0, le=2.0, description="seconds of audio before VAD triggered "
                           "that are sent too, so the first syllable is not cut")
    hangover: float = Field(0.8, gt=0, le=5.0, description="seconds of non-speech before VAD "
                            "decides the user stopped speaking")
    privacy: bool = Field(False, description="send zero-filled chunks instead of audio whenever "
                          "the user is not speaking (vad mode; wake_word always does)")
    wake_word: str = Field("okay_nabu", min_length=1, description="wake_word mode: a shipped model "
                           f"({', '.join(WAKE_WORDS)}) or the path of a custom microWakeWord model's JSON "
                           "manifest (its .tflite beside it)")
    wake_word_threshold: float | None = Field(None, gt=0, lt=1, description="wake_word mode: the "
                                              "probability a detection needs; lower hears the wake word more "
                                              "readily and is fooled more often (default: the model's own, "
                                              "0.85 for okay_nabu; pi-agent test-mic --wake-word shows it)")
    follow_up: float = Field(5.0, ge=0, le=60, description="wake_word mode: seconds after the agent's reply "
                             "in which the user may answer without the wake word (0: never)")

    @field_validator("wake_word")
    @classmethod
    def _model_or_manifest(cls, v: str) -> str:
        if v not in WAKE_WORDS and not v.endswith(".json"):
            raise ValueError(f"not a shipped model ({', '.join(WAKE_WORDS)}) nor the path of a model's "
                             ".json manifest")
        return v


class AudioSettings(_Section):
    """Sound devices and the echo policy."""

    input_device: str = Field("default", min_length=1, description="microphone: ALSA/PortAudio "
                              "device name or a unique part of it, or 'default' (see pi-agent devices)")
    output_device: str = Field("default", min_length=1, description="speaker: device name or a unique "
                               "part of it, or 'default'")
    input_channel: int | None = Field(None, ge=0, description="take this channel of a multichannel "
                                      "microphone (default: mix all channels)")
    output_rate: int | None = Field(None, ge=8000, le=192000, description="force the speaker's "
                                    "sample rate (default: the device's own)")
    period_ms: int = Field(20, ge=5, le=100, description="speaker buffer period in milliseconds: "
                           "how often the speaker wakes while sound plays (an interruption drops what the "
                           "device holds, so barge-in does not wait for it); above 20 a reply's first sound "
                           "waits until what is queued covers the device's read-ahead (about 60 ms more at 40 "
                           "on the test card)")
    standby_after: float = Field(1.0, ge=0, le=3600, description="seconds after the last sound at which the "
                                 "speaker's stream stops, so that nothing wakes for it while nothing plays; the "
                                 "next sound starts it again at once (a sink that pops when its stream starts "
                                 "or stops: a large value keeps it running); not with echo = aec, where the "
                                 "stream always runs (every restart moves the echo canceller's reference)")
    lead_in: float = Field(0.0, ge=0, le=2.0, description="seconds of silence played before the first sound "
                           "after the speaker's stream stopped, for sinks that clip the first sound after a "
                           "pause (HDMI, some USB: try 0.3); that sound starts as much later")
    idle_read_ms: int = Field(200, ge=20, le=400, description="while nobody speaks the microphone is read "
                              "every this many milliseconds, several 20 ms frames at a time (fewer wake-ups); "
                              "from the first syllable on (or a press, a command, the agent speaking) every "
                              "20 ms; 20 reads every frame always")
    echo: Literal["half_duplex", "aec", "full_duplex"] = Field(
        "half_duplex", description="half_duplex: the mic is muted while the agent speaks "
        "(speaker next to mic; barge-in by button); aec: the mic stays live and the speaker's echo is "
        "cancelled in software, so a voice can interrupt (check it with pi-agent test-mic --echo); "
        "full_duplex: headsets and echo-cancelling mics")
    noise_suppression: bool = Field(False, description="aec: also suppress steady background noise (fans, "
                                    "hum) in what is sent")
    duck_db: float = Field(20.0, ge=0, le=60, description="aec: while a voice is heard over the reply, the "
                           "reply plays this many dB quieter (back within a second of the voice ending), so "
                           "that the echo canceller keeps more of the user's words and the wake word; 0: never")
    echo_tail: float = Field(0.3, ge=0, le=3.0, description="half_duplex: seconds the mic stays "
                             "muted after the speaker has actually played the last sample")
    volume: int = Field(100, ge=0, le=100, description="speaker volume, a software gain on all it plays "
                        "(replies and earcons): 100 plays them as received, each step below is 0.4 dB quieter "
                        "(50: -20 dB), 0 is silent; changed at run time by pi-agent volume, the event API's "
                        "volume command and the volume buttons, and kept across restarts in the state directory "
                        "(a changed audio.volume takes over)")
    earcons: list[Earcon] = Field(default_factory=_all_earcons,
                                  description="feedback sounds to play")
    earcon_sounds: dict[str, Path] = Field(
        default_factory=dict, description="sounds of one's own for earcons, by name: a PCM WAV file of any rate "
        "and channels (at most 10 s), resampled to the speaker's rate at start, e.g. "
        "{listening = \"/etc/pi-agent/ding.wav\"}; PI_AGENT_AUDIO__EARCON_SOUNDS='{\"listening\": \"/path.wav\"}'; "
        "an earcon without one keeps its generated sound")
    input_wav: Path | None = Field(None, description="read the microphone from this WAV file "
                                   "instead of a device (testing)")
    output_wav: Path | None = Field(None, description="write the speaker to this WAV file "
                                    "instead of a device (testing)")

    @field_validator("earcon_sounds")
    @classmethod
    def _readable_sounds(cls, v: dict[str, Path]) -> dict[str, Path]:
        if not v:
            return v
        from ..audio.earcons import check_sound  # numpy and soxr: only when a sound is set
        for name, path in v.items():
            if name not in _all_earcons():
                raise ValueError(f"{name[:40]!r} is not an earcon (they are {', '.join(_all_earcons())})")
            why = check_sound(path)
            if why is not None:
                raise ValueError(f"{name}: {why}")
        return v


class ApiSettings(_Section):
    """The local event API: a Unix socket for commands and transcripts, a TCP port for the rest."""

    port: int = Field(8766, ge=0, le=65535, description="TCP port on 127.0.0.1 for /healthz, /metrics and a "
                      "view of the events (no transcripts, no commands; pages of other origins refused); "
                      "0 turns it off")
    socket: str = Field("auto", min_length=1, description="Unix socket for commands, transcripts and client "
                        "tools (mode 0660: the daemon's group may use it); auto: $RUNTIME_DIRECTORY/api.sock "
                        "under systemd (/run/pi-agent/api.sock), else $XDG_RUNTIME_DIR/pi-agent/api.sock; "
                        "a path; or off")
    max_clients: int = Field(32, ge=1, le=1000, description="event API clients at once (both listeners); more "
                             "are refused with 503")
    tool_timeout: float = Field(10.0, gt=0, le=600, description="seconds a client that handles a client tool "
                                "(handle_tools) has to answer a call of it; unhandled tools are refused at once")
    page: Literal["captions", "status", "off"] = Field(
        "captions", description="the kiosk page at http://127.0.0.1:<port>/: captions shows the state and what "
        "was said as it streams (to the page, and to any local program that connects as the page does: use "
        "status where that is private); status: the state only; off: no page")
    page_control: bool = Field(False, description="the page's Talk, Stop and Mute buttons work (default: the "
                               "page only shows)")
    page_hold: float = Field(60.0, ge=0, le=3600, description="seconds the page keeps showing the last exchange "
                             "(also to a page loaded later) once the conversation is over, then clears it so the "
                             "next visitor does not read it")
    metrics_listen: str = Field("", max_length=64, description="address:port of a read-only listener for "
                                "Prometheus (GET /metrics and /healthz only: no events, no page, no commands), e.g. "
                                "0.0.0.0:9766 or [::]:9766 for every interface, or one interface's address; empty: "
                                "off (the metrics stay on 127.0.0.1 [api] port)")

    @field_validator("metrics_listen")
    @classmethod
    def _listen_address(cls, v: str) -> str:
        v = v.strip()
        if v:
            listen_address(v)  # raises ValueError with the reason
        return v


class LedSettings(_Section):
    """Status LEDs: on GPIO pins (BCM numbers; any LED may be left unset), or a chain of APA102 LEDs
    on SPI (a voice HAT's: ``preset``)."""

    kind: Literal["auto", "gpio", "apa102"] = Field(
        "auto", description="gpio: the connection, activity and RGB LEDs on GPIO pins; apa102: a chain of APA102 "
        "(DotStar) LEDs on SPI, each showing what the RGB LED would; auto: apa102 with a preset, else gpio")
    preset: Literal["none", "respeaker_2mic", "respeaker_4mic"] = Field(
        "none", description="a voice HAT's APA102 LEDs: respeaker_2mic (3 LEDs on SPI0.1; also the HAT's button on "
        "GPIO17 unless [button] pin is set), respeaker_4mic (12 LEDs on SPI0.1, LED power on GPIO5; no button); "
        "settings given here override the preset's")
    connection_pin: int | None = Field(None, ge=0, le=53, description="gpio: connection LED: off offline, "
                                       "blinking connecting, on connected")
    activity_pin: int | None = Field(None, ge=0, le=53, description="gpio: activity LED: on listening, "
                                     "pulsing thinking, blinking speaking")
    rgb_pins: tuple[int, int, int] | None = Field(None, description="gpio: red, green, blue pins of an RGB LED "
                                                  "showing the top state's colour")
    active_high: bool = Field(True, description="gpio: false for LEDs wired to 3V3 (lit when the pin is low)")
    count: int | None = Field(None, ge=1, le=1024, validate_default=True, description="apa102: LEDs in the "
                              "chain (default: the preset's; required without one)")
    brightness: int = Field(8, ge=1, le=31, description="apa102: the LEDs' global brightness, 1-31 (the "
                            "APA102's 5-bit current level; 31 is glaring at arm's length)")
    spi_device: int | None = Field(None, ge=0, le=1, description="apa102: hardware SPI0 chip select, 0 (CE0, "
                                   "/dev/spidev0.0) or 1 (CE1, /dev/spidev0.1): data on GPIO10, clock on GPIO11 "
                                   "(default: the preset's, else 0; enable SPI with raspi-config; unused with "
                                   "software SPI)")
    spi_clock_pin: int | None = Field(None, ge=0, le=53, description="apa102: software (bit-banged) SPI "
                                      "instead: the clock pin; with spi_mosi_pin and spi_select_pin")
    spi_mosi_pin: int | None = Field(None, ge=0, le=53, description="apa102: software SPI: the data pin")
    spi_select_pin: int | None = Field(None, ge=0, le=53, validate_default=True, description="apa102: "
                                       "software SPI: a free pin that gpiozero drives as chip select (the LEDs "
                                       "have none: leave it unconnected)")
    power_pin: int | None = Field(None, ge=0, le=53, description="apa102: a pin held "
                                  "high while the LEDs are in use (default: the preset's, GPIO5 on the 4-Mic Array)")

    def driver_kind(self) -> Literal["gpio", "apa102"] | None:
        """The LEDs to drive: apa102, gpio (pins set), or None (no LED configured)."""
        if self.kind == "apa102" or (self.kind == "auto" and self.preset != "none"):
            return "apa102"
        if self.connection_pin is not None or self.activity_pin is not None or self.rgb_pins is not None:
            return "gpio"
        return None

    def hat(self) -> HatPreset | None:
        """The preset's HAT, or None."""
        return HAT_PRESETS.get(self.preset)

    def apa102_count(self) -> int:
        """LEDs in the APA102 chain: ``count``, else the preset's."""
        hat = self.hat()
        return self.count if self.count is not None else hat.count if hat is not None else 1

    def apa102_spi_device(self) -> int:
        """The hardware SPI0 chip select: ``spi_device``, else the preset's, else 0."""
        hat = self.hat()
        return self.spi_device if self.spi_device is not None else hat.spi_device if hat is not None else 0

    def apa102_power_pin(self) -> int | None:
        """The LED power pin: ``power_pin``, else the preset's."""
        hat = self.hat()
        return self.power_pin if self.power_pin is not None else hat.power_pin if hat is not None else None

    def button_pin(self, pin: int | None) -> int | None:
        """The button pin: ``[button] pin`` if set, else the preset HAT's button."""
        hat = self.hat()
        return pin if pin is not None else hat.button_pin if hat is not None else None

    @staticmethod
    def _apa102(info: Any) -> bool:
        kind, preset = info.data.get("kind"), info.data.get("preset", "none")
        return bool(kind == "apa102" or (kind == "auto" and preset != "none"))

    @field_validator("preset")
    @classmethod
    def _preset_is_apa102(cls, v: str, info: Any) -> str:
        if v != "none" and info.data.get("kind") == "gpio":
            raise ValueError('a preset drives the HAT\'s APA102 LEDs: remove kind = "gpio" (or the preset)')
        return v

    @field_validator("connection_pin", "activity_pin", "rgb_pins")
    @classmethod
    def _gpio_only(cls, v: Any, info: Any) -> Any:
        if v is not None and cls._apa102(info):
            raise ValueError("the APA102 LEDs show every state: unset the GPIO LED pins, or set kind = \"gpio\" "
                             "without a preset")
        return v

    @field_validator("count")
    @classmethod
    def _count_known(cls, v: int | None, info: Any) -> int | None:
        if v is None and info.data.get("kind") == "apa102" and info.data.get("preset", "none") == "none":
            raise ValueError("kind apa102 needs the number of LEDs in the chain (or a preset)")
        return v

    @field_validator("spi_select_pin")
    @classmethod
    def _software_spi_complete(cls, v: int | None, info: Any) -> int | None:
        pins = (info.data.get("spi_clock_pin"), info.data.get("spi_mosi_pin"), v)
        if any(p is not None for p in pins):
            if any(p is None for p in pins):
                raise ValueError("software SPI needs all three of spi_clock_pin, spi_mosi_pin and spi_select_pin "
                                 "(or none of them, for hardware SPI0)")
            if len(set(pins)) < 3:
                raise ValueError("spi_clock_pin, spi_mosi_pin and spi_select_pin must be three different pins")
        return v


class ButtonSettings(_Section):
    """The GPIO button (BCM pin number)."""

    pin: int | None = Field(None, ge=0, le=53, description="button pin; unset = no button (or the [leds] "
                            "preset HAT's: GPIO17 on the ReSpeaker 2-Mic HAT)")
    pull_up: bool = Field(True, description="button wired to ground with the internal pull-up")
    bounce_time: float = Field(0.05, ge=0, le=1.0, description="debounce time (s)")
    hold_time: float = Field(0.4, gt=0, le=10.0, description="held this long = push-to-talk hold")
    long_hold_time: float = Field(3.0, gt=0, le=30.0, description="held this long = mute toggle")
    volume_up_pin: int | None = Field(None, ge=0, le=53, description="a button that turns the volume up a "
                                      "step (10) per press, wired as the button (pull_up, bounce_time); unset = none")
    volume_down_pin: int | None = Field(None, ge=0, le=53, description="a button that turns the volume down "
                                        "a step per press; unset = none")

    @field_validator("volume_down_pin")
    @classmethod
    def _distinct_pins(cls, v: int | None, info: Any) -> int | None:
        pins = {"pin": info.data.get("pin"), "volume_up_pin": info.data.get("volume_up_pin")}
        for name, other in pins.items():
            if v is not None and v == other:
                raise ValueError(f"GPIO {v} is also button.{name}: each button needs a pin of its own")
        return v

    @field_validator("volume_up_pin")
    @classmethod
    def _not_the_button(cls, v: int | None, info: Any) -> int | None:
        if v is not None and v == info.data.get("pin"):
            raise ValueError(f"GPIO {v} is also button.pin: each button needs a pin of its own")
        return v


class LogSettings(_Section):
    """What goes to the journal."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    transcripts: bool = Field(True, description="log what the user said and the agent answered (info level)")
