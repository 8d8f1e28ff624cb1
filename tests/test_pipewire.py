"""Raspberry Pi OS Desktop's sound server: pi-agent on a real PipeWire (issue 23, item 5).

A private PipeWire session (``pipewire``, ``wireplumber``, ``pipewire-pulse`` and a session
bus, from Debian; :mod:`tests.support_pipewire`) plays the desktop user's. The daemon and the
CLI reach it as the user service does (``systemd/pi-agent-user.service``, installed by
``scripts/install.sh --desktop-user``): ALSA's ``default`` device, through the ``pulse``
plugin, to the server found from ``XDG_RUNTIME_DIR``. The other way, the system service with
the card kept out of WirePlumber (``--own-card``), is tested here as far as a machine without
a sound card allows: the real WirePlumber 0.4 loads the shipped rule into its ALSA rules, and
0.5's file parses to the rule that disables the card. What ``pi-agent check`` says of a card a
sound server holds is tested on a node a real ``pipewire-pulse`` holds open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pi_agent.audio.holders import busy_hint, holders
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_audio import SPK_RATE, TimedRecording, dominant_frequency, loud_segments, tone
from .support_daemon import EventClient
from .support_pipewire import PipeWireSession, missing_tools, started_session
from .test_audio_e2e import (
    TONES,
    audio_daemon,
    connected,
    locate,
    question,
    report,
    speaker_latency,
    tone_reply,
    user_audio,
    write_wav,
)

pytestmark = [pytest.mark.audio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PI_AGENT = str(Path(sys.executable).with_name("pi-agent"))
BARGE_IN_PIPEWIRE = 0.05  # s from the interruption sent to a silent sink (measured 4-7 ms here)
BUSY = "cannot open speaker 'hw:0': Device unavailable [-9985] (ALSA: Device or resource busy)"


@pytest.fixture(scope="module")
def pipewire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipeWireSession]:
    with started_session(tmp_path_factory.mktemp("pipewire")) as session:
        yield session


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wireplumber_version() -> tuple[int, ...]:
    """The installed WirePlumber's version (``wireplumber --version``: "Linked with libwireplumber 0.4.13")."""
    out = subprocess.run(["wireplumber", "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"libwireplumber (\d+)\.(\d+)\.(\d+)", out)
    assert match is not None, out
    return tuple(int(n) for n in match.groups())


def cli_env(session: PipeWireSession, **settings: str) -> dict[str, str]:
    """A desktop user's process: no ALSA or pulse variables but the session's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "PI_AGENT_", "ALSA_"))}
    env.update(session.client_env, PI_AGENT_AUDIO__INPUT_DEVICE="default", PI_AGENT_AUDIO__OUTPUT_DEVICE="default")
    env.update(settings)
    return env


def test_devices_lists_the_desktops_default_at_16k(pipewire: PipeWireSession) -> None:
    out = subprocess.run([PI_AGENT, "devices"], env=cli_env(pipewire), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    row = next(r for r in out.stdout.splitlines() if r.rstrip().endswith("[default input, default output]"))
    assert row.split()[3:5] == ["yes", "yes"], row  # opens for 16 kHz capture and playback


async def test_check_passes_through_pipewire(pipewire: PipeWireSession) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = cli_env(pipewire, PI_AGENT_AGENT_ID="agent_pipewire", PI_AGENT_SERVER_URL=agent.http_url)
        proc = await asyncio.create_subprocess_exec(PI_AGENT, "check", env=env, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    out = stdout.decode()
    assert proc.returncode == 0, out + stderr.decode()
    assert "[ ok ] microphone: microphone 'default' delivers 16 kHz frames" in out
    assert "[ ok ] speaker: speaker 'default' opens" in out
    assert "all checks passed" in out


async def test_check_outside_the_desktop_session_says_where_default_goes(pipewire: PipeWireSession,
                                                                        tmp_path: Path) -> None:
    """The same check by a process outside the desktop user's session (another user, the
    system service, a shell without its XDG_RUNTIME_DIR): 'default' is not there, and check says
    why in one line, after the lines it always printed."""
    elsewhere = tmp_path / "run"
    elsewhere.mkdir(mode=0o700)
    env = cli_env(pipewire, PI_AGENT_AGENT_ID="agent_pipewire", PI_AGENT_SERVER_URL="http://127.0.0.1:9",
                  XDG_RUNTIME_DIR=str(elsewhere))
    out = subprocess.run([PI_AGENT, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith(("[FAIL] microphone", "[FAIL] speaker"))]
    assert len(failed) == 2, out.stdout
    for i in failed:
        assert "there is no default" in lines[i]
        hint = next(line for line in lines[i + 1:] if "no sound server answers" in line)
        assert f"no {elsewhere}/pulse/native" in hint and "--desktop-user" in hint and "--own-card" in hint


async def test_a_conversation_through_pipewire(pipewire: PipeWireSession, tmp_path: Path) -> None:
    """The daemon hears the user through PipeWire and plays the agent's reply through it: the
    question reaches the agent whole, the reply's two tones come out of the desktop's sink at
    their pitch and length."""
    speech = question()
    opts = FakeAgentOptions(port=0, transcript="What is the weather like?", reply_wav=str(tone_reply(tmp_path)))
    async with FakeAgent(opts) as agent:
        env = cli_env(pipewire, PI_AGENT_AGENT_ID="agent_pipewire", PI_AGENT_SERVER_URL=agent.http_url,
                      PI_AGENT_SESSION__POLICY="persistent", PI_AGENT_CAPTURE__MODE="vad")
        async with audio_daemon(env, tmp_path) as (d, events):
            record = await connected(agent, events)
            clients = pipewire.pactl("list", "short", "clients").stdout
            assert "pi-agent" in clients or "python" in clients, clients  # the daemon is PipeWire's client
            mic_file = tmp_path / "question.raw"
            speech.astype("<i2").tofile(mic_file)
            recording = pipewire.record_speaker()
            recording.wait_started()
            try:
                player = pipewire.play_into_mic(mic_file)
                await events.wait_for(lambda e: e.get("type") == "user_transcript", 20, "the user transcript")
                await asyncio.to_thread(player.wait, 10)
                await events.wait_state("speaking", 15)
                await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 15,
                                      "the reply's end")
                await asyncio.sleep(0.3)
            finally:
                recorded = recording.stop()
    heard = user_audio(record)
    _lag, score = locate(heard, speech)
    x = recorded[:, 0]
    segments = loud_segments(x, SPK_RATE)
    found = [(round(dominant_frequency(x[s + 480 : e - 480], SPK_RATE), 1), round((e - s) / SPK_RATE, 3))
             for s, e in segments]
    report("pipewire_conversation", question_correlation=round(score, 4), reply_tones_hz_s=found,
           speaker=d.log.split("speaker 'default' open: ", 1)[-1].split("\n", 1)[0])
    assert score > 0.95, score  # the whole question (resampled by PipeWire's 48 kHz graph: not bit for bit)
    assert len(segments) == 2, segments
    for (pitch, length), (freq, seconds) in zip(found, (TONES[0], TONES[2]), strict=True):
        assert freq is not None
        assert abs(pitch - freq) < freq * 0.005, (pitch, freq)
        assert abs(length - seconds) <= 0.03, (length, seconds)


# ------------------------------------------------------------------ a card a sound server holds


def test_check_names_the_sound_server_that_holds_the_card(pipewire: PipeWireSession, tmp_path: Path) -> None:
    """A PCM node held open by the real pipewire-pulse (its pipe sink's FIFO, named as ALSA names a
    card's PCM): the hint names the process, says it is the desktop's sound server, and gives the
    fix with the card's id as /proc/asound would give it."""
    snd = tmp_path / "snd"
    snd.mkdir()
    asound = tmp_path / "asound"
    (asound / "card1").mkdir(parents=True)
    (asound / "card1" / "id").write_text("seeed2micvoicec\n")
    module = pipewire.pactl("load-module", "module-pipe-sink", f"file={snd / 'pcmC1D0p'}", "sink_name=held")
    try:
        found, _hidden = holders(snd)
        server = pipewire.pid("pipewire-pulse")
        assert [(h.pid, h.name, h.device) for h in found] == [(server, "pipewire-pulse", "pcmC1D0p")]
        for failure in (BUSY, "no output device matches 'seeed'"):  # PortAudio may just not list a held card
            hint = busy_hint(failure, dev_dir=snd, asound=asound)
            assert hint is not None and "\n" not in hint
            assert f"held by pipewire-pulse (pid {server}, user " in hint
            assert "the desktop's sound server" in hint
            assert "scripts/install.sh --own-card seeed2micvoicec" in hint and "--desktop-user" in hint
    finally:
        pipewire.pactl("unload-module", module.stdout.strip(), check=False)
    # Let go: a failure that does not say "busy" gets no hint; one that does says how to look.
    assert busy_hint("no output device matches 'seeed'", dev_dir=snd, asound=asound) is None
    assert "sudo fuser -v" in (busy_hint(BUSY, dev_dir=snd, asound=asound) or "")


def test_a_sound_server_with_only_controls_open_is_named(pipewire: PipeWireSession) -> None:
    """The real pipewire process holds a node that is no PCM (its lock file, standing in for a
    card's control node, which PipeWire keeps open while the PCM is suspended)."""
    hint = busy_hint(BUSY, dev_dir=pipewire.run_dir)
    assert hint is not None and hint.startswith("pipewire has the card's controls open"), hint


# ------------------------------------------------------------------ the shipped files


def test_wireplumber_04_takes_the_shipped_card_rule(tmp_path: Path) -> None:
    """The real WirePlumber (Debian 12's 0.4) runs the rule from a config directory as it would
    from /etc/wireplumber: a probe that runs after it prints the ALSA rules WirePlumber holds.
    (No card here: that the rule then disables a card is WirePlumber's alsa.lua, read, not run.)"""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    version = wireplumber_version()
    if version[:2] != (0, 4):
        pytest.skip(f"WirePlumber {'.'.join(map(str, version))} is installed: the Lua rule is 0.4's (0.5 reads "
                    "51-pi-agent-card.conf, tested below)")
    config = tmp_path / "config"
    lua_dir = config / "wireplumber" / "main.lua.d"
    lua_dir.mkdir(parents=True)
    rule = (REPO / "contrib/wireplumber/51-pi-agent-card.lua").read_text().replace("@CARD@", "seeed2micvoicec")
    (lua_dir / "51-pi-agent-card.lua").write_text(rule)
    (lua_dir / "52-probe.lua").write_text(
        'for _, r in ipairs(alsa_monitor.rules) do for _, group in ipairs(r.matches) do for _, c in ipairs(group) do\n'
        '  print("RULE", c[1], c[2], c[3], tostring(r.apply_properties["device.disabled"]))\n'
        'end end end\n')
    session = PipeWireSession(tmp_path / "wp", wireplumber_config=config)
    try:
        session.start()
    finally:
        session.stop()
    log = (session.root / "wireplumber.log").read_text()
    rules = [line.split("\t")[1:] for line in log.splitlines() if line.startswith("RULE")]
    assert ["api.alsa.card.id", "equals", "seeed2micvoicec", "true"] in rules, log
    assert ["api.alsa.card.name", "equals", "seeed2micvoicec", "true"] in rules, log
    assert any(r[0] == "device.name" for r in rules), log  # Debian's own rules are still there beside it


def test_wireplumber_05_takes_the_shipped_card_rule(tmp_path: Path) -> None:
    """The real WirePlumber 0.5 (Debian 13, Pi OS Trixie) reads the .conf rule from a config
    directory as it would from /etc/wireplumber: a probe script, added to its profile by a
    fragment of its own, prints the ALSA rules WirePlumber holds, as its alsa.lua reads them."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    version = wireplumber_version()
    if version[:2] < (0, 5):
        pytest.skip(f"WirePlumber {'.'.join(map(str, version))} is installed: the .conf rule is 0.5's (its "
                    "parse is tested below; the Lua rule above)")
    config = tmp_path / "config"
    conf_dir = config / "wireplumber" / "wireplumber.conf.d"
    conf_dir.mkdir(parents=True)
    rule = (REPO / "contrib/wireplumber/51-pi-agent-card.conf").read_text().replace("@CARD@", "seeed2micvoicec")
    (conf_dir / "51-pi-agent-card.conf").write_text(rule)
    (conf_dir / "52-probe.conf").write_text(
        "wireplumber.components = [\n"
        "  { name = pi-agent-probe.lua, type = script/lua, provides = custom.pi-agent-probe }\n"
        "]\n"
        "wireplumber.profiles = {\n  main = { custom.pi-agent-probe = required }\n}\n")
    session = PipeWireSession(tmp_path / "wp", wireplumber_config=config)
    scripts = Path(session.env["XDG_DATA_HOME"]) / "wireplumber" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "pi-agent-probe.lua").write_text(
        'local text = Conf.get_section_as_json("monitor.alsa.rules", Json.Array {}):to_string():gsub("\\n", " ")\n'
        'print("RULES " .. text)\n')
    try:
        session.start()
    finally:
        session.stop()
    log = (session.root / "wireplumber.log").read_text()
    printed = [line.removeprefix("RULES ") for line in log.splitlines() if line.startswith("RULES ")]
    assert printed, log
    (tmp_path / "rules.json").write_text(printed[0])
    rules = json.loads(subprocess.run(["spa-json-dump", str(tmp_path / "rules.json")], capture_output=True,
                                      text=True, check=True, timeout=30).stdout)
    assert {"matches": [{"api.alsa.card.id": "seeed2micvoicec"}, {"api.alsa.card.name": "seeed2micvoicec"}],
            "actions": {"update-props": {"device.disabled": True}}} in rules, rules


def test_wireplumber_05_rule_parses_to_the_disabling_rule(tmp_path: Path) -> None:
    """0.5's file (Debian 13, Pi OS Trixie) in PipeWire's own SPA-JSON parser."""
    tool = shutil.which("spa-json-dump")
    if tool is None:
        pytest.skip("spa-json-dump not installed (Debian: pipewire-bin)")
    conf = tmp_path / "51-pi-agent-card.conf"
    conf.write_text((REPO / "contrib/wireplumber/51-pi-agent-card.conf").read_text().replace("@CARD@", "vc"))
    parsed = json.loads(subprocess.run([tool, str(conf)], capture_output=True, text=True, check=True,
                                       timeout=30).stdout)
    assert parsed == {"monitor.alsa.rules": [{
        "matches": [{"api.alsa.card.id": "vc"}, {"api.alsa.card.name": "vc"}],
        "actions": {"update-props": {"device.disabled": True}},
    }]}


def test_the_user_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    result = subprocess.run([analyze, "--user", "verify", str(REPO / "systemd/pi-agent-user.service")],
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # The one complaint: the program is not installed on this machine (as for the system unit).
    assert complaints == ["pi-agent-user.service: Command /opt/pi-agent/venv/bin/pi-agent is not executable: "
                          "No such file or directory"], complaints


# ------------------------------------------------------------------ the user unit under a real user manager

USER_MANAGER = Path("/lib/systemd/systemd")
MASKED = ("pipewire.socket", "pipewire.service", "pipewire-pulse.socket", "pipewire-pulse.service",
          "wireplumber.service", "dbus.socket", "dbus.service")  # the session's own stand in for them


@contextlib.contextmanager
def user_manager(session: PipeWireSession, settings: dict[str, str]) -> Iterator[Callable[..., str]]:
    """A real systemd user manager for the session's runtime directory, with the shipped user unit
    (``systemd/pi-agent-user.service``, unchanged) and a drop-in that points ExecStart at this
    checkout's pi-agent and gives it ``settings``, as a local drop-in would. systemd will not run
    a user manager on a machine it did not boot; in a mount namespace of its own it is given the
    /run/systemd/system it looks for. Unit search path: the test's units, then Debian's (not
    /etc/systemd/user, whose global enablements would start PulseAudio); Debian's PipeWire units
    are masked: the session stands in for them. Yields ``systemctl --user ...``."""
    for tool in ("unshare", "systemctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian: util-linux, systemd)")
    if not USER_MANAGER.exists():
        pytest.skip(f"{USER_MANAGER} missing (Debian: systemd)")
    if os.geteuid() != 0:
        pytest.skip("needs root: a mount namespace for the user manager (unshare --mount)")
    units = session.root / "units"
    units.mkdir()
    for unit in MASKED:
        (units / unit).symlink_to("/dev/null")
    shutil.copy(REPO / "systemd/pi-agent-user.service", units / "pi-agent.service")
    (units / "pi-agent.service.d").mkdir()
    (units / "pi-agent.service.d" / "test.conf").write_text(
        "[Service]\nExecStart=\n" f"ExecStart={PI_AGENT} run\n"
        + "".join(f"Environment={k}={v}\n" for k, v in settings.items()))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": session.env["HOME"],
           "XDG_RUNTIME_DIR": str(session.run_dir), "XDG_CONFIG_HOME": session.env["XDG_CONFIG_HOME"],
           "SYSTEMD_UNIT_PATH": f"{units}:/usr/lib/systemd/user:/lib/systemd/user"}
    log = open(session.root / "user-manager.log", "wb")  # noqa: SIM115 (the manager writes to it)
    manager = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec {USER_MANAGER} --user"],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()

    def systemctl(*args: str, check: bool = True) -> str:
        out = subprocess.run(["systemctl", "--user", *args], env=env, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"systemctl --user {' '.join(args)}: {out.returncode} {out.stdout}{out.stderr}\n"
                                 + (session.root / "user-manager.log").read_text(errors="replace")[-2000:])
        return out.stdout

    try:
        deadline = time.monotonic() + 15
        while not (session.run_dir / "systemd" / "private").exists():
            assert manager.poll() is None, (session.root / "user-manager.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "the user manager did not come up"
            time.sleep(0.05)
        yield systemctl
    finally:
        manager.terminate()
        try:
            manager.wait(timeout=15)
        except subprocess.TimeoutExpired:
            manager.kill()
            manager.wait(timeout=5)


async def test_the_user_unit_plays_a_reply_through_pipewire(tmp_path: Path) -> None:
    """Way 2 as installed: the shipped user unit, started by a real user manager, with its
    hardening (seccomp filter, no new privileges) in force: systemd hears READY=1 and the
    daemon's status, the event API is at $XDG_RUNTIME_DIR/pi-agent/api.sock, a reply plays
    through PipeWire at its pitch, and a stop ends it. The agent is private: the daemon has its
    key only from where the unit says (~/.config/pi-agent/credentials/api_key, platforms.md)."""
    opts = FakeAgentOptions(port=0, reply_wav=str(tone_reply(tmp_path)), api_key="sk_user_unit_only_in_the_file")
    with started_session(tmp_path / "pw") as session:
        credentials = Path(session.env["XDG_CONFIG_HOME"]) / "pi-agent" / "credentials"
        credentials.mkdir(parents=True, mode=0o700)
        (credentials / "api_key").write_text("sk_user_unit_only_in_the_file\n")
        (credentials / "api_key").chmod(0o600)
        async with FakeAgent(opts) as agent:
            settings = {"PI_AGENT_CONFIG": "", "ALSA_CONFIG_PATH": str(session.alsa_conf),
                        "PI_AGENT_AGENT_ID": "agent_user_unit", "PI_AGENT_SERVER_URL": agent.http_url,
                        "PI_AGENT_SESSION__POLICY": "persistent"}
            with user_manager(session, settings) as systemctl:
                await asyncio.to_thread(systemctl, "start", "pi-agent")  # Type=notify: returns once READY=1
                assert systemctl("is-active", "pi-agent").strip() == "active"
                pid = int(systemctl("show", "-p", "MainPID", "--value", "pi-agent"))
                status = Path(f"/proc/{pid}/status").read_text()
                assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status, status
                socket = session.run_dir / "pi-agent" / "api.sock"
                async with EventClient(socket) as events:
                    await connected(agent, events)
                    recording = session.record_speaker()
                    recording.wait_started()
                    try:
                        await events.send({"type": "say", "text": "play the tones"})
                        await events.wait_state("speaking", 15)
                        await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking",
                                              15, "the reply's end")
                        await asyncio.sleep(0.3)
                    finally:
                        recorded = recording.stop()
                status_text = systemctl("show", "-p", "StatusText", "--value", "pi-agent")
                await asyncio.to_thread(systemctl, "stop", "pi-agent")
                assert systemctl("is-active", "pi-agent", check=False).strip() == "inactive"
    x = recorded[:, 0]
    segments = loud_segments(x, SPK_RATE)
    found = [round(dominant_frequency(x[s + 480 : e - 480], SPK_RATE), 1) for s, e in segments]
    report("user_unit", status_text=status_text.strip(), reply_tones_hz=found)
    assert status_text.startswith("state:"), status_text
    assert len(segments) == 2, segments
    for pitch, (freq, _seconds) in zip(found, (TONES[0], TONES[2]), strict=True):
        assert freq is not None and abs(pitch - freq) < freq * 0.005, (pitch, freq)


# ------------------------------------------------------------------ what the way through PipeWire costs


async def test_barge_in_through_pipewire(pipewire: PipeWireSession, tmp_path: Path) -> None:
    """full_duplex: the user talks over a long reply; from the interruption the desktop's sink
    goes silent within BARGE_IN_PIPEWIRE (PulseAudio rig: 30 ms; measured here through PipeWire's
    pulse server, whose own buffer the aborted stream cannot take back)."""
    long_tone = write_wav(tmp_path / "long.wav", tone(600, 4.0, 16_000), 16_000)
    async with FakeAgent(FakeAgentOptions(port=0, reply_wav=str(long_tone), reply_delay=1.5)) as agent:
        env = cli_env(pipewire, PI_AGENT_AGENT_ID="agent_pipewire", PI_AGENT_SERVER_URL=agent.http_url,
                      PI_AGENT_SESSION__POLICY="persistent", PI_AGENT_CAPTURE__MODE="vad",
                      PI_AGENT_AUDIO__ECHO="full_duplex")
        async with audio_daemon(env, tmp_path) as (d, events):
            record = await connected(agent, events)
            servers = ("pipewire", "pipewire-pulse", "wireplumber")
            cpu_before = {name: cpu_seconds(pipewire.pid(name)) for name in servers}
            assert d.proc is not None
            cpu_before["pi-agent"], started = cpu_seconds(d.proc.pid), time.monotonic()
            recording = TimedRecording(pipewire, "spk.monitor", tmp_path)  # type: ignore[arg-type]
            mic_file = tmp_path / "question.raw"
            question().astype("<i2").tofile(mic_file)
            player = None
            try:
                await events.send({"type": "say", "text": "tell me a long story"})
                await events.wait_state("speaking", 10)
                await asyncio.sleep(1.0)
                before = len(events.events)
                player = pipewire.play_into_mic(mic_file)
                await events.wait_for(lambda e: e.get("type") == "interruption"
                                      and events.events.index(e) >= before, 10, "the interruption")
                await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 5,
                                      "the reply's end")
                await asyncio.sleep(1.0)
            finally:
                recorded = recording.stop()
                if player is not None:
                    await asyncio.to_thread(player.wait, 10)
            latency = speaker_latency(d)
            elapsed = time.monotonic() - started
            cpu = {name: (cpu_seconds(d.proc.pid if name == "pi-agent" else pipewire.pid(name)) - used) / elapsed
                   for name, used in cpu_before.items()}
    turn = record.turns[0]
    [barge_in] = [s for s in record.sent_of("interruption")
                  if s.message["interruption_event"]["event_id"] == turn.interruption_id]
    x = recorded[:, 0]
    window_end = recording.index_at(barge_in.t + 1.0)
    loud = np.nonzero(np.abs(x[:window_end].astype(np.int32)) > 100)[0]
    assert len(loud) > 0
    first_heard, last_heard = float(recording.time_of(loud[0])), float(recording.time_of(loud[-1]))
    after_sent = last_heard - barge_in.t
    report("pipewire_barge_in", speaker_latency_s=latency, silent_after_interruption_sent_s=round(after_sent, 4),
           tone_played_s=round(last_heard - first_heard, 3), recorder_typical_delay_s=round(recording.typical_delay, 4),
           cpu_share_of_a_core={name: round(share, 3) for name, share in cpu.items()})
    assert 0.8 <= last_heard - first_heard < 3.0  # the reply was playing, and was cut
    assert after_sent <= BARGE_IN_PIPEWIRE, after_sent
