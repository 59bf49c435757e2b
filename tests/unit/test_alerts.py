"""The Prometheus rules in deploy/prometheus: promtool's own unit tests, run for real.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it); without it these
tests fail, never skip: an untested alert is one that may never fire.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "alerts.yml"
TESTS = DEPLOY / "alerts_test.yml"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install -y prometheus (.ci/run does this)"
    return found


def _alerts() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), flags=re.M)


def test_rules_are_valid() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(_alerts())} rules found" in out.stdout


def test_promtool_rule_tests_pass() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", str(TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DEPLOY,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    text = TESTS.read_text()
    for alert in _alerts():
        cases = re.findall(
            rf"alertname: {alert}\n\s*exp_alerts:(.*?)(?=\n\s*- eval_time|\n- name|\Z)", text, re.S
        )
        assert any(c.strip() == "[]" for c in cases), f"{alert}: no case where it stays quiet"
        assert any("exp_labels" in c for c in cases), f"{alert}: no case where it fires"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.M)[1:]
    assert len(blocks) == len(_alerts()) >= 9
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"severity: (warning|critical)\n", block), name
        for key in ("summary:", "description:", 'runbook_url: "README.md#alerts"'):
            assert key in block, f"{name}: no {key}"


def test_the_runbook_anchor_exists_and_names_every_alert() -> None:
    readme = (DEPLOY.parents[1] / "README.md").read_text()
    assert "\n## Alerts\n" in readme  # README.md#alerts
    for alert in _alerts():
        assert f"`{alert}`" in readme, alert
