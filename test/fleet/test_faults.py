"""One small fleet with every fault kind; each test proves a fault (or a normal behaviour)
with real tools: ssh, sftp, ssh-keyscan, df, HTTP. Plus the cut proxy alone, in front of a
counting server the test owns."""

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

from fleetutil import (FLEET, USER, FleetTestCase, alive, fleet, http_get, load, marked_processes, refused, ssh,
                       ssh_cmd, ssh_password, work_dir)

CUT_BYTES = 200000
SLOW_RATE = 131072
HEALTH_SLOW_S = 3.0


class FaultFleet(FleetTestCase):
    NODES = 16

    @classmethod
    def up_args(cls):
        faults_file = os.path.join(cls.work, "faults.json")
        with open(faults_file, "w") as f:
            json.dump({"node-0012": [{"kind": "cut_after_bytes", "bytes": CUT_BYTES}],
                       "node-0016": [{"kind": "sshd_option", "option": "Banner /etc/hostname"},
                                     {"kind": "sshd_option", "option": "MaxSessions 1"},
                                     {"kind": "rejects_new_build"}]}, f)
        return ("--faults", faults_file, "--tiers", "1,5,*",
                "--fault", "node-0002:wrong_host_key", "--fault", "3:auth_refused",
                "--fault", "4:unreachable", "--fault", "5:unreachable:timeout",
                "--fault", "6:disk_full", "--fault", "7:startup_fails:3",
                "--fault", "8:health_never", "--fault", "9:health_never:hang",
                "--fault", f"10:health_slow:{HEALTH_SLOW_S}", "--fault", "11:health_flapping:2",
                "--fault", f"13:slow_link:rate={SLOW_RATE},delay_ms=100",
                "--fault", "14:shutdown_hangs")

    # ---------------------------------------------------------------- helpers
    def port(self, name):
        return self.node(name)["ssh_port"]

    def hport(self, name):
        return self.node(name)["health_port"]

    def run_ok(self, name, command, **kw):
        r = ssh(self.dir, self.port(name), command, **kw)
        self.assertEqual(r.returncode, 0, f"{name}: {command}: {r.stderr}")
        return r.stdout

    def wait_health(self, name, want, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            status, body = http_get(self.hport(name))
            if status == want or time.monotonic() > deadline:
                return status, body
            time.sleep(0.1)

    # ---------------------------------------------------------------- outputs
    def test_inventory_format(self):
        nodes = self.inv["nodes"]
        self.assertEqual(len(nodes), 16)
        want = {"name", "host", "ssh_port", "user", "auth", "deploy_path", "tier", "inst_id", "system_name",
                "requires_restart", "shutdown_cmd", "startup_cmd", "health"}
        for n in nodes:
            self.assertEqual(set(n), want)
            self.assertEqual(n["host"], "127.0.0.1")
            self.assertEqual(n["user"], USER)
            self.assertEqual(n["auth"], {"key_file": os.path.join(self.dir, "client_key")})
            self.assertTrue(os.path.isabs(n["deploy_path"]) and os.path.isdir(n["deploy_path"]))
            self.assertEqual(set(n["health"]), {"port", "path", "timeout_s", "interval_s"})
            self.assertEqual(n["health"]["path"], "/health")
            self.assertTrue(n["startup_cmd"].startswith("sh /"))
        self.assertEqual(nodes[0]["name"], "node-0001")
        self.assertEqual([n["tier"] for n in nodes], [1] + [2] * 5 + [3] * 10)
        ports = [n["ssh_port"] for n in nodes] + [n["health"]["port"] for n in nodes]
        self.assertEqual(len(ports), len(set(ports)), "every port is distinct")

    def test_files_and_modes(self):
        d = self.dir
        self.assertEqual(os.stat(d).st_mode & 0o777, 0o755)
        for key in ("client_key", "client_key_ecdsa", "client_key_rsa", "client_key_other", "password"):
            self.assertEqual(os.stat(os.path.join(d, key)).st_mode & 0o777, 0o600, key)
        for key, kind in (("client_key", "ssh-ed25519"), ("client_key_ecdsa", "ecdsa-sha2-nistp256"),
                          ("client_key_rsa", "ssh-rsa"), ("client_key_other", "ssh-ed25519")):
            with open(os.path.join(d, key + ".pub")) as f:
                self.assertTrue(f.read().startswith(kind + " "), key)
        r = subprocess.run(["ssh-keygen", "-l", "-f", os.path.join(d, "client_key_rsa.pub")],
                           capture_output=True, text=True)
        self.assertTrue(r.stdout.startswith("3072 "), r.stdout)
        with open(os.path.join(d, "known_hosts")) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 16)
        for line, n in zip(lines, self.inv["nodes"]):
            self.assertRegex(line, rf"^\[127\.0\.0\.1\]:{n['ssh_port']} ssh-ed25519 AAAA\S+$")
        with open(os.path.join(d, "password")) as f:
            pw = f.read().strip()
        with open("/etc/guardia-fleet/password") as f:
            self.assertEqual(f.read().strip(), pw)
        info = self.info
        for k in ("id", "dir", "user", "password_file", "client_keys", "known_hosts", "inventory", "processes",
                  "mounts", "nodes", "host_key"):
            self.assertIn(k, info)
        self.assertEqual(info["mounts"], [self.node("node-0006")["node_dir"]])
        n12 = self.node("node-0012")
        self.assertNotEqual(n12["ssh_port"], n12["sshd_port"], "proxied node: public port != sshd port")
        self.assertEqual(self.node("node-0001")["ssh_port"], self.node("node-0001")["sshd_port"])
        # 14 reachable nodes: 13 on the shared host key (one sshd), 1 on the wrong key (its own sshd)
        self.assertEqual(len([p for p in info["processes"] if p["role"] == "sshd"]), 2)
        self.assertTrue(all(alive(p["pid"], p["starttime"]) for p in info["processes"]))

    def test_user(self):
        import pwd
        pw = pwd.getpwnam(USER)
        self.assertEqual(pw.pw_shell, "/bin/sh")
        self.assertNotEqual(pw.pw_uid, 0)
        self.assertTrue(os.path.isdir(pw.pw_dir))
        self.assertEqual(os.stat("/etc/guardia-fleet/password").st_mode & 0o777, 0o600)

    def test_status(self):
        r = fleet("status", "--dir", self.dir)
        st = json.loads(r.stdout)
        self.assertTrue(st["ok"])
        self.assertEqual(st["state"], "up")
        self.assertEqual(st["nodes"], 16)
        self.assertTrue(all(p["alive"] for p in st["processes"]))
        self.assertEqual(st["mounts"], [{"path": self.node("node-0006")["node_dir"], "mounted": True}])

    def test_second_up_refuses(self):
        r = fleet("up", "--dir", self.dir, "--nodes", "2", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already holds a fleet", r.stderr)
        self.assertTrue(json.loads(fleet("status", "--dir", self.dir).stdout)["ok"], "first fleet untouched")

    # ---------------------------------------------------------------- good node
    def test_good_node_key_logins(self):
        for key in ("client_key", "client_key_ecdsa", "client_key_rsa"):
            r = ssh(self.dir, self.port("node-0001"), "id -un; echo $0; pwd", key=key)
            self.assertEqual(r.returncode, 0, f"{key}: {r.stderr}")
            user, shell, home = r.stdout.split()
            self.assertEqual((user, shell), (USER, "sh"))
        r = ssh(self.dir, self.port("node-0001"), "true", key="client_key_other")
        self.assertEqual(r.returncode, 255)
        self.assertIn("Permission denied", r.stderr)

    def test_good_node_password_login(self):
        r = ssh_password(self.dir, self.port("node-0001"), "id -un", self.work)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), USER)

    def test_good_node_sftp(self):
        n = self.node("node-0001")
        src = os.path.join(self.work, "sftp-src")
        with open(src, "wb") as f:
            f.write(os.urandom(300000))
        dst = os.path.join(n["node_dir"], "staged.bin")
        back = os.path.join(self.work, "sftp-back")
        batch = os.path.join(self.work, "sftp-batch")
        with open(batch, "w") as f:
            f.write(f"put {src} {dst}\nget {dst} {back}\nrm {dst}\n")
        cmd = ssh_cmd(self.dir, n["ssh_port"])
        cmd[0] = "sftp"
        cmd[cmd.index("-p")] = "-P"
        r = subprocess.run(cmd[:-1] + ["-b", batch, cmd[-1]], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(src, "rb") as a, open(back, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_good_node_scripts_drive_health(self):
        n = self.node("node-0015")
        self.assertEqual(http_get(n["health_port"])[0], 200)
        out = self.run_ok("node-0015", f"sh {n['shutdown_script']}")
        self.assertIn("stopped", out)
        status, body = http_get(n["health_port"])
        self.assertEqual((status, body["reason"]), (503, "service not running"))
        self.assertFalse(self.check("node-0015")["service_running"])
        self.run_ok("node-0015", f"sh {n['startup_script']}")
        self.assertEqual(http_get(n["health_port"])[0], 200)
        c = self.check("node-0015")
        self.assertTrue(c["service_running"])
        self.assertEqual(c["service_events"][-2:], ["shutdown", "startup"])
        self.assertEqual(http_get(n["health_port"], "/other")[0], 404)

    def test_startup_fails_marker_makes_startup_fail(self):
        n = self.node("node-0015")
        bad = os.path.join(n["deploy_path"], "conf", "crash.properties")
        self.run_ok("node-0015", f"printf 'x=1\\nGUARDIA_FAULT=startup_fails\\n' > {bad}")
        try:
            r = ssh(self.dir, n["ssh_port"], f"sh {n['startup_script']}")
            self.assertEqual(r.returncode, 3)
            self.assertIn("GUARDIA_FAULT=startup_fails", r.stderr)
        finally:
            self.run_ok("node-0015", f"rm -f {bad}")
        r = ssh(self.dir, n["ssh_port"], f"sh {n['startup_script']}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(self.check("node-0015")["service_running"])

    def test_unhealthy_marker_makes_health_503(self):
        n = self.node("node-0015")
        bad = os.path.join(n["deploy_path"], "conf", "bad.properties")
        self.run_ok("node-0015", f"printf 'x=1\\nGUARDIA_FAULT=unhealthy\\n' > {bad}")
        try:
            status, body = http_get(n["health_port"])
            self.assertEqual(status, 503)
            self.assertIn("conf/bad.properties", body["reason"])
            self.assertFalse(self.check("node-0015")["artifact_healthy"])
        finally:
            self.run_ok("node-0015", f"rm -f {bad}")
        self.assertEqual(http_get(n["health_port"])[0], 200)

    # ---------------------------------------------------------------- check
    def check(self, name, *extra):
        return json.loads(fleet("check", "--dir", self.dir, "--node", name, *extra).stdout)["nodes"][name]

    def test_check_hashes_backups_lock(self):
        n = self.node("node-0001")
        c = self.check("node-0001")
        self.assertEqual(set(c["files"]), {"app.jar", "VERSION", "conf/app.properties", "run.sh"})
        for rel, f in c["files"].items():
            with open(os.path.join(n["deploy_path"], rel), "rb") as fh:
                self.assertEqual(f["sha256"], hashlib.sha256(fh.read()).hexdigest(), rel)
        self.assertEqual(c["files"]["run.sh"]["mode"], "0755")
        self.assertEqual(c["files"]["conf/app.properties"]["mode"], "0640")
        self.assertEqual((c["version"], c["service_running"], c["backups"], c["lock_present"]),
                         ("v1", True, [], False))
        app = n["deploy_path"]
        bak = app + ".bak_20250101_000000"
        self.run_ok("node-0001", f"cp -rp {app} {bak} && mkdir {app}.lock")
        try:
            c2 = self.check("node-0001", "--backups")
            self.assertEqual(c2["backups"], [os.path.basename(bak)])
            self.assertTrue(c2["lock_present"])
            self.assertEqual(c2["backup_trees"][os.path.basename(bak)], c["tree_sha256"])
            self.assertEqual(c2["tree_sha256"], c["tree_sha256"])
        finally:
            self.run_ok("node-0001", f"rm -rf {bak} {app}.lock")
        self.assertEqual(self.check("node-0001")["backups"], [])

    def test_check_all_nodes(self):
        report = json.loads(fleet("check", "--dir", self.dir).stdout)
        self.assertEqual(len(report["nodes"]), 16)
        self.assertGreater(report["nodes"]["node-0006"]["disk_use_percent"], 90)

    # ---------------------------------------------------------------- SSH faults
    def test_wrong_host_key(self):
        port = self.port("node-0002")
        r = ssh(self.dir, port, "true")
        self.assertEqual(r.returncode, 255)
        self.assertIn("Host key verification failed", r.stderr)
        scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                              capture_output=True, text=True, timeout=30)
        presented = " ".join(scan.stdout.split()[1:3])
        with open(os.path.join(self.dir, "known_hosts")) as f:
            recorded = [" ".join(line.split()[1:3]) for line in f if line.startswith(f"[127.0.0.1]:{port} ")]
        self.assertEqual(recorded, [self.info["host_key"]["default"]], "known_hosts holds the correct key")
        self.assertEqual(presented, self.info["host_key"]["wrong"])
        self.assertNotEqual(presented, recorded[0])

    def test_auth_refused(self):
        port = self.port("node-0003")
        r = ssh(self.dir, port, "true")
        self.assertEqual(r.returncode, 255)
        self.assertIn("Permission denied", r.stderr)
        self.assertNotIn("Host key verification failed", r.stderr)
        r = ssh_password(self.dir, port, "true", self.work)
        self.assertEqual(r.returncode, 255)
        self.assertIn("Permission denied", r.stderr)

    def test_unreachable_refused(self):
        n = self.node("node-0004")
        self.assertTrue(refused(n["ssh_port"]))
        self.assertTrue(refused(n["health_port"]))
        r = ssh(self.dir, n["ssh_port"], "true")
        self.assertEqual(r.returncode, 255)
        self.assertIn("Connection refused", r.stderr)

    def test_unreachable_timeout(self):
        n = self.node("node-0005")
        s = socket.create_connection(("127.0.0.1", n["ssh_port"]), timeout=3)
        try:
            s.settimeout(1.0)
            with self.assertRaises(socket.timeout):
                s.recv(100)          # no SSH banner ever comes
        finally:
            s.close()
        t = time.monotonic()
        r = ssh(self.dir, n["ssh_port"], "true", extra=("-o", "ConnectTimeout=2"))
        self.assertEqual(r.returncode, 255)
        self.assertRegex(r.stderr, "timed out|Connection closed|banner")
        self.assertLess(time.monotonic() - t, 15)

    def test_disk_full(self):
        n = self.node("node-0006")
        out = self.run_ok("node-0006", f"df -P {n['deploy_path']}")
        fields = out.splitlines()[-1].split()
        self.assertEqual(fields[-1], n["node_dir"])
        self.assertGreater(int(fields[4].rstrip("%")), 90)
        r = ssh(self.dir, n["ssh_port"], f"dd if=/dev/zero of={n['deploy_path']}/big bs=1M count=1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("No space left", r.stderr)
        ssh(self.dir, n["ssh_port"], f"rm -f {n['deploy_path']}/big")
        with open("/proc/self/mountinfo") as f:
            self.assertTrue(any(line.split()[4] == n["node_dir"] and " tmpfs " in line for line in f))
        # the node user owns the tmpfs root, but cannot free the space: the fill file sits in
        # a root-owned 0755 directory
        fill_dir = os.path.join(n["node_dir"], ".fill")
        st = os.lstat(fill_dir)
        self.assertEqual((st.st_uid, st.st_mode & 0o7777), (0, 0o755))
        size = os.path.getsize(os.path.join(fill_dir, "fill"))
        for cmd in (f"rm -f {fill_dir}/fill", f"rm -rf {fill_dir}", f": > {fill_dir}/fill",
                    f"rmdir {fill_dir}"):
            r = ssh(self.dir, n["ssh_port"], cmd)
            self.assertNotEqual(r.returncode, 0, cmd)
            self.assertRegex(r.stderr, "Permission denied|Directory not empty", cmd)
        self.assertEqual(os.path.getsize(os.path.join(fill_dir, "fill")), size)
        fields = self.run_ok("node-0006", f"df -P {n['deploy_path']}").splitlines()[-1].split()
        self.assertGreater(int(fields[4].rstrip("%")), 90, "still full")

    def test_cut_after_bytes(self):
        n = self.node("node-0012")
        recv = os.path.join(n["state_dir"], "recv")
        data = os.urandom(1 << 20)
        # small sessions fit below the cut
        self.run_ok("node-0012", "true")
        r = ssh(self.dir, n["ssh_port"], f"cat > {recv}", input=data)
        self.assertEqual(r.returncode, 255, "the proxy cut the upload")
        self.assertRegex(r.stderr, b"reset by peer|Connection reset by|Broken pipe|closed by remote host", r.stderr)
        # Under load sshd may lose the session before the remote shell has even created the
        # file: then nothing at all reached the node, which satisfies the bound too.
        got = os.path.getsize(recv) if os.path.exists(recv) else 0
        self.assertLess(got, CUT_BYTES, "less than K bytes of payload reached the node")
        stats = load(self.dir, "run/proxy-stats.json")["node-0012"]
        last = stats["recent"][-1]
        self.assertTrue(last["cut"])
        self.assertEqual(last["c2s"], CUT_BYTES, "exactly K bytes were forwarded client->server")
        # control: the same upload straight to the node's sshd gets through whole
        kh = os.path.join(self.work, "kh-direct")
        with open(kh, "w") as f:
            f.write(f"[127.0.0.1]:{n['sshd_port']} {self.info['host_key']['default']}\n")
        r = subprocess.run(ssh_cmd(self.dir, n["sshd_port"], known_hosts=kh) + [f"cat > {recv}"],
                           input=data, capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.path.getsize(recv), len(data))

    def test_slow_link(self):
        n = self.node("node-0013")
        size = 256 * 1024
        data = os.urandom(size)
        sink = os.path.join(n["state_dir"], "sink")
        # a bare login through the slow link: handshake round trips (100 ms one way)
        logins = []
        for _ in range(2):
            t = time.monotonic()
            self.run_ok("node-0013", "true")
            logins.append(time.monotonic() - t)
        login = min(logins)
        self.assertGreater(login, 0.8, "handshake round trips carry the added latency")
        t = time.monotonic()
        r = ssh(self.dir, n["ssh_port"], f"cat > {sink}", input=data)
        slow = time.monotonic() - t
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.path.getsize(sink), size)
        # the bandwidth limit itself: pushing N bytes takes >= 0.8 N/rate beyond a login
        # (256 KiB at 128 KiB/s = 2 s), and not much more (the link is not slower than set)
        transfer = slow - login
        print(f"\n  slow_link: login {login:.2f} s, {size} bytes in {slow:.2f} s: "
              f"{size / transfer / 1024:.0f} KiB/s (limit {SLOW_RATE / 1024:.0f} KiB/s)", file=sys.stderr)
        self.assertGreaterEqual(transfer, 0.8 * size / SLOW_RATE)
        self.assertLess(transfer, 1.5 * size / SLOW_RATE + 2)
        # control: the same upload straight to the node's sshd
        kh = os.path.join(self.work, "kh-direct13")
        with open(kh, "w") as f:
            f.write(f"[127.0.0.1]:{n['sshd_port']} {self.info['host_key']['default']}\n")
        t = time.monotonic()
        r = subprocess.run(ssh_cmd(self.dir, n["sshd_port"], known_hosts=kh) + [f"cat > {sink}"],
                           input=data, capture_output=True, timeout=60)
        direct = time.monotonic() - t
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(direct, slow / 2)

    def test_sshd_option_per_node(self):
        r = ssh(self.dir, self.port("node-0016"), "true")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open("/etc/hostname") as f:
            self.assertIn(f.read().strip(), r.stderr, "the node's Banner is shown")
        r = ssh(self.dir, self.port("node-0001"), "true")
        self.assertEqual(r.stderr.strip(), "", "other nodes have no banner")
        conf = [p["config"] for p in self.info["processes"]
                if p["role"] == "sshd" and self.node("node-0016")["sshd_port"] in p["ports"]][0]

        def effective(port):
            out = subprocess.run(["/usr/sbin/sshd", "-T", "-f", conf, "-C",
                                  f"user={USER},host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport={port}"],
                                 capture_output=True, text=True, check=True).stdout
            return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        self.assertEqual(effective(self.node("node-0016")["sshd_port"])["maxsessions"], "1")
        self.assertEqual(effective(self.node("node-0001")["sshd_port"])["maxsessions"], "64")
        self.assertEqual(effective(self.node("node-0001")["sshd_port"])["disableforwarding"], "yes")

    def test_no_forwarding(self):
        # a session cannot open TCP channels anywhere (here: even to a loopback health port)
        n = self.node("node-0001")
        r = subprocess.run(ssh_cmd(self.dir, n["ssh_port"], extra=("-W", f"127.0.0.1:{n['health_port']}")),
                           input=b"GET /health HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 255, r.stdout)
        self.assertIn(b"administratively prohibited", r.stderr)
        self.assertNotIn(b"HTTP/1.1", r.stdout)

    # ---------------------------------------------------------------- service faults
    def test_startup_fails(self):
        n = self.node("node-0007")
        r = ssh(self.dir, n["ssh_port"], f"sh {n['startup_script']}")
        self.assertEqual(r.returncode, 3)
        self.assertIn("failed to start", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(n["state_dir"], "running.new")))
        self.run_ok("node-0007", f"sh {n['shutdown_script']}")
        r = ssh(self.dir, n["ssh_port"], f"sh {n['startup_script']}")
        self.assertEqual(r.returncode, 3)
        self.assertFalse(self.check("node-0007")["service_running"])
        self.assertEqual(http_get(n["health_port"])[0], 503)

    def test_shutdown_hangs(self):
        n = self.node("node-0014")
        t = time.monotonic()
        with self.assertRaises(subprocess.TimeoutExpired):
            ssh(self.dir, n["ssh_port"], f"sh {n['shutdown_script']}", timeout=2)
        self.assertGreaterEqual(time.monotonic() - t, 2)
        # the script is still sleeping on the node (down must kill it: the leak check proves it)
        sleeping = [cmd for uid, cmd in marked_processes(self.info["id"]) if cmd.startswith("sleep 3600")]
        self.assertTrue(sleeping, "shutdown.sh is still hanging on the node")
        self.assertTrue(self.check("node-0014")["service_running"], "service never got stopped")

    def test_health_never(self):
        self.assertTrue(self.check("node-0008")["service_running"])
        status, body = http_get(self.hport("node-0008"))
        self.assertEqual((status, body["reason"]), (503, "fault health_never"))

    def test_health_never_hang(self):
        with self.assertRaises((socket.timeout, TimeoutError)):
            http_get(self.hport("node-0009"), timeout=1.0)

    def test_health_slow(self):
        n = self.node("node-0010")
        self.assertEqual(http_get(n["health_port"])[0], 200, "the initial service started long ago")
        self.run_ok("node-0010", f"sh {n['shutdown_script']}; sh {n['startup_script']}")
        started = os.stat(os.path.join(n["state_dir"], "running")).st_mtime
        status, body = http_get(n["health_port"])
        self.assertEqual((status, body["status"]), (503, "STARTING"))
        status, _ = self.wait_health("node-0010", 200, timeout=HEALTH_SLOW_S + 5)
        delay = time.time() - started
        self.assertEqual(status, 200)
        # 200 comes close to the configured delay after the start, not merely "later"
        self.assertGreaterEqual(delay, 0.8 * HEALTH_SLOW_S)
        self.assertLessEqual(delay, HEALTH_SLOW_S + 2)

    def test_rejects_new_build(self):
        """Health answers 503 while the deploy tree differs from the one `up` built (a path,
        a mode or a content byte), and 200 again once the exact tree is back."""
        n = self.node("node-0016")
        app = n["deploy_path"]
        reason = "fault rejects_new_build: the deployed tree differs from the original"
        original = self.check("node-0016")
        self.assertEqual(http_get(n["health_port"])[0], 200, "the tree `up` built is healthy")
        with open(os.path.join(app, "app.jar"), "rb") as f:
            old = f.read()[1000]
        new = old ^ 0x5a
        # whatever happens below, the node ends with its original tree
        self.addCleanup(lambda: self.run_ok("node-0016", f"rm -f {app}/extra.txt; chmod 0755 {app}/run.sh; "
                                                         f"printf '\\{old:03o}' | dd of={app}/app.jar bs=1 seek=1000 "
                                                         f"count=1 conv=notrunc 2>/dev/null"))

        def expect(status, what):
            got, body = http_get(n["health_port"])
            self.assertEqual(got, status, f"{what}: {body}")
            if status == 503:
                self.assertEqual(body["reason"], reason)
            c = self.check("node-0016")
            self.assertEqual(c["tree_sha256"] == original["tree_sha256"], status == 200, what)
            return c
        # a new file: 503; removed again: 200
        self.run_ok("node-0016", f"printf 'x\\n' > {app}/extra.txt")
        self.assertIn("extra.txt", expect(503, "a file added")["files"])
        self.run_ok("node-0016", f"rm {app}/extra.txt")
        expect(200, "the file removed again")
        # one byte of app.jar (same size): 503; the byte restored: 200
        self.run_ok("node-0016", f"printf '\\{new:03o}' | dd of={app}/app.jar bs=1 seek=1000 count=1 conv=notrunc")
        c = expect(503, "a byte of app.jar changed")
        self.assertEqual(c["files"]["app.jar"]["size"], original["files"]["app.jar"]["size"])
        self.assertNotEqual(c["files"]["app.jar"]["sha256"], original["files"]["app.jar"]["sha256"])
        self.run_ok("node-0016", f"printf '\\{old:03o}' | dd of={app}/app.jar bs=1 seek=1000 count=1 conv=notrunc")
        self.assertEqual(expect(200, "the byte restored")["files"], original["files"])
        # only a mode: 503; restored: 200
        self.run_ok("node-0016", f"chmod 0700 {app}/run.sh")
        expect(503, "run.sh 0755 -> 0700")
        self.run_ok("node-0016", f"chmod 0755 {app}/run.sh")
        expect(200, "the mode restored")

    def test_health_flapping(self):
        seq = [http_get(self.hport("node-0011"))[0] for _ in range(9)]
        # period 2: two 200s, one 503, wherever the cycle starts
        self.assertEqual(seq.count(503), 3, seq)
        self.assertEqual(seq.count(200), 6, seq)
        self.assertTrue(re.fullmatch(r"(200,)?(200,)?(503,200,200,)*(503,)?(200,)?(200,)?",
                                     ",".join(map(str, seq)) + ","), seq)

    # ---------------------------------------------------------------- root reads node trees
    def test_symlinks_are_never_followed(self):
        """The node user points app/VERSION, state files and the deploy path itself at a
        root-only file/directory: health and check (root) must not read through them."""
        n = self.node("node-0015")
        app, state = n["deploy_path"], n["state_dir"]
        token = "TOPSECRET-" + os.urandom(6).hex()
        secret = os.path.join(self.work, "secret.txt")            # root-only 0600
        secret_dir = os.path.join(self.work, "secret-dir")        # root-only 0700
        os.makedirs(secret_dir, mode=0o700)
        for path in (secret, os.path.join(secret_dir, "app.jar")):
            with open(path, "w") as f:
                f.write(f"{token}\nGUARDIA_FAULT=unhealthy\n")
            os.chmod(path, 0o600)
        restore = "\n".join([
            f"cd {app}/..; if [ -L app ]; then rm app; mv app.real app; fi",
            f"cd {app}; rm -f conf/link.properties rootlink fifo",
            "if [ -e VERSION.orig ]; then rm -f VERSION; mv VERSION.orig VERSION; fi",
            f"if [ -e {state}/events.log.orig ]; then rm -f {state}/events.log; mv {state}/events.log.orig {state}/events.log; fi",
            f"rm -f {state}/running; sh {n['startup_script']}"])
        self.addCleanup(lambda: self.run_ok("node-0015", restore))
        self.run_ok("node-0015", f"cd {app} && mv VERSION VERSION.orig && ln -s {secret} VERSION && "
                                 f"ln -s {secret} conf/link.properties && ln -s / rootlink && mkfifo fifo && "
                                 f"test ! -r {secret}")
        status, body = http_get(n["health_port"])
        self.assertEqual(status, 200, "neither the symlinked marker nor the FIFO is read")
        self.assertIsNone(body["version"])
        c = self.check("node-0015")
        out = json.dumps(c)
        self.assertNotIn(token, out)
        self.assertIsNone(c["version"])
        self.assertEqual(c["symlinks"], {"VERSION": secret, "conf/link.properties": secret, "rootlink": "/"})
        self.assertEqual(c["files"]["fifo"]["type"], "special")
        self.assertNotIn("VERSION", c["files"])
        self.assertTrue(c["artifact_healthy"])
        # state files as symlinks: not running, events not read
        self.run_ok("node-0015", f"mv {state}/events.log {state}/events.log.orig && ln -s {secret} {state}/events.log"
                                 f" && rm {state}/running && ln -s {secret} {state}/running")
        c = self.check("node-0015")
        self.assertFalse(c["service_running"])
        self.assertEqual(c["service_events"], [])
        self.assertNotIn(token, json.dumps(c))
        status, body = http_get(n["health_port"])
        self.assertEqual((status, body["reason"]), (503, "service not running"))
        # the deploy path itself a symlink to a root-only directory
        self.run_ok("node-0015", f"rm {state}/running && : > {state}/running && "
                                 f"cd {app}/.. && mv app app.real && ln -s {secret_dir} app")
        c = self.check("node-0015")
        self.assertFalse(c["exists"])
        self.assertEqual(c["deploy_path_symlink"], secret_dir)
        self.assertNotIn("files", c)
        self.assertNotIn(token, json.dumps(c))
        status, body = http_get(n["health_port"])
        self.assertEqual(status, 503)
        self.assertIn("symlink", body["reason"])
        self.assertNotIn(token, json.dumps(body))

    def test_check_unprivileged_reports_unreadable_files(self):
        # as another user, check reports what it cannot read instead of failing
        as_nobody = dict(user=65534, group=65534, extra_groups=[], cwd="/", capture_output=True, text=True,
                         timeout=60)
        def usable(p):
            try:
                return subprocess.run([p, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                                      **as_nobody).returncode == 0
            except OSError:
                return False
        # an interpreter that user can run (root's may live in /root, e.g. pyenv)
        python = next((p for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3") if usable(p)), None)
        self.assertIsNotNone(python, "no Python >= 3.11 that user 65534 can run")
        r = subprocess.run([python, FLEET, "check", "--dir", self.dir, "--node", "node-0001"], **as_nobody)
        self.assertEqual(r.returncode, 0, r.stderr)
        c = json.loads(r.stdout)["nodes"]["node-0001"]
        conf = c["files"]["conf/app.properties"]         # 0640 guardia-node
        self.assertIsNone(conf["sha256"])
        self.assertIn("Permission denied", conf["error"])
        self.assertEqual(conf["mode"], "0640")
        with open(os.path.join(self.node("node-0001")["deploy_path"], "app.jar"), "rb") as f:
            self.assertEqual(c["files"]["app.jar"]["sha256"], hashlib.sha256(f.read()).hexdigest())


class CutProxy(unittest.TestCase):
    """The fleet's cut_after_bytes proxy (tools/fleet_lib/server.py) alone, in front of a
    counting server the test owns: exactly K bytes arrive upstream, then both sides are
    reset."""

    K = 100003

    def test_exactly_k_bytes_then_reset(self):
        sys.path.insert(0, os.path.dirname(os.path.realpath(FLEET)))
        from fleet_lib import server
        work = work_dir("proxy-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        upstream = socket.socket()
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(4)
        self.addCleanup(upstream.close)
        got = {}

        def count():
            conn, _ = upstream.accept()
            conn.settimeout(20)
            total, end = 0, "eof"
            try:
                while chunk := conn.recv(65536):
                    total += len(chunk)
            except ConnectionResetError:
                end = "reset"
            except socket.timeout:
                end = "timeout"
            finally:
                conn.close()
            got.update(total=total, end=end)
        counter = threading.Thread(target=count, daemon=True)
        counter.start()

        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()

        def stop_loop():
            loop.call_soon_threadsafe(loop.stop)
            runner.join(10)
            loop.close()
        self.addCleanup(stop_loop)
        stats = server.Stats(os.path.join(work, "stats.json"))
        proxy = server.Proxy({"name": "unit", "cut_after_bytes": {"bytes": self.K, "connections": 0}}, stats)
        proxy.upstream = upstream.getsockname()[1]
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        lsock.setblocking(False)
        srv = asyncio.run_coroutine_threadsafe(asyncio.start_server(proxy.handle, sock=lsock), loop).result(10)
        self.addCleanup(lambda: loop.call_soon_threadsafe(srv.close))

        client = socket.create_connection(lsock.getsockname(), timeout=20)
        self.addCleanup(client.close)
        seen = "eof"
        try:
            client.sendall(os.urandom(3 * self.K))
            while client.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            seen = "reset"
        counter.join(30)
        self.assertEqual(got.get("total"), self.K, got)
        self.assertEqual(got.get("end"), "reset", "upstream sees a reset, not a clean end")
        self.assertEqual(seen, "reset", "the client sees a reset")
        rec = stats["unit"]["recent"][-1]
        self.assertEqual((rec["c2s"], rec["cut"]), (self.K, True))



class StallingProxy(unittest.TestCase):
    """The fleet's stalling_link proxy (tools/fleet_lib/server.py) alone, in front of an echo
    server the test owns: the latency is added each way, stalls hold a direction, and the
    stall draws are a pure function of (seed, node, connection, direction)."""

    def setUp(self):
        sys.path.insert(0, os.path.dirname(os.path.realpath(FLEET)))
        from fleet_lib import faults, server
        self.faults, self.server = faults, server

    def fault(self, **args):
        return self.faults.normalize("stalling_link", args)

    def test_parsing_and_defaults(self):
        node, f = self.faults.parse_flag("7:stalling_link", 10)
        self.assertEqual((node, f), ("node-0007", {"kind": "stalling_link", "delay_ms": 150, "stall_pct": 3.0,
                                                   "stall_min_ms": 1000, "stall_max_ms": 3000, "seed": 0}))
        _, f = self.faults.parse_flag("7:stalling_link:seed=5,stall_pct=0.5", 10)
        self.assertEqual((f["seed"], f["stall_pct"], f["delay_ms"]), (5, 0.5, 150))
        for bad in ({"stall_pct": 101}, {"stall_min_ms": 2000, "stall_max_ms": 1000}, {"delay_ms": -1},
                    {"stall_pct": "nan"}):
            with self.subTest(bad=bad), self.assertRaises(self.faults.FleetError):
                self.fault(**bad)

    def test_draws_are_reproducible(self):
        def draws(seed, name="node-0001", conn=1, key="c2s", n=2000):
            stats = self.server.Stats(os.devnull)
            p = self.server.Proxy({"name": name, "stalling_link": self.fault(seed=seed)}, stats)
            it = p.stall_draws(conn, key)
            return [next(it) for _ in range(n)]
        a = draws(1)
        self.assertEqual(a, draws(1), "same seed, node, connection and direction: same stalls")
        for other in (draws(2), draws(1, name="node-0002"), draws(1, conn=2), draws(1, key="s2c")):
            self.assertNotEqual(a, other)
        stalls = [x for x in a if x > 0]
        self.assertTrue(all(1.0 <= x <= 3.0 for x in stalls), stalls)
        self.assertTrue(20 <= len(stalls) <= 120, f"about 3 % of 2000 chunks stall: {len(stalls)}")

    def test_latency_and_stalls_on_the_wire(self):
        upstream = socket.socket()
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(4)
        self.addCleanup(upstream.close)

        def echo():
            conn, _ = upstream.accept()
            conn.settimeout(30)
            try:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
            except OSError:
                pass
            finally:
                conn.close()
        threading.Thread(target=echo, daemon=True).start()
        work = work_dir("stall-")
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()

        def stop_loop():
            loop.call_soon_threadsafe(loop.stop)
            runner.join(10)
            loop.close()
        self.addCleanup(stop_loop)
        stats = self.server.Stats(os.path.join(work, "stats.json"))
        # every chunk stalls exactly 0.2 s, plus 0.1 s latency each way
        f = self.fault(delay_ms=100, stall_pct=100, stall_min_ms=200, stall_max_ms=200, seed=3)
        proxy = self.server.Proxy({"name": "unit", "stalling_link": f}, stats)
        proxy.upstream = upstream.getsockname()[1]
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        lsock.setblocking(False)
        srv = asyncio.run_coroutine_threadsafe(asyncio.start_server(proxy.handle, sock=lsock), loop).result(10)
        self.addCleanup(lambda: loop.call_soon_threadsafe(srv.close))
        client = socket.create_connection(lsock.getsockname(), timeout=30)
        self.addCleanup(client.close)
        t = time.monotonic()
        client.sendall(b"ping")
        self.assertEqual(client.recv(16), b"ping")
        rtt = time.monotonic() - t
        # a lower bound only: 2 x (latency + stall), one chunk each way
        self.assertGreaterEqual(rtt, 2 * (0.1 + 0.2) - 0.01)
        rec = stats["unit"]["recent"][-1]
        self.assertEqual(rec["stalls"], [["c2s", 0.2], ["s2c", 0.2]])
        self.assertEqual(stats["unit"]["stalls"], 2)
        # let the proxy finish the connection before its loop stops (no task left pending)
        client.close()
        deadline = time.monotonic() + 30
        while rec["end"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertIsNotNone(rec["end"])
