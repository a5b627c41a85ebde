"""`fleet down`: stop everything a fleet started, unmount its tmpfs, verify nothing is left."""

import concurrent.futures
import json
import os
import shutil
import sys

from .common import (STATE_FILE, FleetError, fleet_processes, kill_processes, mounts_under, my_ancestors,
                     proc_alive, proc_cmdline, read_json, terminate, unmount, write_json_atomic)


def recorded(fleet_dir):
    """[(role, pid, starttime)] of every process `up` started (also superseded ones)."""
    out = []
    try:
        with open(os.path.join(fleet_dir, "run", "pids.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                    out.append((r["role"], r["pid"], r.get("starttime")))
                except (ValueError, KeyError):
                    continue
    except OSError:
        pass
    return out


def recorded_mounts(fleet_dir):
    try:
        with open(os.path.join(fleet_dir, "run", "mounts")) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []


def leftovers(fleet_dir, state):
    """(processes {pid: Proc}, mount points) still belonging to the fleet."""
    roots = {pid for _, pid, st in recorded(fleet_dir) if proc_alive(pid, st)}
    procs = fleet_processes(fleet_dir, state.get("id"), state.get("uid"), roots)
    return procs, mounts_under(fleet_dir)


def teardown(fleet_dir, state):
    """Kill every fleet process, unmount every fleet mount; [problem, ...] if anything is left."""
    fleet_id, uid = state.get("id"), state.get("uid")
    # an `up` still running (e.g. stuck, or killed while its children live on) goes first
    up_pid = state.get("up_pid")
    if up_pid and up_pid not in my_ancestors() and proc_alive(up_pid, state.get("up_starttime")) \
            and fleet_dir in proc_cmdline(up_pid):
        try:
            os.kill(up_pid, 9)
        except OSError:
            pass

    def find():
        roots = {pid for _, pid, st in recorded(fleet_dir) if proc_alive(pid, st)}
        return fleet_processes(fleet_dir, fleet_id, uid, roots)

    # the supervisor ("server") reaps the others as they die, so it goes last, gracefully
    supervisors = {pid: st for role, pid, st in recorded(fleet_dir)
                   if role == "server" and pid not in my_ancestors() and proc_alive(pid, st)}
    kill_processes(find, spare=supervisors)
    for pid, st in supervisors.items():
        terminate(pid, st)
    left = kill_processes(find)
    problems = []
    if left:
        problems.append("processes still alive: " + ", ".join(
            f"{pid} ({p.comm})" for pid, p in sorted(left.items())))
    mounts = sorted(set(recorded_mounts(fleet_dir)) | set(mounts_under(fleet_dir)), key=len, reverse=True)
    for mp in mounts:
        if not unmount(mp):
            problems.append(f"cannot unmount {mp}")
    for name in os.listdir(os.path.join(fleet_dir, "sshd")) if os.path.isdir(os.path.join(fleet_dir, "sshd")) else ():
        if name.endswith(".pid"):
            os.unlink(os.path.join(fleet_dir, "sshd", name))
    procs, mounts = leftovers(fleet_dir, state)
    if procs and not left:
        problems.append("processes still alive: " + ", ".join(f"{pid} ({p.comm})" for pid, p in sorted(procs.items())))
    if mounts:
        problems.append("still mounted: " + ", ".join(mounts))
    return problems


def purge(fleet_dir):
    """Remove DIR; the node trees (thousands of files) are removed by a few threads."""
    nodes = os.path.join(fleet_dir, "nodes")
    if os.path.isdir(nodes):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in pool.map(lambda e: shutil.rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path),
                              os.scandir(nodes)):
                pass
    shutil.rmtree(fleet_dir)


def load_state(fleet_dir):
    path = os.path.join(fleet_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def cmd_down(args):
    fleet_dir = os.path.realpath(args.dir)
    if os.geteuid() != 0:
        raise FleetError("fleet down must run as root")
    if not os.path.isdir(fleet_dir):
        print(f"fleet down: {fleet_dir} does not exist; nothing to do")
        return 0
    state = load_state(fleet_dir)
    if state is None:
        # not (or no longer) a fleet DIR: still free anything that looks like ours
        state = {}
        if not leftovers(fleet_dir, state)[0] and not mounts_under(fleet_dir):
            print(f"fleet down: {fleet_dir} holds no fleet; nothing to do")
            return 0
    before = len(recorded(fleet_dir))
    problems = teardown(fleet_dir, state)
    if state:
        fleet_json = os.path.join(fleet_dir, "fleet.json")
        if os.path.exists(fleet_json):
            try:
                fj = read_json(fleet_json)
                fj["state"] = "down"
                write_json_atomic(fleet_json, fj)
            except (OSError, ValueError):
                pass
        write_json_atomic(os.path.join(fleet_dir, STATE_FILE), state | {"state": "down", "leaked": problems})
    if problems:
        print("fleet down: LEAK: " + "; ".join(problems), file=sys.stderr)
        return 1
    if args.purge:
        purge(fleet_dir)
    print(f"fleet down: {fleet_dir}: stopped ({before} process(es) recorded), nothing left"
          + (", directory removed" if args.purge else ""))
    return 0
