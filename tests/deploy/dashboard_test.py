#!/usr/bin/python3
"""Proves deploy/grafana/dashboards/kiln.json on live data, without Grafana.

Modes (Python 3 standard library only):
  --structure   the JSON has what Grafana requires (uid, title, schemaVersion, panels with
                id/type/gridPos/datasource/targets with refId, templating entries), every data
                source is the provisioned uid, every rate() uses $__rate_interval.
  --schema      type-checks the JSON against Grafana's published dashboard schema (the
                `Dashboard` type of the npm package @grafana/schema) with TypeScript's tsc;
                exits 77 (skipped) when those packages are not installed.
  --live        trains a tiny seed-cnn, starts a real `kiln serve`, `prometheus` and
                `prometheus-node-exporter` on loopback, sends real traffic (KServe JSON infer,
                /predict uploads, a few bad requests), then evaluates every query of every panel
                and every template variable through Prometheus's HTTP API and fails on any error,
                empty or all-NaN result. Queries that need services this test cannot run
                (nginx exporter, cAdvisor) are listed in SKIPPED and printed.
"""

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GRAFANA = os.path.join(ROOT, "deploy", "grafana")
DASHBOARD = os.path.join(GRAFANA, "dashboards", "kiln.json")
DATASOURCE = os.path.join(GRAFANA, "provisioning", "datasources", "prometheus.yaml")
PROVIDER = os.path.join(GRAFANA, "provisioning", "dashboards", "kiln.yaml")

MODEL = "cifar10"
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval); the test
# scrapes every 1 s, and takes 15 s (15 samples per window) so that every rate() spans traffic.
RATE_INTERVAL = "15s"
INTERVAL = "5s"
RANGE = "60s"

# (panel title, refId) -> why this test cannot prove it. Printed, counted, never silently passed.
NGINX = "needs nginx and prometheus-nginx-exporter in front of kiln; this test runs kiln alone"
CADVISOR = "needs cAdvisor and kiln running in a container; this test runs kiln as a process"
SKIPPED = {
    ("CPU", "C"): CADVISOR,
    ("Memory", "D"): CADVISOR,
    ("Memory", "E"): CADVISOR,
    ("nginx requests and connections", "A"): NGINX,
    ("nginx requests and connections", "B"): NGINX,
    ("nginx requests and connections", "C"): NGINX,
}

# Pinned versions of the schema check's npm packages (installed into <repo>/node_modules).
SCHEMA_PACKAGES = ("typescript@5.9.3", "@grafana/schema@13.2.3")


def log(*a):
    print(*a, flush=True)


def load_dashboard(path=DASHBOARD):
    with open(path) as f:
        return json.load(f)


def provisioned_uid():
    with open(DATASOURCE) as f:
        m = re.search(r"^\s*uid:\s*['\"]?([A-Za-z0-9_-]+)", f.read(), re.M)
    return m.group(1) if m else None


def data_panels(d):
    """Every non-row panel, including panels nested in collapsed rows."""
    out = []
    for p in d.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# Structure


def check_structure(d):
    problems = []
    uid = provisioned_uid()
    if not uid:
        problems.append(f"{DATASOURCE}: no data source uid")
    with open(DATASOURCE) as f:
        ds_text = f.read()
    if not re.search(r"^\s*type:\s*prometheus\s*$", ds_text, re.M):
        problems.append(f"{DATASOURCE}: the data source is not of type prometheus")
    with open(PROVIDER) as f:
        prov = f.read()
    for needed in (r"^apiVersion:\s*1", r"^\s*type:\s*file", r"^\s*path:\s*\S+"):
        if not re.search(needed, prov, re.M):
            problems.append(f"{PROVIDER}: no line matching {needed}")

    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list),
                      ("templating", dict)):
        if not isinstance(d.get(key), kind):
            problems.append(f"dashboard: '{key}' missing or not a {kind.__name__}")
    if isinstance(d.get("uid"), str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]):
        problems.append("dashboard: uid must be at most 40 characters of [A-Za-z0-9_-]")

    def check_ds(where, ds):
        if not isinstance(ds, dict) or ds.get("type") != "prometheus" or ds.get("uid") != uid:
            problems.append(f"{where}: datasource {ds!r} is not the provisioned "
                            f"{{'type': 'prometheus', 'uid': {uid!r}}}")

    ids = set()
    for p in d.get("panels", []) + [q for r in d.get("panels", []) for q in r.get("panels", [])]:
        where = f"panel {p.get('id')} '{p.get('title')}'"
        for key, kind in (("id", int), ("type", str), ("title", str), ("gridPos", dict)):
            if not isinstance(p.get(key), kind):
                problems.append(f"{where}: '{key}' missing or not a {kind.__name__}")
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{where}: gridPos needs integer h, w, x, y")
        elif g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24 or g["h"] < 1:
            problems.append(f"{where}: gridPos {g} outside the 24-column grid")
        if p.get("type") == "row":
            continue
        check_ds(where, p.get("datasource"))
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}: no targets")
            continue
        refs = set()
        for t in targets:
            ref = t.get("refId")
            if not isinstance(ref, str) or not ref:
                problems.append(f"{where}: a target without a string refId")
            if ref in refs:
                problems.append(f"{where}: duplicate refId {ref}")
            refs.add(ref)
            check_ds(f"{where} target {ref}", t.get("datasource"))
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where} target {ref}: no expr")
                continue
            for window in re.findall(r"(?<=[}\w)])\[([^\]]*)\]", expr):
                if window != "$__rate_interval":
                    problems.append(f"{where} target {ref}: range [{window}] instead of "
                                    "[$__rate_interval]")

    names = []
    for v in d.get("templating", {}).get("list", []):
        where = f"variable '{v.get('name')}'"
        names.append(v.get("name"))
        for key in ("name", "type"):
            if not isinstance(v.get(key), str):
                problems.append(f"{where}: '{key}' missing")
        if v.get("type") == "query":
            check_ds(where, v.get("datasource"))
            if not variable_query(v):
                problems.append(f"{where}: no query")
            if v.get("multi") is not True or v.get("includeAll") is not True:
                problems.append(f"{where}: should be multi and includeAll")
    for needed in ("model", "version", "instance"):
        if needed not in names:
            problems.append(f"templating: no '{needed}' variable")
    return problems


def variable_query(v):
    q = v.get("query")
    return q.get("query") if isinstance(q, dict) else q


# ---------------------------------------------------------------------------------------------
# Schema: Grafana's published `Dashboard` type (npm @grafana/schema), checked by tsc


def schema_dir():
    d = os.environ.get("KILN_GRAFANA_SCHEMA_DIR", ROOT)
    return os.path.join(d, "node_modules") if os.path.basename(d) != "node_modules" else d


def check_schema(path=DASHBOARD):
    """Returns (ran, problems)."""
    nm = schema_dir()
    tsc = os.path.join(nm, "typescript", "bin", "tsc")
    types = os.path.join(nm, "@grafana", "schema", "dist", "types", "index.d.ts")
    node = shutil.which("node")
    missing = [p for p in (tsc, types) if not os.path.exists(p)] + ([] if node else ["node"])
    if missing:
        return False, [f"not installed: {', '.join(missing)} (npm install --prefix <repo> "
                       f"--no-save --no-package-lock --ignore-scripts {' '.join(SCHEMA_PACKAGES)})"]
    with tempfile.TemporaryDirectory(prefix="kiln-grafana-schema-") as tmp:
        with open(path) as f:
            body = f.read()
        with open(os.path.join(tmp, "check.ts"), "w") as f:
            f.write('import type { Dashboard } from "@grafana/schema";\n'
                    "// The schema declares TypeScript enums (FieldColorModeId, ThresholdsMode, ...);\n"
                    "// a JSON file holds their string values: Json<T> is T with every enum replaced\n"
                    "// by its values' literal types, every object still checked for unknown keys.\n"
                    "type Json<T> = T extends string ? `${T}`\n"
                    "  : T extends number | boolean | null | undefined ? T\n"
                    "  : T extends Array<infer U> ? Array<Json<U>>\n"
                    "  : T extends object ? { [K in keyof T]: Json<T[K]> }\n"
                    "  : T;\n"
                    "export const dashboard: Json<Dashboard> = " + body + ";\n")
        with open(os.path.join(tmp, "tsconfig.json"), "w") as f:
            json.dump({"compilerOptions": {
                "strict": True, "noEmit": True, "module": "esnext",
                "moduleResolution": "bundler", "target": "es2022", "skipLibCheck": True,
                "types": [], "paths": {"@grafana/schema": [types]}},
                "files": ["check.ts"]}, f)
        r = subprocess.run([node, tsc, "-p", os.path.join(tmp, "tsconfig.json")],
                           capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            return True, []
        lines = (r.stdout + r.stderr).strip().splitlines()
        return True, [re.sub(r"^.*check\.ts", "kiln.json (as check.ts)", l) for l in lines]


def schema_version():
    out = []
    for pkg in ("typescript", "@grafana/schema"):
        try:
            with open(os.path.join(schema_dir(), pkg, "package.json")) as f:
                out.append(f"{pkg}@{json.load(f)['version']}")
        except OSError:
            pass
    return " ".join(out)


# ---------------------------------------------------------------------------------------------
# Processes


_ports_given = set()


def free_port():
    """A free loopback port, never one this process was given before (the kernel may hand the
    same ephemeral port out twice once the probing socket is closed)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


class Procs:
    """Started processes, each in its own process group; stop() kills every group."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, name, argv):
        out = open(os.path.join(self.tmp, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        out.close()
        self.procs.append((name, p))
        return p

    def log_tail(self, name, n=4000):
        try:
            with open(os.path.join(self.tmp, name + ".log"), "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 15
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs = []


def run(argv, what, timeout):
    log("$", " ".join(argv))
    t = time.time()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       start_new_session=True)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    log(f"  {what}: {time.time() - t:.1f} s")
    return r


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_for(what, fn, timeout, procs=None, proc=None, name=None):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with {proc.returncode}\n{procs.log_tail(name)}")
        try:
            if fn():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.25)
    raise RuntimeError(f"{what}: not ready after {timeout} s ({last})\n"
                       + (procs.log_tail(name) if procs and name else ""))


# ---------------------------------------------------------------------------------------------
# Traffic


class Traffic:
    """Threads sending real requests until stop(): KServe JSON infer (batches of 1 and 4),
    /predict image uploads, and now and then a bad request (malformed JSON: 400; unknown model:
    404; /predict without a file: 400), so the error panels have data."""

    def __init__(self, port, images, threads=3):
        self.port = port
        self.images = images
        self.stop_event = threading.Event()
        self.counts = {}
        self.lock = threading.Lock()
        rng = random.Random(7)
        self.bodies = {}
        for batch in (1, 4):
            data = [round(rng.gauss(0, 1), 4) for _ in range(batch * 3 * 32 * 32)]
            self.bodies[batch] = json.dumps({"inputs": [{
                "name": "input", "shape": [batch, 3, 32, 32], "datatype": "FP32",
                "data": data}]}).encode()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)

    def count(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def send(self, conn, method, path, body, headers):
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        self.count(f"{method} {path.split('?')[0]} {r.status}")
        return r.status

    def multipart(self, png):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + \
               f"\r\n--{boundary}--\r\n".encode()
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def loop(self, index):
        conn = None
        i = index
        infer = f"/v2/models/{MODEL}/infer"
        json_h = {"Content-Type": "application/json"}
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                k = i % 20
                if k in (0, 1, 2, 3, 4, 5, 6, 7, 8):
                    self.send(conn, "POST", infer, self.bodies[1], json_h)
                elif k in (9, 10, 11):
                    self.send(conn, "POST", infer, self.bodies[4], json_h)
                elif k in (12, 13, 14, 15, 16, 17):
                    body, h = self.multipart(self.images[i % len(self.images)])
                    self.send(conn, "POST", "/predict", body, h)
                elif k == 18:
                    self.send(conn, "POST", infer, b'{"inputs": [', json_h)  # malformed: 400
                else:
                    if (i // 20) % 2 == 0:
                        self.send(conn, "POST", "/v2/models/no-such-model/infer",
                                  self.bodies[1], json_h)  # 404
                    else:
                        body, h = self.multipart(b"not an image")  # 400
                        self.send(conn, "POST", "/predict", body, h)
            except (OSError, http.client.HTTPException) as e:
                self.count(f"transport error {type(e).__name__}")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            i += 3
        if conn is not None:
            conn.close()


# ---------------------------------------------------------------------------------------------
# Queries


def grafana_regex(value):
    """A variable value as Grafana interpolates it into a Prometheus regex matcher: regex
    metacharacters escaped, the backslash doubled for the PromQL string literal."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def substitute(expr, values):
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, params):
        url = self.base + path + "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                return json.loads(e.read())
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}"}

    def query(self, expr):
        return self.api("/api/v1/query", {"query": expr, "time": f"{time.time():.3f}"})


def judge(result):
    """None when the query returned data; else why not."""
    if result.get("status") != "success":
        return f"error: {result.get('errorType', '')} {result.get('error', result)}"
    data = result["data"]
    if data["resultType"] in ("scalar", "string"):
        return None
    series = data["result"]
    if not series:
        return "empty result"
    values = [float(s["value"][1]) for s in series if "value" in s]
    if values and not any(math.isfinite(v) for v in values):
        return f"every value is NaN/Inf ({len(values)} series)"
    return None


def summarize(result):
    """'N series, e.g. 1.23' for the log."""
    series = result["data"]["result"]
    finite = [float(x["value"][1]) for x in series if math.isfinite(float(x["value"][1]))]
    return f"{len(series)} series, e.g. {finite[0]:.4g}" if finite else f"{len(series)} series"


def label_values(prom, query):
    """Grafana's label_values(metric{...}, label) / label_values(label) through the series API."""
    m = re.fullmatch(r"\s*label_values\(\s*(?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if not m:
        return None, f"not a label_values() query: {query}"
    match, label = m.group(1), m.group(2)
    params = {"match[]": match} if match else {}
    params["start"] = f"{time.time() - 3600:.0f}"
    r = prom.api(f"/api/v1/label/{label}/values", params)
    if r.get("status") != "success":
        return None, f"error: {r.get('error', r)}"
    return r["data"], None


# ---------------------------------------------------------------------------------------------


def live(args, dashboard):
    for tool in ("prometheus", "prometheus-node-exporter"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found (Debian packages prometheus, "
                               "prometheus-node-exporter)")
    if not os.access(args.kiln, os.X_OK):
        raise RuntimeError(f"no kiln binary at {args.kiln}")
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="kiln-dashboard-test-")
    procs = Procs(tmp)
    traffic = None
    try:
        # A tiny model: 1 epoch on 1000 training images (500 held out for the drift reference).
        run([args.kiln, "train", "--data", args.data, "--arch", "seed-cnn", "--epochs", "1",
             "--train-limit", "1000", "--validation-size", "500", "--threads", "2",
             "--out", os.path.join(tmp, "run")], "kiln train", 600)
        # --skip-check: the parity check (10000 test images) is export_test's job, not this one's.
        run([args.kiln, "export", "--checkpoint", os.path.join(tmp, "run", "best.ckpt"),
             "--data", args.data, "--out", os.path.join(tmp, "export"), "--skip-check"],
            "kiln export", 600)
        repo = os.path.join(tmp, "repo")
        os.makedirs(os.path.join(repo, MODEL, "1"))
        shutil.copy(os.path.join(tmp, "export", "model.onnx"),
                    os.path.join(repo, MODEL, "1", "model.onnx"))
        with open(os.path.join(repo, MODEL, "config.pbtxt"), "w") as f:
            f.write(f'name: "{MODEL}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
                    "dynamic_batching { preferred_batch_size: [ 4, 8 ] "
                    "max_queue_delay_microseconds: 2000 "
                    "default_queue_policy { max_queue_size: 64 } }\n"
                    "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
                    'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n')
        images_dir = os.path.join(tmp, "images")
        run([args.kiln, "data", "images", "--data", args.data, "--count", "20",
             "--out", images_dir], "kiln data images", 120)
        images = []
        for name in sorted(os.listdir(images_dir)):
            if name.endswith(".png"):
                with open(os.path.join(images_dir, name), "rb") as f:
                    images.append(f.read())
        if not images:
            raise RuntimeError(f"kiln data images wrote no PNG into {images_dir}")

        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        node_port, prom_port = free_port(), free_port()
        kiln = procs.start("kiln", [
            args.kiln, "serve", "--models", repo, "--host", "127.0.0.1",
            "--port", str(http_port), "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics_port)])
        node = procs.start("node-exporter", [
            shutil.which("prometheus-node-exporter"),
            f"--web.listen-address=127.0.0.1:{node_port}",
            "--collector.disable-defaults", "--collector.cpu", "--collector.meminfo",
            "--collector.loadavg"])
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n"
                    f"  - job_name: kiln\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{metrics_port}']\n"
                    f"  - job_name: node\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{node_port}']\n")
        prom_proc = procs.start("prometheus", [
            shutil.which("prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(tmp, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--storage.tsdb.retention.time=1h"])
        wait_for("kiln serve", lambda: http_get(
            f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready")[0] == 200, 120, procs,
            kiln, "kiln")
        wait_for("node-exporter", lambda: http_get(f"http://127.0.0.1:{node_port}/metrics")[0]
                 == 200, 60, procs, node, "node-exporter")
        wait_for("prometheus", lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready")[0]
                 == 200, 60, procs, prom_proc, "prometheus")
        prom = Prometheus(prom_port)

        traffic = Traffic(http_port, images)
        traffic.start()
        log(f"traffic started; kiln http :{http_port} metrics :{metrics_port}, node-exporter "
            f":{node_port}, prometheus :{prom_port}; setup took {time.time() - t0:.0f} s")

        # Enough scrapes: both targets up, and a rate window's worth of samples with traffic.
        def scraped():
            r = prom.query('count_over_time(up{job=~"kiln|node"}[%s]) >= %d'
                           % (RATE_INTERVAL, int(RATE_INTERVAL[:-1]) - 2))
            return r.get("status") == "success" and len(r["data"]["result"]) == 2
        wait_for("Prometheus scrapes", scraped, 120)
        time.sleep(2)
        up = prom.query("up")["data"]["result"]
        log("targets up:", ", ".join(f"{s['metric']['job']}={s['value'][1]}" for s in up))

        instance = f"127.0.0.1:{metrics_port}"
        concrete = {"model": grafana_regex(MODEL), "version": "1",
                    "instance": grafana_regex(instance)}
        everything = {"model": ".*", "version": ".*", "instance": ".*"}
        builtins = {"__rate_interval": RATE_INTERVAL, "__interval": INTERVAL,
                    "__range": RANGE}

        failures, skipped, proven = [], [], 0
        # Template variables: each must list the served model, its version, the scraped instance.
        expected = {"model": MODEL, "version": "1", "instance": instance}
        for v in dashboard["templating"]["list"]:
            q = substitute(variable_query(v), {**concrete, **builtins})
            values, err = label_values(prom, q)
            want = expected.get(v["name"])
            if err or not values or (want and want not in values):
                failures.append(f"variable ${v['name']}: {q} -> {err or values}")
            else:
                log(f"ok  variable ${v['name']}: {q} -> {values}")

        panels = data_panels(dashboard)
        queries = 0
        for p in panels:
            for t in p["targets"]:
                queries += 1
                key = (p["title"], t["refId"])
                if key in SKIPPED:
                    # Not provable here, but it must still be a query Prometheus accepts.
                    expr = substitute(t["expr"], {**concrete, **builtins})
                    r = prom.query(expr)
                    if r.get("status") != "success":
                        failures.append(f"'{p['title']}' {t['refId']} (skipped, but): {expr} -> "
                                        f"error: {r.get('error', r)}")
                    skipped.append(f"'{p['title']}' {t['refId']}: {t['expr']}  -- {SKIPPED[key]}")
                    continue
                ok, shown = True, ""
                for label, values in (("selected", concrete), ("All", everything)):
                    expr = substitute(t["expr"], {**values, **builtins})
                    r = prom.query(expr)
                    why = judge(r)
                    if why:
                        ok = False
                        failures.append(f"'{p['title']}' {t['refId']} ({label}): {expr} -> {why}")
                    elif label == "selected":
                        shown = summarize(r)
                if ok:
                    proven += 1
                    log(f"ok  '{p['title']}' {t['refId']}: "
                        f"{substitute(t['expr'], {**concrete, **builtins})}  => {shown}")
        traffic.stop()
        log("traffic sent:", json.dumps(dict(sorted(traffic.counts.items()))))
        for s in skipped:
            log("SKIPPED", s)
        for f in failures:
            log("FAILED ", f)
        log(f"summary: {len(panels)} panels, {queries} queries, {proven} proven on live data "
            f"(each with the served model/version/instance and with All), {len(skipped)} skipped "
            f"({len([k for k in SKIPPED if k[0].startswith('nginx')])} nginx exporter, "
            f"{len([k for k in SKIPPED if not k[0].startswith('nginx')])} cAdvisor), "
            f"{len(failures)} failed; $__rate_interval={RATE_INTERVAL}, $__interval={INTERVAL}, "
            f"$__range={RANGE}, scrape interval 1s; {time.time() - t0:.0f} s")
        return not failures
    finally:
        if traffic is not None:
            traffic.stop()
        procs.stop()
        if args.keep:
            log("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--structure", action="store_true")
    ap.add_argument("--schema", action="store_true")
    ap.add_argument("--live", action="store_true")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "kiln"))
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data",
                                                   "cifar-10-binary.tar.gz"))
    ap.add_argument("--dashboard", default=DASHBOARD)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if not (args.structure or args.schema or args.live):
        args.structure = args.live = True
    dashboard = load_dashboard(args.dashboard)
    ok = True
    if args.structure:
        problems = check_structure(dashboard)
        for p in problems:
            log("STRUCTURE", p)
        n = len(data_panels(dashboard))
        log(f"structure: {n} panels, {sum(len(p['targets']) for p in data_panels(dashboard))} "
            f"queries, {len(dashboard['templating']['list'])} variables: "
            + ("ok" if not problems else f"{len(problems)} problems"))
        ok = ok and not problems
    if args.schema:
        ran, problems = check_schema(args.dashboard)
        if not ran:
            log("schema: SKIPPED,", problems[0])
            if not (args.structure or args.live):
                return 77
        else:
            for p in problems:
                log("SCHEMA", p)
            log(f"schema ({schema_version()}, the Dashboard type): "
                + ("ok" if not problems else f"{len(problems)} errors"))
            ok = ok and not problems
    if args.live:
        try:
            ok = live(args, dashboard) and ok
        except Exception as e:
            log("FAILED", e)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
