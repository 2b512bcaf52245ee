"""monitoring/: promtool check rules, promtool test rules (the alerts' unit tests), promtool
check config; the Grafana dashboard's structure; then, against a live ldcp-server on the demo
model that has served a mixed load, and a real Prometheus scraping it with
monitoring/prometheus/prometheus.yml: every metric name in the dashboard, the rules and
prometheus-adapter's rules is in the /metrics scrape, every dashboard query and recording rule
returns data, and every rule evaluates without error. (The Dockerfile's HEALTHCHECK is run live
by dockerfile_test.py, on a server with TLS on.)

Run by CTest (deploy_monitoring); needs the built binaries and Debian's prometheus."""

import json
import math
import re
import shutil
import subprocess
import time
import unittest

import yaml

import deploylib as dl

PROM_DIR = dl.MONITORING / "prometheus"
# Prometheus' own series that rules may use besides the server's.
PROMETHEUS_SERIES = {"up"}
# Metric families the issue asks the dashboard to show.
DASHBOARD_MUST_SHOW = {
    "ldcp_requests_total", "ldcp_request_duration_seconds_bucket", "ldcp_queue_wait_seconds_bucket",
    "ldcp_denoising_step_duration_seconds_bucket", "ldcp_request_peak_memory_bytes_bucket",
    "ldcp_memory_in_use_bytes", "ldcp_memory_budget_bytes", "ldcp_pruning_ratio_sum",
    "ldcp_requests_by_level_total", "ldcp_queue_depth", "ldcp_batch_size_sum",
    "ldcp_images_generated_total",
}


def promtool(*args, cwd=PROM_DIR):
    exe = shutil.which("promtool")
    if exe is None:
        raise AssertionError("promtool is not installed (Debian's prometheus, scripts/setup.sh)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


class Promtool(unittest.TestCase):
    def test_check_rules(self):
        r = promtool("check", "rules", "ldcp-rules.yml")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        n = sum(len(g["rules"]) for g in dl.rules()["groups"])
        self.assertIn(f"SUCCESS: {n} rules found", r.stdout)

    def test_rule_unit_tests(self):
        r = promtool("test", "rules", "ldcp-rules.test.yml")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)
        # Every alert has a unit test that makes it fire.
        tests = yaml.safe_load((PROM_DIR / "ldcp-rules.test.yml").read_text())["tests"]
        fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", [])
                 if a.get("exp_alerts")}
        alerts = {name for name, _, rec in dl.rule_exprs() if not rec}
        self.assertEqual(fired, alerts)

    def test_check_config(self):
        r = promtool("check", "config", "prometheus.yml")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("is valid prometheus config file syntax", r.stdout)
        targets = json.loads((PROM_DIR / "targets/ldcp-server.json").read_text())
        self.assertTrue(targets[0]["targets"])


class Dashboard(unittest.TestCase):
    def test_structure_and_variables(self):
        dash = dl.dashboard()
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        self.assertIn("instance", variables)
        for name, selector, label in dl.dashboard_variable_queries(dash):
            self.assertEqual(label, name)
        ids = []
        panels = dl.dashboard_panels(dash)
        self.assertGreaterEqual(len(panels), 12)

        def walk(ps):
            for p in ps:
                ids.append(p["id"])
                self.assertIn("gridPos", p)
                if p.get("targets"):
                    self.assertEqual(p["datasource"]["uid"], "${datasource}", p["title"])
                    for t in p["targets"]:
                        self.assertEqual(t["datasource"]["uid"], "${datasource}")
                        # Every query follows the job and instance selectors.
                        self.assertIn('instance=~"$instance"', t["expr"], p["title"])
                        self.assertIn('job=~"$job"', t["expr"], p["title"])
                walk(p.get("panels", []))

        walk(dash["panels"])
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        used = set()
        for _, targets in panels:
            for _, expr, _ in targets:
                used |= dl.promql_metric_names(expr)
        self.assertTrue(DASHBOARD_MUST_SHOW <= used, DASHBOARD_MUST_SHOW - used)


class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = dl.workdir("ldcp-deploy-monitoring-")
        cls.server = dl.start_server(cls.work)
        cls.prom = None
        try:
            cls.prom = dl.Prometheus(cls.work, [f"127.0.0.1:{cls.server.metrics_port}"])
            cls.prom.wait_for('up{job="ldcp-server"} == 1')
            pb, pb_grpc = dl.lib.load_stubs()
            cls.codes = dl.drive_load(cls.server.target, pb, pb_grpc, duration=8, concurrency=3,
                                      stream_every=4, invalid_every=5, images_every=3)
            # Two more scrapes and rule evaluations after the last request.
            time.sleep(3)
            cls.metrics_text = cls.server.metrics_text()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.prom:
            cls.prom.stop()
        cls.server.stop()
        shutil.rmtree(cls.work, ignore_errors=True)

    def test_load_was_served(self):
        self.assertGreater(self.codes.get("OK", 0), 5, self.codes)
        self.assertGreater(self.codes.get("INVALID_ARGUMENT", 0), 0, self.codes)
        self.assertEqual(set(self.codes) - {"OK", "INVALID_ARGUMENT"}, set(), self.codes)

    def test_every_metric_name_is_exported(self):
        live = dl.scraped_names(self.metrics_text)
        recorded = {name for name, _, rec in dl.rule_exprs() if rec}
        used = {}
        for title, targets in dl.dashboard_panels():
            for _, expr, _ in targets:
                for n in dl.promql_metric_names(expr):
                    used.setdefault(n, f"dashboard panel {title!r}")
        for var, selector, _ in dl.dashboard_variable_queries():
            for n in dl.promql_metric_names(selector):
                used.setdefault(n, f"dashboard variable {var}")
        for name, expr, _ in dl.rule_exprs():
            for n in dl.promql_metric_names(expr) - recorded - PROMETHEUS_SERIES:
                used.setdefault(n, f"rule {name}")
        adapter = yaml.safe_load((dl.DEPLOY / "prometheus-adapter/values.yaml").read_text())
        for r in adapter["rules"]["custom"]:
            q = r["metricsQuery"].replace("<<.Series>>", "x_series").replace(
                "<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod")
            for n in (dl.promql_metric_names(q) - {"x_series"}
                      | dl.promql_metric_names(r["seriesQuery"])):
                used.setdefault(n, "prometheus-adapter rule")
        self.assertGreater(len(used), 15)
        missing = {n: where for n, where in used.items() if n not in live}
        self.assertEqual(missing, {}, "metric names not in the live /metrics scrape")

    def test_every_dashboard_query_returns_data(self):
        for title, targets in dl.dashboard_panels():
            for ref, expr, _ in targets:
                with self.subTest(panel=title, query=ref):
                    result = self.prom.query(dl.grafana_to_promql(expr, "1m"))
                    self.assertTrue(result, f"{title} {ref}: no data for {expr}")
                    values = [float(r["value"][1]) for r in result]
                    self.assertTrue(any(not math.isnan(v) for v in values), (expr, values))

    def test_rules_load_and_recording_rules_have_series(self):
        groups = self.prom.api("rules")["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        self.assertEqual(set(loaded), {name for name, _, _ in dl.rule_exprs()})
        for name, r in loaded.items():
            self.assertEqual(r["health"], "ok", f"{name}: {r.get('lastError')}")
        # Recording rules evaluate every second: wait for their first samples.
        for name, _, rec in dl.rule_exprs():
            if rec:
                with self.subTest(rule=name):
                    result = self.prom.wait_for(name, timeout=20)
                    self.assertEqual(result[0]["metric"]["job"], "ldcp-server")
        ratio = float(self.prom.query("ldcp:request_errors:ratio_rate5m")[0]["value"][1])
        self.assertEqual(ratio, 0.0, "invalid requests are the clients' errors, not the server's")

    def test_adapter_queries_return_per_pod_values(self):
        adapter = yaml.safe_load((dl.DEPLOY / "prometheus-adapter/values.yaml").read_text())
        for r in adapter["rules"]["custom"]:
            series = re.match(r"\s*([a-zA-Z_:][\w:]*)", r["seriesQuery"]).group(1)
            # Outside Kubernetes there are no namespace/pod labels: group by instance instead.
            q = (r["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'job="ldcp-server"')
                 .replace("<<.GroupBy>>", "instance"))
            with self.subTest(metric=r["name"]["as"]):
                result = self.prom.query(q)
                self.assertEqual(len(result), 1, q)
                self.assertEqual(result[0]["metric"],
                                 {"instance": f"127.0.0.1:{self.server.metrics_port}"})
                self.assertFalse(math.isnan(float(result[0]["value"][1])), q)


if __name__ == "__main__":
    unittest.main(verbosity=2)
