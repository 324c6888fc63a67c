#!/usr/bin/python3
"""Validates deploy/compose.yaml and deploy/compose.local.yaml with Docker Compose itself.

  /usr/bin/python3 tests/deploy/compose_test.py [--docker-compose PATH]

`docker-compose config` (Debian's docker-compose 1.29) parses, checks and normalizes the full
file (with and without the triton profile) and the file with the local override; this script
then checks, on the normalized output, what the deployment promises (docs/deploy.md):
  - every service of the issue exists; Triton only under its profile;
  - every service has a health check (nginx-exporter excepted: its upstream image has no shell
    or HTTP client), a restart policy, CPU and memory limits;
  - every depends_on waits for service_healthy, on a service that has a health check;
  - only nginx and Grafana publish ports; state lives in named volumes that are declared;
  - the configuration files are mounted where the programs read them, and every name the
    Prometheus, Grafana and nginx configurations reach (scrape targets, the data source, the
    upstreams) is a service of the stack, on a port that service listens on;
  - the local override builds the Debian-packaged services from deploy/local/Dockerfile under
    the image names deploy/local-images.sh gives them, and leaves Grafana, cAdvisor and Triton
    out of what `up` starts, with nothing it starts depending on them.
Exit 0 when all holds, 1 with every finding.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEPLOY = os.path.join(ROOT, "deploy")
SERVICES = {"kiln", "nginx", "nginx-exporter", "prometheus", "alertmanager", "grafana",
            "node-exporter", "cadvisor", "triton"}
PUBLISHED = {"nginx", "grafana"}
NO_HEALTHCHECK = {"nginx-exporter"}
REGISTRY_ONLY = {"grafana", "cadvisor", "triton"}
# Ports each service listens on inside the network.
LISTENS = {"kiln": {8000, 8001, 8002}, "nginx": {8080, 8081, 8082}, "nginx-exporter": {9113},
           "prometheus": {9090}, "alertmanager": {9093}, "grafana": {3000},
           "node-exporter": {9100}, "cadvisor": {8080}, "triton": {8000, 8001, 8002}}

findings = []


def fail(message):
    findings.append(message)


def config(compose, files, profiles=()):
    argv = [compose]
    for f in files:
        argv += ["-f", os.path.join(DEPLOY, f)]
    for p in profiles:
        argv += ["--profile", p]
    out = subprocess.run(argv + ["config"], capture_output=True, text=True, cwd=DEPLOY,
                         timeout=120)
    if out.returncode != 0:
        fail(f"docker-compose {' '.join(files)} config failed:\n{out.stderr}")
        return None
    return yaml.safe_load(out.stdout)


def mounts(service):
    """{target: source} of a normalized service's volumes."""
    result = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            result[parts[1]] = parts[0]
        else:
            result[v["target"]] = v.get("source")
    return result


def check_full(c):
    services = c.get("services", {})
    if set(services) != SERVICES:
        fail(f"services are {sorted(services)}, expected {sorted(SERVICES)}")
    if services.get("triton", {}).get("profiles") != ["triton"]:
        fail("triton must be under the profile 'triton'")
    for name, s in services.items():
        if name != "triton" and s.get("profiles"):
            fail(f"{name}: under a profile; only triton is optional")
        test = s.get("healthcheck", {}).get("test")
        if name not in NO_HEALTHCHECK and not test:
            fail(f"{name}: no health check")
        if s.get("restart") not in ("unless-stopped", "always", "on-failure"):
            fail(f"{name}: no restart policy")
        limits = s.get("deploy", {}).get("resources", {}).get("limits", {})
        if not (s.get("cpus") or limits.get("cpus")) or not (s.get("mem_limit")
                                                             or limits.get("memory")):
            fail(f"{name}: CPU and memory limits missing")
        for dep, how in (s.get("depends_on") or {}).items():
            if how.get("condition") != "service_healthy":
                fail(f"{name}: depends on {dep} without condition service_healthy")
            if dep in NO_HEALTHCHECK or not services.get(dep, {}).get("healthcheck"):
                fail(f"{name}: waits for {dep} to be healthy, which has no health check")
        if s.get("ports") and name not in PUBLISHED:
            fail(f"{name}: publishes ports; only {sorted(PUBLISHED)} may")
    for name in PUBLISHED:
        if not services.get(name, {}).get("ports"):
            fail(f"{name}: publishes no port")
    declared = set(c.get("volumes", {}) or {})
    for name, s in services.items():
        for target, source in mounts(s).items():
            if source and not source.startswith("/") and source not in declared:
                fail(f"{name}: volume {source} is not declared")
    for name in ("prometheus", "alertmanager", "grafana"):
        named = [src for src in mounts(services.get(name, {})).values()
                 if src and not src.startswith("/")]
        if not named:
            fail(f"{name}: keeps its data in no named volume")

    # Configuration files mounted where the programs read them.
    expect = {
        "prometheus": {"/etc/prometheus": "deploy/prometheus"},
        "alertmanager": {"/etc/alertmanager/alertmanager.yml": "deploy/prometheus/alertmanager.yml"},
        "grafana": {"/etc/grafana/provisioning": "deploy/grafana/provisioning",
                    "/var/lib/grafana/dashboards/kiln": "deploy/grafana/dashboards"},
        "nginx": {"/etc/nginx/nginx.conf": "deploy/nginx/nginx.conf"},
    }
    for name, wanted in expect.items():
        got = mounts(services.get(name, {}))
        for target, source in wanted.items():
            if os.path.normpath(got.get(target, "")) != os.path.join(ROOT, source):
                fail(f"{name}: {source} must be mounted at {target} (has {got.get(target)})")
    cmd = services.get("prometheus", {}).get("command", [])
    if "--config.file=/etc/prometheus/prometheus.yml" not in cmd:
        fail("prometheus: not started with /etc/prometheus/prometheus.yml")
    provider = yaml.safe_load(open(os.path.join(DEPLOY, "grafana", "provisioning", "dashboards",
                                                "kiln.yaml")))
    if provider["providers"][0]["options"]["path"] != "/var/lib/grafana/dashboards/kiln":
        fail("grafana: the dashboard provider's path is not where compose.yaml mounts it")

    # Every host:port the configurations reach is a service of the stack listening there.
    def reach(where, hostport):
        host, port = hostport.rsplit(":", 1)
        if host in ("localhost", "127.0.0.1"):
            return
        if host not in services:
            fail(f"{where}: {hostport} is no service of the stack")
        elif int(port) not in LISTENS.get(host, set()):
            fail(f"{where}: {host} does not listen on {port}")

    prom = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus", "prometheus.yml")))
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                reach(f"prometheus.yml job {job['job_name']}", t)
    for am in prom["alerting"]["alertmanagers"]:
        for sc in am["static_configs"]:
            for t in sc["targets"]:
                reach("prometheus.yml alerting", t)
    ds = yaml.safe_load(open(os.path.join(DEPLOY, "grafana", "provisioning", "datasources",
                                          "prometheus.yaml")))
    for d in ds["datasources"]:
        reach("grafana data source", re.sub(r"^https?://", "", d["url"]).rstrip("/"))
    nginx = open(os.path.join(DEPLOY, "nginx", "nginx.conf")).read()
    for upstream in re.findall(r"^\s*server\s+([\w.-]+:\d+)", nginx, re.M):
        reach("nginx.conf upstream", upstream)
    exporter = " ".join(services.get("nginx-exporter", {}).get("command", []))
    m = re.search(r"https?://([\w.-]+:\d+)/stub_status", exporter)
    if not m:
        fail("nginx-exporter: no --nginx.scrape-uri")
    else:
        reach("nginx-exporter scrape uri", m.group(1))
    kiln_cmd = services.get("kiln", {}).get("command", [])
    for flag, port in (("--port", "8000"), ("--grpc-port", "8001"), ("--metrics-port", "8002")):
        if flag not in kiln_cmd or kiln_cmd[kiln_cmd.index(flag) + 1] != port:
            fail(f"kiln: {flag} must be {port} (nginx.conf and prometheus.yml use it)")
    if "--host" not in kiln_cmd or kiln_cmd[kiln_cmd.index("--host") + 1] != "0.0.0.0":
        fail("kiln: must listen on 0.0.0.0 (--host) to be reachable from nginx and prometheus")


def check_local(c):
    services = c.get("services", {})
    script = open(os.path.join(DEPLOY, "local-images.sh")).read()
    built = set(re.findall(r'^\s*"([\w-]+)\|', script, re.M))
    active = {n for n, s in services.items() if not s.get("profiles")}
    if active & REGISTRY_ONLY:
        fail(f"local override: {sorted(active & REGISTRY_ONLY)} would start; they exist only "
             "in registries")
    for name in active - {"kiln"}:
        s = services[name]
        if s.get("image") != f"localhost/kiln-local/{name}:bookworm":
            fail(f"local override: {name} runs {s.get('image')}, not the local image")
        if name not in built:
            fail(f"local override: deploy/local-images.sh does not build {name}")
        if os.path.normpath(s.get("build", {}).get("context", "")) != os.path.join(DEPLOY, "local"):
            fail(f"local override: {name} is not built from deploy/local")
        for dep in (s.get("depends_on") or {}):
            if dep not in active:
                fail(f"local override: {name} depends on {dep}, which does not start")
    for name in built:
        if name not in services:
            fail(f"local-images.sh builds {name}, which is no service")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docker-compose", default=shutil.which("docker-compose"))
    args = ap.parse_args()
    if not args.docker_compose:
        print("compose_test: docker-compose not found: install the Debian package "
              "docker-compose (scripts/setup.sh does)")
        return 1
    version = subprocess.run([args.docker_compose, "version", "--short"], capture_output=True,
                             text=True).stdout.strip()
    print(f"docker-compose {version}")
    full = config(args.docker_compose, ["compose.yaml"])
    config(args.docker_compose, ["compose.yaml"], profiles=["triton"])
    local = config(args.docker_compose, ["compose.yaml", "compose.local.yaml"])
    if full:
        check_full(full)
    if local:
        check_local(local)
    for f in findings:
        print(f"FAIL {f}")
    print(f"compose_test: {len(findings)} findings" if findings else
          "compose_test: compose.yaml and compose.local.yaml valid")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
