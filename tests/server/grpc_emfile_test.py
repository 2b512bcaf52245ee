"""gRPC's own listener when the server runs out of file descriptors (server/grpc_listener_watch.h).

gRPC 1.51 (Debian 12's) ends a listener for good when accept4() fails with EMFILE: the port still
completes TCP handshakes in the kernel, but no connection is ever served again. This test makes it
happen on a real server: its RLIMIT_NOFILE lowered (prlimit) to a few descriptors above what it has
open, many idle connections to the gRPC port, then the connections closed and the limit restored.
It checks that gRPC did stop ("Failed accept4" in the log; were it to retry, as later gRPC does,
this fails and the watchdog can go) and that the watchdog then drains the server and exits with
status 75 for its supervisor to restart it, instead of leaving a process that looks alive but
never answers (before the watchdog: it kept running and a new connection's health check timed
out). The health-only listener turns NOT_SERVING with the drain, so probes on it notice too.

Run by CTest (server_grpc_emfile); needs the built ldcp-server and ldcp."""

import os
import resource
import shutil
import socket
import tempfile
import time
import unittest
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import ldcp_testlib as lib

WORK = Path(tempfile.mkdtemp(prefix="ldcp-grpc-emfile-"))
SPARE = 6  # descriptors left to the server: fewer than the idle connections below
IDLE = 60


def health(target, timeout=3):
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=timeout).status


class GrpcListenerAfterEmfile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.health_port = lib.free_port()
        cls.server = lib.Server(lib.demo_model(WORK), WORK, "--device", "cpu", "--memory-budget",
                                "64GiB", "--default-size", 64, "--calibrate-sizes", "64x64",
                                "--calibrate-levels", "0", "--calibrate-steps", 1, "--max-batch",
                                1, "--grace-period", 5, "--health-listen",
                                f"127.0.0.1:{cls.health_port}").wait_ready()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(timeout=30)
        shutil.rmtree(WORK, ignore_errors=True)

    def test_listener_stopped_by_emfile_makes_the_server_exit_for_a_restart(self):
        s = self.server
        self.assertEqual(health(s.target), health_pb2.HealthCheckResponse.SERVING)
        pid = s.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        socks = []
        resource.prlimit(pid, resource.RLIMIT_NOFILE,
                         (len(os.listdir(f"/proc/{pid}/fd")) + SPARE, hard))
        try:
            for _ in range(IDLE):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", s.port), timeout=2))
                except OSError:
                    break
            deadline = time.time() + 10
            while "Failed accept4" not in s.log() and time.time() < deadline:
                time.sleep(0.1)
        finally:
            for sock in socks:
                sock.close()
            if s.proc.poll() is None:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        log = s.log()
        # gRPC 1.51 gave up on the port (measured: the reason this watchdog exists).
        self.assertIn("Failed accept4: Too many open files", log)
        try:
            status = s.proc.wait(timeout=60)
        except Exception:
            # Before the watchdog: still running, and new connections are never served.
            with self.assertRaises(grpc.RpcError):
                health(s.target, timeout=5)
            raise AssertionError("the server kept running with a dead gRPC listener:\n" + log)
        self.assertEqual(status, 75, s.log()[-3000:])
        log = s.log()
        self.assertIn("gRPC stopped accepting connections", log)
        self.assertIn("listener stopped: draining", log)
        self.assertRegex(log, r"(?m)\bstopped$")


if __name__ == "__main__":
    unittest.main(verbosity=2)
