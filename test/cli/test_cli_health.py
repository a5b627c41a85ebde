#!/usr/bin/env python3
"""Health check types for `guardia deploy`: https (CA file, system store, insecure_skip_verify,
tls_server_name), expect_status, body_contains, tcp and command.

The same harness as test_cli.py (imported: its fleet helpers and node assertions), on a fleet
of its own (fixture cli_health_fleet, test/cli/CMakeLists.txt) whose health endpoints speak
HTTPS with a certificate for 127.0.0.1 signed by a CA made for the fleet (`fleet up
--health-tls`: DIR/tls/ca.pem, not in the system trust store). One rollout runs every case
on its own node at once; each node's outcome, its files and sha256 on disk, and its audit
rows are asserted.
"""

import json
import os
import socket
import ssl
import unittest

import test_cli
from test_cli import config

NODES = [f"node-{i:04d}" for i in range(1, 12)]


class HealthTest(test_cli.CliTest):

    @classmethod
    def setUpClass(cls):
        kinds = cls.load_fleet("cli_health_fleet")
        if kinds != {n: [] for n in NODES} or not cls.info.get("health_tls"):
            raise AssertionError(f"the cli_health_fleet fixture is not what the tests expect: {kinds}, "
                                 f"health_tls={cls.info.get('health_tls')}")
        cls.health_ca = cls.info["health_tls"]["ca"]
        os.makedirs(test_cli.WORK_ROOT, exist_ok=True)
        os.chmod(test_cli.WORK_ROOT, 0o711)

    # ------------------------------------------------------------------ helpers
    def health(self, node, **fields):
        """node's health object from the fleet's inventory (https + ca_file), changed by
        `fields` (a value None removes the field)."""
        h = dict(self.inv[node]["health"], **fields)
        return {k: v for k, v in h.items() if v is not None}

    def closed_port(self):
        """A loopback port bound but not listening for the whole test: connects are refused."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.addCleanup(s.close)
        return s.getsockname()[1]

    def app_bin(self, arts):
        """Adds a new file, app.bin, to the artifacts (absent from every node's tree before)."""
        data = os.urandom(4096)
        p = os.path.join(os.path.dirname(arts["VERSION"][0]), "app.bin")
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, 0o644)
        arts["app.bin"] = (p, data)
        return arts

    def health_rows(self, rows, node, step="HEALTH"):
        return {r["event"]: r for r in self.node_events(rows, node, step=step)}

    # ================================================================== 1. bad health fields
    def test_1_invalid_health_fields_start_nothing(self):
        before = self.check("node-0001")
        arts = self.artifacts("inv")
        cases = [
            ("status out of range", {"expect_status": [200, 700]},
             "field 'health.expect_status[1]': must be a status from 100 to 599"),
            ("ca_file unreadable", {"ca_file": self.path("missing-ca.pem")},
             "field 'health.ca_file': cannot be read: No such file or directory"),
            ("unknown type", {"type": "icmp"},
             "field 'health.type': must be one of \"http\", \"https\", \"tcp\", \"command\", not 'icmp'"),
            ("insecure with a CA file", {"insecure_skip_verify": True},
             "field 'health.insecure_skip_verify': contradicts 'ca_file' (a CA file is only used to verify)"),
        ]
        for what, fields, message in cases:
            with self.subTest(what):
                inv = self.inventory({"node-0001": 2}, f"inv-{what.replace(' ', '-')}.json",
                                     node_0001={"health": self.health("node-0001", **fields)})
                db = f"audit-{what.replace(' ', '-')}.db"
                r = self.deploy(inv, arts, db=db)
                self.assertEqual(r.rc, 2, r)
                self.assertEqual(r.out, "", r)
                self.assertEqual(r.err, f"guardia deploy: {inv}: node 'node-0001': {message}\n", r)
                self.assertFalse(os.path.exists(self.path(db)), "nothing started: no audit DB")
        self.assert_untouched(before, self.check("node-0001"))

    # ================================================================== 2. every type at once
    def test_2_health_types(self):
        port = {n: self.inv[n]["health"]["port"] for n in NODES}
        dp = {n: self.inv[n]["deploy_path"] for n in NODES}
        closed = self.closed_port()
        overrides = {
            # https, the fleet's CA file, a range and a body check: deployed
            "node-0001": self.health("node-0001", expect_status=["200-299"], body_contains='"status": "UP"'),
            # https, system trust store only: the fleet's CA is not in it
            "node-0002": self.health("node-0002", ca_file=None),
            # https without verification, asked by name: deployed
            "node-0003": self.health("node-0003", ca_file=None, insecure_skip_verify=True),
            # a status the server does not answer
            "node-0004": self.health("node-0004", expect_status=[204]),
            # the old build's version only: the new build fails, the exact rollback passes
            "node-0005": self.health("node-0005", body_contains='"version": "v1"'),
            # tcp to the health port: deployed
            "node-0006": {"type": "tcp", "port": port["node-0006"], "timeout_s": 4, "interval_s": 1},
            # tcp to a closed port
            "node-0007": {"type": "tcp", "port": closed, "timeout_s": 4, "interval_s": 1},
            # a command on the node: the new file is there
            "node-0008": {"type": "command", "command": f"test -f {dp['node-0008']}/app.bin",
                          "timeout_s": 4, "interval_s": 1},
            # a command that fails on the new build, passes on the restored one
            "node-0009": {"type": "command", "command": f"test ! -f {dp['node-0009']}/app.bin",
                          "timeout_s": 4, "interval_s": 1},
            # a CA-verified certificate that does not name tls_server_name
            "node-0010": self.health("node-0010", tls_server_name="other.example"),
            # the name the certificate does carry: deployed
            "node-0011": self.health("node-0011", tls_server_name="127.0.0.1"),
        }
        inv = self.inventory({n: 2 for n in NODES},
                             **{n.replace("-", "_"): {"health": h} for n, h in overrides.items()})
        before = self.check(*NODES)
        arts = self.app_bin(self.artifacts("types"))
        r = self.deploy(inv, arts, conf=config(threshold=100))
        self.assertEqual(r.rc, 1, r)
        rep = r.json
        self.assertEqual(rep["status"], "FAILED", r)
        nodes = self.by_name(rep)
        after = self.check(*NODES)
        rows, _, results = self.audit()

        deployed = ["node-0001", "node-0003", "node-0006", "node-0008", "node-0011"]
        rolled_back = ["node-0005", "node-0009"]
        # The same check fails again on the restored build: files restored, rollback unverified.
        unverified = ["node-0002", "node-0004", "node-0007", "node-0010"]
        self.assertEqual({n: nodes[n]["outcome"] for n in NODES},
                         {**{n: "DEPLOYED" for n in deployed}, **{n: "ROLLED_BACK" for n in rolled_back},
                          **{n: "ROLLBACK_FAILED" for n in unverified}}, r)
        self.assertEqual(rep["counts"], {"total": 11, "deployed": 5, "failed": 6, "not_started": 0})

        for n in deployed:
            self.assert_deployed(before[n], after[n], arts, nodes[n])
        for n in rolled_back:
            self.assert_restored(before[n], after[n], nodes[n])
        for n in rolled_back + unverified:
            with self.subTest(node=n):
                self.assertEqual((nodes[n]["step"], nodes[n]["failed_step"]), ("HEALTH", "HEALTH"))
                self.assertEqual(after[n]["tree_sha256"], before[n]["tree_sha256"], f"{n}: old files back")
                self.assertEqual(after[n]["files"], before[n]["files"], f"{n}: old files back")
                self.assertNotIn("app.bin", after[n]["files"])
                self.assertEqual(results[n]["step"], "HEALTH")
        for n in unverified:
            self.assertRegex(nodes[n]["rollback_error"], rf"^node '{n}': ROLLBACK_HEALTH: ")

        def error(n, target, last):
            self.assertRegex(nodes[n]["error"],
                             rf"^node '{n}': HEALTH: {n}: health check {target} not healthy after 4 s: "
                             rf"\d+ attempts, last: {last}$")

        url = {n: f"https://127.0.0.1:{port[n]}/health" for n in NODES}
        error("node-0002", url["node-0002"],
              "TLS handshake failed: certificate rejected: self-signed certificate in certificate chain")
        error("node-0004", url["node-0004"], r"HTTP 200 \(expected 204\)")
        error("node-0005", url["node-0005"], "HTTP 200 but the body does not contain '\"version\": \"v1\"'")
        error("node-0007", f"tcp://127.0.0.1:{closed}", "connection refused")
        error("node-0009", f"command 'test ! -f {dp['node-0009']}/app.bin'", "exit 1")
        error("node-0010", url["node-0010"],
              "TLS handshake failed: certificate rejected: hostname mismatch")

        # what the audit log says each check was
        def started(n, step="HEALTH"):
            return self.health_rows(rows, n, step)["STEP_START"]["detail"]

        self.assertEqual(started("node-0001"), url["node-0001"])
        self.assertEqual(started("node-0003"),
                         url["node-0003"] + " (TLS verification skipped: insecure_skip_verify)")
        self.assertEqual(started("node-0006"), f"tcp://127.0.0.1:{port['node-0006']}")
        self.assertEqual(started("node-0008"), f"command 'test -f {dp['node-0008']}/app.bin'")
        self.assertEqual(started("node-0009", "ROLLBACK_HEALTH"),
                         f"command 'test ! -f {dp['node-0009']}/app.bin'")
        ok = {n: self.health_rows(rows, n)["STEP_OK"]["exit_code"] for n in deployed}
        self.assertEqual(ok, {"node-0001": 200, "node-0003": 200, "node-0006": 0, "node-0008": 0,
                              "node-0011": 200})
        for n in rolled_back:
            self.assertIn("STEP_OK", self.health_rows(rows, n, "ROLLBACK_HEALTH"))
        self.assertIn("insecure_skip_verify", r.err)

        # the server really answers only over TLS, with the fleet's certificate
        self.assertEqual(test_cli.http_get(port["node-0001"], cafile=self.health_ca)[0], 200)
        with self.assertRaises(ssl.SSLCertVerificationError):
            ctx = ssl.create_default_context()
            with socket.create_connection(("127.0.0.1", port["node-0002"]), timeout=5) as s:
                ctx.wrap_socket(s, server_hostname="127.0.0.1")


# Only HealthTest's own tests (it inherits test_cli's harness, not its tests).
load_tests = test_cli.own_tests(HealthTest)


if __name__ == "__main__":
    unittest.main(verbosity=2)
