"""The admin's diagnostics: pi-agent check, test-leds, test-mic, test-speaker, devices."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
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
