#!/usr/bin/env python3
"""Audit or stop in the service (issue 13, point 1), end to end against a real `guardia serve`
(see trust_base.py; nodes node-0025 and node-0026).

While a rollout runs, another process holds the store's write lock (BEGIN EXCLUSIVE), so the
service's writer cannot commit past its busy_timeout: the store is degraded. Then:
  - the node in flight finishes safely (node-0025, mid-HEALTH: deployed, lock released);
  - no new node starts: node-0026 (tier 2) is refused at CONNECT for want of its intent row,
    untouched; the rollout ends ABORTED "audit or stop: ...";
  - a new trigger (any state-changing request) is answered 503 store_unavailable with
    Retry-After; GET /healthz is 503 "degraded" naming the store error; /metrics shows
    guardia_store_degraded 1; reads keep working;
  - once the lock is gone the writer's retry commits by itself: /healthz is 200 "ok" again,
    and everything queued meanwhile is in the store (the rollout's rows, every step closed).
"""

import sqlite3

from trust_base import TrustBase, own_tests, main


class StoreDegradedTest(TrustBase):

    def test_01_store_that_cannot_commit_stops_new_work(self):
        first, second = "node-0025", "node-0026"
        before = self.fresh(first, second)
        self.start_service()
        sr = f"SR-STORE-{self.tag}"
        slow_health = dict(self.inv[first]["health"], timeout_s=25)     # health_slow:10 passes
        arts = self.prepare(sr, {first: 1, second: 2}, "store", node_0025={"health": slow_health})
        rid = self.trigger_ok(sr)
        # node-0025 answers 503 for 10 s after its restart: it sits in HEALTH. Its HEALTH intent
        # row is committed before the probing starts.
        self.wait_for("node-0025 in HEALTH", lambda: self.q(
            "SELECT 1 FROM audit_log WHERE rollout_id = ? AND node = ? AND step = 'HEALTH' AND event = 'STEP_START'",
            rid, first), 120)
        locker = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            health = self.wait_for("/healthz degraded", lambda: (
                lambda r: r if r.status == 503 else None)(self.api("GET", "/healthz", token=False)), 60)
            h = health.json
            self.assertEqual(h["status"], "degraded", h)
            self.assertIn("locked", h["store_error"])
            m = self.api("GET", "/metrics")
            self.assertEqual(m.status, 200)
            self.assertIn("guardia_store_degraded 1\n", m.data.decode())
            # New work is refused while nothing could be recorded.
            r = self.api("POST", "/api/tasks", {"sr_id": f"SR-NEW-{self.tag}", "inst_id": self.inst_id,
                                                 "system_name": self.system_name, "requester": "alice"})
            self.assert_error(r, 503, "store_unavailable", "audit store cannot be written")
            self.assertEqual(r.header("retry-after"), "10")
            r = self.trigger(sr)
            self.assert_error(r, 503, "store_unavailable")
            # Reads go on. The rollout ends while the store is still locked (nothing new can
            # start): no rollout runs any more.
            self.wait_for("the rollout to end", lambda: self.api("GET", "/healthz", token=False)
                          .json.get("rollouts_running") == 0, 120)
            after = self.check(first, second)
            self.assert_deployed(before[first], after[first], arts)
            self.assert_untouched(before, after, [second])
        finally:
            locker.execute("ROLLBACK")
        # The writer's retry commits by itself: healthy again, nothing lost.
        self.wait_for("/healthz ok", lambda: self.api("GET", "/healthz", token=False).status == 200, 60)
        self.assertIn("guardia_store_degraded 0\n", self.api("GET", "/metrics").data.decode())
        d = self.wait_task(sr, "FAILED_ROLLBACK", passing=("DEPLOYING",))
        self.assertEqual(d["rollout"]["status"], "ABORTED", d)
        self.assertIn("audit or stop: the audit log cannot be written", d["rollout"]["reason"], d)
        rollout = self.wait_for("the rollout row", lambda: self.q(
            "SELECT * FROM rollouts WHERE id = ? AND finished_ms IS NOT NULL", rid), 60)[0]
        self.assertEqual(rollout["status"], "ABORTED")
        self.assertIn("audit or stop", rollout["reason"])
        rows = self.q("SELECT node, step, event, detail FROM audit_log WHERE rollout_id = ? ORDER BY id", rid)
        for node in (first, second):
            opened = []
            for x in rows:
                if x["node"] != node:
                    continue
                if x["event"] == "STEP_START":
                    opened.append(x["step"])
                elif x["event"] in ("STEP_OK", "STEP_FAILED") and x["step"] in opened:
                    opened.remove(x["step"])
            self.assertEqual(opened, [], f"{node}: steps without an outcome: {rows}")
        refused = [x for x in rows if x["node"] == second and x["event"] == "STEP_FAILED"]
        self.assertTrue(refused and "audit log cannot be written" in refused[0]["detail"], rows)
        self.assertFalse([x for x in rows if x["node"] == second and x["step"] != "CONNECT"
                          and x["event"] == "STEP_START" and x["step"] != "VALIDATE"], rows)


load_tests = own_tests(StoreDegradedTest)

if __name__ == "__main__":
    main()
