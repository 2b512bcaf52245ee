"""`--model FILE.safetensors` through the binaries (run by CTest as cli_single_file): `ldcp
generate` and `ldcp-server` take a file path, refuse a pickle checkpoint (.ckpt) saying why and
how to convert it, and read a .safetensors file with the built-in SD1.5 configs (a tiny model's
file is then refused naming the file and the architecture). Images from single files are checked
against diffusers by test_single_file_parity.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from cli_checks import FAILURES, check, passed  # noqa: E402


def run(*argv, timeout=300):
    return subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=timeout)


def expect_refusal(tag, result, *mentions):
    check(result.returncode != 0, f"{tag}: expected a non-zero exit, got 0")
    for text in ("terminate called", "Traceback", "Segmentation"):
        check(text not in result.stderr, f"{tag}: crashed: {result.stderr[-500:]}")
    for text in mentions:
        check(text in result.stderr, f"{tag}: stderr does not mention {text!r}: "
                                     f"{result.stderr[-800:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ldcp", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--parity-dir", required=True, type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "model.ckpt"
        ckpt.write_bytes(b"PK\x03\x04" + bytes(60))
        generate = ("generate", "--prompt", "x", "--out", tmp / "x.png", "--width", 64,
                    "--height", 64, "--steps", 1)
        expect_refusal("ldcp .ckpt", run(args.ldcp, *generate, "--model", ckpt), str(ckpt),
                       "pickle", "weights_only=True")
        expect_refusal("ldcp-server .ckpt",
                       run(args.server, "--model", ckpt, "--listen", "127.0.0.1:0",
                           "--metrics-listen", "127.0.0.1:0"), str(ckpt),
                       "pickle")
        tiny = args.parity_dir / "ref" / "single_file" / "tiny-a-full.safetensors"
        expect_refusal("ldcp tiny file as SD1.5", run(args.ldcp, *generate, "--model", tiny),
                       str(tiny), "Stable Diffusion 1.5 (the built-in configs)", "missing weights")
        expect_refusal("ldcp missing file",
                       run(args.ldcp, *generate, "--model", tmp / "none.safetensors"),
                       "none.safetensors")
    print(f"{passed()} checks passed, {len(FAILURES)} failed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
