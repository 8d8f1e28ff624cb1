"""The kiosk page, in Debian's headless Chromium, against the real daemon and fake agent.

The test reads what the page renders through the DevTools protocol, in real time, while
a spoken exchange goes on: the user's words, the agent's words as they stream, the
state in its colour, and what the page does when the daemon restarts.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from pi_agent.fake_agent.options import FakeAgentOptions as _Options
from pi_agent.decide.leds import state_colors

from .support_browser import browser, chromium_or_skip
from .support_daemon import DaemonProcess, daemon_running, free_port
from .support_faults import make_wav

pytestmark = pytest.mark.slow

QUESTION = "What is the weather like in Lisbon today?"
REPLY = _Options().reply_text

TEXT = "document.getElementById('{id}').textContent"
LINES = "Array.from(document.querySelectorAll('#captions .line')).map(l => l.className + ' | ' + l.innerText)"


def env_for(agent: FakeAgent, tmp: Path, **extra: str) -> dict[str, str]:
    mic = make_wav(tmp / "mic.wav", 2.5, "question", 6.0)
    return {"PI_AGENT_AGENT_ID": "agent_page", "PI_AGENT_SERVER_URL": agent.http_url,
            "PI_AGENT_AUDIO__INPUT_WAV": str(mic), "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
            "PI_AGENT_SESSION__POLICY": "persistent", "PI_AGENT_CAPTURE__MODE": "vad",
            "PI_AGENT_SESSION__BACKOFF_INITIAL": "0.3", "PI_AGENT_SESSION__BACKOFF_MAX": "1", **extra}


async def test_the_page_shows_the_state_and_live_captions_and_comes_back_after_a_restart(tmp_path: Path) -> None:
    chromium_or_skip()
    opts = FakeAgentOptions(port=0, transcript=QUESTION, text_part_ms=150)
    async with FakeAgent(opts) as agent, browser() as page:
        env = env_for(agent, tmp_path)
        async with daemon_running(env, tmp_path) as d:
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='state')} === 'listening'", 15, "the listening state")
            color = await page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--state')")
            assert color.strip() == state_colors()["listening"]
            assert await page.evaluate(TEXT.format(id="volume")) == "volume 100"  # the speaker's volume, small
            await page.wait_for(f"{TEXT.format(id='captions')}.includes({QUESTION!r})", 20, "the user's words")
            # The agent's words as they stream: some of the reply, before all of it.
            partial = await page.wait_for(
                "(() => { const a = document.querySelector('#captions .line.agent .words');"
                f" const t = a ? a.textContent : ''; return t.length > 0 && t.length < {len(REPLY)} ? t : ''; }})()",
                10, "a part of the agent's words")
            assert REPLY.startswith(partial.rstrip()), partial
            await page.wait_for(f"{TEXT.format(id='captions')}.includes({REPLY!r})", 10, "the agent's whole reply")
            await page.wait_for(f"{TEXT.format(id='state')} === 'speaking'", 10, "speaking")
            lines = await page.evaluate(LINES)
            assert [line.split(" | ")[0] for line in lines][-2:] == ["line user old", "line agent"], lines
            if os.environ.get("PI_AGENT_PAGE_SCREENSHOT"):
                await page.screenshot(Path(os.environ["PI_AGENT_PAGE_SCREENSHOT"]))
            await page.wait_for(f"{TEXT.format(id='state')} !== 'speaking'", 15, "the reply played out")
            port, sock = d.api_port, d.api_socket
        # The daemon is gone: the page says so, then finds the new one by itself.
        await page.wait_for("document.body.classList.contains('gone')", 10, "the reconnecting notice")
        restarted = {**env, "PI_AGENT_API__PORT": str(port), "PI_AGENT_API__SOCKET": str(sock)}
        async with daemon_running(restarted, tmp_path):
            await page.wait_for("!document.body.classList.contains('gone')", 15, "the page back")
            await page.wait_for(f"['idle', 'listening', 'thinking', 'speaking'].includes({TEXT.format(id='state')})",
                                15, "a live state again")
        assert not [c for c in page.console if c.startswith("exception")], page.console


async def test_the_page_is_view_only_unless_its_buttons_are_allowed(tmp_path: Path) -> None:
    chromium_or_skip()
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, browser() as page:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(make_wav(tmp_path / "quiet.wav", 0.2)))
        async with daemon_running(env, tmp_path) as d:
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='state')} === 'idle'", 15, "idle")
            assert await page.evaluate("getComputedStyle(document.querySelector('footer')).display") == "none"
            reply = await page.evaluate("""new Promise(done => {
                const ws = new WebSocket(`ws://${location.host}/events`);
                ws.onmessage = m => { const e = JSON.parse(m.data);
                    if (e.type === 'snapshot') ws.send(JSON.stringify({type: 'mute'}));
                    else if (e.type === 'error') done(e.message); };
            })""")
            assert "Unix socket" in reply
        control = {**env, "PI_AGENT_API__PAGE_CONTROL": "true"}
        async with daemon_running(control, tmp_path) as d:
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='state')} === 'idle'", 15, "idle")
            await page.evaluate("document.querySelector('button[data-cmd=mute]').click()")
            await page.wait_for("document.body.classList.contains('muted')", 5, "muted")
            await page.wait_for(f"{TEXT.format(id='state')} === 'muted'", 5, "the muted state")
            await page.evaluate("document.querySelector('button[data-cmd=unmute]').click()")
            await page.wait_for("!document.body.classList.contains('muted')", 5, "unmuted")


async def test_the_page_says_when_the_agent_is_busy_and_what_the_server_objected_to(tmp_path: Path) -> None:
    """The service's queue (all agents busy) and its client_error, as a kiosk's screen shows them."""
    chromium_or_skip()
    async with FakeAgent(FakeAgentOptions(port=0, queue_seconds=6.0)) as agent, browser() as page:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(make_wav(tmp_path / "quiet.wav", 0.2)))
        async with daemon_running(env, tmp_path) as d:
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='state')} === 'waiting for the agent'", 10, "waiting for the agent")
            assert "busy" in await page.evaluate(TEXT.format(id="problem"))
            await page.wait_for(f"{TEXT.format(id='state')} === 'idle'", 15, "admitted")
            assert await page.evaluate(TEXT.format(id="problem")) == ""
            await agent.control("client_error", {"code": "1008", "error_name": "invalid_api_key",
                                                 "message": "Invalid API key"})
            await page.wait_for(f"{TEXT.format(id='problem')}.includes('Invalid API key')", 10, "the server's words")
        assert not [c for c in page.console if c.startswith("exception")], page.console


def test_the_page_can_be_turned_off(tmp_path: Path) -> None:
    env = {"PI_AGENT_AGENT_ID": "agent_page", "PI_AGENT_SERVER_URL": f"http://127.0.0.1:{free_port()}",
           "PI_AGENT_AUDIO__INPUT_WAV": str(make_wav(tmp_path / "quiet.wav", 0.2)),
           "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp_path / "speaker.wav"), "PI_AGENT_API__PAGE": "off"}
    d = DaemonProcess(env, tmp_path).start()
    try:
        asyncio.run(d.wait_api())
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(f"http://127.0.0.1:{d.api_port}/", timeout=5)
        assert gone.value.code == 404
        status, _ = d.http("/healthz")
        assert status in (200, 503)
    finally:
        d.stop()


async def test_status_follow_shows_the_agents_words_streaming_on_one_line_in_a_terminal(tmp_path: Path) -> None:
    """On a terminal, --follow writes one line per speaker and rewrites the agent's line in
    place (carriage return) as its words stream; to a pipe it writes JSON lines."""
    import os as _os
    import pty
    import subprocess
    import sys
    import time

    opts = FakeAgentOptions(port=0, transcript=QUESTION, text_part_ms=100)
    async with FakeAgent(opts) as agent:
        env = env_for(agent, tmp_path)
        async with daemon_running(env, tmp_path) as d:
            leader, follower = pty.openpty()
            proc = subprocess.Popen([sys.executable, "-m", "pi_agent.cli", "status", "--follow"], env=d.env,
                                    stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE)
            _os.close(follower)
            out = b""
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline and f"agent: {REPLY}\r\n".encode() not in out:
                    ready = await asyncio.to_thread(_read_some, leader)
                    out += ready
            finally:
                proc.terminate()
                proc.wait(10)
                _os.close(leader)
    text = out.decode(errors="replace")
    assert text.startswith("pi-agent: "), text[:200]
    assert f"you:   {QUESTION}" in text
    streamed = text.split(f"you:   {QUESTION}", 1)[1]
    assert streamed.count("\r\x1b[Kagent: ") >= 5, streamed[:400]  # rewritten in place, word by word
    assert f"agent: {REPLY}\r\n" in streamed


def _read_some(fd: int) -> bytes:
    import os as _os
    import select

    ready, _, _ = select.select([fd], [], [], 0.5)
    if not ready:
        return b""
    try:
        return _os.read(fd, 65536)
    except OSError:
        return b""


HINT = TEXT.format(id="hint")
SHOWN_HINT = "getComputedStyle(document.getElementById('hint')).display !== 'none'"


@pytest.mark.parametrize(("mode", "hint"), [("push_to_talk", "Press the button"), ("vad", "Just speak"),
                                            ("wake_word", "Say \u201cOkay Nabu\u201d")])
async def test_the_idle_page_says_how_to_start(tmp_path: Path, mode: str, hint: str) -> None:
    chromium_or_skip()
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, browser() as page:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(make_wav(tmp_path / "quiet.wav", 0.2)),
                      PI_AGENT_CAPTURE__MODE=mode, PI_AGENT_SESSION__POLICY="on_demand")
        async with daemon_running(env, tmp_path) as d:
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(SHOWN_HINT, 15, "the hint")
            assert await page.evaluate(HINT) == hint
            size = await page.evaluate("parseFloat(getComputedStyle(document.getElementById('state')).fontSize)"
                                       " / window.innerHeight")
            assert size >= 0.1  # the state word: a tenth of the screen's height
async def test_a_page_loaded_after_an_exchange_shows_it_until_page_hold_then_nothing(tmp_path: Path) -> None:
    """Issue 23: the snapshot carries the exchange; cleared page_hold seconds after the conversation."""
    chromium_or_skip()
    opts = FakeAgentOptions(port=0, transcript=QUESTION, text_part_ms=150)
    async with FakeAgent(opts) as agent, browser() as page:
        env = env_for(agent, tmp_path, PI_AGENT_SESSION__POLICY="on_demand", PI_AGENT_SESSION__IDLE_TIMEOUT="2",
                      PI_AGENT_API__PAGE_HOLD="4")
        async with daemon_running(env, tmp_path) as d:
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='captions')}.includes({QUESTION!r})", 25, "the user's words")
            # Mid-reply, a new page (a browser restarted) gets the reply so far, then the rest.
            await page.wait_for("(() => { const a = document.querySelector('#captions .line.agent .words');"
                                f" return a && a.textContent.length > 0 && a.textContent.length < {len(REPLY)}; }})()",
                                10, "a part of the agent's words")
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            partial = await page.wait_for(
                "(() => { const a = document.querySelector('#captions .line.agent .words');"
                " return a && a.textContent.length > 0 ? a.textContent : ''; })()", 5, "the reply so far on reload")
            assert REPLY.startswith(partial.rstrip()) and QUESTION in await page.evaluate(TEXT.format(id="captions"))
            try:
                await page.wait_for(f"{TEXT.format(id='captions')}.includes({REPLY!r})", 10, "the whole reply")
            except AssertionError:
                raise AssertionError(await page.evaluate(LINES)) from None
            await page.wait_for(f"{TEXT.format(id='state')} === 'idle'", 20, "idle after the reply")
            # Loaded after the exchange: it shows it, and the idle hint.
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='captions')}.includes({REPLY!r})", 5, "the exchange on a new load")
            assert QUESTION in await page.evaluate(TEXT.format(id="captions"))
            await page.wait_for(SHOWN_HINT, 5, "the hint")
            assert await page.evaluate(HINT) == "Just speak"
            # After the conversation closes and page_hold passes: nothing, live and on a new load.
            await page.wait_for(f"{TEXT.format(id='captions')} === ''", 20, "the exchange cleared")
            await page.goto(f"http://127.0.0.1:{d.api_port}/")
            await page.wait_for(f"{TEXT.format(id='state')} === 'idle'", 5, "idle")
            assert await page.evaluate(TEXT.format(id="captions")) == ""
        assert not [c for c in page.console if c.startswith("exception")], page.console


