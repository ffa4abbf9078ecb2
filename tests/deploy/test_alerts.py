"""The chart's PrometheusRule passes `promtool check rules`, and `promtool test rules` (tests/deploy/alerts_test.yaml)
shows every alert firing when it should and staying silent when it should not. Real promtool (Debian)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import rendered_rules
from tests.deploy.promql import alert_value_query

pytestmark = [pytest.mark.helm, pytest.mark.prometheus]

ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RULES_FILE_NAME = "pagedserve-rules.yaml"  # the name alerts_test.yaml's rule_files expects
REQUIRED_ALERTS = {
    "PagedserveQueueSaturated",
    "PagedserveKVCacheHigh",
    "PagedserveTTFTHigh",
    "PagedserveErrorRateHigh",
    "PagedserveNoReadyReplicas",
    "PagedserveTargetDown",
    "PagedserveTargetMissing",
}


def _write_rules(directory: Path, spec: dict[str, Any]) -> Path:
    rules_file = directory / RULES_FILE_NAME
    rules_file.write_text(yaml.safe_dump(spec, sort_keys=False, width=10_000))
    shutil.copy(ALERT_TESTS, directory / ALERT_TESTS.name)
    return rules_file


def _promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _alerts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def test_rules_cover_the_required_alerts_and_have_value_queries() -> None:
    alerts = _alerts(rendered_rules())
    assert {a["alert"] for a in alerts} == REQUIRED_ALERTS
    for alert in alerts:
        assert alert_value_query(alert["expr"]), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_promtool_check_rules(promtool: Path, tmp_path: Path) -> None:
    rules_file = _write_rules(tmp_path, rendered_rules())
    result = _promtool(promtool, "check", "rules", str(rules_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(REQUIRED_ALERTS)} rules found" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = [
        case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == REQUIRED_ALERTS, f"alerts without a firing case: {REQUIRED_ALERTS - firing}"
    assert silent == REQUIRED_ALERTS, f"alerts without a silent case: {REQUIRED_ALERTS - silent}"


def test_promtool_unit_tests_pass(promtool: Path, tmp_path: Path) -> None:
    _write_rules(tmp_path, rendered_rules())
    result = _promtool(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_follow_the_threshold_values(promtool: Path, tmp_path: Path) -> None:
    # With a KV threshold of 0.99 the 95 % case must no longer fire: the tests really exercise the values.
    _write_rules(tmp_path, rendered_rules({"kvCacheUsageThreshold": 0.99}))
    result = _promtool(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "PagedserveKVCacheHigh" in result.stdout + result.stderr
