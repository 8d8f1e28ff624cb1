"""systemd/pi-agent.service: systemd's own checks, and the settings the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "pi-agent.service"
EXEC_START = "/opt/pi-agent/venv/bin/pi-agent run"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _directives() -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def _values(section: str, key: str) -> list[str]:
    return [v for s, k, v in _directives() if s == section and k == key]


def _one(section: str, key: str) -> str:
    values = _values(section, key)
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "--no-pager", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@needs_analyze
def test_verify_complains_only_about_the_missing_exec_start() -> None:
    result = _analyze("verify", str(UNIT))
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert complaints, "expected the complaint about /opt/pi-agent/venv/bin/pi-agent, which is absent here"
    unexpected = [line for line in complaints if "/opt/pi-agent/venv/bin/pi-agent" not in line]
    assert unexpected == []


@pytest.mark.slow
@needs_analyze
def test_verify_passes_with_an_existing_executable(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}\n" in text
    copy = tmp_path / "pi-agent.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START}", f"ExecStart={shutil.which('true')} run"))
    result = _analyze("verify", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@pytest.mark.slow
@needs_analyze
def test_security_exposure_is_at_most_2_5() -> None:
    result = _analyze("security", "--offline=true", str(UNIT))
    match = re.search(r"Overall exposure level for pi-agent\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.slow
@needs_analyze
def test_the_readme_states_the_exposure_systemd_analyze_gives() -> None:
    """The README's figure (issue 24: the fleet's admins read it) is the one measured here."""
    result = _analyze("security", "--offline=true", str(UNIT))
    match = re.search(r"Overall exposure level for pi-agent\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    readme = " ".join((UNIT.parents[1] / "README.md").read_text().split())
    assert f"hardened to an exposure of {match.group(1)} by `systemd-analyze security`" in readme


def test_the_scrape_listener_needs_no_ip_rule_and_the_unit_says_so() -> None:
    """Issue 24: the unit filters no IP address (the agent's server is on the internet), so the
    opt-in scrape listener ([api] metrics_listen) works without a drop-in; the unit says so and
    how to let only the fleet's Prometheus reach it."""
    keys = {k for _, k, _ in _directives()}
    assert not keys & {"IPAddressAllow", "IPAddressDeny", "IPIngressFilterPath"}
    comments = " ".join(line.lstrip("# ") for line in UNIT.read_text().splitlines() if line.startswith("#"))
    assert "metrics_listen" in comments and "needs no change here" in comments and "firewall" in comments


def test_notify_service_with_watchdog_and_restart_policy() -> None:
    assert _one("Service", "Type") == "notify"
    assert _one("Service", "NotifyAccess") == "main"
    assert _one("Service", "ExecStart") == EXEC_START
    assert _one("Service", "WatchdogSec") == "30s"
    assert _one("Service", "Restart") == "on-failure"
    assert "78" in _one("Service", "RestartPreventExitStatus").split()
    assert _one("Service", "KillMode") == "mixed"
    assert _one("Service", "TimeoutStopSec") == "5s"
    assert int(_one("Unit", "StartLimitBurst")) >= 3
    assert _one("Unit", "StartLimitIntervalSec")
    assert _one("Service", "RestartSec")
    assert _one("Install", "WantedBy") == "multi-user.target"


def test_waits_for_network_and_clock() -> None:
    for key in ("Wants", "After"):
        targets = " ".join(_values("Unit", key)).split()
        assert {"network-online.target", "time-sync.target"} <= set(targets), key


def test_the_clock_wait_is_explained_and_not_pulled_in_unbounded() -> None:
    """time-sync.target waits only with systemd-time-wait-sync.service enabled (the installer's
    part); the unit says so, and does not pull that service in itself: its wait has no limit, so
    a `systemctl start` on a Pi offline would hang on it."""
    comments = " ".join(line.lstrip("# ") for line in UNIT.read_text().splitlines() if line.startswith("#"))
    assert "systemd-time-wait-sync.service is enabled" in comments
    assert "the system clock is not set yet" in comments  # what the journal shows without it
    pulled = " ".join(_values("Unit", "Wants") + _values("Unit", "Requires")).split()
    assert "systemd-time-wait-sync.service" not in pulled


def test_user_credentials_and_config() -> None:
    assert _one("Service", "User") == "pi-agent"
    assert set(_one("Service", "SupplementaryGroups").split()) == {"audio", "gpio", "spi"}
    assert _one("Service", "LoadCredential") == "api_key:/etc/pi-agent/api_key"
    env = _values("Service", "Environment")
    assert "PI_AGENT_CONFIG=/etc/pi-agent/config.toml" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert _one("Service", "StateDirectory") == "pi-agent"
    # lgpio writes its notification pipes into the working directory.
    assert _one("Service", "WorkingDirectory") == "/var/lib/pi-agent"


def test_hardening_keeps_audio_gpio_and_sd_notify_working() -> None:
    assert _one("Service", "PrivateDevices") == "no"
    assert _one("Service", "DevicePolicy") == "closed"
    allowed = _values("Service", "DeviceAllow")
    assert {"char-alsa rw", "char-gpiochip rw", "/dev/gpiomem rw", "char-spi rw"} <= set(allowed)
    families = _one("Service", "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)  # AF_UNIX: sd_notify, journald
    assert _one("Service", "ProtectSystem") == "strict"
    assert _one("Service", "NoNewPrivileges") == "yes"
    assert _one("Service", "CapabilityBoundingSet") == ""
    # A filtered system call fails with EPERM instead of killing the daemon mid-sentence.
    assert _one("Service", "SystemCallErrorNumber") == "EPERM"
    assert "ProcSubset" not in {k for _, k, _ in _directives()}  # alsa-lib reads /proc/asound


def test_reload_socket_and_file_limit() -> None:
    """systemctl reload sends SIGHUP (the daemon validates first); the event API's socket
    lives in a runtime directory only the service's group may enter; room for connections."""
    assert _one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _one("Service", "RuntimeDirectory") == "pi-agent"
    assert _one("Service", "RuntimeDirectoryMode") == "0750"
    assert _one("Service", "Group") == "pi-agent"
    assert int(_one("Service", "LimitNOFILE")) >= 4096
