"""`fleet status` and `fleet check`: machine-readable JSON about a fleet."""

import hashlib
import json
import math
import os
import stat

from .common import FleetError, proc_alive, read_json
from .down import leftovers, load_state, recorded

MARKER = b"GUARDIA_FAULT=unhealthy"


def _load(fleet_dir):
    state = load_state(fleet_dir)
    if state is None:
        raise FleetError(f"{fleet_dir} holds no fleet")
    fleet_json = os.path.join(fleet_dir, "fleet.json")
    fleet = read_json(fleet_json) if os.path.exists(fleet_json) else None
    return state, fleet


def cmd_status(args):
    fleet_dir = os.path.realpath(args.dir)
    state, fleet = _load(fleet_dir)
    if fleet:
        procs = [{"role": p["role"], "pid": p["pid"], "alive": proc_alive(p["pid"], p.get("starttime"))}
                 for p in fleet["processes"]]
    else:
        procs = [{"role": r, "pid": pid, "alive": proc_alive(pid, st)} for r, pid, st in recorded(fleet_dir)]
    live, mounts = leftovers(fleet_dir, state)
    known = {p["pid"] for p in procs}
    stats = {}
    stats_path = os.path.join(fleet_dir, "run", "proxy-stats.json")
    if os.path.exists(stats_path):
        try:
            stats = read_json(stats_path)
        except (OSError, ValueError):
            pass
    expected_mounts = fleet["mounts"] if fleet else []
    ok = (state.get("state") == "up" and all(p["alive"] for p in procs)
          and set(expected_mounts) <= set(mounts))
    out = {
        "dir": fleet_dir, "id": state.get("id"), "state": state.get("state"), "ok": ok,
        "nodes": state.get("nodes"), "ready_s": state.get("ready_s"),
        "last_error": state.get("last_error"),
        "processes": procs,
        "other_processes": sorted(pid for pid in live if pid not in known),
        "mounts": [{"path": m, "mounted": m in mounts} for m in expected_mounts],
        "stray_mounts": [m for m in mounts if m not in expected_mounts],
        "proxies": stats,
    }
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


def _mode(st):
    return f"{stat.S_IMODE(st.st_mode):04o}"


def tree(root):
    """Content of a directory tree: files (sha256, mode, size), dirs, symlinks, digest."""
    files, dirs, links = {}, {}, {}
    for cur, dnames, fnames in os.walk(root):
        dnames.sort()
        for d in list(dnames):
            p = os.path.join(cur, d)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(p)
                dnames.remove(d)
            else:
                dirs[rel] = _mode(st)
        for f in sorted(fnames):
            p = os.path.join(cur, f)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(p)
                continue
            if not stat.S_ISREG(st.st_mode):
                files[rel] = {"sha256": None, "mode": _mode(st), "size": st.st_size, "type": "special"}
                continue
            h = hashlib.sha256()
            marked, tail = False, b""
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                    if not marked and MARKER in tail + chunk:
                        marked = True
                    tail = chunk[-(len(MARKER) - 1):]
            files[rel] = {"sha256": h.hexdigest(), "mode": _mode(st), "size": st.st_size}
            if marked:
                files[rel]["unhealthy_marker"] = True
    digest = hashlib.sha256()
    for rel in sorted(set(files) | set(dirs) | set(links)):
        if rel in files:
            digest.update(f"F {rel} {files[rel]['mode']} {files[rel]['sha256']}\n".encode())
        elif rel in dirs:
            digest.update(f"D {rel} {dirs[rel]}\n".encode())
        else:
            digest.update(f"L {rel} {links[rel]}\n".encode())
    return {"files": files, "dirs": dirs, "symlinks": links, "tree_sha256": digest.hexdigest()}


def disk_use_percent(path):
    """Capacity as `df -P` prints it (used / (used + available), rounded up)."""
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    total = used + st.f_bavail
    return math.ceil(100 * used / total) if total else 0


def check_node(n, lock_suffix, with_backups):
    app = n["deploy_path"]
    parent, base = os.path.split(app)
    out = {"deploy_path": app, "exists": os.path.isdir(app)}
    if out["exists"]:
        t = tree(app)
        out.update(t)
        out["artifact_healthy"] = not any(f.get("unhealthy_marker") for f in t["files"].values())
        try:
            with open(os.path.join(app, "VERSION")) as f:
                out["version"] = f.read(64).strip()
        except OSError:
            out["version"] = None
    out["service_running"] = os.path.exists(os.path.join(n["state_dir"], "running"))
    try:
        with open(os.path.join(n["state_dir"], "events.log")) as f:
            out["service_events"] = [line.strip() for line in f][-20:]
    except OSError:
        out["service_events"] = []
    siblings = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    backups = [s for s in siblings if s.startswith(base + ".bak_")]
    out["backups"] = backups
    if with_backups:
        out["backup_trees"] = {b: tree(os.path.join(parent, b))["tree_sha256"] for b in backups}
    lock = base + lock_suffix
    out["lock_path"] = os.path.join(parent, lock)
    out["lock_present"] = os.path.lexists(out["lock_path"])
    known = {base, lock, "bin", "state", ".fill", *backups}
    out["other_entries"] = [s for s in siblings if s not in known]
    out["disk_use_percent"] = disk_use_percent(parent) if os.path.isdir(parent) else None
    out["faults"] = [f["kind"] for f in n["faults"]]
    return out


def cmd_check(args):
    fleet_dir = os.path.realpath(args.dir)
    state, fleet = _load(fleet_dir)
    if not fleet:
        raise FleetError(f"{fleet_dir}: fleet.json missing (the fleet never came up)")
    nodes = {n["name"]: n for n in fleet["nodes"]}
    names = args.node or list(nodes)
    for name in names:
        if name not in nodes:
            raise FleetError(f"unknown node {name!r}")
    report = {"dir": fleet_dir, "state": state.get("state"),
              "nodes": {name: check_node(nodes[name], args.lock_suffix, args.backups) for name in names}}
    print(json.dumps(report, indent=2))
    return 0
