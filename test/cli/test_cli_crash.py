#!/usr/bin/env python3
"""Audit or stop, and recovery after kill -9, for `guardia deploy` (issue 13's two failures).

The same harness as test_cli.py (imported: its fleet helpers and node assertions), on a fleet
of its own (fixture cli_crash_fleet, test/cli/CMakeLists.txt). Each test uses its own nodes:
  1. the audit DB on a filesystem that fills up during the rollout: the rollout stops
     (ABORTED, exit 3), no node starts after that, nodes in flight end safe; what could not
     be written is spilled beside the DB and replayed by the next start;
  2. kill -9 in tier 1's first node, mid-HEALTH (new build live, unverified, lock and backup
     in place): the next `guardia deploy` on the same DB recovers it first, then deploys;
  3. the same kill, then a deploy with ANOTHER database: the lock's owner was a guardia
     process on this host that no longer exists, so the lock is known stale at once;
  4. the same kill, then `guardia recover --db` without the inventory file: the node is
     restored exactly, its lock released; a second recover has nothing to do.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import unittest

import test_cli
from test_cli import config, sha256

# The fixture's layout: 16 healthy nodes (tiers set per test).
NODES = [f"node-{i:04d}" for i in range(1, 17)]
WAIT_TIMEOUT = 120


def lockstep_tier1(**rollout):
    return config(**rollout)


class CrashTest(test_cli.CliTest):

    @classmethod
    def setUpClass(cls):
        fleet = test_cli.FLEET_DIR
        if os.geteuid() != 0:
            raise AssertionError("these tests need root (fleet key, tmpfs mounts)")
        if not fleet or not os.path.exists(os.path.join(fleet, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_CLI={fleet!r} (fixture cli_crash_fleet)")
        if not os.access(test_cli.GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {test_cli.GUARDIA}")
        import json
        with open(os.path.join(fleet, "fleet.json")) as f:
            cls.info = json.load(f)
        with open(os.path.join(fleet, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.fnodes = {n["name"]: n for n in cls.info["nodes"]}
        cls.known_hosts = os.path.join(fleet, "known_hosts")
        kinds = {name: [x["kind"] for x in n["faults"]] for name, n in cls.fnodes.items()}
        if kinds != {n: [] for n in NODES}:
            raise AssertionError(f"the cli_crash_fleet fixture is not what the tests expect: {kinds}")
        os.makedirs(test_cli.WORK_ROOT, exist_ok=True)
        os.chmod(test_cli.WORK_ROOT, 0o711)

    # ------------------------------------------------------------------ helpers
    def mount_tmpfs(self, name, size):
        d = self.path(name)
        os.makedirs(d)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", d], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", d], check=False)
        return d

    def rows(self, db, sql, *args):
        try:
            c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        except sqlite3.OperationalError:
            return []      # not created yet: the caller polls
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute(sql, args)]
        except sqlite3.OperationalError:
            return []      # no schema yet / busy: the caller polls
        finally:
            c.close()

    def wait_for(self, what, condition, timeout=WAIT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = condition()
            if v:
                return v
            time.sleep(0.05)
        self.fail(f"timed out after {timeout} s waiting for {what}")

    def kill_mid_health(self, node, inv, arts, db):
        """Starts a deploy whose first tier-1 node is `node`; SIGKILLs it once that node's
        HEALTH intent row is committed (written before the probing starts; strict health needs
        3 consecutive 200s a second apart, so the node is certainly mid-HEALTH). Returns the
        rollout id."""
        args = ["deploy", "--inventory", inv, "--known-hosts", self.known_hosts, "--db", db,
                "--config", self.write_json("config.json", lockstep_tier1()), "--json"]
        for p, _ in arts.values():
            args += ["--artifact", p]
        p = self.start(*args)
        row = self.wait_for(f"{node}'s HEALTH to start", lambda: self.rows(
            db, "SELECT rollout_id FROM audit_log WHERE node = ? AND step = 'HEALTH' AND event = 'STEP_START'",
            node) or (p.poll() is not None and self.fail(f"guardia ended first: {p.communicate()}")))
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        self.assertEqual(p.returncode, -signal.SIGKILL)
        return row[0]["rollout_id"]

    def assert_stuck(self, node, b):
        """What kill -9 left: the new build live but unverified, lock and backup in place."""
        a = self.check(node)[node]
        self.assertTrue(a["lock_present"], f"{node}: the killed run's lock")
        self.assertNotEqual(a["tree_sha256"], b["tree_sha256"], f"{node}: the new build is live")
        return a

    def assert_steps_closed(self, db, rollout_id, node):
        """Every step the node started in that rollout has its outcome in the audit log."""
        rows = self.rows(db, "SELECT step, event FROM audit_log WHERE rollout_id = ? AND node = ? ORDER BY id",
                         rollout_id, node)
        open_steps = []
        for r in rows:
            if r["event"] == "STEP_START":
                open_steps.append(r["step"])
            elif r["event"] in ("STEP_OK", "STEP_FAILED", "STEP_INTERRUPTED") and r["step"] in open_steps:
                open_steps.reverse()
                open_steps.remove(r["step"])
                open_steps.reverse()
        self.assertEqual(open_steps, [], f"{node}: steps with an intent row and no outcome: {rows}")
        return rows

    # ================================================================== 1. full disk
    def test_1_full_disk_stops_the_rollout(self):
        names = NODES[:10]
        before = self.check(*names)
        arts = self.artifacts("full")
        inv = self.inventory({n: (1 if i == 0 else 2) for i, n in enumerate(names)})
        # Room for the schema and the first rows (and the journal's reserve, taken when the
        # store opens), not for the whole rollout's audit trail.
        disk = self.mount_tmpfs("full", FULL_DISK_SIZE)
        db = os.path.join(disk, "audit.db")
        r = self.deploy(inv, arts, conf=config(), db=db)
        self.assertEqual(r.rc, 3, r)                    # it used to print SUCCEEDED and exit 0
        report = r.json
        self.assertEqual(report["status"], "ABORTED", r)
        self.assertIn("audit or stop: the audit log cannot be written", report["reason"])
        self.assertIn("audit log not fully written", r.err)
        outcomes = {n["name"]: n["outcome"] for n in report["nodes"]}
        self.assertLess(sum(o == "DEPLOYED" for o in outcomes.values()), len(names),
                        f"the rollout must stop, not deploy everything: {outcomes}")
        self.assertIn("NOT_STARTED", outcomes.values(), outcomes)
        # Every node is safe: untouched, restored exactly, or on the new build and healthy.
        after = self.check(*names)
        nodes = self.by_name(report)
        for n in names:
            with self.subTest(node=n):
                o = outcomes[n]
                if o == "DEPLOYED":
                    self.assert_deployed(before[n], after[n], arts, nodes[n])
                elif o == "ROLLED_BACK":
                    self.assert_restored(before[n], after[n], nodes[n])
                else:
                    self.assertIn(o, ("NOT_STARTED", "FAILED_UNCHANGED"))
                    self.assertEqual(after[n]["tree_sha256"], before[n]["tree_sha256"], n)
                    self.assert_clean(after[n])
                    if o == "FAILED_UNCHANGED":
                        self.assertIn("audit log cannot be written", nodes[n]["error"])
        # Nothing was lost: room again, and the next start replays the journal into the store.
        subprocess.run(["mount", "-o", "remount,size=16m", disk], check=True)
        rec = self.guardia("recover", "--db", db, "--known-hosts", self.known_hosts, "--inventory", inv)
        self.assertIn(rec.rc, (0,), rec)
        rows = self.rows(db, "SELECT * FROM audit_log WHERE rollout_id = ? ORDER BY id", report["rollout_id"])
        events = [(x["node"], x["step"], x["event"]) for x in rows]
        self.assertIn(("", "ROLLOUT", "ROLLOUT_ABORTED"), events, events)
        for n in names:
            if outcomes[n] != "NOT_STARTED":
                self.assert_steps_closed(db, report["rollout_id"], n)
        v = self.guardia("audit", "verify", "--db", db)
        self.assertEqual(v.rc, 0, v)

    # ================================================================== 2. kill -9, same DB
    def test_2_killed_deploy_is_recovered_by_the_next(self):
        first, second = NODES[10], NODES[11]
        before = self.check(first, second)
        arts = self.artifacts("kill")
        inv = self.inventory({first: 1, second: 1})
        db = self.path("audit.db")
        dead = self.kill_mid_health(first, inv, arts, db)
        self.assert_stuck(first, before[first])
        # The next deploy on the same database: recovers first (saying so), then deploys.
        r = self.deploy(inv, arts, conf=config(), db="audit.db")
        self.assertEqual(r.rc, 0, r)           # it used to fail node-0011 at LOCK and abort
        self.assertIn("guardia: recovery: rollout " + dead, r.err)
        self.assertIn("recovered 1 unfinished rollout(s)", r.err)
        after = self.check(first, second)
        report = self.by_name(r.json)
        for n in (first, second):
            self.assertEqual(report[n]["outcome"], "DEPLOYED", r)
            self.assert_clean(after[n])
            for name, (_, data) in arts.items():
                self.assertEqual(after[n]["files"][name]["sha256"], sha256(data), n)
        # The dead rollout ends ABORTED, its node restored first (from the backup it took).
        rollout = self.rows(db, "SELECT * FROM rollouts WHERE id = ?", dead)[0]
        self.assertEqual(rollout["status"], "ABORTED")
        self.assertIsNotNone(rollout["finished_ms"])
        self.assertIn("recovered at the start of guardia deploy", rollout["reason"])
        res = self.rows(db, "SELECT * FROM node_results WHERE rollout_id = ?", dead)
        self.assertEqual({x["node"]: x["status"] for x in res}, {first: "ROLLED_BACK", second: "SKIPPED"})
        rows = self.assert_steps_closed(db, dead, first)
        self.assertIn({"step": "HEALTH", "event": "STEP_INTERRUPTED"}, rows)

    # ================================================================== 3. kill -9, other DB
    def test_3_dead_owners_lock_is_stale_at_once(self):
        node = NODES[12]
        before = self.check(node)
        arts = self.artifacts("stale")
        inv = self.inventory({node: 1})
        dead = self.kill_mid_health(node, inv, arts, self.path("first.db"))
        self.assert_stuck(node, before[node])
        r = self.deploy(inv, arts, conf=config(), db="second.db")
        self.assertEqual(r.rc, 0, r)           # it used to fail at LOCK ("held for 3 s")
        after = self.check(node)[node]
        self.assert_clean(after)
        for name, (_, data) in arts.items():
            self.assertEqual(after["files"][name]["sha256"], sha256(data))
        rows = self.rows(self.path("second.db"), "SELECT * FROM audit_log WHERE node = ? ORDER BY id", node)
        stale = [x for x in rows if x["event"] == "LOCK_STALE"]
        self.assertEqual(len(stale), 1, rows)
        self.assertIn(f"(rollout {dead})", stale[0]["detail"])
        # The recovery's own rows are under the dead rollout's id: restored from its backup.
        self.assertIn(("ROLLBACK", "STEP_OK"),
                      [(x["step"], x["event"]) for x in rows if x["rollout_id"] == dead])

    # ================================================================== 4. guardia recover
    def test_4_recover_command_without_the_inventory(self):
        node = NODES[13]
        before = self.check(node)
        arts = self.artifacts("recover")
        inv = self.inventory({node: 1})
        db = self.path("audit.db")
        dead = self.kill_mid_health(node, inv, arts, db)
        self.assert_stuck(node, before[node])
        os.unlink(inv)                        # the database recorded the nodes
        r = self.guardia("recover", "--db", db, "--known-hosts", self.known_hosts)
        self.assertEqual(r.rc, 0, r)
        self.assertIn(f"rollout {dead}", r.out)
        self.assertIn(f"  {node}  ROLLED_BACK", r.out)
        after = self.check(node)[node]
        self.assertEqual(after["tree_sha256"], before[node]["tree_sha256"], "restored exactly")
        self.assert_clean(after)
        self.assert_steps_closed(db, dead, node)
        again = self.guardia("recover", "--db", db, "--known-hosts", self.known_hosts, "--json")
        self.assertEqual(again.rc, 0, again)
        self.assertEqual(again.json["recovered_rollouts"], 0)
        self.assertEqual(self.guardia("recover").rc, 2)
        self.assertEqual(self.guardia("recover", "--db", self.path("nope.db")).rc, 2)


# The tmpfs of test 1: the spill journal's reserve plus 200 KiB for the database.
FULL_DISK_SIZE = os.environ.get("GUARDIA_TEST_FULL_DISK_SIZE", "1224k")

# Only CrashTest's own tests (it inherits test_cli's harness, not its tests).
load_tests = test_cli.own_tests(CrashTest)


if __name__ == "__main__":
    unittest.main(verbosity=2)
