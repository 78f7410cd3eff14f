"""deploy/prometheus: the alerting rules are valid, unit-tested case by case, and name real metrics.

``promtool`` (Debian's ``prometheus`` package, installed by ``make test``: target
``prometheus-tools``) checks the rules and configs and runs alerts_test.yml, whose series are
made up: that is where each rule's thresholds and ``for:`` are tested. The integration test
tests/integration/test_prometheus_alerts.py runs the rules in a real Prometheus server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.infra.settings import Settings
from tests.metric_names import exported_series

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIGS = (PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus-local.yml")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH: run `make prometheus-tools` (installs Debian's prometheus package)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_prometheus_configs_are_valid_and_load_the_rules(config: Path) -> None:
    assert yaml.safe_load(config.read_text())["rule_files"] == [RULES.name]
    result = _promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for rule in _alerts():
        seen = cases.get(rule["alert"], [])
        assert True in seen, f"{rule['alert']}: no test case in {RULE_TESTS.name} where it fires"
        assert False in seen, f"{rule['alert']}: no test case in {RULE_TESTS.name} where it stays quiet"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]


def test_rules_use_only_metrics_the_pipeline_exports() -> None:
    """A renamed metric would leave its rule silently quiet; promtool cannot know our names."""
    exported = exported_series()
    used = {
        name
        for rule in _alerts()
        for text in (rule["expr"], *rule["annotations"].values())
        for name in re.findall(r"\bmetering_[a-z_]+\b", text)
    }
    assert used, "no metering_ metric found in the rules"
    assert used <= exported, f"not exported by the pipeline: {sorted(used - exported)}"


def test_local_config_scrapes_the_balance_processor_where_metering_run_serves_it() -> None:
    """MeteringBalanceProcessorDown would fire for good if the job pointed elsewhere."""
    defaults = Settings()
    jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIGS[1].read_text())["scrape_configs"]}
    (static,) = jobs["metering-balance"]["static_configs"]
    assert static["targets"] == [f"127.0.0.1:{defaults.metrics_port + 1 + defaults.workers}"]
    (workers,) = jobs["metering-worker"]["static_configs"]
    assert len(workers["targets"]) == defaults.workers, "a listed worker that does not run fires MeteringWorkerDown"
