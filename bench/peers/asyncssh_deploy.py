#!/usr/bin/python3
"""Peer: the same rollout written with asyncssh on one asyncio event loop.

    bench/peers/asyncssh_deploy.py --inventory DIR/inventory.json --artifact FILE
                                   [--known-hosts FILE] [--key FILE]

What a competent Python author would write after reading the specification: tiers in order
(tier 1 one node at a time with 3 consecutive healthy answers, tier 2 at most 50 nodes in
flight through a sliding semaphore, tier 3 all at once), one SSH connection per node, one
remote command per step, SFTP upload to a staging name, remote `sha256sum` against the
local digest (hashed once), shutdown, rename into place, startup, health by a raw HTTP/1.1
GET on the loop; rollback (shutdown, exact restore, startup, health) when a node fails
after its service was touched. Safety gate: once a tier's failure rate exceeds 10 %, no
further node is started (nodes in flight finish), later tiers are skipped.

known_hosts and the client key are parsed once for the rollout: handing asyncssh their paths
re-reads and re-parses both on every connection (known_hosts matching alone took 1.8 s of
CPU for 200 connections, and grows with N x N). SSH compression is off, as in OpenSSH's
client, paramiko and Guardia: asyncssh alone offers zlib by default, and zlib on a random
artifact cost 4 s of CPU per 200 nodes for nothing. The cipher stays asyncssh's default
(chacha20-poly1305, which it computes with one `cryptography` context per packet).
"""
import asyncio
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

COMPRESSION_ALGS = None   # set by --compression

warnings.filterwarnings("ignore", category=DeprecationWarning)
try:
    from cryptography.utils import CryptographyDeprecationWarning
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
except ImportError:
    pass
import asyncssh  # noqa: E402


class DeployError(Exception):
    pass


async def http_status(host, port, path, timeout):
    """One HTTP/1.1 GET; returns the status code (0 on any error)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else 0
    except (OSError, ValueError, asyncio.TimeoutError):
        return 0
    finally:
        writer.close()


async def health_check(node):
    h = node["health"]
    interval = h.get("interval_s", 2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + h.get("timeout_s", 30)
    need, good = pc.required_consecutive(node), 0
    while True:
        status = await http_status(node["host"], h["port"], h.get("path", "/"), 3)
        good = good + 1 if status == 200 else 0
        if good >= need:
            return True
        if loop.time() + interval > deadline:
            return False
        await asyncio.sleep(interval)


class Node:
    def __init__(self, node, artifact, sha256, known_hosts, keys, ts):
        self.n = node
        self.artifact = artifact
        self.sha256 = sha256
        self.known_hosts = known_hosts
        self.keys = keys
        self.p = pc.paths(node, os.path.basename(artifact), ts)
        self.conn = None

    async def run(self, cmd, what, timeout=300):
        r = await self.conn.run(cmd, check=False, timeout=timeout)
        if r.exit_status != 0:
            raise DeployError(f"{what} failed (exit {r.exit_status}): {str(r.stderr).strip()[-300:]}")
        return r.stdout

    async def deploy(self):
        n, p = self.n, self.p
        live_changed = staged = False
        try:
            self.conn = await asyncssh.connect(
                n["host"], port=n["ssh_port"], username=n["user"], client_keys=self.keys,
                known_hosts=self.known_hosts, agent_path=None, config=None, connect_timeout=10,
                compression_algs=COMPRESSION_ALGS)
            usage = int((await self.run(pc.df_command(p["d"]), "pre-check")).strip())
            if usage > pc.DISK_THRESHOLD:
                raise DeployError(f"disk usage {usage}% above {pc.DISK_THRESHOLD}%")
            await self.run(f"cp -a -- {pc.q(p['d'])} {pc.q(p['backup'])}", "backup")
            staged = True
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put(self.artifact, p["stage"])
            out = await self.run("sha256sum < " + pc.q(p["stage"]), "verify")
            if out.split()[0] != self.sha256:
                raise DeployError(f"sha256 mismatch: {out.split()[0]} vs {self.sha256}")
            if n.get("requires_restart", True):
                live_changed = True
                await self.run(n["shutdown_cmd"], "shutdown")
            live_changed = True
            await self.run(f"mv -f -- {pc.q(p['stage'])} {pc.q(p['target'])}", "activate")
            staged = False
            if n.get("requires_restart", True):
                await self.run(n["startup_cmd"], "startup")
            if not await health_check(n):
                raise DeployError("health check failed")
            return "deployed"
        except (OSError, asyncssh.Error, asyncio.TimeoutError, DeployError, ValueError, IndexError) as e:
            print(f"[DEPLOY_FAILED] {n['name']}: {type(e).__name__}: {e}", file=sys.stderr)
            if live_changed:
                return await self.rollback()
            if staged and self.conn:
                try:
                    await self.conn.run("rm -f -- " + pc.q(p["stage"]), check=False, timeout=30)
                except (OSError, asyncssh.Error, asyncio.TimeoutError):
                    pass
            return "failed_unchanged"
        finally:
            if self.conn:
                self.conn.close()
                await self.conn.wait_closed()

    async def rollback(self):
        n, p = self.n, self.p
        try:
            if n.get("requires_restart", True):
                await self.conn.run(n["shutdown_cmd"], check=False, timeout=300)
            await self.run(pc.restore_command(p), "restore")
            if n.get("requires_restart", True):
                await self.run(n["startup_cmd"], "rollback startup")
            return "rolled_back" if await health_check(n) else "rollback_failed"
        except (OSError, asyncssh.Error, asyncio.TimeoutError, DeployError) as e:
            print(f"[ROLLBACK_FAILED] {n['name']}: {e}", file=sys.stderr)
            return "rollback_failed"


async def rollout(nodes, artifact, known_hosts, results):
    sha256 = pc.file_digest(artifact)
    ts = pc.stamp()
    known = asyncssh.read_known_hosts(known_hosts)
    keys = {}
    for n in nodes:
        path = n["auth"]["key_file"]
        if path not in keys:
            keys[path] = asyncssh.load_keypairs([path])
    aborted = False
    for tier, tier_nodes in pc.tiers(nodes):
        if aborted:
            break
        sem = asyncio.Semaphore(pc.concurrency(tier, len(tier_nodes)))
        done = failed = 0

        async def one(node):
            nonlocal done, failed, aborted
            async with sem:
                if aborted:
                    return
                outcome = await Node(node, artifact, sha256, known, keys[node["auth"]["key_file"]], ts).deploy()
                results[node["name"]] = outcome
                done += 1
                failed += outcome != "deployed"
                if not aborted and pc.gate_tripped(done, failed, len(tier_nodes)):
                    aborted = True
                    print(f"[ABORT] tier {tier}: failure rate {failed}/{done} above "
                          f"{pc.SAFETY_GATE:.0%}", file=sys.stderr)

        await asyncio.gather(*(one(n) for n in tier_nodes))
    return aborted


def main():
    def extra(ap):
        ap.add_argument("--par", type=int, default=50, help="tier 2 nodes in flight (default 50)")
        ap.add_argument("--compression", choices=("none", "default"), default="none",
                        help="none (default here: no SSH compression, as OpenSSH's client and "
                             "Guardia) or default (asyncssh's own default: zlib@openssh.com first)")
    a = pc.parse_args(__doc__.splitlines()[0], extra)
    global COMPRESSION_ALGS
    # None: only 'none'; (): asyncssh's defaults (and the SSH config's, none here: config=None).
    COMPRESSION_ALGS = None if a.compression == "none" else ()
    started = time.monotonic()
    pc.TIER_CONCURRENCY[2] = a.par
    nodes = pc.load_nodes(a.inventory, a.key)
    results = {}
    aborted = asyncio.run(rollout(nodes, os.path.abspath(a.artifact), a.known_hosts, results))
    return pc.summary("asyncssh" if a.compression == "none" else "asyncssh-zlib", nodes, results, started, {"aborted": aborted})


if __name__ == "__main__":
    sys.exit(main())
