#!/usr/bin/env python3
"""Trust boundary: what an API caller may make the service read or send (issue 12, points 4
and 5; docs/SECURITY.md, "Inputs from API callers").

A caller of POST /api/inventory and POST /api/tasks/{sr}/artifacts must not be able to:
  - make the service use a private key from anywhere on the deploy host (ssh.key_dirs),
  - have a stored password sent to a host of its choosing (credentials bound to hosts),
  - copy any file the service can read into a release (service.drop_dir), or learn a file's
    digest from a checksum mismatch.
Each test drives a real `guardia serve` over HTTP (trust_base.py); this suite owns
node-0011..node-0016 of the trust_fleet fixture.

GUARDIA_TRUST_BASELINE=1 runs the tests against a binary from before these defences: the
configurations leave out the fields it does not know (ssh.key_dirs, service.drop_dir, the
credentials' object form), so each test fails on the weakness itself, not on the config.
"""

import json
import os
import re
import socket
import stat
import threading
import time

from trust_base import TrustBase, own_tests, main, FLEET_DIR
from test_serve import sha256

BASELINE = os.environ.get("GUARDIA_TRUST_BASELINE") == "1"
HEX64 = re.compile(r"[0-9a-f]{64}")


class Listener:
    """A TCP listener on 127.0.0.x:port that records every connection and the bytes it got."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.got = []               # one bytes object per connection
        self.stop_flag = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(2)
            data = b""
            try:
                c.sendall(b"SSH-2.0-OpenSSH_9.2 recorder\r\n")
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            finally:
                c.close()
            self.got.append(data)

    def stop(self):
        self.stop_flag = True
        self.thread.join(5)
        self.sock.close()


class TrustInputs(TrustBase):
    # ------------------------------------------------------------------ helpers
    def config(self, service=None, notifications=None, rollout=None, ssh=None, key_dirs="fleet"):
        c = super().config(service=service, notifications=notifications, rollout=rollout)
        if key_dirs is None:
            c["ssh"].pop("key_dirs", None)
        elif key_dirs != "fleet":
            c["ssh"]["key_dirs"] = key_dirs
        c["ssh"].update(ssh or {})
        if service is not None and service.get("drop_dir", "") is None:
            c["service"].pop("drop_dir")
        if BASELINE:
            c["ssh"].pop("key_dirs", None)
            c["service"].pop("drop_dir", None)
        return c

    def key_copy(self, where):
        """A copy of the fleet's client key at `where` (mode 0600): a usable key outside key_dirs."""
        os.makedirs(os.path.dirname(where), mode=0o700, exist_ok=True)
        with open(os.path.join(FLEET_DIR, "client_key"), "rb") as f:
            data = f.read()
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return where

    def credentials(self, entries):
        p = self.path("credentials.json")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f)
        return p

    def node(self, name, tier=2, **fields):
        n = json.loads(json.dumps(self.inv[name]))
        n.update(tier=tier, inst_id=self.inst_id, system_name=self.system_name)
        n.update(fields)
        return n

    def stored_nodes(self):
        return self.ok(self.api("GET", "/api/inventory", query={"inst_id": self.inst_id,
                                                                "system_name": self.system_name}))["nodes"]

    def import_refused(self, nodes, *in_message):
        r = self.api("POST", "/api/inventory", {"nodes": nodes})
        body = self.assert_error(r, 400, "bad_request", *in_message)
        return body["message"]

    def path_form(self, sr, path, digest, name="app.jar"):
        return self.api("POST", f"/api/tasks/{sr}/artifacts", {"name": name, "path": path, "sha256": digest})

    def assert_no_digest(self, r, claimed, *secret_files):
        """r's message reveals no digest: no 64-hex word but the one the caller sent."""
        msg = r.json["message"]
        self.assertEqual([h for h in HEX64.findall(msg) if h != claimed], [], msg)
        for p in secret_files:
            try:
                with open(p, "rb") as f:
                    self.assertNotIn(sha256(f.read()), msg)
            except OSError:
                pass

    def assert_nothing_staged(self, sr):
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual(t["artifacts"], [], "nothing staged")
        root = os.path.join(self.state_dir, "artifacts")
        staged = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        self.assertEqual(staged, [], "no file in the state directory")

    # ------------------------------------------------------------------ ssh.key_dirs
    def test_01_key_file_outside_key_dirs_refused_at_import(self):
        keys = self.path("keys")
        os.makedirs(keys, mode=0o700)
        outside = self.key_copy(self.path("outside", "client_key"))
        os.symlink(outside, os.path.join(keys, "linked_key"))                 # inside, pointing out
        os.symlink(self.path("outside"), os.path.join(keys, "linked_dir"))    # a directory link
        inside = self.key_copy(os.path.join(keys, "own_key"))
        self.start_service(self.config(key_dirs=[FLEET_DIR, keys]))
        for key_file in (outside, os.path.join(keys, "linked_key"), os.path.join(keys, "linked_dir", "client_key"),
                         "/etc/shadow", os.path.join(keys, "missing", "..", "..", "outside", "client_key")):
            with self.subTest(key_file=key_file):
                if "/../" in key_file:
                    # not even a normal path: refused by the inventory's own path rules
                    self.import_refused([self.node("node-0011", auth={"key_file": key_file})],
                                        "node 'node-0011'", "auth.key_file")
                    continue
                msg = self.import_refused([self.node("node-0011", auth={"key_file": key_file})],
                                          "node 'node-0011'", "auth.key_file", key_file, "ssh.key_dirs")
                self.assertIn(keys, msg)
        self.assertEqual(self.stored_nodes(), [], "nothing imported")
        self.assertEqual(self.q("SELECT * FROM audit_log WHERE event = 'INVENTORY_IMPORTED'"), [])
        # inside key_dirs (the fleet's own key, and a real file in the second directory): imported
        d = self.ok(self.api("POST", "/api/inventory", {"nodes": [
            self.node("node-0011"), self.node("node-0012", auth={"key_file": inside})]}))
        self.assertEqual(sorted(d["nodes"]), ["node-0011", "node-0012"])

    def test_02_a_stricter_key_dirs_later_bites_at_trigger(self):
        names = ["node-0011", "node-0012"]
        sr = f"SR-KEYDIRS-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        self.import_inventory({n: 2 for n in names})
        self.create_task(sr)
        self.stage(sr, self.artifacts("keydirs"))
        self.svc.kill()
        # the same store, a configuration whose key_dirs no longer hold the fleet's key
        os.makedirs(self.path("keys"), mode=0o700)
        self.start_service(self.config(key_dirs=[self.path("keys")]), label="stricter")
        r = self.trigger(sr)
        self.assert_error(r, 409, "conflict", "auth.key_file", "ssh.key_dirs",
                          os.path.join(FLEET_DIR, "client_key"))
        self.assertEqual(self.ok(self.api("GET", f"/api/tasks/{sr}"))["status"], "CREATED")
        self.assertEqual(self.q("SELECT * FROM rollouts WHERE sr_id = ?", sr), [])
        self.assert_untouched(before, self.check(*names))

    def test_03_service_without_key_dirs_fails_closed(self):
        self.start_service(self.config(key_dirs=None))
        msg = self.import_refused([self.node("node-0011")], "node 'node-0011'", "auth.key_file",
                                  "ssh.key_dirs", "/etc/guardia/keys")
        self.assertIn("set ssh.key_dirs", msg)
        self.assertEqual(self.stored_nodes(), [])

    # ------------------------------------------------------------------ credentials bound to hosts
    def test_04_password_ref_bound_to_hosts(self):
        with open(os.path.join(FLEET_DIR, "password")) as f:
            fleet_pw = f.read().strip()
        canary = "canary-PLAIN-pw-" + self.tag
        bound = {"password": fleet_pw, "hosts": ["127.0.0.1", "*.fleet.test"]}
        creds = self.credentials({"fleet-pw": fleet_pw if BASELINE else bound, "plain-pw": canary})
        self.start_service(self.config(ssh={"credentials_file": creds}))
        port = self.inv["node-0013"]["ssh_port"]
        rec = Listener("127.0.0.2", port)          # where a hostile inventory points the password
        self.addCleanup(rec.stop)
        # a bound ref pointed at another host
        self.import_refused([self.node("node-0013", host="127.0.0.2", auth={"password_ref": "fleet-pw"})],
                            "node 'node-0013'", "auth.password_ref", "'fleet-pw'", "127.0.0.2")
        # an unbound (plain) ref: the service hands out only bound passwords
        self.import_refused([self.node("node-0013", auth={"password_ref": "plain-pw"})],
                            "node 'node-0013'", "auth.password_ref", "'plain-pw'", "not bound")
        # a ref the credentials file does not hold
        self.import_refused([self.node("node-0013", auth={"password_ref": "nope"})],
                            "node 'node-0013'", "auth.password_ref", "'nope'")
        self.assertEqual(self.stored_nodes(), [])
        sr = f"SR-PW-{self.tag}"
        self.create_task(sr)
        self.stage(sr, self.artifacts("pw-refused"))
        self.assert_error(self.trigger(sr), 409, "conflict", "no inventory node")
        time.sleep(0.5)             # let the recorder thread take a connection, were there one
        self.assertEqual(rec.got, [], "nothing may connect to the host the caller chose")

        # the host the password is bound to: imported, and it deploys with that password
        before = self.fresh("node-0013")
        self.ok(self.api("POST", "/api/inventory", {"nodes": [
            self.node("node-0013", auth={"password_ref": "fleet-pw"})]}))
        arts = self.artifacts("pw")
        sr2 = f"SR-PW2-{self.tag}"
        self.create_task(sr2)
        self.stage(sr2, arts)
        self.trigger_ok(sr2)
        self.wait_task(sr2, "PENDING_PM_VALIDATION")
        self.assert_deployed(before["node-0013"], self.check("node-0013")["node-0013"], arts)
        self.assertEqual(rec.got, [])
        # a later binding that no longer names the node's host: refused before any connection
        self.svc.kill()
        self.credentials({"fleet-pw": {"password": fleet_pw, "hosts": ["127.0.0.9"]}, "plain-pw": canary})
        self.start_service(label="rebound")
        sr3 = f"SR-PW3-{self.tag}"
        self.create_task(sr3)
        self.stage(sr3, self.artifacts("pw-rebound"))
        self.assert_error(self.trigger(sr3), 409, "conflict", "node 'node-0013'", "'fleet-pw'", "127.0.0.1")
        rows = self.q("SELECT detail FROM audit_log")
        self.assertFalse(any(fleet_pw in (r["detail"] or "") or canary in (r["detail"] or "") for r in rows))

    # ------------------------------------------------------------------ service.drop_dir
    def test_05_path_form_disabled_without_drop_dir(self):
        self.start_service(self.config(service={"drop_dir": None}))
        sr = f"SR-NODROP-{self.tag}"
        self.create_task(sr)
        src = self.path("build.jar")
        with open(src, "wb") as f:
            f.write(b"a build\n")
        r = self.path_form(sr, src, sha256(b"a build\n"))
        self.assert_error(r, 403, "path_form_disabled", "set service.drop_dir")
        r = self.path_form(sr, "/etc/shadow", "0" * 64)
        self.assert_error(r, 403, "path_form_disabled")
        self.assert_no_digest(r, "0" * 64, "/etc/shadow")
        self.assert_nothing_staged(sr)
        # the upload form is not affected
        self.stage(sr, {"app.jar": b"uploaded\n"})

    def test_06_path_form_reads_only_regular_files_inside_drop_dir(self):
        self.start_service(self.config(service={"max_artifact_bytes": 4096}))
        sr = f"SR-DROP-{self.tag}"
        self.create_task(sr)
        drop = self.drop_dir
        key = os.path.join(FLEET_DIR, "client_key")
        with open(key, "rb") as f:
            key_sha = sha256(f.read())
        secret = self.path("outside.txt")                 # same filesystem as drop_dir
        with open(secret, "wb") as f:
            f.write(b"not for releases\n")
        os.symlink(key, os.path.join(drop, "key-link"))
        os.symlink("/etc", os.path.join(drop, "etc-link"))
        os.symlink("../outside.txt", os.path.join(drop, "rel-link"))
        os.link(secret, os.path.join(drop, "hard-link"))
        os.mkfifo(os.path.join(drop, "fifo"))
        os.mkdir(os.path.join(drop, "a-dir"))
        cases = [
            (key, key_sha),                                   # the service's own SSH key, right digest
            (key, "0" * 64),                                  # ... or probing for its digest
            ("/etc/shadow", "0" * 64),
            (os.path.join(drop, "..", "outside.txt"), "0" * 64),
            (os.path.join(drop, "key-link"), key_sha),
            (os.path.join(drop, "etc-link", "shadow"), "0" * 64),
            (os.path.join(drop, "rel-link"), sha256(b"not for releases\n")),
            (os.path.join(drop, "hard-link"), sha256(b"not for releases\n")),
            (os.path.join(drop, "fifo"), "0" * 64),
            (os.path.join(drop, "a-dir"), "0" * 64),
        ]
        for path, digest in cases:
            with self.subTest(path=path):
                t0 = time.monotonic()
                r = self.path_form(sr, path, digest)
                self.assertLess(time.monotonic() - t0, 10, "answered without blocking (a FIFO is not opened for reading)")
                self.assertIn(r.status, (400, 403), r)
                self.assertIn("path", r.json["message"], r)
                self.assert_no_digest(r, digest, key, "/etc/shadow", secret)
        self.assert_nothing_staged(sr)

        # inside drop_dir: a checksum mismatch says so, and reveals no digest
        good = b"build inside the drop dir\n"
        with open(os.path.join(drop, "app.jar"), "wb") as f:
            f.write(good)
        r = self.path_form(sr, os.path.join(drop, "app.jar"), "1" * 64)
        self.assert_error(r, 422, "checksum_mismatch", "does not match")
        self.assert_no_digest(r, "1" * 64, os.path.join(drop, "app.jar"))
        # over max_artifact_bytes
        with open(os.path.join(drop, "big.jar"), "wb") as f:
            f.write(b"x" * 5000)
        r = self.path_form(sr, os.path.join(drop, "big.jar"), sha256(b"x" * 5000))
        self.assert_error(r, 413, "payload_too_large", "max_artifact_bytes")
        self.assert_nothing_staged(sr)
        # the upload form reports the digest of the bytes the caller sent (they are its own)
        r = self.api("PUT", f"/api/tasks/{sr}/artifacts/app.jar", query={"sha256": "2" * 64}, raw=good,
                     ctype="application/octet-stream")
        self.assert_error(r, 422, "checksum_mismatch", sha256(good))
        # and a regular file inside drop_dir, in a subdirectory too, is staged
        os.mkdir(os.path.join(drop, "builds"))
        with open(os.path.join(drop, "builds", "VERSION"), "wb") as f:
            f.write(b"v9\n")
        self.ok(self.path_form(sr, os.path.join(drop, "app.jar"), sha256(good)), 201)
        self.ok(self.path_form(sr, os.path.join(drop, "builds", "VERSION"), sha256(b"v9\n"), name="VERSION"), 201)
        t = self.ok(self.api("GET", f"/api/tasks/{sr}"))
        self.assertEqual(sorted((a["name"], a["sha256"]) for a in t["artifacts"]),
                         sorted([("app.jar", sha256(good)), ("VERSION", sha256(b"v9\n"))]))

    def test_07_path_form_inside_drop_dir_deploys(self):
        names = ["node-0014", "node-0015"]
        sr = f"SR-DROPDEPLOY-{self.tag}"
        self.start_service()
        before = self.fresh(*names)
        self.import_inventory({"node-0014": 1, "node-0015": 2})
        self.create_task(sr)
        arts = self.artifacts("drop")
        self.stage(sr, arts, by_path=["app.jar", "VERSION"])
        self.trigger_ok(sr)
        self.wait_task(sr, "PENDING_PM_VALIDATION")
        after = self.check(*names)
        for n in names:
            self.assertEqual({k: after[n]["files"][k]["sha256"] for k in arts},
                             {k: sha256(v) for k, v in arts.items()}, n)
            self.assert_deployed(before[n], after[n], arts)

    # ------------------------------------------------------------------ import summary
    def test_08_inventory_import_reports_and_audits_what_changed(self):
        self.start_service()
        d = self.ok(self.api("POST", "/api/inventory", {"nodes": [self.node("node-0016"), self.node("node-0011")]}))
        self.assertEqual((d["imported"], sorted(d["nodes"])), (2, ["node-0011", "node-0016"]))
        self.assertEqual(d["changes"], {"added": ["node-0011", "node-0016"], "changed": [], "unchanged": []}, d)
        changed = self.node("node-0016", tier=3)
        changed["health"]["path"] = "/health?x=1"
        d = self.ok(self.api("POST", "/api/inventory", {"nodes": [
            changed, self.node("node-0011"), self.node("node-0012")]}))
        self.assertEqual(d["changes"], {"added": ["node-0012"],
                                        "changed": [{"name": "node-0016", "fields": ["health.path", "tier"]}],
                                        "unchanged": ["node-0011"]}, d)
        rows = self.q("SELECT detail FROM audit_log WHERE event = 'INVENTORY_IMPORTED' ORDER BY id")
        self.assertEqual(len(rows), 2, rows)
        self.assertIn("added 2 (node-0011, node-0016)", rows[0]["detail"])
        self.assertIn("added 1 (node-0012)", rows[1]["detail"])
        self.assertIn("changed 1 (node-0016: health.path, tier)", rows[1]["detail"])
        self.assertIn("unchanged 1", rows[1]["detail"])


load_tests = own_tests(TrustInputs)

if __name__ == "__main__":
    main()
