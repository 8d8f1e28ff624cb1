"""Configuration: sources and their order, secrets, and one clear line + exit 78 per bad setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pi_agent.config import load_settings
from pi_agent.errors import ConfigError

CANARY = "sk_canary_5f1e0c0ffee"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PI_AGENT_") or key in ("CREDENTIALS_DIRECTORY", "ELEVENLABS_API_KEY"):
            monkeypatch.delenv(key)


def test_env_beats_toml_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('agent_id = "from-toml"\n[session]\npolicy = "persistent"\nidle_timeout = 12\n'
                   '[session.dynamic_variables]\nname = "Ana"\n')
    monkeypatch.setenv("PI_AGENT_SESSION__IDLE_TIMEOUT", "7")
    s = load_settings(cfg)
    assert s.agent_id == "from-toml"
    assert s.session.policy == "persistent"
    assert s.session.idle_timeout == 7
    assert s.session.dynamic_variables == {"name": "Ana"}
    assert s.session.backoff_max == 60  # default
    monkeypatch.setenv("PI_AGENT_CONFIG", str(cfg))
    assert load_settings().agent_id == "from-toml"


def test_api_key_from_credentials_directory_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "api_key").write_text(CANARY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    s = load_settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == CANARY
    assert CANARY not in repr(s) and CANARY not in str(s) and CANARY not in s.model_dump_json()


def test_the_official_sdks_key_variable_is_honoured_below_the_projects_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    monkeypatch.setenv("ELEVENLABS_API_KEY", CANARY + "\n")
    s = load_settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == CANARY
    assert CANARY not in repr(s) and CANARY not in s.model_dump_json()
    (tmp_path / "api_key").write_text("sk_from_credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings().api_key.get_secret_value() == "sk_from_credential"  # type: ignore[union-attr]
    monkeypatch.setenv("PI_AGENT_API_KEY", "sk_own")
    assert load_settings().api_key.get_secret_value() == "sk_own"  # type: ignore[union-attr]
    monkeypatch.setenv("ELEVENLABS_API_KEY", "  ")
    monkeypatch.delenv("PI_AGENT_API_KEY")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert load_settings().api_key is None  # blank: no key


def test_mcp_approval_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    s = load_settings()
    assert s.session.mcp_approval == "deny" and s.session.mcp_allow == []
    monkeypatch.setenv("PI_AGENT_SESSION__MCP_APPROVAL", "ask")
    monkeypatch.setenv("PI_AGENT_SESSION__MCP_ALLOW", '["book_room"]')
    s = load_settings()
    assert s.session.mcp_approval == "ask" and s.session.mcp_allow == ["book_room"]
    monkeypatch.setenv("PI_AGENT_SESSION__MCP_APPROVAL", "always")
    with pytest.raises(ConfigError, match="mcp_approval"):
        load_settings()


BAD = [
    ({}, "agent_id is required: set PI_AGENT_AGENT_ID"),
    ({"PI_AGENT_SESSION__POLICY": "sometimes"}, "session.policy"),
    ({"PI_AGENT_CAPTURE__MODE": "clap"}, "capture.mode"),
    ({"PI_AGENT_API__PORT": "70000"}, "api.port"),
    ({"PI_AGENT_API__PORT": "http"}, "api.port"),
    ({"PI_AGENT_AUDIO__ECHO": "cancel"}, "audio.echo"),
    ({"PI_AGENT_SERVER_URL": "ftp://x"}, "server_url"),
    ({"PI_AGENT_SESSION__BACKOFF_MAX": "0.1"}, "session.backoff_max"),
    ({"PI_AGENT_CAPTURE__VAD_AGGRESSIVENESS": "7"}, "capture.vad_aggressiveness"),
    ({"PI_AGENT_SESSION__POLCY": "persistent"}, "session.polcy is not a known setting"),
]


@pytest.mark.parametrize(("env", "needle"), BAD)
def test_bad_setting_names_itself(env: dict, needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if env:
        monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert needle in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    return subprocess.run([sys.executable, "-m", "pi_agent.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


CLI_CASES = [
    ([], {}, "agent_id"),
    ([], {"PI_AGENT_AGENT_ID": "a", "PI_AGENT_SESSION__POLICY": "sometimes"}, "session.policy"),
    ([], {"PI_AGENT_AGENT_ID": "a", "PI_AGENT_API__PORT": "-1"}, "api.port"),
    ([], {"PI_AGENT_AGENT_ID": "a", "PI_AGENT_CAPTURE__MODE": "clap"}, "capture.mode"),
    (["--config", "/nonexistent/pi-agent.toml"], {"PI_AGENT_AGENT_ID": "a"}, "does not exist"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "env", "needle"), CLI_CASES)
def test_cli_config_error_is_one_line_and_exit_78(args: list[str], env: dict, needle: str) -> None:
    r = _cli([*args, "run"], {**env, "PI_AGENT_API_KEY": CANARY})
    assert r.returncode == 78, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert CANARY not in r.stderr + r.stdout


@pytest.mark.slow
def test_cli_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("agent_id = [unclosed\n")
    r = _cli(["--config", str(bad), "run"], {})
    assert r.returncode == 78 and "not valid TOML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    secret = tmp_path / "secret.toml"
    secret.write_text('agent_id = "a"\n')
    secret.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        r = _cli(["--config", str(secret), "run"], {})
        assert r.returncode == 78 and "cannot be read" in r.stderr


# --------------------------------------------------------------------------- [leds] APA102 (issue 23)


def test_led_presets_fill_in_the_hat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    s = load_settings(leds={"preset": "respeaker_2mic"})
    assert s.leds.driver_kind() == "apa102" and s.leds.apa102_count() == 3 and s.leds.apa102_spi_device() == 1
    assert s.leds.apa102_power_pin() is None and s.leds.button_pin(s.button.pin) == 17
    s = load_settings(leds={"preset": "respeaker_2mic"}, button={"pin": 22})
    assert s.leds.button_pin(s.button.pin) == 22  # the user's own pin wins
    monkeypatch.setenv("PI_AGENT_LEDS__PRESET", "respeaker_4mic")
    monkeypatch.setenv("PI_AGENT_LEDS__BRIGHTNESS", "20")
    s = load_settings()
    assert (s.leds.apa102_count(), s.leds.apa102_power_pin(), s.leds.brightness) == (12, 5, 20)
    assert s.leds.button_pin(None) is None  # the 4-Mic Array has no button
    s = load_settings(leds={"preset": "respeaker_4mic", "count": 4, "power_pin": 6, "spi_device": 0})
    assert (s.leds.apa102_count(), s.leds.apa102_power_pin(), s.leds.apa102_spi_device()) == (4, 6, 0)
    monkeypatch.delenv("PI_AGENT_LEDS__PRESET")
    s = load_settings(leds={"kind": "apa102", "count": 8, "spi_clock_pin": 20, "spi_mosi_pin": 21,
                            "spi_select_pin": 16})
    assert s.leds.driver_kind() == "apa102" and s.leds.apa102_spi_device() == 0
    assert load_settings(leds={"connection_pin": 5}).leds.driver_kind() == "gpio"
    assert load_settings().leds.driver_kind() is None


BAD_LEDS = [
    ({"kind": "neopixel"}, "leds.kind"),
    ({"preset": "respeaker_6mic"}, "leds.preset"),
    ({"kind": "apa102"}, "leds.count: kind apa102 needs the number of LEDs"),
    ({"kind": "apa102", "count": 0}, "leds.count"),
    ({"preset": "respeaker_2mic", "brightness": 32}, "leds.brightness"),
    ({"preset": "respeaker_2mic", "brightness": 0}, "leds.brightness"),
    ({"preset": "respeaker_2mic", "spi_device": 2}, "leds.spi_device"),
    ({"preset": "respeaker_2mic", "kind": "gpio"}, "leds.preset: a preset drives the HAT's APA102 LEDs"),
    ({"preset": "respeaker_2mic", "connection_pin": 5}, "leds.connection_pin: the APA102 LEDs show every state"),
    ({"kind": "apa102", "count": 3, "rgb_pins": [1, 2, 3]}, "leds.rgb_pins"),
    ({"kind": "apa102", "count": 3, "spi_clock_pin": 20}, "leds.spi_select_pin: software SPI needs all three"),
    ({"kind": "apa102", "count": 3, "spi_clock_pin": 20, "spi_mosi_pin": 20, "spi_select_pin": 16},
     "three different pins"),
    ({"preset": "respeaker_4mic", "power_pin": 60}, "leds.power_pin"),
]


@pytest.mark.parametrize(("leds", "needle"), BAD_LEDS)
def test_bad_led_setting_is_one_line(leds: dict, needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    with pytest.raises(ConfigError) as e:
        load_settings(leds=leds)
    assert needle in str(e.value)
    assert len(str(e.value).splitlines()) == 1, str(e.value)


def test_bad_led_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    monkeypatch.setenv("PI_AGENT_LEDS__KIND", "apa102")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(e.value).startswith("leds.count: kind apa102 needs") and "PI_AGENT_LEDS__COUNT" in str(e.value)
