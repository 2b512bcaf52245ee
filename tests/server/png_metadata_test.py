"""The "parameters" text of every PNG (issue 14 item 6), end to end: ldcp-server over a real
socket and `ldcp generate` write AUTOMATIC1111's infotext (read back with PIL, as ComfyUI and
A1111's PNG Info read it, and parsed with A1111's key-value rule); a request rebuilt from the
text alone gives the same image; the model hash is the SHA-256 of the U-Net's weight file;
non-ASCII prompts go in iTXt; --no-png-metadata (server) and --no-metadata (ldcp generate) write
none. Run by CTest (server_png_metadata)."""

import hashlib
import io
import json
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import numpy as np
from PIL import Image

import ldcp_testlib as lib

pb, pb_grpc = lib.load_stubs()

SIZE = 64
WORK = Path(tempfile.mkdtemp(prefix="ldcp-png-metadata-"))
MODEL = None
SERVER = None
PRIVATE = None  # the same model with --no-png-metadata
CHANNELS = []

# A1111's rule for the last line (modules/infotext_utils.py): `Key: value` pairs, a value either a
# JSON string or running to the next comma.
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text):
    """(prompt, negative prompt, {key: value}) as A1111's parse_generation_parameters reads it."""
    *lines, last = text.strip().split("\n")
    params = {}
    for key, value in PARAM.findall(last):
        value = value.strip()
        params[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), params


def png_parameters(data):
    return Image.open(io.BytesIO(data)).text.get("parameters")


def pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def chunk_types(data):
    types, at = [], 8
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        types.append(data[at + 4:at + 8].decode())
        at += 12 + length
    return types


def stub(server):
    channel, image_generation = lib.image_stub(server, pb_grpc)
    CHANNELS.append(channel)
    return image_generation


def setUpModule():
    global MODEL, SERVER, PRIVATE
    MODEL = lib.demo_model(WORK)
    flags = lib.small_cpu_flags(levels="0,0.5")
    SERVER = lib.Server(MODEL, WORK, *flags).wait_ready()
    PRIVATE = lib.Server(MODEL, WORK, *flags, "--no-png-metadata", name="private").wait_ready()


def tearDownModule():
    for channel in CHANNELS:
        channel.close()
    for server in (SERVER, PRIVATE):
        if server:
            server.stop()
    shutil.rmtree(WORK, ignore_errors=True)


def request(**kw):
    kw.setdefault("prompt", "a red circle on a blue background")
    kw.setdefault("steps", 3)
    kw.setdefault("sampler", "euler")
    kw.setdefault("seed", 11)
    return pb.GenerateRequest(**kw)


class Service(unittest.TestCase):
    def test_every_png_carries_the_request(self):
        fixed = pb.Pruning(mode=pb.PRUNING_MODE_FIXED, level=0.5)
        req = request(prompt="a red circle, on a blue background: bright", negative_prompt="blurry",
                      sampler="euler_a", seed=12345, num_images=2, guidance_scale=6.0,
                      pruning=fixed)
        resp = stub(SERVER).Generate(req, timeout=120)
        self.assertEqual(len(resp.images), 2)
        for pos, image in enumerate(resp.images):
            text = png_parameters(image.data)
            self.assertIsNotNone(text, "no parameters text")
            prompt, negative, p = parse_infotext(text)
            self.assertEqual((prompt, negative), (req.prompt, "blurry"))
            self.assertEqual(p["Steps"], "3")
            self.assertEqual(p["Seed"], "12345")
            self.assertEqual(p["Size"], f"{SIZE}x{SIZE}")
            self.assertEqual(p["Sampler"], "Euler a")
            self.assertEqual(p["LDCP sampler"], "euler_a")
            self.assertEqual(p["CFG scale"], "6.0")
            self.assertEqual((p["Batch size"], p["Batch pos"]), ("2", str(pos)))
            self.assertEqual(p["LDCP pruning"], "0.5")
            self.assertEqual(p["LDCP gate scores"], "magnitude")
            self.assertEqual(p["Model"], MODEL.name)
            self.assertNotIn("Denoising strength", p)
            self.assertNotIn("Clip skip", p)
            # ASCII: a tEXt chunk before the image data, where PIL's and A1111's readers look.
            types = chunk_types(image.data)
            self.assertLess(types.index("tEXt"), types.index("IDAT"))

    def test_model_hash_is_the_unet_weights_sha256(self):
        m = re.search(r"PNG metadata: model (\S+), hash ([0-9a-f]{10}) \(SHA-256 of (\S+),",
                      SERVER.log())
        self.assertIsNotNone(m, SERVER.log())
        name, short, path = m.groups()
        self.assertEqual(Path(path).parent, MODEL.resolve() / "unet")
        self.assertEqual(short, hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10])
        resp = stub(SERVER).Generate(request(), timeout=120)
        self.assertEqual(parse_infotext(png_parameters(resp.images[0].data))[2]["Model hash"],
                         short)

    def test_the_text_alone_reproduces_the_image(self):
        fixed = pb.Pruning(mode=pb.PRUNING_MODE_FIXED, per_step_levels=[0.0, 0.5, 0.5])
        first = stub(SERVER).Generate(request(
            prompt="a green square,\non a white background", negative_prompt='a "red" one',
            sampler="dpmpp_2m_karras", seed=77, num_images=2, guidance_scale=5.5,
            pruning=fixed), timeout=120)
        original = first.images[1].data
        prompt, negative, p = parse_infotext(png_parameters(original))
        self.assertEqual(p["LDCP pruning levels"], "0,0.5,0.5")
        self.assertEqual(p["Schedule type"], "Karras")
        width, height = map(int, p["Size"].split("x"))
        again = stub(SERVER).Generate(pb.GenerateRequest(
            prompt=prompt, negative_prompt=negative, steps=int(p["Steps"]),
            sampler=p["LDCP sampler"], seed=int(p["Seed"]), width=width, height=height,
            guidance_scale=float(p["CFG scale"]), num_images=int(p["Batch size"]),
            pruning=pb.Pruning(mode=pb.PRUNING_MODE_FIXED, per_step_levels=[
                float(x) for x in p["LDCP pruning levels"].split(",")])), timeout=120)
        copy = again.images[int(p["Batch pos"])].data
        np.testing.assert_array_equal(pixels(copy), pixels(original))
        self.assertEqual(png_parameters(copy), png_parameters(original))

    def test_image_inputs_and_prompt_settings(self):
        init = io.BytesIO()
        Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(init, format="PNG")
        resp = stub(SERVER).Generate(request(
            init_image=init.getvalue(), strength=0.75, prompt_syntax=pb.PROMPT_SYNTAX_A1111,
            prompt="a (red:1.2) circle", clip_skip=2, sampler="ddim", eta=0.5), timeout=120)
        prompt, _, p = parse_infotext(png_parameters(resp.images[0].data))
        self.assertEqual(prompt, "a (red:1.2) circle")
        self.assertEqual(p["Denoising strength"], "0.75")
        self.assertEqual(p["Clip skip"], "2")
        self.assertEqual(p["LDCP prompt syntax"], "a1111")
        self.assertEqual((p["Sampler"], p["Eta DDIM"]), ("DDIM", "0.5"))
        self.assertNotIn("LDCP mode", p)
        self.assertNotIn("LDCP pruning", p)  # AUTO ran at 0 on an idle server

    def test_unicode_prompt_in_itxt_and_the_stream_result(self):
        prompt = "un cercle rouge \u2014 caf\u00e9 \u732b"
        events = list(stub(SERVER).GenerateStream(request(prompt=prompt), timeout=120))
        data = events[-1].result.images[0].data
        self.assertIn("iTXt", chunk_types(data))
        self.assertEqual(parse_infotext(png_parameters(data))[0], prompt)

    def test_no_png_metadata(self):
        self.assertIn("PNG metadata: off", PRIVATE.log())
        resp = stub(PRIVATE).Generate(request(), timeout=120)
        self.assertEqual(Image.open(io.BytesIO(resp.images[0].data)).text, {})
        self.assertFalse({"tEXt", "iTXt", "zTXt"} & set(chunk_types(resp.images[0].data)))
        # Same pixels as with the text.
        with_text = stub(SERVER).Generate(request(), timeout=120)
        np.testing.assert_array_equal(pixels(resp.images[0].data),
                                      pixels(with_text.images[0].data))


class Tool(unittest.TestCase):
    """`ldcp generate` writes the same text as the server for the same settings."""

    def ldcp(self, out, *extra):
        argv = [lib.tool("ldcp"), "generate", "--model", MODEL, "--prompt",
                "a red circle on a blue background", "--negative-prompt", "blurry", "--steps", 3,
                "--sampler", "euler", "--seed", 21, "--width", SIZE, "--height", SIZE,
                "--device", "cpu", "--out", out, *extra]
        r = subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return Path(out).read_bytes()

    def test_generate_writes_the_servers_text(self):
        data = self.ldcp(WORK / "cli.png")
        served = stub(SERVER).Generate(request(
            negative_prompt="blurry", seed=21, pruning=pb.Pruning(mode=pb.PRUNING_MODE_OFF)),
            timeout=120)
        self.assertEqual(png_parameters(data), png_parameters(served.images[0].data))
        p = parse_infotext(png_parameters(data))[2]
        self.assertEqual((p["Seed"], p["Steps"], p["Model"]), ("21", "3", MODEL.name))
        pruned = parse_infotext(png_parameters(
            self.ldcp(WORK / "cli-pruned.png", "--pruning-level", 0.5)))[2]
        self.assertEqual(pruned["LDCP pruning"], "0.5")

    def test_no_metadata(self):
        data = self.ldcp(WORK / "cli-private.png", "--no-metadata")
        self.assertEqual(Image.open(io.BytesIO(data)).text, {})


if __name__ == "__main__":
    unittest.main(verbosity=2)
