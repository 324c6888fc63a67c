#!/usr/bin/env python3
"""Renders deploy/k8s with kustomize and validates every manifest against Kubernetes' API schemas.

Run with the project's virtual environment (.venv/bin/python: kubernetes-validate, PyYAML):

  .venv/bin/python tests/deploy/k8s_test.py [--kustomize PATH] [--kubernetes-version 1.33]

For each kustomization (deploy/k8s/base, every overlay, deploy/k8s/prometheus-adapter):
  1. `kustomize build` (the real tool, v5, built by scripts/setup.sh into third_party/kustomize);
  2. every built-in kind against the OpenAPI-derived JSON schemas of kubernetes-validate (pinned
     in scripts/python/requirements.txt, offline), strict: unknown fields are errors;
  3. every ServiceMonitor against prometheus-operator's CRD schema, through the validators of
     the npm package @kubernetes-models/prometheus-operator (generated from the CRDs; offline)
     by tests/deploy/validate_crd.mjs, and against the same package's TypeScript interface with
     tsc (the CRD schema allows unknown fields; the interface's excess property check does
     not); a kind no schema knows is an error, never a skip;
  4. what no schema can say: the probes use the KServe health endpoints, the pods run as
     non-root on a read-only root file system with requests and limits, the init container
     fills the volume kiln serves, the Service, ServiceMonitor and PodDisruptionBudget select
     the Deployment's pods, the ServiceMonitor scrapes a port the Service has, the HPA targets
     the Deployment and asks for the metric the prometheus-adapter rule serves, and that rule's
     queries parse as PromQL (promtool check rules) over metrics kiln exports.
Exit 0 when everything holds, 1 with every finding otherwise.

--self-test proves the validators would fail: it breaks copies of the rendered production
manifests in known ways (an unknown field, a wrong type, a bad ServiceMonitor interval, a
missing required field, a liveness probe off the health endpoints, a writable root file system,
an HPA on another metric, a misspelt ServiceMonitor field, an invalid PromQL rule) and passes only if each one is reported.
"""

import copy

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
from kubernetes_validate import utils as kv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
K8S = os.path.join(ROOT, "deploy", "k8s")
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/production", "prometheus-adapter"]
CRD_VALIDATOR = os.path.join(HERE, "validate_crd.mjs")
# Kinds whose schema is a CRD's, validated by validate_crd.mjs.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Metrics that kiln serve exports (docs/monitoring.md), which the adapter rule may use.
KILN_METRICS = {"nv_inference_queue_duration_us", "nv_inference_request_success",
                "nv_inference_request_duration_us", "nv_inference_count",
                "nv_inference_exec_count", "nv_inference_pending_request_count"}

findings = []


def fail(where, message):
    findings.append(f"{where}: {message}")


def render(kustomize, name):
    out = subprocess.run([kustomize, "build", os.path.join(K8S, name)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        fail(name, f"kustomize build failed:\n{out.stderr}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate_builtin(name, doc, version):
    where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.absolute_path)
        fail(where, f"invalid against Kubernetes {e.version}: {path}: {e.message}")
    except kv.SchemaNotFoundError:
        fail(where, f"no Kubernetes {version} schema for {doc['apiVersion']} {doc['kind']}")


def validate_crds(docs):
    """[(where, doc)] of CRD kinds -> findings from validate_crd.mjs."""
    if not docs:
        return
    node = shutil.which("node")
    models = os.path.join(ROOT, "node_modules", "@kubernetes-models", "prometheus-operator")
    if node is None or not os.path.isdir(models):
        fail("ServiceMonitor", "needs node and node_modules/@kubernetes-models/prometheus-operator "
             "(scripts/setup.sh installs them)")
        return
    out = subprocess.run([node, CRD_VALIDATOR], input=json.dumps([d for _, d in docs]),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    if out.returncode not in (0, 1):
        fail("ServiceMonitor", f"validate_crd.mjs failed:\n{out.stderr}")
        return
    results = json.loads(out.stdout)
    for (where, _), error in zip(docs, results):
        if error:
            fail(where, f"invalid against prometheus-operator's CRD schema: {error}")


def typecheck_crds(docs):
    """[(where, doc)] of CRD kinds -> findings from tsc: the CRD's JSON schema allows unknown
    fields, the TypeScript interfaces of the same package do not (excess property checks on
    object literals), so a misspelt field is caught too."""
    if not docs:
        return
    node = shutil.which("node")
    tsc = os.path.join(ROOT, "node_modules", "typescript", "bin", "tsc")
    if node is None or not os.path.exists(tsc):
        fail("ServiceMonitor", "needs node and node_modules/typescript (scripts/setup.sh)")
        return
    types = {"ServiceMonitor": "IServiceMonitor"}
    cache = os.path.join(ROOT, ".cache")
    os.makedirs(cache, exist_ok=True)
    # Inside the checkout, so that node_modules/ resolves as for any project file.
    with tempfile.TemporaryDirectory(prefix="k8s-crd-types-", dir=cache) as tmp:
        lines, where_of = [], {}
        for kind, iface in types.items():
            lines.append(f'import type {{ {iface} }} from "@kubernetes-models/prometheus-operator/'
                         f'monitoring.coreos.com/v1/{kind}";')
        for i, (where, doc) in enumerate(docs):
            where_of[len(lines) + 1] = where
            lines.append(f"export const m{i}: {types[doc['kind']]} = {json.dumps(doc)};")
        with open(os.path.join(tmp, "check.ts"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(tmp, "tsconfig.json"), "w") as f:
            json.dump({"compilerOptions": {
                "strict": True, "noEmit": True, "module": "esnext", "moduleResolution": "bundler",
                "target": "es2022", "skipLibCheck": True, "types": []},
                "files": ["check.ts"]}, f)
        out = subprocess.run([node, tsc, "-p", os.path.join(tmp, "tsconfig.json")],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            for line in (out.stdout + out.stderr).strip().splitlines():
                m = re.match(r".*check\.ts\((\d+),\d+\): (.*)", line)
                if m:
                    fail(where_of.get(int(m.group(1)), "ServiceMonitor"),
                         f"type check: {m.group(2)}")
                elif line.strip() and not line.startswith(" "):
                    fail("ServiceMonitor", f"tsc: {line}")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def check_semantics(name, docs, adapter_metric):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = by_kind.get("Deployment", [])
    if name == "prometheus-adapter":
        return
    if len(deployments) != 1:
        fail(name, f"expected one Deployment, found {len(deployments)}")
        return
    dep = deployments[0]
    where = f"{name}: Deployment/{dep['metadata']['name']}"
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    if not selects(dep["spec"]["selector"], pod_labels):
        fail(where, "its selector does not match its pod template's labels")
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        fail(where, "pods must run as a non-root user (runAsNonRoot, runAsUser)")
    containers = spec.get("containers", [])
    kiln = next((c for c in containers if c["name"] == "kiln"), None)
    if kiln is None:
        fail(where, "no container named kiln")
        return
    for c in containers + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(where, f"container {c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(where, f"container {c['name']}: allowPrivilegeEscalation must be false")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    fail(where, f"container {c['name']}: resources.{part}.{r} missing")
    probes = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
              "livenessProbe": "/v2/health/live"}
    ports = {p["name"]: p["containerPort"] for p in kiln.get("ports", [])}
    for probe, path in probes.items():
        got = kiln.get(probe, {}).get("httpGet", {})
        if got.get("path") != path:
            fail(where, f"{probe} must GET {path} (KServe v2 health), has {got.get('path')}")
        if got.get("port") not in ports and got.get("port") not in ports.values():
            fail(where, f"{probe} port {got.get('port')} is not a port of the container")
    args = kiln.get("args", [])
    served = args[args.index("--models") + 1] if "--models" in args else None
    mounts = {m["mountPath"]: m["name"] for m in kiln.get("volumeMounts", [])}
    if served not in mounts:
        fail(where, f"kiln serves {served}, which is not a mounted volume")
    else:
        volume = mounts[served]
        fillers = [c for c in spec.get("initContainers", [])
                   if any(m["name"] == volume and not m.get("readOnly")
                          for m in c.get("volumeMounts", []))]
        if not fillers:
            fail(where, f"no init container writes the model repository volume {volume}")
    for flag, port_name in (("--port", "http"), ("--grpc-port", "grpc"),
                            ("--metrics-port", "metrics")):
        if flag in args and int(args[args.index(flag) + 1]) != ports.get(port_name):
            fail(where, f"{flag} {args[args.index(flag) + 1]} but port {port_name} is "
                 f"{ports.get(port_name)}")
    if "--host" not in args or args[args.index("--host") + 1] != "0.0.0.0":
        fail(where, "kiln must listen on 0.0.0.0 (--host) to be reachable in a pod")

    services = [s for s in by_kind.get("Service", []) if selects({"matchLabels": s["spec"].get(
        "selector", {})}, pod_labels)]
    if len(services) != 1:
        fail(name, f"expected one Service selecting kiln's pods, found {len(services)}")
    else:
        svc = services[0]
        names = {p["name"] for p in svc["spec"]["ports"]}
        for needed in ("http", "grpc", "metrics"):
            if needed not in names:
                fail(f"{name}: Service/{svc['metadata']['name']}", f"no port named {needed}")
        for sm in by_kind.get("ServiceMonitor", []):
            sw = f"{name}: ServiceMonitor/{sm['metadata']['name']}"
            if sm["metadata"].get("namespace") != svc["metadata"].get("namespace"):
                fail(sw, "not in the Service's namespace (set spec.namespaceSelector)")
            if not selects(sm["spec"].get("selector"), svc["metadata"].get("labels", {})):
                fail(sw, "its selector does not match the Service's labels")
            for ep in sm["spec"].get("endpoints", []):
                if ep.get("port") not in names:
                    fail(sw, f"endpoint port {ep.get('port')} is not a port of the Service")
    if not by_kind.get("ServiceMonitor"):
        fail(name, "no ServiceMonitor")
    for pdb in by_kind.get("PodDisruptionBudget", []) or [None]:
        if pdb is None:
            fail(name, "no PodDisruptionBudget")
        elif not selects(pdb["spec"]["selector"], pod_labels):
            fail(f"{name}: PodDisruptionBudget", "its selector does not match kiln's pods")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if len(hpas) != 1:
        fail(name, f"expected one HorizontalPodAutoscaler, found {len(hpas)}")
    else:
        hpa = hpas[0]
        hw = f"{name}: HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
            fail(hw, f"scales {ref['kind']}/{ref['name']}, not the Deployment")
        metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"].get("metrics", [])
                   if m["type"] == "Pods"]
        if adapter_metric not in metrics:
            fail(hw, f"does not scale on {adapter_metric}, the metric prometheus-adapter serves "
                 f"(it asks for {metrics})")
        replicas = dep["spec"].get("replicas", 1)
        if not hpa["spec"].get("minReplicas", 1) <= replicas <= hpa["spec"]["maxReplicas"]:
            fail(hw, f"the Deployment's {replicas} replicas are outside min..max")


def check_adapter(docs, promtool):
    """The adapter's rules: structure, and each query as PromQL via promtool. Returns the
    metric name the rule serves."""
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    if len(maps) != 1 or "config.yaml" not in maps[0].get("data", {}):
        fail("prometheus-adapter", "expected one ConfigMap with config.yaml")
        return None
    config = yaml.safe_load(maps[0]["data"]["config.yaml"])
    served = None
    rules = []
    for i, rule in enumerate(config.get("rules", [])):
        where = f"prometheus-adapter: rules[{i}]"
        for key in ("seriesQuery", "resources", "name", "metricsQuery"):
            if key not in rule:
                fail(where, f"no {key}")
        overrides = rule.get("resources", {}).get("overrides", {})
        if {v.get("resource") for v in overrides.values()} != {"namespace", "pod"}:
            fail(where, "resources must map the namespace and pod labels (per-pod metric)")
        served = rule.get("name", {}).get("as")
        query = rule.get("metricsQuery", "")
        # As the adapter fills the template for one pod.
        expr = (query.replace("<<.GroupBy>>", "namespace, pod")
                .replace("<<.LabelMatchers>>", 'namespace="kiln", pod=~"kiln-.*"'))
        used = set(re.findall(r"\b(nv_[a-z_]+|kiln_[a-z_]+)\b", expr))
        if not used or not used <= KILN_METRICS:
            fail(where, f"metricsQuery uses {sorted(used)}; kiln exports {sorted(KILN_METRICS)}")
        rules.append({"record": f"adapter:rule{i}", "expr": expr})
    if promtool is None:
        fail("prometheus-adapter", "promtool not found (Debian package prometheus)")
    elif rules:
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}, f)
            f.flush()
            out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True,
                                 text=True, timeout=60)
            if out.returncode != 0:
                fail("prometheus-adapter", f"metricsQuery is not valid PromQL:\n{out.stdout}"
                     f"{out.stderr}")
    return served


def self_test(kustomize, version, promtool):
    """Each mutation must produce at least one finding."""
    base = render(kustomize, "overlays/production")
    adapter_docs = render(kustomize, "prometheus-adapter")
    if findings:
        return False
    metric = check_adapter(adapter_docs, promtool)

    def kind(docs, k):
        return next(d for d in docs if d["kind"] == k)

    def container(docs):
        return kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]

    cases = [
        ("unknown field in a Deployment",
         lambda d: kind(d, "Deployment")["spec"].update(replica=3)),
        ("wrong type in a Service port",
         lambda d: kind(d, "Service")["spec"]["ports"][0].update(port="eight thousand")),
        ("ServiceMonitor interval that is no duration",
         lambda d: kind(d, "ServiceMonitor")["spec"]["endpoints"][0].update(interval="15 s")),
        ("ServiceMonitor without a selector",
         lambda d: kind(d, "ServiceMonitor")["spec"].pop("selector")),
        ("misspelt field in a ServiceMonitor endpoint",
         lambda d: kind(d, "ServiceMonitor")["spec"]["endpoints"][0].update(
             scrapeIntervall="15s")),
        ("liveness probe on /healthz",
         lambda d: container(d)["livenessProbe"]["httpGet"].update(path="/healthz")),
        ("writable root file system",
         lambda d: container(d)["securityContext"].update(readOnlyRootFilesystem=False)),
        ("HPA on CPU instead of the adapter's metric",
         lambda d: kind(d, "HorizontalPodAutoscaler")["spec"].update(metrics=[{
             "type": "Resource", "resource": {"name": "cpu", "target": {
                 "type": "Utilization", "averageUtilization": 70}}}])),
    ]
    ok = True
    for what, mutate in cases:
        docs = copy.deepcopy(base)
        mutate(docs)
        findings.clear()
        crd = []
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                crd.append((doc["kind"], doc))
            else:
                validate_builtin("mutated", doc, version)
        check_semantics("mutated", docs, metric)
        validate_crds(crd)
        typecheck_crds(crd)
        print(f"{'caught' if findings else 'MISSED'}: {what}"
              + (f" ({findings[0][:100]})" if findings else ""))
        ok = ok and bool(findings)
    findings.clear()
    broken = copy.deepcopy(adapter_docs)
    cm = kind(broken, "ConfigMap")
    cm["data"]["config.yaml"] = cm["data"]["config.yaml"].replace("[2m]))", "[2m]))))", 1)
    check_adapter(broken, promtool)
    print(f"{'caught' if findings else 'MISSED'}: adapter query that is not PromQL")
    ok = ok and bool(findings)
    findings.clear()
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kustomize",
                    default=os.path.join(ROOT, "third_party", "kustomize", "bin", "kustomize"))
    ap.add_argument("--kubernetes-version", default="1.33",
                    help="the Kubernetes API version to validate against (default 1.33)")
    ap.add_argument("--promtool", default=shutil.which("promtool"))
    ap.add_argument("--self-test", action="store_true",
                    help="break the manifests on purpose; pass only if every break is caught")
    args = ap.parse_args()
    if not os.access(args.kustomize, os.X_OK):
        print(f"k8s_test: kustomize not found at {args.kustomize}: run scripts/setup.sh")
        return 1
    version = subprocess.run([args.kustomize, "version"], capture_output=True, text=True)
    print(f"kustomize {version.stdout.strip()}, kubernetes-validate schemas for "
          f"{args.kubernetes_version}")

    if args.self_test:
        ok = self_test(args.kustomize, args.kubernetes_version, args.promtool)
        print("k8s_test --self-test: every break caught" if ok else
              "k8s_test --self-test: a break went unnoticed")
        return 0 if ok else 1

    rendered = {name: render(args.kustomize, name) for name in KUSTOMIZATIONS}
    adapter_metric = check_adapter(rendered["prometheus-adapter"], args.promtool)
    crd_docs = []
    counts = {}
    for name, docs in rendered.items():
        for doc in docs:
            key = (doc["apiVersion"], doc["kind"])
            counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
            if key in CRD_KINDS:
                crd_docs.append((f"{name}: {doc['kind']}/{doc['metadata']['name']}", doc))
            else:
                validate_builtin(name, doc, args.kubernetes_version)
        check_semantics(name, docs, adapter_metric)
    validate_crds(crd_docs)
    typecheck_crds(crd_docs)
    total = sum(counts.values())
    print(f"{len(rendered)} kustomizations, {total} manifests ("
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")")
    for f in findings:
        print(f"FAIL {f}")
    print(f"k8s_test: {len(findings)} findings" if findings else
          f"k8s_test: every manifest valid ({total} in {len(rendered)} kustomizations)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
