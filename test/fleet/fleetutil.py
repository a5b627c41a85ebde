"""Helpers for the fleet tests: run tools/fleet, ssh/sftp/http against nodes, leak checks.

The leak check here is written independently of tools/fleet's own bookkeeping: it scans
/proc and /proc/self/mountinfo for anything that still belongs to the fleet directory.

Every fleet, file, mount and helper process of a test module lives under one fixed root
per build and module, FLEET_TEST_ROOT/<module> (FLEET_TEST_ROOT is set by
test/fleet/CMakeLists.txt). cleanup_root() takes down whatever is left there; run.py calls
it before and after the module, and the ctest cleanup test `fleet.<module>.cleanup` calls it
after the module even if ctest killed it (timeout).
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FLEET = os.environ.get("FLEET_TOOL", os.path.join(ROOT, "tools", "fleet"))
USER = "guardia-node"
ENV_MARK = "GUARDIA_FLEET_ID"
STATE_FILE = ".guardia-fleet"
TEST_ROOT = os.environ.get("FLEET_TEST_ROOT") or "/tmp/guardia-fleet-test-manual"
TEST_MARK = "GUARDIA_FLEET_TEST_ROOT"     # env mark of helper processes a test starts itself
TEST_TMPFS = "guardia-fleet-test"         # source name of tmpfs mounts a test makes itself
_module = "manual"


def set_module(name):
    global _module
    _module = name


def module_root():
    """FLEET_TEST_ROOT/<module>: everything of this test module lives below it."""
    return os.path.join(TEST_ROOT, _module)


def work_dir(prefix):
    """A new directory below module_root(), reachable (o+x) by the node user."""
    root = module_root()
    os.makedirs(root, exist_ok=True)
    for d in (TEST_ROOT, root):
        os.chmod(d, 0o755)
    d = tempfile.mkdtemp(prefix=prefix, dir=root)
    os.chmod(d, 0o711)
    return d


def fleet(*args, check=True, timeout=300, env=None):
    r = subprocess.run([FLEET, *args], capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else os.environ | env)
    if check and r.returncode != 0:
        raise AssertionError(f"fleet {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


# ------------------------------------------------------------------ processes and mounts

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat(pid):
    """(ppid, state, starttime) or None."""
    s = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not s:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[1]), rest[0], int(rest[19])


def alive(pid, starttime=None):
    st = _stat(pid)
    return st is not None and st[1] not in "ZX" and (starttime is None or st[2] == starttime)


def _ancestors():
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        st = _stat(pid)
        if not st:
            break
        pid = st[0]
    return out


def descendants(roots):
    """{(pid, starttime)} of roots and all their descendants, alive now."""
    kids = {}
    info = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[1] not in "ZX":
                info[int(name)] = st
                kids.setdefault(st[0], []).append(int(name))
    out, stack = set(), [r for r in roots if r in info]
    while stack:
        pid = stack.pop()
        if (pid, info[pid][2]) in out:
            continue
        out.add((pid, info[pid][2]))
        stack.extend(kids.get(pid, ()))
    return out


def fleet_uid():
    import pwd
    try:
        return pwd.getpwnam(USER).pw_uid
    except KeyError:
        return None


def marked_processes(fleet_id):
    """[(uid, cmdline)] of live processes carrying the fleet's environment marker."""
    mark = f"{ENV_MARK}={fleet_id}\0".encode()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and mark in _read(f"/proc/{name}/environ"):
            try:
                uid = os.stat(f"/proc/{name}").st_uid
            except OSError:
                continue
            out.append((uid, _read(f"/proc/{name}/cmdline").replace(b"\0", b" ").decode(errors="replace")))
    return out


def leaks(d, fleet_id=None, snapshot=()):
    """Everything of fleet dir d still alive or mounted: a list of strings (empty = clean)."""
    d = os.path.realpath(d)
    mark = f"{ENV_MARK}={fleet_id}\0".encode() if fleet_id else None
    uid = fleet_uid()

    def _owner(pid):
        # The process may exit between listing /proc and looking at it.
        try:
            return os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return None

    skip = _ancestors()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        pid = int(name)
        st = _stat(pid)
        if not st or st[1] in "ZX":
            continue
        cmd = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
        why = None
        if mark and mark in _read(f"/proc/{pid}/environ"):
            why = "fleet env marker"
        elif d + "/" in cmd + " " and ("sshd" in cmd or "fleet" in cmd):
            why = "command line names the fleet dir"
        elif f"--dir {d} " in cmd + " " and "fleet" in cmd and " up " in cmd:
            why = "a `fleet up` (supervisor) of this dir"
        elif uid is not None and _owner(pid) == uid:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = ""
            if (cwd + "/").startswith(d + "/"):
                why = "fleet user process inside the fleet dir"
        if why:
            out.append(f"pid {pid} ({cmd.strip()[:100]}): {why}")
    for pid, start in snapshot:
        if alive(pid, start) and not any(s.startswith(f"pid {pid} ") for s in out):
            out.append(f"pid {pid} ({_read(f'/proc/{pid}/comm').decode().strip()}): started by the fleet")
    for mp, _, _ in mountinfo():
        if mp.startswith(d + "/"):
            out.append(f"mount {mp}")
    return out


def mountinfo():
    """[(mount point, fstype, source)]."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            out.append((fields[4].replace("\\040", " "), fields[sep + 1], fields[sep + 2]))
    return out


def is_mounted(path):
    return any(mp == path for mp, _, _ in mountinfo())


def mount_test_tmpfs(path, size="1m"):
    """Mount a small tmpfs of the test's own (source TEST_TMPFS, root-owned 0755) on path."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", TEST_TMPFS, path], check=True)


def umount(path):
    if is_mounted(path):
        subprocess.run(["umount", "-l", path])


def spawn_helper(argv, **kw):
    """Start a helper process of the test (own session, TEST_MARK in its env) so that
    cleanup_root() can kill it even if the test process itself is killed."""
    env = dict(kw.pop("env", None) or os.environ, **{TEST_MARK: module_root()})
    return subprocess.Popen(argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def stop_helper(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    p.wait()


def force_away(left):
    """Kill the processes and lazily unmount the mounts of a leaks() list."""
    for item in left:
        if item.startswith("pid "):
            try:
                os.kill(int(item.split()[1]), 9)
            except (OSError, ValueError):
                pass
    for item in sorted((i for i in left if i.startswith("mount ")), key=len, reverse=True):
        subprocess.run(["umount", "-l", item[6:]])


def fleet_id_of(d):
    for f in ("fleet.json", STATE_FILE):
        try:
            return load(d, f).get("id")
        except (OSError, ValueError):
            continue
    return None


def down_and_check_leaks(d):
    """`fleet down` d, then the independent leak check. Anything left is killed/unmounted
    right away (nothing outlives the test) and reported: '' if all was clean."""
    snapshot = set()
    fid = fleet_id_of(d)
    if os.path.exists(os.path.join(d, "fleet.json")):
        try:
            snapshot = descendants([p["pid"] for p in load(d, "fleet.json")["processes"]])
        except (OSError, ValueError, KeyError):
            pass
    # no state file: not a fleet (e.g. a test's foreign directory), `down` would refuse
    has_state = os.path.lexists(os.path.join(d, STATE_FILE))
    r = fleet("down", "--dir", d, check=False) if has_state else None
    left = leaks(d, fid, snapshot)
    if (r is None or r.returncode == 0) and not left:
        return ""
    if left:
        force_away(left)
        if has_state:
            fleet("down", "--dir", d, check=False)
    rc = "no state file, not downed" if r is None else f"rc={r.returncode} {r.stderr.strip()}"
    return f"fleet down --dir {d}: {rc}; leaked: {left}"


def fleet_dirs(root, depth=3):
    """Directories below root (not following symlinks) that hold a fleet state file."""
    out = []
    for cur, dnames, fnames in os.walk(root):
        if STATE_FILE in fnames:
            out.append(cur)
            dnames[:] = []
        elif cur[len(root):].count("/") >= depth:
            dnames[:] = []
    return out


def cleanup_root(root):
    """Take down everything below root: `fleet down` on every fleet dir (the refusal-safe
    down), then the test's own helper processes and tmpfs mounts, then remove root.
    Returns a list of problems (empty = clean)."""
    problems = []
    if not os.path.isdir(root) or os.path.islink(root):
        return problems
    for d in fleet_dirs(root):
        msg = down_and_check_leaks(d)
        if msg:
            problems.append(msg)
    mark, mine = f"{TEST_MARK}={root}\0".encode(), _ancestors()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine and mark in _read(f"/proc/{name}/environ"):
            try:
                os.kill(int(name), 9)
                problems.append(f"helper process {name} was still running (killed)")
            except OSError:
                pass
    for mp, fstype, source in sorted(mountinfo(), key=lambda m: len(m[0]), reverse=True):
        if mp.startswith(root + "/") and fstype == "tmpfs" and source in (TEST_TMPFS, "guardia-fleet"):
            subprocess.run(["umount", "-l", mp])
            if source == "guardia-fleet":
                problems.append(f"fleet tmpfs {mp} was still mounted (unmounted)")
    if any(mp.startswith(root + "/") for mp, _, _ in mountinfo()):
        problems.append(f"{root}: mounts left below it, not removed")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return problems


# ------------------------------------------------------------------ clients

def ssh_cmd(d, port, *, key="client_key", known_hosts=None, batch=True, extra=()):
    # ssh takes the first value of an option: `extra` goes first so that it wins
    return ["ssh", "-F", "/dev/null", *extra, "-i", os.path.join(d, key), "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", f"BatchMode={'yes' if batch else 'no'}",
            "-o", f"UserKnownHostsFile={known_hosts or os.path.join(d, 'known_hosts')}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10", "-o", "Compression=no",
            "-p", str(port), f"{USER}@127.0.0.1"]


def ssh(d, port, command, *, timeout=60, input=None, env=None, **kw):
    return subprocess.run(ssh_cmd(d, port, **kw) + [command], capture_output=True, timeout=timeout,
                          input=input, env=env, text=input is None or isinstance(input, str))


def ssh_password(d, port, command, workdir):
    """ssh with password authentication only (the password comes from DIR/password)."""
    askpass = os.path.join(workdir, "askpass.sh")
    with open(askpass, "w") as f:
        f.write(f"#!/bin/sh\ncat {os.path.join(d, 'password')}\n")
    os.chmod(askpass, 0o700)
    env = dict(os.environ, SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    extra = ("-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
             "-o", "NumberOfPasswordPrompts=1")
    return subprocess.run(ssh_cmd(d, port, batch=False, extra=extra) + [command], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def http_get(port, path="/health", timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


def refused(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


# ------------------------------------------------------------------ fixtures

class FleetTestCase(unittest.TestCase):
    """A class-wide fleet: up in setUpClass, down + leak check in the class cleanup (which
    runs even when setUpClass or a test fails)."""

    NODES = 2
    UP_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.work = work_dir("class-")
        cls.addClassCleanup(shutil.rmtree, cls.work, ignore_errors=True)
        cls.dir = os.path.join(cls.work, "fleet")
        cls.addClassCleanup(cls.down_and_check_leaks, cls.dir)
        t = time.monotonic()
        cls.up = fleet("up", "--dir", cls.dir, "--nodes", str(cls.NODES), *cls.up_args())
        cls.up_seconds = time.monotonic() - t
        cls.info = load(cls.dir, "fleet.json")
        cls.inv = load(cls.dir, "inventory.json")
        cls.nodes = {n["name"]: n for n in cls.info["nodes"]}

    @classmethod
    def up_args(cls):
        """Extra `fleet up` arguments; cls.work exists already."""
        return cls.UP_ARGS

    @classmethod
    def down_and_check_leaks(cls, d):
        msg = down_and_check_leaks(d)
        if msg:
            raise AssertionError(msg)

    def node(self, name):
        return self.nodes[name]
