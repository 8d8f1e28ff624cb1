"""Short feedback sounds ("earcons"), generated with numpy at the output device's rate.

Generated once when an output opens, so they need no asset files and no
resampling. Each is a sequence of soft tones with raised-cosine edges (no
clicks), peaking well below full scale so that mixing over speech rarely clips.

- ``listening``: two rising notes, "I am listening now".
- ``done``: two falling notes, "got it / finished".
- ``error``: a low, slightly rough double buzz.
- ``offline``: three descending notes, "lost the connection".
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

EARCON_NAMES: tuple[str, ...] = ("listening", "done", "error", "offline")

# name -> [(frequency Hz or a pair for a rough two-tone, duration s, gap after s)]
_SCORES: dict[str, list[tuple[float | tuple[float, float], float, float]]] = {
    "listening": [(660.0, 0.07, 0.02), (990.0, 0.09, 0.0)],
    "done": [(990.0, 0.07, 0.02), (660.0, 0.09, 0.0)],
    "error": [((220.0, 233.0), 0.12, 0.05), ((220.0, 233.0), 0.12, 0.0)],
    "offline": [(784.0, 0.08, 0.02), (587.0, 0.08, 0.02), (392.0, 0.14, 0.0)],
}


def _note(freq: float | tuple[float, float], seconds: float, rate: int) -> np.ndarray:
    n = max(1, round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    if isinstance(freq, tuple):
        wave = 0.5 * (np.sin(2 * np.pi * freq[0] * t) + np.sin(2 * np.pi * freq[1] * t))
    else:
        wave = np.sin(2 * np.pi * freq * t)
    edge = min(n // 2, max(1, int(0.008 * rate)))  # 8 ms raised-cosine fade in/out
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, edge))
    wave[:edge] *= ramp
    wave[n - edge :] *= ramp[::-1]
    return wave


def make_earcon(name: str, rate: int, *, level: float = 0.25) -> np.ndarray:
    """One earcon as float32 samples at ``rate`` scaled to int16 range (peak ``level`` of full scale)."""
    if name not in _SCORES:
        raise ValueError(f"unknown earcon {name!r} (known: {', '.join(EARCON_NAMES)})")
    parts: list[np.ndarray] = []
    for freq, seconds, gap in _SCORES[name]:
        parts.append(_note(freq, seconds, rate))
        if gap:
            parts.append(np.zeros(round(gap * rate)))
    return (np.concatenate(parts) * (level * 32767.0)).astype(np.float32)


def make_earcons(rate: int, names: Iterable[str] = EARCON_NAMES, *, level: float = 0.25) -> dict[str, np.ndarray]:
    """The enabled earcons, by name, generated at ``rate`` (see :func:`make_earcon`)."""
    return {name: make_earcon(name, rate, level=level) for name in names}
