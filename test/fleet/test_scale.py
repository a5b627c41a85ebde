"""200 nodes: up and down timed, every health endpoint answers, SSH to several nodes,
and nothing is left after down."""

import concurrent.futures
import json
import os
import sys
import time

from fleetutil import FleetTestCase, fleet, http_get, leaks, ssh

UP_LIMIT_S = float(os.environ.get("FLEET_TEST_UP_LIMIT_S", "30"))


class ScaleFleet(FleetTestCase):
    NODES = 200

    def test_1_up_was_fast(self):
        print(f"\n  fleet up of {self.NODES} nodes took {self.up_seconds:.2f} s", file=sys.stderr)
        self.assertLess(self.up_seconds, UP_LIMIT_S)
        st = json.loads(fleet("status", "--dir", self.dir).stdout)
        self.assertTrue(st["ok"])
        self.assertEqual(len([p for p in st["processes"] if p["role"] == "sshd"]), 13)   # ceil(200/16)

    def test_2_all_health_endpoints(self):
        ports = [n["health"]["port"] for n in self.inv["nodes"]]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda p: http_get(p)[0], ports))
        self.assertEqual(statuses, [200] * self.NODES)

    def test_3_ssh_spread(self):
        names = ["node-0001", "node-0016", "node-0017", "node-0100", "node-0200"]
        for name in names:
            n = self.node(name)
            r = ssh(self.dir, n["ssh_port"], f"cat {n['deploy_path']}/VERSION")
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "v1"), f"{name}: {r.stderr}")

    def test_4_check_all(self):
        t = time.monotonic()
        report = json.loads(fleet("check", "--dir", self.dir).stdout)
        self.assertEqual(len(report["nodes"]), self.NODES)
        digests = {c["tree_sha256"] for c in report["nodes"].values()}
        self.assertEqual(len(digests), self.NODES, "each node's config names the node")
        self.assertLess(time.monotonic() - t, 20)

    def test_5_down_timed_and_clean(self):
        # down here (the class cleanup's down is then a no-op: proves idempotence too)
        from fleetutil import descendants
        snapshot = descendants([p["pid"] for p in self.info["processes"]])
        t = time.monotonic()
        r = fleet("down", "--dir", self.dir)
        took = time.monotonic() - t
        print(f"\n  fleet down of {self.NODES} nodes took {took:.2f} s", file=sys.stderr)
        self.assertIn("nothing left", r.stdout)
        self.assertEqual(leaks(self.dir, self.info["id"], snapshot), [])
        self.assertLess(took, 20)
