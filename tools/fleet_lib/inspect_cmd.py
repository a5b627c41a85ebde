"""`fleet status` and `fleet check`: machine-readable JSON about a fleet.

`check` reads trees the node user owns (usually as root): it never follows a symlink
(symlinks are reported with their target), never blocks on a FIFO, and reports a file or
directory it cannot read as an entry with an "error" instead of failing.
"""

import errno
import hashlib
import json
import math
import os
import stat

from .common import (NOFOLLOW_DIR, FleetError, load_state, lstat_nofollow, open_dir_nofollow, open_file_nofollow,
                     proc_alive, read_file_nofollow, read_json)
from .down import leftovers, recorded

MARKER = b"GUARDIA_FAULT=unhealthy"
MAX_DEPTH = 64


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


def _err(e):
    return f"{type(e).__name__}: {e.strerror or e}"


def _hash_file(name, dfd, st):
    """{"sha256", "mode", "size"[, "unhealthy_marker"]} of a regular file, or with "error"."""
    out = {"sha256": None, "mode": _mode(st), "size": st.st_size}
    try:
        fd = open_file_nofollow(name, dfd)
    except OSError as e:
        return out | {"error": _err(e)}
    h = hashlib.sha256()
    marked, tail = False, b""
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
            if not marked and MARKER in tail + chunk:
                marked = True
            tail = chunk[-(len(MARKER) - 1):]
    except OSError as e:
        return out | {"error": _err(e)}
    finally:
        os.close(fd)
    out["sha256"] = h.hexdigest()
    if marked:
        out["unhealthy_marker"] = True
    return out


def tree(root):
    """Content of the directory tree at root (never following a symlink, root included):
    files (sha256, mode, size; "error" if unreadable), dirs (mode), symlinks (target),
    errors (unlistable directories), one digest of it all."""
    files, dirs, links, errors = {}, {}, {}, {}

    def walk(dfd, prefix, depth):
        try:
            names = sorted(os.listdir(dfd))
        except OSError as e:
            errors[prefix.rstrip("/") or "."] = _err(e)
            return
        for name in names:
            rel = prefix + name
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError as e:
                errors[rel] = _err(e)
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    links[rel] = os.readlink(name, dir_fd=dfd)
                except OSError as e:
                    links[rel] = None
                    errors[rel] = _err(e)
            elif stat.S_ISDIR(st.st_mode):
                dirs[rel] = _mode(st)
                if depth >= MAX_DEPTH:
                    errors[rel] = "too deep: not descended"
                    continue
                try:
                    sub = os.open(name, NOFOLLOW_DIR, dir_fd=dfd)
                except OSError as e:
                    errors[rel] = _err(e)
                    continue
                try:
                    walk(sub, rel + "/", depth + 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                files[rel] = _hash_file(name, dfd, st)
            else:
                files[rel] = {"sha256": None, "mode": _mode(st), "size": st.st_size, "type": "special"}

    fd = open_dir_nofollow(root)
    try:
        walk(fd, "", 0)
    finally:
        os.close(fd)
    digest = hashlib.sha256()
    for rel in sorted(set(files) | set(dirs) | set(links) | set(errors)):
        if rel in files:
            f = files[rel]
            digest.update(f"F {rel} {f['mode']} {f['sha256'] or 'ERROR ' + f.get('error', f.get('type', ''))}\n".encode())
        elif rel in dirs:
            digest.update(f"D {rel} {dirs[rel]}\n".encode())
        elif rel in links:
            digest.update(f"L {rel} {links[rel]}\n".encode())
        if rel in errors:
            digest.update(f"E {rel} {errors[rel]}\n".encode())
    out = {"files": files, "dirs": dirs, "symlinks": links, "tree_sha256": digest.hexdigest()}
    if errors:
        out["errors"] = errors
    return out


def entry(path):
    """("dir"|"symlink"|"missing"|"other", symlink target or error) for path, not following."""
    st = lstat_nofollow(path)
    if st is None:
        return "missing", None
    if stat.S_ISDIR(st.st_mode):
        return "dir", None
    if stat.S_ISLNK(st.st_mode):
        try:
            dfd = open_dir_nofollow(os.path.dirname(path), listable=False)
            try:
                return "symlink", os.readlink(os.path.basename(path), dir_fd=dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            return "symlink", _err(e)
    return "other", None


def safe_tree(path):
    """tree(path), or {"error": ...} if it cannot be read."""
    try:
        return tree(path)
    except OSError as e:
        return {"files": {}, "dirs": {}, "symlinks": {}, "tree_sha256": None, "error": _err(e)}


def disk_use_percent(path):
    """Capacity as `df -P` prints it (used / (used + available), rounded up)."""
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    total = used + st.f_bavail
    return math.ceil(100 * used / total) if total else 0


def check_node(n, lock_suffix, with_backups):
    app = n["deploy_path"]
    parent, base = os.path.split(app)
    kind, target = entry(app)
    out = {"deploy_path": app, "exists": kind == "dir"}
    if kind == "symlink":
        out["deploy_path_symlink"] = target      # reported, never followed
    elif kind == "other":
        out["deploy_path_type"] = "not a directory"
    if out["exists"]:
        t = safe_tree(app)
        out.update(t)
        out["artifact_healthy"] = not any(f.get("unhealthy_marker") for f in t["files"].values())
        try:
            out["version"] = read_file_nofollow(os.path.join(app, "VERSION"), 64).decode(errors="replace").strip()
        except OSError:
            out["version"] = None
    st = lstat_nofollow(os.path.join(n["state_dir"], "running"))
    out["service_running"] = st is not None and stat.S_ISREG(st.st_mode)
    try:
        events = read_file_nofollow(os.path.join(n["state_dir"], "events.log"), 65536, tail=True)
        out["service_events"] = [line.strip() for line in events.decode(errors="replace").splitlines()][-20:]
    except OSError as e:
        out["service_events"] = []
        if e.errno != errno.ENOENT:
            out["service_events_error"] = _err(e)
    try:
        dfd = open_dir_nofollow(parent)
        try:
            siblings = sorted(os.listdir(dfd))
        finally:
            os.close(dfd)
    except OSError as e:
        siblings = []
        out["node_dir_error"] = _err(e)
    marker = base + ".guardia-release"  # Guardia's release marker and the copies saved with backups
    backups = [s for s in siblings if s.startswith(base + ".bak_") and not s.endswith(".guardia-release")]
    out["backups"] = backups
    if with_backups:
        out["backup_trees"] = {}
        for b in backups:
            bkind, btarget = entry(os.path.join(parent, b))
            out["backup_trees"][b] = (safe_tree(os.path.join(parent, b))["tree_sha256"] if bkind == "dir"
                                      else f"symlink -> {btarget}" if bkind == "symlink" else None)
    lock = base + lock_suffix
    out["lock_path"] = os.path.join(parent, lock)
    out["lock_present"] = os.path.lexists(out["lock_path"])
    try:
        out["release_marker"] = json.loads(read_file_nofollow(os.path.join(parent, marker), 65536).decode())
    except (OSError, ValueError):
        out["release_marker"] = None
    out["saved_markers"] = {b: (os.path.exists(os.path.join(parent, b + ".guardia-release"))) for b in backups}
    known = {base, lock, marker, "bin", "state", ".fill", *backups, *(b + ".guardia-release" for b in backups)}
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
