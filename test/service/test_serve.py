#!/usr/bin/env python3
"""End-to-end acceptance tests of `guardia serve` (docs/API.md) against a real fleet.

Every test starts the real binary (`guardia serve --config FILE`, port 0, its own session)
on a configuration, token, state directory and store of its own, with a webhook receiver of
its own, imports an inventory of the fleet nodes it owns (disjoint per test, tiers and
inst_id/system_name set per test) through POST /api/inventory, and drives the service over
HTTP only. It asserts real outcomes:
  - what happened on the nodes, read straight from the node directories with
    `tools/fleet check --backups` (tree digests, file sha256, service state, lock, staging
    leftovers) and the nodes' own health endpoints,
  - the store, read with sqlite3 (tasks, rollouts, node_results, audit_log, outbox),
  - the webhook deliveries the receiver got (path, headers, JSON body).
Node state is captured before each rollout and compared after, so the order of the tests
does not matter.

Environment (set by test/service/CMakeLists.txt):
  GUARDIA_TEST_FLEET_SERVE  the fleet directory (fixture serve_fleet)
  GUARDIA_BIN               the guardia executable
  GUARDIA_FLEET_TOOL        tools/fleet
  GUARDIA_SERVE_WORK        root of the tests' temp dirs (removed by `test_serve.py --cleanup`)

  test_serve.py [unittest args]   run the tests (as root: the fleet's client key is root-only)
  test_serve.py --cleanup         kill `guardia serve` processes a killed run left, remove the work root
"""

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FLEET_DIR = os.environ.get("GUARDIA_TEST_FLEET_SERVE", "")
GUARDIA = os.environ.get("GUARDIA_BIN") or os.path.join(ROOT, "build", "src", "guardia")
FLEET_TOOL = os.environ.get("GUARDIA_FLEET_TOOL") or os.path.join(ROOT, "tools", "fleet")
WORK_ROOT = os.environ.get("GUARDIA_SERVE_WORK") or (FLEET_DIR.rstrip("/") + "-work" if FLEET_DIR else "")
MARK = "GUARDIA_SERVE_TEST_ROOT"    # env mark of every guardia process a test starts

# The fixture's layout (test/service/CMakeLists.txt); checked in setUpClass. Each test owns
# the nodes named in its body; nobody else touches them.
HEALTHY = [f"node-{i:04d}" for i in range(1, 17)]
REJECT = ["node-0017", "node-0018"]                    # rejects_new_build
SLOW = [f"node-{i:04d}" for i in range(19, 25)]        # health_slow:10
SLOW_HEALTH_TIMEOUT_S = 25     # given to the slow nodes in the tests' inventories: they get healthy

READY_TIMEOUT = 60             # start (and recovery) until the readiness line
ROLLOUT_TIMEOUT = 150          # one rollout until its final task status
HTTP_TIMEOUT = 30
STAGE_PREFIX = ".guardia-stage."
READY_RE = re.compile(r"^guardia: listening on (https?)://([0-9.]+):(\d+)$")

TIERS = [{"tier": 1, "batch_size": 1, "mode": "lockstep", "strict_health": True},
         {"tier": 2, "batch_size": 10},
         {"tier": 3, "batch_size": "all"}]
FINAL_TASK = {"PENDING_PM_VALIDATION", "FAILED_ROLLBACK", "COMPLETED", "ROLLED_BACK", "ROLLBACK_FAILED"}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def contains_value(obj, want):
    """`want` appears as a (string) value anywhere in a JSON document."""
    if isinstance(obj, dict):
        return any(contains_value(v, want) for v in obj.values())
    if isinstance(obj, list):
        return any(contains_value(v, want) for v in obj)
    return obj == want


def health_get(port, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/health")
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


# ---------------------------------------------------------------------- webhook receiver

class Receiver:
    """A webhook endpoint on a port chosen up front: start() / stop() can be repeated on the
    same port (stopped = nothing listens: connections are refused). Records every POST."""

    def __init__(self):
        self.port = free_port()
        self.lock = threading.Lock()
        self.got = []           # dicts: path, headers (lower-case names), body (JSON or None), raw, t
        self.server = None
        self.thread = None

    def start(self):
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with rec.lock:
                    rec.got.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body, "raw": raw, "t": time.monotonic()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        deadline = time.monotonic() + 10
        while True:
            try:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def deliveries(self, sr_id=None, path=None):
        with self.lock:
            got = list(self.got)
        return [d for d in got if (path is None or d["path"] == path)
                and (sr_id is None or contains_value(d["body"], sr_id))]


# ---------------------------------------------------------------------- the service process

class Service:
    """One `guardia serve` process in its own session; stdout/stderr drained into a log."""

    def __init__(self, conf_path, cwd, label):
        self.conf_path, self.cwd, self.label = conf_path, cwd, label
        self.proc = None
        self.lines = []             # ("out"|"err", line)
        self.ready_lines = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.host = self.port = None

    def start(self, timeout=READY_TIMEOUT, extra_args=()):
        env = dict(os.environ, **{MARK: WORK_ROOT})
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen([GUARDIA, "serve", "--config", self.conf_path, *extra_args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True, env=env, cwd=self.cwd)
        self.threads = [threading.Thread(target=self._drain, args=(self.proc.stdout, "out"), daemon=True),
                        threading.Thread(target=self._drain, args=(self.proc.stderr, "err"), daemon=True)]
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                self._join()
                raise AssertionError(f"{self.label}: guardia serve exited {self.proc.returncode} before it was "
                                     f"ready\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.label}: no readiness line within {timeout} s (killed)\n{self.log()}")
        self.ready_s = time.monotonic() - self.t_start

    def _drain(self, stream, tag):
        for line in iter(stream.readline, ""):
            line = line.rstrip("\n")
            with self.lock:
                self.lines.append((tag, line))
            if tag == "out":
                m = READY_RE.match(line)
                if m:
                    self.ready_lines.append(line)
                    if not self.ready.is_set():
                        self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
                        self.ready.set()

    def _join(self):
        for t in self.threads:
            t.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if not stream.closed and not any(t.is_alive() for t in self.threads):
                stream.close()

    def log(self, tail=200):
        with self.lock:
            lines = self.lines[-tail:]
        return f"--- guardia serve log ({self.label}, last {len(lines)} lines)\n" + \
            "\n".join(f"[{tag}] {line}" for tag, line in lines)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def kill(self):
        """SIGKILL the whole process group (start_new_session: group id = its pid)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self._join()

    def wait_exit(self, timeout):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._join()
        return rc


class Resp:
    def __init__(self, status, headers, data):
        self.status, self.headers, self.data = status, headers, data

    @property
    def json(self):
        try:
            return json.loads(self.data)
        except ValueError:
            raise AssertionError(f"not JSON: HTTP {self.status} {self.data[:500]!r}")

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"HTTP {self.status} {self.data[:2000]!r}"


def parse_raw_response(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0]) if lines and lines[0] else None
    if not m:
        raise AssertionError(f"no HTTP response: {raw[:500]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return Resp(int(m.group(1)), headers, body)


# ---------------------------------------------------------------------- the tests

class ServeTest(unittest.TestCase):
    maxDiff = None
    FIXTURE = "serve_fleet"

    @classmethod
    def expected_faults(cls):
        """{node: [fault kinds]} of the fixture (test/service/CMakeLists.txt)."""
        return {**{n: [] for n in HEALTHY}, **{n: ["rejects_new_build"] for n in REJECT},
                **{n: ["health_slow"] for n in SLOW}}

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("the service tests need root (the fleet's client key and node files are root-only)")
        if not FLEET_DIR or not os.path.exists(os.path.join(FLEET_DIR, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_SERVE={FLEET_DIR!r} (fixture {cls.FIXTURE})")
        if not os.access(GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {GUARDIA}")
        with open(os.path.join(FLEET_DIR, "fleet.json")) as f:
            cls.info = json.load(f)
        with open(os.path.join(FLEET_DIR, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.fnodes = {n["name"]: n for n in cls.info["nodes"]}
        cls.known_hosts = os.path.join(FLEET_DIR, "known_hosts")
        kinds = {name: [x["kind"] for x in n["faults"]] for name, n in cls.fnodes.items()}
        if kinds != cls.expected_faults():
            raise AssertionError(f"the {cls.FIXTURE} fixture is not what the tests expect: {kinds}")
        slow = [x["seconds"] for n in cls.fnodes.values() for x in n["faults"] if x["kind"] == "health_slow"]
        cls.slow_s = min(slow) if slow else 0
        if cls.slow_s + 5 > SLOW_HEALTH_TIMEOUT_S:
            raise AssertionError("SLOW_HEALTH_TIMEOUT_S must exceed the fixture's health_slow seconds")
        os.makedirs(WORK_ROOT, exist_ok=True)
        os.chmod(WORK_ROOT, 0o711)

    # ------------------------------------------------------------------ plumbing
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=WORK_ROOT)
        os.chmod(self.tmp, 0o700)
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.tag = os.path.basename(self.tmp).rsplit("-", 1)[-1].replace("_", "x")
        self.inst_id, self.system_name = f"INST-{self.tag}", f"sys-{self.tag}"
        self.token = secrets.token_hex(24)
        self.svc = None
        self.services = []
        self.receiver = Receiver()
        self.addCleanup(self.receiver.stop)
        self.addCleanup(self._teardown_services)

    def _teardown_services(self):
        failed = getattr(getattr(self, "_outcome", None), "success", False) is False
        for s in self.services:
            s.kill()
            if failed:
                print("\n" + s.log(), file=sys.stderr)

    def path(self, *names):
        return os.path.join(self.tmp, *names)

    @property
    def db(self):
        return self.path("guardia.db")

    @property
    def state_dir(self):
        return self.path("state")

    @property
    def drop_dir(self):
        """service.drop_dir: the only place the path form of staging reads from."""
        d = self.path("drop")
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d

    def write_json(self, name, obj):
        with open(self.path(name), "w") as f:
            json.dump(obj, f, indent=1)
        return self.path(name)

    def config(self, service=None, notifications=None, rollout=None):
        """The configuration of the brief: engine sections plus "service" and "notifications"."""
        r = {"tiers": TIERS}
        r.update(rollout or {})
        svc = {"listen_address": "127.0.0.1", "port": 0, "token_file": self.path("token"),
               "state_dir": self.state_dir, "max_body_bytes": 65536, "max_artifact_bytes": 16 * 1024 * 1024,
               "max_header_bytes": 8192, "max_json_depth": 16, "forbid_self_approval": True,
               "shutdown_grace_s": 120, "drop_dir": self.drop_dir}
        svc.update(service or {})
        notif = {"webhooks": [
                    {"name": "pm", "event": "pm_review_needed", "url": self.receiver.url("/pm"),
                     "headers": {"X-Hook-Token": "t0k"}},
                    {"name": "fail", "event": "deployment_failed", "url": self.receiver.url("/fail")},
                    {"name": "rb", "event": "rollback_completed", "url": self.receiver.url("/rb")}],
                 "retry": {"initial_delay_ms": 200, "max_delay_ms": 1000, "max_attempts": 0}}
        if notifications is not None:
            notif = notifications
        return {"rollout": r, "pipeline": {"keep_backups": 50},
                "ssh": {"known_hosts": self.known_hosts, "host_key_policy": "strict",
                        "key_dirs": [FLEET_DIR]},        # the fleet's client key lives there
                "store": {"db": self.db}, "service": svc, "notifications": notif}

    def start_service(self, conf=None, receiver=True, label="serve"):
        """Write token and config (unless already there), start the receiver and the service."""
        if not os.path.exists(self.path("token")):
            fd = os.open(self.path("token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if conf is not None or not os.path.exists(self.path("guardia.json")):
            self.write_json("guardia.json", conf if conf is not None else self.config())
        if receiver and self.receiver.server is None:
            self.receiver.start()
        s = Service(self.path("guardia.json"), self.tmp, f"{self._testMethodName} {label} #{len(self.services) + 1}")
        self.services.append(s)
        s.start()
        self.assertEqual(s.scheme, "http")
        self.assertEqual(s.host, "127.0.0.1")
        self.svc = s
        return s

    def fail_with_log(self, msg):
        self.fail(f"{msg}\n{self.svc.log() if self.svc else ''}")

    # ------------------------------------------------------------------ HTTP
    def api(self, method, path, body=None, *, query=None, headers=None, token=True, ctype=None, raw=None,
            timeout=HTTP_TIMEOUT):
        """One request on a fresh connection. body: JSON-encoded (Content-Type application/json);
        raw: bytes sent as they are (Content-Type ctype)."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        h = {}
        if token is True:
            h["Authorization"] = f"Bearer {self.token}"
        elif token:
            h["Authorization"] = token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
        if ctype is not None:
            h["Content-Type"] = ctype
        if data is None and method in ("POST", "PUT"):
            h["Content-Length"] = "0"
        h.update(headers or {})
        c = http.client.HTTPConnection(self.svc.host, self.svc.port, timeout=timeout)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        except (OSError, http.client.HTTPException) as e:
            self.fail_with_log(f"{method} {path}: {e!r}")
        finally:
            c.close()

    def raw_request(self, data, timeout=HTTP_TIMEOUT):
        """Send bytes as they are (ignoring a connection the server closes early), read the answer."""
        s = socket.create_connection((self.svc.host, self.svc.port), timeout=timeout)
        try:
            try:
                s.sendall(data)
            except OSError:
                pass
            chunks = []
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                resp = b"".join(chunks)
                head, sep, body = resp.partition(b"\r\n\r\n")
                if sep:
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if m and len(body) >= int(m.group(1)):
                        break
            return parse_raw_response(b"".join(chunks))
        finally:
            s.close()

    def assert_error(self, r, status, code, *in_message):
        self.assertEqual(r.status, status, r)
        body = r.json
        self.assertEqual(body.get("error"), code, r)
        self.assertIsInstance(body.get("message"), str, r)
        for part in in_message:
            self.assertIn(part, body["message"], r)
        self.assertTrue((r.header("content-type") or "").startswith("application/json"), r.headers)
        return body

    def ok(self, r, status=200):
        self.assertEqual(r.status, status, f"{r}\n{self.svc.log(40)}")
        return r.json

    # ------------------------------------------------------------------ polling
    def wait_for(self, what, fn, timeout, interval=0.2):
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                self.fail_with_log(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    def deploy_status(self, sr):
        return self.ok(self.api("GET", f"/api/deploy/{sr}"))

    def wait_task(self, sr, final, timeout=ROLLOUT_TIMEOUT, passing=("DEPLOYING",)):
        """Poll GET /api/deploy/{sr} until task_status is `final`; every status seen before it
        must be one of `passing`."""
        seen = []

        def done():
            d = self.deploy_status(sr)
            st = d["task_status"]
            if not seen or seen[-1] != st:
                seen.append(st)
            if st == final:
                return d
            self.assertIn(st, passing, f"{sr}: task status went {seen}, waiting for {final}")
            return None
        return self.wait_for(f"{sr} to reach {final} (seen {seen})", done, timeout)

    # ------------------------------------------------------------------ store
    def q(self, sql, *args):
        c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute(sql, args)]
        finally:
            c.close()

    def audit_rows(self, sr):
        return self.q("SELECT * FROM audit_log WHERE sr_id = ? ORDER BY id", sr)

    def outbox(self, sr, event=None):
        rows = self.q("SELECT * FROM outbox WHERE sr_id = ? ORDER BY created_ms, id", sr)
        return [r for r in rows if event is None or r["event"] == event]

    def api_audit(self, sr, limit=100):
        """Every audit event of sr through GET /api/audit, paging with after_id."""
        events, after, pages = [], 0, 0
        while True:
            d = self.ok(self.api("GET", "/api/audit", query={"sr_id": sr, "after_id": after, "limit": limit}))
            self.assertEqual(d["sr_id"], sr)
            self.assertLessEqual(len(d["events"]), limit)
            events += d["events"]
            pages += 1
            self.assertLess(pages, 1000)
            if d["next_after_id"] is None:
                return events
            self.assertEqual(d["next_after_id"], d["events"][-1]["id"], d)
            after = d["next_after_id"]

    # ------------------------------------------------------------------ inventory, tasks, artifacts
    def nodes_doc(self, tiers, slow_timeout=True, **overrides):
        """Inventory document for {node: tier}: inst_id/system_name of this test; slow nodes get a
        health timeout they can pass; overrides[node_0001] is merged into a node."""
        nodes = []
        for n, t in tiers.items():
            node = json.loads(json.dumps(self.inv[n]))
            node.update(tier=t, inst_id=self.inst_id, system_name=self.system_name)
            if n in SLOW and slow_timeout:
                node["health"]["timeout_s"] = SLOW_HEALTH_TIMEOUT_S
            node.update(overrides.get(n.replace("-", "_"), {}))
            nodes.append(node)
        return {"nodes": nodes}

    def import_inventory(self, tiers, **kw):
        doc = self.nodes_doc(tiers, **kw)
        d = self.ok(self.api("POST", "/api/inventory", doc))
        self.assertEqual(d["imported"], len(tiers), d)
        self.assertEqual(sorted(d["nodes"]), sorted(tiers), d)
        return doc

    def create_task(self, sr, requester="alice", inst_id=None, system_name=None, title=None):
        body = {"sr_id": sr, "inst_id": inst_id or self.inst_id, "system_name": system_name or self.system_name,
                "requester": requester}
        if title is not None:
            body["title"] = title
        t = self.ok(self.api("POST", "/api/tasks", body), 201)
        self.assertEqual((t["sr_id"], t["status"], t["inst_id"], t["system_name"], t["requester"]),
                         (sr, "CREATED", body["inst_id"], body["system_name"], requester), t)
        self.assertEqual(t["artifacts"], [])
        return t

    def artifacts(self, label):
        """Two new artifacts: {name: bytes} (a new app.jar and VERSION)."""
        return {"app.jar": os.urandom(48 * 1024) + f"\nbuild {label} {self.tag}\n".encode(),
                "VERSION": f"v2-{label}-{self.tag}\n".encode()}

    def stage(self, sr, arts, by_path=()):
        """PUT each artifact's bytes; those named in by_path instead as a file on the deploy
        host (POST {"name", "path", "sha256"}), which the service copies."""
        for name, data in arts.items():
            if name in by_path:
                src = os.path.join(self.drop_dir, f"drop-{sr}-{name}")
                with open(src, "wb") as f:
                    f.write(data)
                r = self.api("POST", f"/api/tasks/{sr}/artifacts", {"name": name, "path": src, "sha256": sha256(data)})
            else:
                r = self.api("PUT", f"/api/tasks/{sr}/artifacts/{name}", query={"sha256": sha256(data)}, raw=data,
                             ctype="application/octet-stream")
            d = self.ok(r, 201)
            self.assertEqual(d, {"sr_id": sr, "name": name, "sha256": sha256(data), "size": len(data)})
            with open(os.path.join(self.state_dir, "artifacts", sr, name), "rb") as f:
                self.assertEqual(f.read(), data, f"staged bytes of {name} under state_dir/artifacts/{sr}/")

    def trigger(self, sr, approver="bob", key=None):
        h = {"Idempotency-Key": key} if key else None
        return self.api("POST", "/api/deploy/trigger", {"sr_id": sr, "approver_id": approver}, headers=h)

    def trigger_ok(self, sr, approver="bob"):
        d = self.ok(self.trigger(sr, approver), 202)
        self.assertEqual(set(d), {"sr_id", "rollout_id", "status"}, d)
        self.assertEqual((d["sr_id"], d["status"]), (sr, "DEPLOYING"))
        self.assertTrue(d["rollout_id"])
        return d["rollout_id"]

    def prepare(self, sr, tiers, label, **kw):
        """Inventory + task + staged artifacts; returns the artifacts."""
        self.import_inventory(tiers, **kw)
        self.create_task(sr)
        arts = self.artifacts(label)
        self.stage(sr, arts)
        return arts

    def wait_audit(self, sr, what, pred, timeout=60):
        return self.wait_for(what, lambda: pred(self.api_audit(sr, limit=1000)), timeout)

    @staticmethod
    def has_event(events, node, event=None, step=None):
        return any(e["node"] == node and (event is None or e["event"] == event)
                   and (step is None or e["step"] == step) for e in events)

    # ------------------------------------------------------------------ fleet
    def fresh(self, *names):
        """The nodes' state before a test: each must be free (no lock, no leftovers, service
        running), else an earlier run broke the fleet and nothing below would mean anything."""
        nodes = self.check(*names)
        for n in names:
            a = nodes[n]
            if a["lock_present"] or a["other_entries"] or not a["service_running"] or not a["exists"]:
                raise AssertionError(f"fleet node {n} is not in a usable state (lock {a['lock_present']}, "
                                     f"leftovers {a['other_entries']}, running {a['service_running']}): an "
                                     f"earlier run left it so; bring the serve_fleet fixture up again")
        return nodes

    @contextlib.contextmanager
    def locked_by_someone_else(self, node):
        """The node's deploy lock held by another owner while the block runs (its rollout fails
        there, untouched); removed afterwards, also when the block fails."""
        lock = self.inv[node]["deploy_path"] + ".lock"
        os.mkdir(lock)
        try:
            with open(os.path.join(lock, "owner"), "w") as f:
                f.write(f"owner=someone-else\nrollout=R-other\nsince={int(time.time())}\n")
            yield
        finally:
            shutil.rmtree(lock, ignore_errors=True)

    def check(self, *names):
        args = [FLEET_TOOL, "check", "--dir", FLEET_DIR, "--backups"]
        for n in names:
            args += ["--node", n]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["nodes"]

    def assert_untouched(self, before, after, names=None):
        for n in names or before:
            b, a = before[n], after[n]
            with self.subTest(node=n):
                for k in ("tree_sha256", "files", "backups", "backup_trees", "lock_present", "other_entries",
                          "service_running", "service_events"):
                    self.assertEqual(a[k], b[k], f"{n}: {k} changed")
                self.assertFalse(a["lock_present"], n)

    def new_backup(self, b, a):
        n = a["deploy_path"].split("/")[-2]
        new = sorted(set(a["backups"]) - set(b["backups"]))
        self.assertEqual(len(new), 1, f"{n}: exactly one new backup: {b['backups']} -> {a['backups']}")
        self.assertEqual(a["backup_trees"][new[0]], b["tree_sha256"], f"{n}: the backup is the tree before")
        return os.path.join(os.path.dirname(a["deploy_path"]), new[0])

    def assert_clean(self, a, running=True):
        n = a["deploy_path"].split("/")[-2]
        self.assertTrue(a["exists"], n)
        self.assertFalse(a["lock_present"], f"{n}: lock left")
        self.assertEqual(a["other_entries"], [], f"{n}: leftovers beside the deploy path")
        self.assertEqual([f for f in a["files"] if f.split("/")[-1].startswith(STAGE_PREFIX)], [],
                         f"{n}: staging files left")
        if running:
            self.assertTrue(a["service_running"], f"{n}: service not running")

    def runs_build(self, b, a, arts):
        """a (after) is b (before) with exactly the artifacts replaced."""
        return (all(a["files"].get(name, {}).get("sha256") == sha256(data) for name, data in arts.items())
                and set(a["files"]) == set(b["files"]) | set(arts)
                and all(a["files"][f] == b["files"][f] for f in set(b["files"]) - set(arts))
                and a["dirs"] == b["dirs"])

    def assert_deployed(self, b, a, arts):
        n = a["deploy_path"].split("/")[-2]
        with self.subTest(node=n):
            for name, data in arts.items():
                self.assertEqual(a["files"][name]["sha256"], sha256(data), f"{n}: {name} on disk")
                self.assertEqual(a["files"][name]["size"], len(data))
            self.assertTrue(self.runs_build(b, a, arts), f"{n}: only the artifacts changed")
            self.assertEqual(a["version"], arts["VERSION"].decode().strip())
            self.assert_clean(a)
            status, body = health_get(self.inv[n]["health"]["port"])
            self.assertEqual((status, body["version"]), (200, a["version"]), f"{n}: health after deploy")
            return self.new_backup(b, a)

    def assert_restored(self, b, a):
        """Rolled back: byte-identical tree, service running on it, no lock, no leftovers."""
        n = a["deploy_path"].split("/")[-2]
        with self.subTest(node=n):
            self.assertEqual(a["tree_sha256"], b["tree_sha256"], f"{n}: tree not restored exactly")
            self.assertEqual(a["files"], b["files"])
            self.assertEqual(a["dirs"], b["dirs"])
            self.assert_clean(a)

    # ------------------------------------------------------------------ webhooks
    def wait_webhook(self, sr, path, event, timeout=60):
        got = self.wait_for(f"webhook {path} ({event}) for {sr}", lambda: self.receiver.deliveries(sr, path), timeout)
        d = got[0]
        self.assertEqual(d["headers"].get("x-guardia-event"), event, d["headers"])
        self.assertTrue(d["headers"].get("x-guardia-delivery"), f"X-Guardia-Delivery missing: {d['headers']}")
        self.assertTrue(d["headers"].get("content-type", "").startswith("application/json"), d["headers"])
        self.assertIsInstance(d["body"], dict, d["raw"])
        return d

    def assert_exactly_one(self, sr, path, settle=2.5):
        """After the first delivery, wait a few retry periods: still exactly one (per delivery id)."""
        time.sleep(settle)      # an absence: nothing to poll for
        got = self.receiver.deliveries(sr, path)
        self.assertEqual(len(got), 1, [(d["path"], d["headers"].get("x-guardia-delivery")) for d in got])
        return got[0]

    def all_webhooks_for(self, sr):
        return sorted(d["path"] for d in self.receiver.deliveries(sr))

    # ================================================================== 0. start-up
    def test_00_startup_config_error_and_readiness(self):
        # a configuration error: exit 2, the file and the field named on stderr, never ready
        bad = self.config(service={"port": 70000})
        conf = self.write_json("bad.json", bad)
        with open(self.path("token"), "w") as f:
            f.write(self.token + "\n")
        os.chmod(self.path("token"), 0o600)
        r = subprocess.run([GUARDIA, "serve", "--config", conf], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **{MARK: WORK_ROOT}), cwd=self.tmp, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("bad.json", r.stderr, r)
        self.assertIn("service.port", r.stderr, r)
        self.assertNotIn("listening on", r.stdout, r)

        # a good one: exactly one readiness line on stdout, the port is really served
        s = self.start_service()
        self.assertEqual(s.ready_lines, [f"guardia: listening on http://127.0.0.1:{s.port}"])
        self.assertNotEqual(s.port, 0)
        d = self.ok(self.api("GET", "/healthz", token=None))
        self.assertEqual((d["status"], d["rollouts_running"]), ("ok", 0), d)
        self.assertIn("store_queue", d)
        self.assert_error(self.api("GET", "/metrics", token=None), 401, "unauthorized")
        r = self.api("GET", "/metrics")   # a client with the read role (the single token has every role)
        self.assertEqual(r.status, 200, r)
        self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r.headers)
        for metric in ("guardia_rollouts_running", "guardia_http_requests_total"):
            self.assertIn(metric, r.data.decode(), f"{metric} missing from /metrics")
        # SIGINT stops it like SIGTERM: exit 0
        s.signal(signal.SIGINT)
        self.assertEqual(s.wait_exit(60), 0, s.log())

    # ================================================================== 1. happy path
    def test_01_happy_path_to_completed(self):
        tiers = {"node-0001": 1, "node-0002": 2, "node-0003": 2, "node-0004": 3}
        names = list(tiers)
        sr = f"SR-HAPPY-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        doc = self.import_inventory(tiers)
        got = self.ok(self.api("GET", "/api/inventory", query={"inst_id": self.inst_id,
                                                                "system_name": self.system_name}))
        self.assertEqual(sorted(got["nodes"], key=lambda n: n["name"]), doc["nodes"], "nodes as imported")
        self.assertEqual(self.ok(self.api("GET", "/api/inventory", query={"inst_id": "INST-NOBODY",
                                                                          "system_name": self.system_name})),
                         {"nodes": []})
        self.create_task(sr, title="happy path")
        arts = self.artifacts("happy")
        self.stage(sr, arts, by_path=["VERSION"])
        os.unlink(os.path.join(self.drop_dir, f"drop-{sr}-VERSION"))        # copied: the drop file may go
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertLessEqual({"sr_id", "status", "inst_id", "system_name", "requester", "approver", "rollout_id",
                              "reason", "created_ms", "updated_ms", "artifacts"}, set(t), t)
        self.assertEqual((t["status"], t["rollout_id"]), ("CREATED", ""), t)
        self.assertEqual(sorted((a["name"], a["sha256"], a["size"]) for a in t["artifacts"]),
                         sorted((n, sha256(d), len(d)) for n, d in arts.items()))
        d = self.deploy_status(sr)
        self.assertEqual((d["sr_id"], d["task_status"], d["rollout"]), (sr, "CREATED", None), d)

        rollout_id = self.trigger_ok(sr)
        d = self.wait_task(sr, "PENDING_PM_VALIDATION")
        self.assertEqual((d["rollout"]["id"], d["rollout"]["status"], d["rollout"]["reason"]),
                         (rollout_id, "SUCCEEDED", ""), d)
        self.assertIsNotNone(d["rollout"]["finished_ms"])
        self.assertEqual(d["counts"], {"total": 4, "pending": 0, "running": 0, "deployed": 4, "failed": 0,
                                       "skipped": 0, "rolled_back": 0})
        self.assertEqual(d["tiers"], [
            {"tier": 1, "total": 1, "started": 1, "finished": 1, "failed": 0, "in_flight": 0, "skipped": 0},
            {"tier": 2, "total": 2, "started": 2, "finished": 2, "failed": 0, "in_flight": 0, "skipped": 0},
            {"tier": 3, "total": 1, "started": 1, "finished": 1, "failed": 0, "in_flight": 0, "skipped": 0}])
        nodes = {n["name"]: n for n in d["nodes"]}
        self.assertEqual(sorted(nodes), sorted(names))
        after = self.check(*names)
        for n in names:
            backup = self.assert_deployed(before[n], after[n], arts)
            self.assertEqual((nodes[n]["tier"], nodes[n]["state"], nodes[n]["error"]), (tiers[n], "deployed", ""),
                             nodes[n])
            self.assertEqual(nodes[n]["backup_path"], backup, n)

        # the store: task, rollout, node results, audit, outbox
        task = self.q("SELECT * FROM tasks WHERE sr_id = ?", sr)
        self.assertEqual([(x["status"], x["approver"], x["rollout_id"]) for x in task],
                         [("PENDING_PM_VALIDATION", "bob", rollout_id)])
        self.assertEqual([(x["id"], x["status"]) for x in self.q("SELECT * FROM rollouts WHERE sr_id = ?", sr)],
                         [(rollout_id, "SUCCEEDED")])
        results = {x["node"]: x["status"] for x in self.q("SELECT * FROM node_results WHERE rollout_id = ?",
                                                          rollout_id)}
        self.assertEqual(results, {n: "DEPLOYED" for n in names})
        rows = self.audit_rows(sr)
        for n in names:
            self.assertEqual(len([r for r in rows if r["node"] == n and r["event"] == "DEPLOY_SUCCESS"]), 1, n)
        # node events all belong to the rollout (task-level events before it have none)
        self.assertEqual({r["rollout_id"] for r in rows if r["rollout_id"]}, {rollout_id})
        self.assertEqual({r["rollout_id"] for r in rows if r["node"]}, {rollout_id})
        # GET /api/audit, paged 7 at a time, is the audit log of the store
        events = self.api_audit(sr, limit=7)
        self.assertEqual([(e["id"], e["node"], e["step"], e["event"], e["detail"]) for e in events],
                         [(r["id"], r["node"], r["step"], r["event"], r["detail"]) for r in rows])
        self.assertEqual({e["rollout_id"] for e in events if e["node"]}, {rollout_id})
        self.assert_error(self.api("GET", "/api/audit", query={"sr_id": sr, "limit": 0}), 400, "bad_request", "limit")
        self.assert_error(self.api("GET", "/api/audit", query={"sr_id": sr, "limit": 1001}), 400, "bad_request",
                          "limit")

        # the PM is notified exactly once
        hook = self.wait_webhook(sr, "/pm", "pm_review_needed")
        self.assertEqual(hook["headers"].get("x-hook-token"), "t0k", hook["headers"])
        self.assert_exactly_one(sr, "/pm")
        out = self.outbox(sr)
        self.assertEqual([(x["event"], x["delivered_ms"] is not None) for x in out], [("pm_review_needed", True)])

        # the task is frozen while waiting for the PM: no re-stage, no second trigger
        self.assert_error(self.api("PUT", f"/api/tasks/{sr}/artifacts/VERSION", query={"sha256": sha256(b"x")},
                                   raw=b"x", ctype="application/octet-stream"), 409, "conflict")
        self.assert_error(self.trigger(sr), 409, "conflict", "PENDING_PM_VALIDATION")

        # PM accepts
        r = self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "accepted", "pm_id": "carol",
                                                             "comment": "looks good"})
        self.assertEqual(self.ok(r), {"sr_id": sr, "status": "COMPLETED"})
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual((t["status"], t["rollout_id"], t["approver"]), ("COMPLETED", rollout_id, "bob"), t)
        self.assertEqual([x["status"] for x in self.q("SELECT status FROM tasks WHERE sr_id = ?", sr)], ["COMPLETED"])
        self.assert_error(self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "rejected", "pm_id": "carol"}),
                          409, "conflict", "COMPLETED")
        self.assert_error(self.trigger(sr), 409, "conflict")
        final = self.check(*names)
        for n in names:
            self.assertEqual(final[n]["tree_sha256"], after[n]["tree_sha256"], f"{n}: accepting changes no node")
        self.assertEqual(self.all_webhooks_for(sr), ["/pm"], "no failure or rollback notice")
        m = self.api("GET", "/metrics").data.decode()
        self.assertIn("guardia_rollouts_total", m)

    # ================================================================== 2. wait=true, query parameters
    def test_02_trigger_wait_with_query_parameters(self):
        tiers = {"node-0005": 2}
        sr = f"SR-WAIT-{self.tag}"
        self.start_service()
        before = self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "wait")
        r = self.api("POST", "/api/deploy/trigger", query={"sr_id": sr, "approver_id": "bob", "wait": "true"},
                     timeout=ROLLOUT_TIMEOUT)
        d = self.ok(r)
        self.assertEqual((d["sr_id"], d["success"], d["status"]), (sr, True, "PENDING_PM_VALIDATION"), d)
        self.assertTrue(d["rollout_id"])
        # it answered when the rollout had ended: the final state was already there
        st = self.deploy_status(sr)
        self.assertEqual((st["task_status"], st["rollout"]["id"], st["rollout"]["status"]),
                         ("PENDING_PM_VALIDATION", d["rollout_id"], "SUCCEEDED"), st)
        self.assert_deployed(before["node-0005"], self.check(*tiers)["node-0005"], arts)
        self.wait_webhook(sr, "/pm", "pm_review_needed")

    # ================================================================== 3. a failing tier 1
    def test_03_failing_tier_one_rolls_back_and_notifies(self):
        bad = REJECT[0]
        tiers = {bad: 1, "node-0006": 2, "node-0007": 3}
        names = list(tiers)
        sr = f"SR-FAIL-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        self.prepare(sr, tiers, "fail")
        rollout_id = self.trigger_ok(sr)
        d = self.wait_task(sr, "FAILED_ROLLBACK")
        self.assertEqual((d["rollout"]["id"], d["rollout"]["status"]), (rollout_id, "ABORTED"), d)
        self.assertTrue(d["rollout"]["reason"], d)
        nodes = {n["name"]: n for n in d["nodes"]}
        self.assertEqual({n: x["state"] for n, x in nodes.items()},
                         {bad: "rolled_back", "node-0006": "skipped", "node-0007": "skipped"})
        self.assertTrue(nodes[bad]["error"], nodes[bad])
        self.assertEqual(d["counts"], {"total": 3, "pending": 0, "running": 0, "deployed": 0, "failed": 1,
                                       "skipped": 2, "rolled_back": 0})
        after = self.check(*names)
        self.assert_restored(before[bad], after[bad])
        status, body = health_get(self.inv[bad]["health"]["port"])
        self.assertEqual((status, body["version"]), (200, before[bad]["version"]),
                         "the exact rollback makes it healthy again")
        self.assert_untouched(before, after, ["node-0006", "node-0007"])
        task = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual((task["status"], task["rollout_id"]), ("FAILED_ROLLBACK", rollout_id))
        self.assertTrue(task["reason"], task)
        self.assertEqual([(x["status"], x["rollout_id"]) for x in self.q("SELECT * FROM tasks WHERE sr_id = ?", sr)],
                         [("FAILED_ROLLBACK", rollout_id)])
        self.assertEqual([x["status"] for x in self.q("SELECT status FROM rollouts WHERE sr_id = ?", sr)], ["ABORTED"])
        self.assertEqual(self.q("SELECT status FROM node_results WHERE rollout_id = ? AND node = ?", rollout_id, bad),
                         [{"status": "ROLLED_BACK"}])
        rows = self.audit_rows(sr)
        self.assertEqual([r for r in rows if r["node"] in ("node-0006", "node-0007")], [], "later tiers untouched")
        self.assertEqual([r["event"] for r in rows if r["node"] == bad and r["step"] == "SUMMARY"],
                         ["DEPLOY_FAILED", "ROLLBACK_OK"])

        hook = self.wait_webhook(sr, "/fail", "deployment_failed")
        self.assertNotIn("x-hook-token", hook["headers"], "headers are per webhook")
        self.assert_exactly_one(sr, "/fail")
        self.assertEqual(self.all_webhooks_for(sr), ["/fail"])
        # FAILED_ROLLBACK accepts a fix: staging again is allowed
        fix = b"v3-fixed\n"
        self.ok(self.api("PUT", f"/api/tasks/{sr}/artifacts/VERSION", query={"sha256": sha256(fix)}, raw=fix,
                         ctype="application/octet-stream"), 201)

    # ================================================================== 4. PM rejects
    def test_04_pm_rejection_rolls_every_node_back(self):
        tiers = {"node-0008": 1, "node-0009": 2, "node-0010": 3}
        names = list(tiers)
        sr = f"SR-REJECT-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        arts = self.prepare(sr, tiers, "reject")
        rollout_id = self.trigger_ok(sr)
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        mid = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], mid[n], arts)
        self.wait_webhook(sr, "/pm", "pm_review_needed")

        self.assert_error(self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "maybe", "pm_id": "carol"}),
                          400, "bad_request", "verdict")
        self.assert_error(self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "rejected"}),
                          400, "bad_request", "pm_id")
        r = self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "rejected", "pm_id": "carol",
                                                             "comment": "wrong colour"},
                     query={"wait": "true"}, timeout=ROLLOUT_TIMEOUT)
        self.assertEqual(self.ok(r), {"sr_id": sr, "status": "ROLLED_BACK", "rolled_back": 3, "failed": 0})
        after = self.check(*names)
        for n in names:
            self.assert_restored(before[n], after[n])
            status, body = health_get(self.inv[n]["health"]["port"])
            self.assertEqual((status, body["version"]), (200, before[n]["version"]), f"{n}: healthy on the old build")
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual((t["status"], t["rollout_id"]), ("ROLLED_BACK", rollout_id), t)
        self.assertEqual([x["status"] for x in self.q("SELECT status FROM tasks WHERE sr_id = ?", sr)], ["ROLLED_BACK"])
        d = self.deploy_status(sr)
        self.assertEqual(d["task_status"], "ROLLED_BACK")
        self.assertEqual({n["name"]: n["state"] for n in d["nodes"]}, {n: "rolled_back_by_pm" for n in names}, d)
        self.assertEqual(d["counts"], {"total": 3, "pending": 0, "running": 0, "deployed": 0, "failed": 0,
                                       "skipped": 0, "rolled_back": 3})
        rows = self.audit_rows(sr)
        for n in names:
            self.assertTrue([r for r in rows if r["node"] == n and r["event"] == "ROLLBACK_OK"],
                            f"{n}: no ROLLBACK_OK in the audit log")
        hook = self.wait_webhook(sr, "/rb", "rollback_completed")
        self.assertIsInstance(hook["body"], dict)
        self.assert_exactly_one(sr, "/rb")
        self.assertEqual(self.all_webhooks_for(sr), ["/pm", "/rb"])
        self.assert_error(self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "accepted", "pm_id": "carol"}),
                          409, "conflict")

    # ================================================================== 5. authentication
    def test_05_authentication(self):
        self.start_service()
        wrong = "0" * len(self.token)
        cases = [("no Authorization header", None),
                 ("wrong token", f"Bearer {wrong}"),
                 ("token with an extra character", f"Bearer {self.token}x"),
                 ("token prefix", f"Bearer {self.token[:-1]}"),
                 ("empty bearer", "Bearer "),
                 ("Basic scheme", "Basic " + __import__("base64").b64encode(f"x:{self.token}".encode()).decode()),
                 ("Token scheme", f"Token {self.token}"),
                 ("bare token", self.token)]
        for what, auth in cases:
            for method, path, body in (("GET", "/api/inventory", None), ("GET", "/api/tasks/SR-X", None),
                                       ("POST", "/api/deploy/trigger", {"sr_id": "SR-X", "approver_id": "bob"})):
                with self.subTest(what, path=path):
                    r = self.api(method, path, body, token=auth)
                    self.assert_error(r, 401, "unauthorized")
                    self.assertTrue((r.header("www-authenticate") or "").startswith("Bearer"), r.headers)
        d = self.ok(self.api("GET", "/healthz", token=None))
        self.assertEqual(d["status"], "ok")
        # /metrics needs the read role since the trust boundary (issue 12): 401 without a token
        self.assert_error(self.api("GET", "/metrics", token=None), 401, "unauthorized")
        self.assertEqual(self.api("GET", "/metrics").status, 200)
        self.assertEqual(self.ok(self.api("GET", "/api/inventory")), {"nodes": []})
        # nothing was created by the refused calls
        self.assertEqual(self.q("SELECT * FROM tasks"), [])

    # ================================================================== 6. bad input
    def test_06_bad_input_clear_4xx_never_a_crash(self):
        self.start_service(self.config(service={"max_artifact_bytes": 1024 * 1024}))

        def case(r, status, code, *in_message):
            """Each answer checked on its own (subTest): one wrong answer hides no other."""
            with self.subTest(f"{status} {code} {' '.join(in_message)}".strip()):
                return self.assert_error(r, status, code, *in_message)
        good_node = "node-0011"
        sr = f"SR-BAD-{self.tag}"
        before = self.fresh(good_node)
        task = {"sr_id": sr, "inst_id": self.inst_id, "system_name": self.system_name, "requester": "alice"}

        # JSON problems
        r = self.api("POST", "/api/tasks", raw=b'{"sr_id": "SR-1",\n  "inst_id": ', ctype="application/json")
        body = case(r, 400, "bad_json")
        self.assertRegex((body or {}).get("message", ""), r"\d+:\d+", "bad_json names line:col")
        case(self.api("POST", "/api/tasks", {k: v for k, v in task.items() if k != "sr_id"}),
                          400, "bad_request", "sr_id")
        case(self.api("POST", "/api/tasks", dict(task, sr_id="x;rm -rf")), 400, "bad_request", "sr_id")
        case(self.api("POST", "/api/tasks", dict(task, sr_id="S" * 129)), 400, "bad_request", "sr_id")
        case(self.api("POST", "/api/tasks", dict(task, sr_id=12)), 400, "bad_request", "sr_id")
        case(self.api("POST", "/api/tasks", [task]), 400, "not_an_object")
        deep = {"sr_id": sr}
        for _ in range(40):
            deep = {"x": deep}
        case(self.api("POST", "/api/tasks", deep), 400, "too_deep")
        case(self.api("POST", "/api/tasks", raw=json.dumps(task).encode(), ctype="text/plain"),
                          415, "unsupported_media_type")
        case(self.api("POST", "/api/tasks", raw=json.dumps(task).encode()), 415,
                          "unsupported_media_type")

        # size limits (raw: the server may answer before it has read everything)
        auth = f"Authorization: Bearer {self.token}\r\n".encode()
        big = json.dumps(dict(task, title="x" * 70000)).encode()
        r = self.raw_request(b"POST /api/tasks HTTP/1.1\r\nHost: t\r\n" + auth +
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        case(r, 413, "payload_too_large")
        r = self.raw_request(b"GET /api/inventory HTTP/1.1\r\nHost: t\r\n" + auth +
                             b"X-Padding: " + b"p" * 10000 + b"\r\n\r\n")
        case(r, 431, "headers_too_large")
        r = self.raw_request(b"THIS IS NOT HTTP\r\n\r\n")
        case(r, 400, "bad_request")

        # routes and methods
        case(self.api("GET", "/api/nope"), 404, "not_found")
        case(self.api("GET", "/nope", token=None), 401, "unauthorized")   # only /healthz is public
        case(self.api("GET", "/nope"), 404, "not_found")
        case(self.api("DELETE", "/api/tasks"), 405, "method_not_allowed")
        case(self.api("GET", "/api/deploy/trigger"), 405, "method_not_allowed")

        # unknown SR
        case(self.api("GET", "/api/tasks/SR-NOPE"), 404, "not_found")
        case(self.api("GET", "/api/deploy/SR-NOPE"), 404, "not_found")
        case(self.trigger("SR-NOPE"), 404, "not_found")
        case(self.api("PUT", "/api/tasks/SR-NOPE/artifacts/a.jar", query={"sha256": sha256(b"a")},
                                   raw=b"a", ctype="application/octet-stream"), 404, "not_found")
        case(self.api("POST", "/api/tasks/SR-NOPE/validation", {"verdict": "accepted", "pm_id": "c"}),
                          404, "not_found")

        # an inventory with one bad node: 400 naming node and field; nothing imported
        doc = self.nodes_doc({good_node: 2, "node-0012": 2}, node_0012={"tier": 7})
        case(self.api("POST", "/api/inventory", doc), 400, "bad_request", "node-0012", "tier")
        doc = self.nodes_doc({good_node: 2, "node-0012": 2}, node_0012={"colour": "red"})
        case(self.api("POST", "/api/inventory", doc), 400, "bad_request", "node-0012", "colour")
        case(self.api("POST", "/api/inventory", {"nodes": "all"}), 400, "bad_request", "nodes")
        self.assertEqual(self.ok(self.api("GET", "/api/inventory")), {"nodes": []}, "nothing imported")
        self.assertEqual(self.q("SELECT * FROM inventory_nodes"), [])

        # the task, and artifact problems
        self.import_inventory({good_node: 2})
        self.create_task(sr)
        case(self.api("POST", "/api/tasks", task), 409, "conflict")
        case(self.trigger(sr, "bob"), 409, "conflict")        # no staged artifact
        data = os.urandom(4096)
        r = self.api("PUT", f"/api/tasks/{sr}/artifacts/app.jar", query={"sha256": sha256(b"other")}, raw=data,
                     ctype="application/octet-stream")
        case(r, 422, "checksum_mismatch")
        r = self.api("PUT", f"/api/tasks/{sr}/artifacts/app.jar", query={"sha256": "zz"}, raw=data,
                     ctype="application/octet-stream")
        self.assertIn(r.status, (400, 422), r)
        case(self.api("PUT", f"/api/tasks/{sr}/artifacts/..", query={"sha256": sha256(data)}, raw=data,
                                   ctype="application/octet-stream"), 400, "bad_request")
        case(self.api("PUT", f"/api/tasks/{sr}/artifacts/a%20b.jar", query={"sha256": sha256(data)},
                                   raw=data, ctype="application/octet-stream"), 400, "bad_request")
        huge = os.urandom(1024 * 1024 + 1)
        auth_h = f"Authorization: Bearer {self.token}\r\n".encode()
        r = self.raw_request(f"PUT /api/tasks/{sr}/artifacts/app.jar?sha256={sha256(huge)} HTTP/1.1\r\n".encode() +
                             b"Host: t\r\n" + auth_h + b"Content-Type: application/octet-stream\r\n" +
                             b"Content-Length: %d\r\n\r\n" % len(huge) + huge)
        case(r, 413, "payload_too_large")
        src = os.path.join(self.drop_dir, "drop.jar")
        with open(src, "wb") as f:
            f.write(data)
        case(self.api("POST", f"/api/tasks/{sr}/artifacts",
                                   {"name": "app.jar", "path": src, "sha256": sha256(b"other")}),
                          422, "checksum_mismatch")
        case(self.api("POST", f"/api/tasks/{sr}/artifacts",
                                   {"name": "app.jar", "path": os.path.join(self.drop_dir, "missing.jar"), "sha256": sha256(data)}),
                          400, "bad_request", "path")
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual(t["artifacts"], [], "nothing staged")
        staged = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(self.state_dir, "artifacts")) for f in fs]
        self.assertEqual(staged, [], "no file left in the state directory")
        self.assertEqual(self.q("SELECT * FROM artifacts"), [])
        # a task whose inst_id/system_name matches no node
        other = f"SR-NONODE-{self.tag}"
        self.create_task(other, inst_id="INST-NOBODY")
        self.stage(other, {"VERSION": b"v9\n"})
        case(self.trigger(other, "bob"), 409, "conflict")

        # staging again under the same name replaces it
        self.stage(sr, {"app.jar": data})
        self.stage(sr, self.artifacts("self"))
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual(sorted(a["name"] for a in t["artifacts"]), ["VERSION", "app.jar"], t)
        self.assertNotIn(sha256(data), [a["sha256"] for a in t["artifacts"]], "replaced")

        # self-approval: 403, nothing started
        case(self.trigger(sr, "alice"), 403, "self_approval")
        r = self.api("POST", "/api/deploy/trigger", query={"sr_id": sr, "approver_id": "alice"})
        case(r, 403, "self_approval")
        case(self.api("POST", "/api/deploy/trigger", {"sr_id": sr}), 400, "bad_request", "approver_id")
        d = self.deploy_status(sr)
        self.assertEqual((d["task_status"], d["rollout"]), ("CREATED", None), d)
        self.assertEqual(self.q("SELECT * FROM rollouts"), [])
        case(self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "accepted", "pm_id": "carol"}),
                          409, "conflict", "CREATED")

        # still serving, nothing touched, nothing notified
        self.assertTrue(self.svc.alive(), self.svc.log())
        self.assertEqual(self.ok(self.api("GET", "/healthz", token=None))["status"], "ok")
        self.assert_untouched(before, self.check(good_node))
        self.assertEqual(self.receiver.deliveries(), [])

    # ================================================================== 7. duplicate trigger, idempotency
    def test_07_duplicate_trigger_conflict_and_idempotency_key(self):
        slow = SLOW[0]
        tiers = {slow: 2}
        sr = f"SR-DUP-{self.tag}"
        self.start_service()
        before = self.fresh(slow)
        arts = self.prepare(sr, tiers, "dup")
        key = f"key-{self.tag}"
        r1 = self.trigger(sr, "bob", key=key)
        first = self.ok(r1, 202)
        self.assertEqual((first["sr_id"], first["status"]), (sr, "DEPLOYING"), first)
        r2 = self.trigger(sr, "bob", key=key)
        self.assertEqual((r2.status, r2.json), (202, first), "the same key gets the first answer again")
        self.assert_error(self.trigger(sr, "bob"), 409, "conflict", "DEPLOYING")
        self.assert_error(self.trigger(sr, "bob", key=key + "-2"), 409, "conflict")
        self.assert_error(self.trigger(sr, "eve", key=key), 422, "idempotency_key_reused")
        d = self.deploy_status(sr)
        self.assertEqual((d["task_status"], d["rollout"]["id"], d["rollout"]["status"]),
                         ("DEPLOYING", first["rollout_id"], "RUNNING"), d)
        self.assertGreaterEqual(self.ok(self.api("GET", "/healthz", token=None))["rollouts_running"], 1)
        d = self.wait_task(sr, "PENDING_PM_VALIDATION")
        self.assertEqual(d["rollout"]["id"], first["rollout_id"])
        r3 = self.trigger(sr, "bob", key=key)
        self.assertEqual((r3.status, r3.json), (202, first), "still the first answer after the rollout ended")
        self.assertEqual([x["id"] for x in self.q("SELECT id FROM rollouts WHERE sr_id = ?", sr)],
                         [first["rollout_id"]], "exactly one rollout was started")
        self.assert_deployed(before[slow], self.check(slow)[slow], arts)
        self.wait_webhook(sr, "/pm", "pm_review_needed")
        self.assert_exactly_one(sr, "/pm")

    # ================================================================== 8. crash recovery
    def test_08_crash_recovery_after_kill_9(self):
        fast, slow_a, slow_b, later = "node-0014", SLOW[1], SLOW[2], "node-0015"
        tiers = {fast: 2, slow_a: 2, slow_b: 2, later: 3}
        names = list(tiers)
        sr = f"SR-CRASH-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        arts = self.prepare(sr, tiers, "crash")
        rollout_id = self.trigger_ok(sr)

        # the slow nodes are past BACKUP and activation (their live tree changed, they hold the
        # lock and sit in HEALTH for slow_s); the fast node has finished and released its lock
        def ready(events):
            return (self.has_event(events, fast, "DEPLOY_SUCCESS") and self.has_event(events, fast, "STEP_OK", "UNLOCK")
                    and all(self.has_event(events, s, "STEP_START", "HEALTH") for s in (slow_a, slow_b)))
        self.wait_audit(sr, "the slow nodes in HEALTH and the fast node deployed", ready)
        d = self.deploy_status(sr)
        states = {n["name"]: (n["state"], n["step"]) for n in d["nodes"]}
        self.assertEqual(d["task_status"], "DEPLOYING")
        self.assertEqual((states[slow_a][0], states[slow_b][0], states[fast][0]), ("running", "running", "deployed"),
                         states)
        self.svc.kill()
        self.assertEqual(self.svc.proc.returncode, -signal.SIGKILL)
        crashed = self.check(*names)
        for s in (slow_a, slow_b):
            self.assertTrue(crashed[s]["lock_present"], f"{s}: the crash left its lock")
            self.assertTrue(self.runs_build(before[s], crashed[s], arts), f"{s}: the new build was live")
        self.assert_deployed(before[fast], crashed[fast], arts)
        self.assert_untouched(before, crashed, [later])
        self.assertEqual([x["status"] for x in self.q("SELECT status FROM rollouts WHERE sr_id = ?", sr)],
                         ["RUNNING"], "the store has the rollout without an end")

        # restart on the same configuration and store: recovered before it is ready
        self.start_service(label="restart")
        d = self.deploy_status(sr)
        self.assertEqual(d["task_status"], "FAILED_ROLLBACK", d)
        self.assertEqual((d["rollout"]["id"], d["rollout"]["status"]), (rollout_id, "ABORTED"), d)
        self.assertIn("interrupted", d["rollout"]["reason"], d)
        self.assertIsNotNone(d["rollout"]["finished_ms"])
        nodes = {n["name"]: n["state"] for n in d["nodes"]}
        # the node of tier 3 never started: recovery may leave it "skipped" or check it and find
        # it unchanged ("failed_unchanged"); either is the truth, "pending" or "deployed" is not
        self.assertIn(nodes.pop(later), ("skipped", "failed_unchanged"), d)
        self.assertEqual(nodes, {fast: "deployed", slow_a: "rolled_back", slow_b: "rolled_back"}, d)
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual((t["status"], t["rollout_id"]), ("FAILED_ROLLBACK", rollout_id), t)
        self.assertEqual([(x["status"],) for x in self.q("SELECT status FROM tasks WHERE sr_id = ?", sr)],
                         [("FAILED_ROLLBACK",)])
        self.assertEqual([(x["status"], "interrupted" in x["reason"]) for x in
                          self.q("SELECT * FROM rollouts WHERE sr_id = ?", sr)], [("ABORTED", True)])
        after = self.check(*names)
        for s in (slow_a, slow_b):
            self.assert_restored(before[s], after[s])
        self.assert_deployed(before[fast], after[fast], arts)
        self.assertEqual(after[fast]["tree_sha256"], crashed[fast]["tree_sha256"], "a finished node is left as is")
        self.assert_untouched(before, after, [later])
        events = self.api_audit(sr, limit=1000)
        recovery = {e["node"] for e in events if "RECOVERY" in (e["step"], e["event"])}
        # the nodes left mid-step were recovered; (the fast node's DEPLOYED result was stored
        # before the crash, so whether it is re-checked, with an event, is not asserted)
        self.assertTrue({slow_a, slow_b} <= recovery, f"RECOVERY events for the nodes left mid-step: {recovery}")
        for s in (slow_a, slow_b):
            self.assertTrue([e for e in events if e["node"] == s and e["rollout_id"] == rollout_id
                             and "RECOVERY" in (e["step"], e["event"])], s)
        self.wait_webhook(sr, "/fail", "deployment_failed")
        self.assert_exactly_one(sr, "/fail")
        self.assertEqual(self.all_webhooks_for(sr), ["/fail"])
        # a second restart does not recover it again
        self.svc.signal(signal.SIGTERM)
        self.assertEqual(self.svc.wait_exit(60), 0, self.svc.log())
        n_events = len(self.audit_rows(sr))
        self.start_service(label="second restart")
        self.assertEqual(self.deploy_status(sr)["rollout"]["status"], "ABORTED")
        self.assertEqual(len(self.audit_rows(sr)), n_events, "nothing more to recover")

    # ================================================================== 9. SIGTERM
    def test_09_sigterm_mid_rollout_is_graceful_and_durable(self):
        slow_a, slow_b, later = SLOW[3], SLOW[4], "node-0012"
        tiers = {slow_a: 2, slow_b: 2, later: 3}
        names = list(tiers)
        sr, sr2 = f"SR-TERM-{self.tag}", f"SR-TERM2-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        arts = self.prepare(sr, tiers, "term")
        self.create_task(sr2)
        self.stage(sr2, {"VERSION": b"v-other\n"})
        rollout_id = self.trigger_ok(sr)
        self.wait_audit(sr, "both slow nodes in HEALTH",
                        lambda ev: all(self.has_event(ev, s, "STEP_START", "HEALTH") for s in (slow_a, slow_b)))
        t_sig = time.monotonic()
        self.svc.signal(signal.SIGTERM)

        # while it drains: /healthz 503 stopping, new triggers 503 stopping
        def stopping():
            r = self.api("GET", "/healthz", token=None)
            return r if r.status == 503 else None
        r = self.wait_for("/healthz to answer 503 after SIGTERM", stopping, 10, interval=0.05)
        self.assertEqual(r.json.get("status"), "stopping", r)
        self.assertTrue(self.svc.alive(), "in-flight nodes (HEALTH for ~10 s) keep it running")
        self.assert_error(self.trigger(sr2, "bob"), 503, "stopping")

        rc = self.svc.wait_exit(120)
        waited = time.monotonic() - t_sig
        self.assertEqual(rc, 0, f"exit after SIGTERM\n{self.svc.log()}")
        self.assertLess(waited, self.slow_s + 30, f"exit {waited:.1f} s after SIGTERM")

        # the nodes: none locked, none half-changed, the later tier never started
        after = self.check(*names)
        outcome = {}
        for s in (slow_a, slow_b):
            self.assert_clean(after[s])
            if after[s]["tree_sha256"] == before[s]["tree_sha256"]:
                outcome[s] = "rolled_back"
            else:
                self.assertTrue(self.runs_build(before[s], after[s], arts), f"{s}: half-changed")
                outcome[s] = "deployed"
        self.assert_untouched(before, after, [later])

        # durable before the exit
        self.assertEqual([(x["status"], "service stopping" in x["reason"]) for x in
                          self.q("SELECT * FROM rollouts WHERE sr_id = ?", sr)], [("ABORTED", True)])
        self.assertEqual([x["status"] for x in self.q("SELECT status FROM tasks WHERE sr_id = ?", sr)],
                         ["FAILED_ROLLBACK"])
        self.assertEqual([x["status"] for x in self.q("SELECT status FROM tasks WHERE sr_id = ?", sr2)], ["CREATED"])
        n_events = len(self.audit_rows(sr))

        # a restart shows the same state and has nothing to recover
        self.start_service(label="restart")
        d = self.deploy_status(sr)
        self.assertEqual((d["task_status"], d["rollout"]["id"], d["rollout"]["status"]),
                         ("FAILED_ROLLBACK", rollout_id, "ABORTED"), d)
        self.assertIn("service stopping", d["rollout"]["reason"])
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertIn("service stopping", t["reason"], t)
        self.assertEqual({n["name"]: n["state"] for n in d["nodes"]}, {**outcome, later: "skipped"}, d)
        self.assertEqual(len(self.audit_rows(sr)), n_events, "a clean stop leaves nothing to recover")
        self.assertFalse([r for r in self.audit_rows(sr) if "RECOVERY" in (r["step"], r["event"])])
        self.wait_webhook(sr, "/fail", "deployment_failed")
        self.assert_exactly_one(sr, "/fail")
        self.assertEqual(self.deploy_status(sr2)["task_status"], "CREATED")

    # ================================================================== 10. notifier outage
    def test_10_webhook_outbox_survives_receiver_outage(self):
        node = "node-0013"
        sr = f"SR-HOOK-{self.tag}"
        self.start_service(receiver=False)          # the receiver is down
        before = self.fresh(node)
        arts = self.prepare(sr, {node: 2}, "hook")
        self.trigger_ok(sr)
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        # queued durably before the final state was reported
        out = self.outbox(sr)
        self.assertEqual([x["event"] for x in out], ["pm_review_needed"], "outbox row before the final state")
        self.assertEqual(out[0]["url"], self.receiver.url("/pm"))
        row = self.wait_for("a failed delivery attempt", lambda: [x for x in self.outbox(sr) if x["attempts"] >= 1],
                            30)[0]
        self.assertIsNone(row["delivered_ms"])
        self.assertIsNone(row["gave_up_ms"])
        self.assertTrue(row["last_error"], row)
        self.assert_deployed(before[node], self.check(node)[node], arts)

        self.receiver.start()
        d = self.wait_webhook(sr, "/pm", "pm_review_needed", timeout=30)
        self.assertEqual(d["headers"].get("x-hook-token"), "t0k")
        one = self.assert_exactly_one(sr, "/pm", settle=4)
        self.assertEqual(one["headers"]["x-guardia-delivery"], d["headers"]["x-guardia-delivery"])
        row = self.wait_for("the outbox row marked delivered",
                            lambda: [x for x in self.outbox(sr) if x["delivered_ms"] is not None], 10)[0]
        self.assertGreaterEqual(row["attempts"], 1)
        self.assertEqual(len(self.outbox(sr)), 1)

    # ================================================================== 11. TLS
    def test_11_tls_listener(self):
        # a self-signed certificate for 127.0.0.1; the service then speaks HTTPS only
        cert, key = self.path("cert.pem"), self.path("key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
        os.chmod(key, 0o600)
        fd = os.open(self.path("token"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.write_json("guardia.json", self.config(service={"tls": {"cert_file": cert, "key_file": key}}))
        s = Service(self.path("guardia.json"), self.tmp, f"{self._testMethodName} tls")
        self.services.append(s)
        s.start()
        self.assertEqual((s.scheme, s.host), ("https", "127.0.0.1"), s.ready_lines)
        ctx = ssl.create_default_context(cafile=cert)

        def get(path, token):
            c = http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10)
            try:
                c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
                version = c.sock.version()     # before the answer: a 401 closes the connection
                r = c.getresponse()
                return r.status, json.loads(r.read() or b"null"), version
            finally:
                c.close()

        status, body, version = get("/healthz", None)
        self.assertEqual((status, body["status"]), (200, "ok"))
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(get("/api/tasks/SR-TLS-NONE", self.token)[:2][0], 404)
        self.assertEqual(get("/api/tasks/SR-TLS-NONE", "wrong-token-0123456789")[0], 401)
        # plain HTTP to the TLS port gets no HTTP answer
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        with self.assertRaises((http.client.HTTPException, OSError)):
            c.request("GET", "/healthz")
            c.getresponse().read()
        c.close()
        # an untrusting client refuses the certificate
        with self.assertRaises(ssl.SSLError):
            c = http.client.HTTPSConnection("127.0.0.1", s.port, context=ssl.create_default_context(), timeout=10)
            c.request("GET", "/healthz")
        s.signal(signal.SIGTERM)
        self.assertEqual(s.wait_exit(60), 0, s.log())

    # ================================================================== 12. systemd notify
    def test_12_systemd_notify_ready_watchdog_stopping(self):
        # systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET
        # an abstract name ('@' in NOTIFY_SOCKET): the work dir's path is too long for sun_path
        sock_path = f"@guardia-test-notify-{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + sock_path[1:])
        sock.settimeout(0.2)
        got = []

        def take(until):
            while time.monotonic() < until:
                try:
                    got.append((time.monotonic(), sock.recv(4096).decode()))
                except socket.timeout:
                    pass

        saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        os.environ["NOTIFY_SOCKET"] = sock_path
        os.environ["WATCHDOG_USEC"] = "600000"      # pings expected every 300 ms
        try:
            s = self.start_service(receiver=False, label="notify")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            take(time.monotonic() + 2.0)
            ready = [m for _, m in got if "READY=1" in m.split("\n")]
            self.assertEqual(len(ready), 1, got)
            self.assertIn(f"MAINPID={s.proc.pid}", ready[0])
            self.assertIn("STATUS=listening on http://127.0.0.1:", ready[0])
            pings = [t for t, m in got if m == "WATCHDOG=1"]
            self.assertGreaterEqual(len(pings), 4, got)     # ~6 in 2 s
            s.signal(signal.SIGTERM)
            take(time.monotonic() + 1.0)
            self.assertTrue([m for _, m in got if "STOPPING=1" in m.split("\n")], got)
            self.assertEqual(s.wait_exit(60), 0, s.log())
        finally:
            sock.close()

    # ================================================================== 13. reject after a retry
    def test_13_pm_rejection_after_a_retry_restores_the_state_before_the_first_attempt(self):
        # attempt 1: node-0011 is locked by someone else (fails, untouched), node-0016 deploys and
        # stays so (keep_deployed); attempt 2 redeploys node-0016, whose backup now holds the new
        # build. The PM's rejection must restore what ran before attempt 1.
        tiers = {"node-0016": 2, "node-0011": 2}
        names = list(tiers)
        sr = f"SR-RETRY-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        arts = self.prepare(sr, tiers, "retry")
        with self.locked_by_someone_else("node-0011"):
            first = self.trigger_ok(sr)
            self.wait_task(sr, "FAILED_ROLLBACK")
        mid = self.check(*names)
        self.assert_deployed(before["node-0016"], mid["node-0016"], arts)
        self.assertEqual(mid["node-0011"]["tree_sha256"], before["node-0011"]["tree_sha256"])

        second = self.trigger_ok(sr)
        self.assertNotEqual(second, first)
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        r = self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "rejected", "pm_id": "carol"},
                     query={"wait": "true"}, timeout=ROLLOUT_TIMEOUT)
        self.assertEqual(self.ok(r), {"sr_id": sr, "status": "ROLLED_BACK", "rolled_back": 2, "failed": 0})
        after = self.check(*names)
        for n in names:
            self.assert_restored(before[n], after[n])

    # ================================================================== 14. act on a final status at once
    def test_14_a_final_status_can_be_acted_on_as_soon_as_it_shows(self):
        # A work's final status is readable before the service is done with the SR (webhook,
        # answer). GUARDIA_FAILPOINT_PAUSE holds that window open for 3 s after every final
        # status: a trigger posted as soon as FAILED_ROLLBACK shows and a verdict posted as soon
        # as PENDING_PM_VALIDATION shows must wait for the window to close, not be refused with
        # 409 "SR ... is PENDING_PM_VALIDATION" (seen in the sanitizer pass under load).
        names = ["node-0013", "node-0014"]
        tiers = {n: 2 for n in names}
        sr = f"SR-SETTLE-{self.tag}"
        saved = os.environ.get("GUARDIA_FAILPOINT_PAUSE")
        os.environ["GUARDIA_FAILPOINT_PAUSE"] = "WORK_FINISH:3000"
        try:
            self.start_service()
        finally:
            if saved is None:
                os.environ.pop("GUARDIA_FAILPOINT_PAUSE", None)
            else:
                os.environ["GUARDIA_FAILPOINT_PAUSE"] = saved
        before = self.fresh(*names)
        self.prepare(sr, tiers, "settle")
        with self.locked_by_someone_else("node-0013"):
            self.trigger_ok(sr)
            self.wait_task(sr, "FAILED_ROLLBACK")
        self.trigger_ok(sr)       # at once: inside the window
        self.wait_task(sr, "PENDING_PM_VALIDATION", passing=("DEPLOYING", "FAILED_ROLLBACK"))
        r = self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "rejected", "pm_id": "carol"},
                     query={"wait": "true"}, timeout=ROLLOUT_TIMEOUT)
        self.assertEqual(self.ok(r), {"sr_id": sr, "status": "ROLLED_BACK", "rolled_back": 2, "failed": 0})
        after = self.check(*names)
        for n in names:
            self.assert_restored(before[n], after[n])


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
        print(f"serve cleanup: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(cleanup())
    unittest.main(verbosity=2)
