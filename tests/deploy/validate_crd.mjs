// Validates custom resources against their CRD's schema, offline: reads a JSON array of
// manifests on stdin and prints a JSON array with, for each, null (valid) or the error. Exit 0
// when all are valid, 1 otherwise. The schemas are those of the npm package
// @kubernetes-models/prometheus-operator (generated from prometheus-operator's CRDs;
// scripts/setup.sh installs it). Used by tests/deploy/k8s_test.py.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = { "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor };

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((doc) => {
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) return `no CRD schema known for ${doc.apiVersion} ${doc.kind}`;
  try {
    new Model(doc).validate();
    return null;
  } catch (e) {
    return String(e.message);
  }
});
process.stdout.write(JSON.stringify(results) + "\n");
process.exit(results.every((r) => r === null) ? 0 : 1);
