"""The `loras` request field (issue 14 items 2 and 7) end to end: ldcp-server started with
--lora-dir over a real socket; a request with a LoRA of that directory is served and changes the
image (two LoRAs too, and weight 0 changes nothing); unknown names, names that are paths, too
many LoRAs, bad weights and a file that does not fit the model give INVALID_ARGUMENT naming
loras[i].name / loras[i].weight (or loras); ldcp-client --lora reaches the server; and ldcp
generate --lora with --lora-dir and with a path. Parity with diffusers is test_lora's. Run by
CTest (server_lora)."""

import hashlib
import io
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import grpc
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

import ldcp_testlib as lib

pb, pb_grpc = lib.load_stubs()

SIZE = 64
WORK = Path(tempfile.mkdtemp(prefix="ldcp-lora-"))
LORAS = WORK / "loras"
MODEL = None
SERVER = None
CHANNEL = None
STUB = None


def setUpModule():
    global MODEL, SERVER, CHANNEL, STUB
    MODEL = lib.demo_model(WORK)
    LORAS.mkdir()
    lib.kohya_lora(MODEL, LORAS / "style.safetensors", 1)
    lib.kohya_lora(MODEL, LORAS / "other.safetensors", 2, conv=False)
    save_file({"lora_unet_conv_in.lora_down.weight": np.ones((4, 7, 3, 3), np.float32),
               "lora_unet_conv_in.lora_up.weight": np.ones((3, 4, 1, 1), np.float32)},
              str(LORAS / "misfit.safetensors"))
    SERVER = lib.Server(MODEL, WORK, *lib.small_cpu_flags(), "--lora-dir", LORAS,
                        "--max-loras", 2).wait_ready()
    CHANNEL = grpc.insecure_channel(SERVER.target,
                                    options=[("grpc.max_receive_message_length", 64 << 20)])
    STUB = pb_grpc.ImageGenerationStub(CHANNEL)


def tearDownModule():
    if CHANNEL:
        CHANNEL.close()
    if SERVER:
        SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


def request(loras=(), **kw):
    kw.setdefault("prompt", "a red circle on a blue background")
    kw.setdefault("steps", 4)
    kw.setdefault("sampler", "euler")
    kw.setdefault("seed", 5)
    kw.setdefault("pruning", pb.Pruning(mode=pb.PRUNING_MODE_OFF))
    return pb.GenerateRequest(loras=[pb.Lora(name=n, weight=w) for n, w in loras], **kw)


def pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int32)


class GoodValues(unittest.TestCase):
    def generate(self, **kw):
        return pixels(STUB.Generate(request(**kw), timeout=120).images[0].data)

    def test_a_lora_changes_the_image_and_leaves_other_requests_alone(self):
        base = self.generate()
        styled = self.generate(loras=[("style", 1.0)])
        self.assertGreater(np.abs(styled - base).mean(), 1.0, "the LoRA changed (almost) nothing")
        np.testing.assert_array_equal(self.generate(), base)  # base weights untouched
        np.testing.assert_array_equal(self.generate(loras=[("style", 0.0)]), base)
        both = self.generate(loras=[("style", 1.0), ("other", -0.5)])
        self.assertFalse(np.array_equal(both, styled))
        # With pruning: a FIXED level runs the LoRA branch on the kept channels.
        pruned = self.generate(loras=[("style", 1.0)],
                               pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.5))
        self.assertFalse(np.array_equal(pruned, styled))

    def test_png_parameters_name_the_loras_and_their_hashes(self):
        reply = STUB.Generate(request(loras=[("style", 1.0), ("other", -0.5)]), timeout=120)
        text = Image.open(io.BytesIO(reply.images[0].data)).text["parameters"]
        self.assertIn("<lora:style:1>", text)
        self.assertIn("<lora:other:-0.5>", text)
        short = {n: hashlib.sha256((LORAS / f"{n}.safetensors").read_bytes()).hexdigest()[:10]
                 for n in ("style", "other")}
        self.assertIn(f'Lora hashes: "style: {short["style"]}, other: {short["other"]}"', text)


BAD = [
    ("loras[0].name", [("nosuch", 1.0)]),
    ("loras[0].name", [("../loras/style", 1.0)]),
    ("loras[0].name", [("/etc/passwd", 1.0)]),
    ("loras[0].name", [(".hidden", 1.0)]),
    ("loras[0].name", [("", 1.0)]),
    ("loras[1].name", [("style", 1.0), ("misfit", 1.0)]),
    ("loras[0].weight", [("style", float("nan"))]),
    ("loras[0].weight", [("style", 9.0)]),
    ("loras[1].weight", [("style", 1.0), ("other", -8.5)]),
    ("loras", [("style", 1.0), ("other", 1.0), ("style", 0.5)]),  # more than --max-loras 2
]


class BadValues(unittest.TestCase):
    def test_invalid_argument_names_the_field(self):
        for field, loras in BAD:
            for method in ("Generate", "GenerateStream"):
                with self.subTest(field=field, loras=str(loras), method=method):
                    with self.assertRaises(grpc.RpcError) as caught:
                        if method == "Generate":
                            STUB.Generate(request(loras=loras), timeout=60)
                        else:
                            list(STUB.GenerateStream(request(loras=loras), timeout=60))
                    self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                    self.assertTrue(caught.exception.details().startswith(field + ":"),
                                    caught.exception.details())

    def test_long_names_are_quoted_short(self):
        with self.assertRaises(grpc.RpcError) as caught:
            STUB.Generate(request(loras=[("x/" * 5000, 1.0)]), timeout=60)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertLess(len(caught.exception.details()), 300)


class Tools(unittest.TestCase):
    def run_tool(self, argv):
        return subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=300)

    def test_client_lora_flag(self):
        outs = {}
        for name, args in [("none", []), ("style", ["--lora", "style:1.0"]),
                           ("style-0.5", ["--lora", "style:0.5", "--lora", "other:1"])]:
            out = WORK / f"client-{name}.png"
            r = self.run_tool([lib.tool("ldcp-client"), "generate", "--target", SERVER.target,
                               "--prompt", "a red circle", "--steps", 4, "--seed", 3, "--width",
                               SIZE, "--height", SIZE, "--pruning", "off", "--quiet", "--out",
                               out, *args])
            self.assertEqual(r.returncode, 0, r.stderr)
            outs[name] = pixels(out.read_bytes())
        self.assertFalse(np.array_equal(outs["style"], outs["none"]))
        self.assertFalse(np.array_equal(outs["style-0.5"], outs["style"]))
        r = self.run_tool([lib.tool("ldcp-client"), "generate", "--target", SERVER.target,
                           "--prompt", "x", "--lora", "style:heavy", "--out", WORK / "x.png"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--lora", r.stderr)

    def test_ldcp_generate_lora(self):
        def generate(out, *args):
            return self.run_tool([lib.tool("ldcp"), "generate", "--model", MODEL, "--prompt",
                                  "a red circle", "--steps", 3, "--seed", 4, "--out", out,
                                  "--dtype", "fp32", *args])
        outs = {}
        for name, args in [("none", []),
                           ("dir", ["--lora-dir", LORAS, "--lora", "style:0.8"]),
                           ("path", ["--lora", f"{LORAS / 'style.safetensors'}:0.8"])]:
            out = WORK / f"ldcp-{name}.png"
            r = generate(out, *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            outs[name] = pixels(out.read_bytes())
        self.assertFalse(np.array_equal(outs["dir"], outs["none"]))
        np.testing.assert_array_equal(outs["dir"], outs["path"])
        r = generate(WORK / "bad.png", "--lora-dir", LORAS, "--lora", "misfit:1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("misfit.safetensors", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
