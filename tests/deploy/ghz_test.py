"""bench/ghz: every scenario config parses as ghz reads it (known keys, durations, sizes,
templates), names a method the live server offers through reflection (with the right streaming
shape), carries message sizes the server's responses fit in, and every request message in it is
accepted by a live ldcp-server on the demo model (the models scenario: on two demo models, each
reply from the model asked for) and served as its pruning mode says (AUTO, FIXED, OFF). run.sh
is run with a stand-in `ghz` (ghz cannot be installed here) to check the flags it passes and the
JSON and HTML reports it keeps.

Run by CTest (deploy_ghz); needs the built ldcp-server and ldcp."""

import base64
import json
import math
import os
import re
import shutil
import subprocess
import textwrap
import unittest
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import deploylib as dl

GHZ_DIR = dl.SOURCE_DIR / "bench" / "ghz"
CONFIGS = sorted(GHZ_DIR.glob("*.json"))
SCENARIOS = {"steady", "step", "burst", "stream", "models"}
# The models scenario's server: two models under these names (run.sh's help says so).
MODEL_NAMES = ["base", "alt"]
LORA_NAME = "detail"
SERVICE = "ldcp.v1.ImageGeneration"
# The keys of ghz's configuration file (its runner.Config and command-line options).
GHZ_KEYS = {
    "proto", "protoset", "call", "import-paths", "cacert", "cert", "key", "cname", "skipTLS",
    "insecure", "authority", "async", "rps", "load-schedule", "load-start", "load-end",
    "load-step", "load-step-duration", "load-max-duration", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "total", "timeout", "duration", "max-duration", "duration-stop",
    "data", "data-file", "binary-file", "metadata", "metadata-file", "stream-interval",
    "stream-call-duration", "stream-call-count", "stream-dynamic-messages", "reflect-metadata",
    "output", "format", "skipFirst", "count-errors", "connections", "connect-timeout",
    "keepalive", "name", "tags", "cpus", "debug", "host", "enable-compression", "lb-strategy",
    "max-recv-message-size", "max-send-message-size", "disable-template-functions",
    "disable-template-data",
}
DURATION_KEYS = {"timeout", "duration", "max-duration", "load-step-duration", "load-max-duration",
                 "concurrency-step-duration", "concurrency-max-duration", "stream-interval",
                 "connect-timeout", "keepalive", "stream-call-duration"}
GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
TEMPLATE_FIELDS = {"RequestNumber", "WorkerID", "FullyQualifiedName", "MethodName", "ServiceName",
                   "InputName", "OutputName", "IsClientStreaming", "IsServerStreaming",
                   "Timestamp", "TimestampUnix", "TimestampUnixMilli", "TimestampUnixNano", "UUID"}

pb, pb_grpc = dl.lib.load_stubs()
BASE_ENV = dl.server_env(dl.render("gpu"))
OPTIONS = dl.server_options()


def config(path):
    return json.loads(Path(path).read_text())


def messages(cfg):
    data = cfg["data"]
    return data if isinstance(data, list) else [data]


def render_template(obj, request_number):
    """ghz's call template, as it renders the data for request `request_number`."""
    text = json.dumps(obj)

    def field(m):
        name = m.group(1)
        if name not in TEMPLATE_FIELDS:
            raise AssertionError(f"unknown ghz template field {name}")
        return {"RequestNumber": str(request_number), "WorkerID": "w0"}.get(name, "x")

    text = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", field, text)
    if "{{" in text:
        raise AssertionError(f"template not understood: {text}")
    return json.loads(text)


def method_name(cfg):
    m = re.fullmatch(r"([\w.]+)[./](\w+)", cfg["call"])
    if not m:
        raise AssertionError(f"call {cfg['call']}: not package.Service.Method")
    return m.group(1), m.group(2)


class Configs(unittest.TestCase):
    def test_scenarios_present(self):
        self.assertEqual({p.stem for p in CONFIGS}, SCENARIOS)

    def test_configs_as_ghz_reads_them(self):
        max_bytes = int(BASE_ENV.get("LDCP_MAX_MESSAGE_BYTES", OPTIONS["LDCP_MAX_MESSAGE_BYTES"]))
        max_images = int(BASE_ENV.get("LDCP_MAX_IMAGES", OPTIONS["LDCP_MAX_IMAGES"]))
        for path in CONFIGS:
            with self.subTest(config=path.name):
                cfg = config(path)
                self.assertEqual(set(cfg) - GHZ_KEYS, set(), "keys ghz does not know")
                self.assertNotIn("proto", cfg, "the server offers reflection")
                self.assertNotIn("protoset", cfg)
                self.assertTrue(cfg["insecure"])
                for k in DURATION_KEYS & set(cfg):
                    self.assertRegex(cfg[k], GO_DURATION, k)
                # Responses carry PNGs: ghz must accept what the server may send.
                self.assertGreaterEqual(dl.parse_bytes(cfg["max-recv-message-size"]), max_bytes)
                biggest = max(len(pb.GenerateRequest(**{}).SerializeToString()),
                              *(len(json_format.ParseDict(render_template(m, 10 ** 9),
                                                          pb.GenerateRequest()).SerializeToString())
                                for m in messages(cfg)))
                self.assertGreaterEqual(dl.parse_bytes(cfg["max-send-message-size"]), biggest)
                data = cfg["data"]
                self.assertTrue(isinstance(data, dict) or (
                    isinstance(data, list) and data and all(isinstance(m, dict) for m in data)))
                modes = {m.get("pruning", {}).get("mode", "PRUNING_MODE_AUTO")
                         for m in messages(cfg)}
                self.assertEqual(modes, {"PRUNING_MODE_AUTO", "PRUNING_MODE_FIXED",
                                         "PRUNING_MODE_OFF"}, "each scenario mixes the modes")
                for m in messages(cfg):
                    self.assertLessEqual(m.get("num_images", 1), max_images)
                    # Size and steps are the server's defaults (SD1.5: 512x512, 30 steps), so
                    # the same data serves a demo model too.
                    self.assertFalse({"width", "height", "steps"} & set(m))
                # A bounded run: a number of calls or a duration.
                self.assertTrue("total" in cfg or "duration" in cfg)
                self.assertGreater(cfg["concurrency"], 0)

    def test_scenario_shapes(self):
        steady, step, burst, stream = (config(GHZ_DIR / f"{s}.json")
                                       for s in ("steady", "step", "burst", "stream"))
        self.assertNotIn("load-schedule", steady)
        self.assertGreater(steady["rps"], 0)
        self.assertIn("duration", steady)
        self.assertEqual(step["load-schedule"], "step")
        self.assertGreater(step["load-end"], step["load-start"])
        self.assertGreater(step["load-step"], 0)
        self.assertIn("load-step-duration", step)
        self.assertGreaterEqual(step["concurrency"], step["load-end"])
        # The burst offers far more images at once than a pod can queue and batch: memory
        # pressure, AUTO levels rising, and some UNAVAILABLE (queue full).
        max_queue = int(BASE_ENV["LDCP_MAX_QUEUE"])
        max_batch = int(BASE_ENV["LDCP_MAX_BATCH"])
        images = [m.get("num_images", 1) for m in messages(burst)]
        self.assertGreater(burst["concurrency"] * sum(images) / len(images), max_queue + max_batch)
        self.assertGreaterEqual(burst["total"], 2 * burst["concurrency"])
        self.assertNotIn("rps", burst)
        self.assertEqual(method_name(stream)[1], "GenerateStream")
        self.assertTrue(any(m.get("preview_every") for m in messages(stream)))
        # The steady load carries A1111 prompt syntax and clip skip (fields 20-21; a clip skip
        # the demo model's 2-layer text encoder takes too), img2img and inpainting (fields
        # 17-19) on a small init image (it sets the output's size on any model).
        a1111 = [m for m in messages(steady) if m.get("prompt_syntax") == "PROMPT_SYNTAX_A1111"]
        self.assertTrue(a1111)
        self.assertTrue(all(1 < m.get("clip_skip", 0) <= 2 for m in a1111))
        with_init = [m for m in messages(steady) if "init_image" in m]
        self.assertEqual(len(with_init), 2)
        self.assertEqual(sum("mask_image" in m for m in with_init), 1)
        self.assertTrue(all(0 < m["strength"] <= 1 for m in with_init))
        for m in with_init:
            self.assertEqual(dl.lib.png_size(base64.b64decode(m["init_image"])), (64, 64))
        # Only the models scenario names models: the others serve a one-model server. It asks
        # for each model by name, and for the default with `model` left out, in AUTO, FIXED and
        # OFF across them.
        models = config(GHZ_DIR / "models.json")
        for path in CONFIGS:
            if path.stem != "models":
                self.assertFalse(any("model" in m for m in messages(config(path))), path.name)
        self.assertEqual({m.get("model", "") for m in messages(models)}, {*MODEL_NAMES, ""})
        for name in MODEL_NAMES:
            self.assertGreater(len({m.get("pruning", {}).get("mode") for m in messages(models)
                                    if m.get("model") == name}), 1, name)
        # and a LoRA (field 22), by the name run.sh's help gives; only there (--lora-dir).
        self.assertEqual({lora["name"] for m in messages(models) for lora in m.get("loras", [])},
                         {LORA_NAME})
        self.assertFalse(any("loras" in m for path in CONFIGS if path.stem != "models"
                             for m in messages(config(path))))


class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = dl.workdir("ldcp-deploy-ghz-")
        # The gpu overlay's scheduling, without its TLS, tokens and reflection off: this is what
        # ghz against a local server sees (run.sh passes the options for those after `--`).
        plain = {k: "" for k in dl.SECRET_FILE_OPTIONS}
        cls.server = dl.start_server(cls.work, overlay="gpu", LDCP_DEVICE="cpu", LDCP_DTYPE="fp32",
                                     LDCP_FP16_WEIGHTS="false", LDCP_MEMORY_BUDGET="4GiB",
                                     LDCP_REFLECTION="true", **plain)
        # The models scenario's server: two demo models and the LoRA it names (both models
        # have the tiny architecture: one file fits them).
        loras = cls.work / "loras"
        loras.mkdir(exist_ok=True)
        dl.lib.kohya_lora(dl.lib.demo_model(cls.work), loras / f"{LORA_NAME}.safetensors", 1)
        cls.multi = dl.start_server(cls.work, overlay="gpu", name="multi", models=MODEL_NAMES,
                                    LDCP_DEVICE="cpu", LDCP_DTYPE="fp32",
                                    LDCP_FP16_WEIGHTS="false", LDCP_MEMORY_BUDGET="4GiB",
                                    LDCP_REFLECTION="true", LDCP_LORA_DIR=str(loras),
                                    LDCP_MAX_LORAS="2", **plain)
        options = [("grpc.max_receive_message_length", 64 << 20)]
        cls.channel = grpc.insecure_channel(cls.server.target, options=options)
        cls.multi_channel = grpc.insecure_channel(cls.multi.target, options=options)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.multi_channel.close()
        cls.server.stop()
        cls.multi.stop()
        shutil.rmtree(cls.work, ignore_errors=True)

    def reflected_methods(self):
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
        resps = list(stub.ServerReflectionInfo(iter(reqs), timeout=30))
        services = {s.name for s in resps[0].list_services_response.service}
        self.assertIn(SERVICE, services)
        methods = {}
        for raw in resps[1].file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for svc in fd.service:
                for m in svc.method:
                    methods[(f"{fd.package}.{svc.name}", m.name)] = m
        return methods

    def test_methods_exist_by_reflection(self):
        methods = self.reflected_methods()
        for path in CONFIGS:
            with self.subTest(config=path.name):
                cfg = config(path)
                service, name = method_name(cfg)
                self.assertIn((service, name), methods, f"{cfg['call']} is not offered")
                m = methods[(service, name)]
                self.assertEqual(m.input_type, ".ldcp.v1.GenerateRequest")
                self.assertFalse(m.client_streaming)
                self.assertEqual(m.server_streaming, path.stem == "stream")

    def check_levels(self, req, levels):
        mode = req.pruning.mode
        P = pb.PruningMode
        self.assertTrue(levels)
        if mode == P.PRUNING_MODE_OFF:
            self.assertEqual(set(levels), {0.0})
        elif mode == P.PRUNING_MODE_FIXED:
            per = list(req.pruning.per_step_levels)
            want = [per[min(i, len(per) - 1)] for i in range(len(levels))] if per \
                else [req.pruning.level] * len(levels)
            for got, w in zip(levels, want):
                self.assertTrue(math.isclose(got, w, abs_tol=1e-9), (levels, want))
        else:
            cap = req.pruning.max_level if req.pruning.HasField("max_level") else \
                float(BASE_ENV["LDCP_MAX_LEVEL"])
            self.assertLessEqual(max(levels), cap + 1e-9)

    def test_request_data_is_served(self):
        steps = dl.DEMO_OVERRIDES["LDCP_DEFAULT_STEPS"]
        size = dl.DEMO_OVERRIDES["LDCP_DEFAULT_SIZE"]
        n = 0
        for path in CONFIGS:
            cfg = config(path)
            _, name = method_name(cfg)
            multi = path.stem == "models"
            stub = pb_grpc.ImageGenerationStub(self.multi_channel if multi else self.channel)
            for i, msg in enumerate(messages(cfg)):
                with self.subTest(config=path.name, message=i):
                    req = json_format.ParseDict(render_template(msg, i), pb.GenerateRequest())
                    if name == "GenerateStream":
                        events = list(stub.GenerateStream(req, timeout=120))
                        self.assertTrue(events[-1].HasField("result"))
                        progress = [e.progress for e in events[:-1]]
                        self.assertEqual(len(progress), len(events[-1].result.step_levels))
                        if req.preview_every:
                            self.assertTrue(any(p.HasField("preview") for p in progress))
                        resp = events[-1].result
                    else:
                        resp = stub.Generate(req, timeout=120)
                    self.assertEqual(len(resp.images), max(1, req.num_images))
                    if req.init_image:  # the init image's size; strength skips early steps
                        self.assertEqual(dl.lib.png_size(resp.images[0].data),
                                         dl.lib.png_size(req.init_image))
                        self.assertTrue(1 <= len(resp.step_levels) <= steps + 1)
                    else:
                        self.assertEqual(dl.lib.png_size(resp.images[0].data), (size, size))
                        # One level per U-Net evaluation (PNDM makes one more than `steps`).
                        self.assertIn(len(resp.step_levels), (steps, steps + 1))
                    self.assertEqual(resp.request_id, req.request_id)
                    if multi:  # the model asked for, or the first for none
                        self.assertEqual(resp.model, req.model or MODEL_NAMES[0])
                    if req.loras:  # the PNG's parameters name the LoRA (A1111's <lora:...>)
                        self.assertIn(f"<lora:{LORA_NAME}:".encode(), resp.images[0].data)
                    if req.HasField("seed"):
                        self.assertEqual(resp.seed, req.seed)
                    self.check_levels(req, list(resp.step_levels))
                    n += 1
        self.assertGreaterEqual(n, 12)


SAMPLE_REPORT = {
    "name": "sample", "endReason": "normal", "date": "2026-01-01T00:00:00Z",
    "options": {"call": "ldcp.v1.ImageGeneration.Generate", "host": "127.0.0.1:50051"},
    "count": 10, "total": 5_000_000_000, "average": 450_000_000, "fastest": 300_000_000,
    "slowest": 900_000_000, "rps": 2.0,
    "errorDistribution": {"rpc error: code = Unavailable desc = queue full": 2},
    "statusCodeDistribution": {"OK": 8, "Unavailable": 2},
    "latencyDistribution": [{"percentage": p, "latency": 300_000_000 + p * 6_000_000}
                            for p in (10, 25, 50, 75, 90, 95, 99)],
    "histogram": [{"mark": 0.3 + 0.06 * i, "count": i % 3, "frequency": 0.1} for i in range(11)],
    "details": [],
}


class RunScript(unittest.TestCase):
    def fake_ghz(self, work, rc=0):
        """A stand-in `ghz` that records its arguments and writes SAMPLE_REPORT to --output."""
        bindir = work / "bin"
        bindir.mkdir(exist_ok=True)
        (work / "sample.json").write_text(json.dumps(SAMPLE_REPORT))
        script = bindir / "ghz"
        script.write_text(textwrap.dedent(f"""\
            #!/usr/bin/env bash
            echo "$*" >> {work}/calls.log
            out=""
            while (($#)); do
              case "$1" in
                --config) [ -f "$2" ] || exit 3; shift 2 ;;
                --output) out="$2"; shift 2 ;;
                *) shift ;;
              esac
            done
            cp {work}/sample.json "$out"
            exit {rc}
            """))
        script.chmod(0o755)
        return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")

    def run_script(self, env, *args):
        return subprocess.run(["bash", str(GHZ_DIR / "run.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def test_runs_scenarios_and_keeps_json_and_html(self):
        work = dl.workdir("ldcp-ghz-run-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        env = self.fake_ghz(work)
        out = work / "reports"
        r = self.run_script(env, "--host", "127.0.0.1:50051", "--out", str(out), "steady", "stream")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for s in ("steady", "stream"):
            self.assertEqual(json.loads((out / f"{s}.json").read_text()), SAMPLE_REPORT)
            page = (out / f"{s}.html").read_text()
            self.assertIn("Unavailable", page)
            self.assertIn("p99", page)
            self.assertIn("ldcp.v1.ImageGeneration.Generate", page)
        index = (out / "index.html").read_text()
        self.assertIn('href="steady.html"', index)
        self.assertIn('href="stream.html"', index)
        calls = (work / "calls.log").read_text().splitlines()
        self.assertEqual(len(calls), 2)
        for call, s in zip(calls, ("steady", "stream")):
            self.assertIn(f"--config {GHZ_DIR / s}.json", call)
            self.assertIn("--format json", call)
            self.assertIn("--max-recv-message-size", call)
            self.assertTrue(call.endswith(" 127.0.0.1:50051"), call)
            self.assertNotIn("--lb-strategy", call)

    def test_cluster_target_and_failures(self):
        work = dl.workdir("ldcp-ghz-run-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        env = self.fake_ghz(work, rc=1)
        out = work / "reports"
        target = "dns:///ldcp-server-grpc.ldcp.svc.cluster.local:50051"
        r = self.run_script(env, "--host", target, "--out", str(out), "burst")
        self.assertEqual(r.returncode, 1, "a failing scenario fails the script")
        self.assertTrue((out / "burst.html").exists(), "its report is kept all the same")
        call = (work / "calls.log").read_text()
        self.assertIn("--lb-strategy round_robin", call)
        self.assertIn(target, call)
        r = self.run_script(env, "--out", str(out), "no-such-scenario")
        self.assertEqual(r.returncode, 2)

    def test_options_after_dashes_reach_ghz(self):
        # A server with TLS, tokens and reflection off (the gpu overlay): ghz's own options.
        work = dl.workdir("ldcp-ghz-run-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        env = self.fake_ghz(work)
        tls = ["--proto", "proto/ldcp/v1/ldcp.proto", "--cacert", "ca.crt",
               "--metadata", '{"authorization":"Bearer t"}']
        r = self.run_script(env, "--host", "127.0.0.1:50051", "--out", str(work / "r"),
                            "steady", "--", *tls)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        call = (work / "calls.log").read_text()
        self.assertIn(" ".join(tls), call)
        self.assertTrue(call.strip().endswith(" 127.0.0.1:50051"), call)


if __name__ == "__main__":
    unittest.main(verbosity=2)
