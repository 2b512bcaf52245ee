"""ldcp-server against hostile requests, end to end (one server process, loopback): bad values
are quoted as short prefixes, request ids are bounded and cannot forge log fields, a rejected
request's log line says what it asked for, bytes protobuf cannot parse are INVALID_ARGUMENT
(counted and logged), and the work, deadline and receive bounds hold with messages naming their
options. Run by CTest (server_hostile_requests)."""

import json
import re
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import grpc

import ldcp_testlib as lib

pb, pb_grpc = lib.load_stubs()

SIZE = 64
WORK = Path(tempfile.mkdtemp(prefix="ldcp-hostile-"))
MAX_DEADLINE = 1.5
SERVER = None
CHANNEL = None
STUB = None

GENERATE = "/ldcp.v1.ImageGeneration/Generate"
STREAM = "/ldcp.v1.ImageGeneration/GenerateStream"
# One request line of the text log: the id (bare or JSON-quoted), then the fields.
LINE = re.compile(r' request id=("(?:[^"\\]|\\.)*"|\S+) method=(\S+) status=(\S+) '
                  r'size=(\d+)x(\d+) steps=(\d+) images=(\d+) .*$')


def setUpModule():
    global SERVER, CHANNEL, STUB
    model = lib.demo_model(WORK)
    SERVER = lib.Server(model, WORK, "--device", "cpu", "--memory-budget", "64GiB",
                        "--default-size", SIZE, "--calibrate-sizes", f"{SIZE}x{SIZE}",
                        "--calibrate-levels", "0,0.7", "--calibrate-steps", 1, "--max-batch", 1,
                        "--max-deadline", MAX_DEADLINE, "--log-format", "text").wait_ready()
    # A default grpcio client: it refuses replies over 4 MiB (a 1 MB echo would be one).
    CHANNEL = grpc.insecure_channel(SERVER.target)
    STUB = pb_grpc.ImageGenerationStub(CHANNEL)


def tearDownModule():
    if CHANNEL:
        CHANNEL.close()
    if SERVER:
        SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


def request(**kw):
    kw.setdefault("prompt", "a red circle")
    kw.setdefault("steps", 2)
    kw.setdefault("sampler", "euler")
    return pb.GenerateRequest(**kw)


def rejected(call, req, timeout=30):
    with unittest.TestCase().assertRaises(grpc.RpcError) as ctx:
        call(req, timeout=timeout)
    return ctx.exception


def request_lines(wait_for=None, timeout=10):
    """The parsed request lines of the server's log (waiting until one matches `wait_for`)."""
    deadline = time.time() + timeout
    while True:
        lines = [m for m in map(LINE.search, SERVER.log().splitlines()) if m]
        if wait_for is None or any(wait_for(m) for m in lines) or time.time() > deadline:
            return lines
        time.sleep(0.1)


def total(name, **labels):
    """Sum of a metric's samples whose labels include `labels` (others, e.g. client, any)."""
    return lib.metric(lib.parse_metrics(SERVER.metrics_text()), name, **labels)


class QuotedValues(unittest.TestCase):
    def test_megabyte_sampler_is_quoted_as_a_prefix(self):
        for call in (STUB.Generate, lambda r, timeout: list(STUB.GenerateStream(r, timeout=timeout))):
            e = rejected(call, request(sampler="s" * 1_000_000))
            # Before: the whole 1 MB came back and grpcio refused it (RESOURCE_EXHAUSTED).
            self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT, e.details()[:200])
            self.assertTrue(e.details().startswith("sampler: must be one of"), e.details()[:200])
            self.assertLess(len(e.details()), 300)
            self.assertIn('(1000000 bytes)', e.details())


class RequestIds(unittest.TestCase):
    def test_long_request_id_is_rejected_and_logged_bounded(self):
        e = rejected(STUB.Generate, request(request_id="L" * 1_000_000))
        self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(e.details().startswith("request_id: at most 128 bytes"), e.details())
        lines = request_lines(lambda m: m.group(1).startswith('"LLLL'))
        logged = [m for m in lines if m.group(1).startswith('"LLLL')]
        self.assertTrue(logged, "no log line for the long request id")
        self.assertLess(len(logged[-1].group(0)), 1000)
        self.assertIn("(1000000 bytes)", logged[-1].group(1))
        self.assertLess(max(map(len, SERVER.log().splitlines())), 2000)

    def test_control_characters_cannot_forge_log_fields(self):
        forged = "evil\u0085id=forged method=Generate status=OK size=1x1"
        for rid in (forged, "csi\u009b31m", "nl\nstatus=OK", "esc\x1b[2J"):
            with self.subTest(rid=repr(rid)):
                e = rejected(STUB.Generate, request(request_id=rid))
                self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertTrue(e.details().startswith("request_id: control characters"),
                                e.details())
        log = SERVER.log()
        for raw in ("\u0085", "\u009b", "\x1b", "nl\nstatus"):
            self.assertNotIn(raw, log, "a control character reached the log unescaped")
        forged_lines = [m for m in request_lines() if "forged" in m.group(1)]
        self.assertTrue(forged_lines)
        m = forged_lines[-1]
        self.assertTrue(m.group(1).startswith('"evil\\u0085id=forged'), m.group(1))
        self.assertEqual(m.group(3), "INVALID_ARGUMENT")

    def test_plain_ids_stay_bare_and_spaces_are_quoted(self):
        resp = STUB.Generate(request(request_id="plain-id.1"), timeout=60)
        self.assertEqual(resp.request_id, "plain-id.1")
        rejected(STUB.Generate, request(request_id="has space status=OK", width=7))
        lines = request_lines(lambda m: "has space" in m.group(1))
        self.assertIn("plain-id.1", [m.group(1) for m in lines])
        m = [m for m in lines if "has space" in m.group(1)][-1]
        self.assertEqual(m.group(1), '"has space status=OK"')
        self.assertEqual(m.group(3), "INVALID_ARGUMENT")


class RejectedLogLines(unittest.TestCase):
    def test_rejected_request_logs_what_it_asked_for(self):
        rejected(STUB.Generate, request(request_id="asked-7", width=7, steps=13, num_images=3))
        rejected(STUB.Generate, request(request_id="asked-default", steps=100000))
        lines = {m.group(1): m for m in request_lines(lambda m: m.group(1) == "asked-default")}
        m = lines["asked-7"]
        # Before: size=512x512 steps=50 images=1 (GenerationParams' defaults).
        self.assertEqual(m.group(4, 5, 6, 7), ("7", str(SIZE), "13", "3"))
        m = lines["asked-default"]
        self.assertEqual(m.group(4, 5, 6), (str(SIZE), str(SIZE), "100000"))


class Unparsable(unittest.TestCase):
    def test_garbage_bytes_are_invalid_argument_counted_and_logged(self):
        before = total("ldcp_requests_total", method="Generate", status="INVALID_ARGUMENT")
        before_s = total("ldcp_requests_total", method="GenerateStream",
                         status="INVALID_ARGUMENT")
        unary = CHANNEL.unary_unary(GENERATE)
        stream = CHANNEL.unary_stream(STREAM)
        cases = [(b"\xff\xff\xff\xff\xff", "malformed protobuf wire format"),
                 (b"\x0a\x02\xff\xfe", "field prompt is not valid UTF-8"),
                 (b"\x3a\x01\xc0", "field sampler is not valid UTF-8"),
                 (b"\x52\x01\x08", "field pruning is not a valid ldcp.v1.Pruning")]
        for data, why in cases:
            for name, call in (("unary", unary), ("stream", lambda d, timeout: list(
                    stream(d, timeout=timeout)))):
                with self.subTest(data=data, call=name):
                    e = rejected(call, data)
                    # Before: UNIMPLEMENTED with no message.
                    self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
                    self.assertTrue(e.details().startswith(
                        f"request is not a valid ldcp.v1.GenerateRequest: {why}"), e.details())
        after = total("ldcp_requests_total", method="Generate", status="INVALID_ARGUMENT")
        after_s = total("ldcp_requests_total", method="GenerateStream", status="INVALID_ARGUMENT")
        self.assertEqual(after - before, len(cases))
        self.assertEqual(after_s - before_s, len(cases))
        logged = [m for m in request_lines() if m.group(3) == "INVALID_ARGUMENT"
                  and "request is not a valid ldcp.v1.GenerateRequest" in m.group(0)]
        self.assertEqual(len(logged), 2 * len(cases))
        self.assertEqual({m.group(4, 5, 6, 7) for m in logged}, {("0", "0", "0", "0")})
        self.assertNotIn("libprotobuf ERROR", SERVER.log())
        # The server still serves well-formed requests.
        self.assertEqual(len(STUB.Generate(request(), timeout=60).images), 1)


class Bounds(unittest.TestCase):
    def test_work_bound(self):
        e = rejected(STUB.Generate, request(width=1024, height=1024, num_images=4, steps=150))
        self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(e.details().startswith("work: 1024x1024 x 4 image(s) x 150 steps x 2"),
                        e.details())
        self.assertIn("--max-request-work", e.details())

    def test_requests_without_a_deadline_get_the_servers(self):
        t0 = time.time()
        e = rejected(STUB.Generate, request(width=256, height=256, num_images=4, steps=150),
                     timeout=None)
        self.assertEqual(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED, e.details())
        self.assertIn("--max-deadline", e.details())
        self.assertLess(time.time() - t0, MAX_DEADLINE + 10)
        # A longer client deadline is cut to the server's as well.
        e = rejected(STUB.Generate, request(width=256, height=256, num_images=4, steps=150),
                     timeout=600)
        self.assertEqual(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED, e.details())
        self.assertIn("--max-deadline", e.details())

    def test_receive_limit(self):
        unary = CHANNEL.unary_unary(GENERATE)
        # 1.5 MiB: over --max-receive-bytes (1 MiB), under gRPC's hard limit (twice it).
        big = pb.GenerateRequest(prompt="p" * (3 << 19)).SerializeToString()
        e = rejected(unary, big)
        self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("--max-receive-bytes", e.details())
        # Beyond twice the limit gRPC itself refuses it.
        e = rejected(unary, pb.GenerateRequest(prompt="p" * (3 << 20)).SerializeToString())
        self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # A valid request is far below the limit.
        self.assertLess(len(request(prompt="x" * 2000, negative_prompt="y" * 2000,
                                    request_id="r" * 128).SerializeToString()), 10_000)

    def test_every_bound_has_an_option_and_environment_variable(self):
        out = subprocess.run([lib.tool("ldcp-server"), "--help"], capture_output=True,
                             text=True, timeout=60).stdout
        for option in ("max-request-id-bytes", "max-request-work", "max-deadline",
                       "max-receive-bytes", "max-concurrent-streams", "grpc-memory-quota",
                       "min-ping-interval", "max-ping-strikes", "max-connection-age",
                       "max-connection-age-grace", "metrics-max-connections", "metrics-timeout",
                       "metrics-max-header-bytes", "metrics-basic-auth-file"):
            env = "LDCP_" + option.upper().replace("-", "_")
            with self.subTest(option=option):
                self.assertRegex(out, rf"--{option}\b[^\n]*\(Env:{env}\)")


class AutoscalerSignal(unittest.TestCase):
    def test_fixed_levels_do_not_count_in_the_auto_pruning_ratio(self):
        names = ("ldcp_auto_pruning_ratio_count", "ldcp_auto_pruning_ratio_sum",
                 "ldcp_pruning_ratio_count", "ldcp_pruning_ratio_sum")
        before = {n: total(n) for n in names}
        fixed = [STUB.Generate(request(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.7)),
                               timeout=60) for _ in range(2)]
        auto = STUB.Generate(request(), timeout=60)
        after = {n: total(n) for n in names}
        self.assertGreater(min(r.pruning_ratio for r in fixed), 0.1)
        # Every mode in ldcp_pruning_ratio; only AUTO's own choice in ldcp_auto_pruning_ratio.
        self.assertEqual(after["ldcp_pruning_ratio_count"] - before["ldcp_pruning_ratio_count"], 3)
        self.assertEqual(
            after["ldcp_auto_pruning_ratio_count"] - before["ldcp_auto_pruning_ratio_count"], 1)
        self.assertAlmostEqual(
            after["ldcp_auto_pruning_ratio_sum"] - before["ldcp_auto_pruning_ratio_sum"],
            auto.pruning_ratio, places=6)


AGE = 4  # --max-connection-age of the Connections server (gRPC adds +-10% jitter)


class Connections(unittest.TestCase):
    """Keepalive enforcement and the connection age, seen as the client's channel state."""

    @classmethod
    def setUpClass(cls):
        model = lib.demo_model(WORK)
        cls.server = lib.Server(model, WORK, "--device", "cpu", "--memory-budget", "64GiB",
                                "--default-size", SIZE, "--calibrate-sizes", f"{SIZE}x{SIZE}",
                                "--calibrate-levels", "0", "--calibrate-steps", 1,
                                "--max-batch", 1, "--max-connection-age", AGE,
                                "--max-connection-age-grace", 1, "--min-ping-interval", 10,
                                "--max-ping-strikes", 1, "--max-concurrent-streams", 1,
                                "--log-format", "json", name="connections").wait_ready()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def watch(self, options, seconds):
        """(seconds after READY when the channel left it, or None), with one request made."""
        states = []
        channel = grpc.insecure_channel(self.server.target, options=options)
        channel.subscribe(lambda s: states.append((time.time(), s)), try_to_connect=True)
        try:
            pb_grpc.ImageGenerationStub(channel).Generate(request(), timeout=30)
            deadline = time.time() + seconds
            while time.time() < deadline:
                time.sleep(0.05)
            ready = [t for t, s in states if s == grpc.ChannelConnectivity.READY]
            left = [t for t, s in states if ready and t > ready[0]
                    and s != grpc.ChannelConnectivity.READY]
            return (left[0] - ready[0]) if left else None
        finally:
            channel.close()

    def test_one_stream_per_connection(self):
        # --max-concurrent-streams 1: the second call on the connection waits in the client
        # until the first ends, so the server sees it arrive late and serve it quickly.
        with grpc.insecure_channel(self.server.target) as channel:
            stub = pb_grpc.ImageGenerationStub(channel)
            stub.Generate(request(), timeout=30)  # connected
            t0 = time.time()
            first = stub.Generate.future(request(steps=60), timeout=60)
            second = stub.Generate.future(request(steps=2), timeout=60)
            a, b = first.result(), second.result()
            waited = time.time() - t0
        self.assertGreater(waited, a.timings.total_seconds)
        self.assertLess(b.timings.total_seconds, 0.6 * a.timings.total_seconds)
        self.assertLess(b.timings.queue_seconds, 0.5 * a.timings.total_seconds)

    def test_json_log_lines_stay_json_and_bounded(self):
        with grpc.insecure_channel(self.server.target) as channel:
            stub = pb_grpc.ImageGenerationStub(channel)
            for rid in ("J" * 1_000_000, "nel\u0085\"}, {\"forged\": 1", "ok-json-id"):
                try:
                    stub.Generate(request(request_id=rid, width=7), timeout=30)
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
        text = self.server.log()
        self.assertNotIn("\u0085", text.replace("\\u0085", ""))  # escaped, never raw
        ids = []
        for line in text.splitlines():
            obj = json.loads(line)  # every line is one JSON object
            if obj.get("event") == "request":
                ids.append(obj["id"])
                self.assertNotIn("forged", obj)
        self.assertIn("ok-json-id", ids)
        self.assertTrue(any(i.startswith("JJJ") and i.endswith("(1000000 bytes)") and len(i) < 200
                            for i in ids), [i[:40] for i in ids])

    def test_connection_age_ends_connections(self):
        # Before: connections lived for ever, so clients never rebalanced onto new replicas.
        left = self.watch([], AGE * 1.1 + 2)
        self.assertIsNotNone(left, "the connection outlived --max-connection-age")
        self.assertGreater(left, AGE * 0.9 - 0.5)

    def test_too_frequent_pings_end_the_connection(self):
        left = self.watch([("grpc.keepalive_time_ms", 100),
                           ("grpc.keepalive_permit_without_calls", 1),
                           ("grpc.http2.max_pings_without_data", 0),
                           ("grpc.http2.min_time_between_pings_ms", 100)], AGE * 0.8)
        # grpcio pings at most once a second: the second ping too soon is a strike too many.
        self.assertIsNotNone(left, "pings every second were tolerated")
        self.assertLess(left, AGE * 0.8)  # before the connection's age could end it


if __name__ == "__main__":
    unittest.main(verbosity=2)
