"""up/down life cycle: idempotent down, reuse, refusals, failed and crashed ups, port
collisions, signals, concurrent fleets, and what `down` must never touch. Every test checks
that nothing is left."""

import concurrent.futures
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import unittest

from fleetutil import (FLEET, USER, alive, descendants, down_and_check_leaks, fleet, is_mounted, leaks, load,
                       mount_test_tmpfs, spawn_helper, ssh, stop_helper, umount, work_dir)


class Lifecycle(unittest.TestCase):
    def setUp(self):
        self.work = work_dir("life-")
        self.addCleanup(shutil.rmtree, self.work, ignore_errors=True)
        self.dirs = []

    def new_dir(self, name="fleet"):
        d = os.path.join(self.work, name)
        self.dirs.append(d)
        self.addCleanup(self.cleanup, d)          # runs even if the test fails midway
        return d

    def cleanup(self, d):
        # down, then force away (kill/unmount) anything still there, then fail if anything was
        self.assertEqual(down_and_check_leaks(d), "")

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
        # DIR/run/ appears once `up` handles SIGTERM (signals are held pending until then): a
        # fixed sleep raced Python's start-up under load and killed it before it could clean up
        deadline = time.monotonic() + 60
        while not os.path.isdir(os.path.join(d, "run")) and p.poll() is None:
            self.assertLess(time.monotonic(), deadline, "fleet up never created DIR/run")
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:         # it was already done: then it must be a working fleet
            self.assertTrue(json.loads(fleet("status", "--dir", d).stdout)["ok"])
            return
        self.assertIn("interrupted", err)
        self.assert_clean(d)

    def test_sigterm_crossing_the_ready_report_takes_it_down(self):
        # A stop signal that reaches `up` just as the supervisor reported the fleet ready was
        # forwarded to a supervisor already serving, which it killed: `up` used to exit 0 with
        # the health server dead. Now it takes the fleet down and says it was interrupted.
        d = self.new_dir()
        r = subprocess.run([FLEET, "up", "--dir", d, "--nodes", "3"], capture_output=True, text=True,
                           env=dict(os.environ, GUARDIA_FLEET_TEST_SIGNAL_AT_READY="1"), timeout=120)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("interrupted", r.stderr)
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

    def test_concurrent_up_on_same_new_dir(self):
        d = self.new_dir()
        # the first `up` holds DIR's lock for 2 s right after claiming it (test hook)
        first = subprocess.Popen([FLEET, "up", "--dir", d, "--nodes", "2"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env=os.environ | {"GUARDIA_FLEET_TEST_HOLD_LOCK": "2"})
        self.addCleanup(lambda: first.poll() is None and first.kill())
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(d, ".guardia-fleet")) and time.monotonic() < deadline:
            time.sleep(0.02)
        second = fleet("up", "--dir", d, "--nodes", "3", check=False)
        self.assertEqual(second.returncode, 1)
        self.assertIn("another `fleet up` is running", second.stderr)
        out, err = first.communicate(timeout=120)
        self.assertEqual(first.returncode, 0, err)
        info = load(d, "fleet.json")
        self.assertEqual(len(info["nodes"]), 2, "the second up changed nothing")
        self.assertEqual(ssh(d, info["nodes"][1]["ssh_port"], "true").returncode, 0)
        # and without the hook: two ups racing on a new DIR, exactly one wins
        d2 = self.new_dir("race")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            rs = list(pool.map(lambda n: fleet("up", "--dir", d2, "--nodes", str(n), check=False), (2, 3)))
        self.assertEqual(sorted(r.returncode for r in rs), [0, 1], [r.stderr for r in rs])
        loser = [r for r in rs if r.returncode][0]
        self.assertRegex(loser.stderr, "another `fleet up` is running|already holds a fleet")
        self.assertTrue(json.loads(fleet("status", "--dir", d2).stdout)["ok"])

    # ------------------------------------------------------------------ what down must never touch
    def plant(self, victim):
        """Things that looked like a fleet's to the old `down`: a tmpfs made by the test on
        victim/nodes/node-0001 (recorded in victim/run/mounts), a fleet-user process whose
        command line names victim/, and an "sshd" whose command line has `-f victim/sshd/`.
        Returns (mount point, [helper Popen])."""
        mp = os.path.join(victim, "nodes", "node-0001")
        mount_test_tmpfs(mp)
        self.addCleanup(umount, mp)
        os.makedirs(os.path.join(victim, "run"), exist_ok=True)
        with open(os.path.join(victim, "run", "mounts"), "w") as f:
            f.write(mp + "\n" + victim + "\n")
        pw = pwd.getpwnam(USER)
        user_proc = spawn_helper(["sh", "-c", "sleep 600", os.path.join(victim, "x")], cwd="/",
                                 user=pw.pw_uid, group=pw.pw_gid)
        fake_sshd = os.path.join(self.work, "sshd")
        with open(fake_sshd, "w") as f:
            f.write("#!/bin/sh\nsleep 600\n:\n")
        os.chmod(fake_sshd, 0o755)
        sshd_proc = spawn_helper([fake_sshd, "-D", "-f", os.path.join(victim, "sshd", "sshd-000.conf")], cwd="/")
        for p in (user_proc, sshd_proc):
            self.addCleanup(stop_helper, p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{sshd_proc.pid}/comm") as f:
                if f.read().strip() == "sshd":
                    break
            time.sleep(0.02)
        return mp, [user_proc, sshd_proc]

    def assert_untouched(self, mp, procs):
        self.assertTrue(is_mounted(mp), f"{mp} was unmounted")
        for p in procs:
            self.assertTrue(alive(p.pid), f"helper {p.args} was killed")
            self.assertIsNone(p.poll())

    def test_down_refuses_root(self):
        victim = os.path.join(self.work, "victim")
        mp, procs = self.plant(victim)
        for d in ("/", "//", "/tmp", "/tmp/..", "/home", "/usr/lib", "/etc/guardia-fleet", "/proc/1"):
            r = fleet("down", "--dir", d, check=False)
            self.assertEqual(r.returncode, 1, f"down --dir {d}: {r.stdout} {r.stderr}")
            self.assertIn("refusing", r.stderr, d)
            self.assertNotIn("stopped", r.stdout, d)
        self.assert_untouched(mp, procs)
        self.assertTrue(os.path.exists(os.path.join(victim, "run", "mounts")))
        # up refuses such directories as well
        r = fleet("up", "--dir", "/srv", "--nodes", "1", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("refusing", r.stderr)

    def test_down_refuses_non_fleet_dir(self):
        victim = os.path.join(self.work, "victim")
        mp, procs = self.plant(victim)
        with open(os.path.join(mp, "precious"), "w") as f:
            f.write("keep me")
        for args in ((), ("--purge",)):
            r = fleet("down", "--dir", victim, *args, check=False)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("holds no fleet", r.stderr)
            self.assertIn("refusing", r.stderr)
        # a state file that is not a fleet's: no id, or written for another directory
        for bad in ({"state": "up"}, {"id": "0123456789abcdef", "dir": "/tmp/elsewhere"}):
            with open(os.path.join(victim, ".guardia-fleet"), "w") as f:
                json.dump(bad, f)
            r = fleet("down", "--dir", victim, "--purge", check=False)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("refusing", r.stderr)
        self.assert_untouched(mp, procs)
        with open(os.path.join(mp, "precious")) as f:
            self.assertEqual(f.read(), "keep me")

    def test_down_takes_only_what_is_the_fleets(self):
        # DIR itself is a mount point (the test's), a foreign tmpfs sits inside DIR, and
        # DIR/run/mounts was tampered with: down unmounts only the fleet's node tmpfs
        d = os.path.join(self.work, "fleet")
        mount_test_tmpfs(d, "32m")
        self.addCleanup(umount, d)           # registered first: runs after the fleet's cleanup
        self.assertEqual(self.new_dir(), d)
        fleet("up", "--dir", d, "--nodes", "3", "--fault", "2:disk_full")
        info = load(d, "fleet.json")
        node_mount = info["mounts"][0]
        extra = os.path.join(d, "extra")
        mount_test_tmpfs(extra)
        self.addCleanup(umount, extra)
        with open(os.path.join(d, "run", "mounts"), "a") as f:
            f.write(f"{d}\n{extra}\n{d}/nodes\n")
        pw = pwd.getpwnam(USER)
        bystander = spawn_helper(["sh", "-c", "sleep 600", os.path.join(d, "x")], cwd="/",
                                 user=pw.pw_uid, group=pw.pw_gid)
        self.addCleanup(stop_helper, bystander)
        snap = descendants([p["pid"] for p in info["processes"]])
        r = fleet("down", "--dir", d, check=False)
        self.assertEqual(r.returncode, 1, "a foreign mount inside DIR is reported")
        self.assertIn(f"still mounted: {extra}", r.stderr)
        self.assertFalse(is_mounted(node_mount), "the fleet's tmpfs is unmounted")
        self.assertTrue(is_mounted(d), "DIR itself is never unmounted")
        self.assertTrue(is_mounted(extra), "a mount the fleet did not make is left alone")
        self.assertTrue(alive(bystander.pid), "a process merely naming DIR is not the fleet's")
        self.assertFalse([pid for pid, st in snap if alive(pid, st)], "every fleet process is gone")
        stop_helper(bystander)
        umount(extra)
        r = fleet("down", "--dir", d, "--purge")
        self.assertIn("directory removed", r.stdout)
        self.assertTrue(is_mounted(d))
        self.assertEqual(os.listdir(d), [], "purge emptied DIR but kept the mount point")

