"""Request fields 17-21 (init_image, strength, mask_image, prompt_syntax, clip_skip) end to end
(issue 14 item 7): each sent through ldcp-server over a real socket with good values (served,
and changing the image) and bad ones (INVALID_ARGUMENT whose message starts with the field's
name); and ldcp-client's --init-image, --strength, --mask, --prompt-syntax and --clip-skip, good
and bad. Parity with diffusers is elsewhere (test_img2img_parity, prompt_weighting_parity_test).
Run by CTest (server_image_inputs)."""

import io
import json
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

SIZE = 64
WORK = Path(tempfile.mkdtemp(prefix="ldcp-image-inputs-"))
SERVER = None
CHANNEL = None
STUB = None
TEXT_LAYERS = None  # the demo model's text encoder layers: clip_skip's bound


def encoded(pixels, fmt="PNG"):
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format=fmt)
    return out.getvalue()


def noise(width, height, seed=1, fmt="PNG"):
    rng = np.random.default_rng(seed)
    return encoded(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), fmt)


def mask(width, height):
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, width // 2:] = 255  # the right half repainted
    return encoded(pixels)


INIT = noise(SIZE, SIZE)
MASK = mask(SIZE, SIZE)


def setUpModule():
    global SERVER, CHANNEL, STUB, TEXT_LAYERS
    model = lib.demo_model(WORK)
    TEXT_LAYERS = json.loads((model / "text_encoder" / "config.json").read_text())[
        "num_hidden_layers"]
    SERVER = lib.Server(model, WORK, *lib.small_cpu_flags()).wait_ready()
    CHANNEL, STUB = lib.image_stub(SERVER, pb_grpc)


def tearDownModule():
    if CHANNEL:
        CHANNEL.close()
    if SERVER:
        SERVER.stop()
    shutil.rmtree(WORK, ignore_errors=True)


def request(**kw):
    kw.setdefault("prompt", "a red circle on a blue background")
    kw.setdefault("steps", 4)
    kw.setdefault("sampler", "euler")
    kw.setdefault("seed", 5)
    kw.setdefault("pruning", pb.Pruning(mode=pb.PRUNING_MODE_OFF))
    return pb.GenerateRequest(**kw)


def pixels(resp):
    return np.asarray(Image.open(io.BytesIO(resp.images[0].data)).convert("RGB"))


class GoodValues(unittest.TestCase):
    def generate(self, **kw):
        resp = STUB.Generate(request(**kw), timeout=120)
        self.assertEqual(lib.png_size(resp.images[0].data), (SIZE, SIZE))
        return resp

    def test_init_image_and_strength(self):
        text = self.generate()
        for fmt in ("PNG", "JPEG"):
            with self.subTest(format=fmt):
                resp = self.generate(init_image=noise(SIZE, SIZE, fmt=fmt), strength=0.5)
                self.assertEqual(len(resp.step_levels), 2)  # int(4 * 0.5) steps run
                self.assertFalse(np.array_equal(pixels(resp), pixels(text)))
        default = self.generate(init_image=INIT)
        self.assertEqual(len(default.step_levels), 3)  # strength 0.8: int(4 * 0.8)
        full = self.generate(init_image=INIT, strength=1.0)
        self.assertEqual(len(full.step_levels), 4)
        # Width and height 0: the init image's size.
        self.assertEqual(self.generate(init_image=INIT, width=0, height=0).images[0].width, SIZE)

    def test_mask_image(self):
        img2img = self.generate(init_image=INIT, strength=1.0)
        inpaint = self.generate(init_image=INIT, mask_image=MASK)
        self.assertEqual(len(inpaint.step_levels), 4)  # inpainting's default strength 1.0
        # An ordinary model blends the init image back where the mask is black (the left half).
        self.assertFalse(np.array_equal(pixels(inpaint), pixels(img2img)))

    def test_prompt_syntax(self):
        prompt = "a (red:1.5) circle on a [blue] background"
        plain = self.generate(prompt=prompt)
        same = self.generate(prompt=prompt, prompt_syntax=pb.PROMPT_SYNTAX_PLAIN)
        np.testing.assert_array_equal(pixels(plain), pixels(same))
        a1111 = self.generate(prompt=prompt, prompt_syntax=pb.PROMPT_SYNTAX_A1111)
        self.assertFalse(np.array_equal(pixels(a1111), pixels(plain)))
        # Longer than 77 tokens: A1111 reads it in chunks of 75.
        long = self.generate(prompt=", ".join(["a red circle"] * 40),
                             prompt_syntax=pb.PROMPT_SYNTAX_A1111)
        self.assertEqual(len(long.step_levels), 4)

    def test_clip_skip(self):
        last = self.generate(clip_skip=0)
        np.testing.assert_array_equal(pixels(self.generate(clip_skip=1)), pixels(last))
        deepest = self.generate(clip_skip=TEXT_LAYERS)
        self.assertFalse(np.array_equal(pixels(deepest), pixels(last)))


BAD = [
    ("init_image", dict(init_image=b"GIF89a not a png")),
    ("init_image", dict(init_image=INIT[:80])),  # cut short
    ("init_image", dict(init_image=noise(56, 64))),  # not the request's size
    ("init_image", dict(init_image=noise(60, 60), width=0, height=0)),  # not a multiple of 8
    ("init_image", dict(init_image=noise(8, 4096, fmt="PNG"))),  # beyond --max-size
    ("strength", dict(strength=0.5)),  # without init_image
    ("strength", dict(init_image=INIT, strength=0.0)),
    ("strength", dict(init_image=INIT, strength=-1.0)),
    ("strength", dict(init_image=INIT, strength=1.01)),
    ("strength", dict(init_image=INIT, strength=float("nan"))),
    ("strength", dict(init_image=INIT, strength=0.2)),  # int(4 * 0.2) = 0 steps
    ("mask_image", dict(mask_image=MASK)),  # without init_image
    ("mask_image", dict(init_image=INIT, mask_image=b"\x89PNG\r\n\x1a\n garbage")),
    ("mask_image", dict(init_image=INIT, mask_image=mask(32, 32))),  # not the init image's size
    ("prompt_syntax", dict(prompt_syntax=3)),
    ("prompt_syntax", dict(prompt_syntax=-1)),
    ("clip_skip", dict(clip_skip=99)),
]


class BadValues(unittest.TestCase):
    def test_invalid_argument_names_the_field(self):
        for field, kw in BAD + [("clip_skip", dict(clip_skip=TEXT_LAYERS + 1))]:
            for method in ("Generate", "GenerateStream"):
                with self.subTest(field=field, kw=sorted(kw), method=method):
                    with self.assertRaises(grpc.RpcError) as caught:
                        if method == "Generate":
                            STUB.Generate(request(**kw), timeout=60)
                        else:
                            list(STUB.GenerateStream(request(**kw), timeout=60))
                    self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                    # "clip_skip: ..." from the request's bounds; "clip_skip must be ..." from
                    # the pipeline's check of this model's layer count.
                    self.assertRegex(caught.exception.details(), f"^{field}(: | must )")
                    # Bytes are never echoed whole: the message stays short.
                    self.assertLess(len(caught.exception.details()), 300)


class Client(unittest.TestCase):
    """ldcp-client generate's flags for fields 17-21, against the same server."""

    def client(self, out, *args, prompt="a red circle"):
        argv = [lib.tool("ldcp-client"), "generate", "--target", SERVER.target, "--prompt",
                prompt, "--steps", 4, "--seed", 3, "--width", SIZE, "--height", SIZE,
                "--pruning", "off", "--quiet", "--out", out, *args]
        return subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=120)

    def test_flags_reach_the_server(self):
        init, mask_file = WORK / "init.png", WORK / "mask.png"
        init.write_bytes(INIT)
        mask_file.write_bytes(MASK)
        outs = {}
        weighted = "a (red:1.5) circle"
        for name, args, prompt in [
                ("text", [], "a red circle"),
                ("img2img", ["--init-image", init, "--strength", 0.5], "a red circle"),
                ("inpaint", ["--init-image", init, "--mask", mask_file], "a red circle"),
                ("a1111", ["--prompt-syntax", "a1111"], weighted),
                ("plain", ["--prompt-syntax", "plain"], weighted),
                ("skip", ["--clip-skip", TEXT_LAYERS], "a red circle")]:
            with self.subTest(case=name):
                out = WORK / f"client-{name}.png"
                r = self.client(out, *args, prompt=prompt)
                self.assertEqual(r.returncode, 0, r.stderr)
                outs[name] = np.asarray(Image.open(out).convert("RGB"))
                self.assertEqual(outs[name].shape, (SIZE, SIZE, 3))
        for name in ("img2img", "inpaint", "skip"):
            self.assertFalse(np.array_equal(outs[name], outs["text"]), name)
        self.assertFalse(np.array_equal(outs["a1111"], outs["plain"]))
        # The same request through the Python client gives the same image (ldcp-client sends
        # no sampler: the server's default).
        direct = STUB.Generate(request(prompt="a red circle", seed=3, init_image=INIT,
                                       strength=0.5, width=SIZE, height=SIZE, sampler=""),
                               timeout=120)
        np.testing.assert_array_equal(pixels(direct), outs["img2img"])

    def test_bad_values(self):
        not_image = WORK / "not-an-image.png"
        not_image.write_bytes(b"hello")
        for field, args in [("init_image", ["--init-image", not_image]),
                            ("strength", ["--strength", 0.5]),
                            ("strength", ["--init-image", not_image.with_name("init.png"),
                                          "--strength", 3]),
                            ("mask_image", ["--mask", not_image]),
                            ("clip_skip", ["--clip-skip", 99])]:
            with self.subTest(field=field, args=[str(a) for a in args]):
                (WORK / "init.png").write_bytes(INIT)
                r = self.client(WORK / "bad.png", *args)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("INVALID_ARGUMENT", r.stderr)
                self.assertIn(field + ":", r.stderr)
        # Refused by the client itself: a value it does not know, a file it cannot read.
        r = self.client(WORK / "bad.png", "--prompt-syntax", "comfy")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--prompt-syntax", r.stderr)
        r = self.client(WORK / "bad.png", "--init-image", WORK / "missing.png")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--init-image", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
