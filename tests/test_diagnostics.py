"""The admin's diagnostics: pi-agent check, test-leds, test-mic, test-speaker, devices; the echo
analysis test-mic --echo shares with scripts/aec_compare.py; the engine and session check builds."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from pi_agent.audio import MIC_RATE
from pi_agent.audio.echo_analysis import delay, erle_db, match
from pi_agent.config import Settings
from pi_agent.diagnostics import echo_signal, judge_echo
from pi_agent.diagnostics.echo import ECHO_LAGS, ECHO_QUIET
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from pi_agent.net.conversation import build_conversation
from .support_daemon import QUESTION_WAV, free_port

CANARY = "sk_canary_diag_123456789"


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pi_agent.cli", *args,
                                                env={**base, "GPIOZERO_PIN_FACTORY": "mock", **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def wav_env(tmp: Path) -> dict[str, str]:
    return {"PI_AGENT_AUDIO__INPUT_WAV": str(QUESTION_WAV), "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "o.wav")}


async def test_check_passes_against_a_reachable_agent_with_a_key(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        code, out = await cli("check", env={"PI_AGENT_AGENT_ID": "a", "PI_AGENT_SERVER_URL": agent.http_url,
                                            "PI_AGENT_API_KEY": CANARY, "PI_AGENT_LEDS__ACTIVITY_PIN": "6",
                                            "PI_AGENT_BUTTON__PIN": "17", **wav_env(tmp_path)})
        assert code == 0, out
        assert agent.latest is not None and agent.latest.close_code == 1000
    for what in ("config", "microphone", "speaker", "gpio", "agent"):
        assert f"[ ok ] {what}:" in out, out
    assert "signed URL fetched" in out and CANARY not in out


async def test_check_fails_with_one_line_per_failure(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key="another-key")) as agent:
        code, out = await cli("check", env={"PI_AGENT_AGENT_ID": "a", "PI_AGENT_SERVER_URL": agent.http_url,
                                            "PI_AGENT_API_KEY": CANARY, **wav_env(tmp_path)})
    assert code == 1
    assert "[FAIL] agent: signed URL request failed: HTTP 401" in out and CANARY not in out
    code, out = await cli("check", env={"PI_AGENT_AGENT_ID": "a",
                                        "PI_AGENT_SERVER_URL": f"http://127.0.0.1:{free_port()}",
                                        "PI_AGENT_AUDIO__INPUT_DEVICE": "no-such-mic",
                                        "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp_path / "o.wav")})
    assert code == 1 and "[FAIL] microphone:" in out and "no-such-mic" in out and "[FAIL] agent: cannot connect" in out
    assert "Traceback" not in out


async def test_test_leds_cycles_every_state_and_ends_dark() -> None:
    code, out = await cli("test-leds", "--seconds", "0.01", env={"PI_AGENT_AGENT_ID": "a",
                                                                  "PI_AGENT_LEDS__CONNECTION_PIN": "5",
                                                                  "PI_AGENT_LEDS__ACTIVITY_PIN": "6"})
    assert code == 0, out
    for state in ("connecting", "idle", "listening", "thinking", "speaking", "muted", "offline", "error"):
        assert f"{state}: connection=" in out, out
    assert out.strip().endswith("all LEDs off")


async def test_test_mic_reports_level_and_speech(tmp_path: Path) -> None:
    code, out = await cli("test-mic", "--seconds", "2", "--play", env={"PI_AGENT_AGENT_ID": "a", **wav_env(tmp_path)})
    assert code == 0, out
    assert "speech detected" in out and "dBFS" in out
    assert (tmp_path / "o.wav").exists()


async def test_test_speaker_plays_a_tone(tmp_path: Path) -> None:
    import wave

    import numpy as np
    code, out = await cli("test-speaker", "--seconds", "0.5", "--freq", "1000",
                          env={"PI_AGENT_AGENT_ID": "a", **wav_env(tmp_path)})
    assert code == 0, out
    with wave.open(str(tmp_path / "o.wav"), "rb") as w:
        rate, data = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    spectrum = np.abs(np.fft.rfft(data.astype(float)))
    assert abs(np.argmax(spectrum) * rate / len(data) - 1000) < 10


# --- the echo analysis and the conversation builder (in-process) ------------------------------------


def late(x: np.ndarray, lag: int) -> np.ndarray:
    """``x`` ``lag`` samples later (earlier if negative), silence where it has nothing."""
    out = np.zeros_like(x)
    if lag >= 0:
        out[lag:] = x[: len(x) - lag]
    else:
        out[:lag] = x[-lag:]
    return out


def echo_scene(lag: int, gain: float, cancelled_by: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(mic, reference, cleaned) of test-mic --echo: the test signal after ECHO_QUIET, heard ``lag``
    samples late at ``gain``, over a little noise; cleaned: the mic ``cancelled_by`` dB quieter."""
    reference = np.concatenate([np.zeros(int(ECHO_QUIET * MIC_RATE), "<i2"), echo_signal(5.0)])
    noise = np.random.default_rng(1).normal(0, 10, len(reference))
    mic = (late(reference.astype(float), lag) * gain + noise).astype("<i2")
    cleaned = None if cancelled_by is None else (mic * 10 ** (-cancelled_by / 20)).astype("<i2")
    return mic, reference, cleaned


def test_the_echo_delay_is_found_late_or_early_and_inverted() -> None:
    for lag in (0, 800, -800, 12_000):
        mic, reference, _ = echo_scene(lag, -0.3, None)
        assert delay(mic, reference, ECHO_LAGS) == lag


def test_judge_echo_says_whether_aec_will_work() -> None:
    assert judge_echo(*echo_scene(800, 0.3, 30)).verdict == 'aec will work: set audio.echo = "aec"'
    report = judge_echo(*echo_scene(800, 0.3, 15))
    assert not report.ok and report.delay_ms == 50 and "only part of the echo" in report.verdict
    assert "aec will not work" in judge_echo(*echo_scene(9600, 0.3, 30)).verdict  # 600 ms late
    assert "not installed" in judge_echo(*echo_scene(800, 0.3, None)).verdict
    quiet = judge_echo(*echo_scene(800, 0.0, None))
    assert quiet.ok and "does not hear the speaker" in quiet.verdict


def test_match_and_erle_measure_what_a_canceller_kept_and_removed() -> None:
    voice = np.random.default_rng(2).normal(0, 1000, 4 * MIC_RATE)
    out = late(voice, 160) * 0.5  # 10 ms late, 6 dB down
    m = match(out, voice, (MIC_RATE, 3 * MIC_RATE), MIC_RATE)
    assert m.lag_ms == 10 and m.corr > 0.999 and abs(m.level_db + 6.02) < 0.01
    assert abs(erle_db(voice, voice / 100) - 40) < 1e-9


def test_one_builder_gives_the_daemon_and_check_their_engine_and_session() -> None:
    settings = Settings(agent_id="a", session={"policy": "persistent"})  # type: ignore[arg-type]
    engine, session = build_conversation(settings, on_event=lambda event: None)
    assert engine.persistent and session.engine is engine
    engine, _ = build_conversation(settings, on_event=lambda event: None, policy="on_demand")
    assert not engine.persistent and engine.settings == replace(settings.session.engine_settings(), policy="on_demand")
