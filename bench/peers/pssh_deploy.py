#!/usr/bin/python3
"""Peer: the rollout as a shell-minded operator does it with pssh (parallel-ssh, Debian's names).

    bench/peers/pssh_deploy.py --inventory DIR/inventory.json --artifact FILE
                               [--known-hosts FILE] [--key FILE] [--par 50]

Per tier (tier 1 with -p 1, tier 2 with -p 50, tier 3 with -p N), stage by stage over all
hosts still in the running, each stage one `parallel-ssh` (one OpenSSH `ssh` per host):
  1. pre-check (`df -P`) + backup (`cp -a`);
  2. upload: the artifact is sent as `parallel-ssh -I` input into `cat > <deploy_path>/.NAME.stage`
     (parallel-scp cannot be used: it copies to ONE remote path on every host, and the fleet's
     nodes share one machine with a different deploy_path each);
  3. verify `sha256sum` against the local digest, shutdown_cmd, rename into place, startup_cmd;
then health checks from this script (50 threads, urllib), then rollback of every node that
failed after its service was touched (one more `parallel-ssh`: shutdown, exact restore,
startup; then health again), and removal of staging files of nodes that failed before.
Safety gate between tiers: a tier above 10 % failures stops the rollout.

pssh runs the same command on every host, so each node must find its own deploy_path and
scripts: the remote command reads the sshd port from $SSH_CONNECTION and looks itself up in
a small map file (`case $port in ...`) this script writes to a 0755 temporary directory.
On real hosts the layout would be uniform and that lookup unnecessary; it costs one `.` of
a file per command here.
"""
import concurrent.futures
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

STATUS = re.compile(r"^\[\d+\] \S+ \[(SUCCESS|FAILURE)\] (\S+)(?: (.*))?$")


class Pssh:
    def __init__(self, work, known_hosts, par, ssh_options=()):
        self.work = work
        self.ssh_options = list(ssh_options)
        self.known_hosts = known_hosts
        self.par = par
        self.calls = 0
        self.stages = {}   # label -> {"wall_s", "cpu_s" (parallel-ssh and its ssh processes), "hosts"}

    def run(self, nodes, command, par, stdin_file=None, timeout=600, label="other"):
        """Runs command on nodes; returns {name: (exit_code or None, stderr tail)}."""
        self.calls += 1
        t0, ru0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        by_host = {f"{n['user']}@{n['host']}:{n['ssh_port']}": n for n in nodes}
        hosts = os.path.join(self.work, f"hosts-{self.calls}")
        with open(hosts, "w") as f:
            f.write("".join(h + "\n" for h in by_host))
        errdir = os.path.join(self.work, f"err-{self.calls}")
        keys = {n["auth"]["key_file"] for n in nodes}
        if len(keys) != 1:
            raise SystemExit("pssh_deploy: pssh takes one key for all hosts; use --key")
        cmd = ["parallel-ssh", "-h", hosts, "-p", str(par), "-t", str(timeout), "-e", errdir,
               "-O", "BatchMode=yes", "-O", "StrictHostKeyChecking=yes",
               "-O", f"UserKnownHostsFile={self.known_hosts}", "-O", "IdentitiesOnly=yes",
               "-X", "-i", "-X", keys.pop()]
        for o in self.ssh_options:
            cmd += ["-O", o]
        if stdin_file:
            cmd.append("-I")
        cmd.append(command)
        with open(stdin_file or os.devnull, "rb") as stdin:
            p = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        st = self.stages.setdefault(label, {"wall_s": 0.0, "cpu_s": 0.0, "hosts": 0})
        st["wall_s"] = round(st["wall_s"] + time.monotonic() - t0, 3)
        st["cpu_s"] = round(st["cpu_s"] + ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 3)
        st["hosts"] += len(nodes)
        results = {}
        for line in p.stdout.splitlines():
            m = STATUS.match(line)
            if not m or m.group(2) not in by_host:
                continue
            code = 0
            if m.group(1) == "FAILURE":
                e = re.search(r"Exited with error code (\d+)", m.group(3) or "")
                code = int(e.group(1)) if e else None   # None: killed, timeout, ssh failure
            try:
                err = open(os.path.join(errdir, m.group(2)), errors="replace").read()[-300:]
            except OSError:
                err = ""
            results[by_host[m.group(2)]["name"]] = (code, (m.group(3) or "") + " " + err.strip())
        for h, n in by_host.items():
            results.setdefault(n["name"], (None, "no status from parallel-ssh: " + p.stderr[-300:]))
        return results


def healthy(node):
    h = node["health"]
    url = f"http://{node['host']}:{h['port']}{h.get('path', '/')}"
    interval = h.get("interval_s", 2)
    deadline = time.monotonic() + h.get("timeout_s", 30)
    need, good = pc.required_consecutive(node), 0
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                good = good + 1 if r.status == 200 else 0
        except (urllib.error.URLError, OSError):
            good = 0
        if good >= need:
            return True
        if time.monotonic() + interval > deadline:
            return False
        time.sleep(interval)


def health_all(nodes, par):
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(par, len(nodes)))) as ex:
        return dict(zip([n["name"] for n in nodes], ex.map(healthy, nodes)))


def write_map(path, nodes):
    """The per-node lookup each remote command sources: sets d, sd, su from the sshd port."""
    lines = ["case $port in"]
    for n in nodes:
        lines.append(f"{int(n['ssh_port'])}) d={pc.q(n['deploy_path'])}; sd={pc.q(n['shutdown_cmd'])};"
                     f" su={pc.q(n['startup_cmd'])}; rr={1 if n.get('requires_restart', True) else 0};;")
    lines.append("*) echo \"port $port is not in the node map\" >&2; exit 9;;")
    lines.append("esac")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o644)


def main():
    a = pc.parse_args(__doc__.splitlines()[0],
                      lambda ap: (ap.add_argument("--par", type=int, default=50, help="tier 2 parallelism"),
                                  ap.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                                                  help="extra ssh -o option, e.g. KexAlgorithms=curve25519-sha256")))
    started = time.monotonic()
    pc.TIER_CONCURRENCY[2] = a.par
    nodes = pc.load_nodes(a.inventory, a.key)
    artifact = os.path.abspath(a.artifact)
    name = os.path.basename(artifact)
    sha256 = pc.file_digest(artifact)
    ts = pc.stamp()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally: remove the temp dir
    work = tempfile.mkdtemp(prefix="guardia-pssh-")
    os.chmod(work, 0o755)
    results = {}
    aborted = False
    try:
        mapfile = os.path.join(work, "nodes.sh")
        write_map(mapfile, nodes)
        ps = Pssh(work, a.known_hosts, a.par, a.ssh_option)
        head = f"LC_ALL=C; set -- $SSH_CONNECTION; port=$4; . {pc.q(mapfile)}; "
        stage = f"\"$d\"/.{pc.q(name)}{pc.STAGE_SUFFIX}"
        target = f"\"$d\"/{pc.q(name)}"
        backup = f"\"$d\".bak_{ts}"
        precheck_backup = (head + "[ -d \"$d\" ] || { echo \"deploy path $d missing\" >&2; exit 10; }; "
                           "u=$(df -P -- \"$d\" | awk 'NR==2 { sub(\"%\", \"\", $5); print $5 }'); "
                           f"[ -n \"$u\" ] && [ \"$u\" -le {pc.DISK_THRESHOLD} ] || "
                           "{ echo \"disk usage $u% above threshold\" >&2; exit 11; }; "
                           f"cp -a -- \"$d\" {backup} || exit 20")
        upload = head + f"cat > {stage}"
        activate = (head + f"h=$(sha256sum < {stage}) || exit 40; [ \"${{h%% *}}\" = {sha256} ] || "
                    "{ echo \"sha256 mismatch: $h\" >&2; exit 41; }; "
                    "if [ $rr = 1 ]; then eval \"$sd\" || exit 50; fi; "
                    f"mv -f -- {stage} {target} || exit 51; "
                    "if [ $rr = 1 ]; then eval \"$su\" || exit 52; fi")
        discard = head + f"rm -f -- {stage}"
        restore_tmp = "\"$d\".rollback_tmp"
        rollback = (head + "if [ $rr = 1 ]; then eval \"$sd\"; fi; "
                    f"rm -rf -- {restore_tmp} && cp -a -- {backup} {restore_tmp} && rm -rf -- \"$d\" && "
                    f"mv -- {restore_tmp} \"$d\" || exit 60; "
                    "if [ $rr = 1 ]; then eval \"$su\" || exit 61; fi")

        def report(stage_name, res):
            for nm, (code, err) in res.items():
                if code != 0:
                    print(f"[{stage_name} FAILED] {nm}: exit {code}: {err}", file=sys.stderr)

        for tier, tier_nodes in pc.tiers(nodes):
            if aborted:
                break
            par = pc.concurrency(tier, len(tier_nodes))
            by_name = {n["name"]: n for n in tier_nodes}
            # 1. pre-check + backup
            r = ps.run(tier_nodes, precheck_backup, par, label="precheck_backup")
            report("PRECHECK/BACKUP", r)
            for nm, (code, _) in r.items():
                if code != 0:
                    results[nm] = "failed_unchanged"
            alive = [n for n in tier_nodes if n["name"] not in results]
            # 2. upload
            r = ps.run(alive, upload, par, stdin_file=artifact, label="upload") if alive else {}
            report("UPLOAD", r)
            discard_these = [by_name[nm] for nm, (code, _) in r.items() if code != 0]
            alive = [n for n in alive if r[n["name"]][0] == 0]
            # 3. verify, shutdown, activate, startup
            r = ps.run(alive, activate, par, label="verify_restart") if alive else {}
            report("VERIFY/RESTART", r)
            to_rollback = []
            for nm, (code, _) in r.items():
                if code in (40, 41):
                    discard_these.append(by_name[nm])
                elif code != 0:
                    to_rollback.append(by_name[nm])   # shutdown may have run: roll back
            alive = [n for n in alive if r[n["name"]][0] == 0]
            # 4. health
            t0 = time.monotonic()
            h = health_all(alive, par) if alive else {}
            ps.stages.setdefault("health", {"wall_s": 0.0, "hosts": 0})
            ps.stages["health"]["wall_s"] = round(ps.stages["health"]["wall_s"] + time.monotonic() - t0, 3)
            ps.stages["health"]["hosts"] += len(alive)
            for n in alive:
                if h[n["name"]]:
                    results[n["name"]] = "deployed"
                else:
                    print(f"[HEALTH FAILED] {n['name']}", file=sys.stderr)
                    to_rollback.append(n)
            # 5. clean up / roll back the failed ones
            for n in discard_these:
                results[n["name"]] = "failed_unchanged"
            if discard_these:
                ps.run(discard_these, discard, par, label="discard")
            if to_rollback:
                r = ps.run(to_rollback, rollback, par, label="rollback")
                report("ROLLBACK", r)
                back = [n for n in to_rollback if r[n["name"]][0] == 0]
                h = health_all(back, par) if back else {}
                for n in to_rollback:
                    results[n["name"]] = "rolled_back" if h.get(n["name"]) else "rollback_failed"
            failed = sum(1 for n in tier_nodes if results.get(n["name"]) != "deployed")
            if pc.gate_tripped(len(tier_nodes), failed, len(tier_nodes)):
                aborted = True
                print(f"[ABORT] tier {tier}: {failed}/{len(tier_nodes)} failed", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pc.summary("pssh", nodes, results, started, {"aborted": aborted, "pssh_runs": ps.calls,
                                                             "stages": ps.stages})


if __name__ == "__main__":
    sys.exit(main())
