#!/usr/bin/python3
"""Peer: the rollout as an Ansible playbook (deploy.yml + node.yml beside this file).

    bench/peers/ansible/ansible_deploy.py --inventory DIR/inventory.json --artifact FILE
                                          [--known-hosts FILE] [--key FILE] [--verbose]

Generates an Ansible inventory from the fleet's inventory.json (groups tier1/tier2/tier3;
per host ansible_host, ansible_port, ansible_user, ansible_ssh_private_key_file and the
deployment vars; for all hosts `-o UserKnownHostsFile=<known_hosts> -o StrictHostKeyChecking=yes`),
runs `ansible-playbook` with ansible.cfg from this directory (forks 50, pipelining, no fact
gathering, Ansible's default SSH ControlMaster/ControlPersist=60s), parses the PLAY RECAP and
prints the one-line JSON summary. Ansible's own output goes to stderr (failures only, unless
--verbose). ControlPersist masters outlive the run by up to 60 s unless killed (the benchmark
runner kills and accounts them).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import peer_common as pc  # noqa: E402

RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def inventory(nodes, known_hosts, ssh_options=()):
    groups = {}
    for n in nodes:
        h = n["health"]
        groups.setdefault(f"tier{int(n['tier'])}", {"hosts": {}})["hosts"][n["name"]] = {
            "ansible_host": n["host"], "ansible_port": int(n["ssh_port"]), "ansible_user": n["user"],
            "ansible_ssh_private_key_file": n["auth"]["key_file"],
            "deploy_path": n["deploy_path"], "shutdown_cmd": n["shutdown_cmd"],
            "startup_cmd": n["startup_cmd"], "requires_restart": bool(n.get("requires_restart", True)),
            "tier": int(n["tier"]), "health_port": int(h["port"]), "health_path": h.get("path", "/"),
            "health_timeout": int(h.get("timeout_s", 30)), "health_interval": max(1, int(h.get("interval_s", 2))),
        }
    for t in ("tier1", "tier2", "tier3"):
        groups.setdefault(t, {"hosts": {}})
    return {"all": {
        "vars": {"ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} "
                                            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
                                            + "".join(" -o " + o for o in ssh_options)},
        "children": groups}}


def main():
    a = pc.parse_args(__doc__.splitlines()[0],
                      lambda ap: (ap.add_argument("--verbose", action="store_true",
                                                  help="copy all of Ansible's output to stderr"),
                                  ap.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                                                  help="extra ssh -o option, e.g. KexAlgorithms=curve25519-sha256")))
    started = time.monotonic()
    nodes = pc.load_nodes(a.inventory, a.key)
    artifact = os.path.abspath(a.artifact)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally: remove the temp dir
    work = tempfile.mkdtemp(prefix="guardia-ansible-")
    try:
        inv = os.path.join(work, "hosts.yml")
        with open(inv, "w") as f:
            json.dump(inventory(nodes, os.path.abspath(a.known_hosts), a.ssh_option), f)   # JSON is YAML
        extra = os.path.join(work, "vars.json")
        with open(extra, "w") as f:
            json.dump({"artifact": artifact, "artifact_name": os.path.basename(artifact),
                       "artifact_sha256": pc.file_digest(artifact), "stamp": pc.stamp()}, f)
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(HERE, "ansible.cfg"),
                   ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(work, "cp"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_FORCE_COLOR="0", PYTHONWARNINGS="ignore")
        log = os.path.join(work, "ansible.log")
        with open(log, "w") as out:
            rc = subprocess.call(["ansible-playbook", "-i", inv, "-e", "@" + extra,
                                  os.path.join(HERE, "deploy.yml")],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        text = open(log, errors="replace").read()
        stats = {}
        in_recap = False
        for line in text.splitlines():
            if line.startswith("PLAY RECAP"):
                in_recap = True
                continue
            m = RECAP.match(line.strip()) if in_recap else None
            if m:
                stats[m.group(1)] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
        results = {}
        for name, s in stats.items():
            if s.get("unreachable"):
                results[name] = "unreachable"
            elif s.get("failed") or s.get("rescued"):
                results[name] = "rolled_back_or_failed"
            else:
                results[name] = "deployed"
        if a.verbose:
            sys.stderr.write(text)
        else:
            for line in text.splitlines():
                if line.startswith(("fatal:", "failed:", "ERROR", "[WARNING]", "[ERROR]")) or "UNREACHABLE" in line:
                    sys.stderr.write(line[:500] + "\n")
        return pc.summary("ansible", nodes, results, started, {"ansible_exit": rc}) or (1 if rc else 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
