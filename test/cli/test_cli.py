#!/usr/bin/env python3
"""Black-box tests of the `guardia` executable against a real fleet (tools/fleet).

Every test builds its own inventory (a subset of the fleet's inventory.json, tiers set per
test), its own artifacts, configuration and audit DB in a temp dir, runs `guardia deploy` or
`guardia exec` as a subprocess, and asserts:
  - the exit code and the report (--json, or the text report),
  - what really happened on the nodes, read straight from the node directories with
    `tools/fleet check --backups` (tree digests, file hashes, service state, backups, lock,
    leftovers beside the deploy path), plus the nodes' real health endpoints,
  - the audit DB (sqlite3: audit_log, rollouts, node_results).
Node state is captured before each run and compared after, so tests do not depend on their
order; tests that deploy use disjoint healthy nodes.

Environment (set by test/cli/CMakeLists.txt):
  GUARDIA_TEST_FLEET_CLI  the fleet directory (fixture cli_fleet)
  GUARDIA_BIN             the guardia executable
  GUARDIA_FLEET_TOOL      tools/fleet
  GUARDIA_CLI_WORK        root of the tests' temp dirs (removed by `test_cli.py --cleanup`)

  test_cli.py [unittest args]   run the tests (as root: the fleet's client key is root-only)
  test_cli.py --cleanup         kill guardia processes a killed run left, remove the work root
"""

import hashlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FLEET_DIR = os.environ.get("GUARDIA_TEST_FLEET_CLI", "")
GUARDIA = os.environ.get("GUARDIA_BIN") or os.path.join(ROOT, "build", "src", "guardia")
FLEET_TOOL = os.environ.get("GUARDIA_FLEET_TOOL") or os.path.join(ROOT, "tools", "fleet")
WORK_ROOT = os.environ.get("GUARDIA_CLI_WORK") or (FLEET_DIR.rstrip("/") + "-work" if FLEET_DIR else "")
MARK = "GUARDIA_CLI_TEST_ROOT"      # env mark of every guardia process a test starts

# The fixture's layout (test/cli/CMakeLists.txt); checked in setUpClass.
HEALTHY = [f"node-{i:04d}" for i in range(1, 12)]
REJECT_A, REJECT_B = "node-0012", "node-0013"      # rejects_new_build
UNREACHABLE = "node-0014"
SLOW = ["node-0015", "node-0016"]                  # health_slow

RUN_TIMEOUT = 180          # any single guardia run; a hung run is killed and fails the test
STAGE_PREFIX = ".guardia-stage."

TIERS = [{"tier": 1, "batch_size": 1, "mode": "lockstep", "strict_health": True},
         {"tier": 2, "batch_size": 10},
         {"tier": 3, "batch_size": "all"}]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def http_get(port, path="/health", timeout=5.0, cafile=None):
    """GET on a node's health endpoint; HTTPS verified against `cafile` when given."""
    if cafile:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                        context=ssl.create_default_context(cafile=cafile))
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


def kill_group(p):
    """SIGKILL a guardia process (its own session) and everything in its group."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    p.wait()


class Run:
    def __init__(self, rc, out, err, seconds):
        self.rc, self.out, self.err, self.seconds = rc, out, err, seconds

    def __repr__(self):
        return f"rc={self.rc} after {self.seconds:.1f} s\n--- stdout\n{self.out}\n--- stderr\n{self.err}"

    @property
    def json(self):
        return json.loads(self.out)


def config(threshold=10, **rollout):
    """An engine configuration: tiers 1 (one at a time, strict), 2 (window 10), 3 (all).
    keep_backups is raised so that 'exactly one more backup' holds however often a node
    was deployed before (the default, 3, prunes)."""
    r = {"tiers": TIERS, "failure_threshold_percent": threshold, "max_failed_nodes": 0,
         "on_abort": "keep_deployed"}
    r.update(rollout)
    return {"rollout": r, "pipeline": {"keep_backups": 50}}


class CliTest(unittest.TestCase):
    maxDiff = None
    health_ca = None        # the fleet's CA file when its health endpoints speak HTTPS

    @classmethod
    def load_fleet(cls, fixture):
        """Reads the fleet (fleet.json, inventory.json, known_hosts) into the class; returns
        each node's fault kinds, for the caller to check against the layout it expects."""
        if os.geteuid() != 0:
            raise AssertionError("the CLI tests need root (the fleet's client key and node files are root-only)")
        if not FLEET_DIR or not os.path.exists(os.path.join(FLEET_DIR, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_CLI={FLEET_DIR!r} (fixture {fixture})")
        if not os.access(GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {GUARDIA}")
        with open(os.path.join(FLEET_DIR, "fleet.json")) as f:
            cls.info = json.load(f)
        with open(os.path.join(FLEET_DIR, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.fnodes = {n["name"]: n for n in cls.info["nodes"]}
        cls.known_hosts = os.path.join(FLEET_DIR, "known_hosts")
        os.makedirs(WORK_ROOT, exist_ok=True)
        os.chmod(WORK_ROOT, 0o711)
        return {name: [x["kind"] for x in n["faults"]] for name, n in cls.fnodes.items()}

    @classmethod
    def setUpClass(cls):
        kinds = cls.load_fleet("cli_fleet")
        want = {**{n: [] for n in HEALTHY}, REJECT_A: ["rejects_new_build"], REJECT_B: ["rejects_new_build"],
                UNREACHABLE: ["unreachable"], **{n: ["health_slow"] for n in SLOW}}
        if kinds != want:
            raise AssertionError(f"the cli_fleet fixture is not what the tests expect: {kinds}")
        cls.slow_s = min(x["seconds"] for n in SLOW for x in cls.fnodes[n]["faults"])

    # ------------------------------------------------------------------ plumbing
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=WORK_ROOT)
        os.chmod(self.tmp, 0o711)
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.tag = os.path.basename(self.tmp).rsplit("-", 1)[-1]

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write_json(self, name, obj):
        with open(self.path(name), "w") as f:
            json.dump(obj, f, indent=1)
        return self.path(name)

    def inventory(self, tiers, name="inventory.json", **overrides):
        """An inventory of the fleet's nodes `tiers` ({node: tier}, in that order), each node
        optionally changed by overrides[node] (a dict merged into it)."""
        nodes = []
        for n, t in tiers.items():
            node = json.loads(json.dumps(self.inv[n]))
            node["tier"] = t
            node.update(overrides.get(n.replace("-", "_"), {}))
            nodes.append(node)
        return self.write_json(name, {"nodes": nodes})

    def artifacts(self, label):
        """Two artifacts (a new app.jar and VERSION) in their own directory: {name: (path, bytes)}."""
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

    def start(self, *args):
        env = dict(os.environ, **{MARK: WORK_ROOT})
        p = subprocess.Popen([GUARDIA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=self.tmp)
        self.addCleanup(kill_group, p)       # a test failing midway leaves no guardia behind
        return p

    def finish(self, p, t0, timeout=RUN_TIMEOUT):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            out, err = p.communicate()
            self.fail(f"guardia {p.args[1:]} did not finish within {timeout} s (killed)\n{out}\n{err}")
        return Run(p.returncode, out, err, time.monotonic() - t0)

    def guardia(self, *args, timeout=RUN_TIMEOUT):
        t0 = time.monotonic()
        return self.finish(self.start(*args), t0, timeout)

    def deploy(self, inventory, artifacts, *extra, conf=None, db="audit.db", json_out=True, sr_id=None):
        args = ["deploy", "--inventory", inventory, "--known-hosts", self.known_hosts, "--db", self.path(db)]
        for p, _ in artifacts.values():
            args += ["--artifact", p]
        if conf is not None:
            args += ["--config", self.write_json("config.json", conf)]
        if sr_id:
            args += ["--sr-id", sr_id]
        if json_out:
            args.append("--json")
        return self.guardia(*args, *extra)

    def check(self, *names):
        args = [FLEET_TOOL, "check", "--dir", FLEET_DIR, "--backups"]
        for n in names:
            args += ["--node", n]
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["nodes"]

    def audit(self, db="audit.db"):
        c = sqlite3.connect(f"file:{self.path(db)}?mode=ro", uri=True)
        c.row_factory = sqlite3.Row
        try:
            return ([dict(r) for r in c.execute("SELECT * FROM audit_log ORDER BY id")],
                    [dict(r) for r in c.execute("SELECT * FROM rollouts")],
                    {r["node"]: dict(r) for r in c.execute("SELECT * FROM node_results")})
        finally:
            c.close()

    @staticmethod
    def by_name(report):
        return {n["name"]: n for n in report["nodes"]}

    # ------------------------------------------------------------------ node assertions
    def assert_untouched(self, before, after, names=None):
        """Nothing of the node changed: tree, backups, lock, service (no script ran)."""
        for n in names or before:
            b, a = before[n], after[n]
            with self.subTest(node=n):
                for k in ("tree_sha256", "files", "backups", "backup_trees", "lock_present", "other_entries",
                          "service_running", "service_events"):
                    self.assertEqual(a[k], b[k], f"{n}: {k} changed")
                self.assertFalse(a["lock_present"], n)

    def new_backup(self, b, a, report_node=None):
        """The one backup this run made (asserted: exactly one, a copy of the tree before)."""
        n = a["deploy_path"].split("/")[-2]
        new = sorted(set(a["backups"]) - set(b["backups"]))
        self.assertEqual(len(new), 1, f"{n}: exactly one new backup: {b['backups']} -> {a['backups']}")
        self.assertTrue(set(b["backups"]) <= set(a["backups"]), f"{n}: no backup pruned")
        self.assertEqual(a["backup_trees"][new[0]], b["tree_sha256"], f"{n}: the backup is the tree before")
        if report_node is not None:
            self.assertEqual(report_node["backup_path"], os.path.join(os.path.dirname(a["deploy_path"]), new[0]))
        return new[0]

    def assert_clean(self, a):
        n = a["deploy_path"].split("/")[-2]
        self.assertFalse(a["lock_present"], f"{n}: lock left")
        self.assertEqual(a["other_entries"], [], f"{n}: leftovers beside the deploy path")
        self.assertEqual([f for f in a["files"] if f.split("/")[-1].startswith(STAGE_PREFIX)], [],
                         f"{n}: staging files left")
        self.assertTrue(a["exists"])
        self.assertTrue(a["service_running"], f"{n}: service not running")

    def assert_deployed(self, b, a, arts, report_node=None):
        n = a["deploy_path"].split("/")[-2]
        with self.subTest(node=n):
            for name, (p, data) in arts.items():
                self.assertEqual(a["files"][name]["sha256"], sha256(data), f"{n}: {name}")
                self.assertEqual(a["files"][name]["size"], len(data))
                self.assertEqual(a["files"][name]["mode"], "0644")
            for name in set(b["files"]) - set(arts):
                self.assertEqual(a["files"][name], b["files"][name], f"{n}: {name} must not change")
            self.assertEqual(set(a["files"]), set(b["files"]) | set(arts))
            self.assertEqual(a["version"], arts["VERSION"][1].decode().strip())
            self.assert_clean(a)
            self.assertEqual(a["service_events"][-2:], ["shutdown", "startup"])
            self.new_backup(b, a, report_node)
            if report_node is not None:
                self.assertEqual((report_node["outcome"], report_node["step"], report_node["lock_released"]),
                                 ("DEPLOYED", "DONE", True))
                self.assertNotIn("error", report_node)
            status, body = http_get(self.inv[n]["health"]["port"], cafile=self.health_ca)
            self.assertEqual((status, body["version"]), (200, a["version"]), f"{n}: health after deploy")

    def assert_restored(self, b, a, report_node=None):
        """Rolled back: byte-identical tree, the service restarted on it, lock released."""
        n = a["deploy_path"].split("/")[-2]
        with self.subTest(node=n):
            self.assertEqual(a["tree_sha256"], b["tree_sha256"], f"{n}: tree not restored exactly")
            self.assertEqual(a["files"], b["files"])
            self.assertEqual(a["dirs"], b["dirs"])
            self.assert_clean(a)
            # deploy: shutdown + startup; rollback: shutdown + startup
            self.assertEqual(a["service_events"][-4:], ["shutdown", "startup", "shutdown", "startup"])
            self.new_backup(b, a, report_node)
            if report_node is not None:
                self.assertEqual(report_node["outcome"], "ROLLED_BACK")
                self.assertIs(report_node["lock_released"], True)
                self.assertNotIn("rollback_error", report_node)

    # ------------------------------------------------------------------ audit assertions
    def rollout_events(self, rows):
        return [(r["step"], r["event"], r["detail"]) for r in rows if r["node"] == ""]

    def assert_audit_ids(self, rows, rollout_id, sr_id):
        self.assertTrue(rows)
        self.assertEqual({r["rollout_id"] for r in rows}, {rollout_id})
        self.assertEqual({r["sr_id"] for r in rows}, {sr_id})

    def node_events(self, rows, node, event=None, step=None):
        return [r for r in rows if r["node"] == node and (event is None or r["event"] == event)
                and (step is None or r["step"] == step)]

    # ================================================================== 1. invalid inventory
    def test_1_invalid_inventory_starts_nothing(self):
        before = self.check()
        arts = self.artifacts("inv")
        base = {"node-0001": 1, "node-0002": 2, "node-0003": 3}
        cases = [
            ("unknown field", self.inventory(base, "unknown-field.json", node_0002={"colour": "red"}), None,
             "node 'node-0002': unknown field 'colour'"),
            ("unknown nested field",
             self.inventory(base, "unknown-nested.json",
                            node_0001={"health": dict(self.inv["node-0001"]["health"], retries=3)}), None,
             "node 'node-0001': unknown field 'health.retries'"),
            ("bad tier", self.inventory(base, "bad-tier.json", node_0003={"tier": 100}), None,
             "node 'node-0003': field 'tier': must be an integer from 1 to 99"),
            ("tier as a string", self.inventory(base, "tier-string.json", node_0002={"tier": "2"}), None,
             "node 'node-0002': field 'tier': must be an integer from 1 to 99"),
            ("tier not in the config", self.inventory(base, "tier-not-configured.json"),
             {"rollout": {"tiers": TIERS[:2]}},
             "node 'node-0003': field 'tier': tier 3 is not in the rollout configuration (rollout.tiers)"),
        ]
        for what, inv, conf, message in cases:
            with self.subTest(what):
                db = f"audit-{what.replace(' ', '-')}.db"
                r = self.deploy(inv, arts, conf=conf, db=db)
                self.assertEqual(r.rc, 2, r)
                self.assertEqual(r.out, "", r)
                where = self.path("config.json") if conf else inv
                self.assertEqual(r.err, f"guardia deploy: {where}: {message}\n", r)
                self.assertFalse(os.path.exists(self.path(db)), "nothing started: no audit DB")
        self.assert_untouched(before, self.check())

    # ================================================================== 2. usage errors
    def test_2_usage_errors_start_nothing(self):
        before = self.check()
        arts = self.artifacts("usage")
        inv = self.inventory({"node-0001": 1, "node-0002": 2})
        jar, version = arts["app.jar"][0], arts["VERSION"][0]
        same_name = self.path("elsewhere/app.jar")
        os.makedirs(os.path.dirname(same_name))
        shutil.copy(jar, same_name)
        bad_mode = self.write_json("bad-mode.json", {"rollout": {"tiers": [{"tier": 1, "mode": "zigzag"}]}})
        bad_field = self.write_json("bad-field.json", {"rollout": {"tiers": TIERS, "threshold": 5}})
        bad_batch = self.write_json("bad-batch.json", {"rollout": {"tiers": [TIERS[0], {"tier": 2, "batch_size": 0}]}})
        with open(self.path("broken.json"), "w") as f:
            f.write('{"rollout": {"tiers": [')
        common = ["--known-hosts", self.known_hosts, "--db", self.path("audit.db")]
        cases = [
            ("no --artifact", ["--inventory", inv], "guardia deploy: --artifact FILE is required\nusage: guardia deploy"),
            ("no --inventory", ["--artifact", jar], "guardia deploy: --inventory FILE is required\n"),
            ("unknown flag", ["--inventory", inv, "--artifact", jar, "--parallel", "5"],
             "guardia deploy: unknown option --parallel\nusage: guardia deploy"),
            ("flag without value", ["--inventory", inv, "--artifact"], "guardia deploy: --artifact needs a value\n"),
            ("flag value forgotten before the next flag", ["--inventory", inv, "--artifact", "--sr-id", "SR-9"],
             "guardia deploy: --artifact needs a value\n"),
            ("missing artifact", ["--inventory", inv, "--artifact", self.path("no-such.jar")],
             f"guardia deploy: artifact {self.path('no-such.jar')}: No such file or directory\n"),
            ("artifact is a directory", ["--inventory", inv, "--artifact", self.tmp],
             f"guardia deploy: artifact {self.tmp} is not a regular file\n"),
            ("same file name twice", ["--inventory", inv, "--artifact", jar, "--artifact", version,
                                      "--artifact", same_name],
             f"guardia deploy: --artifact {same_name}: another artifact has the same file name 'app.jar'\n"),
            ("bad --sr-id", ["--inventory", inv, "--artifact", jar, "--sr-id", "x;rm"],
             "guardia deploy: --sr-id must be letters, digits, '-', '_' or '.'\n"),
            ("bad --host-key-policy", ["--inventory", inv, "--artifact", jar, "--host-key-policy", "yolo"],
             "guardia deploy: --host-key-policy must be strict or accept-new, not 'yolo'\n"),
            ("config: bad mode", ["--inventory", inv, "--artifact", jar, "--config", bad_mode],
             f"guardia deploy: {bad_mode}: rollout.tiers[0].mode: must be \"sliding\" or \"lockstep\"\n"),
            ("config: unknown field", ["--inventory", inv, "--artifact", jar, "--config", bad_field],
             f"guardia deploy: {bad_field}: rollout.threshold: unknown field\n"),
            ("config: bad batch size", ["--inventory", inv, "--artifact", jar, "--config", bad_batch],
             f"guardia deploy: {bad_batch}: rollout.tiers[1].batch_size: must be between 1 and 1000000 (got 0)\n"),
            ("config: broken JSON", ["--inventory", inv, "--artifact", jar, "--config", self.path("broken.json")],
             f"guardia deploy: {self.path('broken.json')}:1:"),
            ("config: missing file", ["--inventory", inv, "--artifact", jar, "--config", self.path("nope.json")],
             f"guardia deploy: cannot read configuration '{self.path('nope.json')}': No such file or directory\n"),
        ]
        for what, args, message in cases:
            with self.subTest(what):
                r = self.guardia("deploy", *common, *args)
                self.assertEqual(r.rc, 2, r)
                self.assertEqual(r.out, "", r)
                self.assertTrue(r.err.startswith(message), f"{what}: expected stderr to start with {message!r}\n{r}")
                self.assertFalse(os.path.exists(self.path("audit.db")), "nothing started: no audit DB")
        r = self.guardia("deploy", "--help")
        self.assertEqual((r.rc, r.err), (0, ""), r)
        self.assertTrue(r.out.startswith("usage: guardia deploy --inventory FILE --artifact FILE"), r)
        r = self.guardia("frobnicate")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("unknown command 'frobnicate'", r.err)
        self.assert_untouched(before, self.check())

    # ================================================================== 3. healthy rollout
    def test_3_healthy_rollout_across_tiers(self):
        tiers = {"node-0001": 1, "node-0002": 1, "node-0003": 2, "node-0004": 2, "node-0005": 2,
                 "node-0006": 3, "node-0007": 3, "node-0008": 3}
        names = list(tiers)
        before = self.check(*names)
        arts = self.artifacts("healthy")
        sr = f"CLI-HEALTHY-{self.tag}"
        r = self.deploy(self.inventory(tiers), arts, conf=config(), sr_id=sr)
        self.assertEqual(r.rc, 0, r)
        rep = r.json
        self.assertEqual((rep["status"], rep["reason"], rep["sr_id"], rep["dry_run"]), ("SUCCEEDED", "", sr, False))
        self.assertTrue(rep["rollout_id"].startswith(sr + "-"), rep["rollout_id"])
        self.assertEqual(rep["counts"], {"total": 8, "deployed": 8, "failed": 0, "not_started": 0})
        self.assertEqual(rep["tiers"], [{"tier": 1, "total": 2, "finished": 2, "failed": 0, "not_started": 0},
                                        {"tier": 2, "total": 3, "finished": 3, "failed": 0, "not_started": 0},
                                        {"tier": 3, "total": 3, "finished": 3, "failed": 0, "not_started": 0}])
        self.assertEqual([n["name"] for n in rep["nodes"]], names)
        nodes = self.by_name(rep)
        after = self.check(*names)
        for n in names:
            self.assertEqual(nodes[n]["tier"], tiers[n])
            self.assert_deployed(before[n], after[n], arts, nodes[n])

        rows, rollouts, results = self.audit()
        self.assert_audit_ids(rows, rep["rollout_id"], sr)
        self.assertEqual(self.rollout_events(rows), [
            ("ROLLOUT", "ROLLOUT_START", "8 node(s), 2 artifact(s)"),
            ("TIER", "TIER_START", "tier 1: 2 node(s), lock-step batches of 1, strict health"),
            ("TIER", "TIER_DONE", "tier 1: 2 deployed, 0 failed, 0 not started"),
            ("TIER", "TIER_START", "tier 2: 3 node(s), sliding window of 10"),
            ("TIER", "TIER_DONE", "tier 2: 3 deployed, 0 failed, 0 not started"),
            ("TIER", "TIER_START", "tier 3: 3 node(s), sliding window of 3"),
            ("TIER", "TIER_DONE", "tier 3: 3 deployed, 0 failed, 0 not started"),
            ("ROLLOUT", "ROLLOUT_SUCCEEDED", "8 deployed, 0 failed, 0 not started")])
        for n in names:
            with self.subTest(node=n):
                self.assertEqual(len(self.node_events(rows, n, "DEPLOY_SUCCESS")), 1)
                self.assertEqual(self.node_events(rows, n, "DEPLOY_FAILED"), [])
                self.assertEqual(self.node_events(rows, n, "STEP_FAILED"), [])
                done = [(r["step"], r["event"]) for r in self.node_events(rows, n) if r["event"] != "STEP_START"]
                self.assertEqual(done, [("VALIDATE", "STEP_OK"), ("CONNECT", "STEP_OK"), ("PRECHECK", "STEP_OK"),
                                        ("LOCK", "STEP_OK"), ("BACKUP", "STEP_OK"), ("TRANSFER", "STEP_OK"),
                                        ("TRANSFER", "STEP_OK"), ("SHUTDOWN", "STEP_OK"), ("ACTIVATE", "STEP_OK"),
                                        ("STARTUP", "STEP_OK"), ("HEALTH", "STEP_OK"),
                                        ("SUMMARY", "DEPLOY_SUCCESS"), ("UNLOCK", "STEP_OK")])
                transfers = [r["detail"] for r in self.node_events(rows, n, "STEP_OK", "TRANSFER")]
                self.assertEqual(transfers, [f"sha256 {sha256(d)} verified remotely (md5 {hashlib.md5(d).hexdigest()})"
                                             for _, d in arts.values()])
                health = self.node_events(rows, n, "STEP_START", "HEALTH")[0]["detail"]
                strict = "(strict: 3 consecutive 200s)" in health
                self.assertEqual(strict, tiers[n] == 1, f"{n}: strict health only in tier 1: {health}")
                self.assertEqual(results[n]["status"], "DEPLOYED")
                self.assertEqual(results[n]["backup_path"], nodes[n]["backup_path"])
        self.assertEqual([(x["id"], x["sr_id"], x["status"], x["reason"]) for x in rollouts],
                         [(rep["rollout_id"], sr, "SUCCEEDED", "")])

        # Tier order: every node of tier k finished (DEPLOY_SUCCESS, lock released) before the
        # first event of any node of tier k+1; tier 1 one node at a time.
        def ids(ns, pick):
            return [r["id"] for r in rows if r["node"] in ns and pick(r)]
        by_tier = {t: [n for n in names if tiers[n] == t] for t in (1, 2, 3)}
        for t in (1, 2):
            last_done = max(ids(by_tier[t], lambda r: r["event"] == "DEPLOY_SUCCESS" or r["step"] == "UNLOCK"))
            first_next = min(ids(by_tier[t + 1], lambda r: r["event"] == "STEP_START"))
            self.assertLess(last_done, first_next, f"tier {t} must finish before tier {t + 1} starts")
        n1, n2 = by_tier[1]
        self.assertLess(max(ids([n1], lambda r: True)), min(ids([n2], lambda r: True)),
                        "tier 1 runs one node at a time")

    # ================================================================== 4. a node rejects the build
    def test_4_failed_node_rolled_back_others_deployed(self):
        tiers = {"node-0009": 2, REJECT_B: 2, "node-0010": 3}
        names = list(tiers)
        inv = self.inventory(tiers)
        conf = config(threshold=50)     # 1 of 2 failed in tier 2 stays below the gate: FAILED, not ABORTED

        # --json
        before = self.check(*names)
        arts = self.artifacts("json")
        sr = f"CLI-REJECT-{self.tag}"
        r = self.deploy(inv, arts, conf=conf, sr_id=sr)
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        reason = "1 of 3 node(s) failed (the safety gate held)"
        self.assertEqual((rep["status"], rep["reason"]), ("FAILED", reason))
        self.assertEqual(rep["counts"], {"total": 3, "deployed": 2, "failed": 1, "not_started": 0})
        nodes = self.by_name(rep)
        bad = nodes[REJECT_B]
        self.assertEqual((bad["outcome"], bad["step"], bad["failed_step"], bad["error_code"]),
                         ("ROLLED_BACK", "HEALTH", "HEALTH", "deadline exceeded"))
        self.assertRegex(bad["error"], rf"^node '{REJECT_B}': HEALTH: .*not healthy after 4 s: .*HTTP 503$")
        after = self.check(*names)
        self.assert_restored(before[REJECT_B], after[REJECT_B], bad)
        status, body = http_get(self.inv[REJECT_B]["health"]["port"])
        self.assertEqual((status, body["version"]), (200, "v1"), "the exact rollback makes it healthy again")
        for n in ("node-0009", "node-0010"):
            self.assert_deployed(before[n], after[n], arts, nodes[n])
        rows, rollouts, results = self.audit()
        self.assert_audit_ids(rows, rep["rollout_id"], sr)
        self.assertEqual([(x["status"], x["reason"]) for x in rollouts], [("FAILED", reason)])
        self.assertEqual([r["event"] for r in self.node_events(rows, REJECT_B, step="SUMMARY")],
                         ["DEPLOY_FAILED", "ROLLBACK_OK"])
        self.assertEqual([r["event"] for r in self.node_events(rows, REJECT_B, step="RESTORE")],
                         ["STEP_START", "STEP_OK"])
        self.assertEqual(self.node_events(rows, REJECT_B, "STEP_OK", "ROLLBACK_HEALTH")[0]["exit_code"], 200)
        self.assertEqual({n: results[n]["status"] for n in names},
                         {"node-0009": "DEPLOYED", REJECT_B: "ROLLED_BACK", "node-0010": "DEPLOYED"})
        self.assertEqual(results[REJECT_B]["step"], "HEALTH")
        self.assertEqual(results[REJECT_B]["error"], bad["error"])
        self.assertEqual(self.rollout_events(rows)[-1],
                         ("ROLLOUT", "ROLLOUT_FAILED", f"2 deployed, 1 failed, 0 not started; {reason}"))

        # the text report (no --json): a line per node, then the summary
        before = after
        arts = self.artifacts("text")
        sr = f"CLI-REJECT-TEXT-{self.tag}"
        r = self.deploy(inv, arts, conf=conf, db="audit-text.db", json_out=False, sr_id=sr)
        self.assertEqual(r.rc, 1, r)
        lines = r.out.splitlines()
        self.assertEqual(lines[0], "", r)
        self.assertRegex(lines[1], rf"^Rollout report: rollout {re.escape(sr)}-\S+ \(sr {re.escape(sr)}\)$")
        self.assertRegex(lines[2], r"^NODE\s+TIER\s+OUTCOME\s+STEP\s+TIME\s+DETAIL$")
        after = self.check(*names)
        dirs = {n: os.path.dirname(after[n]["deploy_path"]) for n in names}
        b9 = self.new_backup(before["node-0009"], after["node-0009"])
        b10 = self.new_backup(before["node-0010"], after["node-0010"])
        self.assertRegex(lines[3], rf"^node-0009\s+2\s+DEPLOYED\s+DONE\s+\d+ ms\s+backup {re.escape(dirs['node-0009'])}/{b9}$")
        self.assertRegex(lines[4], rf"^{REJECT_B}\s+2\s+ROLLED_BACK\s+HEALTH\s+\d+ ms\s+node '{REJECT_B}': HEALTH: .*HTTP 503$")
        self.assertRegex(lines[5], rf"^node-0010\s+3\s+DEPLOYED\s+DONE\s+\d+ ms\s+backup {re.escape(dirs['node-0010'])}/{b10}$")
        self.assertEqual(lines[6], "")
        self.assertRegex(lines[7], r"^FAILED: 3 node\(s\): 2 deployed, 1 failed, 0 not started, in \d+\.\d s$")
        self.assertEqual(lines[8:], [f"reason: {reason}"])
        self.assertIn(f"{REJECT_B} ROLLED_BACK", r.err, "live progress on stderr")
        self.assert_restored(before[REJECT_B], after[REJECT_B])
        for n in ("node-0009", "node-0010"):
            self.assert_deployed(before[n], after[n], arts)

    # ================================================================== 5. safety gate in tier 1
    def test_5_safety_gate_aborts_in_tier_1(self):
        tiers = {"node-0011": 1, REJECT_A: 1, "node-0001": 2, "node-0002": 2, "node-0003": 3}
        names = list(tiers)
        later = ["node-0001", "node-0002", "node-0003"]
        before = self.check(*names)
        arts = self.artifacts("gate")
        sr = f"CLI-GATE-{self.tag}"
        r = self.deploy(self.inventory(tiers), arts, conf=config(threshold=10), sr_id=sr)
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        reason = "safety gate: tier 1 failure rate 50.0 % (1 of 2 finished node(s)) is above 10.0 %"
        self.assertEqual((rep["status"], rep["reason"]), ("ABORTED", reason))
        self.assertEqual(rep["counts"], {"total": 5, "deployed": 1, "failed": 1, "not_started": 3})
        self.assertEqual(rep["tiers"], [{"tier": 1, "total": 2, "finished": 2, "failed": 1, "not_started": 0},
                                        {"tier": 2, "total": 2, "finished": 0, "failed": 0, "not_started": 2},
                                        {"tier": 3, "total": 1, "finished": 0, "failed": 0, "not_started": 1}])
        nodes = self.by_name(rep)
        for n in later:
            self.assertEqual(nodes[n], {"name": n, "tier": tiers[n], "outcome": "NOT_STARTED", "step": ""})
        after = self.check(*names)
        self.assert_untouched(before, after, later)
        self.assert_deployed(before["node-0011"], after["node-0011"], arts, nodes["node-0011"])
        self.assert_restored(before[REJECT_A], after[REJECT_A], nodes[REJECT_A])
        self.assertEqual(nodes[REJECT_A]["failed_step"], "HEALTH")

        rows, rollouts, results = self.audit()
        self.assert_audit_ids(rows, rep["rollout_id"], sr)
        self.assertEqual(self.rollout_events(rows), [
            ("ROLLOUT", "ROLLOUT_START", "5 node(s), 2 artifact(s)"),
            ("TIER", "TIER_START", "tier 1: 2 node(s), lock-step batches of 1, strict health"),
            ("GATE", "ROLLOUT_ABORT", reason + "; nodes in flight finish, no new node starts"),
            ("TIER", "TIER_DONE", "tier 1: 1 deployed, 1 failed, 0 not started"),
            ("ROLLOUT", "ROLLOUT_ABORTED", "1 deployed, 1 failed, 3 not started; " + reason)])
        self.assertEqual([r for r in rows if r["node"] in later], [], "nothing of tiers 2/3 was started")
        self.assertEqual({n: results[n]["status"] for n in names},
                         {"node-0011": "DEPLOYED", REJECT_A: "ROLLED_BACK", "node-0001": "SKIPPED",
                          "node-0002": "SKIPPED", "node-0003": "SKIPPED"})
        self.assertEqual([(x["status"], x["reason"]) for x in rollouts], [("ABORTED", reason)])

    # ================================================================== 6. dry run
    def test_6_dry_run_changes_nothing(self):
        all_before = self.check()
        arts = self.artifacts("dry")
        tiers = {"node-0001": 1, "node-0002": 2, "node-0003": 2, "node-0004": 3}
        r = self.deploy(self.inventory(tiers, "healthy.json"), arts, "--dry-run", conf=config(), db="dry-ok.db")
        self.assertEqual(r.rc, 0, r)
        rep = r.json
        self.assertEqual((rep["status"], rep["dry_run"], rep["reason"]), ("SUCCEEDED", True, ""))
        self.assertEqual(rep["counts"], {"total": 4, "deployed": 4, "failed": 0, "not_started": 0})
        for n in rep["nodes"]:
            self.assertEqual((n["outcome"], n["step"]), ("READY", "DONE"), n)
            self.assertNotIn("lock_released", n)
            self.assertNotIn("backup_path", n)
        rows, rollouts, results = self.audit("dry-ok.db")
        self.assertEqual(self.rollout_events(rows)[0], ("ROLLOUT", "DRY_RUN_START", "4 node(s), 2 artifact(s)"))
        self.assertEqual(self.rollout_events(rows)[-1][:2], ("ROLLOUT", "ROLLOUT_SUCCEEDED"))
        steps = {r["step"] for r in rows if r["node"]}
        self.assertEqual(steps, {"VALIDATE", "CONNECT", "PRECHECK", "LOCK_PROBE", "SUMMARY"},
                         "a dry run never locks, backs up, transfers or restarts")
        self.assertEqual({n: x["status"] for n, x in results.items()}, {n: "DRY_RUN_OK" for n in tiers})

        # an unreachable node (in tier 1: the dry run still checks every tier) and a node
        # locked by another rollout are NOT_READY, with the reason
        lock = self.inv["node-0004"]["deploy_path"] + ".lock"
        os.mkdir(lock)
        self.addCleanup(shutil.rmtree, lock, ignore_errors=True)
        with open(os.path.join(lock, "owner"), "w") as f:
            f.write("owner=someone-else\nrollout=OTHER-ROLLOUT\n")
        node_user = pwd.getpwnam(self.info["user"])
        for p in (lock, os.path.join(lock, "owner")):
            os.chown(p, node_user.pw_uid, node_user.pw_gid)
        tiers = {UNREACHABLE: 1, "node-0001": 1, "node-0002": 2, "node-0004": 3}
        r = self.deploy(self.inventory(tiers, "with-unreachable.json"), arts, "--dry-run", conf=config(),
                        db="dry-bad.db")
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        self.assertEqual((rep["status"], rep["dry_run"]), ("FAILED", True))
        self.assertEqual(rep["counts"], {"total": 4, "deployed": 2, "failed": 2, "not_started": 0})
        nodes = self.by_name(rep)
        self.assertEqual({n: x["outcome"] for n, x in nodes.items()},
                         {UNREACHABLE: "NOT_READY", "node-0001": "READY", "node-0002": "READY", "node-0004": "NOT_READY"})
        u = nodes[UNREACHABLE]
        self.assertEqual((u["failed_step"], u["error_code"]), ("CONNECT", "connection failed"))
        self.assertIn("Connection refused", u["error"])
        self.assertTrue(u["error"].startswith(f"node '{UNREACHABLE}': CONNECT: "), u["error"])
        locked = nodes["node-0004"]
        self.assertEqual(locked["failed_step"], "LOCK_PROBE")
        self.assertIn(f"node is locked by another rollout ({lock}: owner=someone-else rollout=OTHER-ROLLOUT)",
                      locked["error"])
        _, rollouts, results = self.audit("dry-bad.db")
        self.assertEqual({n: x["status"] for n, x in results.items()},
                         {UNREACHABLE: "DRY_RUN_FAILED", "node-0001": "DRY_RUN_OK", "node-0002": "DRY_RUN_OK",
                          "node-0004": "DRY_RUN_FAILED"})
        all_after = self.check()
        self.assertTrue(all_after["node-0004"]["lock_present"], "the other rollout's lock is left alone")
        with open(os.path.join(lock, "owner")) as f:
            self.assertEqual(f.read(), "owner=someone-else\nrollout=OTHER-ROLLOUT\n")
        shutil.rmtree(lock)
        all_after["node-0004"] = self.check("node-0004")["node-0004"]
        self.assert_untouched(all_before, all_after)

    # ================================================================== 7. SIGINT
    def test_7_sigint_cancels_and_rolls_back_in_flight_nodes(self):
        # node-0009 deploys at once; the two slow nodes sit in HEALTH (503 for slow_s after
        # their start; their health timeout is raised to 20 s so that they would not fail on
        # their own before the signal, and so that the rollback's health check can pass);
        # tier 3 never starts.
        tiers = {"node-0009": 2, SLOW[0]: 2, SLOW[1]: 2, "node-0010": 3, "node-0011": 3}
        names = list(tiers)
        not_started = ["node-0010", "node-0011"]
        slow_health = {s.replace("-", "_"): {"health": dict(self.inv[s]["health"], timeout_s=20)} for s in SLOW}
        inv = self.inventory(tiers, **slow_health)
        before = self.check(*names)
        arts = self.artifacts("sigint")
        sr = f"CLI-SIGINT-{self.tag}"
        t0 = time.monotonic()
        p = self.start("deploy", "--inventory", inv, "--known-hosts", self.known_hosts, "--db", self.path("audit.db"),
                       "--artifact", arts["app.jar"][0], "--artifact", arts["VERSION"][0],
                       "--config", self.write_json("config.json", config(threshold=100)), "--sr-id", sr, "--json")

        def ready():
            if not os.path.exists(self.path("audit.db")):
                return False
            try:
                rows, _, _ = self.audit()
            except sqlite3.Error:
                return False
            return (self.node_events(rows, "node-0009", "DEPLOY_SUCCESS")
                    and all(self.node_events(rows, s, "STEP_START", "HEALTH") for s in SLOW))
        deadline = time.monotonic() + 60
        while not ready():
            self.assertIsNone(p.poll(), "guardia ended before the slow nodes reached HEALTH")
            self.assertLess(time.monotonic(), deadline, "the slow nodes never reached HEALTH")
            time.sleep(0.1)
        time.sleep(0.5)
        self.assertIsNone(p.poll())
        t_sig = time.monotonic()
        os.kill(p.pid, signal.SIGINT)
        r = self.finish(p, t0, timeout=90)
        waited = time.monotonic() - t_sig
        self.assertEqual(r.rc, 130, r)
        # the rollback needs slow_s for the restarted service to answer 200 again, little more
        self.assertLess(waited, self.slow_s + 20, f"exit {waited:.1f} s after SIGINT")
        self.assertIn("SIGINT: cancelling -- no new node starts; nodes in flight stop and roll back", r.err)
        rep = r.json
        self.assertEqual((rep["status"], rep["reason"]), ("CANCELLED", "SIGINT received"))
        self.assertEqual(rep["counts"], {"total": 5, "deployed": 1, "failed": 2, "not_started": 2})
        nodes = self.by_name(rep)
        after = self.check(*names)
        self.assert_deployed(before["node-0009"], after["node-0009"], arts, nodes["node-0009"])
        for s in SLOW:
            n = nodes[s]
            self.assertEqual((n["failed_step"], n["error_code"]), ("HEALTH", "operation cancelled"), n)
            self.assert_restored(before[s], after[s], n)
            status, body = http_get(self.inv[s]["health"]["port"])
            self.assertEqual((status, body["version"]), (200, "v1"), f"{s} healthy again on the old build")
        for n in not_started:
            self.assertEqual(nodes[n], {"name": n, "tier": 3, "outcome": "NOT_STARTED", "step": ""})
        self.assert_untouched(before, after, not_started)

        rows, rollouts, results = self.audit()
        self.assert_audit_ids(rows, rep["rollout_id"], sr)
        events = self.rollout_events(rows)
        self.assertIn(("ROLLOUT", "ROLLOUT_CANCEL",
                       "SIGINT received; nodes in flight are stopped and cleaned up"), events)
        self.assertEqual(events[-1], ("ROLLOUT", "ROLLOUT_CANCELLED",
                                      "1 deployed, 2 failed, 2 not started; SIGINT received"))
        self.assertNotIn("tier 3", " ".join(d for _, _, d in events), "tier 3 never started")
        for s in SLOW:
            self.assertEqual([r["event"] for r in self.node_events(rows, s, step="SUMMARY")],
                             ["DEPLOY_FAILED", "ROLLBACK_OK"])
        self.assertEqual([r for r in rows if r["node"] in not_started], [])
        self.assertEqual({n: results[n]["status"] for n in names},
                         {"node-0009": "DEPLOYED", SLOW[0]: "ROLLED_BACK", SLOW[1]: "ROLLED_BACK",
                          "node-0010": "SKIPPED", "node-0011": "SKIPPED"})
        self.assertEqual([(x["status"], x["reason"]) for x in rollouts], [("CANCELLED", "SIGINT received")])

    # ================================================================== 8. exec
    def test_8_exec_fan_out(self):
        all_before = self.check()
        reachable = [n for n in self.inv if n != UNREACHABLE]
        inv = self.inventory({n: self.inv[n]["tier"] for n in reachable}, "reachable.json")
        inv_all = self.inventory({n: self.inv[n]["tier"] for n in self.inv}, "all.json")
        port = {n: self.inv[n]["ssh_port"] for n in self.inv}

        def exec_(inventory, command, *extra):
            return self.guardia("exec", "--inventory", inventory, "--known-hosts", self.known_hosts, *extra,
                                "--", command)

        # per-node exit codes: odd server ports exit 1
        cmd = "exit $(( ${SSH_CONNECTION##* } % 2 ))"
        r = exec_(inv, cmd, "--json")
        odd = sorted(n for n in reachable if port[n] % 2)
        self.assertEqual(r.rc, 1 if odd else 0, r)
        rep = r.json
        self.assertEqual((rep["command"], rep["nodes_total"], rep["nodes_ok"], rep["cancelled"]),
                         (cmd, len(reachable), len(reachable) - len(odd), False))
        self.assertEqual(sorted(n["name"] for n in rep["nodes"]), sorted(reachable))
        for n in rep["nodes"]:
            self.assertEqual((n["exit_code"], n["ok"], n["stdout"], n["stderr"]),
                             (port[n["name"]] % 2, port[n["name"]] % 2 == 0, "", ""), n)

        # stdout capture, and an unreachable node reports its error
        r = exec_(inv_all, 'printf \'%s\' "${SSH_CONNECTION##* }"', "--json")
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        self.assertEqual((rep["nodes_total"], rep["nodes_ok"]), (16, 15))
        nodes = self.by_name(rep)
        for n in reachable:
            self.assertEqual((nodes[n]["ok"], nodes[n]["exit_code"], nodes[n]["stdout"]), (True, 0, str(port[n])))
        u = nodes[UNREACHABLE]
        self.assertIs(u["ok"], False)
        self.assertNotIn("exit_code", u)
        self.assertIn("Connection refused", u["error"])
        self.assertIn(UNREACHABLE, u["error"])

        # text output: a line per node, then the count
        r = exec_(inv_all, 'printf \'%s\' "${SSH_CONNECTION##* }"')
        self.assertEqual(r.rc, 1, r)
        lines = r.out.splitlines()
        self.assertEqual(len(lines), 18, r)
        for line in lines[:16]:
            name = line.split()[0]
            if name == UNREACHABLE:
                self.assertRegex(line, rf"^{name}\s+FAILED\s+\d+ ms\s+.*Connection refused")
            else:
                self.assertRegex(line, rf"^{name}\s+exit 0\s+\d+ ms\s+{port[name]}$")
        self.assertEqual(sorted(line.split()[0] for line in lines[:16]), sorted(self.inv))
        self.assertEqual(lines[16:], ["", "15 of 16 node(s) ok"])

        # all zero: exit 0
        r = exec_(inv, "true", "--json")
        self.assertEqual(r.rc, 0, r)
        rep = r.json
        self.assertEqual((rep["nodes_total"], rep["nodes_ok"]), (15, 15))
        self.assertTrue(all(n["ok"] and n["exit_code"] == 0 for n in rep["nodes"]))

        # a command the sanitizer refuses: exit 2, and nothing was sent (the harmless first
        # half of the command would have left a file the node user can create)
        probe_dir = self.path("probe")
        os.mkdir(probe_dir)
        node_user = pwd.getpwnam(self.info["user"])
        os.chown(probe_dir, node_user.pw_uid, node_user.pw_gid)
        probe = os.path.join(probe_dir, "ran")
        r = exec_(inv, f"touch {probe}; rm -rf /", "--json")
        self.assertEqual(r.rc, 2, r)
        self.assertEqual(r.out, "", r)
        self.assertIn("command refused by the sanitizer", r.err)
        self.assertIn("nothing was sent", r.err)
        self.assertFalse(os.path.exists(probe), "a refused command must not run anywhere")
        # control: the probe half alone does run (so the check above can fail)
        r = exec_(self.inventory({"node-0001": 2}, "one.json"), f"touch {probe}")
        self.assertEqual(r.rc, 0, r)
        self.assertTrue(os.path.exists(probe))

        # usage errors
        r = self.guardia("exec", "--inventory", inv, "--known-hosts", self.known_hosts)
        self.assertEqual(r.rc, 2, r)
        self.assertTrue(r.err.startswith("guardia exec: the command goes after --"), r)
        r = self.guardia("exec", "--inventory", inv, "--known-hosts", self.known_hosts, "--timeout", "0", "--", "true")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--timeout must be between 0 and 86400 s", r.err)
        self.assert_untouched(all_before, self.check())

    # ================================================================== 10. sanitizer, allow-list
    def test_10_refused_commands_reach_no_node(self):
        """The bypasses of the old sanitizer's bug report, through `guardia exec`: each is
        refused (exit 2, the rule and the fragment named) before any connection. They are
        aimed at the node that refuses connections, so that even a regression could not run
        them: a command let through would show its "Connection refused" instead."""
        target = self.inventory({UNREACHABLE: 2}, "unreachable-only.json")

        def exec_(command, *extra):
            return self.guardia("exec", "--inventory", target, "--known-hosts", self.known_hosts, *extra,
                                "--", command)

        # control: a harmless command is sent, and fails to connect
        r = exec_("true", "--json")
        self.assertEqual(r.rc, 1, r)
        self.assertIn("Connection refused", r.json["nodes"][0]["error"])
        cases = {
            "$'rm' -rf /*": "recursive rm of a system path",
            'echo $(echo ")"); rm -rf /*': "recursive rm of a system path",
            "rm -rf /{etc,usr}": "cannot verify a brace expansion in an argument of rm",
            "D=/etc; rm -rf $D": "cannot verify an expansion in an operand of rm",
            "echo cm0gLXJmIC8q | base64 -d | sh": "cannot verify code reaching sh from a pipe",
            "find / -delete": "find -delete under a system path",
            "chmod -R 777 /": "recursive chmod/chown of a system path",
            "> /etc/passwd": "write to a system file",
            "dd if=/dev/zero of=/dev//sda": "write to a block device",
            "true || rm -rf /": "recursive rm of a system path",
        }
        for command, rule in cases.items():
            with self.subTest(command=command):
                r = exec_(command, "--json")
                self.assertEqual(r.rc, 2, r)
                self.assertEqual(r.out, "", r)
                self.assertIn(f"command refused by the sanitizer: {rule}: \"", r.err)
                self.assertIn("nothing was sent", r.err)
                self.assertNotIn("Connection refused", r.err)
        # everyday commands the old sanitizer refused now pass (and fail only to connect)
        for command in ("docker ps --format x", "truncate -s0 /var/log/app/app.log"):
            with self.subTest(command=command):
                r = exec_(command, "--json")
                self.assertEqual(r.rc, 1, r)
                self.assertIn("Connection refused", r.json["nodes"][0]["error"])

    def test_11_exec_allow_list(self):
        one = self.inventory({"node-0001": 2}, "one.json")
        # The inventory's own commands are held against the list too: allow them.
        node = self.inv["node-0001"]
        conf = self.write_json("allow.json", {"exec": {"allow": ["uptime", "printf ok", node["shutdown_cmd"],
                                                                 node["startup_cmd"]]}})

        def exec_(command, *extra, config=conf, inventory=one):
            return self.guardia("exec", "--inventory", inventory, "--known-hosts", self.known_hosts,
                                "--config", config, *extra, "--", command)

        r = exec_("printf ok", "--json")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.json["nodes"][0]["stdout"], "ok")
        for command in ("ls", "uptime; ls", "printf ok $(ls)", "FOO=1 uptime"):
            with self.subTest(command=command):
                r = exec_(command)
                self.assertEqual(r.rc, 2, r)
                self.assertIn("not allowed by exec.allow", r.err)
        # a bad pattern is a configuration error naming the field
        bad = self.write_json("bad-allow.json", {"exec": {"allow": ["uptime", "rm $x"]}})
        # ... and without them in the list, the inventory itself is refused, naming the field
        strict = self.write_json("strict-allow.json", {"exec": {"allow": ["printf ok"]}})
        r = exec_("printf ok", config=strict)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("node 'node-0001'", r.err)
        self.assertIn("not allowed by exec.allow", r.err)
        r = exec_("uptime", config=bad)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("exec.allow[1]", r.err)
        # the inventory's commands are held against the list when it is loaded: nothing runs
        inv = self.inventory({"node-0001": 1}, "startup-not-allowed.json",
                             node_0001={"startup_cmd": "sh /srv/other/start.sh"})
        arts = self.artifacts("allow")
        before = self.check("node-0001")
        r = self.deploy(inv, arts, conf=dict(config(), exec={"allow": ["uptime"]}), json_out=False)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("node 'node-0001'", r.err)
        self.assertRegex(r.err, "(shutdown|startup)_cmd")
        self.assertIn("not allowed by exec.allow", r.err)
        self.assert_untouched(before, self.check("node-0001"))
    def test_12_key_dirs_and_bound_passwords(self):
        """ssh.key_dirs is enforced by the CLI when set (exit 2, nothing runs), and a password
        bound to hosts is never handed out for another host; without key_dirs any key works."""
        one = self.inventory({"node-0001": 2}, "one-keys.json")
        keys = self.path("keys")
        os.makedirs(keys, mode=0o700)

        def exec_(config, inventory=one):
            return self.guardia("exec", "--inventory", inventory, "--known-hosts", self.known_hosts,
                                "--config", config, "--", "printf ok")

        r = exec_(self.write_json("open.json", {}))
        self.assertEqual(r.rc, 0, r)
        r = exec_(self.write_json("fleet-keys.json", {"ssh": {"key_dirs": [FLEET_DIR]}}))
        self.assertEqual(r.rc, 0, r)
        r = exec_(self.write_json("other-keys.json", {"ssh": {"key_dirs": [keys]}}))
        self.assertEqual(r.rc, 2, r)
        for part in ("node 'node-0001'", "auth.key_file", os.path.join(FLEET_DIR, "client_key"), "ssh.key_dirs", keys):
            self.assertIn(part, r.err)
        # a symlink inside key_dirs that points out of it is judged by where it leads
        os.symlink(os.path.join(FLEET_DIR, "client_key"), os.path.join(keys, "link"))
        linked = self.inventory({"node-0001": 2}, "linked.json",
                                node_0001={"auth": {"key_file": os.path.join(keys, "link")}})
        r = exec_(self.path("other-keys.json"), inventory=linked)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("resolves to", r.err)
        # a password bound to another host is refused before anything connects
        creds = self.path("creds.json")
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pw": {"password": "canary-CLI-pw", "hosts": ["127.0.0.9"]}}, f)
        pw = self.inventory({"node-0001": 2}, "pw.json", node_0001={"auth": {"password_ref": "pw"}})
        r = exec_(self.write_json("creds-conf.json", {"ssh": {"credentials_file": creds}}), inventory=pw)
        self.assertEqual(r.rc, 2, r)
        for part in ("node 'node-0001'", "auth.password_ref", "'pw'", "127.0.0.1", "127.0.0.9"):
            self.assertIn(part, r.err)
        self.assertNotIn("canary-CLI-pw", r.err + r.out)

    # ================================================================== 9. audit chain
    def test_9_audit_verify_detects_tampering(self):
        """A real rollout's audit DB verifies intact; each edit an attacker with the file can
        make with the sqlite3 tool (update, delete, insert) is named by `guardia audit verify`
        (exit 3); bad input exits 2 naming the file."""
        sqlite_tool = shutil.which("sqlite3")
        self.assertIsNotNone(sqlite_tool, "the sqlite3 command-line tool is required (tools/install-deps)")
        tiers = {"node-0005": 2, "node-0006": 3}
        names = list(tiers)
        before = self.check(*names)
        arts = self.artifacts("chain")
        r = self.deploy(self.inventory(tiers), arts, conf=config(), sr_id=f"CLI-CHAIN-{self.tag}")
        self.assertEqual(r.rc, 0, r)
        after = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], after[n], arts, self.by_name(r.json)[n])
        db = self.path("audit.db")
        self.assertEqual(os.stat(db).st_mode & 0o777, 0o600, "the audit DB is created 0600")
        rows, _, _ = self.audit()
        ids = [x["id"] for x in rows]
        self.assertEqual(ids, list(range(1, len(ids) + 1)))
        self.assertGreater(len(ids), 20)

        def verify(path, *extra):
            return self.guardia("audit", "verify", "--db", path, *extra)

        def sql(path, statement):
            p = subprocess.run([sqlite_tool, path, statement], capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)

        def copy(name):
            # .backup: a consistent copy whatever state the WAL is in
            sql(db, f".backup '{self.path(name)}'")
            return self.path(name)

        # untouched: exit 0, JSON and text name the last row and its hash (for anchoring)
        last_hash = rows[-1]["row_hash"]
        self.assertRegex(last_hash, r"^[0-9a-f]{64}$")
        v = verify(db, "--json")
        self.assertEqual(v.rc, 0, v)
        self.assertEqual(v.json, {"db": db, "status": "intact", "rows": len(ids), "first_id": 1,
                                  "last_id": ids[-1], "last_hash": last_hash})
        v = verify(db)
        self.assertEqual(v.rc, 0, v)
        self.assertIn(f"audit chain of {db}: intact", v.out)
        self.assertIn(f"last row: id {ids[-1]} hash {last_hash}", v.out)
        self.assertIn("rows deleted from the end cannot be detected", v.out)

        # (a) one row's message rewritten
        target = next(x for x in rows if x["node"] == "node-0005" and x["event"] == "DEPLOY_SUCCESS")
        altered = copy("altered.db")
        sql(altered, f"UPDATE audit_log SET detail = 'nothing to see' WHERE id = {target['id']}")
        v = verify(altered, "--json")
        self.assertEqual(v.rc, 3, v)
        self.assertEqual(v.json["status"], "broken")
        self.assertEqual((v.json["break"]["row_id"], v.json["break"]["fault"]), (target["id"], "altered"), v)
        v = verify(altered)
        self.assertEqual(v.rc, 3, v)
        self.assertIn(f"BROKEN at row {target['id']} (altered)", v.out)

        # (b) a middle row deleted
        middle = ids[len(ids) // 2]
        deleted = copy("deleted.db")
        sql(deleted, f"DELETE FROM audit_log WHERE id = {middle}")
        v = verify(deleted, "--json")
        self.assertEqual(v.rc, 3, v)
        b = v.json["break"]
        self.assertEqual((b["row_id"], b["fault"], b["previous_id"]), (middle + 1, "deleted", middle - 1), v)
        self.assertIn(f"ids {middle}..{middle} are missing", b["message"])

        # (c) a forged row inserted, in the style of the real ones
        forged = copy("forged.db")
        sql(forged, "INSERT INTO audit_log (ts_ms, sr_id, rollout_id, node, step, event, detail)"
                    f" SELECT ts_ms + 1, sr_id, rollout_id, 'node-0006', 'SUMMARY', 'DEPLOY_SUCCESS', 'forged'"
                    f" FROM audit_log WHERE id = {ids[-1]}")
        v = verify(forged, "--json")
        self.assertEqual(v.rc, 3, v)
        self.assertEqual((v.json["break"]["row_id"], v.json["break"]["fault"]), (ids[-1] + 1, "inserted"), v)
        self.assertEqual(v.json["last_id"], ids[-1] + 1)

        # the original is still intact (verify opened the copies, and it, read-only)
        self.assertEqual(verify(db).rc, 0)

        # bad input: exit 2, the message names the file
        missing = self.path("no-such.db")
        v = verify(missing)
        self.assertEqual(v.rc, 2, v)
        self.assertIn(missing, v.err)
        self.assertFalse(os.path.exists(missing), "verify must not create the file")
        other = self.path("other.db")
        sql(other, "CREATE TABLE t (x INTEGER)")
        v = verify(other)
        self.assertEqual(v.rc, 2, v)
        self.assertIn(other, v.err)
        self.assertIn("not a Guardia store", v.err)
        v = self.guardia("audit", "verify")
        self.assertEqual(v.rc, 2, v)
        self.assertIn("--db FILE is required", v.err)


# ---------------------------------------------------------------------- cleanup (ctest)

def own_tests(cls):
    """A load_tests() for a suite whose class inherits CliTest's harness, not its tests."""
    def load_tests(loader, tests, pattern):
        suite = unittest.TestSuite()
        for name in sorted(cls.__dict__):
            if name.startswith("test_"):
                suite.addTest(cls(name))
        return suite
    return load_tests


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
        print(f"cli cleanup: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(cleanup())
    unittest.main(verbosity=2)
