"""deploy/: every overlay rendered with `kubectl kustomize`, and the rendered objects checked
against each other and against the server: probe ports = container ports = the server's listen
flags, labels and selectors, the ServiceMonitor and the metrics Service, grace periods and the
server's drain, security settings, GPU/CPU resources, the server flags in the ConfigMap (real
ldcp-server options, values it accepts), the client service config, the autoscaler's metrics
and prometheus-adapter's rules, the PrometheusRule and monitoring/'s rules.

Run by CTest (deploy_kustomize); needs kubectl (Debian) and the built ldcp-server."""

import json
import re
import subprocess
import tempfile
import unittest

import yaml

import deploylib as dl

NAMESPACE = "ldcp"
CLUSTER_SCOPED = {"Namespace"}
# After the grace period the server stops what is left (up to 10 s) and shuts gRPC down (2 s):
# server/main.cpp.
SERVER_SHUTDOWN_AFTER_GRACE_S = 12
HEALTH_SERVICE = "ldcp.v1.ImageGeneration"

RENDERED = {o: dl.render(o) for o in dl.OVERLAYS}
OPTIONS = dl.server_options()


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def pod_template_labels(obj):
    return obj["spec"]["template"]["metadata"]["labels"]


class Overlays(unittest.TestCase):
    def server(self, objs):
        dep = dl.only(objs, "Deployment", "ldcp-server")
        spec = dep["spec"]["template"]["spec"]
        return dep, spec, spec["containers"][0]

    def test_objects_and_namespace(self):
        kinds = {"Namespace", "ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
                 "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"}
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                self.assertTrue(kinds <= {o["kind"] for o in objs}, overlay)
                for o in objs:
                    if o["kind"] in CLUSTER_SCOPED:
                        self.assertEqual(o["metadata"]["name"], NAMESPACE)
                    else:
                        self.assertEqual(o["metadata"].get("namespace"), NAMESPACE,
                                         f"{o['kind']} {o['metadata']['name']}")

    def test_ports_probes_and_flags_agree(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                _, spec, c = self.server(objs)
                env = dl.server_env(objs)
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                self.assertEqual(set(ports), {"grpc", "metrics", "health"})
                self.assertEqual(ports["grpc"], dl.port_of(env["LDCP_LISTEN"]))
                self.assertEqual(ports["metrics"], dl.port_of(env["LDCP_METRICS_LISTEN"]))
                self.assertEqual(ports["health"], dl.port_of(env["LDCP_HEALTH_LISTEN"]))
                # Reachable from the kubelet and Prometheus, not only from inside the pod.
                self.assertTrue(env["LDCP_LISTEN"].startswith("0.0.0.0:"))
                self.assertTrue(env["LDCP_METRICS_LISTEN"].startswith("0.0.0.0:"))
                self.assertTrue(env["LDCP_HEALTH_LISTEN"].startswith("0.0.0.0:"))
                # The kubelet's gRPC probes cannot speak TLS: they use the plaintext health-only
                # port (security_test.py checks that it serves health alone).
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    self.assertIn("grpc", c[probe], f"{probe} is not a native gRPC probe")
                    self.assertEqual(c[probe]["grpc"]["port"], ports["health"], probe)
                # Readiness follows the service's own health (NOT_SERVING while draining).
                self.assertEqual(c["readinessProbe"]["grpc"].get("service"), HEALTH_SERVICE)
                proto = (dl.SOURCE_DIR / "proto/ldcp/v1/ldcp.proto").read_text()
                self.assertIn("service ImageGeneration", proto)
                self.assertIn("package ldcp.v1;", proto)
                # Scrape annotations (where used) name the metrics port and path.
                ann = dl.only(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
                self.assertEqual(int(ann["prometheus.io/port"]), ports["metrics"])
                self.assertEqual(ann["prometheus.io/path"], "/metrics")

    def test_startup_liveness_and_grace_periods(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                _, spec, c = self.server(objs)
                env = dl.server_env(objs)
                grace = float(env.get("LDCP_GRACE_PERIOD", OPTIONS["LDCP_GRACE_PERIOD"]))
                pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
                self.assertEqual(pre_stop[0], "sleep")
                needed = float(pre_stop[1]) + grace + SERVER_SHUTDOWN_AFTER_GRACE_S
                self.assertGreaterEqual(spec["terminationGracePeriodSeconds"], needed,
                                        "the pod is killed before the server has drained")
                # Liveness failures during a drain must not restart the pod first.
                lv = c["livenessProbe"]
                self.assertGreaterEqual(lv["periodSeconds"] * lv["failureThreshold"], grace)
                st = c["startupProbe"]
                budget = st["periodSeconds"] * st["failureThreshold"]
                self.assertGreaterEqual(budget, 300 if overlay != "demo" else 120,
                                        "start-up probe too short for loading and calibration")
                if overlay == "cpu":  # CPU start-up is slower than GPU start-up
                    gpu = RENDERED["gpu"]
                    g = dl.only(gpu, "Deployment")["spec"]["template"]["spec"]["containers"][0]
                    self.assertGreater(budget, g["startupProbe"]["periodSeconds"]
                                       * g["startupProbe"]["failureThreshold"])

    def test_labels_and_selectors(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                dep, spec, _ = self.server(objs)
                pod = pod_template_labels(dep)
                self.assertTrue(matches(dep["spec"]["selector"]["matchLabels"], pod))
                job_pods = [pod_template_labels(j) for j in objs if j["kind"] == "Job"]
                services = [o for o in objs if o["kind"] == "Service"]
                self.assertEqual({s["metadata"]["name"] for s in services},
                                 {"ldcp-server-grpc", "ldcp-server-metrics"})
                container_ports = {p["name"] for p in spec["containers"][0]["ports"]}
                for s in services:
                    self.assertTrue(matches(s["spec"]["selector"], pod), s["metadata"]["name"])
                    for jp in job_pods:
                        self.assertFalse(matches(s["spec"]["selector"], jp),
                                         f"{s['metadata']['name']} selects the model Job's pod")
                    for p in s["spec"]["ports"]:
                        self.assertIn(p["targetPort"], container_ports)
                grpc_svc = dl.only(objs, "Service", "ldcp-server-grpc")
                self.assertEqual(grpc_svc["spec"]["clusterIP"], "None",
                                 "gRPC needs a headless Service for client-side balancing")
                pdb = dl.only(objs, "PodDisruptionBudget")
                self.assertTrue(matches(pdb["spec"]["selector"]["matchLabels"], pod))
                for jp in job_pods:
                    self.assertFalse(matches(pdb["spec"]["selector"]["matchLabels"], jp))
                    self.assertFalse(matches(dep["spec"]["selector"]["matchLabels"], jp))
                hpa = dl.only(objs, "HorizontalPodAutoscaler")
                ref = hpa["spec"]["scaleTargetRef"]
                self.assertEqual((ref["kind"], ref["name"]),
                                 ("Deployment", dep["metadata"]["name"]))
                self.assertNotIn("replicas", dep["spec"], "the HPA owns the replica count")
                self.assertLessEqual(hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
                # The ConfigMaps the pod reads are the ones rendered (hash suffixes included).
                names = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
                for src in spec["containers"][0]["envFrom"]:
                    self.assertIn(src["configMapRef"]["name"], names)

    def test_metrics_scraped_exactly_once(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                dep, _, c = self.server(objs)
                ann = dep["spec"]["template"]["metadata"]["annotations"]
                monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
                if overlay == "gpu":
                    self.assertEqual(len(monitors), 1)
                    sm = monitors[0]
                    metrics_svc = dl.only(objs, "Service", "ldcp-server-metrics")
                    selected = [s for s in objs if s["kind"] == "Service" and matches(
                        sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
                    self.assertEqual(selected, [metrics_svc], "the ServiceMonitor selects "
                                     "exactly the metrics Service")
                    ns = sm["spec"].get("namespaceSelector", {}).get("matchNames",
                                                                     [sm["metadata"]["namespace"]])
                    self.assertIn(metrics_svc["metadata"]["namespace"], ns)
                    svc_ports = {p["name"]: p for p in metrics_svc["spec"]["ports"]}
                    for ep in sm["spec"]["endpoints"]:
                        self.assertIn(ep["port"], svc_ports)
                        self.assertEqual(svc_ports[ep["port"]]["targetPort"], "metrics")
                        self.assertEqual(ep.get("path", "/metrics"), "/metrics")
                    self.assertEqual(ann["prometheus.io/scrape"], "false")
                    # The rules ship with it, the same groups as monitoring/prometheus.
                    pr = dl.only(objs, "PrometheusRule")
                    self.assertEqual(pr["spec"]["groups"], dl.rules()["groups"])
                    self.assertEqual(pr["metadata"]["labels"].get("release"),
                                     sm["metadata"]["labels"].get("release"))
                else:
                    self.assertEqual(monitors, [])
                    self.assertEqual(ann["prometheus.io/scrape"], "true")

    def test_security_context(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                for o in objs:
                    if o["kind"] not in ("Deployment", "Job"):
                        continue
                    spec = o["spec"]["template"]["spec"]
                    self.assertTrue(spec["securityContext"]["runAsNonRoot"])
                    self.assertGreaterEqual(spec["securityContext"]["runAsUser"], 1000)
                    self.assertEqual(spec["securityContext"]["seccompProfile"]["type"],
                                     "RuntimeDefault")
                    mounts = set()
                    for c in spec["containers"]:
                        sc = c["securityContext"]
                        self.assertFalse(sc["allowPrivilegeEscalation"])
                        self.assertTrue(sc["readOnlyRootFilesystem"])
                        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                        mounts |= {m["mountPath"] for m in c["volumeMounts"]}
                    self.assertIn("/tmp", mounts, "a read-only root needs a writable /tmp")

    def test_model_volume_and_job(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                dep, spec, c = self.server(objs)
                env = dl.server_env(objs)
                pvc = dl.only(objs, "PersistentVolumeClaim")
                vols = {v["name"]: v for v in spec["volumes"]}
                mounts = {m["name"]: m for m in c["volumeMounts"]}
                model_vol = next(n for n, v in vols.items() if "persistentVolumeClaim" in v)
                self.assertEqual(vols[model_vol]["persistentVolumeClaim"]["claimName"],
                                 pvc["metadata"]["name"])
                self.assertTrue(mounts[model_vol]["readOnly"],
                                "the servers mount the model read-only")
                self.assertTrue(env["LDCP_MODEL"].startswith(mounts[model_vol]["mountPath"] + "/"))
                if env.get("LDCP_GATES"):
                    self.assertTrue(
                        env["LDCP_GATES"].startswith(mounts[model_vol]["mountPath"] + "/"))
                job = dl.only(objs, "Job", "ldcp-model-fetch")
                jspec = job["spec"]["template"]["spec"]
                jc = jspec["containers"][0]
                jvols = {v["name"]: v for v in jspec["volumes"]}
                jmount = next(m for m in jc["volumeMounts"]
                              if "persistentVolumeClaim" in jvols[m["name"]])
                self.assertEqual(jvols[jmount["name"]]["persistentVolumeClaim"]["claimName"],
                                 pvc["metadata"]["name"])
                self.assertFalse(jmount.get("readOnly", False))
                self.assertEqual(jmount["mountPath"], mounts[model_vol]["mountPath"])
                jenv = {e["name"]: e.get("value") for e in jc.get("env", [])}
                self.assertEqual(jenv["MODEL_DIR"], env["LDCP_MODEL"],
                                 "the Job fills the folder the server loads")
                script = "\n".join(jc.get("args", []))
                self.assertIn('model_index.json', script, "the Job must be idempotent")
                self.assertIn('mv "$MODEL_DIR.partial" "$MODEL_DIR"', script)
                if overlay == "demo":
                    self.assertEqual(jc["image"], c["image"])
                    self.assertIn("ldcp init-demo-model", script)
                else:
                    pin = re.search(r"huggingface_hub==([\w.]+)", script).group(1)
                    reqs = (dl.SOURCE_DIR / "scripts/requirements-test.txt").read_text()
                    self.assertIn(f"huggingface_hub=={pin}", reqs, "pin the project's version")

    def test_device_resources(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                _, spec, c = self.server(objs)
                env = dl.server_env(objs)
                limits = c["resources"].get("limits", {})
                if overlay == "gpu":
                    self.assertTrue(env["LDCP_DEVICE"].startswith("cuda"))
                    self.assertGreaterEqual(int(limits["nvidia.com/gpu"]), 1)
                    self.assertTrue(any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]))
                    self.assertTrue(spec["nodeSelector"])
                    self.assertTrue(c["image"].endswith(":cuda"))
                else:
                    self.assertEqual(env["LDCP_DEVICE"], "cpu")
                    self.assertNotIn("nvidia.com/gpu", limits)
                    self.assertTrue(c["image"].endswith(":cpu"))
                    # The budget is required on the CPU and must fit the container's memory.
                    budget = dl.parse_bytes(env["LDCP_MEMORY_BUDGET"])
                    self.assertLess(budget, dl.parse_quantity(limits["memory"]))
                self.assertLessEqual(dl.parse_quantity(c["resources"]["requests"]["memory"]),
                                     dl.parse_quantity(limits["memory"]))

    def test_server_flags_are_options_with_values_it_accepts(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                env = dl.server_env(objs)
                for k in env:
                    self.assertIn(k, OPTIONS, f"{k} is not an ldcp-server option")
                # Start the real server with this environment: it must get past parsing every
                # option to loading the model (which is then missing, so it stops). The Secrets'
                # files (TLS, tokens) are stand-ins made here (dl.secret_stand_ins).
                with tempfile.TemporaryDirectory() as d:
                    run_env = dict(env, LDCP_MODEL=f"{d}/no-model", LDCP_LISTEN="127.0.0.1:0",
                                   LDCP_METRICS_LISTEN="127.0.0.1:0", LDCP_LOG_FORMAT="text",
                                   LDCP_HEALTH_LISTEN="127.0.0.1:0", PATH="/usr/bin:/bin")
                    run_env.update(dl.secret_stand_ins(env, d))
                    r = subprocess.run([dl.lib.tool("ldcp-server")], env=run_env,
                                       capture_output=True, text=True, timeout=60)
                out = r.stdout + r.stderr
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(f"loading {d}/no-model on {env['LDCP_DEVICE']}", out,
                              f"ldcp-server refused the {overlay} flags:\n{out}")

    def test_client_service_config(self):
        want = json.loads((dl.SOURCE_DIR / "client/service_config.json").read_text())
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                cm = next(o for o in objs if o["kind"] == "ConfigMap"
                          and o["metadata"]["name"].startswith("ldcp-client-config"))
                got = json.loads(cm["data"]["service_config.json"])
                self.assertEqual(got, want, "deploy/base/client/service_config.json differs from "
                                            "client/service_config.json")
        self.assertEqual(want["loadBalancingConfig"], [{"round_robin": {}}])
        retry = want["methodConfig"][0]["retryPolicy"]
        self.assertIn("UNAVAILABLE", retry["retryableStatusCodes"])
        self.assertGreater(retry["maxAttempts"], 1)
        self.assertEqual(want["methodConfig"][0]["name"], [{"service": HEALTH_SERVICE}])

    def test_autoscaler_metrics_have_adapter_rules(self):
        values = yaml.safe_load((dl.DEPLOY / "prometheus-adapter/values.yaml").read_text())
        exposed = {}
        for r in values["rules"]["custom"]:
            series = re.match(r"\s*([a-zA-Z_:][\w:]*)", r["seriesQuery"]).group(1)
            name = r["name"].get("as") or series
            self.assertRegex(series, r["name"]["matches"])
            # Per-pod metrics: the series' namespace and pod labels map to the objects.
            self.assertEqual(r["resources"]["overrides"]["pod"], {"resource": "pod"})
            self.assertEqual(r["resources"]["overrides"]["namespace"], {"resource": "namespace"})
            self.assertIn("<<.LabelMatchers>>", r["metricsQuery"])
            self.assertIn("<<.GroupBy>>", r["metricsQuery"])
            exposed[name] = r
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                hpa = dl.only(objs, "HorizontalPodAutoscaler")
                names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                         if m["type"] == "Pods"]
                self.assertIn("ldcp_queue_depth", names)
                for n in names:
                    self.assertIn(n, exposed, f"no prometheus-adapter rule serves {n}")

    def test_grafana_dashboard_configmap(self):
        cm = dl.only(dl.kustomize(dl.MONITORING / "grafana"), "ConfigMap")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(json.loads(cm["data"]["ldcp-dashboard.json"]), dl.dashboard())
        provider = yaml.safe_load(
            (dl.MONITORING / "grafana/provisioning/dashboards/ldcp.yaml").read_text())
        self.assertEqual(provider["providers"][0]["type"], "file")

    def test_kubernetes_scrape_config_reads_the_annotations(self):
        cfg = yaml.safe_load((dl.MONITORING / "prometheus/prometheus-kubernetes.yml").read_text())
        job = cfg["scrape_configs"][0]
        sources = {s for rc in job["relabel_configs"] for s in rc.get("source_labels", [])}
        targets = {rc.get("target_label") for rc in job["relabel_configs"]}
        dep = dl.only(RENDERED["cpu"], "Deployment")
        for key in dep["spec"]["template"]["metadata"]["annotations"]:
            meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            self.assertIn(meta, sources, f"the scrape config ignores {key}")
        # prometheus-adapter's rules need these labels on every series.
        self.assertTrue({"namespace", "pod"} <= targets)
        self.assertEqual(cfg["rule_files"], ["ldcp-rules.yml"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
