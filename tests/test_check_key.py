"""``pi-agent check`` tests the agent with the key the service gets: the credential the unit
hands over (``LoadCredential=api_key:/etc/pi-agent/api_key``), read from that file itself when
``check`` runs outside the unit. Root finds it; a user who may not read it is told so, with no
false FAIL. The key never appears in the output.

The installed layout is made as scripts/install.sh makes it (``/etc/pi-agent`` 0750
root:pi-agent, ``config.toml`` 0640 root:pi-agent, ``api_key`` 0600 root:root), under a
temporary directory: the credential is the ``api_key`` beside the config file."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pi_agent.config import Settings
from pi_agent.config.settings import SERVICE_CREDENTIAL, service_credential, service_key
from pi_agent.errors import ConfigError
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import QUESTION_WAV
from .support_users import as_user, blocked, cannot_cover, needed_paths

CANARY = "sk_canary_checkkey_987654321"
IS_ROOT = os.geteuid() == 0
SERVICE_GID = 4242  # the pi-agent group of the layout (needs no entry in /etc/group)
NOBODY = 65534


@pytest.fixture
def layout() -> Iterator[Path]:
    """<tmp>/etc/pi-agent/{config.toml,api_key}, in the installer's modes; the whole tree
    traversable by other users (pytest's own tmp_path is private to its owner)."""
    top = Path(tempfile.mkdtemp(prefix="pi-agent-check-"))
    try:
        top.chmod(0o711)
        etc = top / "etc" / "pi-agent"
        etc.mkdir(parents=True)
        (top / "etc").chmod(0o755)
        etc.chmod(0o750)
        config = etc / "config.toml"
        config.write_text('agent_id = "agent_checkkey"\n[audio]\n'
                          f'input_wav = "{QUESTION_WAV}"\noutput_wav = "/dev/null"\n')
        config.chmod(0o640)
        key = etc / "api_key"
        key.write_text(CANARY + "\n")
        key.chmod(0o600)
        if IS_ROOT:
            for path in (etc, config):
                os.chown(path, 0, SERVICE_GID)
        yield config
    finally:
        shutil.rmtree(top, ignore_errors=True)


async def check_cli(config: Path, server_url: str, *, as_other_user: bool = False,
                    env: dict[str, str] | None = None) -> tuple[int, str]:
    """``pi-agent --config CONFIG check`` with no key in the environment; as root, or as a
    member of the service's group who is not root (``setpriv``)."""
    base = {k: v for k, v in os.environ.items()
            if not k.upper().startswith("PI_AGENT_") and k not in ("ELEVENLABS_API_KEY", "CREDENTIALS_DIRECTORY")}
    command = [sys.executable, "-m", "pi_agent.cli", "--config", str(config), "check"]
    if as_other_user:  # through the checkout's directories that user may not enter (CI's mktemp -d)
        command = as_user(command, NOBODY, SERVICE_GID, covers=blocked(needed_paths()))
    proc = await asyncio.create_subprocess_exec(
        *command,
        env={**base, "GPIOZERO_PIN_FACTORY": "mock", "PI_AGENT_SERVER_URL": server_url, "HOME": "/",
             "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


@pytest.mark.slow
async def test_as_root_check_finds_the_key_the_unit_would_pass(layout: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:  # a private agent
        code, out = await check_cli(layout, agent.http_url)
        assert agent.latest is not None and agent.latest.close_code == 1000, out
    key = layout.parent / "api_key"
    assert f"; API key from {key}, the service's credential (LoadCredential=)\n" in out, out
    assert "[ ok ] agent: signed URL fetched" in out, out
    assert code == 0 and "[FAIL]" not in out, out
    assert CANARY not in out


@pytest.mark.slow
async def test_the_units_own_credentials_directory_is_used_first(layout: Path, tmp_path: Path) -> None:
    """As under systemd (``systemd-run -p LoadCredential=...``): $CREDENTIALS_DIRECTORY/api_key."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api_key").write_text(CANARY)
    (layout.parent / "api_key").write_text("sk_not_the_one_the_unit_passes")
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        code, out = await check_cli(layout, agent.http_url, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert "; API key from $CREDENTIALS_DIRECTORY/api_key (systemd's credential)\n" in out, out
    assert code == 0 and "[ ok ] agent: signed URL fetched" in out, out
    assert CANARY not in out


@pytest.mark.slow
async def test_a_user_who_cannot_read_the_key_is_told_so_and_gets_no_false_fail(layout: Path) -> None:
    key = layout.parent / "api_key"
    if IS_ROOT:
        if shutil.which("setpriv") is None:
            pytest.skip("running check as another user needs setpriv (util-linux)")
        if (why := cannot_cover(blocked(needed_paths()))) is not None:
            pytest.skip(why)
        other_user = True
    else:  # not root: a mode of 000 keeps even the owner out
        key.chmod(0)
        other_user = False
        if os.access(key, os.R_OK):
            pytest.skip("this user reads a file of mode 000 (a capability?): cannot make the key unreadable")
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        code, out = await check_cli(layout, agent.http_url, as_other_user=other_user)
        assert not agent.conversations, "a private agent was tested as a public one"
    assert (f"[skip] agent: no API key readable here: the service gets {key} through LoadCredential=; "
            f"run `sudo pi-agent --config {layout} check`\n") in out, out
    assert f"no API key readable here ({key} is the service's, not readable by this user)\n" in out, out
    assert "[FAIL]" not in out and "Traceback" not in out and code == 0, out
    assert out.rstrip().endswith("all checks passed; the agent was not tested (no API key readable here)"), out
    assert stat.S_IMODE(key.stat().st_mode) in (0o600, 0)


@pytest.mark.slow
async def test_without_any_key_a_refusal_says_no_key_was_found(layout: Path) -> None:
    (layout.parent / "api_key").write_text("")  # the installer's empty credential: a public agent
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        code, out = await check_cli(layout, agent.http_url)
    assert code == 1 and "; no API key (a public agent)\n" in out, out
    assert "[FAIL] agent: handshake refused: HTTP 403" in out and "no API key was found" in out, out


# --- the key's sources, in-process ---------------------------------------------------------------


def _settings(**values: str) -> Settings:
    return Settings(agent_id="a", **values)  # type: ignore[arg-type]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PI_AGENT_") or name in ("ELEVENLABS_API_KEY", "CREDENTIALS_DIRECTORY"):
            monkeypatch.delenv(name)


def test_the_advice_names_the_program_as_started_and_a_config_file_not_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pi_agent.diagnostics.check import _as_root

    monkeypatch.setattr(sys, "argv", ["/opt/pi-agent/venv/bin/pi-agent", "check"])
    assert _as_root(Path("/etc/pi-agent/config.toml")) == "sudo /opt/pi-agent/venv/bin/pi-agent check"
    monkeypatch.setattr(sys, "argv", ["pi-agent", "check"])
    assert _as_root(Path("/srv/config.toml")) == "sudo pi-agent --config /srv/config.toml check"
    assert _as_root(None) == "sudo pi-agent check"


def test_the_service_credential_lies_beside_the_config_file() -> None:
    assert service_credential(Path("/etc/pi-agent/config.toml")) == SERVICE_CREDENTIAL
    assert service_credential(None) == Path("/etc/pi-agent/api_key")
    assert service_credential(Path("/srv/x/config.toml")) == Path("/srv/x/api_key")


def test_the_key_sources_in_the_services_order(tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "config.toml"
    credential = tmp_path / "api_key"
    credential.write_text(f"{CANARY}\n")
    found = service_key(_settings(api_key="sk_in_the_file"), config, {})
    assert found.key == SecretStr(CANARY)
    assert found.origin == f"{credential}, the service's credential (LoadCredential=)"
    # $PI_AGENT_API_KEY is the strongest, for the service too (a drop-in's Environment=)
    found = service_key(_settings(api_key="sk_env"), config, {"PI_AGENT_API_KEY": "sk_env"})
    assert found.key == SecretStr("sk_env") and found.origin == "$PI_AGENT_API_KEY"
    # the credential over $ELEVENLABS_API_KEY and the config file
    found = service_key(_settings(api_key="sk_sdk"), config, {"ELEVENLABS_API_KEY": "sk_sdk"})
    assert found.key == SecretStr(CANARY)
    # an empty credential (the installer's default): the weaker sources, as the service does
    credential.write_text("\n")
    assert service_key(_settings(api_key="sk_sdk"), config, {"ELEVENLABS_API_KEY": "sk_sdk"}).origin \
        == "$ELEVENLABS_API_KEY"
    assert service_key(_settings(api_key="sk_file"), config, {}).origin == "the config file"
    nothing = service_key(_settings(), config, {})
    assert nothing.key is None and nothing.origin == "" and nothing.unreadable is None
    # no credential at all
    credential.unlink()
    assert service_key(_settings(), config, {}).key is None


def test_under_systemd_the_credentials_directory_is_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                clean_env: None) -> None:
    (tmp_path / "api_key").write_text("sk_beside_the_config")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api_key").write_text(CANARY)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = _settings()
    assert settings.api_key == SecretStr(CANARY)  # the daemon under systemd: unchanged
    found = service_key(settings, tmp_path / "config.toml")
    assert found.key == SecretStr(CANARY) and found.origin == "$CREDENTIALS_DIRECTORY/api_key (systemd's credential)"


def test_a_credential_that_is_no_key_is_one_line_without_the_key(tmp_path: Path) -> None:
    (tmp_path / "api_key").write_text(f"{CANARY} {CANARY}\n")
    with pytest.raises(ConfigError) as e:
        service_key(_settings(), tmp_path / "config.toml", {})
    assert str(e.value) == (f"api_key: credential {tmp_path / 'api_key'} must be the key alone, without spaces, "
                            "line breaks or control characters")
    (tmp_path / "api_key").unlink()
    (tmp_path / "api_key").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read credential .*: Is a directory"):
        service_key(_settings(), tmp_path / "config.toml", {})
