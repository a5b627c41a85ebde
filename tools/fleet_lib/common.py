"""Shared helpers of the fleet tool: constants, locks, /proc scanning, ports, mounts."""

import contextlib
import functools
import fcntl
import json
import os
import random
import re
import pwd
import socket
import stat
import subprocess
import time

USER = "guardia-node"
ETC_DIR = "/etc/guardia-fleet"          # machine-wide, root only: password, cached RSA key
RUN_DIR = "/run/guardia-fleet"          # machine-wide lock for port allocation
ENV_MARK = "GUARDIA_FLEET_ID"           # set in the env of every process a fleet starts
SUPERVISOR_COMM = "fleet-server"        # comm of the forked `fleet up` that serves and reaps
STATE_FILE = ".guardia-fleet"           # marker + state of a fleet DIR
LOCK_FILE = ".guardia-fleet.lock"       # flock()ed by `up` for its whole run
TMPFS_SOURCE = "guardia-fleet"          # source name of every tmpfs the fleet mounts
FLEET_ID = re.compile(r"^[0-9a-f]{16}$")
LOOPBACK = "127.0.0.1"                  # the only address the fleet ever uses
SSHD = os.environ.get("GUARDIA_FLEET_SSHD", "/usr/sbin/sshd")

# Characters allowed in DIR: it is written unquoted into sshd_config (which expands %)
# and into shell scripts (quoted anyway).
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@,=-]*$")


class FleetError(Exception):
    """An expected failure with a message for the user."""


# ---------------------------------------------------------------- fleet directories

# Never a fleet DIR: `down` kills and unmounts by DIR, so these would hit the whole machine.
SYSTEM_DIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
               "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys",
               "/tmp", "/usr", "/var", "/var/tmp", "/var/lib", "/var/log", "/var/cache", "/var/run",
               "/var/spool", "/var/mail", "/run/user", "/run/lock", "/usr/local", "/usr/share",
               "/dev/shm", ETC_DIR, RUN_DIR, "/run/sshd"}
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32",
                "/lib64", "/libx32", "/run/sshd", "/var/lib", "/var/log")


def check_fleet_dir(d):
    """Raise FleetError unless d (absolute, resolved) may be a fleet directory: at least two
    path components, not a system directory or inside one, not a user's home directory."""
    if not os.path.isabs(d) or os.path.normpath(d) != d:
        raise FleetError(f"--dir {d!r}: expected an absolute, normalised path")
    parts = [p for p in d.split("/") if p]
    why = None
    if len(parts) < 2:
        why = "a fleet directory needs at least two path components (e.g. /tmp/fleet)"
    elif d in SYSTEM_DIRS or any(d.startswith(t + "/") for t in SYSTEM_TREES):
        why = "it is (or is inside) a system directory"
    else:
        try:
            homes = {os.path.normpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir}
        except OSError:
            homes = set()
        if d in homes:
            why = "it is a user's home directory"
    if why:
        raise FleetError(f"refusing to use {d} as a fleet directory: {why}")


def load_state(fleet_dir):
    """The validated fleet state of fleet_dir, or None if it has no state file.

    Raises FleetError if the state file is not one `fleet up` wrote for this directory:
    a regular root-owned file (not a symlink), JSON with a fleet id and `dir` = fleet_dir.
    """
    path = os.path.join(fleet_dir, STATE_FILE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise FleetError(f"{path}: {e.strerror}")
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        raise FleetError(f"{path} is not a root-owned regular file: not a fleet state file, refusing")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise FleetError(f"{path} is not a valid fleet state file ({e}), refusing")
    if not isinstance(state, dict) or not FLEET_ID.match(str(state.get("id", ""))):
        raise FleetError(f"{path} holds no fleet id: not a valid fleet state file, refusing")
    if state.get("dir") != fleet_dir:
        raise FleetError(f"{path} belongs to a fleet in {state.get('dir')!r}, not {fleet_dir}: refusing "
                         "(a fleet directory cannot be moved)")
    return state


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


def fleet_processes(fleet_dir, fleet_id, roots=()):
    """Live processes that belong to the fleet in fleet_dir.

    A process belongs to the fleet when it
      - carries GUARDIA_FLEET_ID=<id> in its environment (every process `up` starts, and
        every session command: sshd_config has SetEnv), or
      - is one of `roots` (pids recorded by `up`, checked against their start time), or
      - is an sshd whose command line has `-f DIR/sshd/` (the fleet's listeners), or
      - is the fleet's supervisor (root, comm fleet-server, a forked `fleet up --dir DIR`), or
      - descends from one of those (sshd rewrites the argv/environ area of its
        per-connection processes, so those are found through the tree), or
      - is a per-connection sshd of the fleet user above one of those (an orphaned session
        monitor); never a listener.
    Nothing else: not a command line that merely names DIR, not the fleet user's other
    processes (the user is shared by every fleet). Zombies are ignored. Returns {pid: Proc}.
    """
    procs = all_procs()
    mark = f"{ENV_MARK}={fleet_id}\0".encode() if fleet_id and FLEET_ID.match(fleet_id) else None
    sshd_conf = f"-f {fleet_dir.rstrip('/')}/sshd/"
    skip = my_ancestors()
    seeds = set()
    for pid, p in procs.items():
        if pid in skip or p.state in ("Z", "X"):
            continue
        if pid in roots:
            seeds.add(pid)
        elif mark and proc_environ_has(pid, mark):
            seeds.add(pid)
        elif p.comm.startswith("sshd") and sshd_conf in proc_cmdline(pid):
            seeds.add(pid)
        elif p.comm == SUPERVISOR_COMM and p.uid == 0 and supervisor_dir(pid) == fleet_dir.rstrip("/"):
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
    # per-connection sshd processes of the fleet user above our sessions (monitor, privsep
    # child: "sshd: guardia-node [priv]", "sshd-session: guardia-node@notty"); the walk
    # stops at anything else, e.g. the machine's own sshd listener
    session = re.compile(rf"^sshd(-session)?: {re.escape(USER)}[ @\[]")
    for pid in list(ours):
        ppid = procs[pid].ppid if pid in procs else 0
        while ppid > 1 and ppid in procs and ppid not in skip and ppid not in ours \
                and procs[ppid].comm.startswith("sshd") and session.match(proc_cmdline(ppid)):
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


def mounts():
    """[(mount point, fstype, source)] from /proc/self/mountinfo, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            out.append((_unescape_mount(fields[4]), fields[sep + 1], _unescape_mount(fields[sep + 2])))
    return out


def mounts_under(path):
    """Mount points strictly under path (deepest first); path itself is not included."""
    prefix = path.rstrip("/") + "/"
    out = {mp for mp, _, _ in mounts() if mp.startswith(prefix) and mp != prefix.rstrip("/") and mp != "/"}
    return sorted(out, key=len, reverse=True)


def is_fleet_mount(fleet_dir, mp):
    """True if mp may be unmounted by the fleet of fleet_dir: a node directory
    DIR/nodes/node-N on which a tmpfs with the fleet's source name is mounted now."""
    nodes = os.path.join(fleet_dir.rstrip("/"), "nodes")
    if os.path.dirname(mp) != nodes or not re.fullmatch(r"node-\d+", os.path.basename(mp)):
        return False
    return any(m == mp and fstype == "tmpfs" and source == TMPFS_SOURCE for m, fstype, source in mounts())


def unmount(path):
    """Unmount path; True if nothing is mounted there afterwards."""
    def mounted():
        return any(mp == path for mp, _, _ in mounts())
    for _ in range(20):
        if not mounted():
            return True
        r = subprocess.run(["umount", "--no-canonicalize", path], capture_output=True, text=True)
        if r.returncode != 0 and "not mounted" in r.stderr:
            return True
        if r.returncode == 0:
            continue
        time.sleep(0.1)
    return not mounted()


# ---------------------------------------------------------------- files the node user controls
#
# Node directories belong to the unprivileged fleet user, who can replace any file or
# directory there by a symlink (app/VERSION -> /etc/shadow, app -> /) or a FIFO. Root never
# follows a symlink below a node directory: every component is opened with O_NOFOLLOW
# relative to its parent's descriptor, and files are opened non-blocking and fstat()ed.

NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOFOLLOW_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOFOLLOW_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_dir_nofollow(path, listable=True):
    """fd of directory `path` (absolute), opened component by component without following
    any symlink. Raises OSError (ELOOP/ENOTDIR for a symlink or non-directory).
    Components are opened with O_PATH (search permission suffices, e.g. a 0711 parent);
    the directory itself too unless `listable` (then it is opened for reading)."""
    fd = os.open("/", NOFOLLOW_PATH)
    try:
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nfd = os.open(part, NOFOLLOW_DIR if last and listable else NOFOLLOW_PATH, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if not parts and listable:
            nfd = os.open("/", NOFOLLOW_DIR)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file_nofollow(name, dir_fd):
    """fd of the regular file `name` in dir_fd, never following a symlink and never
    blocking on a FIFO. Raises OSError (EINVAL if it is not a regular file)."""
    fd = os.open(name, NOFOLLOW_FILE, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(22, "not a regular file", name)
    return fd


def read_file_nofollow(path, limit, tail=False):
    """Up to `limit` bytes of the regular file at `path` (no symlink anywhere in the path):
    the first ones, or with tail=True the last ones."""
    dfd = open_dir_nofollow(os.path.dirname(path), listable=False)
    try:
        fd = open_file_nofollow(os.path.basename(path), dfd)
    finally:
        os.close(dfd)
    try:
        if tail:
            os.lseek(fd, max(0, os.fstat(fd).st_size - limit), os.SEEK_SET)
        data = b""
        while len(data) < limit:
            chunk = os.read(fd, limit - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


def lstat_nofollow(path):
    """lstat of `path` without following a symlink in any component; None if missing."""
    try:
        dfd = open_dir_nofollow(os.path.dirname(path), listable=False)
    except OSError:
        return None
    try:
        return os.stat(os.path.basename(path), dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(dfd)


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
