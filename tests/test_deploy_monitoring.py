"""deploy/prometheus and deploy/grafana: promtool checks, a real Prometheus, metric names.

promtool and prometheus come from Debian's `prometheus` package. Outside CI a missing
binary skips its tests; with CI=true it fails them, since .ci/run must install it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from feedback.metrics import FeedbackMetrics
from worker.broker import free_port
from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ticket-router.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

# Series Prometheus writes itself for every target; alerts may use them.
PROMETHEUS_SYNTHETIC = {"up"}
# The alerts deploy/README.md promises, and a metric each must look at.
REQUIRED_ALERTS = {
    "RouterConsumerLagGrowing": "router_consumer_lag_messages",
    "RouterDeadLetterRateHigh": "router_tickets_dead_lettered_total",
    "RouterTriageRateSpike": "router_tickets_triaged_total",
    "RouterEndToEndLatencyAboveSLO": "router_end_to_end_latency_seconds_bucket",
    "RouterEngineNotReady": "router_ready",
    "RouterLiveAccuracyDrop": "router_live_judged_decisions",
    "RouterAutoroutePrecisionBelowTarget": "router_feedback_verdicts_total",
}
# What the dashboard must show, by the metric that shows it.
REQUIRED_DASHBOARD_METRICS = {
    "router_tickets_routed_total",  # throughput by queue
    "router_end_to_end_latency_seconds_bucket",  # latency percentiles
    "router_consumer_lag_messages",  # lag
    "router_confidence_bucket",  # confidence distribution
    "router_tickets_triaged_total",  # triage rate
    "router_tickets_dead_lettered_total",  # dead-letter rate
    "router_live_correct_decisions",  # live accuracy (feedback consumer)
    "router_feedback_verdicts_total",  # confirmed vs reassigned by queue and version
    "router_feedback_triage_outcomes_total",  # what humans chose for triaged tickets
    "router_feedback_without_decision_total",  # feedback the decision log could not join
    "router_queue_mode_info",  # rollout: each queue's mode
    "router_feedback_mode_verdicts_total",  # rollout: shadow and recommend precision
    "router_queue_decisions_total",  # rollout: decisions by queue and mode
}
# The precision a queue must hold before it is promoted (the build's --target-precision).
TARGET_PRECISION = 0.95
# Grafana's own variables; any other `$name` in a query must be a dashboard variable.
GRAFANA_MACROS = {"__rate_interval", "__interval", "__range"}


def require_tool(name: str) -> str:
    """Path of `name` (PATH, then the venv's bin); skip when missing, fail when CI=true."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        message = f"{name} not found: .ci/run must `apt-get install -y prometheus`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# --- PromQL: which metric names an expression reads --------------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (selectors, not functions or labels)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries, Grafana's $__rate_interval
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_promql_metric_names_reads_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, queue) (rate(router_x_bucket{queue=~"a|b"}[5m])))'
        " / on (queue) group_left sum(router_y_total offset 1h) > bool 1e-3"
        " and router_z unless absent(router_w)"
    )
    expected = {"router_x_bucket", "router_y_total", "router_z", "router_w"}
    assert promql_metric_names(expr) == expected


def exported_names(metrics: Metrics | FeedbackMetrics) -> set[str]:
    """Every sample name `metrics` can expose, from each family's type."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
        "stateset": ("",),
        "gauge": ("",),
        "unknown": ("",),
    }
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes[family.type]
    }


@pytest.fixture(scope="module")
def worker_metric_names() -> set[str]:
    # The worker's metrics and the feedback consumer's (`ticket-router feedback`).
    names = exported_names(Metrics(CollectorRegistry()))
    names |= exported_names(FeedbackMetrics(CollectorRegistry()))
    # Guard the suffix logic itself with names of each type.
    assert {
        "router_tickets_routed_total",
        "router_end_to_end_latency_seconds_bucket",
        "router_ready",
        "router_build_info",
    } <= names
    return names


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text("utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text("utf-8"))


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if t.get("expr")]
    for var in board["templating"]["list"]:
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+)\s*,\s*\w+\)", text or "")
        if match:
            exprs.append(match.group(1))
    return exprs


def grafana_to_promql(expr: str, *, window: str = "1m") -> str:
    """Replace Grafana's macros and variables with values Prometheus accepts: a range
    (`[$__rate_interval]`, `[$window]`) becomes `window`, any other variable `.*`."""
    expr = re.sub(r"\[\$\{?\w+\}?\]", f"[{window}]", expr)
    for macro in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(macro, window)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def row_panels(title: str) -> list[dict[str, Any]]:
    """The panels under the row called `title`, up to the next row."""
    panels = dashboard()["panels"]
    (start,) = [i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == title]
    rest = panels[start + 1 :]
    end = next((i for i, p in enumerate(rest) if p["type"] == "row"), len(rest))
    return rest[:end]


def panel_exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", []) if t.get("expr")]


def test_alert_rules_read_only_metrics_the_worker_exports(worker_metric_names: set[str]) -> None:
    for rule in alert_rules():
        unknown = promql_metric_names(rule["expr"]) - worker_metric_names - PROMETHEUS_SYNTHETIC
        assert not unknown, f"{rule['alert']}: not exported by worker.metrics: {sorted(unknown)}"


def test_dashboard_reads_only_metrics_the_worker_exports(worker_metric_names: set[str]) -> None:
    for expr in dashboard_exprs():
        unknown = promql_metric_names(expr) - worker_metric_names
        assert not unknown, f"{expr!r}: not exported by worker.metrics: {sorted(unknown)}"


def test_required_alerts_exist_and_watch_their_metric() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for alert, metric in REQUIRED_ALERTS.items():
        assert alert in rules, f"missing alert {alert}"
        assert metric in promql_metric_names(rules[alert]["expr"])
        assert rules[alert]["labels"]["severity"] in {"warning", "critical"}
        assert rules[alert]["annotations"]["summary"]


def test_dashboard_shows_throughput_latency_lag_confidence_triage_and_dead_letters() -> None:
    shown = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    assert sorted(REQUIRED_DASHBOARD_METRICS - shown) == []
    board = dashboard()
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    routed = [
        t["expr"]
        for p in board["panels"]
        for t in p.get("targets", [])
        if "router_tickets_routed_total" in t["expr"]
    ]
    assert any("by (queue)" in e for e in routed), "no throughput-by-queue panel"
    quantiles = {
        m
        for p in board["panels"]
        for t in p.get("targets", [])
        for m in re.findall(
            r"histogram_quantile\((0\.\d+),.*"
            r"router_end_to_end_latency_seconds_bucket",
            t["expr"],
        )
    }
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_dashboard_queries_use_only_defined_variables() -> None:
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]} | GRAFANA_MACROS
    titles = [p["title"] for p in board["panels"]]
    for text in dashboard_exprs() + titles:
        used = set(re.findall(r"\$\{?(\w+)\}?", text))
        assert used <= defined, f"{text!r}: undefined {sorted(used - defined)}"


def test_rollout_row_shows_modes_precision_against_the_target_and_decisions() -> None:
    panels = row_panels("Rollout")
    reads = {p["title"]: set().union(*map(promql_metric_names, panel_exprs(p))) for p in panels}
    assert any("router_queue_mode_info" in m for m in reads.values()), reads
    decisions = [e for p in panels for e in panel_exprs(p) if "router_queue_decisions_total" in e]
    assert any("by (queue, mode)" in e and "rate(" in e for e in decisions), decisions
    # Live precision: confirmed over all verdicts, per queue and mode, over $window, for
    # shadow and recommend (mode verdicts) and autoroute (routed verdicts), with the target.
    precision = [
        p
        for p in panels
        if p["type"] == "timeseries"
        and {"router_feedback_mode_verdicts_total", "router_feedback_verdicts_total"}
        <= reads[p["title"]]
    ]
    assert len(precision) == 1, reads
    (graph,) = precision
    exprs = panel_exprs(graph)
    assert all('verdict="confirmed"' in e and "[$window]" in e for e in exprs), exprs
    assert any("by (queue, mode)" in e for e in exprs), exprs
    assert any('"mode", "autoroute"' in e for e in exprs), exprs
    defaults = graph["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, TARGET_PRECISION]
    assert "$window" in graph["title"]
    (window,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "window"]
    assert window["current"]["value"] in window["query"].split(",")


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder() -> None:
    ds = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    provider_file = GRAFANA_PROVISIONING / "dashboards" / "ticket-router.yml"
    providers = yaml.safe_load(provider_file.read_text())
    (provider,) = providers["providers"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    mounts = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"] if ":" in v}
    assert provider["options"]["path"] in mounts
    panels_ds = {p["datasource"]["uid"] for p in dashboard()["panels"] if "datasource" in p}
    assert panels_ds == {"${datasource}"}


# --- promtool --------------------------------------------------------------------------


def run(cmd: list[str], *, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.integration  # runs promtool
def test_promtool_accepts_the_scrape_config() -> None:
    result = run([require_tool("promtool"), "check", "config", "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration  # runs promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = run([require_tool("promtool"), "check", "rules", "alerts.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.integration  # runs promtool
def test_alert_unit_tests_pass() -> None:
    result = run([require_tool("promtool"), "test", "rules", "alerts_test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    doc = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alert_rules()}


ROLLOUT_VERDICTS = [
    # network_vpn in shadow: 3 confirmed, 1 reassigned a minute -> 0.75.
    ("router_feedback_mode_verdicts_total", "shadow", "network_vpn", "confirmed", "0+3x60"),
    ("router_feedback_mode_verdicts_total", "shadow", "network_vpn", "reassigned", "0+1x60"),
    # hardware in recommend: only reassigned suggestions -> 0, not nothing.
    ("router_feedback_mode_verdicts_total", "recommend", "hardware", "reassigned", "0+2x60"),
    # printing in shadow: judged before the window only -> no precision.
    ("router_feedback_mode_verdicts_total", "shadow", "printing", "confirmed", "5x60"),
    # database on autoroute: its routed tickets, all confirmed -> 1.
    ("router_feedback_verdicts_total", None, "database", "confirmed", "0+1x60"),
]


@pytest.mark.integration  # runs promtool
def test_rollout_precision_is_confirmed_over_judged_per_queue_and_mode(tmp_path: Path) -> None:
    tables = [
        p
        for p in row_panels("Rollout")
        if p["type"] == "table" and any("verdict=" in e for e in panel_exprs(p))
    ]
    (table,) = tables
    precision, judged = (t["expr"] for t in table["targets"][:2])
    assert "router_feedback_mode_verdicts_total" in judged and "verdict=" not in judged
    (graph,) = [
        p for p in row_panels("Rollout") if p["type"] == "timeseries" and "$window" in p["title"]
    ]
    by_mode, autoroute = panel_exprs(graph)
    series = []
    for metric, mode, queue, verdict, values in ROLLOUT_VERDICTS:
        labels = f'queue="{queue}",model="m1",verdict="{verdict}"'
        labels += f',mode="{mode}"' if mode else ""
        series.append({"series": f"{metric}{{{labels}}}", "values": values})
    cases = {
        precision: [("network_vpn", "shadow", 0.75), ("hardware", "recommend", 0.0),
                    ("database", "autoroute", 1.0)],
        by_mode: [("network_vpn", "shadow", 0.75), ("hardware", "recommend", 0.0)],
        autoroute: [("database", "autoroute", 1.0)],
        judged: [("network_vpn", "shadow", 120.0), ("hardware", "recommend", 60.0),
                 ("printing", "shadow", 0.0), ("database", "autoroute", 30.0)],
    }  # fmt: skip
    doc = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": grafana_to_promql(expr, window="30m"),
                        "eval_time": "60m",
                        "exp_samples": [
                            {"labels": f'{{mode="{mode}", queue="{queue}"}}', "value": value}
                            for queue, mode, value in expected
                        ],
                    }
                    for expr, expected in cases.items()
                ],
            }
        ],
    }
    test_file = tmp_path / "rollout_test.yml"
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False), "utf-8")
    result = run([require_tool("promtool"), "test", "rules", str(test_file)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus -----------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


class PrometheusServer:
    """The `prometheus` binary on a free loopback port with its own storage."""

    def __init__(self, *, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
        self._log = (workdir / "prometheus.log").open("w")
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_file = workdir / "prometheus.log"

    def _get(self, path: str) -> tuple[int, str]:
        try:
            # Always http://127.0.0.1:<port>, built in __init__.
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:  # noqa: S310
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if self._proc.poll() is not None:
                pytest.fail(f"prometheus exited: {self.log_file.read_text()}")
            return self._get("/-/ready")[0] == 200

        wait_for(ready, timeout_s=timeout_s, what="prometheus /-/ready")

    def api(self, path: str, **params: str) -> dict[str, Any]:
        status, body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert status in (200, 400, 422), f"{path}: HTTP {status}: {body}"
        return dict(json.loads(body))

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", f"{expr!r}: {answer}"
        return list(answer["data"]["result"])

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._log.close()


def scrape_config_for(target: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the worker job pointed at `target` and fast
    intervals; rule files stay, so the real alert rules are loaded and evaluated."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text("utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    config["scrape_configs"] = [
        job for job in config["scrape_configs"] if job["job_name"] == "ticket-router"
    ]
    (job,) = config["scrape_configs"]
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [target]}]
    return config


@pytest.fixture
def scrape_target() -> Iterator[str]:
    """HOST:PORT serving the worker's metrics: `Metrics` on prometheus_client's server.

    The scrape-and-query tests below only need a HOST:PORT; a running worker's metrics
    port can replace this fixture.
    """
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.tickets_routed.labels(queue="hardware").inc(3)
    metrics.ready.set(1)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def prometheus(scrape_target: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(
        binary=require_tool("prometheus"), workdir=tmp_path, config=scrape_config_for(scrape_target)
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.integration  # a Prometheus server
def test_prometheus_scrapes_the_worker_metrics_and_answers_queries(
    prometheus: PrometheusServer, scrape_target: str
) -> None:
    def routed() -> list[dict[str, Any]]:
        return prometheus.query('router_tickets_routed_total{job="ticket-router",queue="hardware"}')

    (sample,) = wait_for(routed, timeout_s=30, what="router_tickets_routed_total in Prometheus")
    assert sample["metric"]["instance"] == scrape_target
    assert float(sample["value"][1]) == 3.0
    (up,) = prometheus.query('up{job="ticket-router"}')
    assert float(up["value"][1]) == 1.0


@pytest.mark.slow
@pytest.mark.integration  # a Prometheus server
def test_prometheus_evaluates_every_alert_rule_without_error(prometheus: PrometheusServer) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules", type="alert")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(r["lastEvaluation"] > "0001-01-01T00:00:00Z" for r in rules)
        return rules if done else None

    rules = wait_for(evaluated, timeout_s=30, what="a first evaluation of every rule")
    assert {r["name"] for r in rules} == {rule["alert"] for rule in alert_rules()}
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    # The target is ready and healthy: no alert may be pending or firing.
    assert [r["name"] for r in rules if r["state"] != "inactive"] == []


@pytest.mark.slow
@pytest.mark.integration  # a Prometheus server
def test_prometheus_accepts_every_dashboard_query(prometheus: PrometheusServer) -> None:
    for expr in dashboard_exprs():
        prometheus.query(grafana_to_promql(expr))
