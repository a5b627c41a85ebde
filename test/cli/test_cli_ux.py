#!/usr/bin/env python3
"""The operator's everyday CLI (issue 14, items 8 and 9) against a real fleet:

  - every command's -h / --help / `guardia help CMD` exits 0 on stdout and lists every flag
    the command accepts (read from its source: a flag added without a help line fails here);
  - GUARDIA_CONFIG is the configuration when --config is not given, and its store.db the
    database when --db is not given (the rollout row lands there, files on the nodes);
  - an inventory using "defaults" deploys (files on the nodes);
  - a node of tier 7 deploys with a configuration listing tier 7, and is refused (exit 2,
    node and tier named) with one that does not;
  - plain (non-terminal) progress of a rollout at or above the summary threshold prints
    summaries and failed nodes only, cut to COLUMNS, without escape sequences; on a terminal
    (a pty) lines fit its width and NO_COLOR removes the colour;
  - at or above that threshold the plain report (deploy, exec) names only the nodes that did not
    succeed, every one of them, under 500 lines; --report full|summary|auto chooses; --json is
    complete.

It reuses test_cli.py's plumbing (CliTest) with its own fleet (fixture cli_ux_fleet).
Environment: as test_cli.py (GUARDIA_TEST_FLEET_CLI, GUARDIA_CLI_WORK, GUARDIA_BIN, ...).
"""

import fcntl
import json
import os
import pty
import re
import select
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import time
import unittest

import test_cli
from test_cli import CliTest, MARK, ROOT, WORK_ROOT, GUARDIA, TIERS, config, kill_group

HEALTHY = [f"node-{i:04d}" for i in range(1, 8)]
REJECT = "node-0008"            # rejects_new_build
COMMANDS = ["deploy", "exec", "serve", "audit", "recover"]
ESC = "\x1b"
CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def accepted_flags(command):
    """The flags `command` accepts, read from its source: every `f == "--x"` comparison, plus
    common_flag()'s (src/app/cli.cpp) when the command calls it."""
    src_dir = os.path.join(ROOT, "src", "app")
    with open(os.path.join(src_dir, f"{command}_command.cpp")) as f:
        src = f.read()
    flags = set(re.findall(r'\bf == "(--[a-z0-9-]+)"', src))
    if "common_flag(f" in src:
        with open(os.path.join(src_dir, "cli.cpp")) as f:
            cli = f.read()
        body = cli[cli.index("bool common_flag("):]
        body = body[:body.index("\n}\n")]
        flags |= set(re.findall(r'flag == "(--[a-z0-9-]+)"', body))
    return flags


def columns(line):
    return len(CSI.sub("", line))


class CliUxTest(CliTest):
    @classmethod
    def setUpClass(cls):
        kinds = cls.load_fleet("cli_ux_fleet")
        want = {**{n: [] for n in HEALTHY}, REJECT: ["rejects_new_build"]}
        if kinds != want:
            raise AssertionError(f"the cli_ux_fleet fixture is not what the tests expect: {kinds}")

    def guardia_env(self, *args, env=None, timeout=test_cli.RUN_TIMEOUT):
        """guardia with extra environment (`env`: name -> value, None removes it)."""
        full = dict(os.environ, **{MARK: WORK_ROOT})
        for k, v in (env or {}).items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        t0 = time.monotonic()
        p = subprocess.Popen([GUARDIA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=full, cwd=self.tmp)
        self.addCleanup(kill_group, p)
        return self.finish(p, t0, timeout)

    # ================================================================== help
    def test_1_help_lists_every_flag(self):
        no_config = {"GUARDIA_CONFIG": self.path("absent.json")}
        for cmd in COMMANDS:
            flags = accepted_flags(cmd)
            self.assertIn("--help", flags, f"{cmd}: no --help in its source")
            for how in (["-h"], ["--help"], ["help"]):
                args = ["help", cmd] if how == ["help"] else [cmd, *how]
                with self.subTest(command=cmd, how=how[0]):
                    r = self.guardia_env(*args, env=no_config)
                    self.assertEqual((r.rc, r.err), (0, ""), r)
                    self.assertTrue(r.out.startswith(f"usage: guardia {cmd}"), r)
                    for flag in sorted(flags):
                        self.assertRegex(r.out, rf"(?m)^\s+(-h, )?{re.escape(flag)}\b",
                                         f"guardia {cmd} --help has no line for {flag}")
                    self.assertRegex(r.out, r"(?m)^\s+-h, --help\b")
                    if cmd != "audit":   # audit reads no configuration
                        self.assertIn(f"configuration now: {no_config['GUARDIA_CONFIG']} (GUARDIA_CONFIG)", r.out)
        # -h after other flags, and the top-level help
        r = self.guardia_env("deploy", "--inventory", "x.json", "-h")
        self.assertEqual((r.rc, r.err), (0, ""), r)
        r = self.guardia_env("audit", "verify", "-h")
        self.assertEqual((r.rc, r.err), (0, ""), r)
        self.assertIn("--db FILE", r.out)
        r = self.guardia_env("help")
        self.assertEqual((r.rc, r.err), (0, ""), r)
        for cmd in COMMANDS:
            self.assertRegex(r.out, rf"(?m)^  {cmd}\b")
        self.assertIn("GUARDIA_CONFIG", r.out)
        # other single-dash arguments are still usage errors
        r = self.guardia_env("deploy", "-x")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("unexpected argument '-x'", r.err)

    # ================================================================== GUARDIA_CONFIG
    def test_2_guardia_config_and_its_store_db(self):
        names = ["node-0001", "node-0002"]
        before = self.check(*names)
        arts = self.artifacts("env")
        os.makedirs(self.path("store"))
        db = self.path("store/from-config.db")
        conf = config()
        conf["store"] = {"db": db}
        conf_path = self.write_json("env-config.json", conf)
        args = ["deploy", "--inventory", self.inventory({n: 2 for n in names}), "--known-hosts", self.known_hosts,
                "--json"]
        for p, _ in arts.values():
            args += ["--artifact", p]
        r = self.guardia_env(*args, env={"GUARDIA_CONFIG": conf_path})
        self.assertEqual(r.rc, 0, r)
        self.assertIn(f"configuration {conf_path} (GUARDIA_CONFIG)", r.err)
        rep = r.json
        after = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], after[n], arts, self.by_name(rep)[n])
        self.assertFalse(os.path.exists(self.path("guardia.db")), "no ./guardia.db: the config's store.db is used")
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = c.execute("SELECT id, status FROM rollouts").fetchall()
            results = c.execute("SELECT node FROM node_results WHERE rollout_id = ?", (rep["rollout_id"],)).fetchall()
        finally:
            c.close()
        self.assertEqual(rows, [(rep["rollout_id"], "SUCCEEDED")])
        self.assertEqual(sorted(x[0] for x in results), names)

        # --config wins over GUARDIA_CONFIG; a GUARDIA_CONFIG that cannot be read is named
        r = self.guardia_env("deploy", "--inventory", "x.json", "--artifact", arts["VERSION"][0],
                             env={"GUARDIA_CONFIG": self.path("missing.json")})
        self.assertEqual(r.rc, 2, r)
        self.assertTrue(r.err.startswith(f"guardia deploy: GUARDIA_CONFIG: cannot read configuration "
                                         f"'{self.path('missing.json')}'"), r)
        r = self.guardia_env("deploy", "--config", conf_path, "-h", env={"GUARDIA_CONFIG": self.path("missing.json")})
        self.assertIn(f"configuration now: {conf_path} (--config)", r.out)

    # ================================================================== inventory defaults
    def test_3_inventory_defaults_deploy(self):
        names = ["node-0003", "node-0004"]
        before = self.check(*names)
        arts = self.artifacts("defaults")
        first = self.inv[names[0]]
        defaults = {"user": first["user"], "auth": first["auth"], "tier": 2, "system_name": "ux-defaults",
                    "requires_restart": True,
                    "health": {k: v for k, v in first["health"].items() if k != "port"}}
        nodes = []
        for n in names:
            node = self.inv[n]
            nodes.append({"name": n, "host": node["host"], "ssh_port": node["ssh_port"],
                          "deploy_path": node["deploy_path"], "shutdown_cmd": node["shutdown_cmd"],
                          "startup_cmd": node["startup_cmd"], "health": {"port": node["health"]["port"]}})
        inv = self.write_json("defaults-inventory.json", {"defaults": defaults, "nodes": nodes})
        r = self.deploy(inv, arts, conf=config())
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([(n["name"], n["tier"]) for n in r.json["nodes"]], [(n, 2) for n in names])
        after = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], after[n], arts, self.by_name(r.json)[n])

        # a bad value in the defaults: exit 2, the node and defaults.<field> named, nothing touched
        bad = self.write_json("bad-defaults.json", {"defaults": dict(defaults, user="-root"), "nodes": nodes})
        r = self.deploy(bad, arts, conf=config(), db="bad.db")
        self.assertEqual(r.rc, 2, r)
        self.assertIn(f"node '{names[0]}': field 'user' (from defaults.user): must not start with '-'", r.err)
        self.assertFalse(os.path.exists(self.path("bad.db")))
        self.assert_untouched(after, self.check(*names))

    # ================================================================== tiers 1..99
    def test_4_tier_7(self):
        names = {"node-0005": 1, "node-0006": 7}
        before = self.check(*names)
        arts = self.artifacts("tier7")
        inv = self.inventory(names)
        r = self.deploy(inv, arts, conf=config(tiers=[TIERS[0], {"tier": 7, "batch_size": 5}]))
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([(t["tier"], t["finished"], t["failed"]) for t in r.json["tiers"]], [(1, 1, 0), (7, 1, 0)])
        after = self.check(*names)
        for n in names:
            self.assert_deployed(before[n], after[n], arts, self.by_name(r.json)[n])
        # the default tiers (1, 2, 3) have no tier 7: refused, node and tier named
        r = self.deploy(inv, arts, db="refused.db")
        self.assertEqual(r.rc, 2, r)
        self.assertIn("node 'node-0006': field 'tier': tier 7 is not in the rollout configuration", r.err)
        self.assert_untouched(after, self.check(*names))

    # ================================================================== progress
    def test_5_plain_progress_summarises_large_rollouts(self):
        names = ["node-0001", "node-0002", "node-0007", REJECT]
        before = self.check(*names)
        arts = self.artifacts("summary")
        inv = self.inventory({n: 2 for n in names})
        env = {"GUARDIA_PROGRESS_SUMMARY_NODES": "4", "COLUMNS": "72", "NO_COLOR": None}
        r = self.guardia_env("deploy", "--inventory", inv, "--known-hosts", self.known_hosts, "--db",
                             self.path("audit.db"), "--config", self.write_json("c.json", config(threshold=100)),
                             "--json", *[x for p, _ in arts.values() for x in ("--artifact", p)], env=env)
        self.assertEqual(r.rc, 1, r)
        self.assertEqual(self.by_name(r.json)[REJECT]["outcome"], "ROLLED_BACK")
        self.assertNotIn(ESC, r.err, "no escape sequence in plain output")
        progress = [line for line in r.err.splitlines() if line.startswith("[")]
        self.assertTrue(progress, r)
        for line in progress:
            self.assertLessEqual(columns(line), 72, f"wider than COLUMNS: {line!r}")
        self.assertTrue(any(line.endswith("\u2026") for line in progress), "a long line is cut with an ellipsis")
        self.assertTrue(any(re.search(r"\] summary: 4/4 done, 1 failed, 0 in flight", line) for line in progress),
                        r.err)
        self.assertTrue(any(re.search(rf"\] {REJECT} ROLLED_BACK", line) for line in progress), r.err)
        for n in names[:3]:
            self.assertFalse(any(f"] {n} DEPLOYED" in line for line in progress), f"no per-node line for {n}")
        after = self.check(*names)
        for n in names[:3]:
            self.assert_deployed(before[n], after[n], arts, self.by_name(r.json)[n])
        self.assert_restored(before[REJECT], after[REJECT], self.by_name(r.json)[REJECT])

        # below the threshold: one line per node, as before (a dry run: nothing changes)
        r = self.guardia_env("deploy", "--dry-run", "--inventory", inv, "--known-hosts", self.known_hosts,
                             "--db", self.path("dry.db"), "--config", self.path("c.json"),
                             *[x for p, _ in arts.values() for x in ("--artifact", p)],
                             env={"GUARDIA_PROGRESS_SUMMARY_NODES": None, "COLUMNS": None})
        self.assertEqual(r.rc, 0, r)
        for n in names:
            self.assertRegex(r.err, rf"(?m)^\[[0-9:]+\] {n} READY")
        self.assertNotIn("summary:", r.err)

    # ================================================================== report
    def test_7_report_summary_at_the_threshold(self):
        """--report auto at/above GUARDIA_PROGRESS_SUMMARY_NODES: the plain report names only the
        nodes that did not deploy (every one of them), under 500 lines; full/summary on request;
        --json still lists every node."""
        names = ["node-0003", "node-0004", "node-0005", REJECT]
        before = self.check(*names)
        arts = self.artifacts("report")
        inv = self.inventory({n: 2 for n in names})
        conf = self.write_json("report.json", config(threshold=100))
        art_args = [x for p, _ in arts.values() for x in ("--artifact", p)]
        env = {"GUARDIA_PROGRESS_SUMMARY_NODES": "4", "COLUMNS": None, "NO_COLOR": None}

        def rows(out):
            return [line.split()[0] for line in out.splitlines() if re.match(r"node-\d{4} ", line)]

        r = self.guardia_env("deploy", "--inventory", inv, "--known-hosts", self.known_hosts, "--db",
                             self.path("report.db"), "--config", conf, *art_args, env=env)
        self.assertEqual(r.rc, 1, r)
        self.assertLess(len(r.out.splitlines()) + len(r.err.splitlines()), 500, r)
        self.assertEqual(rows(r.out), [REJECT], r.out)       # the failed node, and only it
        self.assertRegex(r.out, rf"(?m)^{REJECT} +2 +ROLLED_BACK ")
        self.assertIn("summary: the nodes that did not deploy", r.out)
        self.assertRegex(r.out, r"(?m)^FAILED: 4 node\(s\): 3 deployed, 1 failed, 0 not started")
        after = self.check(*names)
        for n in names[:3]:
            self.assert_deployed(before[n], after[n], arts)
        self.assert_restored(before[REJECT], after[REJECT])
        rollout_id = re.search(r"(?m)^Rollout report: rollout (\S+)", r.out).group(1)
        with sqlite3.connect(self.path("report.db")) as db:
            got = dict(db.execute("SELECT node, status FROM node_results WHERE rollout_id = ?", (rollout_id,)))
        self.assertEqual(got, {**{n: "DEPLOYED" for n in names[:3]}, REJECT: "ROLLED_BACK"})

        # on request: every node (a dry run: nothing changes), or the summary below the threshold
        dry = ["deploy", "--dry-run", "--inventory", inv, "--known-hosts", self.known_hosts, "--db",
               self.path("report-dry.db"), "--config", conf, *art_args]
        r = self.guardia_env(*dry, "--report", "full", env=env)
        self.assertEqual((r.rc, rows(r.out)), (0, names), r)
        r = self.guardia_env(*dry, env=env)
        self.assertEqual((r.rc, rows(r.out)), (0, []), r)
        self.assertRegex(r.out, r"(?m)^SUCCEEDED: 4 node\(s\): 4 ready")
        r = self.guardia_env(*dry, "--report", "summary", env={"GUARDIA_PROGRESS_SUMMARY_NODES": None})
        self.assertEqual((r.rc, rows(r.out)), (0, []), r)
        r = self.guardia_env(*dry, "--report", "auto", "--json", env=env)
        self.assertEqual((r.rc, sorted(n["name"] for n in r.json["nodes"])), (0, sorted(names)), r)
        r = self.guardia_env(*dry, "--report", "brief", env=env)
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--report: expected full, summary or auto, got 'brief'", r.err)
        self.assert_untouched(after, self.check(*names))

        # guardia exec: the same rule (auto at the threshold: only the nodes that failed)
        two = self.inventory({n: 2 for n in names[:2]}, name="two.json")
        exec_env = {"GUARDIA_PROGRESS_SUMMARY_NODES": "2"}
        r = self.guardia_env("exec", "--inventory", two, "--known-hosts", self.known_hosts, "--", "true",
                             env=exec_env)
        self.assertEqual((r.rc, rows(r.out)), (0, []), r)
        self.assertRegex(r.out, r"(?m)^2 of 2 node\(s\) ok")
        r = self.guardia_env("exec", "--inventory", two, "--known-hosts", self.known_hosts, "--", "false",
                             env=exec_env)
        self.assertEqual((r.rc, rows(r.out)), (1, names[:2]), r)
        r = self.guardia_env("exec", "--inventory", two, "--known-hosts", self.known_hosts, "--report", "full",
                             "--", "true", env=exec_env)
        self.assertEqual((r.rc, rows(r.out)), (0, names[:2]), r)

        # guardia rollback: the same rule. Three nodes to restore, at a threshold of 3: the summary
        # (no node row: every node was restored), and the nodes really are as they were before.
        rb = ["rollback", "--rollout", rollout_id, "--inventory", inv, "--known-hosts", self.known_hosts,
              "--db", self.path("report.db"), "--config", conf]
        r = self.guardia_env(*rb, env={"GUARDIA_PROGRESS_SUMMARY_NODES": "3"})
        self.assertEqual((r.rc, rows(r.out)), (0, []), r)
        restored = self.check(*names)
        for n in names[:3]:
            self.assert_restored(before[n], restored[n])
        # Again: every node now refuses (it no longer runs that release). The summary names each
        # node not restored; full names them too; --report brief is bad input.
        r = self.guardia_env(*rb, "--report", "summary", env={"GUARDIA_PROGRESS_SUMMARY_NODES": None})
        self.assertEqual((r.rc, sorted(rows(r.out))), (1, names[:3]), r)
        r = self.guardia_env(*rb, "--report", "full", env={"GUARDIA_PROGRESS_SUMMARY_NODES": "3"})
        self.assertEqual((r.rc, sorted(rows(r.out))), (1, names[:3]), r)
        r = self.guardia_env(*rb, "--report", "brief", env={})
        self.assertEqual(r.rc, 2, r)
        self.assertIn("--report: expected full, summary or auto, got 'brief'", r.err)
        self.assert_untouched(restored, self.check(*names))

    def run_on_pty(self, args, cols, env):
        """guardia with stderr on a pty of `cols` columns (stdout a pipe): (rc, stderr text)."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
        full = dict(os.environ, **{MARK: WORK_ROOT})
        full.pop("COLUMNS", None)
        full.update({k: v for k, v in env.items() if v is not None})
        for k, v in env.items():
            if v is None:
                full.pop(k, None)
        p = subprocess.Popen([GUARDIA, *args], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=full, cwd=self.tmp)
        self.addCleanup(kill_group, p)
        os.close(slave)
        data = b""
        deadline = time.monotonic() + test_cli.RUN_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:     # EIO: every writer closed the pty
                    break
                if not chunk:
                    break
                data += chunk
            elif p.poll() is not None:
                break
        os.close(master)
        p.stdout.read()
        p.stdout.close()
        p.wait(timeout=30)
        return p.returncode, data.decode(errors="replace")

    def test_8_mass_failure_does_not_flood_the_log(self):
        """A summarising display gives a line to the first 50 failed nodes, then one line saying
        that further failures are only counted; the report still names every one of them."""
        with socket.socket() as probe:           # a loopback port nobody listens on
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        template = json.loads(json.dumps(self.inv["node-0003"]))
        nodes = []
        for i in range(60):
            n = dict(template, name=f"gone-{i:03d}", ssh_port=closed_port, tier=3,
                     deploy_path=f"/srv/gone-{i:03d}/app")
            nodes.append(n)
        inv = self.write_json("gone.json", {"nodes": nodes})
        conf = self.write_json("gone-conf.json", config(threshold=100))
        arts = self.artifacts("gone")
        art_args = [x for p, _ in arts.values() for x in ("--artifact", p)]
        r = self.guardia_env("deploy", "--inventory", inv, "--known-hosts", self.known_hosts, "--db",
                             self.path("gone.db"), "--config", conf, *art_args,
                             env={"GUARDIA_PROGRESS_SUMMARY_NODES": "10", "COLUMNS": None})
        self.assertEqual(r.rc, 1, r)
        failed_lines = [ln for ln in r.err.splitlines() if re.search(r" gone-\d{3} FAILED", ln)]
        self.assertEqual(len(failed_lines), 50, r.err)
        self.assertEqual(r.err.count("more than 50 nodes failed: further failures are counted in the "
                                     "summaries, the report names them"), 1, r.err)
        self.assertRegex(r.err, r"(?m)summary: 60/60 done, 60 failed")
        reported = sorted(ln.split()[0] for ln in r.out.splitlines() if re.match(r"gone-\d{3} ", ln))
        self.assertEqual(reported, [f"gone-{i:03d}" for i in range(60)], r.out)

    def test_6_terminal_width_and_no_color(self):
        names = ["node-0003", "node-0004"]
        arts = self.artifacts("pty")
        inv = self.inventory({n: 2 for n in names})
        args = ["deploy", "--dry-run", "--inventory", inv, "--known-hosts", self.known_hosts, "--db",
                self.path("pty.db"), *[x for p, _ in arts.values() for x in ("--artifact", p)]]
        rc, err = self.run_on_pty(args, 50, {"NO_COLOR": None})
        self.assertEqual(rc, 0, err)
        self.assertIn("\x1b[1m", err, "colour on a terminal")
        self.assertIn("rollout ", err)
        progress = [x for x in CSI.sub("", err.replace("\r", "")).split("\n")
                    if x.startswith("rollout ") or x.startswith("  tier ")]
        self.assertTrue(progress, err)
        for line in progress:
            self.assertLessEqual(len(line), 50, f"wider than the terminal: {line!r}")
        self.assertTrue(any(line.endswith("\u2026") for line in progress), err)
        rc, err = self.run_on_pty(args, 50, {"NO_COLOR": "1"})
        self.assertEqual(rc, 0, err)
        self.assertIn("rollout ", err)
        self.assertNotIn("\x1b[1m", err, "NO_COLOR: no colour")
        self.assertNotIn("\x1b[0m", err, "NO_COLOR: no colour")


def load_tests(loader, tests, pattern):
    """Only this file's tests (not the CliTest ones it inherits)."""
    names = sorted(n for n in CliUxTest.__dict__ if n.startswith("test_"))
    return unittest.TestSuite(CliUxTest(n) for n in names)


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(test_cli.cleanup())
    unittest.main(verbosity=2)
