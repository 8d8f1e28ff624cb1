"""Settings of the fake agent, and the command-line flags that fill them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from ..errors import ConfigError
from .audio import FORMATS, REPLY_TEXT


@dataclass(frozen=True)
class FakeAgentOptions:
    """How the fake agent behaves. Validated on construction (:class:`ConfigError`)."""

    host: str = "127.0.0.1"
    """Interface to listen on; loopback by default."""
    port: int = 8765
    """TCP port; 0 picks a free one (read it back from ``FakeAgent.port``)."""
    api_key: str | None = None
    """When set, the signed-URL endpoint wants this ``xi-api-key`` and the WebSocket
    path wants an unused ``conversation_signature``; when None the agent is public."""
    output_format: str = "pcm_16000"
    """``agent_output_audio_format`` announced in the metadata and used for the reply audio."""
    input_format: str = "pcm_16000"
    """``user_input_audio_format`` announced, and used to decode ``user_audio_chunk``."""
    tool_call: str | None = None
    """Tool name: after the first user turn, send ``client_tool_call`` and wait for the result."""
    tool_parameters: dict[str, object] = field(default_factory=lambda: {"city": "Lisbon"})
    """Parameters of that tool call."""
    tool_timeout: float = 10.0
    """Seconds to wait for ``client_tool_result`` before answering anyway."""
    end_call_after: int | None = None
    """After this many agent turns played to the end (a first message counts; interrupted
    turns do not), send the ``end_call`` tool response and close 1000."""
    max_duration: float | None = None
    """Seconds; then ``error`` (1000, ``max_duration_exceeded``) and close 1000."""
    receive_timeout: float | None = None
    """Seconds without any client message; then ``error`` (1002,
    ``transport_receive_timeout``) and close 1002, as the server does after 60 s."""
    transcript: str | None = None
    """Text of every ``user_transcript``; None describes what was heard (``[2.4 s of speech]``)."""
    reply_text: str = REPLY_TEXT
    """Text of every ``agent_response`` (the audio is the shipped clip or ``reply_wav``)."""
    reply_wav: str | None = None
    """A 16-bit PCM WAV file every agent turn speaks instead of the shipped clip
    (e.g. a test tone, for pitch checks)."""
    first_message: bool = False
    """The agent speaks first, right after the metadata."""
    first_message_text: str = "Hello! How can I help you today?"
    """Text of that first ``agent_response``."""
    ping_interval: float = 2.0
    """Seconds between pings (the first one after one interval)."""
    chunk_ms: int = 200
    """Length of one server audio chunk."""
    send_speed: float = 2.0
    """Audio is sent this many times faster than real time, like a TTS stream."""
    reply_delay: float = 0.0
    """Seconds between the end of the user's speech and the reply (model latency)."""
    reply_seconds: float | None = None
    """Cut the reply clip to this many seconds (fast mode for soak tests)."""
    wait_for_init: float = 0.0
    """0: send the metadata on open. >0: wait up to this long for
    ``conversation_initiation_client_data`` first."""
    gate_threshold_db: float = -40.0
    """Block RMS (dBFS) above which user audio counts as speech."""
    gate_min_speech_ms: float = 150.0
    """Loud audio needed before speech counts as started (and can barge in)."""
    gate_end_silence_ms: float = 500.0
    """Quiet audio that ends an utterance."""
    max_concurrent: int | None = None
    """More open conversations than this get ``queue_status`` and close 3008."""
    strict_input: bool = True
    """Non-JSON text and binary frames get ``error`` (1008, ``invalid_message``) and close 1008."""
    stream_text: bool = True
    """Before each ``agent_response``, stream its text as ``agent_chat_response_part``
    messages (``start``, a ``delta`` per word, ``stop``), as the server does when the agent
    enables that client event."""
    text_part_ids: str = "integer"
    """``integer``: text parts carry the turn's event id, as the contract types it;
    ``string``: ``"evt_<n>"``, as the official docs show (outside the contract)."""
    text_part_ms: float = 40.0
    """Milliseconds between two streamed words."""
    response_events: bool = True
    """Send ``agent_response_metadata`` before each turn and ``agent_response_complete``
    once its last audio chunk is sent (both in the 1.1.0 contract's shape)."""
    ping_ms_unmeasured: str = "omit"
    """What a ping says before a pong measured the round trip: ``omit`` leaves ``ping_ms``
    out (1.1.0 types it an integer), ``null`` sends ``"ping_ms": null`` (1.0.0 allows it;
    such pings are recorded as outside the contract, since 1.1.0 defines ``ping``)."""
    interruption_ids: str = "newer"
    """``newer``: a barge-in's ``interruption`` carries a fresh event id, newer than the reply
    it cuts off, as the service numbers it; ``same``: the cut reply's own id (older fakes)."""
    stale_chunks: int = 0
    """After an interruption, this many more audio chunks of the cut reply, with its old
    event id (audio that was in flight); fewer when less of the reply was left unsent."""
    text_interruption: bool = True
    """Text input (``user_message``, ``multimodal_message``) is answered with an
    ``interruption`` carrying the reply's own event id, then the reply with that id."""
    final_chunk: bool = True
    """The last audio chunk of each reply carries ``is_final: true`` (1.1.0)."""
    client_error: bool = False
    """Error closes send 1.1.0's ``client_error`` (code = the close code, error_name = the
    error_type) after the ``error`` event, before the close."""
    queue_seconds: float | None = None
    """Every new conversation is queued first: ``queue_status`` ``waiting``, after this many
    seconds ``admitted`` and then the metadata. Client messages meanwhile are discarded."""
    queue_timeout: float | None = None
    """Queued conversations get ``queue_status`` ``timed_out`` and close 3008 after this many
    seconds (unless ``queue_seconds`` admits them first)."""
    tool_expects_response: bool = True
    """``client_tool_call.expects_response``; when False the agent goes on at once."""
    mcp_approval: str | None = None
    """MCP tool name: after the first user turn, send ``mcp_tool_call`` in state
    ``awaiting_approval`` and wait for ``mcp_tool_approval_result`` before the reply."""
    mcp_approval_timeout: float = 300.0
    """Seconds an MCP approval is awaited (``approval_timeout_secs``, rounded up on the wire)."""
    record_audio: bool = True
    """Keep user PCM and audio payloads in the records (turn off for long soak runs)."""

    def __post_init__(self) -> None:
        for name in ("output_format", "input_format"):
            value = getattr(self, name)
            if value not in FORMATS:
                raise ConfigError(f"fake agent: {name}={value!r}; expected one of {', '.join(FORMATS)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"fake agent: port={self.port} is not a TCP port")
        positive = ("ping_interval", "send_speed", "tool_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"fake agent: {name} must be > 0 (got {getattr(self, name)})")
        if self.chunk_ms <= 0:
            raise ConfigError(f"fake agent: chunk_ms must be > 0 (got {self.chunk_ms})")
        for name in ("max_duration", "receive_timeout", "reply_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"fake agent: {name} must be > 0 when set (got {value})")
        if self.end_call_after is not None and self.end_call_after < 1:
            raise ConfigError(f"fake agent: end_call_after must be >= 1 (got {self.end_call_after})")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"fake agent: max_concurrent must be >= 1 (got {self.max_concurrent})")
        if self.text_part_ids not in ("integer", "string"):
            raise ConfigError(f"fake agent: text_part_ids must be integer or string (got {self.text_part_ids!r})")
        if self.reply_delay < 0 or self.wait_for_init < 0 or self.text_part_ms < 0:
            raise ConfigError("fake agent: reply_delay, wait_for_init and text_part_ms must be >= 0")
        if self.ping_ms_unmeasured not in ("omit", "null"):
            raise ConfigError(f"fake agent: ping_ms_unmeasured must be omit or null (got {self.ping_ms_unmeasured!r})")
        if self.interruption_ids not in ("newer", "same"):
            raise ConfigError(f"fake agent: interruption_ids must be newer or same (got {self.interruption_ids!r})")
        if self.stale_chunks < 0:
            raise ConfigError(f"fake agent: stale_chunks must be >= 0 (got {self.stale_chunks})")
        for name in ("queue_seconds", "queue_timeout"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"fake agent: {name} must be >= 0 when set (got {value})")
        if self.mcp_approval_timeout <= 0:
            raise ConfigError(f"fake agent: mcp_approval_timeout must be > 0 (got {self.mcp_approval_timeout})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake agent's flags to ``parser`` (read them back with :func:`options_from_args`)."""
    d = FakeAgentOptions()
    formats = list(FORMATS)
    parser.add_argument("--host", default=d.host, help="interface to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="TCP port, 0 = any free (default %(default)s)")
    parser.add_argument("--api-key", default=None, help="require this xi-api-key and signed URLs (private agent)")
    parser.add_argument("--output-format", choices=formats, default=d.output_format, help="agent audio format")
    parser.add_argument("--input-format", choices=formats, default=d.input_format, help="user audio format")
    parser.add_argument("--tool-call", metavar="NAME", default=None,
                        help="call this client tool after the first user turn")
    parser.add_argument("--end-call-after", metavar="N", type=int, default=None,
                        help="end the call after N agent turns")
    parser.add_argument("--max-duration", metavar="S", type=float, default=None,
                        help="end conversations after S seconds")
    parser.add_argument("--transcript", metavar="TEXT", default=None, help="text of every user_transcript")
    parser.add_argument("--ping-interval", metavar="S", type=float, default=d.ping_interval,
                        help="seconds between pings")
    parser.add_argument("--first-message", action="store_true", help="the agent speaks first")
    parser.add_argument("--reply-seconds", metavar="S", type=float, default=None, help="cut the reply clip (fast mode)")
    parser.add_argument("--send-speed", metavar="X", type=float, default=d.send_speed,
                        help="audio send speed vs real time")
    parser.add_argument("--no-stream-text", dest="stream_text", action="store_false",
                        help="send no agent_chat_response_part before each agent_response")
    parser.add_argument("--text-part-ids", choices=("integer", "string"), default=d.text_part_ids,
                        help="ids of the text parts: integers as the contract, or evt_<n> strings as the docs")
    parser.add_argument("--no-response-events", dest="response_events", action="store_false",
                        help="send no agent_response_metadata / agent_response_complete")
    parser.add_argument("--ping-ms-unmeasured", choices=("omit", "null"), default=d.ping_ms_unmeasured,
                        help="ping_ms before the first pong: left out (1.1.0) or null (1.0.0) (default %(default)s)")
    parser.add_argument("--interruption-ids", choices=("newer", "same"), default=d.interruption_ids,
                        help="a barge-in's interruption id: fresh, newer than the cut reply (the service), "
                             "or the cut reply's own (default %(default)s)")
    parser.add_argument("--stale-chunks", metavar="N", type=int, default=d.stale_chunks,
                        help="audio chunks of a cut reply still sent after its interruption (default %(default)s)")
    parser.add_argument("--no-text-interruption", dest="text_interruption", action="store_false",
                        help="answer text input without an interruption first")
    parser.add_argument("--no-final-chunk", dest="final_chunk", action="store_false",
                        help="mark no audio chunk is_final")
    parser.add_argument("--client-error", action="store_true",
                        help="error closes also send 1.1.0's client_error before the close")
    parser.add_argument("--queue-seconds", metavar="S", type=float, default=None,
                        help="queue every conversation: waiting, then admitted after S seconds")
    parser.add_argument("--queue-timeout", metavar="S", type=float, default=None,
                        help="queued conversations time out (queue_status timed_out, close 3008) after S seconds")
    parser.add_argument("--no-tool-expects-response", dest="tool_expects_response", action="store_false",
                        help="client tool calls expect no result: the agent goes on at once")
    parser.add_argument("--mcp-approval", metavar="NAME", default=None,
                        help="after the first user turn, ask approval for this MCP tool")
    parser.add_argument("--mcp-approval-timeout", metavar="S", type=float, default=d.mcp_approval_timeout,
                        help="seconds an MCP approval is awaited (default %(default)s)")


def options_from_args(ns: argparse.Namespace) -> FakeAgentOptions:
    """Build :class:`FakeAgentOptions` from parsed flags; absent attributes keep their defaults."""
    names = {f.name for f in fields(FakeAgentOptions)}
    values = {name: getattr(ns, name) for name in names if hasattr(ns, name)}
    return FakeAgentOptions(**values)
