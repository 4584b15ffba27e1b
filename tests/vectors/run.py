#!/usr/bin/env python3
"""Run the conformance vectors against any implementation (python3 standard library only).

usage: run.py --verify-cmd 'CMD {archive} {passfile}' [--extract-cmd 'CMD {archive} {passfile} {dest}']
              [--only SUBSTRING] [--json] [DIR]

Each command is a shell command line; {archive}, {passfile} and {dest} are replaced by
shell-quoted paths. The passphrase file holds the vector's passphrase and one LF (PASS-1).
The outcome is read from the exit code (0 ok, 10-20 by class, SPEC.md ERR-3), or with --json
from `error.class` of a JSON document on stdout (qbackup-verify's --json). With
--extract-cmd, the files written under {dest} are compared with the expectation (README.md).
Vector-specific arguments (`args`, e.g. --ignore-backup-size) are appended to the command.

Example (this repository's verifier):
  tests/vectors/run.py --json \\
    --verify-cmd 'target/release/qbackup-verify verify --json --passphrase-file {passfile} {archive}' \\
    --extract-cmd 'target/release/qbackup-verify extract --json --passphrase-file {passfile} --to {dest} {archive}'
"""
import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile

CODES = {"ok": 0, "wrong-passphrase": 10, "header-failure": 11, "mac-failure": 12,
         "order-failure": 13, "missing-data": 14, "limit-exceeded": 15, "unsafe-path": 16,
         "malformed": 17, "truncated": 18, "unsupported": 19, "io": 20}
BY_CODE = {v: k for k, v in CODES.items()}


def outcome(cmd, use_json):
    p = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if use_json and p.returncode != 0:
        try:
            return json.loads(p.stdout)["error"]["class"], p.returncode
        except (ValueError, KeyError, TypeError):
            pass
    return BY_CODE.get(p.returncode, "exit %d" % p.returncode), p.returncode


def check_tree(doc, dest, ok):
    allowed = dict(doc.get("files", {})) if ok else {**doc["committed"], **doc["may_commit"]}
    required = set(doc.get("files", {})) | set(doc.get("symlinks", {})) if ok else set(doc["committed"])
    links = doc.get("symlinks", {}) if ok else {}
    seen = set()
    for root, dirs, files in os.walk(dest):
        for n in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, dest)
            if os.path.islink(p):
                if links.get(rel) != os.readlink(p):
                    return "unexpected symlink %s" % rel
            elif rel not in allowed:
                return "unexpected output %s" % rel
            else:
                with open(p, "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() != allowed[rel]:
                        return "%s: wrong content" % rel
            seen.add(rel)
    missing = sorted(required - seen)
    return "missing %s" % missing if missing else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verify-cmd", required=True)
    ap.add_argument("--extract-cmd")
    ap.add_argument("--json", action="store_true", help="read error.class from JSON on stdout")
    ap.add_argument("--only")
    ap.add_argument("dir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    names = sorted(f[:-5] for f in os.listdir(a.dir) if f.endswith(".json"))
    failed = 0
    for name in names:
        if a.only and a.only not in name:
            continue
        with open(os.path.join(a.dir, name + ".json")) as f:
            doc = json.load(f)
        archive = os.path.join(a.dir, name + ".bin")
        extra = " ".join(shlex.quote(x) for x in doc.get("args", []))
        with tempfile.TemporaryDirectory() as tmp:
            pf = os.path.join(tmp, "passphrase")
            with open(pf, "wb") as f:
                f.write(doc["passphrase"].encode() + b"\n")
            subst = {"archive": shlex.quote(archive), "passfile": shlex.quote(pf),
                     "dest": shlex.quote(os.path.join(tmp, "out"))}
            problems = []
            got, code = outcome(a.verify_cmd.format(**subst) + " " + extra, a.json)
            if got != doc["expect"] or code != CODES[doc["expect"]]:
                problems.append("verify: want %s, got %s (exit %d)" % (doc["expect"], got, code))
            if a.extract_cmd:
                want = doc.get("extract_expect", doc["expect"])
                got, code = outcome(a.extract_cmd.format(**subst) + " " + extra, a.json)
                if got != want or code != CODES[want]:
                    problems.append("extract: want %s, got %s (exit %d)" % (want, got, code))
                else:
                    d = os.path.join(tmp, "out")
                    err = check_tree(doc, d, want == "ok") if os.path.isdir(d) else (
                        "nothing extracted" if want == "ok" or doc["committed"] else None)
                    if err:
                        problems.append("extract: " + err)
        if problems:
            failed += 1
            print("FAIL %s: %s" % (name, "; ".join(problems)))
    total = len([n for n in names if not a.only or a.only in n])
    print("%d of %d vectors passed" % (total - failed, total))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
