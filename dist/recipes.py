#!/usr/bin/env python3
"""Run the README's recipes (the fenced blocks after `<!-- recipe: NAME [FILE] -->`) as
written, with only their dom0 paths moved into a temporary directory, and stand-ins for
what CI lacks: `qvm-run --pass-io … VM CMD` runs CMD here with `sh -c`, `rclone rcat
remote:PATH` writes below the temporary directory. The qbackup binaries on PATH are the
static ones (dist/build.sh). Each recipe's result is checked: the archive it wrote
verifies and holds the VM's data; the rescue restore gives back the image byte for byte.

Usage: dist/recipes.py BINDIR   (run by dist/check.sh)
"""
import json, os, re, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(msg):
    sys.exit(f"dist/recipes.py: FAIL: {msg}")


def recipes():
    text = open(os.path.join(ROOT, "README.md")).read()
    found = {}
    for m in re.finditer(r"<!-- recipe: (\S+)(?: (\S+))? -->\n```\w*\n(.*?)```", text, re.S):
        found[m.group(1)] = (m.group(2), m.group(3))
    want = {"to-qube", "rclone", "systemd-service", "systemd-timer", "rescue"}
    if set(found) != want:
        fail(f"README recipes {sorted(found)}, expected {sorted(want)}")
    return found


SHIMS = {
    "qvm-run": """#!/bin/sh
# qvm-run --pass-io [--no-gui] [--dispvm=…] VM CMD: run CMD here.
while [ $# -gt 2 ]; do shift; done
case "$1" in --*) echo "qvm-run stand-in: no VM" >&2; exit 2 ;; esac
exec sh -c "$2"
""",
    "rclone": """#!/bin/sh
# rclone rcat remote:PATH: stdin to $RCLONE_ROOT/PATH.
[ "$1" = rcat ] || { echo "rclone stand-in: only rcat" >&2; exit 2; }
dest="$RCLONE_ROOT/${2#*:}"
mkdir -p "$(dirname "$dest")" && exec cat > "$dest"
""",
}


def main():
    bindir = os.path.abspath(sys.argv[1])
    found = recipes()
    t = tempfile.mkdtemp(prefix="qbackup-recipes-")
    try:
        run_all(found, bindir, t)
    finally:
        shutil.rmtree(t, ignore_errors=True)


def run_all(found, bindir, t):
    moved = {
        "/etc/qbackup": f"{t}/etc",
        "/var/backups": f"{t}/backups",
        "/home/user/backups": f"{t}/backupvm",
        "/mnt/usb": f"{t}/usb",
        "/mnt/restore": f"{t}/restore",
    }
    for d in list(moved.values()) + [f"{t}/shims", f"{t}/rclone"]:
        os.makedirs(d, exist_ok=True)
    for name, body in SHIMS.items():
        p = f"{t}/shims/{name}"
        open(p, "w").write(body)
        os.chmod(p, 0o755)
    # The VM: a sparse 64 MiB private image with 3 MiB of data.
    img = f"{t}/private.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
        f.seek(5 << 20)
        f.write(os.urandom(1 << 20) + b"qbackup recipe\n" * 140000)
    json.dump({"vms": [{"name": "work", "class": "AppVM", "label": "red",
                        "volumes": [{"name": "private", "path": img}], "files": []}]},
              open(f"{t}/etc/plan.json", "w"))
    open(f"{t}/etc/passphrase", "w").write("recipe passphrase\n")
    env = dict(os.environ, PATH=f"{t}/shims:{bindir}:/usr/bin:/bin", RCLONE_ROOT=f"{t}/rclone")
    env.pop("QBACKUP_PASSPHRASE", None)

    def place(text):
        for a, b in moved.items():
            text = text.replace(a, b)
        return text

    def run(name, script, **kw):
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", place(script)], env=kw.get("env", env),
                           capture_output=True, text=True, cwd=kw.get("cwd", t))
        if r.returncode != 0:
            fail(f"{name} exited {r.returncode}: {r.stderr}")
        return r

    def verified(name, archive):
        if not os.path.exists(archive):
            fail(f"{name}: no {archive}")
        r = subprocess.run([f"{bindir}/qbackup-verify", "verify", "--json", "--passphrase-file",
                            f"{t}/etc/passphrase", archive], capture_output=True, text=True)
        doc = json.loads(r.stdout or "{}")
        if r.returncode != 0 or not doc.get("ok") or doc.get("schema") != 1:
            fail(f"{name}: {archive} does not verify: {r.stdout} {r.stderr}")
        files = [f["path"] for v in doc["vms"] for f in v["files"]]
        if "vm1/private.img" not in files and not any(p.endswith("/private.img") for p in files):
            fail(f"{name}: no private.img in {files}")
        print(f"dist/recipes.py: ok: {name}")

    run("to-qube", found["to-qube"][1])
    verified("to-qube", f"{t}/backupvm/qubes-backup.bin")
    run("rclone", found["rclone"][1])
    verified("rclone", f"{t}/rclone/qubes/qubes-backup.bin")

    # systemd: the service's ExecStart, `%%` unescaped as systemd does; the timer's shape.
    unit, service = found["systemd-service"]
    exec_start = [l for l in service.splitlines() if l.startswith("ExecStart=")]
    if unit != "qbackup-nightly.service" or len(exec_start) != 1:
        fail(f"systemd service {unit}: {exec_start}")
    cmd = exec_start[0][len("ExecStart="):].replace("%%", "%")
    r = run("systemd-service", cmd)
    events = [json.loads(l) for l in r.stderr.splitlines()]  # only JSON lines, or this fails
    if not events or events[-1].get("event") != "done" or any(e.get("schema") != 1 for e in events):
        fail(f"systemd-service: stderr events {events[-3:]}")
    if not any(e["event"] == "progress" for e in events):
        fail("systemd-service: no progress event")
    verified("systemd-service", events[-1]["out"])
    timer_name, timer = found["systemd-timer"]
    for needed in ("OnCalendar=", "Persistent=true", "WantedBy=timers.target"):
        if needed not in timer:
            fail(f"{timer_name} lacks {needed}")
    if shutil.which("systemd-analyze"):
        units = f"{t}/units"
        os.makedirs(units)
        open(f"{units}/{unit}", "w").write(service)
        open(f"{units}/{timer_name}", "w").write(timer)
        r = subprocess.run(["systemd-analyze", "verify", f"{units}/{unit}", f"{units}/{timer_name}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"systemd-analyze verify: {r.stderr}")
        print("dist/recipes.py: ok: systemd units (systemd-analyze verify)")
    else:
        print("dist/recipes.py: note: no systemd-analyze here; the timer was checked by its keys only")

    # Rescue: only the static binary, the archive and the passphrase, an empty environment.
    shutil.copy(f"{bindir}/qbackup-verify", f"{t}/usb/qbackup-verify")
    shutil.copy(f"{t}/backupvm/qubes-backup.bin", f"{t}/usb/qubes-backup.bin")
    shutil.copy(f"{t}/etc/passphrase", f"{t}/usb/passphrase.txt")
    r = run("rescue", found["rescue"][1], env={"PATH": "/usr/bin:/bin"})
    if "private.img" not in r.stdout:
        fail(f"rescue: ls shows {r.stdout!r}")
    if open(f"{t}/restore/work/private.img", "rb").read() != open(img, "rb").read():
        fail("rescue: the restored private.img differs from the original")
    print("dist/recipes.py: ok: rescue (static binary only, image restored byte for byte)")


if __name__ == "__main__":
    main()
