#!/usr/bin/python3
"""Checks what promtool does not: every alert in rules/*.rules.yml has a `for`, a severity label
(page or ticket), summary, description and runbook_url annotations, a runbook_url pointing at
its own section of docs/monitoring.md (a "### AlertName" heading there), and at least one
promtool test case in tests/*_test.yml where it fires and one where it does not.

  check_alerts.py [--docs docs/monitoring.md]

Python standard library only, so it reads the YAML of these files by their layout (one rule per
"- alert:" item, indented as in rules/); promtool check rules has already checked the YAML.
"""

import argparse
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ITEM = re.compile(r"^\s*- (alert|record|name):\s*(\S+)")


def alerts(path):
    """(name, block text) of each alert in a rules file."""
    out, name, block = [], None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = ITEM.match(line)
            if m:
                if name:
                    out.append((name, "".join(block)))
                name, block = (m.group(2), []) if m.group(1) == "alert" else (None, [])
            elif name:
                block.append(line)
    if name:
        out.append((name, "".join(block)))
    return out


def test_cases(path):
    """(alertname, fires) of each alert_rule_test case in a promtool test file."""
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^\s*- alertname:\s*(\S+)", line)
        if not m:
            continue
        for nxt in lines[i + 1:]:
            e = re.match(r"^\s*exp_alerts:\s*(.*)$", nxt)
            if e:
                out.append((m.group(1), e.group(1).strip() != "[]"))
                break
            if re.match(r"^\s*- alertname:", nxt):
                break
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", default=os.path.join(REPO, "docs", "monitoring.md"))
    a = p.parse_args()
    errors = []
    try:
        with open(a.docs, encoding="utf-8") as f:
            headings = {m.group(1) for m in re.finditer(r"^### (\S+)\s*$", f.read(), re.M)}
    except OSError as e:
        errors.append(str(e))
        headings = set()
    cases = {}
    for t in sorted(glob.glob(os.path.join(HERE, "tests", "*_test.yml"))):
        for name, fires in test_cases(t):
            cases.setdefault(name, set()).add(fires)
    seen = []
    for rules in sorted(glob.glob(os.path.join(HERE, "rules", "*.rules.yml"))):
        rel = os.path.relpath(rules, REPO)
        for name, block in alerts(rules):
            seen.append(name)
            where = f"{rel}: {name}"
            if not re.search(r"^\s+for:\s*[1-9][0-9]*[smhdw]\s*$", block, re.M):
                errors.append(f"{where}: no `for` (a positive duration)")
            if not re.search(r"^\s+severity:\s*(page|ticket)\s*$", block, re.M):
                errors.append(f"{where}: no severity label page or ticket")
            for key in ("summary", "description"):
                if not re.search(rf"^\s+{key}:\s*\S", block, re.M):
                    errors.append(f"{where}: no {key} annotation")
            url = f'docs/monitoring.md#{name.lower()}'
            if not re.search(rf'^\s+runbook_url:\s*"?{re.escape(url)}"?\s*$', block, re.M):
                errors.append(f"{where}: runbook_url is not {url}")
            if name not in headings:
                errors.append(f"{where}: {os.path.relpath(a.docs, REPO)} has no '### {name}' runbook")
            got = cases.get(name, set())
            if True not in got:
                errors.append(f"{where}: no promtool test case where it fires")
            if False not in got:
                errors.append(f"{where}: no promtool test case where it does not fire")
    for name in sorted(set(cases) - set(seen)):
        errors.append(f"tests: alert {name} is tested but defined in no rules file")
    if len(seen) != len(set(seen)):
        errors.append("rules: an alert name is defined twice")
    for e in errors:
        print("check_alerts.py: " + e, file=sys.stderr)
    if errors:
        return 1
    print(f"{len(seen)} alerts: each has for, severity, summary, description, its runbook and "
          "promtool cases firing and not firing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
