"""Several models in one server (issue 14 items 5 and 7), end to end: ldcp-server started with
--model a=PATH --model b=PATH on two demo models of different seeds; each served by name (and
the first for an empty `model`), each image equal to a single-model server's for that model;
ListModels (names, default, architecture, native size, scores, LoRAs, weights, hashes); an
unknown name INVALID_ARGUMENT naming `model` with a short quote; the `model` label of the
request metrics (only names from the command line); the PNGs' Model and Model hash naming the
model that served; ldcp-client generate --model and list-models; ListModels under bearer tokens (no token,
a client without the method, one with it); start-up errors for bad
--model and --gates options. Run by CTest (server_models)."""

import hashlib
import io
import json
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

import ldcp_testlib as lib

pb, pb_grpc = lib.load_stubs()

WORK = Path(tempfile.mkdtemp(prefix="ldcp-models-"))
MODELS = {}
MULTI = None
SINGLE = {}
CHANNELS = []


def demo_model(name, seed):
    path = WORK / name
    subprocess.run([lib.tool("ldcp"), "init-demo-model", str(path), "--config", "tiny", "--seed",
                    str(seed)], check=True, stdout=subprocess.DEVNULL, timeout=300)
    return path


def stub(server):
    channel, image_generation = lib.image_stub(server, pb_grpc)
    CHANNELS.append(channel)
    return image_generation


def unet_hash(model):
    return hashlib.sha256((model / "unet/diffusion_pytorch_model.safetensors")
                          .read_bytes()).hexdigest()[:10]


def request(**kw):
    kw.setdefault("prompt", "a red circle on a blue background")
    kw.setdefault("steps", 3)
    kw.setdefault("sampler", "euler")
    kw.setdefault("seed", 5)
    return pb.GenerateRequest(**kw)


def pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def parameters(data):
    return Image.open(io.BytesIO(data)).text.get("parameters", "")


def setUpModule():
    global MULTI
    MODELS["a"] = demo_model("tiny-a", 1)
    MODELS["b"] = demo_model("tiny-b", 2)
    flags = lib.small_cpu_flags()
    MULTI = lib.Server(f"a={MODELS['a']}", WORK, "--model", f"b={MODELS['b']}", *flags,
                       name="multi").wait_ready()
    for name, path in MODELS.items():
        SINGLE[name] = lib.Server(path, WORK, *flags, name=f"single-{name}").wait_ready()


def tearDownModule():
    for channel in CHANNELS:
        channel.close()
    for server in [MULTI, *SINGLE.values()]:
        if server:
            server.stop()
    shutil.rmtree(WORK, ignore_errors=True)


class SeveralModels(unittest.TestCase):
    def test_each_model_by_name_equals_its_single_model_server(self):
        multi = stub(MULTI)
        served = {name: multi.Generate(request(model=name), timeout=120) for name in MODELS}
        default = multi.Generate(request(), timeout=120)
        for name in MODELS:
            self.assertEqual(served[name].model, name)
            alone = stub(SINGLE[name]).Generate(request(), timeout=120)
            np.testing.assert_array_equal(pixels(served[name].images[0].data),
                                          pixels(alone.images[0].data), err_msg=name)
        self.assertEqual(default.model, "a")
        np.testing.assert_array_equal(pixels(default.images[0].data),
                                      pixels(served["a"].images[0].data))
        self.assertFalse(np.array_equal(pixels(served["a"].images[0].data),
                                        pixels(served["b"].images[0].data)))
        # The stream serves by name too.
        events = list(multi.GenerateStream(request(model="b"), timeout=120))
        self.assertEqual(events[-1].result.model, "b")
        np.testing.assert_array_equal(pixels(events[-1].result.images[0].data),
                                      pixels(served["b"].images[0].data))

    def test_png_metadata_names_the_model_that_served(self):
        multi = stub(MULTI)
        for name, path in MODELS.items():
            text = parameters(multi.Generate(request(model=name), timeout=120).images[0].data)
            self.assertIn(f"Model: {name},", text)
            self.assertIn(f"Model hash: {unet_hash(path)},", text)
        # A single unnamed model keeps the folder's name, as before several models.
        text = parameters(stub(SINGLE["b"]).Generate(request(), timeout=120).images[0].data)
        self.assertIn("Model: tiny-b,", text)

    def test_list_models(self):
        resp = stub(MULTI).ListModels(pb.ListModelsRequest(), timeout=30)
        self.assertEqual([m.name for m in resp.models], ["a", "b"])
        self.assertEqual([m.is_default for m in resp.models], [True, False])
        for m, path in zip(resp.models, MODELS.values()):
            self.assertTrue(m.architecture.startswith("unet in=4 blocks="), m.architecture)
            self.assertEqual(m.native_size, 64)
            self.assertEqual(m.gate_scores, "magnitude")
            self.assertEqual(m.gates_file, "")
            self.assertEqual(list(m.loaded_loras), [])
            self.assertGreater(m.weights_bytes, 0)
            self.assertEqual(m.hash, unet_hash(path))
        self.assertEqual(resp.weights_bytes, sum(m.weights_bytes for m in resp.models))
        self.assertEqual(resp.memory_budget_bytes, 64 << 30)
        # Both models' weights are in the budget's baseline (the start-up log).
        m = re.search(r"memory budget (\d+) bytes, (\d+) in use .*weights of 2 model\(s\): (\d+)",
                      MULTI.log())
        self.assertIsNotNone(m, MULTI.log())
        self.assertEqual(int(m.group(3)), resp.weights_bytes)
        self.assertGreaterEqual(int(m.group(2)), resp.weights_bytes)
        single = stub(SINGLE["a"]).ListModels(pb.ListModelsRequest(), timeout=30)
        self.assertEqual([m.name for m in single.models], ["tiny-a"])
        # The single model answers to its folder's name and to an empty one.
        self.assertEqual(stub(SINGLE["a"]).Generate(request(model="tiny-a"), timeout=120).model,
                         "tiny-a")

    def test_unknown_model_is_invalid_argument_naming_the_field(self):
        multi = stub(MULTI)
        for name in ["c", "A", "a ", "x" * 5000, "\u00e9\n"]:
            for call in (multi.Generate,
                         lambda r, timeout: list(multi.GenerateStream(r, timeout=timeout))):
                with self.assertRaises(grpc.RpcError) as caught:
                    call(request(model=name), timeout=30)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                details = caught.exception.details()
                self.assertTrue(details.startswith("model: unknown model "), details)
                self.assertIn("a, b", details)
                self.assertLess(len(details), 300)
        with self.assertRaises(grpc.RpcError) as caught:
            stub(SINGLE["a"]).Generate(request(model="a"), timeout=30)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("tiny-a", caught.exception.details())

    def test_metrics_model_label_is_bounded(self):
        multi = stub(MULTI)
        multi.Generate(request(model="b"), timeout=120)
        with self.assertRaises(grpc.RpcError):
            multi.Generate(request(model="bogus-name"), timeout=30)
        with self.assertRaises(grpc.RpcError):  # a valid model, another field bad
            multi.Generate(request(model="b", steps=100000), timeout=30)
        text = MULTI.metrics_text()
        self.assertNotIn("bogus-name", text)
        samples = lib.parse_metrics(text)
        models = {dict(labels).get("model") for (n, labels) in samples
                  if n in ("ldcp_requests_total", "ldcp_request_duration_seconds_count")}
        self.assertEqual(models, {"a", "b", "none"})
        self.assertGreaterEqual(lib.metric(samples, "ldcp_requests_total", method="Generate",
                                           status="OK", client="anonymous", model="b"), 1)
        self.assertGreaterEqual(lib.metric(samples, "ldcp_requests_total", method="Generate",
                                           status="INVALID_ARGUMENT", client="anonymous",
                                           model="none"), 1)
        self.assertGreaterEqual(lib.metric(samples, "ldcp_requests_total", method="Generate",
                                           status="INVALID_ARGUMENT", client="anonymous",
                                           model="b"), 1)
        self.assertGreaterEqual(lib.metric(samples, "ldcp_request_duration_seconds_count",
                                           method="Generate", model="b"), 1)

    def client(self, *args):
        return subprocess.run([lib.tool("ldcp-client"), *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    def test_ldcp_client_model_and_list_models(self):
        out = WORK / "client-b.png"
        r = self.client("generate", "--target", MULTI.target, "--prompt",
                        "a red circle on a blue background", "--steps", 3, "--sampler", "euler",
                        "--seed", 5, "--model", "b", "--out", out, "--quiet")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("model b,", r.stdout)
        served = stub(MULTI).Generate(request(model="b"), timeout=120)
        np.testing.assert_array_equal(pixels(out.read_bytes()), pixels(served.images[0].data))
        r = self.client("generate", "--target", MULTI.target, "--prompt", "x", "--steps", 1,
                        "--model", "nope", "--out", WORK / "nope.png", "--quiet")
        self.assertEqual(r.returncode, 10 + grpc.StatusCode.INVALID_ARGUMENT.value[0], r.stderr)
        self.assertIn("model: unknown model", r.stderr)
        r = self.client("list-models", "--target", MULTI.target)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("a (default): unet in=4"), r.stdout)
        self.assertTrue(lines[1].startswith("b: unet in=4"), r.stdout)
        r = self.client("list-models", "--target", MULTI.target, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = json.loads(r.stdout)
        self.assertEqual([m["name"] for m in listed["models"]], ["a", "b"])

    def test_list_models_honours_tokens_and_methods(self):
        tokens = WORK / "tokens.txt"
        tokens.write_text("".join(f"{name} sha256:{hashlib.sha256(token.encode()).hexdigest()}"
                                  f" {fields}\n" for name, token, fields in [
                                      ("alice", "alice-token", ""),
                                      ("bob", "bob-token", "methods=Generate")]))
        server = lib.Server(f"a={MODELS['a']}", WORK, *lib.small_cpu_flags(),
                            "--auth-tokens-file", tokens, name="auth").wait_ready()
        try:
            listing = stub(server).ListModels
            with self.assertRaises(grpc.RpcError) as caught:
                listing(pb.ListModelsRequest(), timeout=30)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            with self.assertRaises(grpc.RpcError) as caught:
                listing(pb.ListModelsRequest(), timeout=30,
                        metadata=[("authorization", "Bearer bob-token")])
            self.assertEqual(caught.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("ListModels", caught.exception.details())
            resp = listing(pb.ListModelsRequest(), timeout=30,
                           metadata=[("authorization", "Bearer alice-token")])
            self.assertEqual([m.name for m in resp.models], ["a"])
            samples = lib.parse_metrics(server.metrics_text())
            self.assertEqual(lib.metric(samples, "ldcp_requests_total", method="ListModels",
                                        status="PERMISSION_DENIED", client="bob",
                                        model="none"), 1)
            self.assertEqual(lib.metric(samples, "ldcp_requests_total", method="ListModels",
                                        status="OK", client="alice", model="none"), 1)
        finally:
            server.stop()

    def test_bad_model_options_stop_the_server_naming_them(self):
        for args, expected in [
                (["--model", "bad name=/x"], "bad model name 'bad name'"),
                (["--model", "b=" + str(MODELS["a"])], "'b' appears twice"),
                (["--model", str(MODELS["b"])], "each is NAME=PATH"),
                (["--gates", "c=/nonexistent"], "no model named 'c'"),
                (["--gates", "b=/nonexistent"], "--gates: no such file")]:
            server = lib.Server(f"b={MODELS['b']}", WORK, *lib.small_cpu_flags(), *args,
                                name="bad")
            self.assertEqual(server.proc.wait(timeout=120), 1, server.log())
            self.assertIn(expected, server.log())
            server.stop()


if __name__ == "__main__":
    unittest.main()
