#!/usr/bin/env python3
"""Run one fleet test module (ctest entry point).

Exits 77 (ctest: skipped) when the fleet cannot run here: not root, or no OpenSSH.
"""

import os
import shutil
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    module = sys.argv[1]
    if os.geteuid() != 0:
        print("SKIP: the fleet tests need root (sshd, useradd, tmpfs mounts)")
        return 77
    if not os.path.exists("/usr/sbin/sshd") or not shutil.which("ssh"):
        print("SKIP: openssh-server / openssh-client not installed")
        return 77
    prog = unittest.main(module=module, argv=[sys.argv[0], "-v"], exit=False)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
