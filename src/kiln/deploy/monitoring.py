"""Monitoring of kiln serve: Prometheus alert rules and scrape configs, a Grafana dashboard and its
provisioning, and the compose file that runs the three together.

Every query reads series that kiln serve exports at /metrics (serve/metrics.py, serve/server.py,
and the drift series `kiln_drift_psi{model,statistic}`, `kiln_drift_window_rows{model}`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.deploy.plan import DRAIN_S, DeployPlan

PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"  # the LTS line
GRAFANA_IMAGE = "grafana/grafana:12.0.2"
DATASOURCE_UID = "kiln-prometheus"
# kiln_requests_total outcomes that are the server's failure (5xx other than load shedding):
# the model raised, a timeout, a server-side refusal; "rejected" (queue full) counts separately
SERVER_FAILURES = 'outcome=~"error|timeout|unavailable"'


@dataclass(frozen=True)
class Alert:
    """An alert: ``signal`` (a PromQL expression) compared with ``threshold``."""

    name: str
    signal: str
    threshold: float
    for_: str
    severity: str
    summary: str

    @property
    def expr(self) -> str:
        return f"({self.signal}) > {self.threshold:g}"


def _outcome_ratio(selector: str, window: str = "5m") -> str:
    """Requests with outcomes ``selector`` over all requests, per model. `or ... * 0` gives a
    model whose counter of those outcomes does not exist yet (none happened) a 0, not no data."""
    return (f"sum by (model) (rate(kiln_requests_total{{{selector}}}[{window}]) "
            f"or rate(kiln_requests_total[{window}]) * 0) "
            f"/ sum by (model) (rate(kiln_requests_total[{window}]))")


def _quantile(q: float, histogram: str, window: str = "5m") -> str:
    return f"histogram_quantile({q:g}, sum by (model, le) (rate({histogram}_bucket[{window}])))"


def alerts(plan: DeployPlan) -> list[Alert]:
    s = plan.settings
    capacity = s.workers * s.max_queue_size  # one replica's queue: per worker, summed
    return [
        Alert("KilnHighErrorRate", _outcome_ratio(SERVER_FAILURES), s.error_ratio, "5m", "critical",
              "kiln model {{ $labels.model }}: more than " f"{s.error_ratio:.0%}"
              " of requests fail (model error, timeout or unavailable)"),
        Alert("KilnHighLatencyP99", _quantile(0.99, "kiln_request_duration_seconds"),
              s.p99_latency_s, "10m", "warning",
              "kiln model {{ $labels.model }}: p99 request time above " f"{s.p99_latency_s:g} s"),
        Alert("KilnRequestsRejected", _outcome_ratio('outcome="rejected"'), s.rejected_ratio, "5m",
              "warning", "kiln model {{ $labels.model }}: more than " f"{s.rejected_ratio:.0%}"
              " of requests refused with 503 (queue full): add replicas"),
        Alert("KilnQueueNearlyFull", "avg_over_time(kiln_queue_depth[5m])",
              s.queue_fill * capacity, "5m", "warning",
              "kiln model {{ $labels.model }} on {{ $labels.instance }}: queue above "
              f"{s.queue_fill:.0%} of {capacity} rows ({s.workers} workers x --max-queue-size "
              f"{s.max_queue_size})"),
        Alert("KilnWorkerRestarts", "increase(kiln_worker_restarts_total[15m])", 0, "0m", "warning",
              "kiln on {{ $labels.instance }}: a worker process died and was restarted"),
        Alert("KilnInputDrift", "max by (model, statistic) (kiln_drift_psi)", s.drift_psi,
              s.drift_for, "warning", "kiln model {{ $labels.model }}: {{ $labels.statistic }} "
              f"drifted from the evaluation data (PSI above {s.drift_psi:g})"),
    ]


def alert_rules(plan: DeployPlan) -> dict[str, Any]:
    """prometheus/alerts.yml."""
    return {"groups": [{"name": "kiln", "rules": [
        {"alert": a.name, "expr": a.expr, "for": a.for_, "labels": {"severity": a.severity},
         "annotations": {"summary": a.summary}} for a in alerts(plan)]}]}


def prometheus_config(target: str = "kiln:8000") -> dict[str, Any]:
    """prometheus/prometheus.yml for compose: scrape the kiln service, load the alert rules."""
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "kiln", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }


PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests by outcome", "reqps",
     [("sum by (model, outcome) (rate(kiln_requests_total[1m]))", "{{model}} {{outcome}}")]),
    ("Server failure ratio", "percentunit", [(_outcome_ratio(SERVER_FAILURES, "1m"), "{{model}}")]),
    ("Request time p50 / p95 / p99", "s",
     [(_quantile(q, "kiln_request_duration_seconds", "1m"), f"{{{{model}}}} p{int(q * 100)}")
      for q in (0.5, 0.95, 0.99)]),
    ("Queue wait p50 / p99", "s",
     [(_quantile(q, "kiln_queue_duration_seconds", "1m"), f"{{{{model}}}} p{int(q * 100)}")
      for q in (0.5, 0.99)]),
    ("Rows per batch (mean)", "short",
     [("sum by (model) (rate(kiln_batch_size_sum[1m])) "
       "/ sum by (model) (rate(kiln_batch_size_count[1m]))", "{{model}}")]),
    ("In flight and queued", "short",
     [("sum by (model) (kiln_inflight_requests)", "{{model}} in flight"),
      ("sum by (model) (kiln_queue_depth)", "{{model}} queued rows")]),
    ("Worker restarts (15 min)", "short",
     [("sum by (instance) (increase(kiln_worker_restarts_total[15m]))", "{{instance}}")]),
    ("Drift (PSI vs evaluation data)", "short",
     [("max by (model, statistic) (kiln_drift_psi)", "{{model}} {{statistic}}")]),
    ("Drift window (rows)", "short",
     [("max by (model) (kiln_drift_window_rows)", "{{model}}")]),
]


def dashboard(plan: DeployPlan) -> dict[str, Any]:
    """grafana/dashboards/kiln.json: one time series panel per entry of PANELS, two a row."""
    source = {"type": "prometheus", "uid": DATASOURCE_UID}
    panels = [{
        "id": i + 1, "type": "timeseries", "title": title, "datasource": source,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + j), "datasource": source, "expr": expr,
                     "legendFormat": legend} for j, (expr, legend) in enumerate(targets)],
    } for i, (title, unit, targets) in enumerate(PANELS)]
    return {"uid": f"kiln-{plan.name}"[:40], "title": f"kiln serve: {plan.name}",
            "tags": ["kiln"], "timezone": "browser", "schemaVersion": 39, "version": 1,
            "refresh": "30s", "time": {"from": "now-1h", "to": "now"}, "panels": panels}


def grafana_datasource() -> dict[str, Any]:
    return {"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "type": "prometheus", "uid": DATASOURCE_UID, "access": "proxy",
        "url": "http://prometheus:9090", "isDefault": True}]}


def grafana_dashboards() -> dict[str, Any]:
    return {"apiVersion": 1, "providers": [{
        "name": "kiln", "type": "file", "disableDeletion": True,
        "options": {"path": "/var/lib/grafana/dashboards"}}]}


def compose(plan: DeployPlan) -> dict[str, Any]:
    """compose.yaml: kiln serve, Prometheus (with the alert rules) and Grafana (provisioned)."""
    return {"services": {
        "kiln": {
            "build": {"context": ".", "dockerfile": "Dockerfile"}, "image": plan.image,
            "environment": {"KILN_API_KEY": "${KILN_API_KEY:?set KILN_API_KEY}",
                            "KILN_WORKERS": str(plan.settings.workers)},
            "ports": ["8000:8000", "8001:8001"],
            "stop_grace_period": f"{DRAIN_S + 5}s",
        },
        "prometheus": {
            "image": PROMETHEUS_IMAGE,
            "command": ["--config.file=/etc/prometheus/prometheus.yml",
                        "--storage.tsdb.path=/prometheus"],
            "volumes": ["./prometheus:/etc/prometheus:ro"], "ports": ["9090:9090"],
            "depends_on": ["kiln"],
        },
        "grafana": {
            "image": GRAFANA_IMAGE,
            "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                        "./grafana/dashboards:/var/lib/grafana/dashboards:ro"],
            "ports": ["3000:3000"], "depends_on": ["prometheus"],
        },
    }}
