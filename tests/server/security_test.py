"""ldcp-server's transport security and client authentication, end to end with certificates made
by openssl here: TLS, mutual TLS (no client certificate, one from another CA: refused), a plaintext
client refused by a TLS port, certificate rotation seen by new connections, the plaintext
health-only listener, reflection off, bearer tokens (none, wrong, valid), PERMISSION_DENIED, the
priority clamp, per-client in-flight and queued limits, the tokens file re-read, the client label
of ldcp_requests_total, start-up errors naming the bad file and line, and ldcp-client's TLS and
token options.

Run by CTest (server_security); needs the built ldcp-server, ldcp-client and ldcp, and openssl."""

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import ldcp_testlib as lib
import testcerts
from testcerts import read, replace

pb, pb_grpc = lib.load_stubs()

WORK = Path(tempfile.mkdtemp(prefix="ldcp-security-"))
CERTS = WORK / "certs"
SIZE = 64
FLAGS = ["--device", "cpu", "--memory-budget", "64GiB", "--default-size", SIZE,
         "--calibrate-sizes", f"{SIZE}x{SIZE}", "--calibrate-levels", "0", "--calibrate-steps", 1,
         "--max-batch", 1, "--batch-window-ms", 0, "--log-level", "info"]
TOKENS = {"alice": "tok-alice-0123456789", "lo": "tok-lo-0123456789", "hi": "tok-hi-0123456789",
          "one": "tok-one-0123456789", "gen-only": "tok-gen-only-0123456789",
          "carol": "tok-carol-0123456789"}
FIELDS = {"alice": "max_priority=5", "lo": "max_queued=2", "hi": "max_priority=100",
          "one": "max_in_flight=1", "gen-only": "methods=Generate pruning=auto"}
MTLS = None  # the mutual-TLS server with tokens
TLS = None   # the TLS-only server without tokens


# ------------------------------------------------------------------------------- certificates
def make_ca(name):
    return testcerts.make_ca(CERTS, name)


def make_cert(name, ca, usage, san=None):
    """A key and certificate signed by `ca` (its name); usage serverAuth or clientAuth."""
    return testcerts.make_cert(CERTS, name, ca, usage, san)


def tokens_text(names):
    lines = ["# test clients"]
    for n in names:
        h = hashlib.sha256(TOKENS[n].encode()).hexdigest()
        lines.append(f"{n} sha256:{h} {FIELDS.get(n, '')}".rstrip())
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ servers
class TlsServer(lib.Server):
    """lib.Server with a plaintext health-only port, which readiness is checked on."""

    def __init__(self, model, *args, name):
        self.health_port = lib.free_port()
        super().__init__(model, WORK, *FLAGS, "--health-listen",
                         f"127.0.0.1:{self.health_port}", *args, name=name)
        self.health_target = f"127.0.0.1:{self.health_port}"


def credentials(client="client", ca="ca"):
    key, crt = (None, None) if client is None else (read(CERTS / f"{client}.key"),
                                                    read(CERTS / f"{client}.crt"))
    return grpc.ssl_channel_credentials(root_certificates=read(CERTS / f"{ca}.crt"),
                                        private_key=key, certificate_chain=crt)


def secure_channel(server, **kw):
    return grpc.secure_channel(server.target, credentials(**kw))


def request(**kw):
    kw.setdefault("prompt", "a red circle on a blue background")
    kw.setdefault("steps", 2)
    kw.setdefault("sampler", "euler")
    return pb.GenerateRequest(**kw)


def token_md(name=None, token=None):
    return [("authorization", f"Bearer {token or TOKENS[name]}")]


def health(channel, service=""):
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10).status


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def setUpModule():
    global MTLS, TLS
    CERTS.mkdir()
    make_ca("ca")
    make_ca("other-ca")
    san = "DNS:localhost,IP:127.0.0.1"
    make_cert("server", "ca", "serverAuth", san)
    make_cert("server2", "ca", "serverAuth", san)
    make_cert("client", "ca", "clientAuth")
    make_cert("stranger", "other-ca", "clientAuth")
    # The servers read these copies (rotation replaces them).
    for name in ("mtls", "tls"):
        shutil.copy(CERTS / "server.key", CERTS / f"{name}-live.key")
        shutil.copy(CERTS / "server.crt", CERTS / f"{name}-live.crt")
    (WORK / "tokens.txt").write_text(tokens_text(["alice", "lo", "hi", "one", "gen-only"]))
    model = lib.demo_model(WORK)
    MTLS = TlsServer(model, "--tls-cert", CERTS / "mtls-live.crt", "--tls-key",
                     CERTS / "mtls-live.key", "--tls-client-ca", CERTS / "ca.crt",
                     "--tls-refresh", 1, "--auth-tokens-file", WORK / "tokens.txt",
                     "--auth-refresh", 0.5, "--reflection=false", name="mtls")
    TLS = TlsServer(model, "--tls-cert", CERTS / "tls-live.crt", "--tls-key",
                    CERTS / "tls-live.key", "--tls-refresh", 1, name="tls")
    MTLS.wait_ready()
    TLS.wait_ready()


def tearDownModule():
    for s in (MTLS, TLS):
        if s:
            s.stop()
    shutil.rmtree(WORK, ignore_errors=True)


class T1Transport(unittest.TestCase):
    def test_tls_serves_and_plaintext_clients_are_refused(self):
        with grpc.secure_channel(TLS.target, grpc.ssl_channel_credentials(
                read(CERTS / "ca.crt"))) as ch:
            self.assertEqual(health(ch), health_pb2.HealthCheckResponse.SERVING)
            resp = pb_grpc.ImageGenerationStub(ch).Generate(request(seed=1), timeout=120)
            self.assertEqual(len(resp.images), 1)
            # Auth off: the anonymous client label.
            samples = lib.parse_metrics(TLS.metrics_text())
            self.assertEqual(lib.metric(samples, "ldcp_requests_total", method="Generate",
                                        status="OK", client="anonymous"), 1)
        for server in (TLS, MTLS):
            with grpc.insecure_channel(server.target) as ch:
                self.assertEqual(code_of(lambda: health(ch)), grpc.StatusCode.UNAVAILABLE)

    def test_server_name_is_verified(self):
        opts = [("grpc.ssl_target_name_override", "not-the-server.example")]
        with grpc.secure_channel(TLS.target, grpc.ssl_channel_credentials(read(CERTS / "ca.crt")),
                                 opts) as ch:
            self.assertEqual(code_of(lambda: health(ch)), grpc.StatusCode.UNAVAILABLE)
        opts = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(TLS.target, grpc.ssl_channel_credentials(read(CERTS / "ca.crt")),
                                 opts) as ch:
            self.assertEqual(health(ch), health_pb2.HealthCheckResponse.SERVING)

    def test_mutual_tls_requires_a_client_certificate_from_the_ca(self):
        with secure_channel(MTLS) as ch:
            self.assertEqual(health(ch), health_pb2.HealthCheckResponse.SERVING)
        with secure_channel(MTLS, client=None) as ch:
            self.assertEqual(code_of(lambda: health(ch)), grpc.StatusCode.UNAVAILABLE)
        with secure_channel(MTLS, client="stranger") as ch:
            self.assertEqual(code_of(lambda: health(ch)), grpc.StatusCode.UNAVAILABLE)
        # A server certificate from another CA is refused by the client as well.
        with secure_channel(MTLS, ca="other-ca") as ch:
            self.assertEqual(code_of(lambda: health(ch)), grpc.StatusCode.UNAVAILABLE)

    def test_health_only_listener(self):
        with grpc.insecure_channel(f"127.0.0.1:{MTLS.health_port}") as ch:
            self.assertEqual(health(ch), health_pb2.HealthCheckResponse.SERVING)
            self.assertEqual(health(ch, "ldcp.v1.ImageGeneration"),
                             health_pb2.HealthCheckResponse.SERVING)
            # Nothing but health: no generation, no reflection, even with a token.
            stub = pb_grpc.ImageGenerationStub(ch)
            self.assertEqual(code_of(lambda: stub.Generate(request(), metadata=token_md("alice"),
                                                           timeout=10)),
                             grpc.StatusCode.UNIMPLEMENTED)
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            self.assertEqual(code_of(lambda: list(refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))),
                grpc.StatusCode.UNIMPLEMENTED)

    def test_reflection_off(self):
        with secure_channel(MTLS) as ch:
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            self.assertEqual(code_of(lambda: list(refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))),
                grpc.StatusCode.UNIMPLEMENTED)

    def test_z_rotation_new_connections_see_the_new_certificate(self):
        # Runs last in this class: it changes the TLS server's certificate.
        def peer_certificate():
            ctx = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
            ctx.set_alpn_protocols(["h2"])
            with socket.create_connection(("127.0.0.1", TLS.port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    return t.getpeercert(binary_form=True)

        old = ssl.PEM_cert_to_DER_cert(read(CERTS / "server.crt").decode())
        new = ssl.PEM_cert_to_DER_cert(read(CERTS / "server2.crt").decode())
        self.assertEqual(peer_certificate(), old)
        replace(CERTS / "tls-live.key", read(CERTS / "server2.key"))
        replace(CERTS / "tls-live.crt", read(CERTS / "server2.crt"))
        start = time.time()
        while time.time() - start < 10:
            try:
                if peer_certificate() == new:
                    break
            except (OSError, ssl.SSLError):
                pass  # between the two replacements the key and certificate may not match
            time.sleep(0.2)
        took = time.time() - start
        self.assertEqual(peer_certificate(), new)
        print(f"rotation: new connections got the new certificate after {took:.1f} s "
              "(--tls-refresh 1)")
        with grpc.secure_channel(TLS.target, grpc.ssl_channel_credentials(
                read(CERTS / "ca.crt"))) as ch:
            self.assertEqual(health(ch), health_pb2.HealthCheckResponse.SERVING)


class T2Tokens(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.channel = secure_channel(MTLS)
        cls.stub = pb_grpc.ImageGenerationStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def call(self, md=None, **kw):
        return code_of(lambda: self.stub.Generate(request(**kw), metadata=md, timeout=120))

    def test_tokens(self):
        U = grpc.StatusCode.UNAUTHENTICATED
        self.assertEqual(self.call(), U)
        self.assertEqual(self.call(token_md(token="not-a-token")), U)
        self.assertEqual(self.call([("authorization", TOKENS["alice"])]), U)  # no "Bearer"
        self.assertEqual(self.call([("authorization", "Basic " + TOKENS["alice"])]), U)
        # Rejected before validation: an invalid request without a token is UNAUTHENTICATED too.
        self.assertEqual(self.call(width=7), U)
        try:
            self.stub.Generate(request(), metadata=token_md(token="wrong-secret"), timeout=10)
        except grpc.RpcError as e:
            self.assertNotIn("wrong-secret", e.details())
        self.assertEqual(self.call(token_md("alice")), grpc.StatusCode.OK)
        self.assertEqual(self.call(token_md("alice"), width=7), grpc.StatusCode.INVALID_ARGUMENT)
        # Health stays open without a token.
        self.assertEqual(health(self.channel), health_pb2.HealthCheckResponse.SERVING)
        # Request log lines name the client (names from the file only).
        self.assertRegex(MTLS.log(), r"method=Generate status=OK .* client=alice")
        self.assertRegex(MTLS.log(), r"status=UNAUTHENTICATED .* client=unauthenticated")
        self.assertNotIn("not-a-token", MTLS.log())
        self.assertNotIn(TOKENS["alice"], MTLS.log())

    def test_permission_denied(self):
        md = token_md("gen-only")
        self.assertEqual(self.call(md), grpc.StatusCode.OK)
        self.assertEqual(code_of(lambda: list(self.stub.GenerateStream(request(), metadata=md,
                                                                       timeout=60))),
                         grpc.StatusCode.PERMISSION_DENIED)
        fixed = pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.3)
        self.assertEqual(self.call(md, pruning=fixed), grpc.StatusCode.PERMISSION_DENIED)

    def test_priority_clamp_and_client_limits(self):
        # One model thread, batches of one: a long stream from "hi" holds it while the others
        # queue; cancelling it lets them run in queue order, which shows the priorities used.
        finished, lock = [], threading.Lock()

        def submit(name, label, **kw):
            fut = self.stub.Generate.future(request(request_id=label, **kw),
                                            metadata=token_md(name), timeout=120)

            def done(f):
                with lock:
                    finished.append((label, f.code()))

            fut.add_done_callback(done)
            time.sleep(0.2)  # arrival order = submission order
            return fut

        # ~12 s here alone (256x256, 150 steps); cancelled once the others are queued.
        blocker = self.stub.GenerateStream(request(steps=150, width=256, height=256,
                                                   guidance_scale=1.0),
                                           metadata=token_md("hi"), timeout=120)
        next(blocker)  # the first progress event: it runs
        b = submit("lo", "b")               # priority 0
        c = submit("lo", "c", priority=50)  # clamped to 0 (lo's max_priority): stays behind b
        e = submit("lo", "e")               # a third queued "lo" request: over max_queued=2
        f = submit("one", "f")
        g = submit("one", "g")              # a second "one" request in flight: over max_in_flight=1
        d = submit("hi", "d", priority=50)  # hi may use 50: runs first
        self.assertTrue(blocker.is_active(), "the blocker ended before the others were queued")
        self.assertEqual(e.exception().code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("max_queued", e.exception().details())
        self.assertEqual(g.exception().code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("max_in_flight", g.exception().details())
        blocker.cancel()
        for fut in (b, c, d, f):
            fut.result()
        order = [label for label, code in finished if code == grpc.StatusCode.OK]
        self.assertEqual(order, ["d", "b", "c", "f"])
        # The limits were released: each client may send again.
        self.assertEqual(self.call(token_md("lo")), grpc.StatusCode.OK)
        self.assertEqual(self.call(token_md("one")), grpc.StatusCode.OK)

    def test_tokens_file_reload_and_client_labels(self):
        self.assertEqual(self.call(token_md("carol")), grpc.StatusCode.UNAUTHENTICATED)
        path = WORK / "tokens.txt"
        replace(path, tokens_text(["alice", "lo", "hi", "one", "gen-only", "carol"]).encode())
        deadline = time.time() + 10
        while self.call(token_md("carol")) != grpc.StatusCode.OK and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.call(token_md("carol")), grpc.StatusCode.OK)
        # A bad file keeps the clients read before, and the error names the file and line.
        replace(path, (tokens_text(["alice", "carol"]) + "broken-line\n").encode())
        deadline = time.time() + 10
        while f"{path}:4:" not in MTLS.log() and time.time() < deadline:
            time.sleep(0.2)
        self.assertIn(f"{path}:4:", MTLS.log())
        self.assertEqual(self.call(token_md("lo")), grpc.StatusCode.OK)
        # Removing a client revokes its token.
        replace(path, tokens_text(["alice", "lo", "hi", "one", "gen-only"]).encode())
        deadline = time.time() + 10
        while self.call(token_md("carol")) == grpc.StatusCode.OK and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.call(token_md("carol")), grpc.StatusCode.UNAUTHENTICATED)

        samples = lib.parse_metrics(MTLS.metrics_text())
        clients = {dict(l).get("client") for (n, l), _ in samples.items()
                   if n == "ldcp_requests_total"}
        self.assertLessEqual(clients, set(TOKENS) | {"anonymous", "unauthenticated"})
        self.assertGreaterEqual(lib.metric(samples, "ldcp_requests_total", method="Generate",
                                           status="OK", client="carol"), 1)
        self.assertGreaterEqual(lib.metric(samples, "ldcp_requests_total", method="Generate",
                                           status="UNAUTHENTICATED", client="unauthenticated"), 1)


class T3Cli(unittest.TestCase):
    def run_client(self, *args, env=None):
        return subprocess.run([lib.tool("ldcp-client"), *map(str, args)], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, **(env or {})))

    def test_client_tls_options_and_token(self):
        token_file = WORK / "alice.token"
        token_file.write_text(TOKENS["alice"] + "\n")
        tls = ["--target", f"localhost:{MTLS.port}", "--tls-ca", CERTS / "ca.crt",
               "--tls-cert", CERTS / "client.crt", "--tls-key", CERTS / "client.key"]
        out = WORK / "cli.png"
        r = self.run_client("generate", *tls, "--token-file", token_file, "--prompt", "a square",
                            "--steps", 2, "--out", out, "--quiet")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(out.exists())
        r = self.run_client("generate", *tls, "--prompt", "a square", "--steps", 2, "--unary",
                            "--out", out, env={"LDCP_TOKEN": TOKENS["alice"]})
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_client("generate", *tls, "--prompt", "a square", "--out", out, "--no-retry")
        self.assertEqual(r.returncode, 10 + grpc.StatusCode.UNAUTHENTICATED.value[0], r.stderr)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        r = self.run_client("health", *tls)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
        # The server name: 127.0.0.1 is in the certificate, the override is checked.
        r = self.run_client("health", "--target", TLS.target, "--tls-ca", CERTS / "ca.crt",
                            "--tls-server-name", "localhost")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_client("health", "--target", TLS.target, "--tls-ca", CERTS / "ca.crt",
                            "--tls-server-name", "elsewhere.example", "--timeout", 3)
        self.assertNotEqual(r.returncode, 0)
        r = self.run_client("health", *tls[:-4])  # mTLS server, no client certificate
        self.assertNotEqual(r.returncode, 0)
        r = self.run_client("health", "--target", TLS.target, "--tls-cert", CERTS / "client.crt")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--tls-key", r.stderr)


class T4StartupErrors(unittest.TestCase):
    def start(self, *args):
        r = subprocess.run([lib.tool("ldcp-server"), "--model", WORK / "no-model",
                            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                            *map(str, args)], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertNotIn("loading", r.stdout + r.stderr, "checked before the model loads")
        return r.stdout + r.stderr

    def test_bad_security_options_fail_at_start(self):
        bad = WORK / "bad-tokens.txt"
        bad.write_text(tokens_text(["alice"]) + "bob the-raw-token-not-its-hash\n")
        out = self.start("--auth-tokens-file", bad)
        self.assertIn(f"{bad}:3:", out)
        self.assertNotIn("the-raw-token", out)
        self.assertIn("--tls-key", self.start("--tls-cert", CERTS / "server.crt"))
        out = self.start("--tls-cert", CERTS / "server.crt", "--tls-key", CERTS / "client.key")
        self.assertIn("is not the key of the certificate", out)
        out = self.start("--tls-cert", CERTS / "server.crt", "--tls-key", CERTS / "server.key",
                         "--tls-client-ca", WORK / "missing.pem")
        self.assertIn("--tls-client-ca", out)
        self.assertIn("--tls-client-ca", self.start("--tls-client-ca", CERTS / "ca.crt"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
