#!/usr/bin/env python3
"""The web console's live updates (issue 15), end to end against a fleet of its own (the
console_live_fleet fixture of test/service/CMakeLists.txt): GET /api/deploy/{sr}/events and
GET /api/events as Server-Sent Events, read line by line from a raw socket with a Bearer token.
Outcomes are the events themselves, compared with GET /api/deploy/{sr} and the store's audit rows.

Layout (checked in setUpClass; change both together):
  node-0001..0007  healthy, tiers 1, 2, 3
  node-0008        rejects_new_build (every new build fails health; an exact rollback heals it)

  test_console_live.py [unittest args]   run (as root, like the fleet)
  test_console_live.py --cleanup         kill guardia processes a killed run left, remove the work root
"""

import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from trust_base import own_tests, main  # noqa: E402
from test_serve import ServeTest  # noqa: E402

LIVE_HEALTHY = [f"node-{i:04d}" for i in range(1, 8)]
LIVE_REJECT = ["node-0008"]
TIERS = {"node-0001": 1, "node-0002": 1, "node-0003": 2, "node-0004": 2, "node-0005": 2,
         "node-0006": 3, "node-0007": 3, "node-0008": 3}
FINAL = {"deployed", "failed", "skipped", "rolled_back"}
ROLLOUT_S = 300


class Sse:
    """One SSE stream on a raw socket; a thread parses events into self.events as
    (received_ms, id, event, data) and sets self.eof when the server closes."""

    def __init__(self, host, port, path, token, cookie=None):
        self.sock = socket.create_connection((host, port), timeout=10)
        auth = f"Cookie: guardia_session={cookie}" if cookie else f"Authorization: Bearer {token}"
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"{auth}\r\nAccept: text/event-stream\r\n\r\n").encode())
        self.f = self.sock.makefile("rb")
        status = self.f.readline().decode()
        self.status = int(status.split()[1])
        self.headers = {}
        while True:
            line = self.f.readline().decode()
            if line in ("\r\n", "\n", ""):
                break
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.events, self.comments, self.eof = [], [], threading.Event()
        self.cv = threading.Condition()
        if self.status == 200:
            self.sock.settimeout(None)
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = self.f.read(int(self.headers.get("content-length", "0")))

    def _read(self):
        cur = {}
        try:
            for raw in self.f:
                line = raw.decode().rstrip("\n")
                if line == "":
                    if cur:
                        with self.cv:
                            self.events.append((time.time() * 1000, int(cur["id"]), cur["event"],
                                                json.loads("\n".join(cur["data"]))))
                            self.cv.notify_all()
                    cur = {}
                elif line.startswith(":"):
                    self.comments.append(line)
                else:
                    k, _, v = line.partition(": ")
                    if k == "data":
                        cur.setdefault("data", []).append(v)
                    else:
                        cur[k] = v
        except OSError:
            pass
        self.eof.set()
        with self.cv:
            self.cv.notify_all()

    def wait(self, pred, timeout, what):
        deadline = time.time() + timeout
        with self.cv:
            while not pred(self.events):
                left = deadline - time.time()
                if left <= 0 or self.eof.is_set():
                    raise AssertionError(f"timed out waiting for {what}; events: {self.events[-5:]}")
                self.cv.wait(min(left, 0.5))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ConsoleLiveTest(ServeTest):
    FIXTURE = "console_live_fleet"

    @classmethod
    def expected_faults(cls):
        return {**{n: [] for n in LIVE_HEALTHY}, **{n: ["rejects_new_build"] for n in LIVE_REJECT}}

    def open_sse(self, path, token=None):
        s = Sse(self.svc.host, self.svc.port, path, token or self.token)
        self.addCleanup(s.close)
        return s

    def test_01_rollout_stream(self):
        """Snapshot, then coalesced node events until every node is final: the final states equal
        GET /api/deploy/{sr}, far fewer `nodes` events than node changes, each node's final
        state seen within 1 s of its finishing; `rollout` events carry the task status; the
        task list stream reports the task's status changes."""
        conf = self.config(rollout={"tiers": [{"tier": 1, "batch_size": "all"}, {"tier": 2, "batch_size": "all"},
                                              {"tier": 3, "batch_size": "all"}],
                                    "failure_threshold_percent": 50})
        self.start_service(conf=conf)
        self.fresh(*TIERS)
        sr = f"SR-LIVE-{self.tag}"
        self.prepare(sr, TIERS, "live")
        tasks = self.open_sse("/api/events")
        self.assertEqual(tasks.status, 200)
        s = self.open_sse(f"/api/deploy/{sr}/events")
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"), s.headers)
        self.assertEqual(s.headers["cache-control"], "no-cache")
        self.assertNotIn("content-length", s.headers)
        s.wait(lambda ev: len(ev) >= 1, 10, "the snapshot")
        _, _, kind, snap = s.events[0]
        self.assertEqual(kind, "snapshot")
        self.assertEqual(snap, self.deploy_status(sr))
        state = {n["name"]: n for n in snap["nodes"]}
        self.trigger_ok(sr)
        s.wait(lambda ev: any(e[2] == "nodes" for e in ev)
               and all(n in FINAL for n in self._states(ev).values()) and len(self._states(ev)) == 8
               and any(e[2] == "rollout" and e[3]["task_status"] == "FAILED_ROLLBACK" for e in ev),
               300, "every node final")
        d = self.wait_task(sr, "FAILED_ROLLBACK")
        ids = [e[1] for e in s.events]
        self.assertEqual(ids, sorted(set(ids)), "ids strictly increase")
        first_final = {}
        changes = 0
        for recv_ms, _, kind, data in s.events[1:]:
            if kind == "nodes":
                self.assertEqual(set(data), {"nodes", "counts", "tiers"}, data)
                for n in data["nodes"]:
                    changes += 1
                    state[n["name"]] = n
                    if n["state"] in FINAL and n["name"] not in first_final:
                        first_final[n["name"]] = (recv_ms, n)
            elif kind == "rollout":
                self.assertEqual(set(data), {"task_status", "rollout", "gate"}, data)
        self.assertEqual(state, {n["name"]: n for n in d["nodes"]})
        self.assertEqual({n: v["state"] for n, v in state.items()},
                         {**{n: "deployed" for n in LIVE_HEALTHY}, "node-0008": "rolled_back"})
        # Coalesced: node changes (steps, states) arrive in far fewer events.
        node_events = [e for e in s.events if e[2] == "nodes"]
        audit = self.audit_rows(sr)
        node_rows = [r for r in audit if r["node"]]
        self.assertGreater(len(node_rows), 3 * len(node_events), (len(node_rows), len(node_events)))
        self.assertGreaterEqual(changes, len(node_events))
        # Each node's final state within 1 s of its finishing (its last audit row), with
        # 300 ms for the clocks' granularity and the reading itself.
        for name, (recv_ms, n) in first_final.items():
            with self.subTest(node=name):
                last_ts = max(r["ts_ms"] for r in node_rows if r["node"] == name
                              and r["ts_ms"] <= recv_ms + 300)
                self.assertLessEqual(recv_ms - last_ts, 1300, (name, recv_ms, last_ts))
        # The task list stream saw the task's status changes.
        tasks.wait(lambda ev: any(e[2] == "task" and e[3]["sr_id"] == sr and e[3]["status"] == "FAILED_ROLLBACK"
                                  for e in ev), 10, "the task's final status")
        seen = [e[3]["status"] for e in tasks.events if e[3]["sr_id"] == sr]
        self.assertIn("DEPLOYING", seen)

    @staticmethod
    def _states(events):
        st = {}
        for _, _, kind, data in events:
            if kind == "snapshot":
                st = {n["name"]: n["state"] for n in data["nodes"]}
            elif kind == "nodes":
                st.update({n["name"]: n["state"] for n in data["nodes"]})
        return st

    def test_02_limits_unknown_sr_and_shutdown(self):
        """404 for an unknown SR; 16 streams per client, then 429 too_many_streams (a closed
        stream frees its place); no token: 401; SIGTERM ends every stream promptly (EOF) and
        serve exits 0 within a few seconds."""
        self.start_service()
        sr = f"SR-LIM-{self.tag}"
        self.create_task(sr)
        r = self.open_sse(f"/api/deploy/SR-NONE-{self.tag}/events")
        self.assertEqual(r.status, 404)
        self.assertEqual(json.loads(r.body)["error"], "not_found")
        r = self.open_sse(f"/api/deploy/{sr}/events", token="x" * 48)
        self.assertEqual(r.status, 401)
        streams = [self.open_sse(f"/api/deploy/{sr}/events" if i % 2 else "/api/events") for i in range(16)]
        self.assertEqual([x.status for x in streams], [200] * 16)
        over = self.open_sse(f"/api/deploy/{sr}/events")
        self.assertEqual(over.status, 429)
        self.assertEqual(json.loads(over.body)["error"], "too_many_streams")
        streams[1].wait(lambda ev: ev and ev[0][2] == "snapshot", 10, "a snapshot")
        streams.pop().close()
        again = None
        deadline = time.time() + 10
        while time.time() < deadline:   # the server notices the close on its next read
            again = self.open_sse(f"/api/deploy/{sr}/events")
            if again.status == 200:
                break
            again.close()
            time.sleep(0.05)
        self.assertEqual(again.status, 200)
        streams.append(again)
        t0 = time.time()
        self.svc.signal(15)
        for x in streams:
            self.assertTrue(x.eof.wait(5), "the stream did not end at SIGTERM")
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(self.svc.wait_exit(10), 0, self.svc.log())

    def test_03_viewers_of_one_rollout_share_its_readings(self):
        """Several viewers of one rollout (they share one reading per tick): one leaves half way
        (while the others wait for a reading it may be making), one joins late and gets a
        snapshot; every viewer still there ends with every node final, as GET /api/deploy/{sr}."""
        tiers = {n: TIERS[n] for n in LIVE_HEALTHY}
        self.start_service(conf=self.config(rollout={"tiers": [{"tier": 1, "batch_size": 1},
                                                               {"tier": 2, "batch_size": 1},
                                                               {"tier": 3, "batch_size": "all"}]}))
        self.fresh(*tiers)
        sr = f"SR-SHARE-{self.tag}"
        self.prepare(sr, tiers, "share")
        viewers = [self.open_sse(f"/api/deploy/{sr}/events") for _ in range(4)]
        self.assertEqual([v.status for v in viewers], [200] * 4)
        for v in viewers:
            v.wait(lambda ev: ev and ev[0][2] == "snapshot", 10, "a snapshot")
        self.trigger_ok(sr)
        viewers[0].wait(lambda ev: any(e[2] == "nodes" for e in ev), 60, "the first node change")
        viewers.pop(0).close()
        late = self.open_sse(f"/api/deploy/{sr}/events")
        self.assertEqual(late.status, 200)
        viewers.append(late)
        for v in viewers:
            v.wait(lambda ev: len(self._states(ev)) == len(tiers) and all(
                st == "deployed" for st in self._states(ev).values()), ROLLOUT_S, "every node deployed")
        d = self.wait_task(sr, "PENDING_PM_VALIDATION")
        want = {n["name"]: n["state"] for n in d["nodes"]}
        self.assertEqual(want, {n: "deployed" for n in tiers})
        for i, v in enumerate(viewers):
            with self.subTest(viewer=i):
                self.assertEqual(self._states(v.events), want)
                ids = [e[1] for e in v.events]
                self.assertEqual(ids, sorted(set(ids)), "ids strictly increase")
                self.assertFalse(v.eof.is_set(), "the stream is still open")
        self.assertEqual(late.events[0][2], "snapshot")


load_tests = own_tests(ConsoleLiveTest)

if __name__ == "__main__":
    main()
