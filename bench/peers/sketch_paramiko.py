#!/usr/bin/python3
"""Peer: the original Python sketch (seed/deploy-engine-spec.ko.txt), run as written where it can.

    bench/peers/sketch_paramiko.py --inventory DIR/inventory.json --artifact FILE
                                   [--known-hosts FILE] [--key FILE]

Kept from the sketch: paramiko SSHClient, one SSH connection per node and one exec channel
per command, one SFTP session per upload, MD5 computed locally for every node and checked
with a remote `md5sum`, a blocking HTTP health loop (urllib in place of requests.get, which
is not installed), nodes strictly one after another, the rollout stops at the first failed
node (RollingDeployer.deploy).

Fixed, as the specification requires of any deployment (otherwise the comparison would be with a
broken deployment): host keys checked against known_hosts (RejectPolicy, not AutoAddPolicy),
key auth instead of a password, every path shell-quoted, `df -P` on deploy_path instead of
`df -h /app`, the node's own shutdown/startup commands, every exit code checked, the
artifact uploaded to a staging name and renamed into place after shutdown (the sketch's
`cp X X` of the live file), rollback only when the live node was changed, and an exact
restore instead of `cp -rp X.bak X` (which nests the backup inside X).
"""
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

import paramiko  # noqa: E402


class DeployError(Exception):
    pass


class SSHExecutor:
    def __init__(self, host, user, key_file, known_hosts, port=22):
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(known_hosts)
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self.client.connect(host, port=port, username=user, key_filename=key_file, timeout=10,
                            allow_agent=False, look_for_keys=False)

    def execute_command(self, command, timeout=300):
        """Remote command; the exit code is always checked by the caller."""
        stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        exit_code = stdout.channel.recv_exit_status()
        return {"exit_code": exit_code,
                "stdout": stdout.read().decode("utf-8", errors="replace"),
                "stderr": stderr.read().decode("utf-8", errors="replace")}

    def check(self, command, what, timeout=300):
        r = self.execute_command(command, timeout)
        if r["exit_code"] != 0:
            raise DeployError(f"{what} failed (exit {r['exit_code']}): {r['stderr'].strip()[-300:]}")
        return r

    def upload_file(self, local_path, remote_path):
        """SFTP upload, then the remote MD5 for the integrity check."""
        sftp = self.client.open_sftp()
        sftp.put(local_path, remote_path)
        sftp.close()
        result = self.check("md5sum -- " + pc.q(remote_path), "md5sum")
        return result["stdout"].split()[0]

    def close(self):
        self.client.close()


class RollingDeployer:
    def __init__(self, known_hosts):
        self.known_hosts = known_hosts
        self.results = {}

    def deploy(self, nodes, artifact_path):
        """Rolling deployment, one node after another; stops at the first failure."""
        for node in nodes:
            if not self._deploy_single_node(node, artifact_path):
                return False
        return True

    def _deploy_single_node(self, node, artifact_path):
        name = os.path.basename(artifact_path)
        ts = None
        live_changed = False
        staged = False
        executor = None
        p = None
        try:
            executor = SSHExecutor(node["host"], node["user"], node["auth"]["key_file"],
                                   self.known_hosts, node["ssh_port"])
            # 1. pre-check: disk usage
            result = executor.check(pc.df_command(node["deploy_path"]), "pre-check")
            usage = int(result["stdout"].strip())
            if usage > pc.DISK_THRESHOLD:
                raise DeployError(f"disk usage {usage}% above {pc.DISK_THRESHOLD}%")
            # 2. backup (timestamped)
            ts = pc.stamp()
            p = pc.paths(node, name, ts)
            executor.check(f"cp -a -- {pc.q(p['d'])} {pc.q(p['backup'])}", "backup")
            # 3. SFTP transfer + integrity check
            local_md5 = self._local_md5(artifact_path)
            staged = True
            remote_md5 = executor.upload_file(artifact_path, p["stage"])
            if local_md5 != remote_md5:
                raise DeployError(f"MD5 mismatch: {local_md5} vs {remote_md5}")
            # 4. restart
            if node.get("requires_restart", True):
                live_changed = True
                executor.check(node["shutdown_cmd"], "shutdown")
            live_changed = True
            executor.check(f"mv -f -- {pc.q(p['stage'])} {pc.q(p['target'])}", "activate")
            staged = False
            if node.get("requires_restart", True):
                executor.check(node["startup_cmd"], "startup")
            # 5. health check
            if not self._health_check(node):
                raise DeployError("health check failed, rolling back")
            self.results[node["name"]] = "deployed"
            return True
        except Exception as e:
            print(f"[DEPLOY_FAILED] {node['name']}: {e}", file=sys.stderr)
            if live_changed:
                ok = self._rollback(executor, node, p)
                self.results[node["name"]] = "rolled_back" if ok else "rollback_failed"
            else:
                if staged and executor:
                    executor.execute_command("rm -f -- " + pc.q(p["stage"]))
                self.results[node["name"]] = "failed_unchanged"
            return False
        finally:
            if executor:
                executor.close()

    def _health_check(self, node, restored=False):
        """Polls the health URL every interval_s for up to timeout_s (blocking)."""
        h = node["health"]
        url = f"http://{node['host']}:{h['port']}{h.get('path', '/')}"
        deadline = time.time() + h.get("timeout_s", 30)
        need = pc.required_consecutive(node)
        good = 0
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=3) as r:
                    good = good + 1 if r.status == 200 else 0
            except (urllib.error.URLError, OSError):
                good = 0
            if good >= need:
                return True
            time.sleep(h.get("interval_s", 2))
        return False

    def _rollback(self, executor, node, p):
        """Back to the backup: shutdown, exact restore, startup, health."""
        try:
            executor.execute_command(node["shutdown_cmd"])
            executor.check(pc.restore_command(p), "restore")
            executor.check(node["startup_cmd"], "rollback startup")
            return self._health_check(node)
        except Exception as e:
            print(f"[ROLLBACK ERROR] {node['name']}: {e}", file=sys.stderr)
            return False

    @staticmethod
    def _local_md5(path):
        with open(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()


def main():
    a = pc.parse_args(__doc__.splitlines()[0])
    started = time.monotonic()
    nodes = pc.load_nodes(a.inventory, a.key)
    ordered = [n for _, tier_nodes in pc.tiers(nodes) for n in tier_nodes]
    deployer = RollingDeployer(a.known_hosts)
    deployer.deploy(ordered, os.path.abspath(a.artifact))
    return pc.summary("sketch", nodes, deployer.results, started)


if __name__ == "__main__":
    sys.exit(main())
