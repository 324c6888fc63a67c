#!/usr/bin/env python3
"""Kiln's dependency arrows, checked against the code (ctest: layering, layering_catches_*).

The build writes kiln_layering.json (src/CMakeLists.txt): every library's folder, sources and
the libraries it links. A library's public headers are include/kiln/<folder>/*.h, its internal
headers src/<folder>/*.h. This script fails (exit 1, one line per finding, with the fix) when:
  * a source or header of a library includes a header of a library it does not link, directly
    or through a library that passes it on (a PUBLIC dependency); header-only types included
    this way would otherwise compile and link by accident;
  * a header under include/kiln/ belongs to no library's folder, or a library's source lies
    outside its folder (a file a newcomer would not find where the table says);
  * the table in src/README.md ("| `kiln_x` | folder | uses |") differs from what the build
    links.
--add-source LIB=FILE adds a file to a library first, and --expect-violation 'LIB -> DEP' turns
the check around: it passes only if that violation is found (the test that proves the check
would catch a wrong include).
"""
import argparse
import json
import os
import re
import sys

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
LINK_ONLY_RE = re.compile(r"^\$<LINK_ONLY:(.+)>$")


def load_map(path):
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    libs = {}
    for name, e in raw.items():
        if not name:
            continue
        d = e.get("KILN_DIR", "")
        if d.endswith("NOTFOUND"):
            d = ""
        libs[name] = {
            "dir": d,
            "sources": [s for s in e["SOURCES"] if s],
            "link": [x for x in e["LINK_LIBRARIES"] if x],
            "interface": [x for x in e["INTERFACE_LINK_LIBRARIES"] if x],
            "generated": [x for x in e["KILN_GENERATED_HEADERS"] if x],
        }
    return libs


def public_deps(libs, name):
    """What `name` passes on to its users: its interface entries that are not LINK_ONLY."""
    out = []
    for x in libs[name]["interface"]:
        if LINK_ONLY_RE.match(x):
            continue
        if x in libs:
            out.append(x)
    return out


def allowed(libs, name):
    """Libraries whose headers `name`'s own code may include."""
    seen = {name}
    stack = [x for x in libs[name]["link"] if x in libs]
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        stack.extend(public_deps(libs, x))
    return seen


def owner_of_header(libs, include, including_file, root):
    """The library an #include "..." names, or None for a header outside Kiln's libraries."""
    if include.startswith("kiln/"):
        folder = os.path.dirname(include[len("kiln/"):])
        for name, e in libs.items():
            if e["dir"] == folder:
                return name
        return "?" + folder
    for name, e in libs.items():
        if os.path.basename(include) in e["generated"]:
            return name
    # A header next to the including file: internal to the library of that folder.
    local = os.path.normpath(os.path.join(os.path.dirname(including_file), include))
    if os.path.exists(local):
        rel = os.path.relpath(local, root)
        if rel.startswith("src" + os.sep):
            folder = os.path.dirname(rel[len("src" + os.sep):])
            for name, e in libs.items():
                if e["dir"] == folder:
                    return name
    return None


def files_of(libs, name, root):
    """A library's sources, internal headers (src/<dir>/*.h) and public headers."""
    e = libs[name]
    files = []
    for s in e["sources"]:
        path = s if os.path.isabs(s) else os.path.join(root, "src", s)
        if os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) != os.path.abspath(root):
            continue  # generated into the build folder
        files.append(path)
    if e["dir"]:
        for base in (os.path.join(root, "src", e["dir"]), os.path.join(root, "include", "kiln", e["dir"])):
            if os.path.isdir(base):
                files += [os.path.join(base, f) for f in sorted(os.listdir(base)) if f.endswith(".h")]
    return files


def readme_table(path):
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\|\s*`(kiln\w*)`\s*\|\s*`?([^|`]*)`?\s*\|([^|]*)\|", line)
            if m:
                uses = set(re.findall(r"`?(kiln_\w+)`?", m.group(3)))
                rows[m.group(1)] = (m.group(2).strip(), uses)
    return rows


def check(libs, root, readme):
    findings = []
    for name in sorted(libs):
        ok = allowed(libs, name)
        e = libs[name]
        for path in files_of(libs, name, root):
            rel = os.path.relpath(path, root)
            if e["dir"] and path.startswith(os.path.join(root, "src")) and path.endswith(".cc"):
                folder = os.path.dirname(os.path.relpath(path, os.path.join(root, "src")))
                if folder != e["dir"]:
                    findings.append(f"{rel}: a source of {name} outside src/{e['dir']}/ (move it there)")
            try:
                text = open(path, encoding="utf-8").read()
            except OSError as err:
                findings.append(f"{rel}: cannot read: {err}")
                continue
            for inc in INCLUDE_RE.findall(text):
                owner = owner_of_header(libs, inc, path, root)
                if owner is None or owner in ok:
                    continue
                if owner.startswith("?"):
                    findings.append(f"{rel}: #include \"{inc}\": include/kiln/{owner[1:]}/ is no "
                                    "library's folder")
                    continue
                findings.append(f"{rel}: {name} -> {owner}: #include \"{inc}\" crosses the arrows "
                                f"({name} may use {', '.join(sorted(ok - {name})) or 'nothing'}); "
                                f"link {owner} in src/CMakeLists.txt and src/README.md if the arrow "
                                "is right, else move the code")
    # Every public header belongs to a library.
    folders = {e["dir"] for e in libs.values()}
    inc_root = os.path.join(root, "include", "kiln")
    for dirpath, _, names in os.walk(inc_root):
        folder = os.path.relpath(dirpath, inc_root)
        if any(n.endswith(".h") for n in names) and folder not in folders:
            findings.append(f"include/kiln/{folder}/: headers of no library (src/{folder}/ has no "
                            "kiln_library)")
    # The README's table is the build's.
    table = readme_table(readme)
    for name, e in sorted(libs.items()):
        if not e["dir"] and name != "kiln":
            continue
        built = {x for x in e["link"] if x in libs and libs[x]["dir"]}
        if name not in table:
            findings.append(f"src/README.md: no row for {name}")
            continue
        folder, uses = table[name]
        if folder != e["dir"]:
            findings.append(f"src/README.md: {name} lives in '{e['dir']}', the table says '{folder}'")
        if uses != built:
            findings.append(f"src/README.md: {name} uses {', '.join(sorted(built)) or 'nothing'} "
                            f"in the build, the table says {', '.join(sorted(uses)) or 'nothing'}")
    for name in sorted(set(table) - set(libs)):
        findings.append(f"src/README.md: {name} is no target of the build")
    return findings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", required=True, help="kiln_layering.json from the build folder")
    ap.add_argument("--root", required=True, help="the source tree")
    ap.add_argument("--add-source", action="append", default=[], metavar="LIB=FILE")
    ap.add_argument("--expect-violation", metavar="'LIB -> DEP'")
    a = ap.parse_args()
    libs = load_map(a.map)
    root = os.path.abspath(a.root)
    for spec in a.add_source:
        lib, _, path = spec.partition("=")
        if lib not in libs:
            print(f"--add-source: no library {lib}", file=sys.stderr)
            return 2
        libs[lib]["sources"].append(os.path.abspath(path))
    findings = check(libs, root, os.path.join(root, "src", "README.md"))
    if a.expect_violation:
        hits = [f for f in findings if f" {a.expect_violation}: " in f]
        for f in findings:
            print(("expected: " if f in hits else "") + f)
        if not hits:
            print(f"FAIL: the violation {a.expect_violation} was not found")
            return 1
        print(f"ok: the check catches {a.expect_violation}")
        return 0
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} layering finding(s)")
        return 1
    print(f"layering: {len(libs)} targets, every #include within the arrows, src/README.md agrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
