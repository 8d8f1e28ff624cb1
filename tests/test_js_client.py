"""The official JavaScript client (``@elevenlabs/client``, what web apps and the widget use)
against the fake agent, in Debian's headless Chromium: a text exchange, and a voice
conversation with Chromium's fake microphone playing a WAV file.

The client's browser bundle comes from the npm registry at a pinned version, checked
against its published integrity hash, and is cached in the virtual environment.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions

from .support_browser import browser, chromium_or_skip
from .support_daemon import QUESTION_WAV
from .support_spec import validate_client_message, validate_server_message

pytestmark = pytest.mark.slow

CLIENT_VERSION = "1.25.0"
TARBALL = f"https://registry.npmjs.org/@elevenlabs/client/-/client-{CLIENT_VERSION}.tgz"
INTEGRITY = "sha512-vBUCW7JNm0LXlReO1GQEuZSSg+AFwJ0EBvtVKfayPO2DpKh68Wq6WM6d27bMDrWkBf43C/Ifs9ZMBm6qaSj0Jg=="
BUNDLE = Path(sys.prefix) / "share" / "pi-agent-tests" / f"elevenlabs-client-{CLIENT_VERSION}.iife.js"

PAGE = """<!doctype html><meta charset="utf-8"><title>official client</title>
<script src="/client.js"></script>
<script>
  window.seen = {messages: [], modes: [], status: [], errors: [], connected: null, disconnected: null};
  window.start = async (options) => {
    window.conversation = await ElevenLabsClient.Conversation.startSession({
      ...options,
      onConnect: (c) => { window.seen.connected = c.conversationId; },
      onDisconnect: (d) => { window.seen.disconnected = d; },
      onMessage: (m) => { window.seen.messages.push({source: m.source, message: m.message}); },
      onModeChange: (m) => { window.seen.modes.push(m.mode); },
      onStatusChange: (s) => { window.seen.status.push(s.status); },
      onError: (e) => { window.seen.errors.push(String(e)); },
    });
    return window.conversation.getId();
  };
</script>"""


def client_bundle() -> bytes:
    """The IIFE browser bundle of @elevenlabs/client, from the npm registry (cached)."""
    if BUNDLE.exists():
        return BUNDLE.read_bytes()
    try:
        with urllib.request.urlopen(TARBALL, timeout=60) as r:
            tarball = r.read()
    except OSError as e:
        pytest.skip(f"the npm registry is unreachable: {e}")
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    assert digest == INTEGRITY, f"{TARBALL} does not match its published integrity"
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/dist/lib.iife.js")
        assert member is not None
        bundle = member.read()
    BUNDLE.parent.mkdir(parents=True, exist_ok=True)
    BUNDLE.write_bytes(bundle)
    return bundle


@asynccontextmanager
async def web_page() -> AsyncIterator[str]:
    """A page that loads the official client, served on loopback; yields its URL."""
    files = {"/": (PAGE.encode(), "text/html"), "/client.js": (client_bundle(), "text/javascript")}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ")[1].decode()
            body, kind = files.get(path, (b"not found", "text/plain"))
            status = "200 OK" if path in files else "404 Not Found"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        server.close()


def assert_the_protocol_was_kept(agent: FakeAgent) -> None:
    record = agent.latest
    assert record.query.get("source") == "js_sdk", record.query
    for received in record.received:
        assert received.message is not None, received
        validate_client_message(received.message)
    for sent in record.sent:
        if sent.in_spec and sent.message is not None:
            validate_server_message(sent.message)


async def test_the_official_javascript_client_holds_a_text_exchange(tmp_path: Path) -> None:
    chromium_or_skip()
    async with FakeAgent(FakeAgentOptions(port=0, reply_text="Hello from the fake agent.")) as agent, \
            web_page() as url, browser() as page:
        await page.goto(url)
        conversation_id = await page.evaluate(
            f"start({{agentId: 'agent_js', origin: 'ws://127.0.0.1:{agent.port}', textOnly: true}})")
        assert conversation_id == agent.latest.id
        await page.evaluate("window.conversation.sendUserMessage('hello there')")
        reply = await page.wait_for(
            "window.seen.messages.filter(m => m.source === 'ai').map(m => m.message).join(' ')", 15, "the reply")
        assert reply == "Hello from the fake agent."
        await page.evaluate("window.conversation.endSession()")
        await agent.wait_for(lambda: agent.latest.closed_at is not None, 10, "the close")
        errors = await page.evaluate("window.seen.errors")
    assert not errors, errors
    assert [r.message["text"] for r in agent.latest.received_of("user_message")] == ["hello there"]
    assert agent.latest.close_code == 1000 and agent.latest.closed_by == "client"
    assert_the_protocol_was_kept(agent)


async def test_the_official_javascript_client_holds_a_voice_conversation(tmp_path: Path) -> None:
    chromium_or_skip()
    flags = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-audio-capture={QUESTION_WAV}", "--autoplay-policy=no-user-gesture-required")
    opts = FakeAgentOptions(port=0, transcript="What is the weather like?", reply_text="It is sunny.")
    async with FakeAgent(opts) as agent, web_page() as url, browser(flags) as page:
        await page.goto(url)
        await page.evaluate(
            f"start({{agentId: 'agent_js', origin: 'ws://127.0.0.1:{agent.port}', connectionType: 'websocket'}})")
        heard = await page.wait_for(
            "window.seen.messages.filter(m => m.source === 'user').map(m => m.message).join(' ')", 30,
            "the transcript of what the fake microphone said")
        answer = await page.wait_for(
            "window.seen.messages.filter(m => m.source === 'ai').map(m => m.message).join(' ')", 15, "the answer")
        # The client plays what it gets (its mode goes to speaking). The fake microphone loops
        # its WAV, so the "user" talks on over the reply and the agent may be interrupted.
        await page.wait_for("window.seen.modes.includes('speaking')", 15, "the agent's audio playing")
        await agent.wait_for(lambda: any(t.chunks_sent for t in agent.latest.turns), 20, "the reply's audio")
        await page.evaluate("window.conversation.endSession()")
        await agent.wait_for(lambda: agent.latest.closed_at is not None, 10, "the close")
        seen = await page.evaluate("window.seen")
    assert heard.startswith("What is the weather like?") and answer.startswith("It is sunny.")
    assert not seen["errors"], seen["errors"]
    record = agent.latest
    assert record.user_audio_seconds > 2.0  # its own microphone capture reached the agent
    assert record.pongs_received >= 1 or record.pings_sent == 0
    assert_the_protocol_was_kept(agent)
    assert json.dumps(seen["status"]).count("connected") >= 1
