"""Shared pytest set-up and fixtures. Helpers live beside the tests as ``support_*.py``
modules of this package (``from .support_audio import ...``).

How a test is classified: quick or ``slow``
-------------------------------------------
``./scripts/test.sh -m "not slow"`` is the quick tier (under a minute on two cores): the
pure core and in-process unit tests. A test is ``slow`` if it starts a process (the
daemon, the CLI, ``pi-agent fake-agent``, Chromium, PulseAudio, ruff/mypy, a shell
script), listens on a socket (an in-process ``FakeAgent``, a test server), uses the
virtual sound card, or sleeps for real time (more than about a second in all). It gets
the mark by one of:

- its module in ``SLOW_MODULES`` below (modules where every test runs the daemon, the
  CLI, a script or a fake agent), or the module's own ``pytestmark = pytest.mark.slow``;
- its own ``@pytest.mark.slow`` (in a module of quick tests);
- a fixture in ``SLOW_FIXTURES`` below (the sound card, fake agent factories, ...).

``SLOW_MODULES`` and ``SLOW_FIXTURES`` are applied here, at collection.

A test that starts a process but is quick all the same (ruff: 0.1 s) may say so with
``@pytest.mark.quick_subprocess`` and stay in the quick tier.

Running in parallel
-------------------
``./scripts/test.sh`` runs the tests on two workers (pytest-xdist, ``-n 2``; give ``-n``
yourself to choose, ``-n 0`` for one process). Every test has its own tmp dir, free
ports and, per worker, its own sound server, so two can run at once. A test whose
timing bound is tight enough that a test running beside it could break it (a busy
second core) says ``@pytest.mark.alone``: it waits for the running test to end and
the other worker waits for it (``_one_at_a_time`` below). In one process the mark
does nothing.

A new test needs nothing if it is quick. If it is not and is left unmarked, the quick
tier says so: starting a subprocess or listening on a socket fails it at once, with a
message to mark it ``slow``; and tests not marked ``slow`` that took more than
``QUICK_LIMIT`` seconds are listed at the end of the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support_audio import VirtualAudio, started_card

# gpiozero must never look for real pins in the test run.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

# Modules whose every test starts the daemon, the CLI, a script or a fake agent on a socket.
SLOW_MODULES = frozenset({
    "test_api", "test_bench_cli", "test_button_daemon", "test_daemon", "test_diagnostics",
    "test_fake_agent_sdk", "test_install",
    "test_faults_devices", "test_faults_frames", "test_faults_network", "test_faults_process",
    "test_faults_refusals", "test_faults_server", "test_faults_signed_url", "test_faults_soak",
    "test_faults_speech",
})
# Fixtures that make a test slow (they start a sound server, a fake agent on a socket, a
# process); a test using any of them is marked ``slow`` at collection.
SLOW_FIXTURES = frozenset({
    "virtual_audio", "alsa_devices",    # the virtual sound card (PulseAudio)
    "vcard",                            # test_faults_devices: sound servers to unplug
    "make_agent", "agent_factory",      # in-process fake agents on a socket
    "lifecycle",                        # test_install: the install script, run once
})
QUICK_LIMIT = 1.0  # seconds (set-up + call + tear-down) beyond which a quick test is named


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick_subprocess: starts a process, yet is quick (stays in the quick tier)")
    config.addinivalue_line("markers", "alone: with parallel workers, runs while no other test runs")


# --------------------------------------------------------------------------- parallel workers
# The controller makes a directory for the run's locks and hands it to every worker; a
# test takes the "tests" lock shared, an ``alone`` test takes it exclusive. The "gate"
# lock is held while waiting for the first, so a worker waiting to run an ``alone``
# test is not overtaken again and again by the other's next shared test.
_LOCKS = "pi_agent_test_locks"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist, in the controller: one call per worker
    config = node.config
    if not hasattr(config, "_pi_agent_locks"):
        config._pi_agent_locks = tempfile.mkdtemp(prefix="pi-agent-test-locks-")
    node.workerinput[_LOCKS] = config._pi_agent_locks


def pytest_unconfigure(config: pytest.Config) -> None:
    locks = getattr(config, "_pi_agent_locks", None)
    if locks:
        shutil.rmtree(locks, ignore_errors=True)


@contextlib.contextmanager
def _flock(path: Path, how: int) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, how)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    locks = getattr(item.config, "workerinput", {}).get(_LOCKS)
    if not locks:  # one process: nothing runs beside the test
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    with contextlib.ExitStack() as held:
        with _flock(Path(locks) / "gate", fcntl.LOCK_EX):
            held.enter_context(_flock(Path(locks) / "tests", fcntl.LOCK_EX if alone else fcntl.LOCK_SH))
        return (yield)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _quick_tests_stay_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In a test not marked ``slow``: no subprocess, no listening socket."""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("quick_subprocess"):
        yield
        return
    broken: list[str] = []

    def refuse(what: str) -> None:
        broken.append(what)
        pytest.fail(f"{request.node.nodeid} {what}: mark it @pytest.mark.slow (see tests/conftest.py)",
                    pytrace=False)

    popen_init = subprocess.Popen.__init__
    listen = socket.socket.listen

    def guarded_popen(self: Any, args: Any, *rest: Any, **kw: Any) -> None:
        refuse(f"starts a subprocess ({args!r:.80})")
        popen_init(self, args, *rest, **kw)

    def guarded_listen(self: socket.socket, *rest: Any) -> None:
        refuse(f"listens on a socket ({self.getsockname()!r})")
        listen(self, *rest)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
    monkeypatch.setattr(socket.socket, "listen", guarded_listen)
    yield
    call = request.node.stash.get(_call_report, None)
    if broken and call is not None and call.passed:  # the code under test swallowed the failure
        pytest.fail(f"{request.node.nodeid} {broken[0]}: mark it @pytest.mark.slow (see tests/conftest.py)",
                    pytrace=False)


_call_report = pytest.StashKey[pytest.TestReport]()
_durations: dict[str, float] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_call_report] = report
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slow" not in report.keywords:
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    over = sorted(((d, n) for n, d in _durations.items() if d > QUICK_LIMIT), reverse=True)
    if over:
        terminalreporter.section(f"quick tests over {QUICK_LIMIT:g} s (make them quicker or mark them slow)")
        for duration, nodeid in over:
            terminalreporter.write_line(f"{duration:6.2f} s  {nodeid}")


@pytest.fixture(scope="session")
def virtual_audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    """The private PulseAudio server + ALSA config, for the whole session."""
    with started_card(tmp_path_factory.mktemp("vaudio")) as va:
        yield va


@pytest.fixture
def alsa_devices(virtual_audio: VirtualAudio, monkeypatch: pytest.MonkeyPatch) -> VirtualAudio:
    """Make PortAudio (initialised inside the test) see the virtual devices."""
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(virtual_audio.alsa_conf))
    return virtual_audio
