"""Echo cancellation in-process: the far-end reference on the output clock, and AEC3 on a synthetic room.

The far end is checked sample for sample (where is what the speaker played, on the
monotonic clock); the canceller is fed a room made of a delay and a reverberant impulse
response, frame by frame as the microphone's callback feeds it.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import wave

import numpy as np
import pytest

from pi_agent.audio import FRAME_SAMPLES, MIC_RATE
from pi_agent.audio.echo import MAX_WAIT, EchoCanceller, FarEnd, FrameClock, unavailable
from pi_agent.audio.formats import resample

needs_aec = pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}")


def noise(seconds: float, rate: int, seed: int, level: float = 6000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, int(seconds * rate)), -32767, 32767).astype(np.int16)


def play(far: FarEnd, signal: np.ndarray, rate: int, start: float, period: int, channels: int = 2) -> None:
    """Hand ``signal`` to ``far`` as a speaker callback would: period by period, heard from ``start``."""
    for i in range(0, len(signal) - period + 1, period):
        chunk = np.repeat(signal[i : i + period, None], channels, axis=1)
        far.played(chunk, rate, start + i / rate)


def test_the_far_end_is_what_played_at_the_time_it_was_heard() -> None:
    far = FarEnd()
    x48 = noise(2.0, 48_000, 1)
    play(far, x48, 48_000, start=100.0, period=480)
    x16 = resample(x48, 48_000, MIC_RATE)
    got = far.read(100.5, MIC_RATE)  # the second from 100.5 s to 101.5 s
    want = x16[MIC_RATE // 2 : MIC_RATE // 2 + MIC_RATE]
    lags = np.arange(-5, 6)
    corr = [np.corrcoef(got[10:-10], np.roll(want, lag)[10:-10])[0, 1] for lag in lags]
    assert lags[int(np.argmax(corr))] == 0 and max(corr) > 0.99, corr  # aligned to the sample


def test_the_far_end_is_silence_where_nothing_played_and_after_a_pause() -> None:
    far = FarEnd()
    assert not far.read(5.0, 320).any()  # nothing played yet
    tone = noise(0.5, MIC_RATE, 2)
    play(far, tone, MIC_RATE, start=10.0, period=160, channels=1)
    play(far, tone, MIC_RATE, start=12.0, period=160, channels=1)  # the stream paused for 1.5 s
    assert not far.read(10.6, MIC_RATE).any()  # the pause reads as silence
    assert np.array_equal(far.read(12.0, 160), tone[:160])
    assert np.array_equal(far.read(10.0, 160), tone[:160])
    assert not far.read(12.5, 320).any()  # not played (yet): silence
    assert not far.read(1.0, 320).any()  # older than anything kept


def test_the_far_end_keeps_a_few_seconds() -> None:
    far = FarEnd(seconds=1.0)
    x = noise(3.0, MIC_RATE, 3)
    play(far, x, MIC_RATE, start=0.0, period=160, channels=1)
    assert not far.read(0.5, 160).any()  # forgotten
    assert np.array_equal(far.read(2.5, 160), x[40_000:40_160])


def room(far: np.ndarray, delay: float, seed: int) -> np.ndarray:
    """The echo of ``far`` at the microphone: a delay, a reverberant tail (RT60 ~0.2 s), -6 dB."""
    rng = np.random.default_rng(seed)
    n = int(0.2 * MIC_RATE)
    ir = rng.normal(0, 1, n) * np.exp(-6.9 * np.arange(n) / n) * 0.05
    ir[0] = 0.5
    echo = np.convolve(far.astype(np.float64), ir)[: len(far)]
    d = int(delay * MIC_RATE)
    return np.concatenate([np.zeros(d), echo[: len(far) - d]])


def speech(text: str, voice: str) -> np.ndarray:
    """espeak-ng at 16 kHz (skips the test where it is missing)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True,
                         timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return resample(x, rate, MIC_RATE)


def lagged_correlation(got: np.ndarray, want: np.ndarray, max_lag: int = 800) -> tuple[float, int]:
    """The best normalised correlation of ``got`` with ``want`` over lags 0..max_lag (the canceller's delay)."""
    n = len(want) - max_lag
    scores = [(float(np.corrcoef(got[lag : lag + n], want[:n])[0, 1]), lag) for lag in range(0, max_lag, 8)]
    return max(scores)


@pytest.mark.slow
@needs_aec
@pytest.mark.parametrize("delay", [0.0, 0.03, 0.12])
def test_the_canceller_removes_the_echo_and_keeps_the_voice(delay: float) -> None:
    """The agent's reply from the speaker, its echo at the mic; later the user talks over it."""
    reply = " ".join(["The museum opens at nine and closes at six, every day but Monday."] * 3)
    speaker = np.tile(speech(reply, "en-us"), 2)[: 16 * MIC_RATE]
    seconds = len(speaker) / MIC_RATE
    user = np.zeros(len(speaker))
    said = speech("Stop, I have another question about the tickets.", "en-gb-x-rp").astype(np.float64) * 0.7
    talk_at = int((seconds - 4) * MIC_RATE)
    user[talk_at : talk_at + len(said)] = said[: len(user) - talk_at]
    mic = np.clip(room(speaker, delay, 7) + user + noise(seconds, MIC_RATE, 8, level=10), -32767, 32767)
    mic = mic.astype(np.int16)
    far = FarEnd()
    aec = EchoCanceller(far)
    t0, ahead = 50.0, 2 * FRAME_SAMPLES  # the speaker's callback runs 40 ms ahead of the speaker
    play(far, speaker[:ahead], MIC_RATE, t0, FRAME_SAMPLES, channels=1)
    out = []
    for i in range(0, len(mic) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        at = t0 + i / MIC_RATE
        far.played(speaker[i + ahead : i + ahead + FRAME_SAMPLES], MIC_RATE, at + ahead / MIC_RATE)
        out.extend(np.frombuffer(f, dtype="<i2") for f in aec.push(mic[i : i + FRAME_SAMPLES].tobytes(), at))
    cleaned = np.concatenate(out).astype(np.float64)

    def power(x: np.ndarray, a: float, b: float) -> float:
        return float(np.mean(x[int(a * MIC_RATE) : int(b * MIC_RATE)].astype(np.float64) ** 2))

    attenuation = 10 * np.log10(power(mic, 3, seconds - 4) / power(cleaned, 3, seconds - 4))
    kept, lag = lagged_correlation(cleaned[talk_at:], user[talk_at : len(cleaned)])  # the last frame may wait
    print(f"\nMEASURED aec delay={delay}: attenuation={attenuation:.1f} dB, double-talk correlation={kept:.2f} "
          f"at {lag / 16:.0f} ms, running estimate {aec.attenuation_db:.1f} dB")
    assert attenuation >= 20, attenuation  # the speaker alone: the echo is 20 dB down or more
    assert kept >= 0.6, kept  # double talk: the user's words come through
    assert lag <= 0.02 * MIC_RATE  # ... with little added delay
    assert aec.attenuation_db is not None and aec.attenuation_db > 10


def test_the_frame_clock_finds_the_capture_times_and_holds_them_under_late_and_batched_arrivals() -> None:

    clock = FrameClock()
    rng = np.random.default_rng(9)
    start, latency = 100.0, 0.025  # the first sample at 100 s; each frame arrives >= 25 ms after its end
    errors = []
    for n in range(1000):
        end = start + (n + 1) * 0.02
        late = latency + (rng.exponential(0.01) if n % 10 else 0.0)  # jitter, and every tenth on time
        if 200 <= n < 300:
            late += 0.02 * (9 - n % 10)  # batches of ten frames, all arriving with the last
        errors.append(clock.stamp(end + late) - (start + n * 0.02))
    settled = np.array(errors[20:])
    assert np.all(settled >= 0)  # never earlier than the truth: the echo's reference must not come late
    assert np.all(settled <= latency + 0.001), settled.max()  # the device's own latency, and no more
    assert clock.jumps == 0 and np.ptp(settled) < 1e-9  # and it never moved: the reference stays put
    # Frames lost (100 ms): within two windows the clock follows, in one step.
    follow = 1005 + round(2 * FrameClock.WINDOW / 0.02) + 1
    for n in range(1005, follow):
        clock.stamp(start + (n + 1) * 0.02 + latency)
    assert abs(clock.stamp(start + (follow + 1) * 0.02 + latency) - (start + follow * 0.02)) <= latency + 0.001
    assert clock.jumps == 1
    assert abs(clock.stamp(500.0) - 499.98) < 1e-9  # a reopened stream starts afresh


def test_while_an_echo_is_cancelled_the_frame_clock_holds_its_first_seconds_refinement() -> None:
    """In its first second the clock moves to every tighter bound; a move of a few ms while the
    canceller works on an echo costs a second of echo, so then it waits (the estimate stays a
    little late, the safe side), unless the lead grew beyond LEAD_LIMIT."""
    def clock_after(hold: bool, early_by: float) -> tuple[float, float]:
        clock = FrameClock()
        first = clock.stamp(100.03, hold=hold)  # arrives 10 ms late: the estimate starts 10 ms late
        for n in range(1, 20):
            clock.stamp(100.0 + (n + 1) * 0.02 + 0.01, hold=hold)
        return first, clock.stamp(100.0 + 21 * 0.02 + 0.01 - early_by, hold=hold) - 20 * 0.02

    assert clock_after(False, 0.008) == pytest.approx((100.01, 100.002))  # refined: 8 ms earlier
    assert clock_after(True, 0.008) == pytest.approx((100.01, 100.01))  # held: a leading reference
    assert clock_after(True, 0.03)[1] == pytest.approx(100.01)  # 30 ms: still held
    assert clock_after(True, 0.15)[1] == pytest.approx(99.86)  # 150 ms: a lead worth trimming at once


def test_while_an_echo_is_cancelled_the_frame_clock_moves_later_at_once_and_earlier_after_the_speaker() -> None:
    """After the first second: frames arriving 25 ms earlier than the estimate says (it was late)
    move it only once nothing is being cancelled; frames arriving 25 ms later (frames were lost:
    the reference would lag the echo, which cannot then be cancelled) move it at once."""
    def run(shift: float, hold_until: float) -> tuple[list[float], FrameClock]:
        clock = FrameClock()
        moved = []
        for n in range(1000):  # 20 s
            arrival = 100.0 + (n + 1) * 0.02 + (shift if n >= 100 else 0.0)
            at = clock.stamp(arrival, hold=arrival < hold_until)
            moved.append(at - (100.0 + n * 0.02))
        return moved, clock

    earlier, clock = run(-0.025, hold_until=110.0)
    assert clock.jumps == 1
    assert max(abs(e) for e in earlier[:500]) < 1e-9  # held through the reply (until 110 s)
    assert earlier[-1] == pytest.approx(-0.025) and earlier.index(earlier[-1]) < 700  # then followed
    later, clock = run(0.025, hold_until=math.inf)
    assert clock.jumps == 1 and later[-1] == pytest.approx(0.025)  # followed while cancelling
    assert later.index(later[-1]) < 100 + round(2 * FrameClock.WINDOW / 0.02)


@pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}")
def test_the_canceller_says_it_is_cancelling_from_the_replys_first_frame_to_a_second_after_it() -> None:
    far = FarEnd()
    play(far, np.concatenate([np.zeros(16_000, np.int16), noise(1.0, MIC_RATE, 14)]), MIC_RATE, 50.0, 320)
    canceller = EchoCanceller(far)
    seen = []
    for n in range(100):  # 2 s of frames: silence played for 1 s, then the reply
        at = 50.0 + n * 0.02
        canceller.push(noise(0.02, MIC_RATE, n, 100).tobytes(), at)
        seen.append(canceller.cancelling(at + 0.02))
    assert not any(seen[:49]) and all(seen[50:])  # the reference is read 10 ms ahead (AHEAD)
    assert canceller.cancelling(52.8) and not canceller.cancelling(53.0)  # ECHO_HOLD after the last cancelled
    canceller.reset()
    assert not canceller.cancelling(52.0)


def test_one_early_estimate_of_the_output_clock_does_not_move_the_reference() -> None:
    far = FarEnd()
    x = noise(3.0, MIC_RATE, 10)
    for i in range(0, len(x), 160):
        jitter = -0.035 if i == 16_000 else 0.0  # one period whose time is estimated 35 ms early
        far.played(x[i : i + 160], MIC_RATE, 20.0 + i / MIC_RATE + jitter)
    assert far.resyncs == 0
    assert np.array_equal(far.read(22.0, 320), x[32_000:32_320])
    early = FarEnd()  # a clock that stays early for good: followed after EARLY_WINDOW
    for i in range(0, len(x), 160):
        early.played(x[i : i + 160], MIC_RATE, 20.0 + i / MIC_RATE - (0.035 if i >= 8000 else 0.0))
    assert early.resyncs == 1
    assert np.array_equal(early.read(22.0 - 0.035, 320), x[32_000:32_320])


def test_a_young_streams_early_estimates_are_followed_at_once() -> None:
    """A new stream's first callbacks come at once and say their periods play "now"; the device
    has 60 ms of latency, so from the fourth callback on the estimates say 33 ms earlier than the
    periods counted from the first (as measured on the virtual card). The reference follows them at
    once, old samples moved along, so that it never lags the echo: it did for a second before, and
    a reply begun in that second leaked past the canceller."""
    far = FarEnd()
    x = noise(1.5, MIC_RATE, 13)
    truth = 40.0 - 0.033  # when the first period is really heard
    for k, i in enumerate(range(0, len(x), 320)):
        said = 40.0 + 0.002 * k if k < 3 else truth + i / MIC_RATE  # the first three: "now"
        far.played(x[i : i + 320], MIC_RATE, said)

    def lead_ms(at: float) -> float:
        """How much sooner than the truth the reference has the samples heard ``at`` s in."""
        n = round(at * MIC_RATE)
        ref = far.read(truth + at - 0.01, 640)
        hits = [j for j in range(320) if np.array_equal(ref[j : j + 320], x[n : n + 320])]
        assert hits, f"the samples heard {at} s in are not in the reference near then"
        return 10.0 - hits[0] / 16

    # Within 5 ms sooner than the truth (the third "now" was 3 ms early), never later: the
    # canceller finds a reference that leads the echo; one that lags it, it cannot use.
    leads = [lead_ms(at) for at in (0.1, 0.3, 1.0, 1.4)]  # in the young window and after it
    assert all(0 <= lead <= 5 for lead in leads), leads
    assert not far.read(truth + len(x) / MIC_RATE, 320).any()  # nothing stale after the end


def test_a_stopped_stream_drops_what_it_held_and_the_next_one_is_followed_at_once() -> None:
    """The speaker's stream is aborted (standby, an interruption) while it holds 180 ms it
    handed over for later: those were never played; the next stream, whose clock is earlier
    than what the old one handed over, is the reference at once (no early-clock window)."""
    far = FarEnd()
    x = noise(1.0, MIC_RATE, 11)
    for i in range(0, 9600, 160):  # 0.6 s handed over, heard from 30.0 s on
        far.played(x[i : i + 160], MIC_RATE, 30.0 + i / MIC_RATE)
    far.stopped(30.42)  # the last 180 ms never reached the speaker
    assert not far.read(30.42, 2880).any()
    assert np.array_equal(far.read(30.3, 160), x[4800:4960])
    y = noise(0.5, MIC_RATE, 12)
    for i in range(0, len(y), 160):  # the next sound, 50 ms after the stop
        far.played(y[i : i + 160], MIC_RATE, 30.47 + i / MIC_RATE)
    assert np.array_equal(far.read(30.47, 320), y[:320])
    assert not far.read(30.42, 800).any()


def test_a_frame_waits_for_a_late_speaker_and_not_for_a_stopped_one() -> None:
    class Echo:  # AEC3's stand-in: records what it is given
        def __init__(self) -> None:
            self.far: list[np.ndarray] = []

        def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
            self.far.append(far)
            return near

    far, engine = FarEnd(), Echo()
    aec = EchoCanceller(far, engine=engine)
    x = noise(1.0, MIC_RATE, 11)
    far.played(x[:320], MIC_RATE, 30.0)  # the speaker has handed over 30.00-30.02 s
    mic = noise(0.02, MIC_RATE, 12).tobytes()
    assert aec.push(mic, 30.0) == []  # its reference runs to 30.03 s: wait for the speaker
    far.played(x[320:640], MIC_RATE, 30.02)
    assert aec.push(mic, 30.02) == [mic]  # the first is ready now; the second waits
    assert np.abs(engine.far[0].astype(int) - x[160:480]).max() <= 1  # the whole reference, no hole
    for k in range(2, 2 + MAX_WAIT + 1):  # the speaker stalls: no frame waits more than MAX_WAIT
        out = aec.push(mic, 30.0 + k * 0.02)
    assert len(out) >= 1
    stopped = EchoCanceller(FarEnd(), engine=Echo())  # a speaker that never played: nothing to wait for
    assert stopped.push(mic, 40.0) == [mic]


@pytest.mark.slow
def test_without_the_canceller_aec_is_a_clear_configuration_error(tmp_path) -> None:
    """32-bit ARM has no wheel: as if pywebrtc-audio were not installed."""
    import os
    import sys

    from pi_agent.audio.files import write_wav

    hide = ("import sys; sys.modules['pywebrtc_audio'] = None; from pi_agent.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    mic = tmp_path / "mic.wav"
    write_wav(mic, np.zeros((16_000, 1), np.int16), MIC_RATE)
    env = {**os.environ, "PI_AGENT_AGENT_ID": "a", "PI_AGENT_SERVER_URL": "http://127.0.0.1:9",
           "PI_AGENT_AUDIO__INPUT_WAV": str(mic), "PI_AGENT_API__PORT": "0", "PI_AGENT_API__SOCKET": "off"}
    check = subprocess.run([sys.executable, "-c", hide, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert "[ ok ] echo: half_duplex; not aec: the echo canceller (pywebrtc-audio) is not installed" in check.stdout
    env["PI_AGENT_AUDIO__ECHO"] = "aec"
    check = subprocess.run([sys.executable, "-c", hide, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert "[FAIL] echo: audio.echo = aec: the echo canceller (pywebrtc-audio) is not installed" in check.stdout
    run = subprocess.run([sys.executable, "-c", hide, "run"], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 78 and "is not installed" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_with_aec_the_speaker_stream_runs_on_and_a_sound_does_not_restart_it() -> None:
    """Issue 21: each new stream's reported moment of playing moves the echo's reference by a
    millisecond or more, so under aec (keep_running) the stream neither stops for standby nor
    restarts for a sound; a flush still aborts it (silent at once) and starts it again."""
    from pi_agent.audio.standby import Move, Standby

    s = Standby(1.0, 2.0, keep_running=True)
    s.opened(0.0)
    assert s.next_deadline() is None  # no standby stop to wait for
    assert s.due(100.0, 0.0, False) is None and s.running
    assert s.sound(100.0, 0.0) is None  # the device holds only silence: the sound queues behind it
    assert s.next_deadline() is None
    assert s.flushed(105.0, False) is Move.RESTART and s.running
    plain = Standby(1.0, 2.0)
    plain.opened(0.0)
    assert plain.sound(5.0, 0.0) is Move.RESTART  # without aec: restarted, its first sample at once
    assert plain.due(7.0, 6.0, False) is Move.STOP


# --- when a speaker callback's sound is heard (the echo reference's placement) ----------------

def test_a_late_callback_places_its_sound_by_portaudio_s_stamp_not_by_when_it_ran() -> None:
    """Debian's PortAudio stamps callbacks with the wall clock, later builds with the monotonic
    one: either way the stamp, not the moment the Python callback got to run (it may wait for
    the GIL or a core), says when its sound is heard. Before, a callback that ran 30 ms late
    moved the echo reference 30 ms late, and the canceller let the echo through."""
    import time

    from pi_agent.audio.playback import heard_at

    late, delay = 0.03, 0.05  # the callback runs 30 ms after PortAudio stamped it
    for clock in (time.time, time.monotonic):
        stamp = clock() - late
        mono = time.monotonic()
        at = heard_at({"current_time": stamp, "output_buffer_dac_time": stamp + delay}, 0.04)
        assert abs(at - (mono - late + delay)) < 0.005, (clock, at - mono)
    mono = time.monotonic()  # no times reported: now plus the stream's latency
    assert abs(heard_at({"current_time": 0.0, "output_buffer_dac_time": 0.0}, 0.04) - (mono + 0.04)) < 0.005
    mono = time.monotonic()  # a clock PortAudio's is on neither: now plus the reported delay
    assert abs(heard_at({"current_time": 5.0, "output_buffer_dac_time": 5.05}, 0.04) - (mono + 0.05)) < 0.005
