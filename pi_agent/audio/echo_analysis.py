"""Measuring echo and its cancellation on recorded signals: pure (numpy only, no I/O).

Used by ``pi-agent test-mic --echo`` (:mod:`pi_agent.diagnostics.echo`: the test signal,
the echo's delay) and by ``scripts/aec_compare.py`` (the scenes' speech levels, the
output's delay and likeness to the user's voice, ERLE), which runs in a scratch venv
with numpy and the cancellers only: so this module imports nothing but numpy.

Levels are of int16 samples (full scale 32768); a lag is in samples, positive when the
first signal is later than the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.generic]  # int16 as recorded, or float in int16 units
F64 = npt.NDArray[np.float64]


def at_dbfs(x: Samples, dbfs: float, rms: float) -> F64:
    """``x`` scaled so that what measured ``rms`` (int16 units) is at ``dbfs``."""
    scaled: F64 = np.asarray(x, dtype=np.float64) * (32768.0 * 10 ** (dbfs / 20) / rms)
    return scaled


def erle_db(mic: Samples, out: Samples) -> float:
    """Echo return loss enhancement: 10*log10(mic power / output power) over the samples given (the
    same ones of each, where only the echo is at the microphone)."""
    m, y = np.asarray(mic, dtype=np.float64), np.asarray(out, dtype=np.float64)
    return float(10 * np.log10(np.sum(m**2) / max(np.sum(y**2), 1e-9)))


def correlation(a: Samples, b: Samples, lags: npt.NDArray[np.integer]) -> F64:
    """Cross-correlation ``sum_n a[n + lag] * b[n]`` at each of ``lags`` (each within
    ``-len(b) < lag < len(a)``), by FFT."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    size = 1 << int(np.ceil(np.log2(len(x) + len(y))))
    corr: F64 = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)[lags]
    return corr


def delay(later: Samples, earlier: Samples, lags: npt.NDArray[np.integer]) -> int:
    """Which of ``lags`` ``later`` follows ``earlier`` by: the strongest correlation, of either sign
    (an echo may come back inverted), over their common length."""
    n = min(len(later), len(earlier))
    return int(lags[int(np.argmax(np.abs(correlation(later[:n], earlier[:n], lags))))])


@dataclass
class Match:
    """How like a reference an output is over a span: its normalised correlation at the best lag,
    that lag (ms; > 0: the output is late) and the output's level over the reference's (dB)."""

    corr: float
    lag_ms: float
    level_db: float


def match(out: Samples, ref: Samples, span: tuple[int, int], rate: int, max_lag_ms: int = 100) -> Match:
    """Best normalised correlation of ``out`` against ``ref[span]``, for output lags within ``max_lag_ms``."""
    a, b = span
    m = max_lag_ms * rate // 1000
    c = np.asarray(ref[a:b], dtype=np.float64)
    o = np.concatenate([np.zeros(m), np.asarray(out, dtype=np.float64), np.zeros(m)])[a : b + 2 * m]
    xc = correlation(o, c, np.arange(len(o) - len(c) + 1))  # xc[k] = sum_n c[n] * out[a - m + k + n]
    k = int(np.argmax(xc))
    seg = o[k : k + len(c)]
    denom = np.sqrt(np.sum(seg**2) * np.sum(c**2))
    return Match(
        corr=float(xc[k] / denom) if denom > 0 else 0.0,
        lag_ms=(k - m) * 1000 / rate,
        level_db=float(20 * np.log10(max(np.sqrt(np.mean(seg**2)), 1e-9) / np.sqrt(np.mean(c**2)))),
    )
