#!/usr/bin/env python3
"""Run one fleet test module (ctest entry point), or clean up after one.

  run.py MODULE            run test/fleet/MODULE.py (unittest, verbose)
  run.py --cleanup MODULE  take down everything left below FLEET_TEST_ROOT/MODULE
                           (ctest runs this as fleet.MODULE.cleanup, a FIXTURES_CLEANUP
                           test, also when the module was killed by a timeout)

The tests need root (sshd, useradd, tmpfs mounts): without root, or without OpenSSH, they
FAIL with exit 1 on purpose. A skip would hide that the fleet is untested.
"""

import os
import shutil
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fleetutil  # noqa: E402


def cleanup(module):
    fleetutil.set_module(module)
    problems = fleetutil.cleanup_root(fleetutil.module_root())
    for p in problems:
        print(f"fleet cleanup {module}: {p}", file=sys.stderr)
    return 1 if problems else 0


def main():
    if os.geteuid() != 0:
        print("FAIL: the fleet tests need root (sshd, useradd, tmpfs mounts): run them as root or with sudo",
              file=sys.stderr)
        return 1
    if not os.path.exists("/usr/sbin/sshd") or not shutil.which("ssh"):
        print("FAIL: openssh-server / openssh-client not installed", file=sys.stderr)
        return 1
    if sys.argv[1] == "--cleanup":
        return cleanup(sys.argv[2])
    module = sys.argv[1]
    fleetutil.set_module(module)
    root = fleetutil.module_root()
    # leftovers of an earlier run that was killed before its cleanup could run
    for p in fleetutil.cleanup_root(root):
        print(f"fleet tests: left by an earlier run, cleaned now: {p}", file=sys.stderr)
    try:
        prog = unittest.main(module=module, argv=[sys.argv[0], "-v"], exit=False)
        ok = prog.result.wasSuccessful()
    finally:
        problems = fleetutil.cleanup_root(root)
    for p in problems:
        print(f"LEAK after {module}: {p}", file=sys.stderr)
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
