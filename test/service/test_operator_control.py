#!/usr/bin/env python3
"""Steering a rollout in flight (issue 14, items 1 and 2), end to end against a fleet of its own
(the operator_fleet fixture of test/service/CMakeLists.txt):
  - POST /api/deploy/{sr}/pause | resume | abort on `guardia serve` (roles, states, webhooks,
    the store's rollouts row, audit rows naming the principal);
  - between tiers: rollout.tiers[].approve (a tier gate a `validate` client opens) and
    rollout.tiers[].bake_s (a node that turns unhealthy during the bake is rolled back and
    counted by the safety gate);
  - `guardia deploy`: SIGUSR1 pauses, SIGUSR2 resumes.
Outcomes are read from the nodes (`tools/fleet check`: file sha256s, trees), the store (sqlite3),
the webhook receiver and exit codes.

Layout (checked in setUpClass; change both together):
  node-0001..0004  health_slow:6 (503 STARTING for 6 s after each start: keeps a node in flight;
                   first by name, so first in a tier: the service orders a tier's nodes by name)
  node-0005..0016  healthy
Each test owns its nodes:
  test_01 node-0001, node-0005, node-0006    test_04 node-0010, node-0011, node-0012
  test_02 node-0007, node-0008, node-0002, node-0009    test_05 node-0013, node-0014, node-0015
  test_03 none (refusals only)               test_06 node-0003, node-0016    test_04b node-0004, node-0009 (never starts)

  test_operator_control.py [unittest args]   run (as root, like the fleet)
  test_operator_control.py --cleanup         kill guardia processes a killed run left, remove the work root
"""

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from trust_base import own_tests, main  # noqa: E402
from test_serve import (ServeTest, FLEET_DIR, GUARDIA, MARK, ROLLOUT_TIMEOUT, WORK_ROOT,  # noqa: E402
                        sha256)

OP_SLOW = [f"node-{i:04d}" for i in range(1, 5)]
OP_HEALTHY = [f"node-{i:04d}" for i in range(5, 17)]
OP_SLOW_TIMEOUT_S = 20      # health timeout given to the slow nodes: they do get healthy
MARKER = b"GUARDIA_FAULT=unhealthy"   # the fleet's health server answers 503 while a file holds it


class OperatorControlTest(ServeTest):
    FIXTURE = "operator_fleet"

    @classmethod
    def expected_faults(cls):
        return {**{n: [] for n in OP_HEALTHY}, **{n: ["health_slow"] for n in OP_SLOW}}

    # ------------------------------------------------------------------ helpers
    def nodes_doc(self, tiers, slow_timeout=True, **overrides):
        doc = super().nodes_doc(tiers, slow_timeout=False, **overrides)
        for node in doc["nodes"]:
            if node["name"] in OP_SLOW:
                node["health"]["timeout_s"] = OP_SLOW_TIMEOUT_S
        return doc

    def op_config(self, tiers, clients=None, **rollout):
        notif = {"webhooks": [
                    {"name": "paused", "event": "rollout_paused", "url": self.receiver.url("/paused")},
                    {"name": "resumed", "event": "rollout_resumed", "url": self.receiver.url("/resumed")},
                    {"name": "aborted", "event": "rollout_aborted", "url": self.receiver.url("/aborted")},
                    {"name": "gate", "event": "tier_gate", "url": self.receiver.url("/gate")},
                    {"name": "pm", "event": "pm_review_needed", "url": self.receiver.url("/pm")},
                    {"name": "fail", "event": "deployment_failed", "url": self.receiver.url("/fail")}],
                 "retry": {"initial_delay_ms": 200, "max_delay_ms": 1000, "max_attempts": 0}}
        conf = self.config(notifications=notif, rollout=dict(rollout, tiers=tiers))
        if clients:
            self.tokens = {name: secrets.token_hex(20) for name in clients}
            conf["service"]["clients"] = [
                {"name": name, "token_sha256": hashlib.sha256(self.tokens[name].encode()).hexdigest(),
                 "roles": roles} for name, roles in clients.items()]
        return conf

    def as_(self, who):
        return f"Bearer {self.tokens[who]}"

    def control(self, sr, what, body=None, token=True, wait=False):
        return self.api("POST", f"/api/deploy/{sr}/{what}", body, token=token,
                        query={"wait": "true"} if wait else None,
                        timeout=ROLLOUT_TIMEOUT if wait else 30)

    def node_states(self, sr):
        d = self.deploy_status(sr)
        return d, {n["name"]: n["state"] for n in d["nodes"]}

    def wait_states(self, sr, what, pred, timeout=ROLLOUT_TIMEOUT):
        def probe():
            d, st = self.node_states(sr)
            return (d, st) if pred(d, st) else None
        return self.wait_for(what, probe, timeout)

    def rollout_row(self, rid):
        rows = self.q("SELECT * FROM rollouts WHERE id = ?", rid)
        self.assertEqual(len(rows), 1, rows)
        return rows[0]

    def node_rows(self, rid):
        return {r["node"]: r for r in self.q("SELECT * FROM node_results WHERE rollout_id = ?", rid)}

    def events(self, sr, event):
        return [r for r in self.audit_rows(sr) if r["event"] == event]

    # ================================================================== 1. pause / resume
    def test_01_pause_holds_new_nodes_and_resume_deploys_them(self):
        """Window of one: node-0001 (slow) is in flight when the rollout is paused. It finishes
        its pipeline (DEPLOYED); node-0005/0006 do not start while paused (store rows PENDING,
        their files untouched, the rollouts row PAUSED, GET status state PAUSED). Resume: both
        deploy, the task reaches PENDING_PM_VALIDATION. Audited with the principal; webhooks."""
        tiers = {"node-0001": 2, "node-0005": 2, "node-0006": 2}
        sr = f"SR-PAUSE-{self.tag}"
        self.start_service(conf=self.op_config([{"tier": 2, "batch_size": 1, "mode": "sliding"}],
                                               clients={"ops": ["operate", "read"]}))
        before = self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "pause")
        rid = self.trigger_ok(sr)
        self.wait_states(sr, "node-0001 in flight", lambda d, st: st.get("node-0001") == "running")
        r = self.ok(self.control(sr, "pause", token=self.as_("ops")))
        self.assertEqual((r["sr_id"], r["rollout_id"], r["state"], r["previous_state"], r["by"]),
                         (sr, rid, "PAUSED", "RUNNING", "ops"), r)
        # The answer comes once the new state is durable.
        self.assertEqual(self.rollout_row(rid)["status"], "PAUSED")
        self.assert_error(self.control(sr, "pause", token=self.as_("ops")), 409, "control_refused",
                          "paused already")
        # The node in flight finishes its pipeline; no other node starts.
        d, st = self.wait_states(sr, "node-0001 to finish while paused",
                                 lambda d, st: st.get("node-0001") == "deployed")
        self.assertEqual(d["rollout"]["state"], "PAUSED", d)
        self.assertEqual(d["rollout"]["state_by"], "ops", d)
        self.assertEqual(d["task_status"], "DEPLOYING")
        time.sleep(2.0)   # an absence: a node that would start does so within milliseconds
        d, st = self.node_states(sr)
        self.assertEqual((st["node-0005"], st["node-0006"]), ("pending", "pending"), d)
        rows = self.node_rows(rid)
        self.assertEqual({n: rows[n]["status"] for n in tiers},
                         {"node-0001": "DEPLOYED", "node-0005": "PENDING", "node-0006": "PENDING"}, rows)
        mid = self.check(*tiers)
        self.assert_untouched(before, mid, ["node-0005", "node-0006"])
        self.assert_deployed(before["node-0001"], mid["node-0001"], arts)
        self.assertEqual(self.rollout_row(rid)["status"], "PAUSED")
        paused = self.wait_webhook(sr, "/paused", "rollout_paused")
        self.assertEqual((paused["body"]["rollout_id"], paused["body"]["principal"],
                          paused["body"]["rollout_state"]), (rid, "ops", "PAUSED"), paused["body"])

        r = self.ok(self.control(sr, "resume", token=self.as_("ops")))
        self.assertEqual((r["state"], r["previous_state"]), ("RUNNING", "PAUSED"), r)
        self.assert_error(self.control(sr, "resume", token=self.as_("ops")), 409, "control_refused",
                          "not paused")
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        after = self.check(*tiers)
        for n in tiers:
            self.assert_deployed(before[n], after[n], arts)
        self.assertEqual(self.rollout_row(rid)["status"], "SUCCEEDED")
        self.wait_webhook(sr, "/resumed", "rollout_resumed")
        self.assertEqual([r["principal"] for r in self.events(sr, "ROLLOUT_PAUSED")], ["ops"])
        self.assertEqual([r["principal"] for r in self.events(sr, "ROLLOUT_RESUMED")], ["ops"])
        # Finished: nothing to steer any more.
        self.assert_error(self.control(sr, "pause", token=self.as_("ops")), 409, "no_rollout_in_flight", sr)

    # ================================================================== 2. abort
    def test_02_abort_roll_back_all_restores_every_deployed_node(self):
        """Tier 1 (node-0007, node-0008) deployed, tier 2's node-0002 (slow) in flight: abort with
        roll_back_all. node-0002 finishes, node-0009 never starts, then every node the rollout deployed goes back
        to its backup (byte-identical trees); the task ends FAILED_ROLLBACK with a reason naming
        the principal; rollout_aborted and deployment_failed webhooks."""
        tiers = {"node-0007": 1, "node-0008": 1, "node-0002": 2, "node-0009": 2}
        sr = f"SR-ABORT-{self.tag}"
        self.start_service(conf=self.op_config([{"tier": 1, "batch_size": "all", "mode": "sliding"},
                                                {"tier": 2, "batch_size": 1, "mode": "sliding"}],
                                               clients={"ops": ["operate", "read"]}))
        before = self.fresh(*tiers)
        self.prepare(sr, tiers, "abort")
        rid = self.trigger_ok(sr)
        self.wait_states(sr, "node-0007/0008 deployed and node-0002 in flight",
                         lambda d, st: st.get("node-0007") == "deployed" and st.get("node-0008") == "deployed"
                         and st.get("node-0002") == "running")
        self.assert_error(self.control(sr, "abort", {"on_abort": "everything"}, token=self.as_("ops")), 400,
                          "bad_request", "on_abort")
        r = self.ok(self.control(sr, "abort", {"on_abort": "roll_back_all"}, token=self.as_("ops")), 202)
        self.assertEqual((r["state"], r["by"]), ("STOPPING", "ops"), r)
        self.assertIn("aborted by 'ops'", r["reason"])
        self.assert_error(self.control(sr, "resume", token=self.as_("ops")), 409, "control_refused", "stopping")
        d = self.wait_task(sr, "FAILED_ROLLBACK")
        self.assertIn("aborted by 'ops'", d["rollout"]["reason"], d)
        self.assertEqual(d["rollout"]["status"], "ABORTED")
        after = self.check(*tiers)
        for n in ("node-0007", "node-0008", "node-0002"):
            self.assert_restored(before[n], after[n])
        self.assert_untouched(before, after, ["node-0009"])
        rows = self.node_rows(rid)
        self.assertEqual({n: rows[n]["status"] for n in tiers},
                         {"node-0007": "ROLLED_BACK_BY_POLICY", "node-0008": "ROLLED_BACK_BY_POLICY",
                          "node-0002": "ROLLED_BACK_BY_POLICY", "node-0009": "SKIPPED"}, rows)
        self.assertEqual(self.rollout_row(rid)["status"], "ABORTED")
        req = self.events(sr, "ROLLOUT_ABORT_REQUESTED")
        self.assertEqual([x["principal"] for x in req], ["ops"], req)
        self.assertIn("roll_back_all", req[0]["detail"])
        self.assertTrue(self.events(sr, "ROLLBACK_ALL_DONE"))
        hook = self.wait_webhook(sr, "/aborted", "rollout_aborted")
        self.assertEqual((hook["body"]["principal"], hook["body"]["on_abort"]), ("ops", "roll_back_all"), hook["body"])
        self.wait_webhook(sr, "/fail", "deployment_failed")

    # ================================================================== 3. roles and refusals
    def test_03_roles_and_refusals(self):
        """pause/resume/abort need the role operate (resume also admits validate): read and
        submit clients get 403 naming the role; an unknown SR is 404; an SR without a rollout
        in flight is 409 no_rollout_in_flight; a body field other than on_abort is 400."""
        self.start_service(conf=self.op_config([{"tier": 2}], clients={
            "viewer": ["read"], "submitter": ["submit"], "ops": ["operate"], "pm": ["validate"]}))
        sr = f"SR-ROLES-{self.tag}"
        self.create_task(sr)
        for who in ("viewer", "submitter"):
            for what in ("pause", "resume", "abort"):
                with self.subTest(who=who, what=what):
                    self.assert_error(self.control(sr, what, token=self.as_(who)), 403, "forbidden", who, "operate")
        for what in ("pause", "abort"):
            self.assert_error(self.control(sr, what, token=self.as_("pm")), 403, "forbidden", "pm", "operate")
        for what in ("pause", "resume", "abort"):
            self.assert_error(self.control(sr, what, token=self.as_("ops")), 409, "no_rollout_in_flight", sr)
            self.assert_error(self.control(f"NOPE-{self.tag}", what, token=self.as_("ops")), 404, "not_found")
        self.assert_error(self.control(sr, "pause", {"on_abort": "keep_deployed"}, token=self.as_("ops")), 400,
                          "bad_request", "on_abort")
        self.assert_error(self.control(sr, "abort", {"force": True}, token=self.as_("ops")), 400,
                          "bad_request", "force")
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr}"))["status"], "CREATED")
        self.assertFalse([r for r in self.audit_rows(sr) if r["event"].startswith("ROLLOUT_")])

    # ================================================================== 4. tier approval
    def test_04_approve_waits_for_a_validate_resume(self):
        """tiers[0].approve: after tier 1 (node-0010) the rollout waits (state AWAITING_APPROVAL
        in GET status and the rollouts row, tier_gate webhook with tier and counts); tier 2
        (node-0011/0012) does not start. An operate-only resume is refused 403
        approval_needs_validate; a validate client's resume continues; all deployed."""
        tiers = {"node-0010": 1, "node-0011": 2, "node-0012": 2}
        sr = f"SR-GATE-{self.tag}"
        self.start_service(conf=self.op_config(
            [{"tier": 1, "batch_size": 1, "mode": "lockstep", "approve": True},
             {"tier": 2, "batch_size": "all"}],
            clients={"ops": ["operate", "read"], "pm": ["validate", "read"]}))
        before = self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "gate")
        rid = self.trigger_ok(sr)
        d, st = self.wait_states(sr, "the tier gate", lambda d, st: d["rollout"].get("state") == "AWAITING_APPROVAL")
        self.assertEqual(d["rollout"]["awaiting_tier"], 1, d)
        self.assertEqual(st, {"node-0010": "deployed", "node-0011": "pending", "node-0012": "pending"}, d)
        self.assertEqual(self.rollout_row(rid)["status"], "AWAITING_APPROVAL")
        gate = self.wait_webhook(sr, "/gate", "tier_gate")
        b = gate["body"]
        self.assertEqual((b["sr_id"], b["rollout_id"], b["tier"]), (sr, rid, 1), b)
        self.assertEqual(b["counts"], {"total": 1, "deployed": 1, "failed": 0, "not_started": 0}, b)
        self.assert_error(self.control(sr, "pause", token=self.as_("ops")), 409, "control_refused",
                          "approval")
        self.assert_error(self.control(sr, "resume", token=self.as_("ops")), 403, "approval_needs_validate",
                          "validate", "ops")
        mid = self.check(*tiers)
        self.assert_untouched(before, mid, ["node-0011", "node-0012"])
        self.assertEqual(self.deploy_status(sr)["rollout"]["state"], "AWAITING_APPROVAL")
        r = self.ok(self.control(sr, "resume", token=self.as_("pm")))
        self.assertEqual((r["state"], r["previous_state"], r["by"]), ("RUNNING", "AWAITING_APPROVAL", "pm"), r)
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        after = self.check(*tiers)
        for n in tiers:
            self.assert_deployed(before[n], after[n], arts)
        approved = self.events(sr, "TIER_APPROVED")
        self.assertEqual([x["principal"] for x in approved], ["pm"], approved)
        self.assertEqual(len(self.events(sr, "TIER_APPROVAL_WAIT")), 1)
        resumed = self.wait_webhook(sr, "/resumed", "rollout_resumed")
        self.assertEqual((resumed["body"]["principal"], resumed["body"]["approved_tier"]), ("pm", True), resumed["body"])

    # ================================================================== 5. bake
    def test_05_a_node_unhealthy_during_the_bake_is_rolled_back_and_trips_the_gate(self):
        """tiers[0].bake_s: after tier 1 (node-0013, node-0014) both are probed. node-0013 turns
        unhealthy during the bake (a file with the fleet's unhealthy marker in its deploy path):
        it is rolled back exactly (ROLLED_BACK, failed step BAKE, BAKE_FAILED audited), the gate
        counts it (1 of 2 > 10 %) and aborts: node-0015 (tier 2) never starts; node-0014 stays
        deployed (keep_deployed)."""
        tiers = {"node-0013": 1, "node-0014": 1, "node-0015": 2}
        sr = f"SR-BAKE-{self.tag}"
        self.start_service(conf=self.op_config(
            [{"tier": 1, "batch_size": "all", "mode": "sliding", "bake_s": 30},
             {"tier": 2, "batch_size": "all"}]))
        before = self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "bake")
        rid = self.trigger_ok(sr)
        self.wait_for("BAKE_START", lambda: self.events(sr, "BAKE_START"), ROLLOUT_TIMEOUT)
        marker = os.path.join(self.inv["node-0013"]["deploy_path"], "broken.txt")
        with open(marker, "wb") as f:
            f.write(b"turned bad: " + MARKER + b"\n")
        d = self.wait_task(sr, "FAILED_ROLLBACK")
        self.assertEqual(d["rollout"]["status"], "ABORTED", d)
        self.assertIn("safety gate: tier 1", d["rollout"]["reason"], d)
        after = self.check(*tiers)
        self.assert_restored(before["node-0013"], after["node-0013"])
        self.assertFalse(os.path.exists(marker))
        self.assert_deployed(before["node-0014"], after["node-0014"], arts)
        self.assert_untouched(before, after, ["node-0015"])
        rows = self.node_rows(rid)
        self.assertEqual({n: rows[n]["status"] for n in tiers},
                         {"node-0013": "ROLLED_BACK", "node-0014": "DEPLOYED", "node-0015": "SKIPPED"}, rows)
        self.assertEqual(rows["node-0013"]["step"], "BAKE", rows)
        self.assertIn("BAKE", rows["node-0013"]["error"])
        failed = [r for r in self.events(sr, "BAKE_FAILED") if r["node"] == "node-0013"]
        self.assertEqual(len(failed), 1, failed)
        rb = [r for r in self.audit_rows(sr) if r["node"] == "node-0013" and r["step"] == "ROLLBACK"
              and r["event"] == "STEP_OK" and r["id"] > failed[0]["id"]]
        self.assertTrue(rb, "the rollback's steps follow BAKE_FAILED")
        self.assertFalse([r for r in self.events(sr, "BAKE_FAILED") if r["node"] != "node-0013"])
        self.wait_webhook(sr, "/fail", "deployment_failed")

    # ================================================================== 4b. abort after a gate
    def test_04b_abort_roll_back_all_never_overwrites_a_release_put_there_while_waiting(self):
        """Tier 1 (node-0004) deployed and unlocked while the rollout waits at the tier gate;
        meanwhile another release takes the node (its files and release marker change). An abort
        with roll_back_all must refuse that node by name (VERIFY_LIVE), never restore this
        rollout's backup over the other release. node-0009 (tier 2) never starts."""
        tiers = {"node-0004": 1, "node-0009": 2}
        sr = f"SR-GATEABORT-{self.tag}"
        self.start_service(conf=self.op_config(
            [{"tier": 1, "batch_size": "all", "mode": "sliding", "approve": True},
             {"tier": 2, "batch_size": "all"}],
            clients={"ops": ["operate", "read"]}))
        before = self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "gateabort")
        rid = self.trigger_ok(sr)
        self.wait_states(sr, "the tier gate", lambda d, st: d["rollout"].get("state") == "AWAITING_APPROVAL")
        dp = self.inv["node-0004"]["deploy_path"]
        other = json.dumps({"rollout_id": "R-OTHER", "sr_id": "SR-OTHER", "artifacts": [],
                            "activated_at": "2026-01-01T00:00:00Z", "owner": "someone"}).encode() + b"\n"
        with open(dp + ".guardia-release", "wb") as f:
            f.write(other)
        self.ok(self.control(sr, "abort", {"on_abort": "roll_back_all"}, token=self.as_("ops")), 202)
        self.wait_task(sr, "FAILED_ROLLBACK")
        after = self.check(*tiers)
        self.assert_deployed(before["node-0004"], after["node-0004"], arts)
        with open(dp + ".guardia-release", "rb") as f:
            self.assertEqual(f.read(), other, "the other release's marker stays")
        self.assert_untouched(before, after, ["node-0009"])
        rows = self.node_rows(rid)
        self.assertEqual(rows["node-0004"]["status"], "ROLLBACK_BY_POLICY_FAILED", rows)
        refused = [r for r in self.audit_rows(sr) if r["node"] == "node-0004" and r["step"] == "VERIFY_LIVE"]
        self.assertTrue(any("R-OTHER" in (r["detail"] or "") for r in refused), refused)

    # ================================================================== 6. CLI signals
    def test_06_cli_deploy_paused_by_sigusr1_resumed_by_sigusr2(self):
        """`guardia deploy`, window of one: SIGUSR1 pauses (stderr says PAUSED and how to
        resume; the rollouts row says PAUSED; the node in flight finishes, the other does not
        start), SIGUSR2 resumes: SUCCEEDED, exit 0, both nodes deployed."""
        names = ["node-0003", "node-0016"]
        before = self.fresh(*names)
        arts = self.artifacts("cli")
        paths = []
        for name, data in arts.items():
            p = self.path(name)
            with open(p, "wb") as f:
                f.write(data)
            paths += ["--artifact", p]
        inv = self.nodes_doc({n: 2 for n in names})
        inv_path = self.write_json("inventory.json", inv)
        conf = self.write_json("cli.json", {"rollout": {"tiers": [{"tier": 2, "batch_size": 1}]},
                                            "pipeline": {"keep_backups": 50},
                                            "ssh": {"known_hosts": self.known_hosts}})
        db = self.db        # no service in this test: the CLI's audit database is the test's store
        env = dict(os.environ, **{MARK: WORK_ROOT})
        proc = subprocess.Popen([GUARDIA, "deploy", "--inventory", inv_path, *paths, "--config", conf,
                                 "--db", db, "--sr-id", f"SR-CLI-{self.tag}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True, env=env, cwd=self.tmp)
        lines, lock = [], threading.Lock()

        def drain(stream, tag):
            for line in iter(stream.readline, ""):
                with lock:
                    lines.append((tag, line.rstrip("\n")))
        threads = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
                   threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
        for t in threads:
            t.start()

        def kill():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            for t in threads:
                t.join(5)
            proc.stdout.close()
            proc.stderr.close()
        self.addCleanup(kill)

        def seen(pred):
            with lock:
                return [l for tag, l in lines if tag == "err" and pred(l)]

        def log():
            with lock:
                return "\n".join(f"[{t}] {l}" for t, l in lines)
        deadline = time.monotonic() + ROLLOUT_TIMEOUT

        def wait(what, fn):
            while not fn():
                if proc.poll() is not None and not fn():
                    self.fail(f"guardia deploy exited {proc.returncode} while waiting for {what}\n{log()}")
                if time.monotonic() > deadline:
                    self.fail(f"timed out waiting for {what}\n{log()}")
                time.sleep(0.1)
            return fn()

        def node_rows():
            if not os.path.exists(db):
                return {}
            try:
                return {r["node"]: r["status"] for r in self.q("SELECT node, status FROM node_results")}
            except Exception:       # the database is being created
                return {}
        wait("the start line", lambda: seen(lambda l: "deploying to 2 node(s)" in l))
        wait("node-0003 in flight", lambda: node_rows().get("node-0003") == "RUNNING")
        proc.send_signal(signal.SIGUSR1)
        paused = wait("the PAUSED line", lambda: seen(lambda l: "PAUSED by cli:" in l))
        self.assertIn(f"kill -USR2 {proc.pid}", paused[0])
        rid_rows = wait("the PAUSED rollouts row",
                        lambda: [r for r in self.q("SELECT status FROM rollouts") if r["status"] == "PAUSED"])
        self.assertEqual(len(rid_rows), 1)
        wait("node-0003 to finish while paused", lambda: node_rows().get("node-0003") == "DEPLOYED")
        # The plain progress repeats the paused state every 5 s: seen once more after the node
        # in flight finished, the other node has had time to start and must not have.
        n_before = len(seen(lambda l: "PAUSED: no new node starts" in l))
        wait("another PAUSED progress line",
             lambda: len(seen(lambda l: "PAUSED: no new node starts" in l)) > n_before)
        self.assertEqual(node_rows().get("node-0016"), "PENDING")
        self.assert_untouched(before, self.check("node-0016"), ["node-0016"])
        proc.send_signal(signal.SIGUSR2)
        try:
            rc = proc.wait(ROLLOUT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"guardia deploy did not end after SIGUSR2\n{log()}")
        for t in threads:
            t.join(5)
        self.assertEqual(rc, 0, log())
        self.assertTrue(seen(lambda l: "RESUMED by cli:" in l), log())
        with lock:
            out = "\n".join(l for t, l in lines if t == "out")
        self.assertIn("SUCCEEDED: 2 node(s): 2 deployed", out)
        after = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], after[n], arts)
        ev = [r["event"] for r in self.q("SELECT event FROM audit_log WHERE event LIKE 'ROLLOUT_%' ORDER BY id")]
        self.assertEqual(ev, ["ROLLOUT_START", "ROLLOUT_PAUSED", "ROLLOUT_RESUMED", "ROLLOUT_SUCCEEDED"], ev)
        principal = self.q("SELECT principal FROM audit_log WHERE event = 'ROLLOUT_PAUSED'")[0]["principal"]
        self.assertTrue(principal.startswith("cli:"), principal)


load_tests = own_tests(OperatorControlTest)

if __name__ == "__main__":
    main()
