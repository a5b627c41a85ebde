#!/usr/bin/env python3
"""Approvals that mean something, node claims across SRs, principals and roles (issue 12,
points 1-3), end to end against the trust_fleet (see trust_base.py; this suite owns
node-0001..0010, node-0021 and node-0023). Outcomes are read from the nodes (file sha256s),
the store and the API. Each test failed on the code before the trust boundary."""

import hashlib
import os
import secrets

from trust_base import TrustBase, own_tests, main
from test_serve import ROLLOUT_TIMEOUT, sha256


class ApprovalsTest(TrustBase):

    def verdict(self, sr, verdict, pm, token=True, wait=False):
        return self.api("POST", f"/api/tasks/{sr}/validation", {"verdict": verdict, "pm_id": pm},
                        token=token, query={"wait": "true"} if wait else None,
                        timeout=ROLLOUT_TIMEOUT if wait else 30)

    # ------------------------------------------------------------------ 1. cross-SR claims
    def test_01_a_claimed_node_refuses_another_sr_and_a_pm_rollback_never_overwrites_another_build(self):
        """SR-A deploys node-0001..0004 and awaits its PM. SR-B targets the same nodes: its
        trigger is refused 409 node_claimed naming SR-A and the nodes (before: B deployed over
        A, and rejecting A then restored A's backup over B's build on all 4 nodes). Then
        node-0002 is changed by hand (a hotfix): rejecting A rolls back node-0001/3/4 exactly,
        refuses node-0002 by name and leaves its files as they are; the task says so."""
        names = ["node-0001", "node-0002", "node-0003", "node-0004"]
        tiers = {n: 2 for n in names}
        sr_a, sr_b = f"SR-A-{self.tag}", f"SR-B-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        arts_a = self.prepare(sr_a, tiers, "a")
        self.trigger_ok(sr_a)
        self.wait_task(sr_a, "PENDING_PM_VALIDATION")
        mid = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], mid[n], arts_a)

        self.create_task(sr_b)
        arts_b = self.artifacts("b")
        self.stage(sr_b, arts_b)
        body = self.assert_error(self.trigger(sr_b), 409, "node_claimed", sr_a, *names)
        self.assertEqual(body["claimed_by"], [{"sr_id": sr_a, "state": "awaiting its PM verdict",
                                               "nodes": names}], body)
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr_b}"))["status"], "CREATED")
        still = self.check(*names)
        for n in names:
            self.assertEqual(still[n]["files"]["app.jar"]["sha256"], sha256(arts_a["app.jar"]), f"{n}: still A")

        # a hand-made change on node-0002 replaces A's build there
        hotfix = b"hotfix by hand " + secrets.token_bytes(16)
        with open(os.path.join(self.inv["node-0002"]["deploy_path"], "app.jar"), "wb") as f:
            f.write(hotfix)

        r = self.verdict(sr_a, "rejected", "carol", wait=True)
        self.assertEqual(self.ok(r), {"sr_id": sr_a, "status": "ROLLBACK_FAILED", "rolled_back": 3, "failed": 1})
        after = self.check(*names)
        for n in ("node-0001", "node-0003", "node-0004"):
            self.assert_restored(before[n], after[n])
        a2 = after["node-0002"]
        self.assertEqual(a2["files"]["app.jar"]["sha256"], hashlib.sha256(hotfix).hexdigest(),
                         "node-0002: the hand-made build must not be overwritten")
        self.assertEqual(a2["files"]["VERSION"]["sha256"], sha256(arts_a["VERSION"]))
        self.assert_clean(a2)
        d = self.deploy_status(sr_a)
        self.assertEqual(d["task_status"], "ROLLBACK_FAILED")
        states = {n["name"]: n for n in d["nodes"]}
        self.assertEqual({n: states[n]["state"] for n in names},
                         {"node-0001": "rolled_back_by_pm", "node-0002": "pm_rollback_refused",
                          "node-0003": "rolled_back_by_pm", "node-0004": "rolled_back_by_pm"}, d)
        self.assertIn("no longer runs the release to roll back", states["node-0002"]["error"])
        self.assertIn("app.jar", states["node-0002"]["error"])
        t = self.ok(self.api("GET", f"/api/tasks/{sr_a}"))
        self.assertIn("no longer run this release", t["reason"])
        rows = self.audit_rows(sr_a)
        self.assertTrue([x for x in rows if x["node"] == "node-0002" and x["step"] == "VERIFY_LIVE"
                         and x["event"] == "STEP_FAILED"], "VERIFY_LIVE failure audited for node-0002")
        self.assertFalse([x for x in rows if x["node"] == "node-0002" and x["event"] == "ROLLBACK_OK"])

        # A's claim ended with its rollback: B may deploy now, and does
        self.trigger_ok(sr_b)
        self.wait_task(sr_b, "PENDING_PM_VALIDATION")
        final = self.check(*names)
        for n in names:
            self.assertEqual(final[n]["files"]["app.jar"]["sha256"], sha256(arts_b["app.jar"]), n)
            self.assert_clean(final[n])
        self.ok(self.verdict(sr_b, "accepted", "carol"))

    def test_02_claims_survive_a_restart_and_an_alias_is_the_same_node(self):
        """The claim of an SR awaiting its PM is rebuilt from the store at start-up; a second
        inventory name for the same host, port and deploy path is held too."""
        names = ["node-0005"]
        sr_a, sr_b, sr_c = f"SR-RA-{self.tag}", f"SR-RB-{self.tag}", f"SR-RC-{self.tag}"
        svc = self.start_service()
        self.fresh(*names)
        self.prepare(sr_a, {"node-0005": 2}, "ra")
        self.trigger_ok(sr_a)
        self.wait_task(sr_a, "PENDING_PM_VALIDATION")
        svc.kill()
        self.start_service(label="restarted")
        self.create_task(sr_b)
        self.stage(sr_b, self.artifacts("rb"))
        self.assert_error(self.trigger(sr_b), 409, "node_claimed", sr_a, "node-0005")
        alias = dict(self.nodes_doc({"node-0005": 2})["nodes"][0], name="node-0005-alias",
                     inst_id=f"ALIAS-{self.tag}")
        self.ok(self.api("POST", "/api/inventory", {"nodes": [alias]}))
        self.create_task(sr_c, inst_id=f"ALIAS-{self.tag}")
        self.stage(sr_c, self.artifacts("rc"))
        body = self.assert_error(self.trigger(sr_c), 409, "node_claimed", sr_a, "node-0005-alias")
        self.assertEqual(body["claimed_by"][0]["nodes"], ["node-0005-alias"], body)
        self.ok(self.verdict(sr_a, "accepted", "carol"))
        self.trigger_ok(sr_b)      # accepted: the release is the node's new normal
        self.wait_task(sr_b, "PENDING_PM_VALIDATION")
        self.ok(self.verdict(sr_b, "accepted", "carol"))

    # ------------------------------------------------------------------ 2. identities, four eyes
    def test_03_identities_are_normalised_and_the_verdict_needs_four_eyes(self):
        names = ["node-0006"]
        sr = f"SR-EYES-{self.tag}"
        self.start_service()
        self.fresh(*names)
        self.prepare(sr, {"node-0006": 2}, "eyes")     # requester "alice"
        for approver in ("Alice", " alice ", "ALICE\t"):
            with self.subTest(approver=approver):
                self.assert_error(self.trigger(sr, approver=approver), 403, "self_approval")
        self.assertEqual(self.q("SELECT count(*) AS n FROM rollouts")[0]["n"], 0, "nothing deployed")
        self.trigger_ok(sr, approver="Bob")
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        for pm in ("alice", " ALICE", "bob", "BOB "):
            with self.subTest(pm=pm):
                self.assert_error(self.verdict(sr, "accepted", pm), 403, "four_eyes")
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr}"))["status"], "PENDING_PM_VALIDATION")
        self.assertEqual(self.ok(self.verdict(sr, "accepted", "carol")), {"sr_id": sr, "status": "COMPLETED"})

    # ------------------------------------------------------------------ 2. approved set
    def test_04_a_trigger_approves_exactly_the_staged_set_and_restaging_voids_it(self):
        sr = f"SR-SET-{self.tag}"
        tiers = {"node-0023": 1, "node-0007": 2}     # node-0023 rejects every new build
        self.start_service()
        before = self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "set")
        staged = {n: sha256(d) for n, d in arts.items()}
        wrong = dict(staged, **{"app.jar": "0" * 64})
        r = self.api("POST", "/api/deploy/trigger", {"sr_id": sr, "approver_id": "bob", "artifacts": wrong})
        self.assert_error(r, 409, "approval_mismatch", "app.jar")
        self.assertEqual(self.q("SELECT count(*) AS n FROM rollouts")[0]["n"], 0, "nothing deployed")
        d = self.ok(self.api("POST", "/api/deploy/trigger", {"sr_id": sr, "approver_id": "bob",
                                                            "artifacts": staged}), 202)
        self.wait_task(sr, "FAILED_ROLLBACK")
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual((t["approver"], t["approved_artifacts"], t["rollout_id"]), ("bob", staged, d["rollout_id"]), t)

        # re-staging after the trigger voids the approval
        new_jar = os.urandom(1024) + b"v3"
        self.stage(sr, {"app.jar": new_jar})
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual(t["approver"], "", t)
        self.assertNotIn("approved_artifacts", t)
        voided = [x for x in self.audit_rows(sr) if x["event"] == "APPROVAL_VOIDED"]
        self.assertEqual(len(voided), 1, voided)
        self.assertIn("re-staged", voided[0]["detail"])
        # the approver saw the old set: refused; the new set: deploys
        r = self.api("POST", "/api/deploy/trigger", {"sr_id": sr, "approver_id": "bob", "artifacts": staged})
        self.assert_error(r, 409, "approval_mismatch", "app.jar is staged with sha256 " + sha256(new_jar))
        new_set = dict(staged, **{"app.jar": sha256(new_jar)})
        self.ok(self.api("POST", "/api/deploy/trigger", {"sr_id": sr, "approver_id": "dave",
                                                        "artifacts": new_set}), 202)
        self.wait_task(sr, "FAILED_ROLLBACK")
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual((t["approver"], t["approved_artifacts"]), ("dave", new_set), t)
        after = self.check(*tiers)
        self.assertEqual(after["node-0023"]["tree_sha256"], before["node-0023"]["tree_sha256"], "rolled back")
        self.assertEqual(after["node-0007"]["tree_sha256"], before["node-0007"]["tree_sha256"], "never started")

    # ------------------------------------------------------------------ 1. principals and roles
    def test_05_roles_decide_each_route_and_the_audit_names_the_principal(self):
        tokens = {name: secrets.token_hex(20) for name in ("ops", "approvals", "pm", "viewer")}
        token_file = self.path("approvals.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(tokens["approvals"] + "\n")
        clients = [
            {"name": "ops", "token_sha256": hashlib.sha256(tokens["ops"].encode()).hexdigest(), "roles": ["admin", "read"]},
            {"name": "approvals", "token_file": token_file, "roles": ["submit"]},
            {"name": "pm", "token_sha256": hashlib.sha256(tokens["pm"].encode()).hexdigest(), "roles": ["validate", "read"]},
            {"name": "viewer", "token_sha256": hashlib.sha256(tokens["viewer"].encode()).hexdigest(), "roles": ["read"]},
        ]
        conf = self.config(service={"clients": clients})
        del conf["service"]["token_file"]
        self.start_service(conf=conf)

        def as_(who):
            return f"Bearer {tokens[who]}"
        sr = f"SR-ROLES-{self.tag}"
        tiers = {"node-0008": 2, "node-0009": 2}
        before = self.fresh(*tiers)
        doc = self.nodes_doc(tiers)
        forbidden = [("approvals", "POST", "/api/inventory", doc),
                     ("pm", "POST", "/api/inventory", doc),
                     ("viewer", "POST", "/api/tasks", {"sr_id": sr, "inst_id": self.inst_id,
                                                       "system_name": self.system_name}),
                     ("approvals", "GET", "/api/inventory", None),
                     ("approvals", "GET", "/metrics", None)]
        for who, method, path, body in forbidden:
            with self.subTest(who=who, path=path):
                self.assert_error(self.api(method, path, body, token=as_(who)), 403, "forbidden", who)
        self.assertEqual(self.q("SELECT count(*) AS n FROM inventory_nodes")[0]["n"], 0)
        self.ok(self.api("POST", "/api/inventory", doc, token=as_("ops")))
        self.ok(self.api("POST", "/api/tasks", {"sr_id": sr, "inst_id": self.inst_id, "system_name": self.system_name,
                                                "requester": "alice"}, token=as_("approvals")), 201)
        arts = self.artifacts("roles")
        for name, data in arts.items():
            self.ok(self.api("PUT", f"/api/tasks/{sr}/artifacts/{name}", query={"sha256": sha256(data)}, raw=data,
                             ctype="application/octet-stream", token=as_("approvals")), 201)
        trig = {"sr_id": sr, "approver_id": "bob"}
        self.assert_error(self.api("POST", "/api/deploy/trigger", trig, token=as_("pm")), 403, "forbidden")
        self.ok(self.api("POST", "/api/deploy/trigger", trig, token=as_("approvals")), 202)
        self.wait_for("PENDING_PM_VALIDATION",
                      lambda: self.ok(self.api("GET", f"/api/deploy/{sr}", token=as_("viewer")))["task_status"]
                      == "PENDING_PM_VALIDATION", ROLLOUT_TIMEOUT)
        self.assert_error(self.verdict(sr, "accepted", "carol", token=as_("approvals")), 403, "forbidden")
        self.assert_error(self.verdict(sr, "accepted", "carol", token=as_("viewer")), 403, "forbidden")
        self.ok(self.verdict(sr, "accepted", "carol", token=as_("pm")))
        self.assertEqual(self.api("GET", "/metrics", token=as_("viewer")).status, 200)
        after = self.check(*tiers)
        for n in tiers:
            self.assert_deployed(before[n], after[n], arts)
        rows = self.q("SELECT event, principal FROM audit_log WHERE principal != '' ORDER BY id")
        by_event = {}
        for r in rows:
            by_event.setdefault(r["event"], set()).add(r["principal"])
        self.assertEqual(by_event.get("INVENTORY_IMPORTED"), {"ops"}, rows)
        self.assertEqual(by_event.get("TASK_CREATED"), {"approvals"}, rows)
        self.assertEqual(by_event.get("ARTIFACT_STAGED"), {"approvals"}, rows)
        self.assertEqual(by_event.get("TASK_DEPLOYING"), {"approvals"}, rows)
        self.assertEqual(by_event.get("TASK_COMPLETED"), {"pm"}, rows)
        self.token = tokens["viewer"]     # api_audit() pages with self.token
        events = self.api_audit(sr)
        self.assertIn("principal", events[0])
        self.assertEqual({e["principal"] for e in events if e["event"] == "TASK_COMPLETED"}, {"pm"})


    # ------------------------------------------------------------------ 3. restore points
    def test_06_a_rejection_never_reverts_a_build_another_sr_put_there_since(self):
        """Found by a review: SR-A's first attempt fails but leaves node-0010 on A's build
        (keep_deployed); SR-B (through a second inventory name for the same node) deploys over
        it and is accepted; A's retry deploys again; rejecting A then restored A's FIRST backup
        (the node before A and B) and silently reverted B's accepted build. Now the restore
        point is the first backup A took after B's change: the node ends on B's build."""
        sr_a, sr_b = f"SR-RA6-{self.tag}", f"SR-RB6-{self.tag}"
        self.start_service()
        before = self.fresh("node-0010", "node-0023")
        tiers = {"node-0010": 2, "node-0023": 2}        # node-0023 rejects every new build
        arts_a = self.prepare(sr_a, tiers, "a6")
        self.trigger_ok(sr_a)
        self.wait_task(sr_a, "FAILED_ROLLBACK")
        mid = self.check("node-0010", "node-0023")
        self.assertEqual(mid["node-0010"]["files"]["app.jar"]["sha256"], sha256(arts_a["app.jar"]),
                         "node-0010 stays on A's build (keep_deployed)")
        self.assertEqual(mid["node-0023"]["tree_sha256"], before["node-0023"]["tree_sha256"])

        alias = dict(self.nodes_doc({"node-0010": 2})["nodes"][0], name="node-0010-b",
                     inst_id=f"B6-{self.tag}")
        self.ok(self.api("POST", "/api/inventory", {"nodes": [alias]}))
        self.create_task(sr_b, inst_id=f"B6-{self.tag}")
        arts_b = self.artifacts("b6")
        self.stage(sr_b, arts_b)
        self.trigger_ok(sr_b)
        self.wait_task(sr_b, "PENDING_PM_VALIDATION")
        self.ok(self.verdict(sr_b, "accepted", "carol"))
        on_b = self.check("node-0010")["node-0010"]
        self.assertEqual(on_b["files"]["app.jar"]["sha256"], sha256(arts_b["app.jar"]))

        # A's retry without the failing node: node-0010 deploys A again (its backup holds B)
        moved = dict(self.nodes_doc({"node-0023": 2})["nodes"][0], inst_id=f"ELSEWHERE-{self.tag}")
        self.ok(self.api("POST", "/api/inventory", {"nodes": [moved]}))
        self.trigger_ok(sr_a, approver="dave")
        self.wait_task(sr_a, "PENDING_PM_VALIDATION", passing=("DEPLOYING",))
        r = self.verdict(sr_a, "rejected", "carol", wait=True)
        self.assertEqual(self.ok(r), {"sr_id": sr_a, "status": "ROLLED_BACK", "rolled_back": 1, "failed": 0})
        after = self.check("node-0010")["node-0010"]
        self.assertEqual(after["tree_sha256"], on_b["tree_sha256"],
                         "node-0010 must be back on B's accepted build, not on the build before A")
        self.assertEqual(after["files"]["app.jar"]["sha256"], sha256(arts_b["app.jar"]))
        self.assert_clean(after)
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr_b}"))["status"], "COMPLETED")

load_tests = own_tests(ApprovalsTest)

if __name__ == "__main__":
    main()
