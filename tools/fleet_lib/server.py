"""Fleet server: every node's HTTP health endpoint, the fault proxies and the port holders
of unreachable nodes, served by asyncio in the fleet's supervisor process (see up.py).

Health: GET <path> answers 200 only if the node's service runs (STATE/running exists) and
no file under the deploy path contains b"GUARDIA_FAULT=unhealthy", subject to the node's
health faults. Proxy statistics are written to the stats file after each connection.

This process runs as root and reads trees the node user owns: it never follows a symlink
(every path component is opened with O_NOFOLLOW, see common.open_dir_nofollow) and never
blocks opening a FIFO.
"""

import asyncio
import errno
import fcntl
import json
import os
import random
import resource
import signal
import ssl
import socket
import stat
import struct
import sys
import termios
import time

from .common import NOFOLLOW_DIR, lstat_nofollow, open_dir_nofollow, open_file_nofollow, read_file_nofollow

MARKER = b"GUARDIA_FAULT=unhealthy"
SCAN_INLINE_MAX = 1 << 20        # bigger files are scanned in a worker thread
MAX_FILES = 10000                # bound the walk of one deploy path
MAX_DEPTH = 32                   # ... and its depth (one open descriptor per level)
HEAD_LIMIT = 16384               # bound an HTTP request head
IDLE_TIMEOUT = 120               # close an idle keep-alive health connection


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} fleet-server[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def scan_fd(fd):
    """True if the open file contains the unhealthy marker; closes fd."""
    keep = len(MARKER) - 1
    tail = b""
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return False
            if MARKER in tail + chunk:
                return True
            tail = chunk[-keep:]
    except OSError:
        return False
    finally:
        os.close(fd)


def tree_signature(root):
    """Sorted (relative path, mode, size, content) of the regular files and directories under
    root, never following a symlink (a symlink counts by its target string). None when root
    is missing or not a real directory."""
    out = []

    def walk(dfd, prefix, depth):
        with os.scandir(dfd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = prefix + e.name
            st = os.stat(e.name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                out.append((rel, "d", st.st_mode & 0o7777))
                sub = os.open(e.name, NOFOLLOW_DIR, dir_fd=dfd)
                try:
                    walk(sub, rel + "/", depth + 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                fd = open_file_nofollow(e.name, dfd)
                try:
                    with os.fdopen(os.dup(fd), "rb") as fh:
                        data = fh.read()
                finally:
                    os.close(fd)
                out.append((rel, "f", st.st_mode & 0o7777, data))
            elif stat.S_ISLNK(st.st_mode):
                out.append((rel, "l", os.readlink(e.name, dir_fd=dfd)))
    try:
        root_fd = open_dir_nofollow(root)
    except OSError:
        return None
    try:
        walk(root_fd, "", 0)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    return out


class Node:
    def __init__(self, cfg):
        self.name = cfg["name"]
        self.path = cfg["health_path"]
        self.deploy = cfg["deploy_path"]
        self.running = os.path.join(cfg["state_dir"], "running")
        f = cfg.get("health_faults", {})
        self.never = f.get("health_never", {}).get("status")      # "503", "hang", ...
        self.slow = f.get("health_slow", {}).get("seconds")
        self.flap = f.get("health_flapping", {}).get("period")
        self.flap_count = 0
        self.ok_status = cfg.get("health_ok_status", 200)
        self.ok_body = cfg.get("health_body")     # text instead of the JSON document, or None
        self.cache = {}   # file path -> ((size, mtime_ns, ino), bad)
        # rejects_new_build: the tree as built by `up` (the server starts before any deploy).
        self.initial_tree = tree_signature(self.deploy) if "rejects_new_build" in f else None

    async def bad_file(self):
        """Relative path of a file carrying the marker, or None (also for a missing deploy
        path). A deploy path that is a symlink or not a directory is not followed: a
        description of that is returned instead (the node is unhealthy)."""
        try:
            root = open_dir_nofollow(self.deploy)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return "(deploy path is a symlink or not a directory: not followed)"
            return None
        seen, budget = set(), [MAX_FILES]
        try:
            found = await self._scan_dir(root, "", 0, seen, budget)
        finally:
            os.close(root)
        for p in list(self.cache):
            if p not in seen:
                del self.cache[p]
        return found

    async def _scan_dir(self, dfd, prefix, depth, seen, budget):
        """Scan the directory open as dfd (relative path prefix); first marked file or None."""
        try:
            with os.scandir(dfd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return None
        found = None
        for e in entries:
            budget[0] -= 1
            if budget[0] < 0:
                break
            rel = prefix + e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    if depth >= MAX_DEPTH:
                        continue
                    sub = os.open(e.name, NOFOLLOW_DIR, dir_fd=dfd)
                    try:
                        hit = await self._scan_dir(sub, rel + "/", depth + 1, seen, budget)
                    finally:
                        os.close(sub)
                    found = found or hit
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue          # symlinks, FIFOs, sockets: never opened
                st = os.stat(e.name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            seen.add(rel)
            hit = self.cache.get(rel)
            if hit is None or hit[0] != key:
                try:
                    fd = open_file_nofollow(e.name, dfd)
                except OSError:
                    continue
                if st.st_size > SCAN_INLINE_MAX:
                    bad = await asyncio.to_thread(scan_fd, fd)
                else:
                    bad = scan_fd(fd)
                hit = (key, bad)
                self.cache[rel] = hit
            if hit[1] and found is None:
                found = rel
        return found

    def version(self):
        try:
            return read_file_nofollow(os.path.join(self.deploy, "VERSION"), 64).decode(errors="replace").strip()
        except OSError:
            return None

    async def evaluate(self, path):
        """(status, body dict), or (None, None) to never answer."""
        if path != self.path:
            return 404, {"node": self.name, "error": "not found"}
        body = {"node": self.name, "version": self.version()}
        st = lstat_nofollow(self.running)
        if st is None or not stat.S_ISREG(st.st_mode):
            return 503, dict(body, status="DOWN", reason="service not running")
        started = st.st_mtime
        bad = await self.bad_file()
        if bad is not None:
            return 503, dict(body, status="DOWN", reason=f"artifact unhealthy: {bad}")
        if self.initial_tree is not None and await asyncio.to_thread(tree_signature, self.deploy) != self.initial_tree:
            return 503, dict(body, status="DOWN", reason="fault rejects_new_build: the deployed tree differs from the original")
        if self.never is not None:
            if self.never == "hang":
                return None, None
            return int(self.never), dict(body, status="DOWN", reason="fault health_never")
        if self.slow is not None:
            up_in = started + self.slow - time.time()
            if up_in > 0:
                return 503, dict(body, status="STARTING", reason=f"fault health_slow: {up_in:.1f}s to go")
        if self.flap is not None:
            self.flap_count += 1
            if self.flap_count % (self.flap + 1) == 0:
                return 503, dict(body, status="DOWN", reason="fault health_flapping")
        if self.ok_body is not None:
            return self.ok_status, self.ok_body
        return self.ok_status, dict(body, status="UP")


REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


async def serve_health(node, reader, writer):
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except asyncio.LimitOverrunError:
                await respond(writer, 431, {"error": "request head too large"}, False, False)
                return
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await respond(writer, 400, {"error": "bad request line"}, False, False)
                return
            method, target, version = parts
            headers = {}
            for line in lines[1:]:
                k, sep, v = line.partition(":")
                if sep:
                    headers[k.strip().lower()] = v.strip()
            conn = headers.get("connection", "").lower()
            keep = (version == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= 65536:
                await respond(writer, 400, {"error": "bad content-length"}, False, False)
                return
            if length:
                await reader.readexactly(length)
            if method not in ("GET", "HEAD"):
                await respond(writer, 405, {"error": "method not allowed"}, False, keep)
            else:
                status, body = await node.evaluate(target.split("?", 1)[0])
                if status is None:  # health_never:hang: hold the connection, answer nothing
                    while await reader.read(4096):
                        pass
                    return
                await respond(writer, status, body, method == "HEAD", keep)
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def respond(writer, status, body, head_only, keep):
    text = isinstance(body, str)
    data = b"" if status in (204, 304) else (body if text else json.dumps(body) + "\n").encode()
    length = "" if status in (204, 304) else f"Content-Length: {len(data)}\r\n"
    hdr = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
           f"Content-Type: {'text/plain' if text else 'application/json'}\r\n{length}"
           f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode()
    writer.write(hdr if head_only else hdr + data)
    await writer.drain()


class Proxy:
    """TCP proxy in front of a node's sshd: cut after K bytes, a slow link and/or a stalling link."""

    def __init__(self, cfg, stats):
        self.name = cfg["name"]
        self.upstream = None
        self.cut = cfg.get("cut_after_bytes")       # {"bytes", "connections"} or None
        link = cfg.get("slow_link") or {}
        self.stalling = cfg.get("stalling_link")    # {"delay_ms", "stall_pct", ...} or None
        self.rate = link.get("rate", 0)
        # one-way latency: a slow_link's and a stalling_link's add up
        self.delay = (link.get("delay_ms", 0) + (self.stalling or {}).get("delay_ms", 0)) / 1000.0
        self.chunk = 65536 if not self.rate else max(1024, min(65536, self.rate // 20))
        self.stats = stats
        self.st = stats.setdefault(self.name, {"connections": 0, "cut": 0, "recent": []})
        if self.stalling:
            self.st.setdefault("stalls", 0)
            self.st.setdefault("stalled_s", 0.0)

    def stall_draws(self, number, key):
        """The stalling_link's decisions for connection `number`, direction `key`: an endless
        iterator of stall lengths in seconds, one per forwarded chunk (0.0 = no stall). A PRNG
        seeded from (seed, node, connection, direction) alone: reproducible run to run, and
        independent of how the two directions and other connections interleave."""
        f = self.stalling
        rng = random.Random(f"{f['seed']}:{self.name}:{number}:{key}")
        p = f["stall_pct"] / 100.0
        lo, hi = f["stall_min_ms"] / 1000.0, f["stall_max_ms"] / 1000.0
        while True:
            hit, length = rng.random(), rng.uniform(lo, hi)    # always two draws: a fixed stream
            yield length if hit < p else 0.0

    async def handle(self, creader, cwriter):
        self.st["connections"] += 1
        number = self.st["connections"]
        rec = {"n": number, "c2s": 0, "s2c": 0, "cut": False, "start": time.time(), "end": None}
        if self.stalling:
            rec["stalls"] = []       # [direction, seconds] of each stall, in order
        self.st["recent"] = (self.st["recent"] + [rec])[-20:]
        limit = None
        if self.cut and (self.cut["connections"] == 0 or number <= self.cut["connections"]):
            limit = self.cut["bytes"]
        uwriter = None
        try:
            ureader, uwriter = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream), 10)
            for w in (cwriter, uwriter):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c2s = asyncio.create_task(self.pump(creader, uwriter, limit, rec, "c2s", number))
            s2c = asyncio.create_task(self.pump(ureader, cwriter, None, rec, "s2c", number))
            done, pending = await asyncio.wait({c2s, s2c}, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop().result()
            if first == "eof" and pending:
                # one side finished cleanly: let the other drain, bounded
                _, pending = await asyncio.wait(pending, timeout=30)
            for t in pending:
                t.cancel()
            if first == "cut":
                rec["cut"] = True
                self.st["cut"] += 1
                # the K bytes reach the server before the reset, then both sides get an RST
                # (not a FIN): close with SO_LINGER {on, 0 s}
                await self.flushed(uwriter)
                for w in (cwriter, uwriter):
                    sock = w.get_extra_info("socket")
                    if sock is not None:
                        try:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        except OSError:
                            pass
        except (OSError, asyncio.TimeoutError) as e:
            log(f"{self.name}: proxy: {e!r}")
        finally:
            for w in (cwriter, uwriter):
                if w is not None:
                    w.transport.abort()
            rec["end"] = time.time()
            self.stats.dump()

    @staticmethod
    async def flushed(writer, timeout=5.0):
        """Wait (bounded) until everything written to writer was acknowledged by the peer:
        asyncio's buffer empty and the kernel send queue (SIOCOUTQ) empty."""
        sock = writer.get_extra_info("socket")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            except (OSError, AttributeError):
                unacked = 0
            if writer.transport.get_write_buffer_size() == 0 and unacked == 0:
                return
            await asyncio.sleep(0.005)

    async def pump(self, src, dst, limit, rec, key, number=0):
        """Copy src -> dst with the link's delay, rate and stalls; 'eof', 'cut' or 'error'."""
        loop = asyncio.get_running_loop()
        stalls = self.stall_draws(number, key) if self.stalling else None
        queue = asyncio.Queue(maxsize=16)

        async def reader():
            total = 0
            try:
                while True:
                    want = self.chunk if limit is None else min(self.chunk, limit - total)
                    data = await src.read(want)
                    if not data:
                        await queue.put(("eof", None, 0))
                        return
                    total += len(data)
                    await queue.put(("data", data, loop.time() + self.delay))
                    if limit is not None and total >= limit:
                        await queue.put(("cut", None, 0))
                        return
            except (ConnectionError, OSError):
                await queue.put(("error", None, 0))

        rtask = asyncio.create_task(reader())
        next_send = loop.time()
        try:
            while True:
                kind, data, due = await queue.get()
                if kind != "data":
                    if kind == "eof":
                        try:
                            dst.write_eof()
                        except (OSError, RuntimeError):
                            pass
                    return kind
                if stalls is not None:
                    stall = next(stalls)
                    if stall > 0:
                        # as a lost segment: this chunk and all behind it wait for the
                        # "retransmission"; the reader keeps filling the bounded queue meanwhile
                        rec["stalls"].append([key, round(stall, 3)])
                        self.st["stalls"] += 1
                        self.st["stalled_s"] = round(self.st["stalled_s"] + stall, 3)
                        due += stall      # on top of the latency: the "retransmission" still travels
                now = loop.time()
                wait = max(due - now, next_send - now)
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
                rec[key] += len(data)
                if self.rate:
                    next_send = max(next_send, loop.time()) + len(data) / self.rate
        except (ConnectionError, OSError):
            return "error"
        finally:
            rtask.cancel()


class Stats(dict):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def dump(self):
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self, f)
            os.replace(tmp, self.path)
        except OSError as e:
            log(f"stats: {e}")


class Binder:
    """Binds the server's sockets; a port taken meanwhile is replaced by `take()`."""

    def __init__(self, take):
        self.take = take
        self.sockets = []

    def bind(self, port, listen=True, backlog=512, reuse=True):
        """Bind 127.0.0.1:port (or a replacement) -> (sock, port)."""
        for _ in range(50):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                if listen:
                    s.listen(backlog)
                s.setblocking(False)
                self.sockets.append(s)
                return s, port
            except OSError as e:
                s.close()
                log(f"port {port} taken ({e.strerror}); using another")
                port = self.take()
        raise OSError(f"could not bind a loopback port after 50 tries")


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def bind_all(nodes, take):
    """Bind every node's health port, proxy port, or unreachable holder sockets.

    nodes: dicts with name, health_port, ssh_port, unreachable, proxy. Updates the ports
    in place if one had to be replaced; returns (binder, plan) for serve().
    """
    binder, plan = Binder(take), []
    for n in nodes:
        hold = n.get("unreachable")
        if hold:
            # refused: bound without listen and without SO_REUSEADDR, so nobody else can
            # take it and every connect gets RST. timeout: listen(0), never accept.
            for key in ("ssh_port", "health_port"):
                _, n[key] = binder.bind(n[key], listen=hold == "timeout", backlog=0, reuse=False)
            continue
        s, n["health_port"] = binder.bind(n["health_port"])
        plan.append(("health", n, s))
        if n.get("proxy"):
            s, n["ssh_port"] = binder.bind(n["ssh_port"])
            plan.append(("proxy", n, s))
    return binder, plan


def reap_children():
    """Reap every exited child (this process is the fleet's child subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


async def serve(plan, stats_file, on_ready=None):
    """Serve health endpoints and proxies until SIGTERM/SIGINT, reaping children.
    on_ready() is called once every listener is served."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGCHLD, reap_children)
    reap_children()
    stats = Stats(stats_file)
    servers, tls = [], {}
    for role, n, sock in plan:
        ctx = None
        if role == "health":
            node = Node(n)
            cb = (lambda node: lambda r, w: serve_health(node, r, w))(node)
            if n.get("health_tls"):         # --health-tls: one context per certificate
                cert, key = n["health_tls"]["cert"], n["health_tls"]["key"]
                if (cert, key) not in tls:
                    tls[cert, key] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    tls[cert, key].load_cert_chain(cert, key)
                ctx = tls[cert, key]
        else:
            proxy = Proxy(n["proxy"] | {"name": n["name"]}, stats)
            proxy.upstream = n["sshd_port"]
            cb = proxy.handle
        servers.append(await asyncio.start_server(cb, sock=sock, limit=HEAD_LIMIT, ssl=ctx,
                                                  ssl_handshake_timeout=10 if ctx else None))
    stats.dump()
    log(f"serving {len(servers)} listeners")
    if on_ready:
        on_ready()
    await stop.wait()
    for s in servers:
        s.close()
    log("stopped")


