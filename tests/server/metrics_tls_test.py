"""ldcp-server's metrics endpoint over HTTPS (--metrics-tls-cert/--metrics-tls-key, certificates
made by openssl here), gzip for scrapers that accept it, and the files it re-reads while it runs:
a rotated certificate reaches new connections, a half-written pair keeps the old one, the
basic-auth file's new passwords apply and a broken file keeps the old ones. Real sockets against
one server process; bad files stop a second one before the model loads.

Run by CTest (server_metrics_tls); needs the built ldcp-server and ldcp, and openssl."""

import base64
import gzip
import hashlib
import http.client
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import ldcp_testlib as lib
import testcerts

WORK = Path(tempfile.mkdtemp(prefix="ldcp-metrics-tls-"))
CERTS = WORK / "certs"
PASSWORD, NEW_PASSWORD = "3f1c0e9a7b2d4c6e8a0b1c2d3e4f5a6b", "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
TIMEOUT_S = 1.0
REFRESH_S = 0.3
SERVER = None


def users_text(password):
    return f"prometheus:sha256:{hashlib.sha256(password.encode()).hexdigest()}\n"


def auth(password=PASSWORD):
    return "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()


def client_context():
    return ssl.create_default_context(cafile=str(CERTS / "ca.crt"))


def get(path="/metrics", password=PASSWORD, method="GET", **headers):
    """(status, headers, body bytes) of one HTTPS request, verified against the test CA."""
    conn = http.client.HTTPSConnection("127.0.0.1", SERVER.metrics_port, timeout=5,
                                       context=client_context())
    try:
        conn.request(method, path, headers={"Authorization": auth(password), **headers})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def served_certificate():
    """The DER certificate a new connection to the metrics port is given."""
    with socket.create_connection(("127.0.0.1", SERVER.metrics_port), timeout=5) as raw:
        with client_context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert(binary_form=True)


def der_of(name):
    return ssl.PEM_cert_to_DER_cert((CERTS / f"{name}.crt").read_text())


def wait_for(condition, what, timeout=10):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\n{SERVER.log()[-3000:]}")
        time.sleep(0.1)


def setUpModule():
    global SERVER
    CERTS.mkdir(parents=True)
    testcerts.make_ca(CERTS, "ca")
    for name in ("metrics", "metrics2"):
        testcerts.make_cert(CERTS, name, "ca", "serverAuth", "DNS:localhost,IP:127.0.0.1")
    for ext in ("crt", "key"):
        shutil.copy(CERTS / f"metrics.{ext}", CERTS / f"live.{ext}")
    (WORK / "users").write_text(users_text(PASSWORD))
    SERVER = lib.Server(lib.demo_model(WORK), WORK, *lib.small_cpu_flags(), "--metrics-timeout",
                        TIMEOUT_S, "--metrics-refresh", REFRESH_S, "--metrics-tls-cert",
                        CERTS / "live.crt", "--metrics-tls-key", CERTS / "live.key",
                        "--metrics-basic-auth-file", WORK / "users").wait_ready()


def tearDownModule():
    if SERVER:
        SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


class Https(unittest.TestCase):
    def test_scrape_over_https_verified_against_the_ca(self):
        status, headers, body = get()
        self.assertEqual(status, 200)
        self.assertIn(b"ldcp_requests_total", body)
        self.assertIn("over HTTPS", SERVER.log())
        self.assertEqual(get(password="wrong")[0], 401)

    def test_plain_http_gets_no_metrics(self):
        with socket.create_connection(("127.0.0.1", SERVER.metrics_port), timeout=5) as s:
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: {auth()}\r\n\r\n"
                      .encode())
            reply = b""
            try:
                while chunk := s.recv(65536):
                    reply += chunk
            except (ConnectionResetError, socket.timeout):
                pass
        self.assertNotIn(b"ldcp_requests_total", reply)
        self.assertFalse(reply.startswith(b"HTTP/1.1 200"), reply[:100])

    def test_unfinished_handshake_is_closed_after_the_timeout(self):
        with socket.create_connection(("127.0.0.1", SERVER.metrics_port), timeout=10) as s:
            t0 = time.time()
            try:
                self.assertEqual(s.recv(100), b"")
            except ConnectionResetError:
                pass
            self.assertLess(time.time() - t0, TIMEOUT_S + 3)

    def test_z_rotation_reaches_new_connections_and_a_half_written_pair_keeps_the_old(self):
        self.assertEqual(served_certificate(), der_of("metrics"))
        testcerts.replace(CERTS / "live.key", testcerts.read(CERTS / "metrics2.key"))
        testcerts.replace(CERTS / "live.crt", testcerts.read(CERTS / "metrics2.crt"))
        wait_for(lambda: served_certificate() == der_of("metrics2"), "the new certificate")
        self.assertIn("new TLS certificate from", SERVER.log())
        self.assertEqual(get()[0], 200)
        # Half written: the certificate replaced, the key not yet. The old pair stays in use.
        mismatch = "is not an unencrypted PEM key of the certificate"
        before = SERVER.log().count(mismatch)
        testcerts.replace(CERTS / "live.crt", testcerts.read(CERTS / "metrics.crt"))
        wait_for(lambda: SERVER.log().count(mismatch) > before, "the mismatched pair logged")
        self.assertIn("keeping the certificate read before", SERVER.log())
        self.assertEqual(served_certificate(), der_of("metrics2"))
        self.assertEqual(get()[0], 200)
        testcerts.replace(CERTS / "live.key", testcerts.read(CERTS / "metrics.key"))
        wait_for(lambda: served_certificate() == der_of("metrics"), "the completed pair")


class Gzip(unittest.TestCase):
    def test_gzip_when_the_scraper_accepts_it(self):
        status, headers, body = get(**{"Accept-Encoding": "gzip"})
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-encoding"), "gzip")
        self.assertEqual(headers.get("vary"), "Accept-Encoding")
        self.assertEqual(int(headers["content-length"]), len(body))
        text = gzip.decompress(body)
        self.assertIn(b"# TYPE ldcp_requests_total counter", text)
        self.assertLess(len(body), len(text) / 3)
        # Prometheus' own header.
        status, headers, body = get(**{"Accept-Encoding": "gzip;q=1.0, identity;q=0.5, *;q=0.1"})
        self.assertEqual(headers.get("content-encoding"), "gzip")
        self.assertIn(b"ldcp_requests_total", gzip.decompress(body))

    def test_identity_otherwise(self):
        for accept in (None, "identity", "gzip;q=0", "gzip;q=0, *", "br, deflate"):
            with self.subTest(accept=accept):
                status, headers, body = get(**({"Accept-Encoding": accept} if accept else {}))
                self.assertEqual(status, 200)
                self.assertNotIn("content-encoding", headers)
                self.assertIn(b"ldcp_requests_total", body)


class BasicAuthReload(unittest.TestCase):
    def test_the_users_file_is_re_read_and_a_broken_one_keeps_the_old_users(self):
        path = WORK / "users"
        try:
            self.assertEqual(get()[0], 200)
            testcerts.replace(path, users_text(NEW_PASSWORD).encode())
            wait_for(lambda: get(password=NEW_PASSWORD)[0] == 200, "the new password accepted")
            self.assertEqual(get()[0], 401)
            self.assertIn(f"--metrics-basic-auth-file {path} re-read: 1 user(s)", SERVER.log())
            testcerts.replace(path, b"prometheus:md5:abc\n")
            wait_for(lambda: f"{path} line 1: expected user:sha256:" in SERVER.log(),
                     "the broken file logged")
            self.assertIn("keeping the 1 user(s) read before", SERVER.log())
            self.assertEqual(get(password=NEW_PASSWORD)[0], 200)
            self.assertNotIn(hashlib.sha256(NEW_PASSWORD.encode()).hexdigest(), SERVER.log())
        finally:
            testcerts.replace(path, users_text(PASSWORD).encode())
            wait_for(lambda: get()[0] == 200, "the first password again")


class Options(unittest.TestCase):
    def test_help_lists_the_options_with_their_environment(self):
        text = subprocess.run([lib.tool("ldcp-server"), "--help"], capture_output=True, text=True,
                              timeout=60).stdout
        for option in ("metrics-tls-cert", "metrics-tls-key", "metrics-gzip", "metrics-refresh",
                       "metrics-basic-auth-file"):
            with self.subTest(option=option):
                self.assertIn(f"--{option}", text)
                self.assertIn("LDCP_" + option.upper().replace("-", "_"), text)

    def test_bad_files_stop_the_server_before_the_model_loads(self):
        cases = [
            (["--metrics-tls-cert", CERTS / "metrics.crt", "--metrics-tls-key",
              CERTS / "metrics2.key"], "--metrics-tls-key: " + str(CERTS / "metrics2.key")),
            (["--metrics-tls-cert", WORK / "missing.crt", "--metrics-tls-key",
              CERTS / "metrics.key"], "--metrics-tls-cert: cannot read " + str(WORK / "missing.crt")),
            (["--metrics-tls-cert", CERTS / "metrics.key", "--metrics-tls-key",
              CERTS / "metrics.key"], "--metrics-tls-cert: no PEM certificate chain in"),
            (["--metrics-tls-cert", CERTS / "metrics.crt"], "give both or neither"),
        ]
        for args, message in cases:
            with self.subTest(message=message):
                r = subprocess.run([lib.tool("ldcp-server"), "--model", WORK / "no-model",
                                    "--metrics-listen", f"127.0.0.1:{lib.free_port()}", *args],
                                   capture_output=True, text=True, timeout=60)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(message, r.stdout + r.stderr)
                self.assertNotIn("loading", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
