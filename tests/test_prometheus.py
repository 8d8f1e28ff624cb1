"""A real Prometheus scraping two real daemons, with contrib/prometheus/pi-agent.rules.yml loaded.

Two ``pi-agent run`` processes with different ``device_name``s (and their scrape listener,
``api.metrics_listen``, on loopback ports) talk to one fake agent; a ``prometheus``
server of the test's own (Debian's package, which the test profile installs; loopback
port, storage in the test's tmp dir) scrapes both every second and evaluates the rules
every second. Through its HTTP API the test sees:

- both devices up, each with its ``pi_agent_info{device, location, version}``;
- every metric name the rules and the dashboard use in what the daemon exposes;
- every rule evaluated without error, and no alert for a device that runs well;
- after one daemon is stopped: ``up == 0`` for it, ``PiAgentDown`` pending for it (its
  ``for`` is 5 minutes) and, in a copy of the rule with ``for: 2s``, firing; nothing for
  the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import DaemonProcess, free_port
from .support_faults import CANARY, fault_env
from .support_wait import wait_until

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "contrib" / "prometheus"
RULES = CONTRIB / "pi-agent.rules.yml"
DASHBOARD = CONTRIB / "grafana-dashboard.json"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus; "
                       "PROFILE=test scripts/bootstrap.sh installs it)"),
]

DEVICES = {"kiosk-hall": "Hall, by the stairs", "kiosk-cafe": "Café"}


class Prometheus:
    """``prometheus`` on a free loopback port, its storage and log in ``tmp``."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.tmp = tmp
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = tmp / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        assert PROMETHEUS is not None
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            cwd=self.tmp, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read().decode()
        return json.loads(body) if path.startswith("/api/") else body

    def api(self, path: str, **params: str) -> Any:
        answer = self.get(path, **params)
        assert answer["status"] == "success", answer
        return answer["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        data = await asyncio.to_thread(self.api, "/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    async def alerts(self) -> list[dict[str, Any]]:
        return list((await asyncio.to_thread(self.api, "/api/v1/alerts"))["alerts"])

    async def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log}")
            try:
                return "Ready" in self.get("/-/ready")
            except OSError:
                return False
        await wait_until(lambda: asyncio.to_thread(ready), timeout, "prometheus ready", poll=0.2,
                         seen=lambda: self.log[-2000:])


@contextlib.contextmanager
def running(*procs: DaemonProcess | Prometheus) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def quick_copy_of_down_rule(tmp: Path) -> Path:
    """PiAgentDown with ``for: 2s`` (as PiAgentDownQuick): what firing looks like, in seconds."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == "PiAgentDown")
    path = tmp / "quick.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "pi-agent-quick", "rules": [
        {**rule, "alert": "PiAgentDownQuick", "for": "2s"}]}]}, sort_keys=False))
    return path


def names_used() -> set[str]:
    """The series names the rules and the dashboard's queries read."""
    text = RULES.read_text()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        text += "\n".join(t.get("expr", "") for t in panel.get("targets", ()))
    return set(re.findall(r"\b(pi_agent_\w+|process_\w+)\b", text))


def names_exposed(metrics: str) -> set[str]:
    """The series names a /metrics text may hold, from its ``# TYPE`` lines (a labelled
    family with no sample yet is declared all the same)."""
    suffixes = {"counter": ("", "_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created")}
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics, re.M):
        names.update(name.removesuffix("_total") + s for s in suffixes.get(kind, ("",)))
    return names


async def test_prometheus_scrapes_two_devices_and_alerts_on_the_one_stopped(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        daemons: dict[str, DaemonProcess] = {}
        listeners: dict[str, str] = {}
        for name, location in DEVICES.items():
            home = tmp_path / name
            home.mkdir()
            listeners[name] = f"127.0.0.1:{free_port()}"
            env = fault_env(agent.http_url, home, PI_AGENT_DEVICE_NAME=name, PI_AGENT_LOCATION=location,
                            PI_AGENT_API__METRICS_LISTEN=listeners[name], PI_AGENT_LOG__LEVEL="info")
            daemons[name] = DaemonProcess(env, home)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES), str(quick_copy_of_down_rule(tmp_path))],
            "scrape_configs": [{
                "job_name": "pi-agent",
                # instance = the device's name, as contrib/prometheus/prometheus.yml advises
                "static_configs": [{"targets": [listeners[name]], "labels": {"instance": name}} for name in DEVICES],
            }],
        }
        prometheus = Prometheus(tmp_path, config)
        with running(*daemons.values(), prometheus):
            for d in daemons.values():
                d.start()
            prometheus.start()
            for d in daemons.values():
                await d.wait_api(30)
            await prometheus.wait_ready()

            async def up() -> dict[str, float]:
                answer = await prometheus.query('up{job="pi-agent"}')
                return {r["metric"]["instance"]: float(r["value"][1]) for r in answer}

            seen: dict[str, Any] = {}

            async def both_up() -> bool:
                seen["up"] = await up()
                return seen["up"] == dict.fromkeys(DEVICES, 1.0)

            await wait_until(both_up, 30, "both devices up", poll=0.5,
                             seen=lambda: f"{seen}\n{prometheus.log[-2000:]}")

            # Which device is which: pi_agent_info from device_name and location.
            info = {r["metric"]["instance"]: r["metric"] for r in await prometheus.query("pi_agent_info")}
            for name, location in DEVICES.items():
                assert info[name]["device"] == name and info[name]["location"] == location, info
                assert info[name]["version"], info

            # The rules and the dashboard read only what the daemon exposes.
            status, metrics = daemons["kiosk-hall"].http("/metrics")
            assert status == 200
            missing = names_used() - names_exposed(metrics)
            assert not missing, f"the rules or the dashboard read series the daemon does not expose: {missing}"

            # Every rule evaluates against the real series without error.
            async def evaluated() -> list[dict[str, Any]]:
                groups = (await asyncio.to_thread(prometheus.api, "/api/v1/rules"))["groups"]
                rules = [r for g in groups for r in g["rules"]]
                done = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
                return rules if done else []

            rules = await wait_until(evaluated, 15, "every rule evaluated", poll=0.5)
            shipped = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
            assert len(rules) == shipped + 1, rules  # and the quick copy
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
            # Running well (connected, the microphone file playing): not one alert.
            assert await prometheus.alerts() == []

            # One device stops: up == 0 for it, PiAgentDown pending, the 2-second copy firing.
            assert daemons["kiosk-cafe"].stop() == 0

            async def down_alerts() -> dict[tuple[str, str], str]:
                seen["up"] = await up()
                alerts = await prometheus.alerts()
                seen["alerts"] = alerts
                states = {(a["labels"]["alertname"], a["labels"]["instance"]): a["state"] for a in alerts}
                wanted = {("PiAgentDown", "kiosk-cafe"): "pending", ("PiAgentDownQuick", "kiosk-cafe"): "firing"}
                return states if seen["up"] == {"kiosk-hall": 1.0, "kiosk-cafe": 0.0} and states == wanted else {}

            await wait_until(down_alerts, 20, "kiosk-cafe down, PiAgentDown pending, PiAgentDownQuick firing",
                             poll=0.5, seen=lambda: seen)
            assert [r["metric"] for r in await prometheus.query('up{job="pi-agent"} == 0')] == [
                {"__name__": "up", "instance": "kiosk-cafe", "job": "pi-agent"}]
            alert = next(a for a in seen["alerts"] if a["labels"]["alertname"] == "PiAgentDown")
            assert alert["annotations"]["summary"] == "pi-agent kiosk-cafe cannot be scraped", alert
            assert alert["labels"]["severity"] == "critical", alert
        assert "Traceback" not in daemons["kiosk-hall"].log
