"""Shared helpers of the fleet tool: constants, locks, /proc scanning, ports, mounts."""

import contextlib
import functools
import fcntl
import json
import os
import random
import re
import socket
import subprocess
import time

USER = "guardia-node"
ETC_DIR = "/etc/guardia-fleet"          # machine-wide, root only: password, cached RSA key
RUN_DIR = "/run/guardia-fleet"          # machine-wide lock for port allocation
ENV_MARK = "GUARDIA_FLEET_ID"           # set in the env of every process a fleet starts
SUPERVISOR_COMM = "fleet-server"        # comm of the forked `fleet up` that serves and reaps
STATE_FILE = ".guardia-fleet"           # marker + state of a fleet DIR
LOOPBACK = "127.0.0.1"                  # the only address the fleet ever uses
SSHD = os.environ.get("GUARDIA_FLEET_SSHD", "/usr/sbin/sshd")

# Characters allowed in DIR: it is written unquoted into sshd_config (which expands %)
# and into shell scripts (quoted anyway).
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@,=-]*$")


class FleetError(Exception):
    """An expected failure with a message for the user."""


def write_file(path, data, mode=0o644, uid=None, gid=None):
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if uid is not None:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def write_json_atomic(path, obj, mode=0o644):
    tmp = f"{path}.tmp.{os.getpid()}"
    write_file(tmp, json.dumps(obj, indent=2) + "\n", mode)
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def flock(path):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- processes

class Proc:
    __slots__ = ("pid", "ppid", "comm", "state", "uid", "starttime")

    def __init__(self, pid, ppid, comm, state, uid, starttime):
        self.pid, self.ppid, self.comm, self.state = pid, ppid, comm, state
        self.uid, self.starttime = uid, starttime


def read_proc(pid):
    """Proc for pid, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    lpar, rpar = stat.index("("), stat.rindex(")")
    comm = stat[lpar + 1:rpar]
    rest = stat[rpar + 2:].split()
    return Proc(pid, int(rest[1]), comm, rest[0], uid, int(rest[19]))


def all_procs():
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = read_proc(int(name))
            if p is not None:
                procs[p.pid] = p
    return procs


def proc_alive(pid, starttime=None):
    p = read_proc(pid)
    if p is None or p.state in ("Z", "X"):
        return False
    return starttime is None or p.starttime == starttime


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def proc_environ_has(pid, needle):
    return needle in _read(f"/proc/{pid}/environ")


def proc_cmdline(pid):
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")


def proc_cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def supervisor_dir(pid):
    """The --dir of a fleet supervisor process (a forked `fleet up`), resolved."""
    args = _read(f"/proc/{pid}/cmdline").split(b"\0")
    for i, a in enumerate(args):
        value = None
        if a == b"--dir" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(b"--dir="):
            value = a[6:]
        if value:
            return os.path.realpath(os.path.join(proc_cwd(pid), value.decode(errors="replace")))
    return None


def my_ancestors():
    """This process and its ancestors: never to be killed."""
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        p = read_proc(pid)
        if p is None:
            break
        pid = p.ppid
    return out


def fleet_processes(fleet_dir, fleet_id, uid=None, roots=()):
    """Live processes that belong to the fleet in fleet_dir.

    A process belongs to the fleet when it
      - carries GUARDIA_FLEET_ID=<id> in its environment (every process `up` starts, and
        every session command: sshd_config has SetEnv), or
      - has DIR/ in its command line (sshd listeners keep `-f DIR/...` in their title), or
      - runs as the fleet user with its cwd under DIR, or
      - descends from one of those or from `roots` (sshd rewrites the argv/environ area of
        its per-connection processes, so those are found through the tree), or
      - is an sshd ancestor of one of those (an orphaned session monitor), or
      - is the fleet's supervisor (comm fleet-server, a forked `fleet up --dir DIR`).
    Zombies are ignored. Returns {pid: Proc}.
    """
    procs = all_procs()
    mark = f"{ENV_MARK}={fleet_id}\0".encode() if fleet_id else None
    dir_slash = fleet_dir.rstrip("/") + "/"
    skip = my_ancestors()
    seeds = set()
    for pid, p in procs.items():
        if pid in skip or p.state in ("Z", "X"):
            continue
        if pid in roots:
            seeds.add(pid)
        elif mark and proc_environ_has(pid, mark):
            seeds.add(pid)
        elif dir_slash in proc_cmdline(pid):
            # `tools/fleet check --dir DIR` by a user is not ours: only what the fleet runs.
            if p.comm.startswith("sshd") or p.uid == uid:
                seeds.add(pid)
        elif uid is not None and p.uid == uid and (proc_cwd(pid) + "/").startswith(dir_slash):
            seeds.add(pid)
        elif p.comm == SUPERVISOR_COMM and supervisor_dir(pid) == fleet_dir.rstrip("/"):
            seeds.add(pid)
    children = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    ours = set()
    stack = list(seeds)
    while stack:
        pid = stack.pop()
        if pid in ours or pid in skip:
            continue
        ours.add(pid)
        stack.extend(children.get(pid, ()))
    # sshd ancestors of our session processes (monitor, privsep child)
    for pid in list(ours):
        ppid = procs[pid].ppid if pid in procs else 0
        while ppid > 1 and ppid in procs and procs[ppid].comm.startswith("sshd") and ppid not in skip:
            if ppid in ours:
                break
            ours.add(ppid)
            ppid = procs[ppid].ppid
    return {pid: procs[pid] for pid in ours if pid in procs and procs[pid].state not in ("Z", "X")}


def kill_processes(find, spare=(), timeout=10.0):
    """SIGSTOP then SIGKILL everything find() returns, except `spare`, until it returns
    nothing else. Stopping first keeps an sshd listener from forking new sessions while
    the tree is collected. Returns {pid: Proc} still alive at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = {pid: p for pid, p in find().items() if pid not in spare}
        if not found or time.monotonic() > deadline:
            return found
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, 19)  # SIGSTOP
        found = {pid: p for pid, p in find().items() if pid not in spare} or found
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        time.sleep(0.02)


def terminate(pid, starttime, grace=3.0):
    """SIGTERM, then SIGKILL after `grace` seconds; True once the process is gone."""
    for sig, wait in ((15, grace), (9, 2.0)):
        if not proc_alive(pid, starttime):
            return True
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not proc_alive(pid, starttime):
                return True
            time.sleep(0.01)
    return not proc_alive(pid, starttime)


# ---------------------------------------------------------------- sockets

def listening_ports_by_inode():
    """{socket inode: port} for TCP sockets listening on 127.0.0.1 (or 0.0.0.0)."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] != "0A":
                continue
            addr, port = parts[1].split(":")
            if addr in ("0100007F", "00000000"):
                out[int(parts[9])] = int(port, 16)
    return out


def pid_socket_inodes(pid):
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
        return int(lo), int(hi)
    except OSError:
        return 32768, 60999


def default_port_range():
    """Ports below the kernel's ephemeral range: bind(0) and connect() never hand these
    out, so only explicit allocators (other fleets, serialised by a lock) can collide."""
    lo, _ = ephemeral_range()
    hi = min(lo - 1, 32767)
    if hi - 10000 < 4000:
        return 10000, 32767
    return 10000, hi


def port_is_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        s.bind((LOOPBACK, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class PortAllocator:
    """Hands out loopback ports that are free now (probed by bind), never twice.

    Use it while holding port_lock(): fleets starting at the same time then never
    probe the same port before one of them has bound it.
    """

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi
        self.candidates = list(range(lo, hi + 1))
        random.shuffle(self.candidates)
        self.given = set()

    def take(self):
        while self.candidates:
            port = self.candidates.pop()
            if port not in self.given and port_is_free(port):
                self.given.add(port)
                return port
        raise FleetError(f"no free loopback port left in {self.lo}-{self.hi}")


def port_lock():
    return flock(os.path.join(RUN_DIR, "ports.lock"))


# ---------------------------------------------------------------- mounts

def _unescape_mount(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts_under(path):
    """Mount points at or under path (deepest first)."""
    path = path.rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape_mount(line.split()[4])
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def unmount(path):
    """Unmount path; True if nothing is mounted there afterwards."""
    for _ in range(20):
        if path not in mounts_under(path):
            return True
        r = subprocess.run(["umount", path], capture_output=True, text=True)
        if r.returncode != 0 and "not mounted" in r.stderr:
            return True
        if r.returncode == 0:
            continue
        time.sleep(0.1)
    return path not in mounts_under(path)


@functools.lru_cache(maxsize=1)
def sshd_version():
    """(major, minor) of the OpenSSH sshd, or (0, 0) if unknown."""
    try:
        r = subprocess.run([SSHD, "-V"], capture_output=True, text=True, timeout=10)
        m = re.search(r"OpenSSH_(\d+)\.(\d+)", r.stdout + r.stderr)
        if m:
            return int(m.group(1)), int(m.group(2))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return 0, 0
