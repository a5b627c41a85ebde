#!/usr/bin/env python3
"""Targeting (--limit, --tier, --retry-failed) for `guardia deploy` / `guardia exec`, and the
store readers (`guardia status`, `guardia history`, `guardia audit --rollout`).

The same harness as test_cli.py (imported: its fleet helpers and node assertions), on a fleet
of its own (fixture cli_targeting_fleet, test/cli/CMakeLists.txt): node-0001..0009 healthy,
node-0010 fails every new build (rejects_new_build: health 503 until an exact rollback).
Every assertion is on real outcomes: files and digests on the nodes (`tools/fleet check`),
the audit DB's rows (sqlite3), exit codes and reports.
"""

import json
import os
import sqlite3
import sys
import unittest

import test_cli
from test_cli import config, sha256

NODES = [f"node-{i:04d}" for i in range(1, 11)]
FAULTY = "node-0010"


class TargetingTest(test_cli.CliTest):

    @classmethod
    def setUpClass(cls):
        fleet = test_cli.FLEET_DIR
        if os.geteuid() != 0:
            raise AssertionError("these tests need root (the fleet's client key is root-only)")
        if not fleet or not os.path.exists(os.path.join(fleet, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_CLI={fleet!r} (fixture cli_targeting_fleet)")
        if not os.access(test_cli.GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {test_cli.GUARDIA}")
        with open(os.path.join(fleet, "fleet.json")) as f:
            cls.info = json.load(f)
        with open(os.path.join(fleet, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.fnodes = {n["name"]: n for n in cls.info["nodes"]}
        cls.known_hosts = os.path.join(fleet, "known_hosts")
        kinds = {name: [x["kind"] for x in n["faults"]] for name, n in cls.fnodes.items()}
        want = {**{n: [] for n in NODES if n != FAULTY}, FAULTY: ["rejects_new_build"]}
        if kinds != want:
            raise AssertionError(f"the cli_targeting_fleet fixture is not what the tests expect: {kinds}")
        os.makedirs(test_cli.WORK_ROOT, exist_ok=True)
        os.chmod(test_cli.WORK_ROOT, 0o711)

    # ------------------------------------------------------------------ helpers
    def rows(self, db, sql, *args):
        c = sqlite3.connect(f"file:{self.path(db)}?mode=ro", uri=True)
        c.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in c.execute(sql, args)]
        finally:
            c.close()

    def touched(self, db, rollout_id):
        """The nodes a rollout has rows for (every node it selected: PENDING is written first)."""
        return sorted(r["node"] for r in self.rows(db, "SELECT node FROM node_results WHERE rollout_id = ?",
                                                   rollout_id))

    def target_event(self, db, rollout_id):
        ev = self.rows(db, "SELECT step, node, detail FROM audit_log WHERE rollout_id = ? AND event = 'ROLLOUT_TARGET'",
                       rollout_id)
        self.assertEqual(len(ev), 1, ev)
        self.assertEqual((ev[0]["step"], ev[0]["node"]), ("ROLLOUT", ""))
        return ev[0]["detail"]

    def assert_files(self, after, names, arts):
        for n in names:
            for name, (_, data) in arts.items():
                self.assertEqual(after[n]["files"][name]["sha256"], sha256(data), f"{n}: {name}")

    def assert_unchanged(self, before, after, names):
        for n in names:
            self.assertEqual(after[n]["tree_sha256"], before[n]["tree_sha256"], f"{n} must not change")
            self.assertEqual(after[n]["files"], before[n]["files"], n)
            self.assertEqual(after[n]["service_events"], before[n]["service_events"], f"{n}: no script ran")

    def exec_(self, inventory, *extra):
        return self.guardia("exec", "--inventory", inventory, "--known-hosts", self.known_hosts, *extra)

    # ================================================================== 1. --limit
    def test_1_limit_names_and_globs(self):
        names = NODES[:6]
        inv = self.inventory({n: 2 for n in names})
        before = self.check(*names)

        # a pattern that matches nothing: exit 2 naming it, nothing started, no database
        arts = self.artifacts("typo")
        r = self.deploy(inv, arts, "--limit", "node-0001,nodo-000[2-3]", conf=config())
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--limit 'nodo-000[2-3]' matches no node", r.err)
        self.assertFalse(os.path.exists(self.path("audit.db")), "nothing started: no store created")
        self.assertEqual(r.out, "")
        for bad, says in ((("--tier", "0"), "--tier '0'"), (("--limit", "a b"), "--limit 'a b'"),
                          (("--tier", "3"), "--tier 3: no node")):
            with self.subTest(flags=bad):
                r = self.deploy(inv, arts, *bad, conf=config())
                self.assertEqual(r.rc, 2, r)
                self.assertIn(says, r.err)
        self.assert_unchanged(before, self.check(*names), names)

        # the glob deploys exactly node-0001..0003; the others keep their files
        arts = self.artifacts("limit")
        sr = f"TGT-LIMIT-{self.tag}"
        r = self.deploy(inv, arts, "--limit", "node-000[1-3]", conf=config(), sr_id=sr)
        self.assertEqual(r.rc, 0, r)
        rep = r.json
        self.assertEqual([n["name"] for n in rep["nodes"]], names[:3])
        self.assertEqual(rep["counts"], {"total": 3, "deployed": 3, "failed": 0, "not_started": 0})
        after = self.check(*names)
        nodes = self.by_name(rep)
        for n in names[:3]:
            self.assert_deployed(before[n], after[n], arts, nodes[n])
        self.assert_unchanged(before, after, names[3:])
        self.assertEqual(self.touched("audit.db", rep["rollout_id"]), names[:3])
        self.assertEqual(self.target_event("audit.db", rep["rollout_id"]),
                         "limit=node-000[1-3]; selected 3 of 6 node(s): node-0001,node-0002,node-0003")

        # exec with --limit (two patterns, one a list): only those nodes run the command
        r = self.exec_(inv, "--limit", "node-0004,node-0006", "--limit", "node-000[5]", "--db",
                       self.path("exec.db"), "--json", "--", "echo targeted")
        self.assertEqual(r.rc, 0, r)
        rep = r.json
        self.assertEqual((rep["nodes_total"], rep["nodes_ok"]), (3, 3))
        self.assertEqual(sorted(n["name"] for n in rep["nodes"]), ["node-0004", "node-0005", "node-0006"])
        self.assertTrue(all(n["stdout"] == "targeted\n" for n in rep["nodes"]), rep)
        ev = self.rows("exec.db", "SELECT sr_id, detail FROM audit_log WHERE event = 'ROLLOUT_TARGET'")
        self.assertEqual(ev, [{"sr_id": "EXEC", "detail":
                               "limit=node-0004,node-0006,node-000[5]; selected 3 of 6 node(s): "
                               "node-0004,node-0005,node-0006"}])
        r = self.exec_(inv, "--limit", "node-0042", "--", "echo never")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("'node-0042'", r.err)

    # ================================================================== 2. --tier
    def test_2_tier_and_combined_filters(self):
        tiers = {"node-0004": 1, "node-0005": 2, "node-0006": 2, "node-0007": 3, "node-0008": 3}
        names = list(tiers)
        inv = self.inventory(tiers)
        before = self.check(*names)
        arts = self.artifacts("tier")
        r = self.deploy(inv, arts, "--tier", "2", conf=config(), sr_id=f"TGT-TIER-{self.tag}")
        self.assertEqual(r.rc, 0, r)
        rep = r.json
        self.assertEqual([n["name"] for n in rep["nodes"]], ["node-0005", "node-0006"])
        # the rollout's tier configuration still applies: tiers 1 and 3 are simply empty
        self.assertEqual([(t["tier"], t["total"], t["finished"]) for t in rep["tiers"]],
                         [(1, 0, 0), (2, 2, 2), (3, 0, 0)])
        after = self.check(*names)
        for n in ("node-0005", "node-0006"):
            self.assert_deployed(before[n], after[n], arts)
        self.assert_unchanged(before, after, ["node-0004", "node-0007", "node-0008"])
        self.assertEqual(self.touched("audit.db", rep["rollout_id"]), ["node-0005", "node-0006"])
        self.assertIn("tier=2; selected 2 of 5", self.target_event("audit.db", rep["rollout_id"]))

        # --tier 1,3 intersected with a glob
        before = after
        arts = self.artifacts("tier-limit")
        r = self.deploy(inv, arts, "--tier", "1,3", "--limit", "node-000[4-7]", conf=config(), db="two.db")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([n["name"] for n in r.json["nodes"]], ["node-0004", "node-0007"])
        # every filter matches nodes, their intersection none: exit 2, nothing started
        r = self.deploy(inv, arts, "--tier", "1", "--limit", "node-0005", conf=config(), db="three.db")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("the selection matches no node (limit=node-0005; tier=1;", r.err)
        self.assertFalse(os.path.exists(self.path("three.db")))
        after = self.check(*names)
        self.assert_files(after, ["node-0004", "node-0007"], arts)
        self.assert_unchanged(before, after, ["node-0005", "node-0006", "node-0008"])

    # ================================================================== 3. --retry-failed + readers
    def test_3_retry_failed_and_store_readers(self):
        names = ["node-0007", "node-0008", "node-0009", FAULTY]
        inv = self.inventory({n: 2 for n in names})
        conf = config(threshold=100)    # the gate never trips: FAILED, not ABORTED (also for 1 of 1)
        before = self.check(*names)
        arts = self.artifacts("first")
        sr = f"TGT-RETRY-{self.tag}"
        r = self.deploy(inv, arts, conf=conf, sr_id=sr)
        self.assertEqual(r.rc, 1, r)
        first = r.json["rollout_id"]
        self.assertEqual(self.by_name(r.json)[FAULTY]["outcome"], "ROLLED_BACK")
        mid = self.check(*names)
        self.assert_files(mid, names[:3], arts)

        # retry: only the faulty node is selected; the fault is still there, so it fails again
        arts2 = self.artifacts("retry")
        r = self.deploy(inv, arts2, "--retry-failed", first, conf=conf, sr_id=sr)
        self.assertEqual(r.rc, 1, r)
        second = r.json["rollout_id"]
        self.assertNotEqual(second, first)
        self.assertEqual([(n["name"], n["outcome"]) for n in r.json["nodes"]], [(FAULTY, "ROLLED_BACK")])
        self.assertEqual(self.touched("audit.db", second), [FAULTY])
        self.assertEqual(self.rows("audit.db", "SELECT DISTINCT node FROM audit_log WHERE rollout_id = ? AND node != ''",
                                   second), [{"node": FAULTY}])
        self.assertEqual(self.target_event("audit.db", second),
                         f"retry_failed={first}; selected 1 of 4 node(s): {FAULTY}")
        after = self.check(*names)
        self.assert_unchanged(mid, after, names[:3])
        self.assertEqual(after[FAULTY]["tree_sha256"], before[FAULTY]["tree_sha256"], "rolled back exactly")

        # nothing left to retry among the healthy ones: exit 0 and says so
        r = self.deploy(inv, arts2, "--retry-failed", first, "--limit", "node-000[7-9]", conf=conf)
        self.assertEqual(r.rc, 0, r)
        self.assertIn("nothing to retry", r.err)
        self.assertEqual(r.json, {"retry_failed": first, "nothing_to_retry": True, "nodes": []})
        self.assertEqual(len(self.rows("audit.db", "SELECT id FROM rollouts")), 2, "no rollout started")
        # an unknown rollout: exit 2 naming it; a missing store too
        r = self.deploy(inv, arts2, "--retry-failed", "NO-SUCH-ROLLOUT", conf=conf)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("'NO-SUCH-ROLLOUT'", r.err)
        r = self.deploy(inv, arts2, "--retry-failed", first, conf=conf, db="missing.db")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("missing.db", r.err)
        self.assertFalse(os.path.exists(self.path("missing.db")))

        # a rollout stopped by the gate in tier 1: the tier-2 nodes it never reached (SKIPPED)
        # are retried
        tiers = {FAULTY: 1, "node-0007": 2, "node-0008": 2}
        inv_gate = self.inventory(tiers, "gate.json")
        arts3 = self.artifacts("gate")
        r = self.deploy(inv_gate, arts3, conf=config(), db="gate.db")
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(r.json["status"], "ABORTED")
        gated = r.json["rollout_id"]
        self.assertEqual({n["name"]: n["outcome"] for n in r.json["nodes"]},
                         {FAULTY: "ROLLED_BACK", "node-0007": "NOT_STARTED", "node-0008": "NOT_STARTED"})
        before = self.check(*names)
        r = self.deploy(inv_gate, arts3, "--retry-failed", gated, "--tier", "2", conf=config(), db="gate.db")
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([n["name"] for n in r.json["nodes"]], ["node-0007", "node-0008"])
        after = self.check(*names)
        for n in ("node-0007", "node-0008"):
            self.assert_deployed(before[n], after[n], arts3)
        self.assert_unchanged(before, after, [FAULTY, "node-0009"])
        self.assertEqual(self.touched("gate.db", r.json["rollout_id"]), ["node-0007", "node-0008"])

        # ---- guardia status: one rollout, by id and by default the most recent
        db = self.path("audit.db")
        s = self.guardia("status", first, "--db", db, "--json")
        self.assertEqual(s.rc, 0, s)
        st = s.json
        self.assertEqual((st["rollout_id"], st["sr_id"], st["status"], st["running"], st["owner_state"]),
                         (first, sr, "FAILED", False, "finished"))
        self.assertEqual(st["reason"], "1 of 4 node(s) failed (the safety gate held)")
        self.assertEqual(st["counts"], {"total": 4, "DEPLOYED": 3, "ROLLED_BACK": 1})
        self.assertEqual(st["tiers"], [{"tier": 2, "total": 4, "finished": True, "deployed": 3, "failed": 1,
                                        "not_started": 0}])
        self.assertEqual([(f["name"], f["status"], f["step"]) for f in st["failed_nodes"]],
                         [(FAULTY, "ROLLED_BACK", "HEALTH")])
        self.assertIn("HTTP 503", st["failed_nodes"][0]["error"])
        self.assertIsNone(st["target"])
        self.assertGreaterEqual(st["duration_ms"], 0)
        self.assertEqual(st["duration_ms"], st["finished_ms"] - st["started_ms"])
        s = self.guardia("status", "--db", db, "--json")
        self.assertEqual(s.rc, 0, s)
        self.assertEqual((s.json["rollout_id"], s.json["counts"]), (second, {"total": 1, "ROLLED_BACK": 1}))
        self.assertEqual(s.json["target"], f"retry_failed={first}; selected 1 of 4 node(s): {FAULTY}")
        s = self.guardia("status", first, "--db", db)
        self.assertEqual(s.rc, 0, s)
        self.assertIn(f"rollout   {first}\n", s.out)
        self.assertIn("nodes     4: 3 DEPLOYED, 1 ROLLED_BACK\n", s.out)
        self.assertRegex(s.out, rf"\n{FAULTY}\s+ROLLED_BACK\s+HEALTH\s+node '{FAULTY}'")
        s = self.guardia("status", "NO-SUCH", "--db", db)
        self.assertEqual(s.rc, 2, s)
        self.assertIn("'NO-SUCH'", s.err)
        s = self.guardia("status", "--db", self.path("nothing.db"))
        self.assertEqual(s.rc, 2, s)
        self.assertIn("nothing.db", s.err)
        self.assertFalse(os.path.exists(self.path("nothing.db")), "a reader never creates a store")
        with open(self.path("text.db"), "w") as f:
            f.write("hello, not a database\n" * 10)
        s = self.guardia("history", "--db", self.path("text.db"))
        self.assertEqual(s.rc, 2, s)
        self.assertIn("text.db", s.err)

        # ---- guardia history: newest first, by SR, limited
        h = self.guardia("history", "--sr", sr, "--db", db, "--json")
        self.assertEqual(h.rc, 0, h)
        self.assertEqual([(x["rollout_id"], x["status"], x["counts"]) for x in h.json],
                         [(second, "FAILED", {"total": 1, "ROLLED_BACK": 1}),
                          (first, "FAILED", {"total": 4, "DEPLOYED": 3, "ROLLED_BACK": 1})])
        h = self.guardia("history", "--limit", "1", "--db", db, "--json")
        self.assertEqual([x["rollout_id"] for x in h.json], [second])
        h = self.guardia("history", "--sr", "NO-SUCH-SR", "--db", db, "--json")
        self.assertEqual((h.rc, h.json), (0, []))
        h = self.guardia("history", "--db", db)
        self.assertEqual(h.rc, 0, h)
        lines = h.out.splitlines()
        self.assertRegex(lines[0], r"^ROLLOUT\s+SR\s+STATUS\s+STARTED\s+DURATION\s+NODES$")
        self.assertTrue(lines[1].startswith(second) and lines[2].startswith(first), h.out)
        self.assertIn("4: 3 DEPLOYED, 1 ROLLED_BACK", lines[2])
        h = self.guardia("history", "--limit", "0", "--db", db)
        self.assertEqual(h.rc, 2, h)

        # ---- guardia audit --rollout [--node] [--json]
        a = self.guardia("audit", "--rollout", second, "--node", FAULTY, "--db", db, "--json")
        self.assertEqual(a.rc, 0, a)
        rows = a.json
        want = self.rows("audit.db", "SELECT id, step, event FROM audit_log WHERE rollout_id = ? AND node = ? "
                         "ORDER BY id", second, FAULTY)
        self.assertEqual([(x["id"], x["step"], x["event"]) for x in rows],
                         [(w["id"], w["step"], w["event"]) for w in want])
        self.assertTrue(all(x["node"] == FAULTY and x["sr_id"] == sr for x in rows))
        steps = {x["step"] for x in rows}
        for step in ("CONNECT", "LOCK", "BACKUP", "TRANSFER", "ACTIVATE", "HEALTH", "RESTORE", "SUMMARY"):
            self.assertIn(step, steps)
        self.assertIn(("SUMMARY", "DEPLOY_FAILED"), [(x["step"], x["event"]) for x in rows])
        ok = [x for x in rows if x["step"] == "ROLLBACK_HEALTH" and x["event"] == "STEP_OK"]
        self.assertEqual(ok[0]["exit_code"], 200)
        a = self.guardia("audit", "--rollout", second, "--db", db)
        self.assertEqual(a.rc, 0, a)
        lines = a.out.splitlines()
        self.assertRegex(lines[0], r"^TIME\s+NODE\s+STEP\s+EVENT\s+EXIT\s+DURATION\s+MESSAGE$")
        all_rows = self.rows("audit.db", "SELECT id FROM audit_log WHERE rollout_id = ?", second)
        self.assertEqual(len(lines) - 1, len(all_rows))
        self.assertRegex(lines[1], r"^\S+Z\s+-\s+ROLLOUT\s+ROLLOUT_TARGET\s+-\s+-\s+retry_failed=")
        a = self.guardia("audit", "--rollout", "NO-SUCH", "--db", db)
        self.assertEqual(a.rc, 2, a)
        self.assertIn("'NO-SUCH'", a.err)
        # audit verify is unchanged
        v = self.guardia("audit", "verify", "--db", db, "--json")
        self.assertEqual(v.rc, 0, v)
        self.assertEqual(v.json["status"], "intact")


def load_tests(loader, tests, pattern):
    """Only TargetingTest's own tests (it inherits test_cli's harness, not its tests)."""
    suite = unittest.TestSuite()
    for name in sorted(TargetingTest.__dict__):
        if name.startswith("test_"):
            suite.addTest(TargetingTest(name))
    return suite


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(test_cli.cleanup())
    unittest.main(verbosity=2)
