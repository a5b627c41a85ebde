#!/usr/bin/env python3
"""Messenger notifications end to end (issue 15, docs/OPERATIONS.md "Notifications"): a real
`guardia serve` runs a real rollout on a fleet of its own (messenger_fleet in
test/service/CMakeLists.txt: node-0001..0003 healthy, node-0004 rejects every new build), with
signed webhooks: the ready Slack template of conf/messengers/slack.json and a default body.
The receiver verifies every signature the way docs/OPERATIONS.md tells receivers to; the test
checks the rollout's events (rollout_started, tier_finished with counts, gate_tripped with the
reason, deployment_failed), their console links, and that the signing secrets appear nowhere
in the store (sqlite3 .dump and raw files) nor in the service's log."""

import copy
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time

from trust_base import own_tests, main
from test_serve import ServeTest, ROLLOUT_TIMEOUT, FINAL_TASK, GUARDIA

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEALTHY = ["node-0001", "node-0002", "node-0003"]
REJECT = ["node-0004"]
NODES = HEALTHY + REJECT
TOLERANCE_S = 300
PUBLIC_URL = "https://guardia.example.test/ops"


def verify(secret, headers, raw, now=None):
    """The receiver side, as documented: HMAC-SHA256(secret, "<timestamp>.<raw body>"),
    compared in constant time; a timestamp more than 5 minutes away is a replay."""
    ts = headers.get("x-guardia-timestamp", "")
    sig = headers.get("x-guardia-signature", "")
    if not ts.isdigit() or not sig.startswith("sha256="):
        return "malformed"
    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        return "mismatch"
    if abs((time.time() if now is None else now) - int(ts)) > TOLERANCE_S:
        return "stale"
    return "valid"


class MessengerEventsTest(ServeTest):
    FIXTURE = "messenger_fleet"

    @classmethod
    def expected_faults(cls):
        return {**{n: [] for n in HEALTHY}, **{n: ["rejects_new_build"] for n in REJECT}}

    def secret_file(self, name, value, mode=0o600):
        path = self.path(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(value + b"\n")
        os.chmod(path, mode)
        return path

    def messenger_config(self, slack_secret, own_secret):
        with open(os.path.join(REPO_ROOT, "conf", "messengers", "slack.json")) as f:
            slack = json.load(f)["notifications"]
        hook = copy.deepcopy(slack["webhooks"][0])
        hook["url"] = self.receiver.url("/slack")
        # The raw webhook's URL comes from a url_file (0600): its deliveries prove it is read.
        raw = {"name": "raw", "events": hook["events"],
               "url_file": self.secret_file("raw.url", self.receiver.url("/raw").encode()),
               "secret_file": own_secret}
        notif = {"signing_secret_file": slack_secret, "webhooks": [hook, raw],
                 "retry": {"initial_delay_ms": 200, "max_delay_ms": 1000, "max_attempts": 0}}
        return self.config(service={"public_url": PUBLIC_URL + "/"}, notifications=notif,
                           rollout={"failure_threshold_percent": 20, "on_abort": "roll_back_all"})

    def test_a_rollout_sends_signed_events_with_links_and_the_secrets_stay_out(self):
        slack_key = ("whsec-" + secrets.token_hex(16)).encode()
        raw_key = ("whsec-" + secrets.token_hex(16)).encode()
        conf = self.messenger_config(self.secret_file("slack.secret", slack_key),
                                     self.secret_file("raw.secret", raw_key))
        self.start_service(conf=conf)

        sr = f"SR-MSG-{self.tag}"
        # tier 2's failing node trips the gate; tier 3 never starts (and sends no tier_finished)
        tiers = {"node-0001": 1, "node-0002": 2, "node-0004": 2, "node-0003": 3}
        self.fresh(*NODES)
        self.prepare(sr, tiers, "msg")
        rollout_id = self.trigger_ok(sr)
        final = self.wait_for(f"{sr} to end", lambda: (lambda d: d if d["task_status"] in FINAL_TASK else None)(
            self.deploy_status(sr)), ROLLOUT_TIMEOUT)
        self.assertEqual(final["task_status"], "FAILED_ROLLBACK", final)

        want = {"rollout_started", "tier_finished", "gate_tripped", "deployment_failed"}

        def of(path):
            # by the raw bytes: the Slack body holds the SR only inside its texts
            return [d for d in self.receiver.deliveries(None, path) if sr.encode() in d["raw"]]

        def events(path):
            return {d["headers"].get("x-guardia-event") for d in of(path)}
        self.wait_for("every event on both webhooks",
                      lambda: want <= events("/raw") and want <= events("/slack"), 60)
        # tier_finished for tiers 1 and 2 on both webhooks; none for tier 3 (checked below, after
        # deployment_failed, the last event, has arrived)
        self.wait_for("two tier_finished per webhook", lambda: all(
            sum(d["headers"].get("x-guardia-event") == "tier_finished" for d in of(p)) == 2
            for p in ("/raw", "/slack")), 60)

        # Every delivery is signed with its webhook's secret, and nothing else verifies it.
        got = of("/raw") + of("/slack")
        for d in got:
            key = raw_key if d["path"] == "/raw" else slack_key
            other = slack_key if d["path"] == "/raw" else raw_key
            h = d["headers"]
            self.assertEqual(verify(key, h, d["raw"]), "valid", d)
            self.assertEqual(verify(other, h, d["raw"]), "mismatch", d)          # the wrong secret
            tampered = d["raw"].replace(sr.encode(), b"SR-FORGED", 1)
            self.assertNotEqual(tampered, d["raw"])
            self.assertEqual(verify(key, h, tampered), "mismatch", d)             # a tampered body
            self.assertEqual(verify(key, h, d["raw"], now=time.time() + 3600), "stale", d)  # a replay
            forged = dict(h, **{"x-guardia-timestamp": str(int(time.time()) + 3600)})
            self.assertEqual(verify(key, forged, d["raw"], now=time.time() + 3600), "mismatch", d)

        # The default body: the events' own fields and the console links.
        raw = {}
        for d in of("/raw"):
            raw.setdefault(d["headers"]["x-guardia-event"], []).append(d["body"])
        console = f"{PUBLIC_URL}/ui/#/sr/{sr}"
        for ev, bodies in raw.items():
            for b in bodies:
                self.assertEqual((b["event"], b["sr_id"], b["rollout_id"]), (ev, sr, rollout_id), b)
                self.assertEqual((b["console_url"], b["review_url"]), (console, console + "/review"), b)
                self.assertTrue(b["summary"].startswith(f"SR {sr} ({self.system_name}): "), b)
        started = raw["rollout_started"][0]
        self.assertEqual((started["counts"]["total"], started["tiers"], started["status"]), (4, 3, "DEPLOYING"))
        self.assertEqual(started["tier_sizes"], [{"tier": 1, "total": 1}, {"tier": 2, "total": 2},
                                                 {"tier": 3, "total": 1}])
        by_tier = {b["tier"]: b for b in raw["tier_finished"]}
        self.assertEqual(sorted(b["tier"] for b in raw["tier_finished"]), [1, 2])
        # the store's outbox holds every notice queued: no tier_finished for tier 3, all delivered
        rows = self.wait_for("every outbox row delivered", lambda: (lambda rs: rs if len(rs) >= 10 and all(
            r["delivered_ms"] for r in rs) else None)(self.q("SELECT event, delivered_ms FROM outbox WHERE sr_id = ?",
                                                            sr)), 60)
        self.assertEqual(sorted(r["event"] for r in rows),
                         sorted(2 * ["rollout_started", "tier_finished", "tier_finished", "gate_tripped",
                                     "deployment_failed"]), rows)
        self.assertTrue(all(r["delivered_ms"] for r in rows), rows)
        self.assertEqual(by_tier[1]["counts"], {"total": 1, "deployed": 1, "failed": 0, "not_started": 0})
        self.assertEqual(by_tier[2]["counts"], {"total": 2, "deployed": 1, "failed": 1, "not_started": 0})
        gate = raw["gate_tripped"][0]
        self.assertEqual(gate["tier"], 2, gate)
        self.assertIn("safety gate: tier 2 failure rate", gate["reason"])
        self.assertEqual(gate["counts"]["failed"], 1, gate)
        self.assertIn("tripped the gate", gate["summary"])
        # Order per webhook: rollout_started first, deployment_failed last.
        seq = [d["headers"]["x-guardia-event"] for d in sorted(of("/raw"),
                                                                key=lambda d: d["body"]["ts_ms"])]
        self.assertEqual((seq[0], seq[-1]), ("rollout_started", "deployment_failed"), seq)

        # The Slack template rendered: text and blocks, with the review link.
        for d in of("/slack"):
            b = d["body"]
            self.assertIn(f"<{console}/review|Open in Guardia>", b["text"], b)
            self.assertEqual([x["type"] for x in b["blocks"]], ["section", "context", "actions"], b)
            self.assertEqual([e["url"] for e in b["blocks"][2]["elements"]], [console, console + "/review"], b)
            self.assertNotIn("{{", d["raw"].decode())

        # The secrets are nowhere in the store (a dump and the raw files) nor in the log.
        dump = subprocess.run(["sqlite3", f"file:{self.db}?mode=ro", ".dump"], capture_output=True, timeout=60)
        self.assertEqual(dump.returncode, 0, dump.stderr)
        self.assertIn(sr.encode(), dump.stdout)
        self.assertIn(b"outbox", dump.stdout)
        for key in (slack_key, raw_key):
            self.assertNotIn(key, dump.stdout)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.db + suffix):
                    with open(self.db + suffix, "rb") as f:
                        self.assertNotIn(key, f.read(), suffix)
            self.assertNotIn(key.decode(), self.svc.log(100000))

    def start_refused(self, name, conf):
        """`guardia serve` with configuration `conf` (written as `name`), expected to refuse to
        start: its completed process (the token file and state directory are set up first)."""
        if not os.path.exists(self.path("token")):
            fd = os.open(self.path("token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        path = self.write_json(name, conf)
        return subprocess.run([GUARDIA, "serve", "--config", path], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)

    def test_a_secret_file_readable_by_others_is_refused_at_start(self):
        loose = self.secret_file("loose.secret", b"whsec-" + secrets.token_hex(16).encode(), mode=0o644)
        conf = self.messenger_config(self.secret_file("slack.secret", b"whsec-ok-" + secrets.token_hex(8).encode()),
                                     loose)
        r = self.start_refused("guardia.json", conf)
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("notifications.webhooks[1].secret_file: secret file " + loose +
                      ": readable by group or others", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_a_url_file_readable_by_others_is_refused_at_start_without_quoting_it(self):
        """Webhook URLs are credentials: a url_file must be 0600/0400 (and owned by the service's
        user or root); a looser one stops the start naming the field and the file, never the URL."""
        hook_url = self.receiver.url("/hooks/T000/B000/" + secrets.token_hex(12))
        conf = self.messenger_config(self.secret_file("slack.secret", b"whsec-ok-" + secrets.token_hex(8).encode()),
                                     self.secret_file("raw.secret", b"whsec-raw-" + secrets.token_hex(8).encode()))
        loose = self.secret_file("loose.url", hook_url.encode(), mode=0o644)
        conf["notifications"]["webhooks"][1]["url_file"] = loose
        r = self.start_refused("guardia.json", conf)
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("notifications.webhooks[1].url_file: url file " + loose +
                      ": readable by group or others", r.stderr)
        self.assertNotIn("B000", r.stderr)
        self.assertEqual(r.stdout, "")
        # url and url_file together: refused by name.
        conf["notifications"]["webhooks"][1]["url"] = hook_url
        r = self.start_refused("guardia2.json", conf)
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("notifications.webhooks[1].url_file: give url or url_file, not both", r.stderr)


load_tests = own_tests(MessengerEventsTest)

if __name__ == "__main__":
    main()
