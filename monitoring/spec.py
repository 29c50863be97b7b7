"""Monitoring as data: alert-rule thresholds, Alertmanager routing, Prometheus selection logic,
dashboards. Pure functions (no Pulumi import), used by components/services/monitoring.py and by the tests that
run the real Prometheus, promtool and Alertmanager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "rules"
DASHBOARDS_DIR = HERE / "dashboards"
RELEASE = "kps"  # kube-prometheus-stack release name (short: the chart prefixes object names with it)
CREDENTIALS_SECRET = "alertmanager-credentials"
CREDENTIALS_DIR = f"/etc/alertmanager/secrets/{CREDENTIALS_SECRET}"
# Where alerts link their runbooks by default; a stack points it at its own fork (alerting.runbooksUrl).
DEFAULT_RUNBOOKS_URL = "https://github.com/mlplatform/mlplatform/blob/main/docs/runbooks.md"


def threshold_rules(latency_slo_ms: float = 100, error_ratio_slo: float = 0.01, training_stale_days: int = 7) -> dict[str, Any]:
    """Thresholds from the stack config as recording rules, so the alert rules (static YAML, tested
    with promtool) compare against ``scalar(mlplatform:...)`` instead of baked-in numbers."""
    return {
        "name": "mlplatform-thresholds",
        "rules": [
            {"record": "mlplatform:serving_latency_slo_seconds", "expr": f"vector({latency_slo_ms / 1000:g})"},
            {"record": "mlplatform:serving_error_ratio_slo", "expr": f"vector({error_ratio_slo:g})"},
            {"record": "mlplatform:training_stale_seconds", "expr": f"vector({training_stale_days * 86400})"},
        ],
    }


def runbook_url(alert: str, runbooks_url: str = DEFAULT_RUNBOOKS_URL) -> str:
    """The one pattern for every alert's runbook link: the runbooks page (``alerting.runbooksUrl``) and
    the section anchor GitHub derives from ``## <AlertName>`` in docs/runbooks.md."""
    return f"{runbooks_url}#{alert.lower()}"


def rule_groups(runbooks_url: str = DEFAULT_RUNBOOKS_URL) -> dict[str, list[dict[str, Any]]]:
    """file stem -> rule groups, from monitoring/rules/*.yaml (PrometheusRule objects), with every
    alert's ``runbook_url`` annotation set here (rule files carry none: no hand-copied links)."""
    out = {}
    for path in sorted(RULES_DIR.glob("*.yaml")):
        groups = yaml.safe_load(path.read_text())["spec"]["groups"]
        for rule in (r for g in groups for r in g["rules"] if "alert" in r):
            annotations = rule.setdefault("annotations", {})
            if "runbook_url" in annotations:
                raise ValueError(f"{path.name}: {rule['alert']} sets runbook_url itself; monitoring/spec.py:runbook_url sets every one")
            annotations["runbook_url"] = runbook_url(rule["alert"], runbooks_url)
        out[path.stem] = groups
    return out


def _route() -> dict[str, Any]:
    return {
        "receiver": "null",
        "group_by": ["alertname", "namespace"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {"receiver": "null", "matchers": ['alertname = "Watchdog"']},
            {"receiver": "critical", "matchers": ['severity = "critical"']},
            {"receiver": "warning", "matchers": ['severity = "warning"']},
        ],
    }


def _inhibit_rules() -> list[dict[str, Any]]:
    return [
        {
            "source_matchers": ['severity = "critical"'],
            "target_matchers": ['severity =~ "warning|info"'],
            "equal": ["alertname", "namespace"],
        },
        {
            "source_matchers": ['alertname = "ModelServerDown"'],
            "target_matchers": ['alertname =~ "ModelServerHighLatency|ModelServerHighErrorRatio|ModelServerQueueSaturated"'],
            "equal": ["namespace"],
        },
    ]


def _chat_configs(alerting: Any, has_slack: bool) -> list[tuple[str, dict]]:
    """(receiver key, config) of the webhook and Slack notifications, which the critical and the warning receivers share."""
    notify: list[tuple[str, dict]] = []
    if alerting.webhook_url:
        notify.append(("webhook_configs", {"url": alerting.webhook_url, "send_resolved": True}))
    if has_slack:
        notify.append(
            (
                "slack_configs",
                {
                    "api_url_file": f"{CREDENTIALS_DIR}/slack-webhook-url",
                    "channel": alerting.slack_channel or "#alerts",
                    "send_resolved": True,
                    "title": "{{ .CommonLabels.severity | toUpper }}: {{ .CommonLabels.alertname }}",
                    "text": "{{ range .Alerts }}{{ .Annotations.summary }}\n{{ .Annotations.description }}\nRunbook: {{ .Annotations.runbook_url }}\n{{ end }}",
                },
            )
        )
    return notify


def _email_config(alerting: Any, has_smtp_password: bool) -> dict[str, Any] | None:
    """The e-mail notification (critical alerts only), or None without a recipient and a smarthost."""
    if not (alerting.email_to and alerting.smtp_smarthost):
        return None
    email = {
        "to": alerting.email_to,
        "from": alerting.smtp_from or "alertmanager@localhost",
        "smarthost": alerting.smtp_smarthost,
        "send_resolved": True,
    }
    if has_smtp_password:
        email |= {"auth_username": alerting.smtp_from or "alertmanager", "auth_password_file": f"{CREDENTIALS_DIR}/smtp-password"}
    return email


def alertmanager_config(alerting: Any, has_slack: bool, has_smtp_password: bool) -> dict[str, Any]:
    """``alerting`` has the fields of components.config.AlertingConfig. Route by severity: critical pages
    every configured receiver, warning goes to chat/webhook, info nowhere. A critical alert inhibits the warning/info alerts of the same name and namespace,
    and a down model server inhibits its own latency/error/queue alerts (they are symptoms)."""
    notify = _chat_configs(alerting, has_slack)
    email = _email_config(alerting, has_smtp_password)

    def receiver(name: str, with_email: bool) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name}
        for key, conf in notify:
            r.setdefault(key, []).append(conf)
        if with_email and email:
            r["email_configs"] = [email]
        return r

    return {
        "global": {"resolve_timeout": "5m"},
        "route": _route(),
        "inhibit_rules": _inhibit_rules(),
        "receivers": [{"name": "null"}, receiver("critical", with_email=True), receiver("warning", with_email=False)],
    }


def selects(prometheus_spec: dict[str, Any], kind: str, labels: dict[str, str], release: str = RELEASE) -> bool:
    """Would kube-prometheus-stack's Prometheus pick up an object of ``kind`` (ruleSelector,
    serviceMonitorSelector, podMonitorSelector) with ``labels``? Mirrors the chart's template: an
    explicit selector wins; else, unless ``<kind>NilUsesHelmValues: false``, only objects labelled
    ``release: <release>`` are selected; else everything."""
    selector = prometheus_spec.get(f"{kind}Selector") or {}
    if selector:
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    if prometheus_spec.get(f"{kind}SelectorNilUsesHelmValues", True):
        return labels.get("release") == release
    return True


def dashboards() -> dict[str, str]:
    """file stem -> Grafana dashboard JSON (compact, stable)."""
    return {
        p.stem: json.dumps(json.loads(p.read_text()), sort_keys=True, separators=(",", ":")) for p in sorted(DASHBOARDS_DIR.glob("*.json"))
    }
