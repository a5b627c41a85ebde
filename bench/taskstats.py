"""Exact CPU of short-lived processes, from the kernel's taskstats exit records (issue 16).

The kernel sends one record per process that exits (generic netlink family TASKSTATS, the
interface of the kernel's getdelays.c), machine-wide once a listener registers for the CPUs:
pid, parent pid at exit, name, uid and the process's own CPU time (cpu_run_virtual_total: the
scheduler's exact sum_exec_runtime in ns; children not included). Needs CAP_NET_ADMIN (root).

What it gives that /proc cannot: which process of a connection's tree spent what (/proc only
sums a process's reaped children, once they are gone). What it lacks: the record is taken when
the process starts to exit, so the exit itself (freeing its memory) is not in it; rusage and
/proc's reaped time include it.
"""
import os
import socket
import struct
import threading

NETLINK_GENERIC, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 16, 0x10, 3, 1, 2
TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 1, 3
TASKSTATS_TYPE_PID, TASKSTATS_TYPE_STATS, TASKSTATS_TYPE_AGGR_PID = 1, 3, 4


def _nla(kind, payload):
    a = struct.pack("HH", 4 + len(payload), kind) + payload
    return a + b"\0" * ((4 - len(a) % 4) % 4)


def _attrs(data, start, end):
    while start + 4 <= end:
        length, kind = struct.unpack_from("HH", data, start)
        if length < 4:
            return
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


class ExitRecorder:
    """Records every process exit on the machine (taskstats), on a thread."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)   # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.family = self._family()
        cpus = f"0-{os.cpu_count() - 1}\0".encode()
        self._send(self.family, TASKSTATS_CMD_GET, _nla(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, cpus))
        self.records, self.lost, self.stop = [], 0, False
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _send(self, family, cmd, attrs):
        body = struct.pack("BBH", cmd, 1, 0) + attrs
        self.sock.send(struct.pack("IHHII", 16 + len(body), family, 1 | 4, 1, 0) + body)

    def _family(self):
        self._send(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _nla(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"))
        data = self.sock.recv(65536)
        for kind, s, _ in _attrs(data, 20, len(data)):
            if kind == CTRL_ATTR_FAMILY_ID:
                return struct.unpack_from("H", data, s)[0]
        raise RuntimeError("taskstats: no TASKSTATS generic netlink family (kernel without CONFIG_TASKSTATS?)")

    def _run(self):
        while not self.stop:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as e:
                if e.errno == 105:       # ENOBUFS: records were dropped
                    self.lost += 1
                    continue
                raise
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, off)
                if length < 16:
                    break
                if kind == self.family:
                    self._parse(data, off + 20, off + length)
                off += (length + 3) & ~3

    def _parse(self, data, start, end):
        for kind, s, e in _attrs(data, start, end):
            if kind != TASKSTATS_TYPE_AGGR_PID:
                continue
            for k2, s2, _ in _attrs(data, s, e):
                if k2 != TASKSTATS_TYPE_STATS:
                    continue
                # struct taskstats (linux/taskstats.h): cpu_run_virtual_total at 72 (ns: the
                # scheduler's exact sum_exec_runtime, filled also without task_delayacct;
                # cpu_run_real_total, ac_utime and ac_stime are tick-sampled), ac_comm at 80,
                # ac_uid 120, ac_pid 128, ac_ppid 132
                run_ns = struct.unpack_from("Q", data, s2 + 72)[0]
                comm = data[s2 + 80:s2 + 112].split(b"\0", 1)[0].decode(errors="replace")
                uid = struct.unpack_from("I", data, s2 + 120)[0]
                pid, ppid = struct.unpack_from("II", data, s2 + 128)
                self.records.append({"pid": pid, "ppid": ppid, "comm": comm, "uid": uid,
                                     "cpu_us": run_ns / 1000, "seq": len(self.records)})

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()



def exit_tree(records):
    """(children, pending): children[id(r)] = the records of r's children; pending[pid] = the
    records whose parent had not exited by the end (e.g. children of a long-lived listener).

    Pids are reused within a run on a busy machine (pid_max may be 32768), so the tree is built
    in exit order: a process's children are the records that named it as parent and exited
    before it did (after any earlier process of the same pid)."""
    pending, children = {}, {}
    for r in records:
        children[id(r)] = pending.pop(r["pid"], [])
        pending.setdefault(r["ppid"], []).append(r)
    return children, pending


def subtree(children, r):
    out, todo = [], [r]
    while todo:
        x = todo.pop()
        out.append(x)
        todo.extend(children[id(x)])
    return out

