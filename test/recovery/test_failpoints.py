#!/usr/bin/env python3
"""Crash campaign (issue 13): kill -9 at every step of the node pipeline, then recover.

For every failpoint (include/guardia/core/failpoint.hpp) in {before, after} x {PRECHECK, LOCK,
BACKUP, TRANSFER, SHUTDOWN, ACTIVATE, STARTUP, HEALTH, ROLLBACK, UNLOCK}, mid:TRANSFER, and the
parts of a rollback (RESTORE, ROLLBACK_SHUTDOWN, ROLLBACK_STARTUP, ROLLBACK_HEALTH), and for
each engine (the CLI `guardia deploy`, the service `guardia serve`), one cell:

  1. a two-node rollout (the target node and a healthy companion, both tier 2: they run at
     once) is started with GUARDIA_FAILPOINT=<when>:<STEP>@<target>; the process must die by
     SIGKILL at exactly that point (its "guardia: failpoint ...: SIGKILL" line, signal 9);
  2. recovery: CLI `guardia recover --db` (and, for a sample of cells, the next
     `guardia deploy` on the same database, to another node); service: `guardia serve`
     restarted on the same configuration and store, until the rollout's row is finished;
  3. on every node of the rollout (read with `tools/fleet check --backups` and its health
     endpoint): either exactly the old tree (digest as before) and healthy on it, or the new
     build (sha256 of the artifacts, the rest unchanged) and healthy; no lock, no
     `.guardia-stage.*` file, nothing beside the deploy path (no `.guardia-restore`);
  4. in the store: the rollout finished (ABORTED), each node's result agrees with the node
     (DEPLOYED <-> new build), every STEP_START of the rollout has its end row (STEP_OK,
     STEP_FAILED or STEP_INTERRUPTED), and the step that was killed has its intent row and
     ends STEP_INTERRUPTED.
Points of the success path run on a healthy target; ROLLBACK, its parts and UNLOCK-after-
failure on a target whose health fails for any new build (rejects_new_build).

Cells run in parallel, each on a slot of four nodes of its own and a database of its own. The
observed matrix (step x point x engine -> outcome) is written as JSON and Markdown to
GUARDIA_RECOVERY_SUMMARY (docs/TESTING.md, "Crash campaign (failpoints)", is pasted from it).

Environment (set by test/recovery/CMakeLists.txt):
  GUARDIA_TEST_FLEET_RECOVERY  the fleet directory (fixture recovery_fleet)
  GUARDIA_BIN                  the guardia executable, built with -DGUARDIA_FAILPOINTS=ON
  GUARDIA_FLEET_TOOL           tools/fleet
  GUARDIA_RECOVERY_WORK        root of the cells' temp dirs (removed by --cleanup)
  GUARDIA_RECOVERY_SUMMARY     where to write the matrix (<path>.json and <path>.md)
  GUARDIA_RECOVERY_JOBS        cells at once (default: one per slot of the fleet)
  GUARDIA_RECOVERY_ONLY        optional regex on cell names (e.g. 'ROLLBACK.*cli')

  test_failpoints.py [unittest args]   run the campaign (as root, like the fleet)
  test_failpoints.py --cleanup         kill guardia processes a killed run left, remove the work root
"""

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
import urllib.parse

FLEET_DIR = os.environ.get("GUARDIA_TEST_FLEET_RECOVERY", "")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GUARDIA = os.environ.get("GUARDIA_BIN") or os.path.join(ROOT, "build", "src", "guardia")
FLEET_TOOL = os.environ.get("GUARDIA_FLEET_TOOL") or os.path.join(ROOT, "tools", "fleet")
WORK_ROOT = os.environ.get("GUARDIA_RECOVERY_WORK") or (FLEET_DIR.rstrip("/") + "-work" if FLEET_DIR else "")
SUMMARY = os.environ.get("GUARDIA_RECOVERY_SUMMARY", "")
ONLY = os.environ.get("GUARDIA_RECOVERY_ONLY", "")
MARK = "GUARDIA_RECOVERY_TEST_ROOT"   # env mark of every guardia process the campaign starts

# The fixture's layout (test/recovery/CMakeLists.txt), checked in setUpClass: slots of four
# nodes, node 4k+1..4k+3 healthy (target, companion, spare), node 4k+4 rejects_new_build.
SLOT_SIZE = 4

RUN_TIMEOUT = 120          # one guardia run until it dies or ends
READY_TIMEOUT = 90         # guardia serve until its readiness line (recovery runs before it)
HTTP_TIMEOUT = 30
STAGE_PREFIX = ".guardia-stage."
READY_RE = re.compile(r"^guardia: listening on (https?)://([0-9.]+):(\d+)$")
END_EVENTS = ("STEP_OK", "STEP_FAILED", "STEP_INTERRUPTED")
# Steps one remote command carries together: their failpoints coincide, the intent row is the
# first step's (node_pipeline.cpp: prepare(); activate_release(): the TRANSFER verification with
# SHUTDOWN, ACTIVATE and STARTUP, whose intent rows are the TRANSFER steps').
INTENT_OF = {"LOCK": "PRECHECK", "BACKUP": "PRECHECK",
             "SHUTDOWN": "TRANSFER", "ACTIVATE": "TRANSFER", "STARTUP": "TRANSFER"}

TIERS = [{"tier": 1, "batch_size": 1, "mode": "lockstep", "strict_health": True},
         {"tier": 2, "batch_size": 10},
         {"tier": 3, "batch_size": "all"}]
ROLLOUT = {"tiers": TIERS, "failure_threshold_percent": 10, "max_failed_nodes": 0, "on_abort": "keep_deployed"}

SUCCESS_STEPS = ["PRECHECK", "LOCK", "BACKUP", "TRANSFER", "SHUTDOWN", "ACTIVATE", "STARTUP", "HEALTH", "UNLOCK"]
FAILURE_STEPS = ["ROLLBACK", "RESTORE", "ROLLBACK_SHUTDOWN", "ROLLBACK_STARTUP", "ROLLBACK_HEALTH", "UNLOCK"]
STEP_ORDER = SUCCESS_STEPS[:-1] + ["ROLLBACK", "RESTORE", "ROLLBACK_SHUTDOWN", "ROLLBACK_STARTUP",
                                   "ROLLBACK_HEALTH", "UNLOCK"]
# CLI cells recovered by the next `guardia deploy` (to the slot's spare node) instead of
# `guardia recover`: a sample across the pipeline.
NEXT_DEPLOY_SAMPLE = {("after", "LOCK", "success"), ("mid", "TRANSFER", "success"),
                      ("after", "ACTIVATE", "success"), ("before", "HEALTH", "success"),
                      ("after", "ROLLBACK", "failure"), ("before", "UNLOCK", "failure")}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def health_get(port, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/health")
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


class Cell:
    def __init__(self, engine, when, step, path):
        self.engine, self.when, self.step, self.path = engine, when, step, path
        self.recovery = ("restart" if engine == "service" else
                         "next deploy" if (when, step, path) in NEXT_DEPLOY_SAMPLE else "guardia recover")

    @property
    def point(self):
        return f"{self.when}:{self.step}"

    @property
    def name(self):
        return f"{self.point} ({self.path} path) x {self.engine}"

    def key(self):
        return (STEP_ORDER.index(self.step), self.path, ["before", "mid", "after"].index(self.when), self.engine)


def all_cells():
    cells = []
    for engine in ("cli", "service"):
        for step in SUCCESS_STEPS:
            for when in ("before", "after"):
                cells.append(Cell(engine, when, step, "success"))
        cells.append(Cell(engine, "mid", "TRANSFER", "success"))
        for step in FAILURE_STEPS:
            for when in ("before", "after"):
                cells.append(Cell(engine, when, step, "failure"))
    if ONLY:
        cells = [c for c in cells if re.search(ONLY, c.name)]
    return cells


class CellFailure(AssertionError):
    pass


def expect(cond, msg):
    if not cond:
        raise CellFailure(msg)


# ---------------------------------------------------------------------- processes

class Procs:
    """Every process the campaign starts; all killed (whole group) at the end, whatever happened."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs = []

    def start(self, args, env_extra=None, cwd=None):
        env = dict(os.environ, **{MARK: WORK_ROOT})
        env.pop("GUARDIA_FAILPOINT", None)
        env.update(env_extra or {})
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, start_new_session=True, env=env, cwd=cwd)
        with self.lock:
            self.procs.append(p)
        return p

    @staticmethod
    def kill(p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self):
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            self.kill(p)


PROCS = Procs()


class Run:
    def __init__(self, args, rc, out, err, seconds):
        self.args, self.rc, self.out, self.err, self.seconds = args, rc, out, err, seconds

    def __repr__(self):
        return (f"guardia {' '.join(self.args[1:3])}: rc={self.rc} after {self.seconds:.1f} s\n--- stdout\n"
                f"{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}")


def run(args, env_extra=None, cwd=None, timeout=RUN_TIMEOUT):
    t0 = time.monotonic()
    p = PROCS.start(args, env_extra, cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        Procs.kill(p)
        out, err = p.communicate()
        raise CellFailure(f"{args[:2]} did not end within {timeout} s (killed)\n{out[-2000:]}\n{err[-2000:]}")
    return Run(args, p.returncode, out, err, time.monotonic() - t0)


class Service:
    """One `guardia serve` in its own session; its output drained into lines."""

    def __init__(self, conf_path, cwd, env_extra=None):
        self.lines, self.lock = [], threading.Lock()
        self.ready = threading.Event()
        self.host = self.port = None
        self.proc = PROCS.start([GUARDIA, "serve", "--config", conf_path], env_extra, cwd)
        self.threads = [threading.Thread(target=self._drain, args=(s, tag), daemon=True)
                        for s, tag in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self.threads:
            t.start()

    def _drain(self, stream, tag):
        for line in iter(stream.readline, ""):
            line = line.rstrip("\n")
            with self.lock:
                self.lines.append((tag, line))
            m = READY_RE.match(line) if tag == "out" else None
            if m and not self.ready.is_set():
                self.host, self.port = m.group(2), int(m.group(3))
                self.ready.set()

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                self.join()
                raise CellFailure(f"guardia serve exited {self.proc.returncode} before it was ready\n{self.log()}")
            if time.monotonic() > deadline:
                Procs.kill(self.proc)
                raise CellFailure(f"guardia serve: no readiness line within {timeout} s (killed)\n{self.log()}")

    def wait_exit(self, timeout):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.join()
        return rc

    def join(self):
        for t in self.threads:
            t.join(10)

    def err_lines(self):
        with self.lock:
            return [line for tag, line in self.lines if tag == "err"]

    def log(self, tail=60):
        with self.lock:
            lines = self.lines[-tail:]
        return "--- guardia serve log\n" + "\n".join(f"[{t}] {x}" for t, x in lines)

    def api(self, method, path, body=None, *, token, query=None, raw=None, ctype=None):
        if query:
            path += "?" + urllib.parse.urlencode(query)
        h = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif raw is not None:
            data, h["Content-Type"] = raw, ctype
        elif method in ("POST", "PUT"):
            h["Content-Length"] = "0"
        c = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


# ---------------------------------------------------------------------- one cell

class CellRun:
    def __init__(self, campaign, cell, slot):
        self.c, self.cell, self.slot = campaign, cell, slot
        healthy_target, companion, spare, reject = slot
        self.target = healthy_target if cell.path == "success" else reject
        self.companion, self.spare = companion, spare
        self.nodes = [self.target, self.companion]
        self.tmp = tempfile.mkdtemp(prefix=re.sub(r"[^A-Za-z0-9]+", "-", cell.name) + "-", dir=WORK_ROOT)
        os.chmod(self.tmp, 0o711)
        self.tag = secrets.token_hex(4)
        self.fp = f"{cell.point}@{self.target}"
        self.result = {"cell": cell.name, "engine": cell.engine, "point": cell.point, "step": cell.step,
                       "when": cell.when, "path": cell.path, "target": self.target, "companion": self.companion,
                       "recovery": cell.recovery}

    def path(self, *names):
        return os.path.join(self.tmp, *names)

    def write_json(self, name, obj):
        with open(self.path(name), "w") as f:
            json.dump(obj, f, indent=1)
        return self.path(name)

    def artifacts(self, label):
        d = self.path("artifacts-" + label)
        os.makedirs(d)
        files = {"app.jar": os.urandom(256 * 1024) + f"\nbuild {label} {self.tag}\n".encode(),
                 "VERSION": f"v2-{label}-{self.tag}\n".encode()}
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(d, name), 0o644)
        return {name: (os.path.join(d, name), data) for name, data in files.items()}

    def node_doc(self, name, **extra):
        node = json.loads(json.dumps(self.c.inv[name]))
        node["tier"] = 2
        node.update(extra)
        return node

    def check(self, *names):
        args = [FLEET_TOOL, "check", "--dir", FLEET_DIR, "--backups"]
        for n in names:
            args += ["--node", n]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        expect(r.returncode == 0, f"fleet check: {r.stderr}")
        return json.loads(r.stdout)["nodes"]

    def q(self, db, sql, *args):
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute(sql, args)]
        finally:
            c.close()

    def assert_killed(self, rc, err_lines):
        line = f"guardia: failpoint {self.fp}: SIGKILL"
        expect(rc == -signal.SIGKILL, f"the process must die by SIGKILL at {self.fp}, got rc={rc}")
        expect(line in err_lines, f"no line {line!r} on stderr: {err_lines[-20:]}")

    # ------------------------------------------------------------ engines
    def run(self):
        before = self.check(*self.nodes, self.spare)
        for n in self.nodes + [self.spare]:
            a = before[n]
            expect(not a["lock_present"] and not a["other_entries"] and a["service_running"] and a["exists"],
                   f"fleet node {n} is not usable before the cell (lock {a['lock_present']}, leftovers "
                   f"{a['other_entries']}, running {a['service_running']}): an earlier cell broke it")
        arts = self.artifacts("crash")
        t0 = time.monotonic()
        if self.cell.engine == "cli":
            db, rollout_id = self.run_cli(arts)
        else:
            db, rollout_id = self.run_service(arts)
        self.result["seconds"] = round(time.monotonic() - t0, 1)
        self.verify(db, rollout_id, before, arts)
        return self.result

    def run_cli(self, arts):
        db = self.path("audit.db")
        inv = self.write_json("inventory.json", {"nodes": [self.node_doc(n) for n in self.nodes]})
        conf = self.write_json("config.json", {"rollout": ROLLOUT, "pipeline": {"keep_backups": 50}})
        args = [GUARDIA, "deploy", "--inventory", inv, "--known-hosts", self.c.known_hosts, "--db", db,
                "--config", conf, "--sr-id", f"FP-{self.tag}", "--json"]
        for p, _ in arts.values():
            args += ["--artifact", p]
        r = run(args, {"GUARDIA_FAILPOINT": self.fp}, self.tmp)
        self.assert_killed(r.rc, r.err.splitlines())
        self.crashed = self.check(*self.nodes)
        rows = self.q(db, "SELECT id, status FROM rollouts")
        expect(len(rows) == 1 and rows[0]["status"] == "RUNNING", f"one RUNNING rollout left by the crash: {rows}")
        rollout_id = rows[0]["id"]
        if self.cell.recovery == "guardia recover":
            r = run([GUARDIA, "recover", "--db", db, "--inventory", inv, "--config", conf,
                     "--known-hosts", self.c.known_hosts, "--json"], cwd=self.tmp)
            expect(r.rc == 0, f"guardia recover must make every node safe (exit 0)\n{r}")
            rep = json.loads(r.out)
            self.result["recovery_lines"] = rep.get("lines", [])
            r2 = run([GUARDIA, "recover", "--db", db, "--known-hosts", self.c.known_hosts], cwd=self.tmp)
            expect(r2.rc == 0 and "nothing to recover" in r2.out, f"a second guardia recover finds nothing\n{r2}")
        else:
            # The next deploy on the same database, to the spare node only: it recovers the
            # crashed rollout first, from the inventory the database recorded.
            arts2 = self.artifacts("next")
            inv2 = self.write_json("inventory-next.json", {"nodes": [self.node_doc(self.spare)]})
            args = [GUARDIA, "deploy", "--inventory", inv2, "--known-hosts", self.c.known_hosts, "--db", db,
                    "--config", conf, "--sr-id", f"FP-NEXT-{self.tag}", "--json"]
            for p, _ in arts2.values():
                args += ["--artifact", p]
            r = run(args, cwd=self.tmp)
            expect(r.rc == 0, f"the next guardia deploy recovers, then deploys the spare node (exit 0)\n{r}")
            lines = [x for x in r.err.splitlines() if x.startswith("guardia: recovery: ")]
            expect(any(rollout_id in x for x in lines), f"the next deploy says it recovered {rollout_id}\n{r}")
            self.result["recovery_lines"] = [x[len("guardia: recovery: "):] for x in lines]
            spare = self.check(self.spare)[self.spare]
            expect(spare["files"]["VERSION"]["sha256"] == sha256(arts2["VERSION"][1]) and not spare["lock_present"],
                   f"the next deploy deployed the spare node {self.spare}")
        return db, rollout_id

    def run_service(self, arts):
        db, state, token = self.path("guardia.db"), self.path("state"), secrets.token_hex(24)
        fd = os.open(self.path("token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.makedirs(state, mode=0o700)
        conf = self.write_json("guardia.json", {
            "rollout": ROLLOUT, "pipeline": {"keep_backups": 50},
            "ssh": {"known_hosts": self.c.known_hosts, "host_key_policy": "strict", "key_dirs": [FLEET_DIR]},
            "store": {"db": db},
            "service": {"listen_address": "127.0.0.1", "port": 0, "token_file": self.path("token"),
                        "state_dir": state, "shutdown_grace_s": 60},
            "notifications": {"webhooks": []}})
        inst, system, sr = f"INST-{self.tag}", f"sys-{self.tag}", f"FP-{self.tag}"

        def ok(svc, status, r, what):
            expect(r[0] == status, f"{what}: HTTP {r[0]} {r[1][:500]!r}\n{svc.log()}")
            return json.loads(r[1])

        svc = Service(conf, self.tmp, {"GUARDIA_FAILPOINT": self.fp})
        try:
            self.crash_service(svc, token, inst, system, sr, arts, ok)
        finally:
            Procs.kill(svc.proc)     # a cell failing midway leaves no service behind
        self.crashed = self.check(*self.nodes)
        rows = self.q(db, "SELECT id, status FROM rollouts")
        expect(len(rows) == 1 and rows[0]["status"] == "RUNNING", f"one RUNNING rollout left by the crash: {rows}")
        rollout_id = rows[0]["id"]

        # Restart on the same configuration and store, without the failpoint: it recovers.
        svc2 = Service(conf, self.tmp)
        try:
            svc2.wait_ready()
            deadline = time.monotonic() + RUN_TIMEOUT
            while True:
                rows = self.q(db, "SELECT status, finished_ms FROM rollouts WHERE id = ?", rollout_id)
                if rows and rows[0]["status"] != "RUNNING" and rows[0]["finished_ms"] is not None:
                    break
                expect(time.monotonic() < deadline, f"the restarted service did not finish {rollout_id}: {rows}\n"
                                                    f"{svc2.log()}")
                time.sleep(0.2)
            st = ok(svc2, 200, svc2.api("GET", f"/api/deploy/{sr}", token=token), "deploy status")
            self.result["task_status"] = st.get("task_status")
            self.result["recovery_lines"] = [x for x in svc2.err_lines() + [y for t, y in svc2.lines if t == "out"]
                                             if "recover" in x.lower()][:10]
            svc2.proc.send_signal(signal.SIGTERM)
            rc = svc2.wait_exit(60)
            expect(rc == 0, f"the restarted service stops cleanly on SIGTERM (rc {rc})\n{svc2.log()}")
        finally:
            Procs.kill(svc2.proc)
        return db, rollout_id

    def crash_service(self, svc, token, inst, system, sr, arts, ok):
        """Inventory, task, artifacts and trigger on a service armed with the failpoint; it dies."""
        svc.wait_ready()
        doc = {"nodes": [self.node_doc(n, inst_id=inst, system_name=system) for n in self.nodes]}
        ok(svc, 200, svc.api("POST", "/api/inventory", doc, token=token), "import inventory")
        ok(svc, 201, svc.api("POST", "/api/tasks", {"sr_id": sr, "inst_id": inst, "system_name": system,
                                                     "requester": "alice"}, token=token), "create task")
        for name, (_, data) in arts.items():
            ok(svc, 201, svc.api("PUT", f"/api/tasks/{sr}/artifacts/{name}", query={"sha256": sha256(data)},
                                 raw=data, ctype="application/octet-stream", token=token), f"stage {name}")
        try:
            r = svc.api("POST", "/api/deploy/trigger", {"sr_id": sr, "approver_id": "bob"}, token=token)
            expect(r[0] == 202, f"trigger: HTTP {r[0]} {r[1][:500]!r}\n{svc.log()}")
        except (OSError, http.client.HTTPException):
            pass    # an early failpoint may kill the service before its answer: the store has the rollout
        rc = svc.wait_exit(RUN_TIMEOUT)
        expect(rc is not None, f"guardia serve did not die at {self.fp} within {RUN_TIMEOUT} s\n{svc.log()}")
        self.assert_killed(rc, svc.err_lines())

    # ------------------------------------------------------------ the verdict
    def crash_tree(self, b, a, arts):
        """What the crash left live, staging files aside: old, new, or partly new."""
        a = dict(a, files={f: v for f, v in a["files"].items() if not f.split("/")[-1].startswith(STAGE_PREFIX)})
        if a["files"] == b["files"] and a["dirs"] == b["dirs"]:
            return "old"
        return "new" if self.classify(b, a, arts, exact_old=False) == "new" else "partly new"

    def classify(self, b, a, arts, exact_old=True):
        if exact_old and a["tree_sha256"] == b["tree_sha256"] and a["files"] == b["files"] and a["dirs"] == b["dirs"]:
            return "old"
        new = (all(a["files"].get(n, {}).get("sha256") == sha256(data) for n, (_, data) in arts.items())
               and set(a["files"]) == set(b["files"]) | set(arts)
               and all(a["files"][f] == b["files"][f] for f in set(b["files"]) - set(arts))
               and a["dirs"] == b["dirs"])
        return "new" if new else "neither"

    def verify(self, db, rollout_id, before, arts):
        # What the crash left (for the matrix): the target's lock and live tree.
        ct = self.crashed[self.target]
        self.result["crash_left"] = {"lock": ct["lock_present"], "tree": self.crash_tree(before[self.target], ct, arts),
                                     "stage_files": any(f.split("/")[-1].startswith(STAGE_PREFIX) for f in ct["files"]),
                                     "beside": ct["other_entries"]}
        after = self.check(*self.nodes)
        results = {r["node"]: r for r in self.q(db, "SELECT * FROM node_results WHERE rollout_id = ?", rollout_id)}
        rollout = self.q(db, "SELECT * FROM rollouts WHERE id = ?", rollout_id)
        expect(len(rollout) == 1 and rollout[0]["status"] == "ABORTED" and rollout[0]["finished_ms"] is not None
               and "interrupted" in rollout[0]["reason"],
               f"the rollout is finished ABORTED (interrupted) after recovery: {rollout}")
        self.result["rollout"] = rollout[0]["status"]
        ended = {}
        for n in self.nodes:
            b, a = before[n], after[n]
            state = self.classify(b, a, arts)
            ended[n] = state
            expect(state in ("old", "new"), f"{n}: after recovery neither exactly the old tree nor the new build: "
                                            f"files {json.dumps(a['files'])[:1500]}")
            expect(a["exists"], f"{n}: deploy path missing")
            expect(not a["lock_present"], f"{n}: lock left after recovery")
            expect(a["other_entries"] == [], f"{n}: left beside the deploy path: {a['other_entries']}")
            expect(not [f for f in a["files"] if f.split("/")[-1].startswith(STAGE_PREFIX)],
                   f"{n}: staging files left: {[f for f in a['files'] if STAGE_PREFIX in f]}")
            expect(a["service_running"], f"{n}: service not running after recovery")
            status, body = health_get(self.c.inv[n]["health"]["port"])
            expect(status == 200 and body.get("version") == a["version"],
                   f"{n}: not healthy on what it runs ({state}): HTTP {status} {body}")
            r = results.get(n)
            expect(r is not None, f"{n}: no node_results row for {rollout_id}: {results}")
            want = {"new": {"DEPLOYED"}, "old": {"ROLLED_BACK", "FAILED_UNCHANGED", "SKIPPED"}}[state]
            expect(r["status"] in want, f"{n}: node_results says {r['status']} ({r['error']!r}) but the node is on "
                                        f"the {state} build")
        self.result["target_ended"] = ended[self.target]
        self.result["target_status"] = results[self.target]["status"]
        self.result["companion_ended"] = ended[self.companion]
        self.result["companion_status"] = results[self.companion]["status"]

        # The audit log: every step that ran has its intent and its outcome.
        rows = self.q(db, "SELECT * FROM audit_log WHERE rollout_id = ? ORDER BY id", rollout_id)
        # Where the dead process's rows end and recovery's begin.
        recovery_start = min([r["id"] for r in rows if r["event"] == "RECOVERY_START"] or [float("inf")])
        for n in self.nodes:
            open_, ended_by = [], {}     # ended_by: STEP_START row id -> the event that closed it
            for r in rows:
                if r["node"] != n:
                    continue
                if r["event"] == "STEP_START":
                    open_.append(r)
                elif r["event"] in END_EVENTS:
                    for i in range(len(open_) - 1, -1, -1):
                        if open_[i]["step"] == r["step"]:
                            ended_by[open_[i]["id"]] = r["event"]
                            del open_[i]
                            break
            expect(not open_, f"{n}: step(s) with an intent row (STEP_START) and no outcome: "
                              f"{[r['step'] for r in open_]}")
            # The target was mid-step: recovery inspected it. The companion may have finished
            # (its result stored) before the crash: then recovery leaves it alone.
            recovered = [r for r in rows if r["node"] == n and r["event"] == "NODE_RECOVERED"]
            expect(len(recovered) == 1 if n == self.target else len(recovered) <= 1,
                   f"{n}: {'one' if n == self.target else 'at most one'} NODE_RECOVERED row, got {len(recovered)}")
            if n == self.target:
                intent = INTENT_OF.get(self.cell.step, self.cell.step)
                starts = [r for r in rows if r["node"] == n and r["step"] == intent and r["event"] == "STEP_START"
                          and r["id"] < recovery_start]
                expect(starts, f"{n}: no intent row (STEP_START {intent}) for the step killed at {self.cell.point}")
                killed = ended_by.get(starts[-1]["id"]) if starts else None
                expect(killed == "STEP_INTERRUPTED",
                       f"{n}: the step killed at {self.cell.point} ({intent}) must end STEP_INTERRUPTED, "
                       f"it ended {killed}")
                self.result["interrupted"] = sorted({r["step"] for r in rows if r["node"] == n
                                                     and r["event"] == "STEP_INTERRUPTED"},
                                                    key=lambda s: (s not in STEP_ORDER, STEP_ORDER.index(s)
                                                                   if s in STEP_ORDER else 0, s))
        events = {(r["step"], r["event"]) for r in rows if r["node"] == ""}
        expect(("RECOVERY", "RECOVERY_START") in events and ("RECOVERY", "ROLLOUT_ABORTED") in events,
               f"the rollout's RECOVERY_START and ROLLOUT_ABORTED rows: {sorted(events)}")


# ---------------------------------------------------------------------- the campaign

class FailpointCampaign(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("the crash campaign needs root (the fleet's client key and node files are root-only)")
        if not FLEET_DIR or not os.path.exists(os.path.join(FLEET_DIR, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_RECOVERY={FLEET_DIR!r} (fixture recovery_fleet)")
        if not os.access(GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {GUARDIA}")
        with open(os.path.join(FLEET_DIR, "fleet.json")) as f:
            info = json.load(f)
        with open(os.path.join(FLEET_DIR, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.known_hosts = os.path.join(FLEET_DIR, "known_hosts")
        kinds = {n["name"]: [x["kind"] for x in n["faults"]] for n in info["nodes"]}
        names = sorted(kinds)
        want = {n: (["rejects_new_build"] if i % SLOT_SIZE == SLOT_SIZE - 1 else []) for i, n in enumerate(names)}
        if not names or len(names) % SLOT_SIZE or kinds != want:
            raise AssertionError(f"the recovery_fleet fixture is not slots of {SLOT_SIZE} nodes (3 healthy, "
                                 f"1 rejects_new_build): {kinds}")
        for n in names:
            if not (cls.inv[n].get("shutdown_cmd") and cls.inv[n].get("startup_cmd")):
                raise AssertionError(f"{n}: the campaign needs nodes with shutdown/startup commands")
        cls.slots = [names[i:i + SLOT_SIZE] for i in range(0, len(names), SLOT_SIZE)]
        os.makedirs(WORK_ROOT, exist_ok=True)
        os.chmod(WORK_ROOT, 0o711)

    @classmethod
    def tearDownClass(cls):
        PROCS.kill_all()

    def test_kill_9_at_every_step(self):
        cells = sorted(all_cells(), key=lambda c: (c.path != "failure", c.key()))   # the long ones first
        self.assertTrue(cells, f"no cell matches GUARDIA_RECOVERY_ONLY={ONLY!r}")
        jobs = int(os.environ.get("GUARDIA_RECOVERY_JOBS") or len(self.slots))
        free = list(self.slots[:max(1, min(jobs, len(self.slots)))])
        workers, busy = len(free), [0]
        cond = threading.Condition()
        t0 = time.monotonic()

        def one(cell):
            # A slot whose cell failed may be left broken (a lock, a stopped service): it is
            # retired, the other cells go on on the other slots.
            with cond:
                cond.wait_for(lambda: free or not busy[0])
                if not free:
                    return {"cell": cell.name, "target": "-", "companion": "-", "ok": False, "step": cell.step,
                            "when": cell.when, "path": cell.path, "engine": cell.engine, "recovery": cell.recovery,
                            "error": "not run: every slot was retired after a failed cell"}
                slot = free.pop()
                busy[0] += 1
            ok = False
            try:
                cr = CellRun(self, cell, slot)
                try:
                    res = cr.run()
                    res["ok"] = ok = True
                except Exception as e:       # a cell failure names its cell below
                    res = dict(cr.result, ok=False, error=f"{type(e).__name__}: {e}",
                               trace="" if isinstance(e, CellFailure) else traceback.format_exc())
                else:
                    shutil.rmtree(cr.tmp, ignore_errors=True)    # a failed cell's files stay for a look
                return res
            finally:
                with cond:
                    busy[0] -= 1
                    if ok:
                        free.append(slot)
                    cond.notify_all()

        try:
            with concurrent.futures.ThreadPoolExecutor(workers) as ex:
                results = list(ex.map(one, cells))
        finally:
            PROCS.kill_all()
        wall = time.monotonic() - t0
        write_summary(results, wall)
        print(f"\ncrash campaign: {len(results)} cells, {sum(r['ok'] for r in results)} passed, "
              f"{wall:.0f} s wall", file=sys.stderr)
        for r in sorted(results, key=lambda r: r["cell"]):
            with self.subTest(cell=r["cell"]):
                if not r["ok"]:
                    self.fail(f"{r['cell']} (target {r['target']}, companion {r['companion']}): {r['error']}\n"
                              f"{r.get('trace', '')}")


def outcome_text(r):
    if not r["ok"]:
        return "**FAILED**: " + r["error"].splitlines()[0][:160]
    left = r["crash_left"]
    lock = "lock held" if left["lock"] else "no lock"
    staged = " + staged" if left["stage_files"] else ""
    return f"{lock}, live {left['tree']}{staged} → **{r['target_status']}**, {r['target_ended']}"


def write_summary(results, wall):
    if not SUMMARY:
        return
    os.makedirs(os.path.dirname(os.path.abspath(SUMMARY)), exist_ok=True)
    with open(SUMMARY + ".json", "w") as f:
        json.dump({"wall_seconds": round(wall, 1), "cells": results}, f, indent=1)
    by = {}
    for r in results:
        by.setdefault((r["step"], r["path"], r["when"]), {})[r["engine"]] = r
    rows = ["| step | point | target | CLI: crash left → recovery → node | service: crash left → recovery → node |"
            " interrupted (target) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for (step, path, when) in sorted(by, key=lambda k: (STEP_ORDER.index(k[0]), k[1] == "failure",
                                                         ["before", "mid", "after"].index(k[2]))):
        e = by[(step, path, when)]
        cli, svc = e.get("cli"), e.get("service")
        inter = sorted({s for r in (cli, svc) if r and r.get("ok") for s in [", ".join(r.get("interrupted", []))]})
        rec = " (next deploy)" if cli and cli["recovery"] == "next deploy" else ""
        rows.append(f"| {step} | {when} | {'healthy' if path == 'success' else 'rejects new build'} | "
                    f"{outcome_text(cli) + rec if cli else '–'} | {outcome_text(svc) if svc else '–'} | "
                    f"{' / '.join(inter)} |")
    with open(SUMMARY + ".md", "w") as f:
        f.write("\n".join(rows) + "\n")
        comp = {}
        for r in results:
            if r.get("ok"):
                comp.setdefault(r["companion_status"], set()).add(r["companion_ended"])
        f.write(f"\n{len(results)} cells, {sum(r['ok'] for r in results)} passed, {wall:.0f} s wall. "
                f"Companion nodes ended: " + ", ".join(f"{k} ({'/'.join(sorted(v))})" for k, v in sorted(comp.items()))
                + ".\n")


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
            os.kill(int(name), signal.SIGKILL)
            problems.append(f"guardia process {name} was still running (killed)")
        except OSError:
            pass
    shutil.rmtree(WORK_ROOT, ignore_errors=True)
    for p in problems:
        print(f"recovery cleanup: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(cleanup())
    unittest.main(verbosity=2)
