#!/usr/bin/env python3
"""POST /api/deploy/{sr_id}/rollback: an operator's rollback on demand, end to end against a
fleet of its own (operator_rollback_fleet in test/service/CMakeLists.txt: node-0001..0003,
healthy). The harness is test_serve.py's (a real `guardia serve`, HTTP only); outcomes are read
from the nodes (file sha256s, the release marker's bytes), the store and the webhook receiver."""

import hashlib
import json
import os
import secrets

from trust_base import own_tests, main
from test_serve import ServeTest, ROLLOUT_TIMEOUT, sha256

NODES = ["node-0001", "node-0002", "node-0003"]


class OperatorRollbackTest(ServeTest):
    FIXTURE = "operator_rollback_fleet"

    @classmethod
    def expected_faults(cls):
        return {n: [] for n in NODES}

    def marker_bytes(self, node):
        try:
            with open(self.inv[node]["deploy_path"] + ".guardia-release", "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def test_rollback_after_acceptance_as_operate_and_refused_as_read(self):
        tokens = {name: secrets.token_hex(20) for name in ("ops", "operator", "viewer")}
        clients = [{"name": name, "token_sha256": hashlib.sha256(tokens[name].encode()).hexdigest(), "roles": roles}
                   for name, roles in (("ops", ["admin", "submit", "validate", "read"]),
                                       ("operator", ["operate"]), ("viewer", ["read"]))]
        conf = self.config(service={"clients": clients})
        del conf["service"]["token_file"]
        conf["notifications"]["webhooks"].append(
            {"name": "rbf", "event": "rollback_failed", "url": self.receiver.url("/rbf")})
        self.token = tokens["ops"]
        self.start_service(conf=conf)

        sr = f"SR-OPRB-{self.tag}"
        tiers = {n: 2 for n in NODES}
        before = self.fresh(*NODES)
        markers_before = {n: self.marker_bytes(n) for n in NODES}
        arts = self.prepare(sr, tiers, "oprb")
        rollout_id = self.trigger_ok(sr)
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        self.ok(self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": "accepted", "pm_id": "carol"}))
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr}"))["status"], "COMPLETED")
        mid = self.check(*NODES)
        for n in NODES:
            self.assert_deployed(before[n], mid[n], arts)
            m = json.loads(self.marker_bytes(n))
            self.assertEqual((m["rollout_id"], m["sr_id"]), (rollout_id, sr), n)
            self.assertEqual(sorted((a["name"], a["sha256"]) for a in m["artifacts"]),
                             sorted((name, sha256(data)) for name, data in arts.items()))

        # read only: 403, nothing changes
        self.assert_error(self.api("POST", f"/api/deploy/{sr}/rollback", token=f"Bearer {tokens['viewer']}"),
                          403, "forbidden", "viewer")
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr}"))["status"], "COMPLETED")
        # a task in another state: 409 with a clear code
        other = f"SR-OPRB2-{self.tag}"
        self.create_task(other)
        self.assert_error(self.api("POST", f"/api/deploy/{other}/rollback", token=f"Bearer {tokens['operator']}"),
                          409, "conflict", "CREATED", "COMPLETED")

        # operate: rolled back, every node on its files and marker from before
        r = self.api("POST", f"/api/deploy/{sr}/rollback", query={"wait": "true"},
                     token=f"Bearer {tokens['operator']}", timeout=ROLLOUT_TIMEOUT)
        self.assertEqual(self.ok(r), {"sr_id": sr, "status": "ROLLED_BACK", "rolled_back": 3, "failed": 0})
        after = self.check(*NODES)
        for n in NODES:
            self.assert_restored(before[n], after[n])
            self.assertEqual(self.marker_bytes(n), markers_before[n], f"{n}: the marker from before")
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr}"))["status"], "ROLLED_BACK")
        rows = self.q("SELECT event, principal FROM audit_log WHERE sr_id = ? AND event LIKE 'OPERATOR_ROLLBACK%'", sr)
        self.assertEqual(sorted((x["event"], x["principal"]) for x in rows),
                         [("OPERATOR_ROLLBACK_DONE", "operator"), ("OPERATOR_ROLLBACK_START", "operator")], rows)
        self.assertEqual({x["principal"] for x in self.q(
            "SELECT principal FROM audit_log WHERE sr_id = ? AND event = 'TASK_ROLLING_BACK'", sr)}, {"operator"})
        d = self.wait_webhook(sr, "/rb", "rollback_completed")
        self.assertEqual(d["body"]["sr_id"], sr)
        self.assertEqual(self.receiver.deliveries(sr, "/rbf"), [])
        # twice: 409, the SR is rolled back already
        self.assert_error(self.api("POST", f"/api/deploy/{sr}/rollback", token=f"Bearer {tokens['operator']}"),
                          409, "conflict", "ROLLED_BACK")


load_tests = own_tests(OperatorRollbackTest)

if __name__ == "__main__":
    main()
