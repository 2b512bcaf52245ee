"""ldcp-server's /metrics endpoint (server/metrics_http.h) under what a hostile network sends,
over real sockets against one server process: many idle connections, file descriptors run out
(EMFILE) and come back, oversized headers, slow requests, and basic authentication.
Run by CTest (server_metrics_endpoint)."""

import base64
import contextlib
import hashlib
import os
import re
import resource
import shutil
import socket
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import ldcp_testlib as lib

WORK = Path(tempfile.mkdtemp(prefix="ldcp-metrics-"))
PASSWORD = "a7f3c0d2e9b14c58a6d1f0e2b3c4d5e6"  # a test password: random hex
MAX_CONNECTIONS = 4
TIMEOUT_S = 1.0
SERVER = None


def auth_header(user="prometheus", password=PASSWORD):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def scrape(timeout=5, auth=None):
    """(status, body) of GET /metrics."""
    req = urllib.request.Request(f"http://127.0.0.1:{SERVER.metrics_port}/metrics",
                                 headers={"Authorization": auth or auth_header()})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw(data, timeout=5):
    """Sends `data` on a new connection; returns what came back until the server closed it."""
    with socket.create_connection(("127.0.0.1", SERVER.metrics_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out


@contextlib.contextmanager
def fd_limit(spare):
    """Lowers the running server's RLIMIT_NOFILE to `spare` above the descriptors it has open."""
    pid = SERVER.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + spare,
                                                   hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def idle_sockets(port, n):
    out = []
    for _ in range(n):
        try:
            out.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return out


def setUpModule():
    global SERVER
    model = lib.demo_model(WORK)
    users = WORK / "metrics-users"
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    users.write_text(f"# user:sha256:hex\nprometheus:sha256:{digest}\n")
    # Started with a low soft RLIMIT_NOFILE (inherited), which the server raises to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256, hard), hard))
    try:
        start_server(model, users)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_server(model, users):
    global SERVER
    SERVER = lib.Server(model, WORK, *lib.small_cpu_flags("0,0.7"),
                        "--metrics-max-connections", MAX_CONNECTIONS, "--metrics-timeout",
                        TIMEOUT_S, "--metrics-max-header-bytes", 4096,
                        "--metrics-basic-auth-file", users).wait_ready()


def tearDownModule():
    if SERVER:
        SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


class Auth(unittest.TestCase):
    def test_basic_auth(self):
        status, body = scrape()
        self.assertEqual(status, 200)
        self.assertIn("ldcp_requests_total", body)
        for bad in (None, auth_header(password="wrong"), auth_header(user="nobody"),
                    "Basic !!!", "Bearer x"):
            with self.subTest(auth=bad):
                req = urllib.request.Request(f"http://127.0.0.1:{SERVER.metrics_port}/metrics")
                if bad:
                    req.add_header("Authorization", bad)
                with self.assertRaises(urllib.error.HTTPError) as ctx:
                    urllib.request.urlopen(req, timeout=5)
                self.assertEqual(ctx.exception.code, 401)
                self.assertIn("Basic", ctx.exception.headers.get("WWW-Authenticate", ""))

    def test_other_paths_and_methods(self):
        a = auth_header()
        self.assertIn(b" 404 ", raw(f"GET /x HTTP/1.1\r\nHost: t\r\nAuthorization: {a}\r\n"
                                    "Connection: close\r\n\r\n".encode()).split(b"\r\n")[0] + b" ")
        self.assertIn(b" 405 ", raw(f"DELETE /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: {a}"
                                    "\r\nConnection: close\r\n\r\n".encode()).split(b"\r\n")[0]
                      + b" ")


class Hostile(unittest.TestCase):
    def test_open_files_limit_raised_to_the_hard_limit(self):
        # gRPC 1.51's listener stops accepting for good after one EMFILE: the server takes every
        # descriptor it may have.
        limits = Path(f"/proc/{SERVER.proc.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits).groups()
        self.assertEqual(soft, hard)
        if int(hard) > 256:
            self.assertIn("open files limit raised from 256", SERVER.log())

    def test_many_idle_connections_do_not_lock_out_scrapes(self):
        # Descriptors for twice the connection cap: without the cap (before) 60 idle sockets ran
        # the server out of them and /metrics timed out.
        with fd_limit(2 * MAX_CONNECTIONS):
            socks = idle_sockets(SERVER.metrics_port, 60)
            try:
                time.sleep(0.3)
                t0 = time.time()
                status, _ = scrape(timeout=5)
                self.assertEqual(status, 200)
                self.assertLess(time.time() - t0, 3)
                self.assertIsNone(SERVER.proc.poll())
            finally:
                for s in socks:
                    s.close()

    def test_slow_request_is_closed_after_the_timeout(self):
        with socket.create_connection(("127.0.0.1", SERVER.metrics_port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")  # never finished
            t0 = time.time()
            try:
                self.assertEqual(s.recv(100), b"")
            except ConnectionResetError:
                pass
            self.assertLess(time.time() - t0, TIMEOUT_S + 3)

    def test_oversized_headers(self):
        reply = raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertTrue(reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:100])
        self.assertEqual(scrape()[0], 200)

    def test_emfile_and_recovery(self):
        # Fewer descriptors left than the connection cap: accept() fails with EMFILE.
        with fd_limit(MAX_CONNECTIONS // 2):
            socks = idle_sockets(SERVER.metrics_port, 60)
            try:
                time.sleep(0.5)
                self.assertIsNone(SERVER.proc.poll())
            finally:
                for s in socks:
                    s.close()
        # Before: the accept loop had ended for good; /metrics never answered again.
        deadline = time.time() + 15
        while True:
            try:
                if scrape(timeout=3)[0] == 200:
                    break
            except OSError:
                pass
            self.assertLess(time.time(), deadline, "/metrics did not answer after EMFILE")
            time.sleep(0.2)
        self.assertIn("accept failed", SERVER.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
