"""The cluster-side hardening of every overlay (issue 12 item 10), on the rendered manifests:
Pod Security labels on the namespace and pods that meet the restricted profile, no service
account token mounted, NetworkPolicies (ingress denied by default; gRPC from labelled clients
and metrics from Prometheus, on the Deployment's own ports), and the model Job pinned to a
revision, its script run here to show that it refuses an unpinned one and skips a folder that
already holds the pinned commit."""

import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import deploylib as d

OVERLAYS = ["gpu", "cpu", "demo"]
PINNED = "0123456789abcdef0123456789abcdef01234567"


def pod_templates(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]


class Hardening(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {name: d.render(name) for name in OVERLAYS}

    def test_namespace_enforces_restricted_pod_security(self):
        for overlay, objects in self.rendered.items():
            labels = d.only(objects, "Namespace")["metadata"].get("labels", {})
            for mode in ("enforce", "warn", "audit"):
                self.assertEqual(labels.get(f"pod-security.kubernetes.io/{mode}"), "restricted",
                                 (overlay, mode))

    def test_pods_meet_restricted_and_mount_no_token(self):
        for overlay, objects in self.rendered.items():
            for name, template in pod_templates(objects):
                spec = template["spec"]
                where = f"{overlay}/{name}"
                self.assertIs(spec.get("automountServiceAccountToken"), False, where)
                sc = spec.get("securityContext", {})
                self.assertTrue(sc.get("runAsNonRoot"), where)
                self.assertEqual(sc.get("seccompProfile", {}).get("type"), "RuntimeDefault", where)
                for c in spec.get("containers", []) + spec.get("initContainers", []):
                    csc = c.get("securityContext", {})
                    self.assertIs(csc.get("allowPrivilegeEscalation"), False, (where, c["name"]))
                    self.assertEqual(csc.get("capabilities", {}).get("drop"), ["ALL"],
                                     (where, c["name"]))

    def test_network_policies_deny_by_default_and_open_only_the_named_ports(self):
        for overlay, objects in self.rendered.items():
            policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
            deny = policies.get("ldcp-default-deny-ingress")
            self.assertIsNotNone(deny, overlay)
            self.assertEqual(deny["spec"]["podSelector"], {}, overlay)
            self.assertEqual(deny["spec"]["policyTypes"], ["Ingress"], overlay)
            self.assertNotIn("ingress", deny["spec"], overlay)
            server = policies["ldcp-server-ingress"]["spec"]
            deployment = d.only(objects, "Deployment", "ldcp-server")
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            for k, v in server["podSelector"]["matchLabels"].items():
                self.assertEqual(pod_labels.get(k), v, (overlay, k))
            ports = {p["name"]: p["containerPort"] for c in deployment["spec"]["template"]["spec"]
                     ["containers"] for p in c.get("ports", [])}
            allowed = {}
            for rule in server["ingress"]:
                for p in rule["ports"]:
                    self.assertIn(p["port"], ports, (overlay, p))  # a named port of the pod
                    allowed[p["port"]] = rule["from"]
            self.assertEqual(set(allowed), {"grpc", "metrics"}, overlay)  # not health, nothing else
            grpc_from = allowed["grpc"][0]["podSelector"]["matchLabels"]
            self.assertEqual(grpc_from, {"ldcp.io/client": "true"}, overlay)
            metrics_from = allowed["metrics"][0]["podSelector"]["matchLabels"]
            self.assertEqual(metrics_from, {"app.kubernetes.io/name": "prometheus"}, overlay)
            # The server listens on those ports (the flags agree with the pod's ports).
            env = d.server_env(objects)
            self.assertEqual(d.port_of(env["LDCP_LISTEN"]), ports["grpc"], overlay)
            self.assertEqual(d.port_of(env["LDCP_METRICS_LISTEN"]), ports["metrics"], overlay)

    def test_model_job_is_pinned_to_a_revision(self):
        objects = self.rendered["gpu"]
        job = d.only(objects, "Job", "ldcp-model-fetch")
        container = job["spec"]["template"]["spec"]["containers"][0]
        refs = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
        config = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"] in refs)
        self.assertIn("MODEL_REVISION", config["data"])
        self.assertIn("MODEL_REPO", config["data"])
        script = container["args"][0]
        self.assertIn('revision=os.environ["MODEL_REVISION"]', script)
        with tempfile.TemporaryDirectory() as tmp:
            def run(revision):
                env = {"PATH": "/usr/bin:/bin", "MODEL_DIR": f"{tmp}/sd15",
                       "MODEL_REPO": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                       "MODEL_REVISION": revision}
                return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True,
                                      text=True, timeout=30)
            for bad in ("", "main", PINNED[:39], PINNED.upper(), PINNED + "0"):
                r = run(bad)
                self.assertEqual(r.returncode, 2, (bad, r.stdout, r.stderr))
                self.assertIn("MODEL_REVISION must be a 40-hex commit", r.stderr)
            # A folder that holds the pinned revision is left alone (no download attempted).
            Path(f"{tmp}/sd15").mkdir()
            Path(f"{tmp}/sd15/model_index.json").write_text("{}")
            Path(f"{tmp}/sd15/.revision").write_text(PINNED)
            r = run(PINNED)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"already holds stable-diffusion-v1-5/stable-diffusion-v1-5 at {PINNED}",
                          r.stdout)


if __name__ == "__main__":
    sys.exit(unittest.main(verbosity=2))
