"""contrib/prometheus/ checked by Prometheus's own promtool: the alert rules load, each
alert's unit test over synthetic series passes (``promtool test rules``), the example
scrape config loads, and every PromQL expression of the Grafana dashboard parses
(written out as recording rules for ``promtool check rules``).

promtool comes with Debian's ``prometheus`` package, which the test profile of
scripts/bootstrap.sh installs; where it is missing these tests are skipped, saying so.
Each promtool run takes well under a second: they stay in the quick tier.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "contrib" / "prometheus"
RULES = CONTRIB / "pi-agent.rules.yml"
RULE_TESTS = sorted((CONTRIB / "tests").glob("*.yml"))
DASHBOARD = CONTRIB / "grafana-dashboard.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus; "
    "PROFILE=test scripts/bootstrap.sh installs it)")

# Grafana's variables in the dashboard's expressions, and what stands for them in a check.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def promtool(*args: str | Path, cwd: Path = CONTRIB) -> str:
    assert PROMTOOL is not None
    r = subprocess.run([PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' panels included."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", ()):
                if target.get("expr"):
                    yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", ()))
    yield from walk(json.loads(DASHBOARD.read_text())["panels"])


@needs_promtool
@pytest.mark.quick_subprocess
def test_rules_load() -> None:
    out = promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(yaml.safe_load(RULES.read_text())['groups'][0]['rules'])} rules found" in out, out


@needs_promtool
@pytest.mark.quick_subprocess
def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no unit tests in contrib/prometheus/tests/"
    out = promtool("test", "rules", *RULE_TESTS)
    assert "FAILED" not in out, out


@needs_promtool
@pytest.mark.quick_subprocess
def test_example_scrape_config_loads_with_the_rules() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out, out


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """Each alert has a case where it fires and one where it is checked and stays quiet
    (pending, resolved or a device that must not match)."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../pi-agent.rules.yml"], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", ()):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never seen firing in a unit test"
    assert names - quiet == set(), "alerts never checked quiet in a unit test"
    assert (fired | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_alerts_say_what_and_how_bad() -> None:
    for rule in alerts():
        assert rule["alert"].startswith("PiAgent"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"], rule
        assert rule["annotations"]["description"], rule
        assert 'job="pi-agent"' in rule["expr"], rule


def test_offline_is_not_merely_disconnected() -> None:
    """With the on_demand policy a device closes its conversation whenever it is idle: no
    alert may fire on pi_agent_connected alone."""
    for rule in alerts():
        assert "pi_agent_connected" not in rule["expr"], rule


@needs_promtool
@pytest.mark.quick_subprocess
def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    exprs = list(dashboard_expressions())
    assert len(exprs) >= 20, exprs
    rules = []
    for i, (title, expr) in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel {title!r}: a Grafana variable the check does not know: {expr}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr,
                      "labels": {"panel": re.sub(r"[^\w ()-]", "", title)}})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    out = promtool("check", "rules", path, cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_dashboard_is_importable() -> None:
    """What Grafana needs to import it anywhere: a datasource variable (no fixed uid), unique
    panel ids, every query through that variable."""
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        for target in panel.get("targets", ()):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
