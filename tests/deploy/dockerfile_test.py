"""The Dockerfile, checked without a Docker engine: every file it copies exists and is in the
build context (.dockerignore), the context holds no weights, its build commands are the README's,
hadolint passes, the runtime stage installs every Debian library the built binaries load, and
its ports, health check, user and environment agree with the server and client, and its health
check, run as Docker runs it, passes against a server started with the image's environment and
TLS on.

Run by CTest (deploy_dockerfile); needs the built ldcp-server, ldcp-client and ldcp (ldd), and
openssl."""

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import deploylib as dl

ROOT = dl.SOURCE_DIR
DOCKERFILE = ROOT / "Dockerfile"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".onnx", ".gguf")


def instructions(path=DOCKERFILE):
    """[(stage index, INSTRUCTION, argument text)], continuation lines joined, comments out."""
    out, stage, buf = [], -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
        buf = ""
    return out


def stages():
    """[(index, base image, name)]."""
    res = []
    for i, word, rest in instructions():
        if word == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            res.append((i, m.group(1), m.group(2)))
    return res


def stage_index(name):
    return next(i for i, _, n in stages() if n == name)


def copies(stage=None):
    """[(stage, sources, destination, from-stage or None)] of COPY/ADD."""
    res = []
    for i, word, rest in instructions():
        if word not in ("COPY", "ADD") or (stage is not None and i != stage):
            continue
        args = shlex.split(rest)
        flags = [a for a in args if a.startswith("--")]
        paths = [a for a in args if not a.startswith("--")]
        frm = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        res.append((i, paths[:-1], paths[-1], frm))
    return res


def env_of(stage):
    env = {}
    for i, word, rest in instructions():
        if word == "ENV" and i == stage:
            for part in shlex.split(rest):
                k, _, v = part.partition("=")
                env[k] = v
    return env


def runs(stage):
    return [rest for i, word, rest in instructions() if word == "RUN" and i == stage]


def healthcheck_argv():
    hc = next(rest for i, w, rest in instructions() if w == "HEALTHCHECK")
    return json.loads(re.search(r"CMD (\[.*\])", hc).group(1))


def split_env(argv):
    """(variables `env -u` removes, the command it runs) of an `env -u NAME ... CMD` argv."""
    unset, i = set(), 0
    if argv and argv[0] == "env":
        i = 1
        while i < len(argv) and argv[i] == "-u":
            unset.add(argv[i + 1])
            i += 2
    return unset, argv[i:]


# .dockerignore, as Docker reads it: the last pattern that matches a path or one of its parent
# folders decides; `!` re-includes; `**` crosses folders, `*` and `?` do not.
def _pattern_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
        rules.append((neg, _pattern_regex(pat), pat))
    return rules


def in_context(rel, rules):
    parts = Path(rel).parts
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    included = True
    for neg, rx, _ in rules:
        if any(rx.match(p) for p in prefixes):
            included = neg
    return included


def context_files(rules):
    """Every file Docker would send as the build context (top-level folders that are excluded
    with no `!` pattern below them are not walked)."""
    files = []
    for top in sorted(os.listdir(ROOT)):
        may_include = in_context(top, rules) or any(
            neg and (pat == top or pat.startswith(top + "/")) for neg, _, pat in rules)
        if not may_include:
            continue
        p = ROOT / top
        if p.is_file():
            if in_context(top, rules):
                files.append(top)
            continue
        for dirpath, _, names in os.walk(p):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), ROOT)
                if in_context(rel, rules):
                    files.append(rel)
    return files


class Structure(unittest.TestCase):
    def test_stages_and_build_arguments(self):
        names = {n for _, _, n in stages()}
        self.assertTrue({"toolchain-cpu", "toolchain-cuda", "build", "runtime"} <= names, names)
        # The variant picks the toolchain stage: both variants must exist.
        build = next(base for _, base, n in stages() if n == "build")
        self.assertEqual(build, "toolchain-${VARIANT}")
        args = {rest.split("=")[0] for _, w, rest in instructions() if w == "ARG"}
        for a in ("VARIANT", "CUDA_VERSION", "LIBTORCH_URL", "TORCH_CPU_INDEX_URL"):
            self.assertIn(a, args)
        default_variant = re.search(r"^ARG VARIANT=(\w+)", DOCKERFILE.read_text(), re.M).group(1)
        self.assertIn(f"toolchain-{default_variant}", names)
        # The runtime stage is last (the default target) and copies only from the build stage.
        self.assertEqual(stages()[-1][2], "runtime")
        for _, _, _, frm in copies(stage_index("runtime")):
            self.assertEqual(frm, "build")

    def test_every_copied_file_exists_and_is_in_the_context(self):
        rules = dockerignore()
        n = 0
        for stage, sources, _, frm in copies():
            if frm:
                continue
            for src in sources:
                n += 1
                self.assertTrue((ROOT / src).exists(), f"COPY {src}: no such file")
                self.assertTrue(in_context(src, rules), f"COPY {src}: excluded by .dockerignore")
                if (ROOT / src).is_dir():
                    inside = [f for f in context_files(rules) if f.startswith(src + "/")]
                    self.assertTrue(inside, f"COPY {src}: nothing of it is in the context")
        self.assertGreater(n, 5)

    def test_context_holds_sources_not_weights_or_builds(self):
        rules = dockerignore()
        files = context_files(rules)
        self.assertIn("CMakeLists.txt", files)
        self.assertIn("server/main.cpp", files)
        for f in files:
            self.assertFalse(f.endswith(WEIGHT_SUFFIXES), f"weights in the build context: {f}")
            self.assertFalse(re.match(r"(build[^/]*|\.venv|\.git|out|demo)/", f),
                             f"build output or local state in the context: {f}")
            self.assertLess((ROOT / f).stat().st_size, 10 << 20,
                            f"a large file in the context: {f}")
        # The exclusions hold inside allowed folders too.
        self.assertFalse(in_context("model/weights/unet.safetensors", rules))
        self.assertFalse(in_context("tests/server/__pycache__/x.pyc", rules))
        self.assertFalse(in_context("build-bench/server/ldcp-server", rules))
        self.assertFalse(in_context(".venv/bin/python", rules))

    def test_everything_cmake_configures_is_copied(self):
        build = stage_index("build")
        copied = {s for _, sources, _, frm in copies(build) if not frm for s in sources}
        top = (ROOT / "CMakeLists.txt").read_text()
        subdirs = re.findall(r"add_subdirectory\((\w+)\)", top)
        self.assertTrue(subdirs)
        for d in subdirs + ["CMakeLists.txt", "data"]:
            self.assertIn(d, copied, f"the build stage does not copy {d}")
        # The scripts the RUN lines call are copied before they run.
        for script in ("scripts/setup.sh", "scripts/build.sh", "scripts/requirements.txt"):
            self.assertIn(script, copied)

    def test_build_commands_are_the_readmes(self):
        readme = (ROOT / "README.md").read_text()
        blocks = "\n".join(re.findall(r"```(?:sh|bash)?\n(.*?)```", readme, re.S))
        # The README's commands, and what the scripts they name (demo.sh, test.sh) run.
        documented = blocks + "\n" + "\n".join(
            (ROOT / s).read_text() for s in sorted(set(re.findall(r"scripts/\w+\.sh", blocks))))
        build_runs = " ".join(runs(stage_index("build")))
        called = [c for r in runs(stage_index("build"))
                  for c in re.findall(r"(scripts/\w+\.sh)([^&;|]*)", r)]
        self.assertEqual({s for s, _ in called}, {"scripts/setup.sh", "scripts/build.sh"})
        for script, args in called:
            self.assertTrue(os.access(ROOT / script, os.X_OK), script)
            forms = [a for s, a in re.findall(r"(scripts/\w+\.sh)([^\n#]*)", documented)
                     if s == script]
            self.assertTrue(forms, f"{script} is not a command the README documents")
            words = set(args.split())
            self.assertTrue(any(words == set(f.split()) for f in forms),
                            f"`{script}{args}`: the README's commands run it as {forms}")
        # The official-libtorch path is the README's: Torch_DIR at libtorch's CMake config.
        readme_torch_dir = re.search(r"Torch_DIR=(\S+) scripts/build\.sh", blocks).group(1)
        self.assertIn(f"Torch_DIR={readme_torch_dir}", build_runs)
        # scripts/build.sh reads the variables the Dockerfile sets for it.
        build_sh = (ROOT / "scripts/build.sh").read_text()
        for var in re.findall(r"\b(LDCP_\w+)=\S+ scripts/build\.sh", build_runs):
            self.assertIn(var, build_sh)
        # It builds real targets, into the folders the staging step copies from.
        targets = [t for _, args in called if "--target" in args
                   for t in args.split("--target", 1)[1].split()]
        cmake = "".join(p.read_text() for p in ROOT.glob("*/CMakeLists.txt"))
        executables = set(re.findall(r"add_executable\(([\w\-]+)", cmake))
        self.assertTrue(set(targets) <= executables, (targets, executables))
        staged = re.findall(r"build/(\w+)/([\w\-]+)", build_runs)
        self.assertEqual({b for _, b in staged}, set(targets))
        for sub, binary in staged:
            self.assertIn(f"add_executable({binary}", (ROOT / sub / "CMakeLists.txt").read_text(),
                          f"build/{sub}/{binary}: {binary} is not built in {sub}/")
            built = Path(dl.lib.tool(binary))
            self.assertEqual((built.parent.name, built.name), (sub, binary))
            self.assertTrue(built.exists(), built)

    def test_hadolint(self):
        r = subprocess.run([dl.tool_path("hadolint"), "--no-color", "--config", str(dl.HERE / "hadolint.yaml"),
                            str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


def _dpkg_package(path):
    real = os.path.realpath(path)
    for p in {path, real, "/usr" + real if real.startswith("/lib") else real,
              real[len("/usr"):] if real.startswith("/usr/lib") else real}:
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].split(",")[0].strip()
    return None


def _depends(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Pre-Depends}, ${Depends}", pkg],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return set()
    names = set()
    for alt in r.stdout.split(","):
        for choice in alt.split("|"):
            name = choice.strip().split(" ")[0].split(":")[0]
            if name:
                names.add(name)
    return names


def _closure(pkgs):
    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(_depends(p) - seen)
    return seen


class Runtime(unittest.TestCase):
    def runtime_packages(self):
        text = " ".join(runs(stage_index("runtime")))
        m = re.search(r"apt-get install -y --no-install-recommends (.*?)(?:&&|$)", text)
        return set(m.group(1).split())

    def test_runtime_packages_cover_what_the_binaries_load(self):
        listed = self.runtime_packages()
        for p in listed:
            r = subprocess.run(["dpkg-query", "-W", p], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, f"{p}: not a Debian 12 package installed here")
        # What debian:bookworm-slim already has: the essential and required packages.
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Essential} ${Priority}\n"],
                           capture_output=True, text=True, check=True)
        base = {line.split()[0] for line in r.stdout.splitlines()
                if " yes " in line or line.endswith(" required")}
        have = _closure(listed | base)
        build_runs = " ".join(runs(stage_index("build")))
        loaded = {}  # path -> (binary, library)
        for name in ("ldcp-server", "ldcp-client", "ldcp"):
            out = subprocess.run(["ldd", dl.lib.tool(name)], capture_output=True, text=True,
                                 check=True).stdout
            for line in out.splitlines():
                m = re.match(r"\s*(\S+) => (\S+)", line)
                if m:
                    self.assertNotEqual(m.group(2), "not", f"{name}: {m.group(1)} not found")
                    loaded.setdefault(m.group(2), (name, m.group(1)))
        self.assertGreater(len(loaded), 20)
        for path, (name, lib_name) in sorted(loaded.items()):
            if "/site-packages/" in path or "/libtorch/" in path:
                # libtorch's own libraries and the CUDA ones of the wheel: staged by copying
                # torch/lib and nvidia/ from the build stage.
                where = "torch/lib" if "/torch/lib/" in path else "nvidia"
                self.assertRegex(path, r"/(torch/lib|nvidia/[^/]+/lib)/", path)
                self.assertIn(where, build_runs, f"{path} is not staged")
                continue
            pkg = _dpkg_package(path)
            self.assertIsNotNone(pkg, f"{name}: {path} belongs to no Debian package")
            self.assertTrue(pkg in have, f"{name} loads {lib_name} from {pkg}, which the runtime "
                                     "stage does not install")

    def test_ports_health_check_and_environment(self):
        rt = stage_index("runtime")
        env = env_of(rt)
        exposed = {int(p.split("/")[0]) for _, w, rest in instructions() if w == "EXPOSE"
                   for p in rest.split()}
        listen, metrics = env["LDCP_LISTEN"], env["LDCP_METRICS_LISTEN"]
        self.assertTrue(listen.startswith("0.0.0.0:") and metrics.startswith("0.0.0.0:"))
        self.assertEqual(exposed, {dl.port_of(listen), dl.port_of(metrics)})
        # ldcp-client in the container reaches the gRPC port through LDCP_TARGET.
        self.assertEqual(env["LDCP_TARGET"], f"127.0.0.1:{dl.port_of(listen)}")
        hc = next(rest for i, w, rest in instructions() if w == "HEALTHCHECK")
        unset, client = split_env(healthcheck_argv())
        self.assertEqual(client[:2], ["ldcp-client", "health"])
        # The health check asks the plaintext health-only listener, on loopback and not exposed
        # (the gRPC port may speak TLS only) ...
        target = client[client.index("--target") + 1]
        self.assertEqual(target, env["LDCP_HEALTH_LISTEN"])
        self.assertTrue(target.startswith("127.0.0.1:"), target)
        self.assertNotIn(dl.port_of(target), exposed)
        # ... with every variable that could make the client use TLS or send a token unset (the
        # server's LDCP_TLS_CERT and LDCP_TLS_KEY are the client's --tls-cert and --tls-key too).
        client_help = subprocess.run([dl.lib.tool("ldcp-client"), "health", "--help"],
                                     capture_output=True, text=True).stdout
        self.assertIn("LDCP_TARGET", client_help)
        read = set(re.findall(r"\bLDCP_[A-Z_]+", client_help)) - {"LDCP_TARGET"}
        self.assertTrue({"LDCP_TLS", "LDCP_TLS_CERT", "LDCP_TLS_KEY", "LDCP_TOKEN"} <= read, read)
        self.assertEqual(read - unset, set(), "read by the health check's client")
        start = re.search(r"--start-period=(\d+)m", hc)
        self.assertTrue(start and int(start.group(1)) >= 5, "start period too short for loading")
        # Every LDCP_* variable is an option of the server (or the client's target, or the demo
        # model's data folder).
        options = dl.server_options()
        for k in env:
            if k.startswith("LDCP_") and k not in ("LDCP_TARGET", "LDCP_DATA_DIR"):
                self.assertIn(k, options, f"ENV {k} is not an ldcp-server option")
        self.assertEqual(env["LDCP_DEVICE"], "${VARIANT}")
        self.assertEqual(env["LDCP_DATA_DIR"], "/opt/ldcp/share/data")
        self.assertIn("cp -a data /opt/ldcp/share/data", " ".join(runs(stage_index("build"))))
        entrypoint = [rest for i, w, rest in instructions() if w == "ENTRYPOINT" and i == rt]
        self.assertEqual(entrypoint, ['["ldcp-server"]'])

    def test_non_root_and_model_mounted_not_baked(self):
        rt = stage_index("runtime")
        user = [rest for i, w, rest in instructions() if w == "USER" and i == rt]
        self.assertEqual(len(user), 1)
        uid = user[0].split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) >= 1000, user)
        self.assertIn(f"--uid {uid}", " ".join(runs(rt)))
        # Kubernetes runs it as the same user.
        dep = dl.only(dl.render("cpu"), "Deployment", "ldcp-server")
        self.assertEqual(dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"], int(uid))
        model = env_of(rt)["LDCP_MODEL"]
        self.assertTrue(model.startswith("/models/"))
        for _, _, dest, _ in copies():
            self.assertFalse(dest.startswith("/models"), f"something is copied into {dest}")
        # RUN may only create the empty mount point.
        for i, w, r in instructions():
            if w == "RUN":
                for m in re.finditer(r"[^&;]*/models\b[^&;]*", r):
                    self.assertRegex(m.group(0).strip(), r"^install -d -o \w+ -g \w+ /models$")


class LiveHealthCheck(unittest.TestCase):
    def test_health_check_passes_with_tls_on(self):
        """The HEALTHCHECK's argv with the image's environment (its loopback health address on a
        free port), against ldcp-server started with that environment and TLS on --listen."""
        image_env = env_of(stage_index("runtime"))
        work = Path(tempfile.mkdtemp(prefix="ldcp-deploy-healthcheck-"))
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        grpc_target = f"127.0.0.1:{dl.lib.free_port()}"
        health = f"127.0.0.1:{dl.lib.free_port()}"
        bins = sorted({str(Path(dl.lib.tool(n)).parent) for n in ("ldcp-server", "ldcp-client")})
        env = dict(image_env, PATH=os.pathsep.join(bins + ["/usr/bin", "/bin"]), HOME=str(work),
                   LDCP_DATA_DIR=str(ROOT / "data"), LDCP_MODEL=str(dl.lib.demo_model(work)),
                   LDCP_DEVICE="cpu", LDCP_DTYPE="fp32", LDCP_FP16_WEIGHTS="false",
                   LDCP_MEMORY_BUDGET="8GiB", LDCP_DEFAULT_SIZE="64",
                   LDCP_CALIBRATE_SIZES="64x64", LDCP_CALIBRATE_LEVELS="0",
                   LDCP_CALIBRATE_STEPS="1", LDCP_MAX_BATCH="1", LDCP_LISTEN=grpc_target,
                   LDCP_METRICS_LISTEN="127.0.0.1:0", LDCP_HEALTH_LISTEN=health,
                   LDCP_TARGET=grpc_target, LDCP_LOG_FORMAT="text", OMP_NUM_THREADS="1")
        env.update(dl.secret_stand_ins({"LDCP_TLS_CERT": 1, "LDCP_TLS_KEY": 1}, work))
        argv = [health if a == image_env["LDCP_HEALTH_LISTEN"] else a
                for a in healthcheck_argv()]
        log_path = work / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([dl.lib.tool("ldcp-server")], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            def check(cmd):
                return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

            deadline = time.time() + 300
            r = check(argv)
            while r.returncode != 0 and time.time() < deadline and proc.poll() is None:
                time.sleep(0.5)
                r = check(argv)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + log_path.read_text())
            self.assertIn("SERVING", r.stdout)
            self.assertIn("transport: TLS", log_path.read_text())
            # What it replaced, the check on LDCP_TARGET, fails against the TLS port; and
            # without `env -u`, the client takes the server's certificate for its own and speaks
            # TLS to the plaintext listener.
            self.assertNotEqual(check(["ldcp-client", "health", "--timeout", "5"]).returncode, 0)
            self.assertNotEqual(check(split_env(argv)[1]).returncode, 0)
        finally:
            dl.terminate(proc)


if __name__ == "__main__":
    unittest.main(verbosity=2)
