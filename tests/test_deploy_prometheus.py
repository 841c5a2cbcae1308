"""The deployment artefacts in deploy/: the Prometheus alerting rules pass `promtool check
rules` and their own unit tests, every PromQL expression of the Grafana dashboard parses,
and both use only the metrics, labels and label values edm exports, so a typo cannot hide
a dead panel or an alert that never fires. No database needed; promtool is Debian's
`prometheus` package (a missing promtool skips these locally and fails them in CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "edm-dashboard.json"

# Every metric edm exports, with its labels (Prometheus adds `instance` and `job`).
METRICS: dict[str, set[str]] = {
    "edm_sends_total": {"service", "result"},
    "edm_send_duration_seconds": {"service"},
    "edm_webhook_requests_total": {"provider", "code"},
    "edm_events_total": {"provider", "type", "result"},
    "edm_repairs_total": {"kind"},
    "edm_alerts_total": {"kind"},
    "edm_service_up": {"service"},
    "edm_service_frozen": {"service"},
    "edm_service_paused": {"service"},
    "edm_service_enabled": {"service"},
    "edm_service_interval_seconds": {"service"},
    "edm_service_quota_used": {"service"},
    "edm_service_quota_remaining": {"service"},
    "edm_subtasks": {"task", "status"},
    "edm_funnel": {"stage"},
    "edm_subtasks_past_lease": set(),
    "edm_unknown_outcomes": set(),
    "edm_webhook_last_seconds": {"provider"},
    "edm_health_check_status": {"check"},
    "edm_up": set(),
}
HISTOGRAMS = {"edm_send_duration_seconds"}
SERIES = {
    **METRICS,
    **{f"{name}{suffix}": METRICS[name] for name in HISTOGRAMS for suffix in ("_sum", "_count")},
    **{f"{name}_bucket": METRICS[name] | {"le"} for name in HISTOGRAMS},
}
TARGET_LABELS = {"instance", "job"}

CHECKS = {
    "database",
    "services_running",
    "frozen_services",
    "past_lease",
    "queue_age",
    "unknown_outcomes",
    "events",
    "invariants",
    "webhook_silence",
    "send_success",
    "reputation",
}
# The values a label may take where the set is closed (an event's type and provider are not).
VALUES: dict[tuple[str, str], set[str]] = {
    ("edm_sends_total", "result"): {
        "sent",
        "transient",
        "recipient",
        "request",
        "service",
        "unknown",
    },
    ("edm_webhook_requests_total", "provider"): {"engagelab", "generic"},
    ("edm_webhook_last_seconds", "provider"): {"engagelab", "generic"},
    ("edm_events_total", "result"): {
        "applied",
        "duplicate",
        "unmatched",
        "error",
        "invalid",
        "given_up",
        "ignored",
        "skipped",
    },
    ("edm_repairs_total", "kind"): {
        "past_lease",
        "unknown",
        "worker_restart",
        "events",
        "facts",
        "reputation_freeze",
        "unfreeze",
    },
    ("edm_alerts_total", "kind"): {"alert", "recovery", "repair"},
    ("edm_subtasks", "status"): {
        "pending",
        "allocated",
        "sending",
        "sent",
        "failed",
        "unknown",
        "cancelled",
        "skipped",
    },
    ("edm_funnel", "stage"): {
        "sent",
        "delivered",
        "opened",
        "clicked",
        "bounced",
        "complained",
        "unsubscribed",
    },
    ("edm_health_check_status", "check"): CHECKS,
}

# The checks that can be critical, each with the one alert that pages for it.
CRITICAL_ALERTS = {
    "database": "EdmDatabaseUnreachable",
    "services_running": "EdmServiceNotRunning",
    "past_lease": "EdmSubTasksPastLease",
    "queue_age": "EdmQueueStalled",
    "invariants": "EdmInvariantBroken",
    "webhook_silence": "EdmWebhookSilence",
    "send_success": "EdmSendFailures",
    "reputation": "EdmSenderReputation",
}
ALERT_NAMES = {*CRITICAL_ALERTS.values(), "EdmDown"}

# Panels an operator looks for, by title.
REQUIRED_PANELS = {
    "Sends per minute against the pace",
    "Send results by service",
    "Send latency p50 / p95",
    "Queue by status",
    "Funnel of running tasks",
    "Webhook requests by provider and code",
    "Webhook events by type and result",
    "Time since the last webhook",
    "Health checks",
    "Services",
    "Services up",
    "Frozen and paused services",
    "Daily quota",
    "Repairs by kind",
    "Alert notifications",
}
DATASOURCE_UID = "${DS_PROMETHEUS}"

METRIC_NAME = re.compile(r"\bedm_[a-z_]+")
SELECTOR = re.compile(r"\b(edm_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not on PATH (Debian: `apt-get install prometheus`)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI checks the deployment artefacts, it never skips them")
        pytest.skip(reason)
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr).strip()


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every query of the dashboard."""
    return [
        (f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}", expr)
        for panel in all_panels(load_dashboard()["panels"])
        for target in panel.get("targets", [])
        if (expr := target.get("expr")) is not None
    ]


def alert_rules() -> dict[str, tuple[str, str]]:
    """alert name -> (its expr, its whole rule's text), read from alerts.yml line by line
    (no YAML parser among the dependencies; promtool checks the syntax)."""
    rules: dict[str, tuple[str, str]] = {}
    blocks = re.split(r"^\s*- alert:\s*", ALERTS.read_text(), flags=re.M)[1:]
    for block in blocks:
        name, _, body = block.partition("\n")
        lines = body.splitlines()
        expr = ""
        for i, line in enumerate(lines):
            key, _, value = line.strip().partition(":")
            if key != "expr":
                continue
            value = value.strip()
            if value in ("|", ">", "|-", ">-"):
                indent = len(line) - len(line.lstrip())
                following = []
                for more in lines[i + 1 :]:
                    if more.strip() and len(more) - len(more.lstrip()) <= indent:
                        break
                    following.append(more.strip())
                value = " ".join(following).strip()
            expr = value
            break
        rules[name.strip()] = (expr, body)
    return rules


def vocabulary_problems(where: str, expr: str) -> list[str]:
    """What in `expr` is not a metric, label or label value edm exports."""
    problems = []
    for name in METRIC_NAME.findall(expr):
        if name not in SERIES:
            problems.append(f"{where}: unknown metric {name}")
    for name, matchers in SELECTOR.findall(expr):
        labels = SERIES.get(name)
        if labels is None:
            continue
        for label, op, value in MATCHER.findall(matchers):
            if label not in labels | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label!r}")
            allowed = VALUES.get((name.removesuffix("_bucket"), label))
            if allowed is not None and op in ("=", "!=") and value not in allowed:
                problems.append(f"{where}: {name}{{{label}}} is never {value!r}")
    known_labels = set().union(*SERIES.values()) | TARGET_LABELS
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in known_labels:
                problems.append(f"{where}: no edm metric has the label {label!r}")
    return problems


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, f"promtool check rules rejects alerts.yml:\n{output(result)}"


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, f"the alerts' unit tests fail:\n{output(result)}"


def test_one_critical_alert_per_critical_check() -> None:
    rules = alert_rules()
    assert set(rules) == ALERT_NAMES, (
        f"alerts.yml should define exactly {sorted(ALERT_NAMES)}: missing"
        f" {sorted(ALERT_NAMES - set(rules))}, unexpected {sorted(set(rules) - ALERT_NAMES)}"
    )
    for check, alert in CRITICAL_ALERTS.items():
        expr, body = rules[alert]
        assert f'check="{check}"' in expr or f"check: {check}" in body, (
            f'{alert} should watch the {check} check (check="{check}" in its expr,'
            f" or the label check: {check})"
        )
        others = [
            name
            for name, (other_expr, _) in rules.items()
            if name != alert and f'check="{check}"' in other_expr
        ]
        assert not others, f"the {check} check should page through {alert} alone, not {others}"
    for name, (expr, body) in rules.items():
        assert expr, f"{name} has no expr that this test could read"
        assert re.search(r"^\s*severity:\s*critical\s*$", body, re.M), (
            f"{name} should carry the label severity: critical"
        )
        for annotation in ("summary", "description"):
            assert re.search(rf"^\s*{annotation}:", body, re.M), f"{name} has no {annotation}"
        assert "`edm " in body or name == "EdmDown", (
            f"{name}'s description should name the edm command an operator runs"
        )


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = re.findall(
        r"alertname:\s*(\w+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", ALERT_TESTS.read_text()
    )
    for name in sorted(ALERT_NAMES):
        quiet = [empty for alert, empty in cases if alert == name]
        assert "" in quiet, f"alerts_test.yml has no case where {name} fires"
        assert "[]" in quiet, f"alerts_test.yml has no case where {name} stays quiet"
    assert 'instance="b:8000"' in ALERT_TESTS.read_text(), (
        "alerts_test.yml should feed two instances, to show the rules aggregate them"
    )


def test_dashboard_exprs_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert exprs, "the dashboard has no PromQL expression to check"
    records = {f"dashboard:panel_{n}": (where, expr) for n, (where, expr) in enumerate(exprs)}
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": record, "expr": expr} for record, (_, expr) in records.items()
                ],
            }
        ]
    }
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(json.dumps(rules, indent=2))  # JSON is YAML
    result = run_promtool(promtool, "check", "rules", str(rules_file))
    named = set(re.findall(r"dashboard:panel_\d+", output(result))) or set(records)
    index = "\n".join(
        f"  {record}: {where}: {expr}"
        for record, (where, expr) in records.items()
        if record in named
    )
    assert result.returncode == 0, (
        f"a dashboard expression is not valid PromQL:\n{output(result)}\nwhich is:\n{index}"
    )


def test_dashboard_has_the_panels_an_operator_looks_for() -> None:
    dashboard = load_dashboard()
    panels = list(all_panels(dashboard["panels"]))
    titles = {panel.get("title") for panel in panels}
    missing = REQUIRED_PANELS - titles
    assert not missing, f"the dashboard lacks the panels {sorted(missing)}"
    ids = [panel.get("id") for panel in panels]
    duplicated = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    assert not duplicated, f"panel ids must be unique in a dashboard; repeated: {duplicated}"
    for panel in panels:
        for target in panel.get("targets", []):
            assert target.get("expr", "").strip(), (
                f"panel {panel.get('title')!r} target {target.get('refId')} has no expr"
            )


def test_dashboard_datasource_is_a_variable() -> None:
    dashboard = load_dashboard()
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    variable = variables.get("DS_PROMETHEUS")
    assert variable is not None, "the dashboard should have a DS_PROMETHEUS template variable"
    assert (variable.get("type"), variable.get("query")) == ("datasource", "prometheus"), (
        f"DS_PROMETHEUS should be a datasource variable of type prometheus, not {variable}"
    )
    for panel in all_panels(dashboard["panels"]):
        if panel.get("type") == "row":
            continue
        for where, datasource in [
            (f"panel {panel.get('title')!r}", panel.get("datasource")),
            *(
                (f"panel {panel.get('title')!r} target {t.get('refId')}", t.get("datasource"))
                for t in panel.get("targets", [])
            ),
        ]:
            assert datasource == {"type": "prometheus", "uid": DATASOURCE_UID}, (
                f"{where} should use the datasource variable, not {datasource}"
            )


def test_dashboard_and_alerts_use_only_edm_metrics() -> None:
    problems = []
    for where, expr in dashboard_exprs():
        problems += vocabulary_problems(f"dashboard {where}", expr)
    for name, (expr, _) in alert_rules().items():
        problems += vocabulary_problems(f"alerts.yml {name}", expr)
    # Metrics named anywhere else (annotations, unit test series) must exist too.
    for path in (ALERTS, ALERT_TESTS):
        for name in sorted(set(METRIC_NAME.findall(path.read_text())) - set(SERIES)):
            problems.append(f"{path.relative_to(ROOT)}: unknown metric {name}")
    assert not problems, "names that edm does not export:\n" + "\n".join(problems)


def test_dashboard_shows_every_metric() -> None:
    used = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        for _, expr in dashboard_exprs()
        for name in METRIC_NAME.findall(expr)
    }
    unused = set(METRICS) - used
    assert not unused, f"no dashboard panel shows {sorted(unused)}"


def test_the_vocabulary_check_catches_typos() -> None:
    typos = {
        'sum(rate(edm_send_total{result="sent"}[5m]))': "unknown metric edm_send_total",
        'sum(rate(edm_sends_total{result="send"}[5m]))': "is never 'send'",
        'sum(rate(edm_sends_total{servce="x"}[5m]))': "has no label 'servce'",
        "sum by (servce) (rate(edm_sends_total[5m]))": "the label 'servce'",
        'max(edm_health_check_status{check="queue"})': "is never 'queue'",
        "rate(edm_sends_total_count[5m])": "unknown metric edm_sends_total_count",
    }
    for expr, expected in typos.items():
        problems = vocabulary_problems("test", expr)
        assert any(expected in problem for problem in problems), (
            f"{expr!r} should be reported ({expected!r}), got {problems}"
        )
    fine = (
        "histogram_quantile(0.95, sum by (service, le)"
        ' (rate(edm_send_duration_seconds_bucket{job="edm"}[5m])))'
    )
    assert vocabulary_problems("test", fine) == [], f"{fine!r} is valid and should pass"
