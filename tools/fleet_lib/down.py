"""`fleet down`: stop everything a fleet started, unmount its tmpfs, verify nothing is left.

`down` acts only on a real fleet directory (see refuse_unless_fleet) and only on what
belongs to that fleet: processes carrying its id (or recorded by `up` with their start
time, or its sshd listeners, or its supervisor) and their descendants, and the tmpfs mounts
`up` recorded on its node directories. Anything else, even inside DIR, is left alone.
"""

import concurrent.futures
import json
import os
import shutil
import sys

from .common import (LOCK_FILE, STATE_FILE, FleetError, check_fleet_dir, fleet_processes, is_fleet_mount,
                     kill_processes, load_state, mounts, mounts_under, my_ancestors, proc_alive, proc_cmdline,
                     read_json, terminate, unmount, write_json_atomic)


def recorded(fleet_dir):
    """[(role, pid, starttime)] of every process `up` started (also superseded ones)."""
    out = []
    try:
        with open(os.path.join(fleet_dir, "run", "pids.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                    out.append((r["role"], int(r["pid"]), r.get("starttime")))
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return out


def recorded_roots(fleet_dir):
    """Recorded pids still alive with the recorded start time (a reused pid is not ours)."""
    return {pid for _, pid, st in recorded(fleet_dir) if st is not None and proc_alive(pid, st)}


def recorded_mounts(fleet_dir):
    try:
        with open(os.path.join(fleet_dir, "run", "mounts")) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []


def leftovers(fleet_dir, state):
    """(processes {pid: Proc}, mount points strictly under DIR) still there."""
    procs = fleet_processes(fleet_dir, state.get("id"), recorded_roots(fleet_dir))
    return procs, mounts_under(fleet_dir)


def teardown(fleet_dir, state):
    """Kill every fleet process, unmount every fleet mount; [problem, ...] if anything is left."""
    fleet_id = state.get("id")
    # an `up` still running (e.g. stuck, or killed while its children live on) goes first
    up_pid, up_start = state.get("up_pid"), state.get("up_starttime")
    if up_pid and up_start is not None and up_pid not in my_ancestors() and proc_alive(up_pid, up_start) \
            and fleet_dir in proc_cmdline(up_pid):
        try:
            os.kill(up_pid, 9)
        except OSError:
            pass

    def find():
        return fleet_processes(fleet_dir, fleet_id, recorded_roots(fleet_dir))

    # the supervisor ("server") reaps the others as they die, so it goes last, gracefully
    supervisors = {pid: st for role, pid, st in recorded(fleet_dir)
                   if role == "server" and st is not None and pid not in my_ancestors() and proc_alive(pid, st)}
    kill_processes(find, spare=supervisors)
    for pid, st in supervisors.items():
        terminate(pid, st)
    left = kill_processes(find)
    problems = []
    if left:
        problems.append("processes still alive: " + ", ".join(
            f"{pid} ({p.comm})" for pid, p in sorted(left.items())))
    # only the tmpfs `up` recorded on a node directory, deepest first; never DIR itself
    for mp in sorted(set(recorded_mounts(fleet_dir)), key=len, reverse=True):
        if is_fleet_mount(fleet_dir, mp) and not unmount(mp):
            problems.append(f"cannot unmount {mp}")
    sshd_dir = os.path.join(fleet_dir, "sshd")
    if os.path.isdir(sshd_dir) and not os.path.islink(sshd_dir):
        for name in os.listdir(sshd_dir):
            if name.endswith(".pid"):
                os.unlink(os.path.join(sshd_dir, name))
    procs, mps = leftovers(fleet_dir, state)
    if procs and not left:
        problems.append("processes still alive: " + ", ".join(f"{pid} ({p.comm})" for pid, p in sorted(procs.items())))
    if mps:
        problems.append("still mounted: " + ", ".join(mps))
    return problems


def purge(fleet_dir):
    """Remove DIR; the node trees (thousands of files) are removed by a few threads.
    shutil.rmtree never follows a symlink, so a node user's symlinks are just unlinked."""
    if mounts_under(fleet_dir):
        raise FleetError(f"{fleet_dir}: not purged, something is mounted below it: {', '.join(mounts_under(fleet_dir))}")
    nodes = os.path.join(fleet_dir, "nodes")
    if os.path.isdir(nodes) and not os.path.islink(nodes):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in pool.map(lambda e: shutil.rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path),
                              os.scandir(nodes)):
                pass
    if any(mp == fleet_dir for mp, _, _ in mounts()):
        # DIR is itself a mount point (not ours): empty it, keep the mount point
        for e in os.scandir(fleet_dir):
            shutil.rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path)
    else:
        shutil.rmtree(fleet_dir)


def refuse_unless_fleet(fleet_dir):
    """The fleet state of fleet_dir, None if DIR is missing or empty (nothing to do), or
    FleetError: DIR is a system directory, not a directory, or holds no valid state file."""
    check_fleet_dir(fleet_dir)
    if not os.path.lexists(fleet_dir):
        return None
    if os.path.islink(fleet_dir) or not os.path.isdir(fleet_dir):
        raise FleetError(f"{fleet_dir} is not a directory: refusing")
    state = load_state(fleet_dir)
    if state is None:
        if not set(os.listdir(fleet_dir)) - {LOCK_FILE}:
            return None
        raise FleetError(f"{fleet_dir} holds no fleet (no {STATE_FILE} state file): refusing to stop, "
                         "unmount or delete anything there")
    return state


def cmd_down(args):
    if os.geteuid() != 0:
        raise FleetError("fleet down must run as root")
    fleet_dir = os.path.realpath(args.dir)
    state = refuse_unless_fleet(fleet_dir)
    if state is None:
        what = "does not exist" if not os.path.lexists(fleet_dir) else "is empty (no fleet)"
        print(f"fleet down: {fleet_dir} {what}; nothing to do")
        return 0
    before = len(recorded(fleet_dir))
    problems = teardown(fleet_dir, state)
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
