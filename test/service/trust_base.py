"""Shared base of the trust-boundary suites (test_trust_*.py): the harness of test_serve.py
(a real `guardia serve` per test, driven over HTTP, outcomes read from the nodes and the
store) on a fleet of its own, the trust_fleet fixture of test/service/CMakeLists.txt.

Layout (checked in setUpClass; change both together):
  node-0001..0020  healthy
  node-0021..0022  health_slow:10 (503 STARTING for 10 s after each start: keeps a rollout running)
  node-0023..0024  rejects_new_build (every new build fails health; an exact rollback heals them)
Each suite owns its nodes, so the suites can run in parallel:
  test_trust_approvals.py  node-0001..0010, node-0021, node-0023
  test_trust_inputs.py     node-0011..0016
  test_trust_http.py       node-0017..0020, node-0022, node-0024
"""

import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import test_serve  # noqa: E402  (reads GUARDIA_TEST_FLEET_SERVE / GUARDIA_SERVE_WORK)
from test_serve import ServeTest, FLEET_DIR, GUARDIA, WORK_ROOT  # noqa: E402,F401

TRUST_HEALTHY = [f"node-{i:04d}" for i in range(1, 21)]
TRUST_SLOW = ["node-0021", "node-0022"]
TRUST_REJECT = ["node-0023", "node-0024"]


class TrustBase(ServeTest):
    """ServeTest's plumbing; only the tests a subclass defines itself are run (load_tests)."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("the trust tests need root (the fleet's client key and node files are root-only)")
        if not FLEET_DIR or not os.path.exists(os.path.join(FLEET_DIR, "fleet.json")):
            raise AssertionError(f"no fleet at GUARDIA_TEST_FLEET_SERVE={FLEET_DIR!r} (fixture trust_fleet)")
        if not os.access(GUARDIA, os.X_OK):
            raise AssertionError(f"guardia binary not found: {GUARDIA}")
        with open(os.path.join(FLEET_DIR, "fleet.json")) as f:
            cls.info = json.load(f)
        with open(os.path.join(FLEET_DIR, "inventory.json")) as f:
            cls.inv = {n["name"]: n for n in json.load(f)["nodes"]}
        cls.fnodes = {n["name"]: n for n in cls.info["nodes"]}
        cls.known_hosts = os.path.join(FLEET_DIR, "known_hosts")
        kinds = {name: [x["kind"] for x in n["faults"]] for name, n in cls.fnodes.items()}
        want = {**{n: [] for n in TRUST_HEALTHY}, **{n: ["health_slow"] for n in TRUST_SLOW},
                **{n: ["rejects_new_build"] for n in TRUST_REJECT}}
        if kinds != want:
            raise AssertionError(f"the trust_fleet fixture is not what the tests expect: {kinds}")
        os.makedirs(WORK_ROOT, exist_ok=True)
        os.chmod(WORK_ROOT, 0o711)


def own_tests(cls):
    """A load_tests() for a suite module: only the test_* methods `cls` defines itself."""
    def load_tests(loader, tests, pattern):
        suite = unittest.TestSuite()
        for name in sorted(cls.__dict__):
            if name.startswith("test_"):
                suite.addTest(cls(name))
        return suite
    return load_tests


def main():
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(test_serve.cleanup())
    unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
