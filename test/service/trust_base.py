"""Shared base of the trust-boundary suites (test_trust_*.py): the harness of test_serve.py
(a real `guardia serve` per test, driven over HTTP, outcomes read from the nodes and the
store) on a fleet of its own, the trust_fleet fixture of test/service/CMakeLists.txt.

Layout (checked in setUpClass; change both together):
  node-0001..0020  healthy
  node-0021..0022  health_slow:10 (503 STARTING for 10 s after each start: keeps a rollout running)
  node-0023..0024  rejects_new_build (every new build fails health; an exact rollback heals them)
  node-0025        health_slow:10; node-0026 healthy
Each suite owns its nodes, so the suites can run in parallel:
  test_trust_approvals.py  node-0001..0010, node-0021, node-0023
  test_trust_inputs.py     node-0011..0016
  test_trust_http.py       node-0017..0020, node-0022, node-0024
  test_trust_store.py      node-0025, node-0026
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import test_serve  # noqa: E402  (reads GUARDIA_TEST_FLEET_SERVE / GUARDIA_SERVE_WORK)
from test_serve import ServeTest, FLEET_DIR, GUARDIA, WORK_ROOT  # noqa: E402,F401  (re-exported to the suites)

TRUST_HEALTHY = [f"node-{i:04d}" for i in range(1, 21)]
TRUST_SLOW = ["node-0021", "node-0022", "node-0025"]
TRUST_REJECT = ["node-0023", "node-0024"]
TRUST_STORE_HEALTHY = ["node-0026"]


class TrustBase(ServeTest):
    """ServeTest's plumbing on the trust_fleet; only the tests a subclass defines itself are run
    (load_tests)."""
    FIXTURE = "trust_fleet"

    @classmethod
    def expected_faults(cls):
        return {**{n: [] for n in TRUST_HEALTHY + TRUST_STORE_HEALTHY},
                **{n: ["health_slow"] for n in TRUST_SLOW},
                **{n: ["rejects_new_build"] for n in TRUST_REJECT}}


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
