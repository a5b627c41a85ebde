"""Shared plumbing of the peer deploy scripts in bench/peers/ (stdlib only).

Every peer performs the same per-node deployment: connect with the node's key and known_hosts, `df -P` pre-check of deploy_path,
backup `cp -a deploy_path deploy_path.bak_<stamp>`, upload the artifact to a staging name
inside deploy_path, verify its digest remotely, shutdown_cmd, rename the artifact into place,
startup_cmd, HTTP health check; on a failure after the service was touched: shutdown, restore
the backup exactly, startup. This module only holds what is not the tool's job: arguments,
inventory, tiers, digests, the final one-line JSON summary.
"""
import argparse
import hashlib
import json
import os
import shlex
import sys
import time

DISK_THRESHOLD = 90        # percent, as the sketch and the specification
SAFETY_GATE = 0.10         # abort the rollout when a tier's failure rate exceeds this,
GATE_MIN_SAMPLE = 10       # judged once this many of the tier (or all of it) have finished
TIER_CONCURRENCY = {1: 1, 2: 50}   # tier 3: all at once
STAGE_SUFFIX = ".stage"    # staging name: <deploy_path>/.<artifact name>.stage


def parse_args(description, extra=None):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--inventory", required=True, help="DIR/inventory.json of tools/fleet")
    ap.add_argument("--artifact", required=True, help="file to deploy as deploy_path/<its name>")
    ap.add_argument("--known-hosts", help="known_hosts file (default: beside the inventory)")
    ap.add_argument("--key", help="private key (default: each node's auth.key_file)")
    if extra:
        extra(ap)
    a = ap.parse_args()
    if not a.known_hosts:
        a.known_hosts = os.path.join(os.path.dirname(os.path.abspath(a.inventory)), "known_hosts")
    return a


def load_nodes(path, key=None):
    nodes = json.load(open(path))["nodes"]
    for n in nodes:
        n.setdefault("tier", 2)
        n.setdefault("requires_restart", True)
        if key:
            n["auth"] = {"key_file": key}
        if "key_file" not in n.get("auth", {}):
            sys.exit(f"{n['name']}: only key authentication is supported by the peer scripts")
    return nodes


def tiers(nodes):
    """[(tier, [nodes])] in tier order 1, 2, 3."""
    out = {}
    for n in nodes:
        out.setdefault(int(n["tier"]), []).append(n)
    return sorted(out.items())


def concurrency(tier, count):
    return TIER_CONCURRENCY.get(tier, max(1, count))


def gate_tripped(done, failed, tier_size):
    return done >= min(GATE_MIN_SAMPLE, tier_size) and failed / done > SAFETY_GATE


def required_consecutive(node):
    return 3 if int(node["tier"]) == 1 else 1


def file_digest(path, algo="sha256"):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stamp():
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime())


def q(s):
    return shlex.quote(str(s))


def paths(node, artifact_name, ts):
    d = node["deploy_path"]
    return {"d": d, "stage": f"{d}/.{artifact_name}{STAGE_SUFFIX}", "target": f"{d}/{artifact_name}",
            "backup": f"{d}.bak_{ts}", "restore_tmp": f"{d}.rollback_tmp"}


def df_command(d):
    return ("LC_ALL=C df -P -- " + q(d) + " | awk 'NR==2 { sub(\"%\", \"\", $5); print $5 }'")


def restore_command(p):
    """Exact restore: a fresh copy of the backup replaces deploy_path as a whole."""
    return (f"rm -rf -- {q(p['restore_tmp'])} && cp -a -- {q(p['backup'])} {q(p['restore_tmp'])}"
            f" && rm -rf -- {q(p['d'])} && mv -- {q(p['restore_tmp'])} {q(p['d'])}")


def summary(tool, nodes, results, started, extra=None):
    """Prints the one-line JSON summary; returns the exit code (0 only if every node deployed).

    results: name -> outcome string: "deployed", "failed_unchanged", "rolled_back",
    "rollback_failed", "not_started" (missing = not started).
    """
    counts = {}
    for n in nodes:
        o = results.get(n["name"], "not_started")
        counts[o] = counts.get(o, 0) + 1
    ok = counts.get("deployed", 0)
    out = {"tool": tool, "nodes": len(nodes), "ok": ok, "failed": len(nodes) - ok,
           "outcomes": counts, "wall_s": round(time.monotonic() - started, 3)}
    if extra:
        out.update(extra)
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0 if ok == len(nodes) else 1
