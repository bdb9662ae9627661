"""docker/ monitoring config: promtool-valid, and every metric it names is one we export."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

DOCKER = ROOT / "docker"
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Debian package prometheus) missing",
)


@promtool
def test_alert_rules_pass_promtool():
    result = subprocess.run(
        ["promtool", "check", "rules", str(DOCKER / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rules = (DOCKER / "prometheus" / "alerts.yml").read_text().count("- alert: ")
    assert rules >= 15 and f"SUCCESS: {rules} rules found" in result.stdout


@promtool
def test_pruning_behind_fires_only_when_rows_outlive_the_retention_by_a_day(tmp_path: Path):
    """`promtool test rules` on the shipped rule: with a 7-day retention, the oldest prunable row
    8.5 days old fires after the hour's `for`; 7.5 days old (pruning a little late) does not."""
    import yaml

    shutil.copy(DOCKER / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    day = 86400

    def case(age_days: float, fires: bool) -> dict:
        # At eval time t (seconds since 0), the oldest overdue row was created age_days before.
        created = 2 * 3600 - age_days * day
        return {
            "interval": "1m",
            "input_series": [
                {"series": "dspex_execution_retention_seconds", "values": f"{7 * day}x180"},
                {
                    "series": "dspex_execution_prune_overdue_oldest_timestamp_seconds",
                    "values": f"{created:.0f}x180",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "2h",
                    "alertname": "DSPexPruningBehind",
                    "exp_alerts": [{"exp_labels": {"severity": "warn"}}] if fires else [],
                }
            ],
        }

    spec = {"rule_files": ["alerts.yml"], "tests": [case(8.5, True), case(7.5, False)]}
    for test in spec["tests"]:
        for alert in test["alert_rule_test"]:
            for expected in alert["exp_alerts"]:
                expected["exp_annotations"] = _annotations("DSPexPruningBehind")
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        ["promtool", "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _annotations(alert: str) -> dict:
    import yaml

    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    return next(rule["annotations"] for rule in rules if rule["alert"] == alert)


@promtool
def test_prometheus_config_passes_promtool(tmp_path: Path):
    config = (DOCKER / "prometheus" / "prometheus.yml").read_text()
    shutil.copy(DOCKER / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "metrics_token").write_text("token")
    config = config.replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def metric_names(expression: str) -> set[str]:
    return {name.removesuffix("_bucket") for name in re.findall(r"\b(dspex_[a-z_]+)", expression)}


@pytest.mark.django_db
def test_alerts_and_grafana_only_use_metrics_we_export(client, api, make_program):
    program = make_program(name="exported")
    api.post(
        f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "q"}, "wait": True}, format="json"
    )
    exposed = client.get("/metrics").content.decode()
    families = set(re.findall(r"^# TYPE (\w+) ", exposed, flags=re.M))
    # Counters are exposed as <name>_total; histograms as <name>_bucket/_sum/_count.
    available = families | {f"{f}_total" for f in families}
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "dspex.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    expressions += re.findall(
        r"expr: \|?\s*(.+?)(?:\n\s+for:|\n\s+labels:)",
        (DOCKER / "prometheus" / "alerts.yml").read_text(),
        flags=re.S,
    )
    used = set().union(*(metric_names(e) for e in expressions))
    missing = used - available
    assert not missing, f"dashboards/alerts name metrics we do not export: {sorted(missing)}"
    assert len(dashboard["panels"]) >= 8


def test_every_alert_names_a_runbook_section_that_exists():
    import yaml

    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    operations = (DOCKER.parent / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", operations, flags=re.M)
    }
    assert len(rules) >= 12
    for rule in rules:
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md" and anchor in anchors, (rule["alert"], runbook)
        assert f"`{rule['alert']}`" in operations, f"{rule['alert']} is not named in its runbook"
