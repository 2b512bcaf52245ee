"""Helpers for the service's integration tests: Python stubs generated from proto/ at run time,
free loopback ports, an ldcp-server child process, /metrics parsing."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SOURCE_DIR = Path(os.environ.get("LDCP_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY_DIR = Path(os.environ.get("LDCP_BINARY_DIR", SOURCE_DIR / "build"))

_stub_dir = None


def load_stubs():
    """Generates ldcp/v1 and returns (ldcp_pb2, ldcp_pb2_grpc)."""
    global _stub_dir
    if _stub_dir is None:
        from grpc_tools import protoc
        import grpc_tools

        _stub_dir = tempfile.mkdtemp(prefix="ldcp-stubs-")
        include = str(Path(grpc_tools.__file__).parent / "_proto")
        rc = protoc.main(["protoc", f"-I{SOURCE_DIR / 'proto'}", f"-I{include}",
                          f"--python_out={_stub_dir}", f"--grpc_python_out={_stub_dir}",
                          str(SOURCE_DIR / "proto/ldcp/v1/ldcp.proto")])
        if rc != 0:
            raise RuntimeError("protoc failed")
        sys.path.insert(0, _stub_dir)
    from ldcp.v1 import ldcp_pb2, ldcp_pb2_grpc
    return ldcp_pb2, ldcp_pb2_grpc


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name):
    """Path of a built executable (ldcp-server, ldcp-client, ldcp)."""
    env = {"ldcp-server": "LDCP_SERVER", "ldcp-client": "LDCP_CLIENT", "ldcp": "LDCP_TOOL"}[name]
    if os.environ.get(env):
        return os.environ[env]
    sub = {"ldcp-server": "server", "ldcp-client": "client", "ldcp": "tools"}[name]
    return str(BINARY_DIR / sub / name)


def small_cpu_flags(levels="0"):
    """ldcp-server flags for the demo model on the CPU: 64x64 images, one calibration step per
    level, batches of one (starts in seconds)."""
    return ["--device", "cpu", "--memory-budget", "64GiB", "--default-size", 64,
            "--calibrate-sizes", "64x64", "--calibrate-levels", levels, "--calibrate-steps", 1,
            "--max-batch", 1]


def demo_model(workdir):
    """A tiny random-weight model folder (ldcp init-demo-model), made once per work folder."""
    path = Path(workdir) / "tiny"
    if not (path / "model_index.json").exists():
        subprocess.run([tool("ldcp"), "init-demo-model", str(path), "--config", "tiny"],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
    return path


def image_stub(server, pb_grpc):
    """(channel, ImageGeneration stub) to a Server; the channel takes replies up to 64 MiB (PNGs)."""
    import grpc

    channel = grpc.insecure_channel(server.target,
                                    options=[("grpc.max_receive_message_length", 64 << 20)])
    return channel, pb_grpc.ImageGenerationStub(channel)


class Server:
    """ldcp-server as a child process on loopback ports."""

    def __init__(self, model, workdir, *args, name="server", port=None, metrics_port=None):
        # Given ports: a restart on the ports of a server that stopped.
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        # Where wait_ready asks grpc.health.v1, plaintext (a TLS server's --health-listen).
        self.health_target = self.target
        self.log_path = Path(workdir) / f"{name}.log"
        cmd = [tool("ldcp-server"), "--model", str(model), "--listen", self.target,
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *map(str, args)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout=300):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ldcp-server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with grpc.insecure_channel(self.health_target) as ch:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=2)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"ldcp-server not serving after {timeout} s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def metrics_text(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            return r.read().decode()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {}
        if m.group(3):
            for part in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3)):
                labels[part[0]] = part[1]
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out


def metric(samples, name, **labels):
    """The sum of `name`'s series whose labels include `labels`: a label left out (as `model` on
    a one-model server) is summed over."""
    want = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and want <= have)


def calibration_from_log(log):
    """{(images, width, height, level): bytes} and the idle baseline, from a server's log."""
    costs = {}
    for m in re.finditer(r"calibration: (\d+) image\(s\) (\d+)x(\d+) level ([0-9.]+): peak (\d+)",
                         log):
        costs[(int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4)))] = \
            int(m.group(5))
    base = re.search(r"memory budget (\d+) bytes, (\d+) in use", log)
    return costs, int(base.group(2))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def kohya_lora(model, path, seed, conv=True):
    """A random kohya LoRA on every attention projection (and, with conv, every ResNet conv1)
    of the model's U-Net, and on the text encoder's q_proj layers, rank 4, alpha 4."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for part, prefix, file in (("unet", "lora_unet_", "diffusion_pytorch_model.safetensors"),
                               ("text_encoder", "lora_te_", "model.safetensors")):
        with safe_open(str(model / part / file), "np") as f:
            for key in f.keys():
                module = key[:-len(".weight")]
                if not key.endswith(".weight"):
                    continue
                shape = f.get_slice(key).get_shape()
                wanted = (module.endswith(("to_q", "to_k", "to_v", "q_proj")) and len(shape) == 2) or \
                    (conv and module.endswith("conv1") and len(shape) == 4)
                if not wanted:
                    continue
                name = prefix + module.replace(".", "_")
                down = (4, *shape[1:]) if len(shape) == 4 else (4, shape[1])
                up = (shape[0], 4, 1, 1) if len(shape) == 4 else (shape[0], 4)
                fan_in = int(np.prod(down[1:]))
                tensors[name + ".lora_down.weight"] = (
                    rng.standard_normal(down) / np.sqrt(fan_in)).astype(np.float32)
                tensors[name + ".lora_up.weight"] = (rng.standard_normal(up) * 0.5).astype(np.float32)
                tensors[name + ".alpha"] = np.array(4.0, np.float32)
    assert tensors, "no layer found for the LoRA"
    save_file(tensors, str(path))
