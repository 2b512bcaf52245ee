"""ldcp-server end to end, as a separate process over loopback sockets: unary and streaming
generation, validation of every field, deadlines and cancellation, a burst above the memory
budget, health and reflection, the C++ client, /metrics against what was served, a real
Prometheus scraping it, and SIGTERM draining in-flight requests.

Run by CTest (server_integration); needs the built ldcp-server, ldcp-client and ldcp."""

import concurrent.futures
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import json
import re
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import ldcp_testlib as lib

pb, pb_grpc = lib.load_stubs()

# Large enough that, with the decoder tiled (--vae-tile-size), the U-Net batch (and so its
# pruning level) sets a request's memory peak, as it does for SD1.5 with several images.
SIZE = 128
TILE = 32
STEPS = 4
WORK = Path(tempfile.mkdtemp(prefix="ldcp-server-it-"))
SERVER = None
CHANNEL = None
STUB = None
COSTS = {}
# What the test asked of the server: (method, status) -> count, images returned.
SERVED = Counter()
IMAGES = [0]
LOCK = threading.Lock()


def tally(method, code, images=0):
    with LOCK:
        SERVED[(method, code.name)] += 1
        IMAGES[0] += images


def request(**kw):
    kw.setdefault("prompt", "a lighthouse at dawn")
    kw.setdefault("width", SIZE)
    kw.setdefault("height", SIZE)
    kw.setdefault("steps", STEPS)
    kw.setdefault("sampler", "euler")
    return pb.GenerateRequest(**kw)


def generate(req, timeout=120):
    try:
        resp = STUB.Generate(req, timeout=timeout)
    except grpc.RpcError as e:
        tally("Generate", e.code())
        raise
    tally("Generate", grpc.StatusCode.OK, len(resp.images))
    return resp


def stream(req, timeout=120):
    events = []
    try:
        for ev in STUB.GenerateStream(req, timeout=timeout):
            events.append(ev)
    except grpc.RpcError as e:
        tally("GenerateStream", e.code())
        raise
    result = events[-1].result if events and events[-1].HasField("result") else None
    tally("GenerateStream", grpc.StatusCode.OK, len(result.images) if result else 0)
    return events


def setUpModule():
    global SERVER, CHANNEL, STUB, COSTS
    model = lib.demo_model(WORK)
    common = ["--device", "cpu", "--default-size", SIZE, "--vae-tile-size", TILE, "--calibrate-sizes", f"{SIZE}x{SIZE}",
              "--calibrate-levels", "0,0.35,0.7", "--calibrate-steps", 1, "--max-batch", 4,
              "--batch-window-ms", 50, "--max-queue", 16]
    # A probe run measures the model (idle baseline, batch costs) so that the real budget can
    # be set where a batch of two fits only when pruned.
    probe = lib.Server(model, WORK, "--memory-budget", "64GiB", *common, name="probe")
    probe.wait_ready()
    assert probe.stop() == 0, probe.log()
    COSTS, baseline = lib.calibration_from_log(probe.log())
    one, two = COSTS[(1, SIZE, SIZE, 0.0)], COSTS[(2, SIZE, SIZE, 0.0)]
    two_pruned = COSTS[(2, SIZE, SIZE, 0.7)]
    assert two_pruned < two, f"pruning does not lower the measured memory: {COSTS}"
    assert "does not lower the peak" not in probe.log(), probe.log()
    room = int(1.05 * (two_pruned + two) / 2)
    assert 1.05 * one < room, f"calibration {COSTS} leaves no room between 1 and 2 images"
    # A little slack over the measured baseline (allocator noise between runs).
    budget = baseline + room + max(1 << 16, (two - two_pruned) // 50)
    COSTS["budget"] = budget
    SERVER = lib.Server(model, WORK, "--memory-budget", budget, *common,
                        "--hysteresis-decisions", 2).wait_ready()
    CHANNEL = grpc.insecure_channel(SERVER.target, options=[
        ("grpc.max_receive_message_length", 64 << 20)])
    STUB = pb_grpc.ImageGenerationStub(CHANNEL)


def tearDownModule():
    if CHANNEL:
        CHANNEL.close()
    if SERVER:
        SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


class T01Health(unittest.TestCase):
    def test_health_serving(self):
        h = health_pb2_grpc.HealthStub(CHANNEL)
        for service in ["", "ldcp.v1.ImageGeneration"]:
            r = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            self.assertEqual(r.status, health_pb2.HealthCheckResponse.SERVING)

    def test_reflection(self):
        stub = reflection_pb2_grpc.ServerReflectionStub(CHANNEL)
        reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="ldcp.v1.ImageGeneration")]
        responses = list(stub.ServerReflectionInfo(iter(reqs), timeout=10))
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertIn("ldcp.v1.ImageGeneration", names)
        self.assertIn("grpc.health.v1.Health", names)
        from google.protobuf import descriptor_pb2
        fd = descriptor_pb2.FileDescriptorProto.FromString(
            responses[1].file_descriptor_response.file_descriptor_proto[0])
        self.assertEqual(fd.package, "ldcp.v1")
        self.assertIn("GenerateRequest", [m.name for m in fd.message_type])


class T02Generate(unittest.TestCase):
    def test_unary(self):
        resp = generate(request(request_id="unary-1"))
        self.assertEqual(len(resp.images), 1)
        self.assertEqual(lib.png_size(resp.images[0].data), (SIZE, SIZE))
        self.assertEqual(resp.images[0].mime_type, "image/png")
        self.assertEqual(len(resp.step_levels), STEPS)
        self.assertEqual(resp.request_id, "unary-1")
        self.assertEqual(resp.model, "tiny")
        self.assertGreater(resp.peak_memory_bytes, 0)
        t = resp.timings
        self.assertGreater(t.denoising_seconds, 0)
        self.assertGreater(t.decoding_seconds, 0)
        self.assertGreaterEqual(t.total_seconds, t.denoising_seconds)
        # Alone on an idle server: the best quality.
        self.assertEqual(max(resp.step_levels), 0.0)

    def test_seed_chosen_returned_and_reproducible(self):
        a = generate(request())
        b = generate(request(seed=a.seed, pruning=pb.Pruning(mode=pb.PRUNING_MODE_OFF)))
        self.assertEqual(a.images[0].data, b.images[0].data)
        c = generate(request(seed=a.seed + 1, pruning=pb.Pruning(mode=pb.PRUNING_MODE_OFF)))
        self.assertNotEqual(a.images[0].data, c.images[0].data)

    def test_num_images_and_fixed_level(self):
        resp = generate(request(num_images=2, seed=7,
                                pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.35)))
        self.assertEqual(len(resp.images), 2)
        self.assertEqual(list(resp.step_levels), [0.35] * STEPS)
        self.assertGreater(resp.pruning_ratio, 0)
        per_step = generate(request(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED,
                                                       per_step_levels=[0.0, 0.35])))
        self.assertEqual(list(per_step.step_levels), [0.0, 0.35, 0.35, 0.35])

    def test_stream_progress_then_result(self):
        events = stream(request(preview_every=2))
        progress = [e.progress for e in events if e.HasField("progress")]
        self.assertTrue(events[-1].HasField("result"))
        self.assertEqual(sum(e.HasField("result") for e in events), 1)
        self.assertGreaterEqual(len(progress), 1)
        steps = [p.step for p in progress]
        self.assertEqual(steps, sorted(steps))
        self.assertEqual(steps[-1], STEPS)
        self.assertTrue(all(p.num_steps == STEPS for p in progress))
        previews = [p for p in progress if p.preview.data]
        self.assertTrue(previews)
        self.assertEqual(lib.png_size(previews[0].preview.data), (SIZE // 8, SIZE // 8))
        self.assertEqual(lib.png_size(events[-1].result.images[0].data), (SIZE, SIZE))


def png(width, height, seed=0, mask=False):
    """PNG bytes: a noisy picture, or a mask (a white rectangle on black)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mask:
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[height // 4:3 * height // 4, width // 4:3 * width // 4] = 255
    else:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


INIT = png(SIZE, SIZE, seed=1)
MASK = png(SIZE, SIZE, mask=True)

BAD_FIELDS = [
    ("init_image", dict(init_image=b"\x89PNG but not really")),
    ("init_image", dict(init_image=INIT[:100])),
    ("init_image", dict(init_image=png(64, 64))),  # not the request's SIZE x SIZE
    ("init_image", dict(init_image=png(2048, 8))),  # beyond --max-size: refused from the header
    ("strength", dict(init_image=INIT, strength=1.5)),
    ("strength", dict(init_image=INIT, strength=0.1)),  # int(4 * 0.1) = 0 steps
    ("strength", dict(strength=0.5)),
    ("mask_image", dict(mask_image=MASK)),
    ("mask_image", dict(init_image=INIT, mask_image=png(64, 64, mask=True))),
    ("mask_image", dict(init_image=INIT, mask_image=b"GIF89a")),
    ("width", dict(width=65)),
    ("width", dict(width=4096)),
    ("height", dict(height=12)),
    ("steps", dict(steps=100000)),
    ("guidance_scale", dict(guidance_scale=float("nan"))),
    ("guidance_scale", dict(guidance_scale=float("inf"))),
    ("guidance_scale", dict(guidance_scale=-1.0)),
    ("sampler", dict(sampler="heun_magic")),
    ("eta", dict(eta=2.0)),
    ("eta", dict(eta=0.5, sampler="euler")),
    ("guidance_rescale", dict(guidance_rescale=1.5)),
    ("num_images", dict(num_images=99)),
    ("pruning.level", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=1.0))),
    ("pruning.level", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=float("nan")))),
    ("pruning.per_step_levels[1]",
     dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, per_step_levels=[0.1, 1.5]))),
    ("pruning.per_step_levels",
     dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, per_step_levels=[0.1] * 9))),
    ("pruning.max_level", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_AUTO, max_level=1.0))),
    ("pruning.max_level", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_AUTO, max_level=-0.1))),
    ("pruning.level", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_AUTO, level=0.3))),
    ("pruning.mode", dict(pruning=pb.Pruning(mode=17))),
    # This server has no gates file, so no learned step schedules (T12 serves them).
    ("pruning.flops_budget", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, flops_budget=0.7))),
    ("pruning.flops_budget", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, flops_budget=1.5))),
    ("pruning.flops_budget",
     dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, flops_budget=float("nan")))),
    ("pruning.flops_budget", dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_AUTO, flops_budget=0.7))),
    ("pruning.flops_budget",
     dict(pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.3, flops_budget=0.7))),
    ("output_format", dict(output_format=9)),
    ("prompt", dict(prompt="x" * 5000)),
    ("negative_prompt", dict(negative_prompt="x" * 5000)),
    ("request_id", dict(request_id="r" * 200)),
    ("priority", dict(priority=100000)),
    ("preview_every", dict(preview_every=STEPS + 1)),
]


class T03Validation(unittest.TestCase):
    def test_every_bad_field_is_invalid_argument_naming_it(self):
        for field, kw in BAD_FIELDS:
            for call in (generate, stream):
                with self.subTest(field=field, kw=str(kw)[:60], call=call.__name__):
                    with self.assertRaises(grpc.RpcError) as ctx:
                        call(request(**kw), timeout=10)
                    self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                    self.assertTrue(ctx.exception.details().startswith(field),
                                    ctx.exception.details())
                    # The allowed range is named.
                    self.assertRegex(ctx.exception.details(), r"\[|one of|at most|only|not allowed|must")


class T04DeadlinesAndCancellation(unittest.TestCase):
    def test_deadline_mid_generation(self):
        t0 = time.time()
        with self.assertRaises(grpc.RpcError) as ctx:
            generate(request(steps=150), timeout=0.8)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.time() - t0, 5)
        # The server stopped it at a step (its own log line says so) and goes on serving.
        deadline = time.time() + 20
        while "the deadline passed at step" not in SERVER.log() and time.time() < deadline:
            time.sleep(0.2)
        self.assertIn("the deadline passed at step", SERVER.log())
        self.assertEqual(len(generate(request()).images), 1)

    def test_expired_while_queued_never_starts(self):
        long_call = STUB.Generate.future(request(steps=120, width=72, height=72,
                                                 request_id="long-runner"), timeout=60)
        time.sleep(0.5)  # running now
        with self.assertRaises(grpc.RpcError) as ctx:
            generate(request(width=80, height=80, request_id="never-started"), timeout=0.4)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        long_call.result()
        tally("Generate", grpc.StatusCode.OK, 1)
        deadline = time.time() + 10
        while "id=never-started" not in SERVER.log() and time.time() < deadline:
            time.sleep(0.2)
        line = next(l for l in SERVER.log().splitlines() if "id=never-started" in l)
        self.assertIn("status=DEADLINE_EXCEEDED", line)
        self.assertRegex(line, r"while queued|before it started|before the request started")

    def test_cancel_mid_generation(self):
        call = STUB.GenerateStream(request(steps=150, request_id="to-cancel"), timeout=60)
        first = next(call)
        self.assertTrue(first.HasField("progress"))
        call.cancel()
        with LOCK:
            SERVED[("GenerateStream", "CANCELLED")] += 1
        deadline = time.time() + 20
        while "id=to-cancel" not in SERVER.log() and time.time() < deadline:
            time.sleep(0.2)
        line = next(l for l in SERVER.log().splitlines() if "id=to-cancel" in l)
        self.assertIn("status=CANCELLED", line)
        self.assertRegex(line, r"at step \d+")
        self.assertEqual(len(generate(request()).images), 1)


class T05Pressure(unittest.TestCase):
    def test_burst_above_budget_levels_rise(self):
        # Twelve requests at once; a batch of two fits the budget only when pruned.
        def one(i):
            req = request(request_id=f"burst-{i}")
            try:
                if i % 2:
                    return "OK", max(stream(req)[-1].result.step_levels)
                return "OK", max(generate(req).step_levels)
            except grpc.RpcError as e:
                return e.code().name, None

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(12)))
        codes = Counter(c for c, _ in results)
        self.assertLessEqual(set(codes), {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, codes)
        levels = [l for c, l in results if c == "OK"]
        self.assertGreaterEqual(len(levels), 6, codes)
        self.assertGreater(max(levels), 0.0, f"levels {levels}, costs {COSTS}")
        samples = lib.parse_metrics(SERVER.metrics_text())
        batched = sum(v for (n, l), v in samples.items()
                      if n == "ldcp_batch_size_bucket" and dict(l)["le"] == "1")
        total = lib.metric(samples, "ldcp_batch_size_count")
        self.assertLess(batched, total, "no batch of more than one request ran")

    def test_every_batch_stays_within_the_budget(self):
        # Load at the calibrated size with --max-batch 4: single- and two-image AUTO requests at
        # once, so that batches of up to 4 images are considered. Every batch's measured peak
        # (each response reports its batch's) stays within the budget, and none is counted over.
        before = lib.metric(lib.parse_metrics(SERVER.metrics_text()), "ldcp_budget_overruns_total")

        def one(i):
            req = request(request_id=f"budget-{i}", num_images=1 + i % 2, steps=2)
            try:
                return "OK", generate(req).peak_memory_bytes
            except grpc.RpcError as e:
                return e.code().name, None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        codes = Counter(c for c, _ in results)
        self.assertLessEqual(set(codes), {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, codes)
        peaks = [p for c, p in results if c == "OK"]
        self.assertGreaterEqual(len(peaks), 4, codes)
        self.assertLessEqual(max(peaks), COSTS["budget"], f"peaks {peaks}, costs {COSTS}")
        after = lib.metric(lib.parse_metrics(SERVER.metrics_text()), "ldcp_budget_overruns_total")
        self.assertEqual(after, before)
        overruns = [l for l in SERVER.log().splitlines() if "budget overrun" in l]
        self.assertEqual(before, 0, overruns)

    def test_never_fits_is_resource_exhausted(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            generate(request(num_images=4, pruning=pb.Pruning(mode=pb.PRUNING_MODE_OFF)))
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("bytes", ctx.exception.details())


class T06Client(unittest.TestCase):
    def run_client(self, *args):
        return subprocess.run([lib.tool("ldcp-client"), *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    def test_generate_health_and_errors(self):
        out = WORK / "client" / "img.png"
        r = self.run_client("generate", "--target", SERVER.target, "--prompt", "a red fox",
                            "--out", out, "--width", SIZE, "--height", SIZE, "--steps", STEPS,
                            "--seed", 3, "--sampler", "ddim")
        self.assertEqual(r.returncode, 0, r.stderr)
        tally("GenerateStream", grpc.StatusCode.OK, 1)
        self.assertEqual(lib.png_size(out.read_bytes()), (SIZE, SIZE))
        self.assertIn("seed 3", r.stdout)
        r = self.run_client("generate", "--target", SERVER.target, "--prompt", "x", "--out",
                            WORK / "client" / "two.png", "--unary", "--num-images", 2,
                            "--width", SIZE, "--height", SIZE, "--steps", 2)
        self.assertEqual(r.returncode, 0, r.stderr)
        tally("Generate", grpc.StatusCode.OK, 2)
        self.assertTrue((WORK / "client" / "two-1.png").exists())
        r = self.run_client("generate", "--target", SERVER.target, "--prompt", "x", "--out",
                            WORK / "client" / "bad.png", "--width", 65)
        self.assertNotEqual(r.returncode, 0)
        tally("GenerateStream", grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("INVALID_ARGUMENT", r.stderr)
        self.assertIn("width", r.stderr)
        r = self.run_client("health", "--target", SERVER.target)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"))
        r = self.run_client("health", "--target", f"127.0.0.1:{lib.free_port()}", "--timeout", 1)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAVAILABLE", r.stderr + r.stdout + "UNAVAILABLE" * ("DEADLINE" in r.stderr))


class T07Img2Img(unittest.TestCase):
    """img2img and inpainting over the API (parity with diffusers: test_img2img_parity)."""

    def test_img2img_runs_the_steps_strength_leaves(self):
        # The calibrated 0.7: fits the budget whatever the pressure tests left in the costs.
        fixed = pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.7)
        a = generate(request(init_image=INIT, strength=0.5, seed=3, pruning=fixed))
        self.assertEqual(lib.png_size(a.images[0].data), (SIZE, SIZE))
        self.assertEqual(list(a.step_levels), [0.7] * (STEPS // 2))  # int(4 * 0.5) steps
        b = generate(request(init_image=INIT, strength=0.5, seed=3, pruning=fixed, width=0,
                             height=0))  # 0: the image's size
        self.assertEqual(a.images[0].data, b.images[0].data)
        text = generate(request(seed=3, pruning=fixed))
        self.assertNotEqual(a.images[0].data, text.images[0].data)
        # Levels are indexed in the full schedule: strength 0.75 runs steps 1..3 of 4, and the
        # skipped step's level 0 neither runs nor sets the memory cost.
        per_step = generate(request(init_image=INIT, strength=0.75, seed=3, pruning=pb.Pruning(
            mode=pb.PRUNING_MODE_FIXED, per_step_levels=[0.0, 0.7, 0.7, 0.7])))
        self.assertEqual(list(per_step.step_levels), [0.7, 0.7, 0.7])

    def test_inpainting(self):
        resp = generate(request(init_image=INIT, mask_image=MASK, seed=5))
        self.assertEqual(lib.png_size(resp.images[0].data), (SIZE, SIZE))
        self.assertEqual(len(resp.step_levels), STEPS)  # strength 1.0 by default
        events = stream(request(init_image=INIT, mask_image=MASK, strength=0.5, seed=5))
        self.assertEqual(events[-1].result.images[0].mime_type, "image/png")


METRICS = ["ldcp_requests_total", "ldcp_request_duration_seconds_bucket",
           "ldcp_queue_wait_seconds_bucket", "ldcp_denoising_step_duration_seconds_bucket",
           "ldcp_request_peak_memory_bytes_bucket", "ldcp_memory_in_use_bytes",
           "ldcp_memory_budget_bytes", "ldcp_pruning_ratio_bucket", "ldcp_requests_by_level_total",
           "ldcp_queue_depth", "ldcp_requests_in_flight", "ldcp_batch_size_bucket",
           "ldcp_images_generated_total", "ldcp_batches_total", "ldcp_auto_pruning_level"]


class T09Metrics(unittest.TestCase):
    def test_metrics_match_what_was_served(self):
        # The server records a request when it finishes; give cancelled ones a moment.
        deadline = time.time() + 20
        while True:
            samples = lib.parse_metrics(SERVER.metrics_text())
            got = {(dict(l)["method"], dict(l)["status"]): v for (n, l), v in samples.items()
                   if n == "ldcp_requests_total"}
            want = {k: float(v) for k, v in SERVED.items()}
            got_nonzero = {k: v for k, v in got.items() if v}
            if got_nonzero == want or time.time() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(got_nonzero, want)
        names = {n for (n, _) in samples}
        for name in METRICS:
            self.assertIn(name, names)
        ok = sum(v for (m, s), v in want.items() if s == "OK")
        self.assertEqual(lib.metric(samples, "ldcp_images_generated_total"), IMAGES[0])
        self.assertEqual(lib.metric(samples, "ldcp_request_peak_memory_bytes_count"), ok)
        self.assertEqual(lib.metric(samples, "ldcp_pruning_ratio_count"), ok)
        by_level = sum(v for (n, _), v in samples.items() if n == "ldcp_requests_by_level_total")
        self.assertEqual(by_level, ok)
        self.assertEqual(lib.metric(samples, "ldcp_memory_budget_bytes"), COSTS["budget"])
        self.assertGreater(lib.metric(samples, "ldcp_memory_in_use_bytes"), 0)
        self.assertEqual(lib.metric(samples, "ldcp_queue_depth"), 0)
        self.assertEqual(lib.metric(samples, "ldcp_queue_capacity"), 16)  # --max-queue
        self.assertEqual(lib.metric(samples, "ldcp_requests_in_flight"), 0)
        total = sum(want.values())
        self.assertEqual(sum(lib.metric(samples, "ldcp_request_duration_seconds_count", method=m)
                             for m in ("Generate", "GenerateStream")), total)
        self.assertGreater(lib.metric(samples, "ldcp_denoising_step_duration_seconds_count"), 0)
        self.assertGreater(lib.metric(samples, "ldcp_queue_wait_seconds_count"), 0)

    def test_prometheus_scrapes_and_answers_queries(self):
        prom = shutil.which("prometheus")
        self.assertIsNotNone(prom, "Debian's prometheus is not installed (scripts/setup.sh)")
        port = lib.free_port()
        d = WORK / "prometheus"
        d.mkdir(exist_ok=True)
        (d / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ldcp\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{SERVER.metrics_port}']}}]\n")
        with open(d / "log", "w") as log:
            p = subprocess.Popen([prom, f"--config.file={d / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={d / 'data'}",
                                  f"--web.listen-address=127.0.0.1:{port}"],
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            def query(q):
                url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = json.load(r)
                self.assertEqual(body["status"], "success")
                return body["data"]["result"]

            served_ok = lib.metric(lib.parse_metrics(SERVER.metrics_text()),
                                   "ldcp_request_peak_memory_bytes_count")
            deadline = time.time() + 60
            result = []
            while time.time() < deadline:
                try:
                    result = query("ldcp_request_peak_memory_bytes_count")
                    if result:
                        break
                except OSError:
                    pass
                time.sleep(1)
            self.assertTrue(result, (d / "log").read_text()[-2000:])
            self.assertEqual(float(result[0]["value"][1]), served_ok)
            for q in ["ldcp_request_peak_memory_bytes_sum / ldcp_request_peak_memory_bytes_count",
                      "histogram_quantile(0.99, sum by (le) (ldcp_request_duration_seconds_bucket))",
                      "histogram_quantile(0.5, sum by (le) (ldcp_pruning_ratio_bucket))",
                      "ldcp_pruning_ratio_count",
                      "sum by (status) (ldcp_requests_total)"]:
                r = query(q)
                self.assertTrue(r, q)
                self.assertFalse(math.isnan(float(r[0]["value"][1])), q)
            self.assertGreater(float(query("ldcp_request_peak_memory_bytes_sum / "
                                           "ldcp_request_peak_memory_bytes_count")[0]["value"][1]),
                               0)
        finally:
            p.terminate()
            p.wait(timeout=30)


class T10Drain(unittest.TestCase):
    def test_sigterm_drains_in_flight_requests(self):
        model = lib.demo_model(WORK)
        server = lib.Server(model, WORK, "--memory-budget", "64GiB", "--default-size", SIZE,
                            "--calibrate-sizes", f"{SIZE}x{SIZE}", "--calibrate-levels", "0",
                            "--calibrate-steps", 1, "--max-batch", 2, "--grace-period", 60,
                            name="drain").wait_ready()
        with grpc.insecure_channel(server.target) as ch:
            stub = pb_grpc.ImageGenerationStub(ch)
            calls = [stub.Generate.future(request(steps=40, request_id=f"drain-{i}"), timeout=120)
                     for i in range(4)]
            deadline = time.time() + 30
            while "ldcp_requests_in_flight 0" in server.metrics_text() and time.time() < deadline:
                time.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            # Health turns NOT_SERVING while the running requests finish.
            time.sleep(0.3)
            h = health_pb2_grpc.HealthStub(ch)
            try:
                status = h.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                self.assertEqual(status, health_pb2.HealthCheckResponse.NOT_SERVING)
                with self.assertRaises(grpc.RpcError) as ctx:
                    stub.Generate(request(), timeout=10)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)
            except grpc.RpcError as e:  # already shut down: only if everything finished
                self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
            for c in calls:
                self.assertEqual(len(c.result().images), 1)
        self.assertEqual(server.stop(timeout=120), 0, server.log()[-3000:])
        self.assertIn("draining", server.log())


class T11Gates(unittest.TestCase):
    """--gates (learned scores from `ldcp train-gates`) and --scores select which channels a level
    drops: the same request at the same level gives other images; a gates file that does not fit
    the model stops the server at start-up with the layer named."""

    # At 64x64 without tiling the decoder sets the tiny model's peak: the server warns that
    # pruning cannot lower it there.
    FLAGS = ["--memory-budget", "64GiB", "--default-size", 64, "--calibrate-sizes", "64x64",
             "--calibrate-levels", "0,0.5", "--calibrate-steps", 1, "--max-batch", 1]

    @classmethod
    def setUpClass(cls):
        from PIL import Image
        import numpy as np
        cls.model = lib.demo_model(WORK)
        data = WORK / "gates-data"
        data.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(6):
            Image.fromarray((rng.random((72, 80, 3)) * 255).astype("uint8")).save(data / f"{i}.png")
        cls.gates = WORK / "gates.safetensors"
        args = ["train-gates", "--model", cls.model, "--data", data, "--out", cls.gates,
                "--resolution", 64, "--steps", 4, "--batch", 2, "--val-images", 2]
        r = subprocess.run([lib.tool("ldcp"), *map(str, args)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    def image_at_half(self, *flags, name):
        server = lib.Server(self.model, WORK, *self.FLAGS, *flags, name=name).wait_ready()
        try:
            with grpc.insecure_channel(server.target) as ch:
                resp = pb_grpc.ImageGenerationStub(ch).Generate(
                    request(width=64, height=64, steps=3, seed=11,
                            pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.5)),
                    timeout=120)
        finally:
            self.assertEqual(server.stop(), 0, server.log()[-3000:])
        self.assertEqual(list(resp.step_levels), [0.5] * 3)
        return resp.images[0].data, server.log()

    def test_scores_choose_the_dropped_channels(self):
        magnitude, log_m = self.image_at_half(name="scores-magnitude")
        learned, log_l = self.image_at_half("--gates", self.gates, name="scores-learned")
        random, log_r = self.image_at_half("--scores", "random", name="scores-random")
        self.assertIn("pruning scores: magnitude", log_m)
        self.assertIn("does not lower the peak", log_m)
        self.assertIn(f"pruning scores: learned from {self.gates}", log_l)
        self.assertIn("pruning scores: random", log_r)
        self.assertEqual(len({magnitude, learned, random}), 3)

    def test_gates_that_do_not_fit_stop_the_server(self):
        from safetensors.numpy import load_file, save_file
        from safetensors import safe_open
        with safe_open(str(self.gates), "np") as f:
            metadata = f.metadata()
        tensors = load_file(str(self.gates))
        dropped = sorted(tensors)[0]
        del tensors[dropped]
        bad = WORK / "gates-missing-layer.safetensors"
        save_file(tensors, str(bad), metadata=metadata)
        for path, needle in [(bad, dropped), (WORK / "no-such-gates.safetensors", "--gates")]:
            with self.subTest(path=path.name):
                server = lib.Server(self.model, WORK, *self.FLAGS, "--gates", path,
                                    name="bad-gates")
                try:
                    rc = server.proc.wait(timeout=120)
                finally:
                    server.stop()
                self.assertNotEqual(rc, 0)
                self.assertIn(needle, server.log())


class T12StepSchedules(unittest.TestCase):
    """pruning.flops_budget (mode FIXED): the per-step schedule learned by `ldcp tune-schedule`
    for that mean FLOPs fraction, from the server's gates file; as stored for the sampler and step
    count it was tuned for, re-mapped (same mean FLOPs) for others; INVALID_ARGUMENT naming the
    field for a budget the file has no schedule for."""

    FLAGS = T11Gates.FLAGS

    @classmethod
    def setUpClass(cls):
        cls.model = lib.demo_model(WORK)
        prompts = WORK / "tune-prompts.txt"
        prompts.write_text("a lighthouse at dawn\n")
        cls.gates = WORK / "tuned.safetensors"
        tune = [lib.tool("ldcp"), "tune-schedule", "--model", cls.model, "--prompts", prompts,
                "--steps", 3, "--sampler", "euler", "--width", 64, "--height", 64, "--levels",
                "0.3,0.6", "--floor", 0.1, "--seeds", 1, "--out", cls.gates]
        # A budget outside the feasible range fails at once and names the range to choose from.
        r = subprocess.run([*map(str, tune), "--budgets", "0.01"], capture_output=True, text=True,
                           timeout=300)
        m = re.search(r"feasible range is \[([0-9.]+), ([0-9.]+)\]", r.stderr)
        assert r.returncode != 0 and m, r.stderr[-2000:]
        lowest, highest = float(m.group(1)), float(m.group(2))
        cls.budget = round((lowest + highest) / 2, 3)
        r = subprocess.run([*map(str, tune), "--budgets", str(cls.budget)], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        from safetensors import safe_open
        with safe_open(str(cls.gates), "np") as f:
            cls.schedule = json.loads(f.metadata()["step_schedules"])[0]
        cls.server = lib.Server(cls.model, WORK, *cls.FLAGS, "--gates", cls.gates,
                                name="step-schedules").wait_ready()
        cls.channel = grpc.insecure_channel(cls.server.target)
        cls.stub = pb_grpc.ImageGenerationStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        assert cls.server.stop() == 0, cls.server.log()[-3000:]

    def budget_request(self, steps, budget=None, **kw):
        pruning = pb.Pruning(mode=pb.PRUNING_MODE_FIXED,
                             flops_budget=self.budget if budget is None else budget)
        return request(width=64, height=64, steps=steps, sampler="euler", seed=3, pruning=pruning,
                       **kw)

    def test_serves_the_learned_levels(self):
        self.assertIn(f"learned step schedules for FLOPs budgets {self.budget:g}", self.server.log())
        resp = self.stub.Generate(self.budget_request(3), timeout=120)
        self.assertEqual(len(resp.step_levels), 3)
        for got, stored in zip(resp.step_levels, self.schedule["levels"]):
            self.assertAlmostEqual(got, stored, places=9)
        self.assertAlmostEqual(1 - resp.pruning_ratio, self.budget, delta=0.02)

    def test_other_step_counts_keep_the_budget(self):
        resp = self.stub.Generate(self.budget_request(6), timeout=120)
        self.assertEqual(len(resp.step_levels), 6)
        self.assertGreaterEqual(min(resp.step_levels), 0.1 - 1e-9)
        self.assertAlmostEqual(1 - resp.pruning_ratio, self.budget, delta=0.02)
        events = list(self.stub.GenerateStream(self.budget_request(6), timeout=120))
        self.assertEqual(list(events[-1].result.step_levels), list(resp.step_levels))

    def test_budgets_without_a_schedule_are_invalid_argument(self):
        for budget in (0.99, 0.0, 2.0):
            with self.subTest(budget=budget):
                with self.assertRaises(grpc.RpcError) as ctx:
                    self.stub.Generate(self.budget_request(3, budget=budget), timeout=30)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertTrue(ctx.exception.details().startswith("pruning.flops_budget"),
                                ctx.exception.details())
        self.assertIn(f"stored: {self.budget:g}", self.stub_error(0.99))

    def stub_error(self, budget):
        try:
            self.stub.Generate(self.budget_request(3, budget=budget), timeout=30)
        except grpc.RpcError as e:
            return e.details()
        return ""

    def test_client_flag(self):
        out = WORK / "client-budget.png"
        r = subprocess.run([lib.tool("ldcp-client"), "generate", "--target", self.server.target,
                            "--prompt", "a fox", "--width", "64", "--height", "64", "--steps", "3",
                            "--sampler", "euler", "--pruning", "fixed", "--flops-budget",
                            str(self.budget), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(out.exists())


if __name__ == "__main__":
    unittest.main(verbosity=2)
