#!/usr/bin/env python3
"""Hostile networks and services (issue 13, point 4): the real `guardia` binary against a fleet
whose links stall and whose health endpoints lie, and `guardia serve` against a frozen loop.

  (a) 10 % of the nodes behind a slow, stalling link (fleet fault stalling_link: 150 ms each
      way, random 1-3 s stalls, seeded): the rollout finishes, every node ends deployed or
      failed/rolled back with its lock released, the slow nodes' audit rows exist; and with a
      node deadline far too short for that link, the slow nodes fail cleanly by it.
  (b) a flapping health endpoint (200/503/200/...) is never strictly healthy in tier 1.
  (c) a health endpoint that accepts and never answers fails health by its deadline.
  (d) `guardia serve` frozen (SIGSTOP, then only its event-loop thread frozen by ptrace) stops
      pinging the watchdog; the test plays systemd's side of NOTIFY_SOCKET.

Outcomes are read from the nodes (`tools/fleet check --backups`), the exit code and --json
report, and the audit DB (sqlite3). Waits poll for a state under a generous overall deadline;
the only time bounds asserted are upper bounds derived from the configured deadlines.

Environment (set by test/hostile/CMakeLists.txt):
  GUARDIA_TEST_FLEET_HOSTILE  the fleet directory (fixture hostile_fleet)
  GUARDIA_BIN                 the guardia executable
  GUARDIA_FLEET_TOOL          tools/fleet
  GUARDIA_HOSTILE_WORK        root of the tests' temp dirs (removed by `test_hostile.py --cleanup`)

  test_hostile.py [unittest args]   run the tests (as root: the fleet's client key is root-only)
  test_hostile.py --cleanup         kill guardia processes a killed run left, remove the work root
"""

import ctypes
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FLEET_DIR = os.environ.get("GUARDIA_TEST_FLEET_HOSTILE", "")
GUARDIA = os.environ.get("GUARDIA_BIN") or os.path.join(ROOT, "build", "src", "guardia")
FLEET_TOOL = os.environ.get("GUARDIA_FLEET_TOOL") or os.path.join(ROOT, "tools", "fleet")
WORK_ROOT = os.environ.get("GUARDIA_HOSTILE_WORK") or (FLEET_DIR.rstrip("/") + "-work" if FLEET_DIR else "")
MARK = "GUARDIA_HOSTILE_TEST_ROOT"    # env mark of every guardia process a test starts

# The fixture's layout (test/hostile/CMakeLists.txt); checked in setUpClass.
ROLLOUT_NODES = [f"node-{i:04d}" for i in range(1, 21)]     # the rollout of (a): 20 nodes ...
STALLING = ["node-0019", "node-0020"]                        # ... 10 % of them stalling_link
FLAPPING = "node-0021"                                       # health_flapping:1
HANGING = "node-0022"                                        # health_never:hang
HEALTH_TIMEOUT_S = 5                                         # --health-timeout of the fixture
HEALTH_INTERVAL_S = 1

STAGE_PREFIX = ".guardia-stage."
SAFETY_S = 60          # added to every derived upper bound: process start, audit writes, load

# Step deadlines of (a): generous for a 300 ms round trip with 1-3 s stalls, but finite.
PIPELINE = {"keep_backups": 50, "connect_timeout_s": 15, "command_timeout_s": 20, "backup_timeout_s": 20,
            "transfer_timeout_s": 40, "shutdown_timeout_s": 20, "startup_timeout_s": 20}
NODE_DEADLINE_S = 90


def rollback_bound_s(p=PIPELINE, health_s=HEALTH_TIMEOUT_S):
    """Longest a node's clean-up may take after it failed or hit its deadline (a rollback is
    never cut short): one of each rollback step at its deadline, plus the rollback's health check."""
    return (p["connect_timeout_s"] + 4 * p["command_timeout_s"] + p["backup_timeout_s"]
            + p["shutdown_timeout_s"] + p["startup_timeout_s"] + health_s)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def kill_group(p):
    """SIGKILL a guardia process (its own session) and everything in its group."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    p.wait()


def wait_for(cond, timeout, what, step=0.05):
    """Poll cond() until it returns a true value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


class Run:
    def __init__(self, rc, out, err, seconds):
        self.rc, self.out, self.err, self.seconds = rc, out, err, seconds

    def __repr__(self):
        return f"rc={self.rc} after {self.seconds:.1f} s\n--- stdout\n{self.out}\n--- stderr\n{self.err[-6000:]}"

    @property
    def json(self):
        return json.loads(self.out)


class HostileTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("the hostile tests need root (the fleet's client key and node files are root-only)")
        if not FLEET_DIR or not os.path.exists(os.path.join(FLEET_DIR, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_HOSTILE={FLEET_DIR!r} (fixture hostile_fleet)")
        if not os.access(GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {GUARDIA}")
        with open(os.path.join(FLEET_DIR, "fleet.json")) as f:
            cls.info = json.load(f)
        with open(os.path.join(FLEET_DIR, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.fnodes = {n["name"]: n for n in cls.info["nodes"]}
        cls.known_hosts = os.path.join(FLEET_DIR, "known_hosts")
        kinds = {name: [x["kind"] for x in n["faults"]] for name, n in cls.fnodes.items()}
        want = {**{n: [] for n in ROLLOUT_NODES}, **{n: ["stalling_link"] for n in STALLING},
                FLAPPING: ["health_flapping"], HANGING: ["health_never"]}
        if kinds != want:
            raise AssertionError(f"the hostile_fleet fixture is not what the tests expect: {kinds}")
        for n in cls.inv.values():
            if (n["health"]["timeout_s"], n["health"]["interval_s"]) != (HEALTH_TIMEOUT_S, HEALTH_INTERVAL_S):
                raise AssertionError(f"{n['name']}: health timeout/interval are not the fixture's")
        os.makedirs(WORK_ROOT, exist_ok=True)
        os.chmod(WORK_ROOT, 0o711)

    # ------------------------------------------------------------------ plumbing
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=WORK_ROOT)
        os.chmod(self.tmp, 0o711)
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.tag = os.path.basename(self.tmp).rsplit("-", 1)[-1].replace("_", "x")

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write_json(self, name, obj):
        with open(self.path(name), "w") as f:
            json.dump(obj, f, indent=1)
        return self.path(name)

    def inventory(self, tiers):
        nodes = []
        for n, t in tiers.items():
            node = json.loads(json.dumps(self.inv[n]))
            node["tier"] = t
            nodes.append(node)
        return self.write_json("inventory.json", {"nodes": nodes})

    def artifacts(self, label):
        d = self.path("artifacts-" + label)
        os.makedirs(d)
        files = {"app.jar": os.urandom(48 * 1024) + f"\nbuild {label} {self.tag}\n".encode(),
                 "VERSION": f"v2-{label}-{self.tag}\n".encode()}
        out = {}
        for name, data in files.items():
            p = os.path.join(d, name)
            with open(p, "wb") as f:
                f.write(data)
            os.chmod(p, 0o644)
            out[name] = (p, data)
        return out

    def start(self, args, env=None):
        e = dict(os.environ, **{MARK: WORK_ROOT}, **(env or {}))
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=e, cwd=self.tmp)
        self.addCleanup(kill_group, p)       # a test failing midway leaves no guardia behind
        return p

    def deploy(self, tiers, arts, conf, timeout):
        """`guardia deploy --json`; a run still going after `timeout` s is killed and fails the test."""
        args = [GUARDIA, "deploy", "--inventory", self.inventory(tiers), "--known-hosts", self.known_hosts,
                "--db", self.path("audit.db"), "--config", self.write_json("config.json", conf),
                "--sr-id", f"HOSTILE-{self.tag}", "--json"]
        for p, _ in arts.values():
            args += ["--artifact", p]
        t0 = time.monotonic()
        p = self.start(args)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            out, err = p.communicate()
            self.fail(f"guardia deploy did not finish within {timeout} s (killed): the rollout hangs\n"
                      f"{out}\n{err[-6000:]}")
        return Run(p.returncode, out, err, time.monotonic() - t0)

    def check(self, *names):
        args = [FLEET_TOOL, "check", "--dir", FLEET_DIR, "--backups"]
        for n in names:
            args += ["--node", n]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["nodes"]

    def audit(self):
        c = sqlite3.connect(f"file:{self.path('audit.db')}?mode=ro", uri=True)
        c.row_factory = sqlite3.Row
        try:
            return ([dict(r) for r in c.execute("SELECT * FROM audit_log ORDER BY id")],
                    [dict(r) for r in c.execute("SELECT * FROM rollouts")],
                    {r["node"]: dict(r) for r in c.execute("SELECT * FROM node_results")})
        finally:
            c.close()

    def proxy_stats(self):
        with open(os.path.join(FLEET_DIR, "run", "proxy-stats.json")) as f:
            return json.load(f)

    @staticmethod
    def config(tiers, pipeline=None, **rollout):
        r = {"tiers": tiers, "failure_threshold_percent": 100, "max_failed_nodes": 0, "on_abort": "keep_deployed"}
        r.update(rollout)
        return {"rollout": r, "pipeline": dict(pipeline or {"keep_backups": 50})}

    # ------------------------------------------------------------------ node assertions
    def assert_clean(self, n, a):
        self.assertFalse(a["lock_present"], f"{n}: lock left")
        self.assertEqual(a["other_entries"], [], f"{n}: leftovers beside the deploy path")
        self.assertEqual([f for f in a["files"] if f.split("/")[-1].startswith(STAGE_PREFIX)], [],
                         f"{n}: staging files left")
        self.assertTrue(a["service_running"], f"{n}: service not running")

    def assert_deployed(self, n, b, a, arts):
        for name, (_, data) in arts.items():
            self.assertEqual(a["files"][name]["sha256"], sha256(data), f"{n}: {name}")
        for name in set(b["files"]) - set(arts):
            self.assertEqual(a["files"][name], b["files"][name], f"{n}: {name} must not change")
        self.assert_clean(n, a)

    def assert_lock_released(self, node, rows):
        """The report's lock_released is true for a node that took its lock (a LOCK STEP_OK
        audit row); a node stopped before that (in CONNECT, or in PRECHECK before the lock
        command) took none, and reports false. Either way no lock is left on the node:
        assert_clean checks that on the node itself."""
        n = node["name"]
        if [x for x in rows if x["node"] == n and x["step"] == "LOCK" and x["event"] == "STEP_OK"]:
            self.assertIs(node["lock_released"], True, node)
        else:
            self.assertIn(node["failed_step"], ("CONNECT", "PRECHECK", "LOCK"), node)

    def assert_old_files(self, n, b, a):
        """The tree of before, byte for byte (never changed, or restored exactly)."""
        self.assertEqual(a["tree_sha256"], b["tree_sha256"], f"{n}: tree not as before")
        self.assertEqual(a["files"], b["files"], n)

    # ================================================================== (a) stalling links
    def test_a1_rollout_with_stalling_nodes_finishes(self):
        names = ROLLOUT_NODES
        tiers = {n: 2 for n in names}
        conf = self.config([{"tier": 2, "batch_size": 10}], PIPELINE, node_deadline_s=NODE_DEADLINE_S)
        # every node: its deadline, then its clean-up; the window of 10 runs two rounds at most
        # before a slow node starts, so twice that bounds the whole rollout
        node_bound = NODE_DEADLINE_S + rollback_bound_s()
        bound = 2 * node_bound + SAFETY_S
        before = self.check(*names)
        stalls_before = {n: self.proxy_stats()[n].get("stalls", 0) for n in STALLING}
        arts = self.artifacts("stall")
        r = self.deploy(tiers, arts, conf, timeout=bound)
        self.assertIn(r.rc, (0, 1), r)
        rep = r.json
        self.assertEqual(rep["counts"]["not_started"], 0, r)
        self.assertEqual(rep["counts"]["total"], len(names))
        self.assertEqual(rep["status"], "SUCCEEDED" if r.rc == 0 else "FAILED", r)
        self.assertLessEqual(r.seconds, bound)
        nodes = {n["name"]: n for n in rep["nodes"]}
        after = self.check(*names)
        rows, rollouts, results = self.audit()
        outcomes = {}
        for n in names:
            node, b, a = nodes[n], before[n], after[n]
            outcomes[n] = node["outcome"]
            with self.subTest(node=n):
                self.assertIn(node["outcome"], ("DEPLOYED", "FAILED_UNCHANGED", "ROLLED_BACK"), node)
                self.assert_lock_released(node, rows)
                self.assertLessEqual(node["duration_ms"], node_bound * 1000, node)
                if node["outcome"] == "DEPLOYED":
                    self.assert_deployed(n, b, a, arts)
                else:
                    self.assert_old_files(n, b, a)
                    self.assert_clean(n, a)
        for n in names:
            if n not in STALLING:
                self.assertEqual(outcomes[n], "DEPLOYED", f"{n} (a normal link) must deploy: {nodes[n]}")
        # each stalling link really stalled during this rollout (the fixture's seeds stall the
        # first connection within its first few chunks)
        stats = self.proxy_stats()
        for n in STALLING:
            self.assertGreater(stats[n]["stalls"] - stalls_before[n], 0, f"{n}: {stats[n]}")
        self.assertEqual([x["status"] for x in rollouts], [rep["status"]])
        self.assertEqual(set(results), set(names))
        for n in STALLING:
            with self.subTest(audit=n):
                self.assertEqual(results[n]["status"], outcomes[n])
                self.assertIsNotNone(results[n]["finished_ms"])
                mine = [x for x in rows if x["node"] == n]
                self.assertTrue([x for x in mine if x["step"] == "CONNECT"], f"{n}: no CONNECT row")
                self.assertTrue([x for x in mine if x["step"] == "SUMMARY"], f"{n}: no SUMMARY row")
        print(f"\n  stalling rollout: {r.seconds:.1f} s (bound {bound} s); slow nodes "
              f"{[(n, outcomes[n], nodes[n]['duration_ms']) for n in STALLING]}; stalls "
              f"{[stats[n]['stalls'] - stalls_before[n] for n in STALLING]}", file=sys.stderr)

    def test_a2_node_deadline_cuts_a_stalling_node_cleanly(self):
        # A node deadline far below what the link allows (an SSH login alone takes ~10 round
        # trips of 300 ms, plus stalls): the slow nodes are cancelled at their deadline and
        # cleaned up; the fast node deploys; the rollout finishes.
        names = ["node-0018", *STALLING]
        tiers = {n: 2 for n in names}
        deadline_s = 3
        conf = self.config([{"tier": 2, "batch_size": "all"}], PIPELINE, node_deadline_s=deadline_s)
        node_bound = deadline_s + rollback_bound_s()
        bound = node_bound + SAFETY_S
        before = self.check(*names)
        arts = self.artifacts("deadline")
        r = self.deploy(tiers, arts, conf, timeout=bound)
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        self.assertEqual((rep["status"], rep["counts"]["deployed"], rep["counts"]["failed"],
                          rep["counts"]["not_started"]), ("FAILED", 1, 2, 0), r)
        self.assertLessEqual(r.seconds, bound)
        nodes = {n["name"]: n for n in rep["nodes"]}
        after = self.check(*names)
        self.assertEqual(nodes["node-0018"]["outcome"], "DEPLOYED")
        self.assert_deployed("node-0018", before["node-0018"], after["node-0018"], arts)
        rows, _, results = self.audit()
        for n in STALLING:
            node = nodes[n]
            with self.subTest(node=n):
                self.assertIn(node["outcome"], ("FAILED_UNCHANGED", "ROLLED_BACK"), node)
                # the node's own error names only the cancelled step ("... was cancelled"); why it
                # was cancelled is the rollout's NODE_DEADLINE audit row (asserted below)
                self.assertEqual(node["error_code"], "operation cancelled", node)
                self.assertRegex(node["error"], r"cancelled", node)
                self.assert_lock_released(node, rows)
                self.assertLessEqual(node["duration_ms"], node_bound * 1000, node)
                self.assert_old_files(n, before[n], after[n])
                self.assert_clean(n, after[n])
                self.assertEqual(results[n]["status"], node["outcome"])
                self.assertTrue([x for x in rows if x["node"] == n and x["step"] == "SUMMARY"], n)
                self.assertTrue([x for x in rows if x["event"] == "NODE_DEADLINE" and f"node '{n}'" in x["detail"]],
                                f"{n}: no NODE_DEADLINE audit row")

    # ================================================================== (b) flapping health
    def test_b_flapping_health_never_strictly_healthy(self):
        # 200, 503, 200, 503, ...: never the 3 consecutive 200s tier 1 demands. The fault is the
        # endpoint's, not the build's: the restored build flaps too, so the rollback restores
        # the files and restarts the service, but its own strict health check fails as well:
        # ROLLBACK_FAILED (a human must look), never DEPLOYED.
        names = [FLAPPING]
        conf = self.config([{"tier": 1, "batch_size": 1, "mode": "lockstep", "strict_health": True}],
                           {**PIPELINE, "strict_consecutive": 3})
        bound = 2 * HEALTH_TIMEOUT_S + rollback_bound_s() + SAFETY_S
        before = self.check(*names)
        arts = self.artifacts("flap")
        r = self.deploy({FLAPPING: 1}, arts, conf, timeout=bound)
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        node = rep["nodes"][0]
        self.assertEqual((node["name"], node["failed_step"]), (FLAPPING, "HEALTH"), node)
        self.assertIn(node["outcome"], ("ROLLED_BACK", "ROLLBACK_FAILED"), node)
        self.assertRegex(node["error"], r"not healthy after 5 s", node)
        if node["outcome"] == "ROLLBACK_FAILED":
            self.assertRegex(node["rollback_error"], r"ROLLBACK_HEALTH", node)
        self.assertIs(node["lock_released"], True, node)
        after = self.check(*names)
        self.assert_old_files(FLAPPING, before[FLAPPING], after[FLAPPING])
        self.assert_clean(FLAPPING, after[FLAPPING])
        self.assertEqual(after[FLAPPING]["service_events"][-4:], ["shutdown", "startup", "shutdown", "startup"])
        rows, _, results = self.audit()
        self.assertEqual(results[FLAPPING]["status"], node["outcome"])
        self.assertFalse([x for x in rows if x["node"] == FLAPPING and x["step"] == "HEALTH"
                          and x["event"] == "STEP_OK"], "the flapping node was never called healthy")
        print(f"\n  flapping: {node['outcome']} in {r.seconds:.1f} s: {node['error']}", file=sys.stderr)

    # ================================================================== (c) hanging health
    def test_c_health_that_never_answers_fails_by_its_deadline(self):
        names = [HANGING]
        conf = self.config([{"tier": 2, "batch_size": 1}], PIPELINE)
        bound = 2 * HEALTH_TIMEOUT_S + rollback_bound_s() + SAFETY_S
        before = self.check(*names)
        arts = self.artifacts("hang")
        r = self.deploy({HANGING: 2}, arts, conf, timeout=bound)
        self.assertEqual(r.rc, 1, r)
        self.assertLessEqual(r.seconds, bound)
        node = r.json["nodes"][0]
        self.assertEqual((node["name"], node["failed_step"], node["error_code"]),
                         (HANGING, "HEALTH", "deadline exceeded"), node)
        self.assertRegex(node["error"], r"not healthy after 5 s", node)
        # the restored build's endpoint hangs too: files back, service restarted, and the
        # rollback's health check fails by its own deadline
        self.assertIn(node["outcome"], ("ROLLED_BACK", "ROLLBACK_FAILED"), node)
        self.assertIs(node["lock_released"], True, node)
        self.assertLessEqual(node["duration_ms"], (2 * HEALTH_TIMEOUT_S + rollback_bound_s()) * 1000, node)
        after = self.check(*names)
        self.assert_old_files(HANGING, before[HANGING], after[HANGING])
        self.assert_clean(HANGING, after[HANGING])
        rows, _, results = self.audit()
        self.assertEqual(results[HANGING]["status"], node["outcome"])
        print(f"\n  hanging health: {node['outcome']} in {r.seconds:.1f} s: {node['error']}", file=sys.stderr)

    # ================================================================== (d) watchdog
    def serve_config(self):
        token = self.path("token")
        with open(token, "w") as f:
            f.write(secrets.token_hex(24) + "\n")
        os.chmod(token, 0o600)
        os.makedirs(self.path("state"), mode=0o700)
        return self.write_json("guardia.json", {
            "ssh": {"known_hosts": self.known_hosts, "host_key_policy": "strict", "key_dirs": [FLEET_DIR]},
            "store": {"db": self.path("guardia.db")},
            "service": {"listen_address": "127.0.0.1", "port": 0, "token_file": token,
                        "state_dir": self.path("state"), "shutdown_grace_s": 5}})

    def test_d_frozen_service_stops_watchdog_pings(self):
        watchdog_usec = 1_000_000
        interval = watchdog_usec / 2 / 1e6          # guardia pings every WATCHDOG_USEC / 2
        quiet = 6 * interval                        # "several intervals" without a ping
        name = f"guardia-hostile-notify-{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)                      # abstract: the work dir's path may be too long
        self.addCleanup(sock.close)
        got = []                                    # (monotonic time, message)
        lock = threading.Lock()
        stop = threading.Event()

        def receive():
            sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    m = sock.recv(4096).decode()
                except socket.timeout:
                    continue
                except OSError:
                    return
                with lock:
                    got.append((time.monotonic(), m))
        t = threading.Thread(target=receive, daemon=True)
        t.start()
        self.addCleanup(t.join, 5)
        self.addCleanup(stop.set)

        def pings(since=0.0):
            with lock:
                return [ts for ts, m in got if m == "WATCHDOG=1" and ts > since]

        def ready():
            with lock:
                return [m for _, m in got if "READY=1" in m.split("\n")]

        # exec: WATCHDOG_PID names the shell, which becomes guardia (the pid must match, or
        # guardia refuses to ping on another process's behalf)
        p = self.start(["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" serve --config "$1"', GUARDIA, self.serve_config()],
                       env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": str(watchdog_usec)})
        wait_for(lambda: ready() or p.poll() is not None, 60, "READY=1")
        self.assertIsNone(p.poll(), f"guardia serve exited {p.returncode}")
        self.assertIn(f"MAINPID={p.pid}", ready()[0])
        wait_for(lambda: len(pings()) >= 4, 30, "4 watchdog pings")

        def state(tid=None):
            with open(f"/proc/{p.pid}/task/{tid or p.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]

        def quiet_window():
            """No ping for `quiet` s, counted from a moment the process can no longer send."""
            start = time.monotonic()
            time.sleep(quiet)
            return pings(start)

        # 1. SIGSTOP: the whole process frozen
        os.kill(p.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: state() == "T", 30, "the process stopped")
            self.assertEqual(quiet_window(), [], "a ping arrived while the process was stopped")
        finally:
            os.kill(p.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: len(pings(resumed)) >= 3, 30, "pings after SIGCONT")

        # 2. Only the event-loop thread frozen (ptrace-stopped; guardia serve runs its io_context
        # on the main thread): the other threads (audit writer, I/O pool) keep running, as they
        # would when a handler wedges the loop. A ping from any thread but the loop's would
        # keep arriving now.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        libc.ptrace.restype = ctypes.c_long
        PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH, WALL = 0x4206, 0x4207, 17, 0x40000000
        others = [int(x) for x in os.listdir(f"/proc/{p.pid}/task") if int(x) != p.pid]
        self.assertTrue(others, "guardia serve has threads besides the loop's (the audit writer)")
        if libc.ptrace(PTRACE_SEIZE, p.pid, None, None) != 0:
            self.fail(f"ptrace(SEIZE): {os.strerror(ctypes.get_errno())}")
        try:
            self.assertEqual(libc.ptrace(PTRACE_INTERRUPT, p.pid, None, None), 0, os.strerror(ctypes.get_errno()))
            wpid, _ = os.waitpid(p.pid, WALL)
            self.assertEqual(wpid, p.pid)
            self.assertEqual(state(), "t", "the loop thread is in a ptrace stop")
            self.assertEqual({tid: state(tid) for tid in others if state(tid) in "tT"}, {},
                             "only the loop thread is stopped")
            self.assertEqual(quiet_window(), [], "a ping arrived while the event loop was frozen: the "
                                                 "watchdog does not prove the loop is alive")
        finally:
            libc.ptrace(PTRACE_DETACH, p.pid, None, None)
        resumed = time.monotonic()
        wait_for(lambda: len(pings(resumed)) >= 3, 30, "pings after the loop thread resumed")

        # still a working service: SIGTERM stops it cleanly
        os.kill(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err[-4000:])
        with lock:
            self.assertTrue([m for _, m in got if "STOPPING=1" in m.split("\n")], got)


# ---------------------------------------------------------------------- cleanup (ctest)

def cleanup():
    """Kill guardia processes a killed run left behind (marked MARK=WORK_ROOT in their
    environment), then remove WORK_ROOT. Exit 1 if something had to be killed."""
    if not WORK_ROOT:
        return 0
    mark, problems = f"{MARK}={WORK_ROOT}\0".encode(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if mark not in f.read():
                    continue
            os.kill(int(name), signal.SIGCONT)       # a test killed while it held one stopped
            os.kill(int(name), signal.SIGKILL)
            problems.append(f"guardia process {name} was still running (killed)")
        except OSError:
            pass
    shutil.rmtree(WORK_ROOT, ignore_errors=True)
    for p in problems:
        print(f"hostile cleanup: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(cleanup())
    unittest.main(verbosity=2)
