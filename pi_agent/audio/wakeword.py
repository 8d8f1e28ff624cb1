"""The wake word: microWakeWord models run by ``pymicro-wakeword``, one 20 ms frame at a time.

``pymicro-wakeword`` (Apache-2.0, the engine of Home Assistant Voice) ships the
TensorFlow Lite runtime and four models in its wheel, so nothing is downloaded at run
time. It is installed on x86_64 and aarch64 (64-bit Raspberry Pi OS), where it has
tested wheels; elsewhere :func:`unavailable` says why, and only the ``wake_word``
capture mode is affected.

A model is a JSON manifest beside its ``.tflite`` file (the format Home Assistant's and
ESPHome's microWakeWord collections use): the shipped ones are named by their id
(:data:`BUILTIN`), a custom one by the manifest's path. Everything in a custom manifest
is checked before TensorFlow Lite sees the model file: a bad file is a clear
:class:`~pi_agent.errors.ConfigError`, never a crash in native code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import FRAME_BYTES

BUILTIN = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
TFLITE_MAGIC = b"TFL3"  # the FlatBuffer file identifier at bytes 4..8 of every .tflite model
FEATURE_STEP_MS = 10  # the features pymicro-wakeword computes; version-1 models used 20


def unavailable() -> str | None:
    """Why the wake-word engine cannot run here, or None if it can."""
    try:
        import pymicro_wakeword  # noqa: F401
    except ImportError as e:
        import platform
        return (f"the wake-word engine (pymicro-wakeword) is not installed for {platform.machine()}: it is "
                "installed on x86_64 and aarch64 (64-bit Raspberry Pi OS); on 32-bit ARM see the README's "
                f"Wake word section ({e})")
    except OSError as e:  # its TensorFlow Lite library does not load on this system
        return f"the wake-word engine (pymicro-wakeword) does not load here: {e}"
    return None


def manifest_path(spec: str) -> Path:
    """The manifest of ``spec``: a shipped model's id, or the path of a custom model's JSON."""
    if spec in BUILTIN:
        import pymicro_wakeword
        return Path(pymicro_wakeword.__file__).parent / "models" / f"{spec}.json"
    return Path(spec).expanduser()


def phrase(spec: str) -> str:
    """The wake word as a passer-by says it (the kiosk page's hint): a shipped model's name
    ("okay_nabu": "Okay Nabu"), or a custom manifest's ``wake_word`` (its file's name if that
    cannot be read)."""
    if spec in BUILTIN:
        return spec.replace("_", " ").title()
    try:
        return str(read_manifest(Path(spec).expanduser()).get("wake_word") or Path(spec).stem)[:60]
    except ConfigError:
        return Path(spec).stem[:60]


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest at ``path``; :class:`ConfigError` naming what is wrong."""
    where = f"capture.wake_word: {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file (a shipped model's name is one of {', '.join(BUILTIN)}; "
                          "a custom model is the path of its JSON manifest)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not a JSON manifest ({e})") from None
    micro = data.get("micro") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(micro, dict) or not isinstance(data.get("model"), str):
        raise ConfigError(f'{where}: not a microWakeWord manifest (it needs "model" and a "micro" section)')
    cutoff, window = micro.get("probability_cutoff"), micro.get("sliding_window_size")
    if not isinstance(cutoff, int | float) or isinstance(cutoff, bool) or not 0 < cutoff < 1:
        raise ConfigError(f'{where}: "micro.probability_cutoff" must be a number between 0 and 1')
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 100:
        raise ConfigError(f'{where}: "micro.sliding_window_size" must be a whole number from 1 to 100')
    step = micro.get("feature_step_size", FEATURE_STEP_MS)
    if step != FEATURE_STEP_MS:
        raise ConfigError(f"{where}: a model of {step} ms feature steps (microWakeWord version 1); the engine "
                          f"runs version-2 models ({FEATURE_STEP_MS} ms)")
    model = path.parent / data["model"]
    try:
        with model.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ConfigError(f"{where}: its model file cannot be read: {e}") from None
    if head[4:8] != TFLITE_MAGIC:
        raise ConfigError(f"{where}: {model} is not a TensorFlow Lite model")
    return data


class WakeWordDetector:
    """Feeds 20 ms frames to one model; reports the probability of each detection.

    ``detector(frame)`` returns the probability when the wake word was heard in this
    frame (then the model starts afresh, so one utterance is one detection), else None.
    :meth:`probability` is the raw figure for ``pi-agent test-mic --wake-word``.
    """

    def __init__(self, spec: str, threshold: float | None = None) -> None:
        reason = unavailable()
        if reason is not None:
            raise ConfigError(f"capture.mode = wake_word: {reason}")
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures

        path = manifest_path(spec)
        manifest = read_manifest(path)
        try:
            self._model = MicroWakeWord.from_config(path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"capture.wake_word: {path}: the model does not load: {e}") from None
        self._features = MicroWakeWordFeatures()
        self.name = Path(manifest["model"]).stem
        self.phrase = str(manifest.get("wake_word") or self.name)
        self.model_threshold = float(manifest["micro"]["probability_cutoff"])
        self.threshold = self.model_threshold if threshold is None else threshold

    def probability(self, frame: bytes) -> float:
        """Feed one frame; the highest probability the model computed in it (0.0 if none)."""
        best = 0.0
        for features in self._features.process_streaming(frame):
            p = self._model.process_streaming_prob(features)
            if p is not None and p > best:
                best = p
        return best

    def __call__(self, frame: bytes) -> float | None:
        if len(frame) != FRAME_BYTES:
            return None
        p = self.probability(frame)
        if p < self.threshold:
            return None
        self.reset()
        return p

    def reset(self) -> None:
        """Start afresh: what was heard so far no longer counts towards a detection."""
        self._features.reset()
        self._model.reset()

    @property
    def description(self) -> str:
        """For the log: the phrase, the model and the threshold in use."""
        own = "the model's own" if self.threshold == self.model_threshold else f"the model's: {self.model_threshold:g}"
        return f"wake word {self.phrase!r} ({self.name}, threshold {self.threshold:g}, {own})"
