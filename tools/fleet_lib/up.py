"""`fleet up`: build node trees, start sshds and the health/proxy server, write outputs."""

import asyncio
import concurrent.futures
import ctypes
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

from . import faults as faultlib
from . import host, server
from .common import (ENV_MARK, LOCK_FILE, LOOPBACK, SAFE_PATH, SSHD, STATE_FILE, SUPERVISOR_COMM, TMPFS_SOURCE,
                     USER, FleetError, PortAllocator, check_fleet_dir, default_port_range, fleet_processes,
                     listening_ports_by_inode, load_state, mounts_under, pid_socket_inodes, port_lock, read_json,
                     sshd_version, write_file, write_json_atomic, read_proc)
from .down import recorded_roots, teardown

MAX_NODES = 20000       # 10,000 nodes fit the default port range (10000-32767) with room to spare
PORTS_PER_SSHD = 16      # OpenSSH: at most 16 listen sockets per sshd process
BUILD_THREADS = 8
SSHD_READY_TIMEOUT = 60

# Everything `up` creates in DIR; a re-`up` of a downed DIR removes exactly these.
FLEET_ENTRIES = ["nodes", "sshd", "run", "host_keys", "inventory.json", "known_hosts",
                 "fleet.json", "password", "authorized_keys", "client_key", "client_key.pub",
                 "client_key_ecdsa", "client_key_ecdsa.pub", "client_key_rsa", "client_key_rsa.pub",
                 "client_key_other", "client_key_other.pub"]

# Options no --sshd-option may replace: the fleet's wiring depends on them.
FIXED_SSHD_OPTIONS = {"listenaddress", "port", "hostkey", "pidfile", "authorizedkeysfile",
                      "allowusers", "setenv", "match", "include"}


APP_JAR_V1 = b"".join(hashlib.sha256(b"guardia-fleet-app-v1-%d" % i).digest() for i in range(1024))


def app_v1_files(name):
    """relative path -> (content, mode) of the initial app (version v1)."""
    return {
        "app.jar": (APP_JAR_V1, 0o644),
        "VERSION": (b"v1\n", 0o644),
        "conf/app.properties": (f"node.name={name}\napp.version=v1\napp.mode=production\n".encode(), 0o640),
        "run.sh": (b"#!/bin/sh\n# simulated application launcher\necho \"app v1 running\"\n", 0o755),
    }


def parse_tiers(spec, count):
    """'A,B,C' (counts of tier 1, 2, 3 in node order; one may be '*' = the rest) -> list."""
    if not spec:
        return [2] * count
    parts = [p.strip() for p in spec.split(",")]
    if not 1 <= len(parts) <= 3 or parts.count("*") > 1:
        raise FleetError(f"--tiers {spec!r}: expected up to three counts T1,T2,T3 (one may be '*')")
    try:
        fixed = sum(int(p) for p in parts if p != "*")
        if any(int(p) < 0 for p in parts if p != "*"):
            raise ValueError
    except ValueError:
        raise FleetError(f"--tiers {spec!r}: counts must be non-negative integers or '*'")
    if "*" in parts:
        if fixed > count:
            raise FleetError(f"--tiers {spec!r}: {fixed} nodes given, fleet has {count}")
        parts = [str(count - fixed) if p == "*" else p for p in parts]
    elif fixed != count:
        raise FleetError(f"--tiers {spec!r}: counts add up to {fixed}, fleet has {count} nodes "
                         "(use '*' for the rest)")
    out = []
    for tier, n in enumerate(parts, start=1):
        out += [tier] * int(n)
    return out


def parse_sshd_options(items):
    out = []
    for item in items or ():
        item = item.strip()
        key, _, value = item.replace("=", " ", 1).partition(" ")
        if not key.isalpha() or not value.strip() or "\n" in item:
            raise FleetError(f"--sshd-option {item!r}: expected 'Keyword value'")
        if key.lower() in FIXED_SSHD_OPTIONS:
            raise FleetError(f"--sshd-option {item!r}: {key} is managed by the fleet")
        out.append((key, value.strip()))
    return out


def default_sshd_options():
    opts = [
        ("UsePAM", "no"), ("PasswordAuthentication", "yes"), ("PubkeyAuthentication", "yes"),
        ("KbdInteractiveAuthentication", "no"), ("PermitRootLogin", "no"), ("StrictModes", "no"),
        ("Subsystem", "sftp internal-sftp"), ("MaxStartups", "2000:30:4000"), ("MaxSessions", "64"),
        ("LoginGraceTime", "60"), ("LogLevel", "ERROR"), ("UseDNS", "no"), ("PrintMotd", "no"),
        ("PrintLastLog", "no"), ("X11Forwarding", "no"), ("AddressFamily", "inet"),
        # no TCP/agent/X11/stream-local forwarding: a session must not reach beyond the node
        ("DisableForwarding", "yes"),
    ]
    if sshd_version() >= (9, 8):
        opts.append(("PerSourcePenalties", "no"))
    return opts


class Up:
    def __init__(self, args):
        self.t0 = time.monotonic()
        self.args = args
        self.dir = os.path.realpath(args.dir)
        self.count = args.nodes
        self.children = []           # Popen objects to reap on failure
        self.lock_fd = None          # DIR/.guardia-fleet.lock, flock()ed for the whole `up`
        self.timings = {}            # step -> seconds (in .guardia-fleet and server.log)
        self.tls = None              # --health-tls: {"ca", "cert", "key"} paths (make_tls)
        self.sshds = []              # [{"index", "key", "nodes", "conf", "log", "pidfile", "proc", "attempts"}]
        self.lo, self.hi = (default_port_range() if not args.port_range else self._port_range(args.port_range))

    @staticmethod
    def _port_range(text):
        try:
            lo, hi = (int(x) for x in text.split("-"))
        except ValueError:
            raise FleetError(f"--port-range {text!r}: expected LO-HI")
        if not 1024 <= lo < hi <= 65535 or hi - lo < 64:
            raise FleetError(f"--port-range {text!r}: need 1024 <= LO < HI <= 65535 and at least 64 ports")
        return lo, hi

    # ------------------------------------------------------------ helpers
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def record_pid(self, role, pid):
        """Append (role, pid, starttime) to run/pids.jsonl *before* relying on the process:
        `down` treats a recorded pid as the fleet's only while its start time matches."""
        p = read_proc(pid)
        with open(self.path("run", "pids.jsonl"), "a") as f:
            f.write(json.dumps({"role": role, "pid": pid, "starttime": p.starttime if p else None}) + "\n")

    def record_mount(self, mp):
        with open(self.path("run", "mounts"), "a") as f:
            f.write(mp + "\n")

    def set_state(self, state, **extra):
        if state != "down" and self.state.get("state") == "starting":
            self.still_ours()
        st = self.state | {"state": state} | extra
        self.state = st
        write_json_atomic(self.path(STATE_FILE), st)

    def elapsed(self):
        return time.monotonic() - self.t0

    # ------------------------------------------------------------ steps
    def validate(self):
        if os.geteuid() != 0:
            raise FleetError("fleet up must run as root (it starts sshd, adds a user, mounts tmpfs)")
        if not os.path.exists(SSHD):
            raise FleetError(f"{SSHD} not found: install openssh-server")
        if not SAFE_PATH.match(self.dir):
            raise FleetError(f"--dir {self.dir!r}: use only letters, digits and ._/+@,=- in the path")
        check_fleet_dir(self.dir)
        if not 1 <= self.count <= MAX_NODES:
            raise FleetError(f"--nodes must be 1..{MAX_NODES}")
        self.faults = faultlib.load(self.args.faults, self.args.fault, self.count)
        self.tiers = parse_tiers(self.args.tiers, self.count)
        self.user_opts = parse_sshd_options(self.args.sshd_option)
        hp = self.args.health_path
        if not hp.startswith("/") or any(c.isspace() for c in hp):
            raise FleetError(f"--health-path {hp!r}: must start with / and contain no spaces")
        if not 100 <= self.args.health_ok_status <= 599:
            raise FleetError("--health-ok-status must be 100..599")
        # Two ports per node (sshd, health), a third for a node behind a fault proxy, and some
        # slack; ports already taken by something else are skipped by the allocator, which
        # says so if the range runs out.
        proxied = sum(1 for fl in self.faults.values()
                      if any(f["kind"] in faultlib.PROXY_KINDS for f in fl))
        need = 2 * self.count + proxied + 64
        if self.hi - self.lo + 1 < need:
            raise FleetError(f"port range {self.lo}-{self.hi} has {self.hi - self.lo + 1} ports, "
                             f"{self.count} nodes need {need}: give a wider --port-range")

    def prepare_dir(self):
        """Claim DIR: take its lock (held for the whole `up`, by the supervisor until the
        fleet is ready), check it is new, empty or a downed fleet, and write the state file
        (with the new fleet id) before anything is started or mounted, so that `down` can
        always clean up after a crashed `up`."""
        d = self.dir
        if os.path.lexists(d) and (os.path.islink(d) or not os.path.isdir(d)):
            raise FleetError(f"{d} exists and is not a directory")
        if os.path.isdir(d):
            if os.lstat(d).st_uid != 0:
                raise FleetError(f"{d} is not owned by root: give a new directory (up creates it) or chown it")
            # Checked again under the lock below; here, unlocked, another `up` may be writing its
            # state file (".guardia-fleet.tmp.<pid>" renamed to ".guardia-fleet"): its files are
            # not a foreign directory's (they made a racing `up` fail with this message).
            theirs = {x for x in os.listdir(d) if not x.startswith(STATE_FILE)}
            if not os.path.lexists(self.path(STATE_FILE)) and theirs - {LOCK_FILE}:
                raise FleetError(f"{d} is not empty and holds no fleet: give an empty or new directory")
        # the fleet user must be able to reach DIR (sshd reads authorized_keys as that user)
        a = os.path.dirname(d)
        while a != "/":
            if os.path.exists(a) and not os.stat(a).st_mode & 0o001:
                raise FleetError(f"{a} is not traversable by others (mode {oct(os.stat(a).st_mode & 0o777)}): "
                                 f"the fleet user cannot reach {d}; use a directory under /tmp or chmod o+x")
            a = os.path.dirname(a)
        os.makedirs(d, mode=0o755, exist_ok=True)
        self.lock_fd = os.open(self.path(LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError(f"another `fleet up` is running on {d}: wait for it to finish "
                             f"(or run `tools/fleet down --dir {d}`)")
        # under the lock: nobody else prepares or starts a fleet in DIR now
        old = load_state(d)
        if old is not None:
            live = fleet_processes(d, old["id"], recorded_roots(d))
            mps = mounts_under(d)
            if old.get("state") != "down" or live or mps:
                raise FleetError(
                    f"{d} already holds a fleet (state {old.get('state', '?')}, {len(live)} live "
                    f"process(es), {len(mps)} mount(s)); run `tools/fleet down --dir {d}` first")
        elif set(os.listdir(d)) - {LOCK_FILE}:
            raise FleetError(f"{d} is not empty and holds no fleet: give an empty or new directory")
        os.chmod(d, 0o755)
        self.state = {"id": os.urandom(8).hex(), "dir": d, "state": "starting", "nodes": self.count,
                      "up_pid": os.getpid(), "up_starttime": read_proc(os.getpid()).starttime,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(self.path(STATE_FILE), self.state)
        if old is not None:
            for name in FLEET_ENTRIES:       # the downed fleet's files: replaced
                p = os.path.join(d, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                elif os.path.lexists(p):
                    os.unlink(p)
        for sub in ("run", "sshd", "host_keys", "nodes"):
            os.mkdir(self.path(sub), 0o755)
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", ENV_MARK: self.state["id"]}
        hold = float(os.environ.get("GUARDIA_FLEET_TEST_HOLD_LOCK", "0"))
        if hold > 0:
            time.sleep(hold)          # test hook: keep DIR locked to prove a concurrent `up` refuses

    def setup_user_and_keys(self):
        wrong_needed = any(f["kind"] == "wrong_host_key" for fs in self.faults.values() for f in fs)
        jobs = [
            host.keygen_start(self.path("host_keys", "ssh_host_ed25519_key"), "ed25519", "guardia-fleet-host"),
            host.keygen_start(self.path("client_key"), "ed25519", "guardia-fleet-client"),
            host.keygen_start(self.path("client_key_ecdsa"), "ecdsa", "guardia-fleet-client-ecdsa"),
            host.keygen_start(self.path("client_key_other"), "ed25519", "guardia-fleet-unauthorized"),
        ]
        if wrong_needed:
            jobs.append(host.keygen_start(self.path("host_keys", "wrong_host_ed25519_key"), "ed25519",
                                          "guardia-fleet-wrong-host"))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation dir
        self.pw, self.password = host.ensure_user()
        self.uid, self.gid = self.pw.pw_uid, self.pw.pw_gid
        self.set_state("starting", uid=self.uid)
        host.cached_rsa_key(self.path("client_key_rsa"))
        host.keygen_wait(jobs)
        self.host_pub = host.public_key(self.path("host_keys", "ssh_host_ed25519_key"))
        keys = [host.public_key(self.path(k)) for k in ("client_key", "client_key_ecdsa", "client_key_rsa")]
        write_file(self.path("authorized_keys"), "".join(k + " guardia-fleet\n" for k in keys), 0o644)
        write_file(self.path("password"), self.password + "\n", 0o600)

    def make_tls(self):
        """--health-tls: a throwaway CA and a server certificate for 127.0.0.1 (openssl CLI),
        in DIR/tls. server.pem holds the chain (server, then CA)."""
        self.tls = None
        if not self.args.health_tls:
            return
        d = self.path("tls")
        os.makedirs(d, mode=0o755, exist_ok=True)
        f = {k: os.path.join(d, v) for k, v in (("ca_key", "ca.key"), ("ca", "ca.pem"), ("key", "server.key"),
                                               ("csr", "server.csr"), ("leaf", "server-leaf.pem"),
                                               ("cert", "server.pem"), ("ext", "server.ext"))}

        def openssl(*a):
            r = subprocess.run(["openssl", *a], capture_output=True, text=True)
            if r.returncode != 0:
                raise FleetError(f"openssl {a[0]} failed: {r.stderr.strip()}")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f["ca_key"], "-out", f["ca"], "-days", "30", "-subj", "/CN=guardia fleet test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f["key"], "-out", f["csr"], "-subj", f"/CN={LOOPBACK}")
        write_file(f["ext"], f"subjectAltName=IP:{LOOPBACK}\nbasicConstraints=CA:FALSE\n"
                             "extendedKeyUsage=serverAuth\n", 0o644)
        openssl("x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial",
                "-out", f["leaf"], "-days", "30", "-extfile", f["ext"])
        with open(f["leaf"]) as leaf, open(f["ca"]) as ca:
            write_file(f["cert"], leaf.read() + ca.read(), 0o644)
        os.chmod(f["ca"], 0o644)
        self.tls = {"ca": f["ca"], "cert": f["cert"], "key": f["key"]}

    def plan_nodes(self):
        width = faultlib.name_width(self.count)
        self.nodes = []
        for i in range(1, self.count + 1):
            name = faultlib.node_name(i, width)
            nd = self.path("nodes", name)
            fl = self.faults.get(name, [])
            k = faultlib.by_kind(fl)
            proxy = {kind: k[kind] for kind in faultlib.PROXY_KINDS if kind in k}
            self.nodes.append({
                "name": name, "index": i, "tier": self.tiers[i - 1],
                "node_dir": nd, "deploy_path": os.path.join(nd, "app"),
                "bin_dir": os.path.join(nd, "bin"), "state_dir": os.path.join(nd, "state"),
                "startup_script": os.path.join(nd, "bin", "startup.sh"),
                "shutdown_script": os.path.join(nd, "bin", "shutdown.sh"),
                "faults": fl, "by_kind": k, "proxy": proxy or None,
                "unreachable": k["unreachable"]["mode"] if "unreachable" in k else None,
                "host_key": "wrong" if "wrong_host_key" in k else "default",
                "ssh_port": None, "sshd_port": None, "health_port": None, "sshd_index": None,
                "mount": nd if "disk_full" in k else None,
                "health_path": self.args.health_path,
                "health_ok_status": self.args.health_ok_status, "health_body": self.args.health_body,
                "health_tls": self.tls,
                "health_faults": {x: k[x] for x in ("health_never", "health_slow", "health_flapping", "rejects_new_build") if x in k},
            })

    def build_trees(self):
        """Create every node's tree. File creation dominates on a disk-backed DIR (about half
        a millisecond each here), so nodes are built by a few threads in parallel."""
        self.started_long_ago = time.time() - 86400
        for n in self.nodes:
            if n["mount"]:
                os.mkdir(n["node_dir"], 0o755)
                self.mount_tmpfs(n)
        with concurrent.futures.ThreadPoolExecutor(BUILD_THREADS) as pool:
            for _ in pool.map(self.build_node, self.nodes):
                pass

    def mount_tmpfs(self, n):
        df, nd = n["by_kind"]["disk_full"], n["node_dir"]
        self.record_mount(nd)
        r = subprocess.run(["mount", "--no-canonicalize", "-t", "tmpfs", "-o",
                            f"size={df['size_mb']}m,mode=1755,uid={self.uid},gid={self.gid}",
                            TMPFS_SOURCE, nd], capture_output=True, text=True)
        if r.returncode != 0:
            raise FleetError(f"{n['name']}: disk_full: mounting a tmpfs on {nd} failed: "
                             f"{r.stderr.strip()} (needs CAP_SYS_ADMIN)")

    def build_node(self, n):
        uid, gid = self.uid, self.gid
        nd, app = n["node_dir"], n["deploy_path"]
        if not n["mount"]:
            os.mkdir(nd, 0o755)
        os.chown(nd, uid, gid)
        for d in (app, os.path.join(app, "conf"), n["state_dir"]):
            os.mkdir(d, 0o755)
            os.chown(d, uid, gid)
        for rel, (data, mode) in app_v1_files(n["name"]).items():
            write_file(os.path.join(app, rel), data, mode, uid, gid)
        os.mkdir(n["bin_dir"], 0o755)       # root-owned: a rollout cannot change the scripts
        running = os.path.join(n["state_dir"], "running")
        write_file(running, b"", 0o644, uid, gid)
        os.utime(running, (self.started_long_ago, self.started_long_ago))  # health_slow: restarts only
        self.write_scripts(n)
        if n["mount"]:
            self.fill_disk(n)

    def write_scripts(self, n):
        k, q = n["by_kind"], shlex.quote
        state, app, name = q(n["state_dir"]), q(n["deploy_path"]), n["name"]
        lines = ["#!/bin/sh", f"# Guardia test fleet: start the simulated service of {name}.",
                 f"state={state}", 'echo startup >>"$state/events.log"',
                 f'[ -d {app} ] || {{ echo "{name}: deploy path {app} missing" >&2; exit 2; }}']
        # A build that crashes on start: any deployed file carrying the marker makes startup
        # fail, on every node, so a rollback to the previous build starts cleanly again.
        lines += [f"if grep -rqsF -- 'GUARDIA_FAULT=startup_fails' {app}; then",
                  f'  echo "{name}: service failed to start: the deployed build carries '
                  f'GUARDIA_FAULT=startup_fails" >&2; exit 3; fi']
        if "startup_fails" in k:
            code = k["startup_fails"]["exit_code"]
            lines += [f'echo "{name}: service failed to start (fleet fault startup_fails)" >&2', f"exit {code}"]
        else:
            lines += [': >"$state/running"', f'echo "{name}: service started"']
        write_file(n["startup_script"], "\n".join(lines) + "\n", 0o755)
        lines = ["#!/bin/sh", f"# Guardia test fleet: stop the simulated service of {name}.",
                 f"state={state}", 'echo shutdown >>"$state/events.log"']
        if "shutdown_hangs" in k:
            lines.append(f"sleep {k['shutdown_hangs']['seconds']}  # fleet fault shutdown_hangs")
        lines += ['rm -f "$state/running"', f'echo "{name}: service stopped"']
        write_file(n["shutdown_script"], "\n".join(lines) + "\n", 0o755)

    def fill_disk(self, n):
        percent = n["by_kind"]["disk_full"]["percent"]
        # The node user owns the tmpfs root (it must create backups there), so it could
        # unlink any file in it, sticky bit or not. The fill file therefore sits in a
        # root-owned 0755 directory: the user may rename `.fill`, but cannot free the space.
        fill_dir = os.path.join(n["node_dir"], ".fill")
        os.mkdir(fill_dir, 0o755)
        os.chmod(fill_dir, 0o755)
        fd = os.open(os.path.join(fill_dir, "fill"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            for _ in range(8):
                st = os.statvfs(n["node_dir"])
                used = st.f_blocks - st.f_bfree
                if used and math.ceil(100 * used / (used + st.f_bavail)) >= percent:
                    return
                want_used = math.ceil(st.f_blocks * percent / 100) + 1
                os.write(fd, b"\0" * max(st.f_frsize, (want_used - used) * st.f_frsize))
            raise FleetError(f"{n['name']}: could not fill the tmpfs to {percent} %")
        finally:
            os.close(fd)

    # ------------------------------------------------------------ ports, sshd, server
    def group_sshds(self):
        groups = {}
        for n in self.nodes:
            if n["unreachable"]:
                continue
            groups.setdefault(n["host_key"], []).append(n)
        self.sshds = []
        for key in ("default", "wrong"):
            members = groups.get(key, [])
            for start in range(0, len(members), PORTS_PER_SSHD):
                i = len(self.sshds)
                chunk = members[start:start + PORTS_PER_SSHD]
                for n in chunk:
                    n["sshd_index"] = i
                self.sshds.append({"index": i, "key": key, "nodes": chunk,
                                   "conf": self.path("sshd", f"sshd-{i:03d}.conf"),
                                   "log": self.path("sshd", f"sshd-{i:03d}.log"),
                                   "pidfile": self.path("sshd", f"sshd-{i:03d}.pid"),
                                   "proc": None, "attempts": 0})

    def allocate_ports(self, alloc):
        for n in self.nodes:
            n["health_port"] = alloc.take()
            if n["unreachable"]:
                n["ssh_port"] = alloc.take()
                continue
            n["sshd_port"] = alloc.take()
            n["ssh_port"] = alloc.take() if n["proxy"] else n["sshd_port"]

    def sshd_config(self, g):
        user = {k.lower() for k, _ in self.user_opts}
        opts = list(self.user_opts) + [(k, v) for k, v in default_sshd_options()
                                       if k.lower() not in user]
        key = "ssh_host_ed25519_key" if g["key"] == "default" else "wrong_host_ed25519_key"
        lines = [f"# Generated by tools/fleet for fleet {self.state['id']} ({self.dir}); do not edit.",
                 *(f"ListenAddress {LOOPBACK}:{n['sshd_port']}" for n in g["nodes"]),
                 f"HostKey {self.path('host_keys', key)}",
                 f"PidFile {g['pidfile']}",
                 f"AuthorizedKeysFile {self.path('authorized_keys')}",
                 f"AllowUsers {USER}",
                 f"SetEnv {ENV_MARK}={self.state['id']}",
                 *(f"{k} {v}" for k, v in opts)]
        for n in g["nodes"]:
            k = n["by_kind"]
            extra = []
            if "auth_refused" in k:
                extra.append(f"DenyUsers {USER}")
            extra += [f["option"] for f in k.get("sshd_option", [])]
            if extra:
                lines.append(f"Match LocalPort {n['sshd_port']}")
                lines += [f"    {x}" for x in extra]
        write_file(g["conf"], "\n".join(lines) + "\n", 0o644)

    def start_sshd(self, g):
        self.sshd_config(g)
        if os.path.exists(g["pidfile"]):
            os.unlink(g["pidfile"])
        g["attempts"] += 1
        with open(g["log"], "ab") as log:
            p = subprocess.Popen([SSHD, "-D", "-f", g["conf"], "-E", g["log"]], env=self.env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                 start_new_session=True, close_fds=True)
        self.children.append(p)
        self.record_pid("sshd", p.pid)
        g["proc"] = p

    def stop_child(self, p):
        if p.poll() is None:
            p.kill()
        p.wait()

    def wait_sshds(self, alloc):
        deadline = time.monotonic() + SSHD_READY_TIMEOUT
        pending = {g["index"] for g in self.sshds}
        while pending:
            if time.monotonic() > deadline:
                raise FleetError(f"{len(pending)} sshd(s) not listening after {SSHD_READY_TIMEOUT} s "
                                 f"(e.g. {self.sshds[min(pending)]['log']})")
            # snapshot the listeners only after seeing the PidFiles (written after binding)
            bound = {i for i in pending if os.path.exists(self.sshds[i]["pidfile"])}
            by_inode = listening_ports_by_inode() if bound else {}
            for i in sorted(pending):
                g = self.sshds[i]
                p = g["proc"]
                want = {n["sshd_port"] for n in g["nodes"]}
                if p.poll() is not None:
                    log = tail(g["log"])
                    if "Cannot bind any address" in log and g["attempts"] < 5:
                        missing = want        # every port was taken meanwhile: new ports
                    else:
                        raise FleetError(f"sshd {g['conf']} exited with {p.returncode}: {log or 'no log'}")
                elif i not in bound:
                    continue                  # still binding (sshd writes PidFile after binding)
                else:
                    got = {by_inode[x] for x in pid_socket_inodes(p.pid) if x in by_inode}
                    missing = want - got
                    if not missing:
                        pending.discard(i)
                        continue
                    if g["attempts"] >= 5:
                        raise FleetError(f"sshd {g['conf']}: ports {sorted(missing)} stay taken")
                    self.stop_child(p)
                # a port was taken between probing and sshd's bind: move those nodes
                for n in g["nodes"]:
                    if n["sshd_port"] in missing:
                        old = n["sshd_port"]
                        n["sshd_port"] = alloc.take()
                        if n["ssh_port"] == old:
                            n["ssh_port"] = n["sshd_port"]
                print(f"fleet: ports {sorted(missing)} were taken meanwhile; restarting sshd {i} on new ports",
                      file=sys.stderr)
                self.start_sshd(g)
            time.sleep(0.01)

    def still_ours(self):
        """A `down` run meanwhile (e.g. after the caller of `up` was killed) wins."""
        try:
            st = read_json(self.path(STATE_FILE))
        except (OSError, ValueError):
            st = {}
        if st.get("id") != self.state["id"] or st.get("state") != "starting":
            raise FleetError("the fleet was taken down while starting")

    def start_everything(self):
        steal = []
        self.still_ours()
        with port_lock():
            alloc = PortAllocator(self.lo, self.hi)
            self.allocate_ports(alloc)
            # health/proxy/holder sockets are bound here, in the supervisor that serves them
            self.binder, self.plan = server.bind_all(self.nodes, alloc.take)
            # test hook: occupy some sshd ports to exercise the collision retry
            for n in self.nodes[:int(os.environ.get("GUARDIA_FLEET_TEST_STEAL_PORTS", "0"))]:
                if n["sshd_port"]:
                    sock = socket.socket()
                    sock.bind((LOOPBACK, n["sshd_port"]))
                    sock.listen(1)
                    steal.append(sock)
            for g in self.sshds:
                self.start_sshd(g)
            if os.environ.get("GUARDIA_FLEET_TEST_CRASH") == "after_start":
                os._exit(70)      # test hook: die without any cleanup, like a SIGKILL
            self.wait_sshds(alloc)
            self.still_ours()
        for sock in steal:
            sock.close()

    # ------------------------------------------------------------ outputs
    def write_outputs(self):
        a = self.args
        inv = {"nodes": [{
            "name": n["name"], "host": LOOPBACK, "ssh_port": n["ssh_port"], "user": USER,
            "auth": {"key_file": self.path("client_key")},
            "deploy_path": n["deploy_path"], "tier": n["tier"],
            "inst_id": f"INST-{n['index']:04d}", "system_name": a.system_name,
            "requires_restart": True,
            "shutdown_cmd": "sh " + shlex.quote(n["shutdown_script"]),
            "startup_cmd": "sh " + shlex.quote(n["startup_script"]),
            "health": {"port": n["health_port"], "path": a.health_path,
                       "timeout_s": a.health_timeout, "interval_s": a.health_interval,
                       **({"type": "https", "ca_file": self.tls["ca"]} if self.tls else {})},
        } for n in self.nodes]}
        write_json_atomic(self.path("inventory.json"), inv)
        write_file(self.path("known_hosts"),
                   "".join(f"[{LOOPBACK}]:{n['ssh_port']} {self.host_pub}\n" for n in self.nodes), 0o644)
        procs = [{"role": "sshd", "pid": g["proc"].pid, "index": g["index"], "host_key": g["key"],
                  "config": g["conf"], "log": g["log"], "pidfile": g["pidfile"],
                  "ports": [n["sshd_port"] for n in g["nodes"]]} for g in self.sshds]
        procs.append({"role": "server", "pid": os.getpid(), "log": self.path("run", "server.log")})
        for p in procs:
            p["starttime"] = read_proc(p["pid"]).starttime
        fleet = {
            "version": 1, "id": self.state["id"], "dir": self.dir, "state": "up",
            "created": self.state["created"], "user": USER, "uid": self.uid, "gid": self.gid,
            "password_file": self.path("password"),
            "client_keys": {k: self.path(f) for k, f in (("ed25519", "client_key"), ("ecdsa", "client_key_ecdsa"),
                                                         ("rsa", "client_key_rsa"), ("unauthorized", "client_key_other"))},
            "known_hosts": self.path("known_hosts"), "inventory": self.path("inventory.json"),
            "authorized_keys": self.path("authorized_keys"),
            "host_key": {"default": self.host_pub,
                         "wrong": host.public_key(self.path("host_keys", "wrong_host_ed25519_key"))
                         if any(g["key"] == "wrong" for g in self.sshds) else None},
            "sshd_options": [f"{k} {v}" for k, v in self.user_opts],
            "health_path": a.health_path, "port_range": [self.lo, self.hi],
            "health_tls": self.tls,
            "proxy_stats": self.path("run", "proxy-stats.json"),
            "processes": procs,
            "mounts": [n["mount"] for n in self.nodes if n["mount"]],
            "nodes": [{k: n[k] for k in ("name", "tier", "ssh_port", "sshd_port", "health_port", "sshd_index",
                                         "node_dir", "deploy_path", "bin_dir", "state_dir", "startup_script",
                                         "shutdown_script", "mount", "faults")} for n in self.nodes],
        }
        write_json_atomic(self.path("fleet.json"), fleet)

    def verify_login(self):
        """One real SSH login to a node without SSH-level faults: user, keys, modes work."""
        if self.args.no_verify:
            return
        if any(re.search("auth|pubkey|users|groups", k, re.I) for k, _ in self.user_opts):
            return      # the caller changed authentication on purpose
        ssh_faults = {"unreachable", "wrong_host_key", "auth_refused", "cut_after_bytes", "slow_link",
                      "stalling_link", "sshd_option"}
        for n in self.nodes:
            if not ssh_faults & set(n["by_kind"]):
                break
        else:
            return
        cmd = ["ssh", "-F", "/dev/null", "-i", self.path("client_key"), "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.path('known_hosts')}",
               "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
               "-o", "ConnectTimeout=20", "-p", str(n["ssh_port"]), f"{USER}@{LOOPBACK}",
               f"test -w {shlex.quote(n['deploy_path'])} && test -w {shlex.quote(n['node_dir'])}"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise FleetError(f"login check on {n['name']} (port {n['ssh_port']}) failed ({r.returncode}): "
                             f"{r.stderr.strip()[-500:]}")

    def summary(self):
        out = [f"fleet up: {self.count} nodes on {LOOPBACK}, {len(self.sshds)} sshd, 1 health/proxy server "
               f"(pid {os.getpid()}), {sum(1 for n in self.nodes if n['mount'])} tmpfs, in {self.elapsed():.2f} s",
               f"  dir:         {self.dir}",
               f"  inventory:   {self.path('inventory.json')}",
               f"  known_hosts: {self.path('known_hosts')}",
               f"  client key:  {self.path('client_key')}  (user {USER})"]
        for name in sorted(self.faults):
            desc = ", ".join(":".join([f["kind"], *(str(v) for k, v in f.items() if k != "kind")])
                             for f in self.faults[name])
            out.append(f"  fault:       {name}: {desc}")
        return "\n".join(out)

    def run(self):
        """Validate and claim DIR here, then fork the supervisor that does the rest.

        The supervisor (new session, child subreaper) starts the sshds as its children,
        serves health and proxies, and reaps whatever the fleet leaves orphaned: this
        machine's PID 1 may not reap, and `down` would otherwise leave zombies behind.
        It reports {"ok", "summary"|"error"} through a pipe; this process prints it.
        """
        # SIGTERM/SIGINT/SIGHUP stay pending (blocked) from here until a handler is in place in
        # this process (forward) and in the supervisor (on_term), both inheriting the mask: a
        # signal that arrives in between is handled, never the default death that would leave
        # a half-made fleet. DIR/run/ appearing tells a caller that a signal is handled now.
        stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        self.validate()
        self.prepare_dir()
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            # keep only the report pipe and DIR's lock: an inherited descriptor (a caller's
            # output pipe) held open by the long-lived supervisor would make the caller wait
            # for EOF
            low, high = sorted((wfd, self.lock_fd))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
            self.supervise(wfd)        # never returns
        os.close(wfd)
        self.record_pid("server", pid)     # also recorded by the child: whichever runs first

        forwarded = []

        def forward(signum, frame):
            forwarded.append(signum)
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGHUP, forward)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        data = b""
        while True:
            try:
                chunk = os.read(rfd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            data += chunk
        os.close(rfd)
        if os.environ.get("GUARDIA_FLEET_TEST_SIGNAL_AT_READY"):
            os.kill(os.getpid(), signal.SIGTERM)    # test hook: a caller's stop crossing the report
        try:
            result = json.loads(data)
        except ValueError:
            result = None
        if forwarded:
            # A stop signal was forwarded to the supervisor: whatever it reported, it is
            # stopping (or stopped) and the caller asked for a stop. Crossing an "ok" report,
            # the supervisor was already serving and stops serving, leaving sshds without their
            # health server; in the windows between its set-up and serving it exits without a
            # report. Either way: take everything down and say it was interrupted. Further
            # signals are ignored until then, so that the clean-up is not cut short.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            if result and not result.get("ok"):
                os.waitpid(pid, 0)
                raise FleetError(result["error"])   # the supervisor's own "interrupted" report
            reap_within(pid, 10)
            problems = teardown(self.dir, self.state)
            reap_within(pid, 10)
            msg = f"interrupted by signal {forwarded[0]} as the fleet came up; taken down again"
            self.set_state("down", last_error=msg, leaked=problems)
            raise FleetError(msg + (f", but left: {'; '.join(problems)}" if problems else ""))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)      # the outcome is known: stop forwarding
        if result and result.get("ok"):
            try:
                print(result["summary"], flush=True)
            except BrokenPipeError:
                pass
            return 0
        _, status = os.waitpid(pid, 0)
        if result:
            raise FleetError(result["error"])
        # the supervisor died without a word (killed, crashed)
        code = os.waitstatus_to_exitcode(status)
        if os.environ.get("GUARDIA_FLEET_TEST_CRASH"):
            raise FleetError(f"fleet supervisor died ({code}); test hook: left as is for `down`")
        problems = teardown(self.dir, self.state)
        self.set_state("down", last_error=f"supervisor died ({code})", leaked=problems)
        raise FleetError(f"fleet supervisor died ({code}) before the fleet was ready; cleaned up"
                         + (f", but left: {'; '.join(problems)}" if problems else ""))

    def supervise(self, wfd):
        code = 1
        try:
            os.setsid()
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(36, 1, 0, 0, 0)                  # PR_SET_CHILD_SUBREAPER
            libc.prctl(15, SUPERVISOR_COMM.encode(), 0, 0, 0)    # PR_SET_NAME: comm shown by ps
            self.record_pid("server", os.getpid())
            log = os.open(self.path("run", "server.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)

            def on_term(signum, frame):
                raise FleetError(f"interrupted by signal {signum}")
            signal.signal(signal.SIGTERM, on_term)
            signal.signal(signal.SIGINT, on_term)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
                server.raise_nofile(4 * self.count + 4096)
                for step in (self.setup_user_and_keys, self.make_tls, self.plan_nodes, self.build_trees, self.group_sshds,
                             self.start_everything, self.write_outputs, self.verify_login):
                    t = time.monotonic()
                    step()
                    self.timings[step.__name__] = round(time.monotonic() - t, 3)
                self.set_state("up", ready_s=round(self.elapsed(), 3), timings=self.timings)
                print(f"up in {self.elapsed():.2f} s: {self.timings}", flush=True)
            except BaseException as e:
                msg = str(e) if isinstance(e, FleetError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, FleetError):
                    traceback.print_exc()
                self.fail(msg)
                os.write(wfd, json.dumps({"ok": False, "error": msg}).encode())
                return
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

            def ready():
                os.write(wfd, json.dumps({"ok": True, "summary": self.summary()}).encode())
                os.close(wfd)
                os.close(self.lock_fd)      # the fleet is up: DIR's state now says so
            asyncio.run(server.serve(self.plan, self.path("run", "proxy-stats.json"), ready))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def fail(self, msg):
        print(f"fleet up failed: {msg}", file=sys.stderr)
        for p in self.children:
            try:
                self.stop_child(p)
            except OSError:
                pass
        problems = teardown(self.dir, self.state)
        server.reap_children()
        self.set_state("down", last_error=msg, leaked=problems)
        if problems:
            print("fleet: cleanup after the failed up left: " + "; ".join(problems), file=sys.stderr)


def reap_within(pid, seconds):
    """Waits up to `seconds` for child `pid` to exit; True once it is reaped (or already was)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def tail(path, n=1500):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def cmd_up(args):
    os.umask(0o022)
    return Up(args).run()
