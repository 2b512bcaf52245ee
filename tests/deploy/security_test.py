"""deploy/: TLS, client certificates and bearer tokens wired through the overlays. Every file option
the server is given (LDCP_TLS_*, LDCP_AUTH_TOKENS_FILE) lies in a read-only Secret volume mounted
as a folder (no subPath, or rotations never reach the pod) and readable by the pod's group only;
the gpu overlay turns TLS, mutual TLS, tokens on and reflection off; the optional cert-manager
component's Certificate fills the Secret the server reads, for the names clients dial; the probes'
port serves health without TLS. Live: a server started with the gpu overlay's environment (on
the CPU, the tiny demo model, Secrets replaced by files made here) answers the kubelet's probes,
plaintext, on the probe port while its gRPC port refuses plaintext.

Run by CTest (deploy_security); needs kubectl, openssl and the built ldcp-server."""

import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import deploylib as dl

RENDERED = {o: dl.render(o) for o in dl.OVERLAYS}
SECRETS = {"LDCP_TLS_CERT": ("ldcp-server-tls", "tls.crt"),
           "LDCP_TLS_KEY": ("ldcp-server-tls", "tls.key"),
           "LDCP_TLS_CLIENT_CA": ("ldcp-client-ca", "ca.crt"),
           "LDCP_AUTH_TOKENS_FILE": ("ldcp-auth-tokens", "tokens")}


def container(objs):
    dep = dl.only(objs, "Deployment", "ldcp-server")
    spec = dep["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def secret_of(objs, path):
    """(Secret name, key, mount) of the Secret volume that holds `path`, or None."""
    spec, c = container(objs)
    vols = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        root = m["mountPath"].rstrip("/") + "/"
        if path.startswith(root) and "secret" in vols[m["name"]]:
            return vols[m["name"]]["secret"], path[len(root):], m
    return None


def render_with_cert_manager():
    """The gpu overlay with the cert-manager component, from a kustomization in a temp folder."""
    with tempfile.TemporaryDirectory() as d:
        rel = os.path.relpath(dl.DEPLOY, d)
        (Path(d) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "namespace: ldcp\n"
            f"resources:\n  - {rel}/overlays/gpu\n"
            f"components:\n  - {rel}/components/cert-manager\n")
        return dl.kustomize(d)


class Wiring(unittest.TestCase):
    def test_secret_files_are_whole_read_only_secret_folders(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                env = dl.server_env(objs)
                for option, (secret, key) in SECRETS.items():
                    if not env.get(option):
                        continue
                    found = secret_of(objs, env[option])
                    self.assertIsNotNone(found, f"{option}={env[option]} is on no Secret volume")
                    source, file, mount = found
                    self.assertEqual((source["secretName"], file), (secret, key), option)
                    self.assertTrue(mount.get("readOnly"), option)
                    self.assertNotIn("subPath", mount,
                                     f"{option}: a subPath mount never sees a rotated Secret")
                    self.assertEqual(source.get("defaultMode", 0o644) & 0o007, 0,
                                     f"{option}: readable by others")
                if env.get("LDCP_TLS_CLIENT_CA"):
                    self.assertTrue(env.get("LDCP_TLS_CERT"), "mutual TLS without TLS")
                if env.get("LDCP_TLS_CERT"):
                    self.assertTrue(env.get("LDCP_TLS_KEY"))

    def test_gpu_overlay_turns_security_on(self):
        env = dl.server_env(RENDERED["gpu"])
        for option in SECRETS:
            self.assertTrue(env.get(option), f"the gpu overlay does not set {option}")
        self.assertEqual(env["LDCP_REFLECTION"], "false")
        self.assertGreaterEqual(int(env["LDCP_TLS_REFRESH"]), 1)
        # The demo overlay (a laptop cluster) stays plaintext and open.
        demo = dl.server_env(RENDERED["demo"])
        self.assertFalse(any(demo.get(k) for k in SECRETS))

    def test_probe_port_is_no_service_port(self):
        for overlay, objs in RENDERED.items():
            with self.subTest(overlay=overlay):
                _, c = container(objs)
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                for s in (o for o in objs if o["kind"] == "Service"):
                    for p in s["spec"]["ports"]:
                        self.assertNotIn(p["targetPort"], ("health", ports["health"]),
                                         f"{s['metadata']['name']} exposes the health port")

    def test_cert_manager_component_fills_the_servers_secret(self):
        objs = render_with_cert_manager()
        cert = dl.only(objs, "Certificate", "ldcp-server")
        self.assertEqual(cert["metadata"]["namespace"], "ldcp")
        env = dl.server_env(objs)
        source, _, _ = secret_of(objs, env["LDCP_TLS_CERT"])
        self.assertEqual(cert["spec"]["secretName"], source["secretName"])
        svc = dl.only(objs, "Service", "ldcp-server-grpc")["metadata"]["name"]
        for name in (svc, f"{svc}.ldcp.svc", f"{svc}.ldcp.svc.cluster.local"):
            self.assertIn(name, cert["spec"]["dnsNames"])
        self.assertIn("server auth", cert["spec"]["usages"])
        self.assertEqual(cert["spec"]["privateKey"]["rotationPolicy"], "Always")
        self.assertTrue(cert["spec"]["issuerRef"]["name"])
        self.assertEqual([o for o in RENDERED["gpu"] if o["kind"] == "Certificate"], [],
                         "cert-manager is optional")


class LiveProbes(unittest.TestCase):
    def test_kubelet_probes_reach_a_tls_server_on_the_health_port(self):
        objs = RENDERED["gpu"]
        env = dl.server_env(objs)
        _, c = container(objs)
        work = Path(tempfile.mkdtemp(prefix="ldcp-deploy-security-"))
        grpc_port, health_port = dl.lib.free_port(), dl.lib.free_port()
        run_env = dict(env, LDCP_MODEL=str(dl.lib.demo_model(work)), LDCP_DEVICE="cpu",
                       LDCP_DTYPE="fp32", LDCP_FP16_WEIGHTS="false", LDCP_MEMORY_BUDGET="8GiB",
                       LDCP_CALIBRATE_SIZES="64x64", LDCP_CALIBRATE_LEVELS="0",
                       LDCP_CALIBRATE_STEPS="1", LDCP_MAX_BATCH="1",
                       LDCP_LISTEN=f"127.0.0.1:{grpc_port}", LDCP_METRICS_LISTEN="127.0.0.1:0",
                       LDCP_HEALTH_LISTEN=f"127.0.0.1:{health_port}", LDCP_LOG_FORMAT="text",
                       OMP_NUM_THREADS="1", PATH="/usr/bin:/bin")
        run_env.update(dl.secret_stand_ins(env, work))
        log = open(work / "server.log", "w")
        proc = subprocess.Popen([dl.lib.tool("ldcp-server")], env=run_env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            probe = c["readinessProbe"]["grpc"]
            self.assertEqual(probe["port"], dl.port_of(env["LDCP_HEALTH_LISTEN"]))
            deadline, status = time.time() + 300, None
            with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while time.time() < deadline and proc.poll() is None:
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(
                            service=probe.get("service", "")), timeout=2).status
                        if status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    time.sleep(0.3)
                self.assertEqual(status, health_pb2.HealthCheckResponse.SERVING,
                                 (work / "server.log").read_text())
                for name in ("livenessProbe", "startupProbe"):
                    service = c[name]["grpc"].get("service", "")
                    self.assertEqual(stub.Check(health_pb2.HealthCheckRequest(service=service),
                                                timeout=5).status,
                                     health_pb2.HealthCheckResponse.SERVING, name)
            # The gRPC port itself speaks TLS only.
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                with self.assertRaises(grpc.RpcError) as e:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            text = (work / "server.log").read_text()
            self.assertIn("mutual TLS", text)
            self.assertIn("reflection off", text)
        finally:
            dl.terminate(proc)
            log.close()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
