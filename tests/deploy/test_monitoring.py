"""The generated Prometheus configuration, alert rules and Grafana dashboard: checked by promtool,
each alert unit-tested on synthetic series, and every query run by a real Prometheus against a
real kiln serve under load."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.bench.load import LoadSettings, run_load
from kiln.deploy import deploy_run
from tests.deploy.test_deploy import ONNX, fake_run
from tests.serve.test_server import TEXTS, free_port, start_server


def tool(name: str) -> str:
    """The Prometheus binary ``name``; CI installs it (.ci/run), elsewhere its absence skips."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: .ci/run installs it with apt-get install prometheus")
        pytest.skip(f"{name} not installed (Debian/Ubuntu: apt-get install prometheus)")
    return found


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = deploy_run(fake_run(tmp_path_factory.mktemp("mon"), ONNX, "onnx-fp32"))
    return folder


def test_prometheus_config_and_rules_pass_promtool(deployed: Path) -> None:
    promtool = tool("promtool")
    for args in (["check", "config", "prometheus/prometheus.yml"],
                 ["check", "rules", "prometheus/alerts.yml"]):
        done = subprocess.run([promtool, *args], cwd=deployed, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


REQ = "kiln_requests_total"
TARGET = {"instance": "10.0.0.1:8000", "job": "kiln"}


def _requests(bad: str | None) -> list[dict[str, str]]:
    ok = _series(REQ, "0+100x40", model="m", version="1", outcome="success", **TARGET)
    return [ok] + ([_series(REQ, "0+10x40", model="m", version="1", outcome=bad, **TARGET)]
                   if bad else [])


def _latency(slow: bool) -> list[dict[str, str]]:
    fast = "0x40" if slow else "0+100x40"
    return [_series("kiln_request_duration_seconds_bucket", values, model="m", le=le, **TARGET)
            for le, values in (("0.1", fast), ("1", "0+100x40"), ("+Inf", "0+100x40"))]


# alert -> (series that should fire it, healthy series, the labels it fires with)
CASES: dict[str, tuple[list[dict[str, str]], list[dict[str, str]], dict[str, str]]] = {
    "KilnHighErrorRate": (_requests("error"), _requests("bad_request"), {"model": "m"}),
    "KilnHighLatencyP99": (_latency(True), _latency(False), {"model": "m"}),
    "KilnRequestsRejected": (_requests("rejected"), _requests("canceled"), {"model": "m"}),
    "KilnQueueNearlyFull": ([_series("kiln_queue_depth", "1000x40", model="m", **TARGET)],
                            [_series("kiln_queue_depth", "30x40", model="m", **TARGET)],
                            {"model": "m", **TARGET}),
    "KilnWorkerRestarts": ([_series("kiln_worker_restarts_total", "0x30 1x10", **TARGET)],
                           [_series("kiln_worker_restarts_total", "0x40", **TARGET)], TARGET),
    # values measured on runs/default (onnx-int8-dynamic, reference: half its evaluation texts):
    # SST-2 movie reviews scored token_length 4.12, the other half of its own texts 0.010
    "KilnInputDrift": (
        [_series("kiln_drift_psi", "4.12x40", model="m", statistic="token_length", **TARGET)],
        [_series("kiln_drift_psi", "0.010x40", model="m", statistic="token_length", **TARGET)],
        {"model": "m", "statistic": "token_length"}),
}


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    summary = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)],
                     rule["annotations"]["summary"])
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": {"summary": summary}}


def test_each_alert_fires_on_bad_series_and_stays_quiet_on_healthy_ones(deployed: Path) -> None:
    promtool = tool("promtool")
    rules = {r["alert"]: r for r in yaml.safe_load(
        (deployed / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]}
    assert set(rules) == set(CASES)
    tests = []
    for name, (bad, healthy, labels) in CASES.items():
        for series, alerts in ((bad, [_expected(rules[name], labels)]), (healthy, [])):
            tests.append({"interval": "1m", "input_series": series, "alert_rule_test": [
                {"eval_time": "35m", "alertname": name, "exp_alerts": alerts}]})
    unit = deployed / "prometheus" / "alerts_test.yml"
    unit.write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    try:
        done = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True,
                              text=True)
    finally:
        unit.unlink()
    assert done.returncode == 0, done.stdout + done.stderr


def queries(folder: Path) -> list[str]:
    """Every PromQL expression of the dashboard, and of each alert without its threshold."""
    dashboard = json.loads((folder / "grafana" / "dashboards" / "kiln.json").read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for rule in yaml.safe_load((folder / "prometheus" / "alerts.yml").read_text())["groups"][0][
            "rules"]:
        signal = re.fullmatch(r"\((.*)\) > [-+.0-9e]+", rule["expr"], re.DOTALL)
        assert signal, rule["expr"]
        found.append(signal.group(1))
    return found


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        answer = json.loads(r.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def start_prometheus(folder: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus scraping ``target`` every second, with the deployment's alert rules."""
    binary = tool("prometheus")
    config = yaml.safe_load((folder / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (folder / "prometheus" / "test.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    data = tempfile.mkdtemp(prefix="tsdb-", dir=folder)
    proc = subprocess.Popen([binary, f"--config.file={folder / 'prometheus' / 'test.yml'}",
                             f"--storage.tsdb.path={data}", f"--web.listen-address={address}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, address
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("prometheus did not become ready")


def _scrapes(prometheus: str) -> int:
    found = query(prometheus, "count_over_time(up[5m])")
    return int(float(found[0]["value"][1])) if found else 0


@pytest.mark.slow
def test_every_query_returns_data_from_a_real_server(
        exported_run: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    folder, plan = deploy_run(exported_run, tmp_path / "deploy")
    server, url = start_server(exported_run, cli_env, "--workers", "2", name=plan.name)
    prometheus = None
    try:
        prometheus, address = start_prometheus(folder, url)
        run_load(url, TEXTS, LoadSettings(model=plan.name, concurrency=4, duration_s=4))
        deadline = time.monotonic() + 30
        while _scrapes(address) < 8 and time.monotonic() < deadline:
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://{url}/metrics") as r:
            exported = r.read().decode()
        # each worker publishes its drift index once its window holds 100 rows: the load sent
        # more than that to each
        assert "kiln_drift_psi{" in exported
        empty = [q for q in queries(folder) if not query(address, q)]
        assert empty == [], f"queries without data: {empty}"
    finally:
        for proc in (prometheus, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
