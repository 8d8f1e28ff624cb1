"""Issue 24, in-process (quick): the fleet settings (``device_name``, ``location``,
``[api] metrics_listen``), the scrape listener's request parsing and Host rule, and the
fleet metrics' exposition. The real daemon: tests/test_scrape.py, tests/test_metrics_fleet.py."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from pi_agent import __version__
from pi_agent.config import load_settings
from pi_agent.decide.states import State
from pi_agent.errors import ConfigError
from pi_agent.metrics import Metrics
from pi_agent.service.scrape import ScrapeListener, _BadRequest, _read_head


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PI_AGENT_") or key in ("CREDENTIALS_DIRECTORY", "ELEVENLABS_API_KEY"):
            monkeypatch.delenv(key)


# --- settings ---------------------------------------------------------------------------------------


def test_the_listener_is_off_and_the_device_is_the_host_by_default() -> None:
    s = load_settings(agent_id="a")
    assert s.api.metrics_listen == ""
    assert s.device_name is None and s.device() == socket.gethostname() and s.location == ""


def test_device_name_location_and_listen_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_DEVICE_NAME", "kiosk-hall-2")
    monkeypatch.setenv("PI_AGENT_LOCATION", " museum/hall 2 ")
    monkeypatch.setenv("PI_AGENT_API__METRICS_LISTEN", "[::]:9766")
    s = load_settings(agent_id="a")
    assert (s.device(), s.location, s.api.metrics_listen) == ("kiosk-hall-2", "museum/hall 2", "[::]:9766")


@pytest.mark.parametrize(("value", "expected"), [
    ("9766", "must be address:port"),
    (":9766", "must be address:port"),
    ("0.0.0.0", "must be address:port"),
    ("kiosk.local:9766", "is not an IP address"),
    ("::1:9766", "in brackets"),
    ("[0.0.0.0]:9766", "in brackets"),
    ("0.0.0.0:0", "from 1 to 65535"),
    ("0.0.0.0:70000", "from 1 to 65535"),
    ("0.0.0.0:http", "from 1 to 65535"),
    ("0.0.0.0:9766\n", None),  # stripped: fine
])
def test_a_bad_listen_address_is_one_line_naming_the_setting(value: str, expected: str | None) -> None:
    if expected is None:
        assert load_settings(agent_id="a", api={"metrics_listen": value}).api.metrics_listen == value.strip()
        return
    with pytest.raises(ConfigError) as e:
        load_settings(agent_id="a", api={"metrics_listen": value})
    text = str(e.value)
    assert "metrics_listen" in text and expected in text and "\n" not in text.strip(), text


@pytest.mark.parametrize("overrides", [{"device_name": ""}, {"device_name": "a\nb"}, {"device_name": "x" * 65},
                                       {"location": "hall\x00"}, {"location": "y" * 129}])
def test_a_bad_device_name_or_location_is_a_config_error(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(agent_id="a", **overrides)
    assert next(iter(overrides)) in str(e.value)


# --- the listener's requests -----------------------------------------------------------------------


def _parse(data: bytes) -> tuple[str, str, dict[str, str]]:
    async def run() -> tuple[str, str, dict[str, str]]:
        reader = asyncio.StreamReader(limit=8 * 1024)
        reader.feed_data(data)
        reader.feed_eof()
        return await _read_head(reader)
    return asyncio.run(run())


def test_a_request_head_is_read_and_junk_is_a_bad_request() -> None:
    assert _parse(b"GET /metrics HTTP/1.1\r\nHost: a:1\r\nX-Y:  z \r\n\r\n") == (
        "GET", "/metrics", {"host": "a:1", "x-y": "z"})
    assert _parse(b"\r\nGET /healthz HTTP/1.0\n\n")[:2] == ("GET", "/healthz")  # bare LF, a leading blank line
    for junk in (b"GET /metrics\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n", b"GET /m HTTP/2\r\n\r\n",
                 b"\xff\xfe /m HTTP/1.1\r\n\r\n", b"GET /m HTTP/1.1\r\nno colon\r\n\r\n",
                 b"GET /m HTTP/1.1\r\n folded: x\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
                 b"GET /m HTTP/1.1\r\n" + b"A: b\r\n" * 100 + b"\r\n"):
        with pytest.raises(_BadRequest):
            _parse(junk)
    with pytest.raises(ConnectionError):
        _parse(b"GET /metrics HTTP/1.1\r\nHost: a")  # the peer went away mid-request


def test_host_names_no_other_site_can_send() -> None:
    listener = ScrapeListener("0.0.0.0:9766", Metrics(), lambda: (200, {}), names=("kiosk-7",), max_open=8,
                              open_timeout=1.0)
    for host in ("10.0.0.5:9766", "10.0.0.5", "[fe80::1]:9766", "[::1]", "localhost:9766", "kiosk-7",
                 "KIOSK-7.museum.lan:9766", f"{socket.gethostname()}.local"):
        assert listener.host_allowed(host), host
    for host in ("evil.example", "evil.example:9766", "kiosk-7x.lan", "", "[::1]x", "[nope]:1", "10.0.0.5:x",
                 "127.0.0.1.evil.example", "localhost.evil.example:9766"[:0] + "evil-localhost"):
        assert not listener.host_allowed(host), host


def test_only_get_metrics_and_healthz_are_answered() -> None:
    m = Metrics()
    listener = ScrapeListener("127.0.0.1:9766", m, lambda: (503, {"status": "unhealthy"}), names=(),
                              max_open=8, open_timeout=1.0)
    status, _, body = listener._answer("GET", "/metrics?a=1", {"host": "127.0.0.1:9766"})
    assert status == 200 and "process_start_time_seconds" in body
    assert listener._answer("GET", "/healthz", {})[0] == 503
    assert listener._answer("POST", "/metrics", {})[:2] == (405, {"Allow": "GET"})
    assert listener._answer("GET", "/events", {})[0] == 404
    assert listener._answer("GET", "/metrics", {"origin": "null"})[0] == 403
    assert listener._answer("GET", "/metrics", {"sec-fetch-site": "same-origin"})[0] == 403
    assert listener._answer("GET", "/metrics", {"sec-fetch-site": "none"})[0] == 200


# --- the metrics -------------------------------------------------------------------------------------


def test_the_fleet_metrics_in_the_exposition() -> None:
    m = Metrics()
    m.set_identity("kiosk-1", 'hall "2"')
    state = [State.STARTING]
    m.watch_state(lambda: state[0])
    m.watch_device("microphone", lambda: True)

    def broken() -> bool:
        raise OSError("being reopened")
    m.watch_device("speaker", broken)
    m.watch_microphone_sound(lambda: None)
    text = m.render().decode()
    assert f'pi_agent_info{{device="kiosk-1",location="hall \\"2\\"",version="{__version__}"}} 1.0' in text
    assert 'pi_agent_state{state="starting"} 1.0' in text and 'pi_agent_state{state="idle"} 0.0' in text
    assert sum(line.startswith("pi_agent_state{") for line in text.splitlines()) == len(State) == 9
    assert 'pi_agent_device_up{device="microphone"} 1.0' in text
    assert 'pi_agent_device_up{device="speaker"} 0.0' in text
    assert "pi_agent_turns_total 0.0" in text and "pi_agent_exchanges_total 0.0" in text
    assert "pi_agent_microphone_last_sound_timestamp_seconds 0.0" in text
    state[0] = State.SPEAKING
    m.count_turn()
    m.count_exchange()
    m.count_turn()
    m.watch_microphone_sound(lambda: 1_700_000_000.25)
    text = m.render().decode()
    assert 'pi_agent_state{state="speaking"} 1.0' in text and 'pi_agent_state{state="starting"} 0.0' in text
    assert "pi_agent_turns_total 2.0" in text and "pi_agent_exchanges_total 1.0" in text
    assert "pi_agent_microphone_last_sound_timestamp_seconds 1.70000000025e+09" in text
    assert "process_start_time_seconds" in text


def test_the_health_reason_is_masked_like_the_api_ports() -> None:
    from pi_agent.service.logging import register_secret

    canary = "sk_fleet_canary_0a1b2c3d4e"
    register_secret(canary)
    listener = ScrapeListener("127.0.0.1:9766", Metrics(), lambda: (503, {"reason": f"closed: bad key {canary}"}),
                              names=(), max_open=8, open_timeout=1.0)
    status, _, body = listener._answer("GET", "/healthz", {})
    assert status == 503 and canary not in body and "closed: bad key" in body
