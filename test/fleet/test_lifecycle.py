"""up/down life cycle: idempotent down, reuse, refusals, failed and crashed ups, port
collisions, signals, concurrent fleets. Every test checks that nothing is left."""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from fleetutil import FLEET, descendants, fleet, leaks, load, ssh


class Lifecycle(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="guardia-fleet-life-")
        os.chmod(self.work, 0o711)
        self.addCleanup(shutil.rmtree, self.work, ignore_errors=True)
        self.dirs = []

    def new_dir(self, name="fleet"):
        d = os.path.join(self.work, name)
        self.dirs.append(d)
        self.addCleanup(self.cleanup, d)          # runs even if the test fails midway
        return d

    def cleanup(self, d):
        fid = None
        for f in ("fleet.json", ".guardia-fleet"):
            if os.path.exists(os.path.join(d, f)):
                fid = load(d, f).get("id")
                break
        r = fleet("down", "--dir", d, check=False)
        left = leaks(d, fid)
        self.assertEqual((r.returncode, left), (0, []), r.stderr)

    def assert_clean(self, d, snapshot=()):
        fid = None
        for f in ("fleet.json", ".guardia-fleet"):
            if os.path.exists(os.path.join(d, f)):
                fid = load(d, f).get("id")
                break
        self.assertEqual(leaks(d, fid, snapshot), [])

    # ------------------------------------------------------------------ down
    def test_down_is_idempotent(self):
        d = self.new_dir()
        r = fleet("down", "--dir", d)
        self.assertIn("does not exist", r.stdout)
        fleet("up", "--dir", d, "--nodes", "3", "--fault", "2:disk_full")
        info = load(d, "fleet.json")
        snap = descendants([p["pid"] for p in info["processes"]])
        self.assertTrue(snap)
        fleet("down", "--dir", d)
        self.assert_clean(d, snap)
        r = fleet("down", "--dir", d)
        self.assertEqual(r.returncode, 0)
        st = fleet("status", "--dir", d, check=False)
        self.assertEqual(st.returncode, 1)
        self.assertEqual(json.loads(st.stdout)["state"], "down")

    def test_up_again_after_down_reuses_dir(self):
        d = self.new_dir()
        fleet("up", "--dir", d, "--nodes", "2")
        first = load(d, "fleet.json")["id"]
        fleet("down", "--dir", d)
        fleet("up", "--dir", d, "--nodes", "3")
        info = load(d, "fleet.json")
        self.assertNotEqual(info["id"], first)
        self.assertEqual(len(info["nodes"]), 3)
        n = info["nodes"][2]
        r = ssh(d, n["ssh_port"], "true")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_up_refuses_foreign_non_empty_dir(self):
        d = self.new_dir()
        os.makedirs(d)
        with open(os.path.join(d, "precious"), "w") as f:
            f.write("keep me")
        r = fleet("up", "--dir", d, "--nodes", "1", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not empty", r.stderr)
        self.assertEqual(os.listdir(d), ["precious"])

    def test_bad_arguments_are_clear(self):
        d = self.new_dir()
        for args, msg in ((["--fault", "9:startup_fails"], "unknown node"),
                          (["--fault", "1:nosuchfault"], "unknown fault kind"),
                          (["--fault", "1:cut_after_bytes"], "'bytes' is required"),
                          (["--tiers", "1,1"], "add up to 2"),
                          (["--sshd-option", "ListenAddress 0.0.0.0"], "managed by the fleet")):
            r = fleet("up", "--dir", d, "--nodes", "3", *args, check=False)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn(msg, r.stderr, args)
            self.assertFalse(os.path.exists(d), "nothing created for bad arguments")

    # ------------------------------------------------------------------ failures
    def test_failed_up_cleans_up_itself(self):
        d = self.new_dir()
        r = fleet("up", "--dir", d, "--nodes", "20", "--fault", "3:disk_full",
                  "--sshd-option", "MaxSessions notanumber", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("sshd", r.stderr)
        self.assertIn("MaxSessions", r.stderr, "the sshd log tail explains the failure")
        self.assert_clean(d)
        state = load(d, ".guardia-fleet")
        self.assertEqual(state["state"], "down")
        self.assertTrue(state["last_error"])

    def test_crashed_up_is_cleaned_by_down(self):
        d = self.new_dir()
        r = fleet("up", "--dir", d, "--nodes", "40", "--fault", "2:disk_full",
                  check=False, env={"GUARDIA_FLEET_TEST_CRASH": "after_start"})
        self.assertEqual(r.returncode, 1)
        fid = load(d, ".guardia-fleet")["id"]
        self.assertTrue(leaks(d, fid), "the crash left sshds and a tmpfs behind")
        r = fleet("down", "--dir", d)
        self.assertIn("nothing left", r.stdout)
        self.assert_clean(d)

    def test_sigkill_of_up_then_down(self):
        d = self.new_dir()
        p = subprocess.Popen([FLEET, "up", "--dir", d, "--nodes", "300", "--fault", "5:disk_full"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.4)
        p.kill()
        p.wait()
        fleet("down", "--dir", d)
        self.assert_clean(d)
        time.sleep(1.0)
        self.assert_clean(d)          # nothing came back after down

    def test_sigterm_of_up_cleans_up(self):
        d = self.new_dir()
        p = subprocess.Popen([FLEET, "up", "--dir", d, "--nodes", "300", "--fault", "5:disk_full"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.4)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:         # it was already done: then it must be a working fleet
            self.assertTrue(json.loads(fleet("status", "--dir", d).stdout)["ok"])
            return
        self.assertIn("interrupted", err)
        self.assert_clean(d)

    # ------------------------------------------------------------------ ports
    def test_port_taken_meanwhile_is_retried(self):
        d = self.new_dir()
        fleet("up", "--dir", d, "--nodes", "4", env={"GUARDIA_FLEET_TEST_STEAL_PORTS": "3"})
        with open(os.path.join(d, "run", "server.log")) as f:
            self.assertIn("were taken meanwhile", f.read())
        for n in load(d, "fleet.json")["nodes"]:
            r = ssh(d, n["ssh_port"], "true")
            self.assertEqual(r.returncode, 0, f"{n['name']}: {r.stderr}")

    def test_concurrent_fleets(self):
        dirs = [self.new_dir(f"fleet{i}") for i in range(2)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda d: fleet("up", "--dir", d, "--nodes", "100"), dirs))
        infos = [load(d, "fleet.json") for d in dirs]
        ports = [set(x for n in i["nodes"] for x in (n["ssh_port"], n["health_port"])) for i in infos]
        self.assertFalse(ports[0] & ports[1])
        for d, info in zip(dirs, infos):
            n = info["nodes"][-1]
            r = ssh(d, n["ssh_port"], "true")
            self.assertEqual(r.returncode, 0, r.stderr)
        with open(dirs[0] + "/password") as a, open(dirs[1] + "/password") as b:
            self.assertEqual(a.read(), b.read(), "the password is per machine, not per run")
        fleet("down", "--dir", dirs[0])
        self.assertTrue(json.loads(fleet("status", "--dir", dirs[1]).stdout)["ok"], "the other fleet lives on")
