#!/usr/bin/env python3
"""The web console's server side (issue 15), end to end against a fleet of its own (the
console_fleet fixture of test/service/CMakeLists.txt): the embedded files under /ui and their
security headers; sessions (POST/GET/DELETE /ui/session), the cookie and the CSRF / Origin
checks, each attacked; the read routes of the console. Outcomes are HTTP answers, store rows
(sqlite3), the service's log and the nodes.

Layout (checked in setUpClass; change both together):
  node-0001..0007  healthy
  node-0008        rejects_new_build (every new build fails health; an exact rollback heals it)

  test_console_api.py [unittest args]   run (as root, like the fleet)
  test_console_api.py --cleanup         kill guardia processes a killed run left, remove the work root
"""

import hashlib
import json
import os
import re
import secrets
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from trust_base import own_tests, main  # noqa: E402
from test_serve import ServeTest  # noqa: E402

CON_HEALTHY = [f"node-{i:04d}" for i in range(1, 8)]
CON_REJECT = ["node-0008"]
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
UI_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
              "referrer-policy": "no-referrer", "x-frame-options": "DENY", "cache-control": "no-cache"}
ROOT = os.path.dirname(os.path.dirname(HERE))


class ConsoleApiTest(ServeTest):
    FIXTURE = "console_fleet"

    @classmethod
    def expected_faults(cls):
        return {**{n: [] for n in CON_HEALTHY}, **{n: ["rejects_new_build"] for n in CON_REJECT}}

    def assert_ui_headers(self, r):
        for k, v in UI_HEADERS.items():
            self.assertEqual(r.header(k), v, f"{k} of {r}")

    # ================================================================== 1. static files
    def test_01_static_files_and_their_headers(self):
        """Every file of src/ui/ is served byte for byte under /ui/<name> with its type, without a
        token; /ui redirects to /ui/, which is index.html; anything else under /ui is 404; every
        answer carries the console's CSP and security headers."""
        self.start_service()
        ui_dir = os.path.join(ROOT, "src", "ui")
        names = sorted(os.listdir(ui_dir))
        self.assertIn("index.html", names)
        types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for name in names:
            ext = os.path.splitext(name)[1]
            if ext not in types:
                continue
            with self.subTest(file=name):
                r = self.api("GET", f"/ui/{name}", token=False)
                self.assertEqual(r.status, 200, r)
                with open(os.path.join(ui_dir, name), "rb") as f:
                    self.assertEqual(r.data, f.read(), name)
                self.assertTrue(r.header("content-type").startswith(types[ext]), r.headers)
                self.assert_ui_headers(r)
        r = self.api("GET", "/ui", token=False)
        self.assertEqual((r.status, r.header("location")), (302, "/ui/"), r)
        self.assert_ui_headers(r)
        r = self.api("GET", "/ui/", token=False)
        self.assertEqual(r.status, 200, r)
        with open(os.path.join(ui_dir, "index.html"), "rb") as f:
            self.assertEqual(r.data, f.read())
        self.assertTrue(r.header("content-type").startswith("text/html"), r.headers)
        self.assert_ui_headers(r)
        r = self.api("HEAD", "/ui/index.html", token=False)
        self.assertEqual((r.status, r.data), (200, b""), r)
        for path in ("/ui/nope.js", "/ui/a/index.html", "/ui/%2e%2e/guardia.json", "/ui/..%2fguardia.json"):
            with self.subTest(path=path):
                r = self.api("GET", path, token=False)
                self.assertIn(r.status, (400, 401, 404), r)
                self.assertNotIn(b"token_file", r.data)
        r = self.api("GET", "/ui/nope.js", token=False)
        self.assertEqual(r.status, 404, r)
        self.assert_ui_headers(r)
        # Not a way around the API's tokens: a POST to a file is refused, /api still needs a token.
        self.assertEqual(self.api("POST", "/ui/index.html", token=False).status, 401)
        self.assertEqual(self.api("GET", "/api/tasks/SR-X", token=False).status, 401)

    # ================================================================== 2. sessions and CSRF
    def clients_config(self, clients, **kw):
        conf = self.config(**kw)
        self.tokens = {name: secrets.token_hex(20) for name in clients}
        conf["service"]["clients"] = [
            {"name": name, "token_sha256": hashlib.sha256(self.tokens[name].encode()).hexdigest(),
             "roles": roles} for name, roles in clients.items()]
        return conf

    def sign_in(self, who):
        r = self.api("POST", "/ui/session", {"token": self.tokens[who]}, token=False)
        self.assertEqual(r.status, 200, r)
        self.assert_ui_headers(r)
        m = re.fullmatch(r"guardia_session=([0-9a-f]{64}); Path=/; HttpOnly; SameSite=Strict",
                         r.header("set-cookie") or "")
        self.assertTrue(m, f"cookie attributes: {r.header('set-cookie')!r}")
        doc = r.json
        self.assertEqual(set(doc), {"principal", "roles", "csrf", "expires_ms"}, doc)
        self.assertNotIn(self.tokens[who].encode(), r.data)   # the token is never echoed
        self.assertRegex(doc["csrf"], r"^[0-9a-f]{64}$")
        self.assertNotEqual(doc["csrf"], m.group(1))
        return m.group(1), doc

    def as_cookie(self, cookie, csrf=None, origin=None):
        h = {"Cookie": f"guardia_session={cookie}"}
        if csrf is not None:
            h["X-Guardia-CSRF"] = csrf
        if origin is not None:
            h["Origin"] = origin
        return h

    def test_02_session_sign_in_and_cookie(self):
        """POST /ui/session with a client token opens a session: the cookie's attributes, the
        document (principal, roles, csrf, expiry); GET /ui/session gives it back for the cookie;
        the cookie authenticates /api and /metrics with the client's roles; an unknown token is
        401 without a cookie; a body over 4 KiB is 413; DELETE signs out (cookie cleared, the
        old cookie then 401 everywhere)."""
        self.start_service(conf=self.clients_config({"pm": ["read", "validate"], "ops": ["operate", "read"]}))
        cookie, doc = self.sign_in("pm")
        self.assertEqual((doc["principal"], doc["roles"]), ("pm", ["validate", "read"]), doc)
        now_ms = time.time() * 1000
        self.assertTrue(now_ms + 3500e3 < doc["expires_ms"] < now_ms + 3700e3, doc)  # 1 h idle first
        r = self.api("GET", "/ui/session", token=False, headers=self.as_cookie(cookie))
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["principal"], r.json["csrf"]), ("pm", doc["csrf"]))
        self.assert_ui_headers(r)
        # The cookie authenticates reads like the token does.
        r = self.api("GET", "/api/tasks/SR-NONE", token=False, headers=self.as_cookie(cookie))
        self.assert_error(r, 404, "not_found")
        r = self.api("GET", "/metrics", token=False, headers=self.as_cookie(cookie))
        self.assertEqual(r.status, 200, r)
        # An unknown token: 401 and no cookie.
        r = self.api("POST", "/ui/session", {"token": "x" * 40}, token=False)
        self.assert_error(r, 401, "unauthorized")
        self.assertIsNone(r.header("set-cookie"))
        r = self.api("POST", "/ui/session", {"token": self.tokens["pm"], "pad": "y" * 5000}, token=False)
        self.assertEqual(r.status, 413, r)
        # Sign out: needs the CSRF header, clears the cookie, forgets the session.
        r = self.api("DELETE", "/ui/session", token=False, headers=self.as_cookie(cookie))
        self.assert_error(r, 403, "csrf_failed")
        r = self.api("DELETE", "/ui/session", token=False, headers=self.as_cookie(cookie, doc["csrf"]))
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.header("set-cookie"),
                         "guardia_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
        for method, path in (("GET", "/ui/session"), ("GET", "/api/tasks/SR-NONE"), ("GET", "/metrics")):
            with self.subTest(after="sign-out", path=path):
                self.assert_error(self.api(method, path, token=False, headers=self.as_cookie(cookie)),
                                  401, "unauthorized")
        # An unknown or malformed cookie is an unknown token.
        for bad in ("0" * 64, "zz", cookie.upper()):
            with self.subTest(cookie=bad):
                self.assert_error(self.api("GET", "/api/tasks/SR-NONE", token=False,
                                           headers=self.as_cookie(bad)), 401, "unauthorized")

    def test_03_csrf_attacks(self):
        """Each attack on a cookie-authenticated state-changing request is refused before it does
        anything: no X-Guardia-CSRF, a wrong one, a foreign (or "null") Origin, the csrf value
        without the cookie; a read-only session trying pause is 403 by role. The same request
        with the header and our origin goes through (the task is created; the audit row names
        the client)."""
        self.start_service(conf=self.clients_config({"sub": ["submit", "read"], "ro": ["read"]}))
        cookie, doc = self.sign_in("sub")
        own = f"http://127.0.0.1:{self.svc.port}"
        body = {"sr_id": f"SR-CSRF-{self.tag}", "inst_id": self.inst_id, "system_name": self.system_name,
                "requester": "alice"}
        attacks = {"no header": self.as_cookie(cookie),
                   "wrong csrf": self.as_cookie(cookie, "0" * 64),
                   "csrf of another length": self.as_cookie(cookie, doc["csrf"][:-1]),
                   "foreign origin": self.as_cookie(cookie, doc["csrf"], "http://evil.example"),
                   "null origin": self.as_cookie(cookie, doc["csrf"], "null"),
                   "origin of another port": self.as_cookie(cookie, doc["csrf"], f"http://127.0.0.1:{self.svc.port + 1}")}
        for what, h in attacks.items():
            with self.subTest(attack=what):
                self.assert_error(self.api("POST", "/api/tasks", body, token=False, headers=h), 403, "csrf_failed")
        # The csrf value alone (stolen, no cookie) is nothing.
        r = self.api("POST", "/api/tasks", body, token=False, headers={"X-Guardia-CSRF": doc["csrf"]})
        self.assert_error(r, 401, "unauthorized")
        self.assertEqual(self.q("SELECT * FROM tasks WHERE sr_id = ?", body["sr_id"]), [])
        # The legitimate request.
        r = self.api("POST", "/api/tasks", body, token=False, headers=self.as_cookie(cookie, doc["csrf"], own))
        self.assertEqual(r.status, 201, r)
        rows = self.q("SELECT * FROM tasks WHERE sr_id = ?", body["sr_id"])
        self.assertEqual(len(rows), 1, rows)
        audit = [a for a in self.audit_rows(body["sr_id"]) if a["principal"] == "sub"]
        self.assertTrue(audit, self.audit_rows(body["sr_id"]))
        # A read-only session: pause is a role matter (403 forbidden), whatever its csrf.
        ro_cookie, ro = self.sign_in("ro")
        r = self.api("POST", f"/api/deploy/{body['sr_id']}/pause", token=False,
                     headers=self.as_cookie(ro_cookie, ro["csrf"], own))
        self.assert_error(r, 403, "forbidden")
        # A cookie of one session with the csrf of another: refused.
        r = self.api("POST", "/api/tasks", dict(body, sr_id=body["sr_id"] + "-2"), token=False,
                     headers=self.as_cookie(cookie, ro["csrf"]))
        self.assert_error(r, 403, "csrf_failed")
        # Bearer clients are unchanged: no CSRF header needed.
        self.assertEqual(self.api("POST", "/api/tasks", dict(body, sr_id=body["sr_id"] + "-3"),
                                  token=f"Bearer {self.tokens['sub']}").status, 201)
        # The secrets never show: not in the log, not in the store.
        self.svc.signal(15)
        self.assertEqual(self.svc.wait_exit(60), 0, self.svc.log())
        log = self.svc.log(tail=100000)
        with open(self.db, "rb") as f:
            store = f.read()
        for secret in (cookie, doc["csrf"], ro_cookie, self.tokens["sub"], self.tokens["ro"]):
            self.assertNotIn(secret, log)
            self.assertNotIn(secret.encode(), store)

    # ================================================================== 3. read routes
    def test_04_task_list_filters_and_paging(self):
        """GET /api/tasks: newest updated_ms first; status / requester / approver / q filters;
        limit and before page through without loss; bad parameters are 400 naming them."""
        self.start_service(conf=self.clients_config({"pm": ["read"], "sub": ["submit", "read"]}))
        self.token = self.tokens["sub"]
        made = []
        for i, (req, title) in enumerate([("alice", "Payroll hotfix"), ("bob", "Search index"),
                                          ("alice", "payroll v2"), ("carol", "Other")]):
            sr = f"SR-L{i}-{self.tag}"
            self.create_task(sr, requester=req, title=title)
            made.append(sr)
            time.sleep(0.002)   # distinct updated_ms (the order under test), not a timing guess
        self.token = self.tokens["pm"]
        d = self.ok(self.api("GET", "/api/tasks"))
        self.assertEqual([t["sr_id"] for t in d["tasks"]], made[::-1])
        self.assertIsNone(d["next_before"])
        self.assertNotIn("artifacts", d["tasks"][0])
        self.assertEqual(d["tasks"][0]["requester"], "carol")
        ups = [t["updated_ms"] for t in d["tasks"]]
        self.assertEqual(ups, sorted(ups, reverse=True))
        sel = lambda **q: [t["sr_id"] for t in self.ok(self.api("GET", "/api/tasks", query=q))["tasks"]]
        self.assertEqual(sel(requester="alice"), [made[2], made[0]])
        self.assertEqual(sel(q="PAYROLL"), [made[2], made[0]])
        self.assertEqual(sel(q=f"L1-{self.tag}"), [made[1]])
        self.assertEqual(sel(q=f"sys-{self.tag}", requester="bob"), [made[1]])
        self.assertEqual(sel(status="CREATED", approver="nobody"), [])
        self.assertEqual(sel(status="DEPLOYING"), [])
        # Paging: two by two, without loss or repeat.
        seen, before = [], None
        while True:
            q = {"limit": 2, **({"before": before} if before is not None else {})}
            page = self.ok(self.api("GET", "/api/tasks", query=q))
            seen += [t["sr_id"] for t in page["tasks"]]
            before = page["next_before"]
            if before is None:
                break
            self.assertEqual(before, page["tasks"][-1]["updated_ms"])
        self.assertEqual(seen, made[::-1])
        for q, field in (({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"limit": "x"}, "limit"),
                         ({"before": "-1"}, "before"), ({"sort": "x"}, "sort")):
            with self.subTest(query=q):
                self.assert_error(self.api("GET", "/api/tasks", query=q), 400, "bad_request", field)
        self.assert_error(self.api("GET", "/api/tasks", token=False), 401, "unauthorized")

    def test_05_rollout_document_and_node_detail(self):
        """A rollout of 8 nodes, node-0008 failing its new build: GET /api/deploy/{sr} carries
        started_ms / finished_ms per node, the artifacts and the gate of the tier; GET
        /api/deploy/{sr}/nodes/{node} gives the pipeline's steps (durations from the audit rows)
        and the node's audit trail exactly as GET /api/audit has it; 404 for an unknown SR or
        node."""
        tiers = {n: 2 for n in CON_HEALTHY + CON_REJECT}
        sr = f"SR-DOC-{self.tag}"
        conf = self.config(rollout={"tiers": [{"tier": 2, "batch_size": "all"}], "failure_threshold_percent": 50})
        self.start_service(conf=conf)
        self.fresh(*tiers)
        arts = self.prepare(sr, tiers, "doc")
        before = self.deploy_status(sr)
        self.assertIsNone(before["gate"])
        self.assertEqual(sorted((a["name"], a["sha256"], a["size"]) for a in before["artifacts"]),
                         sorted((n, hashlib.sha256(b).hexdigest(), len(b)) for n, b in arts.items()))
        t0 = time.time() * 1000
        self.trigger_ok(sr)
        d = self.wait_task(sr, "FAILED_ROLLBACK")   # one node failed: the task says so
        states = {n["name"]: n["state"] for n in d["nodes"]}
        self.assertEqual(states, {**{n: "deployed" for n in CON_HEALTHY}, "node-0008": "rolled_back"}, d)
        for n in d["nodes"]:
            with self.subTest(node=n["name"]):
                self.assertIsInstance(n["started_ms"], int, n)
                self.assertIsInstance(n["finished_ms"], int, n)
                self.assertTrue(t0 - 5000 <= n["started_ms"] <= n["finished_ms"] <= time.time() * 1000, n)
        self.assertEqual(d["gate"], {"tier": 2, "failed": 1, "done": 8, "max_failure_ratio": 0.5,
                                     "tripped": False, "reason": ""}, d)
        self.assertEqual(len(d["artifacts"]), 2)
        api_audit = self.api_audit(sr, limit=1000)
        for node in ("node-0001", "node-0008"):
            with self.subTest(node=node):
                nd = self.ok(self.api("GET", f"/api/deploy/{sr}/nodes/{node}"))
                self.assertEqual((nd["name"], nd["tier"], nd["state"]), (node, 2, states[node]), nd)
                self.assertEqual(nd["audit"], [e for e in api_audit if e["node"] == node])
                rows = [e for e in nd["audit"] if e["event"] in ("STEP_OK", "STEP_FAILED")]
                ends = [(e["step"], "OK" if e["event"] == "STEP_OK" else "FAIL", e["duration_ms"]) for e in rows]
                # Steps nest (ROLLBACK holds RESTORE ...): listed by start, ended in any order.
                self.assertEqual(sorted((s["step"], s["status"], s["duration_ms"]) for s in nd["steps"]),
                                 sorted(ends), nd["steps"])
                starts = [e["ts_ms"] for e in nd["audit"] if e["event"] == "STEP_START"]
                self.assertEqual([s["started_ms"] for s in nd["steps"]], starts)
                self.assertIn("PRECHECK", [s["step"] for s in nd["steps"]])
                statuses = {s["status"] for s in nd["steps"]}
                self.assertEqual(statuses, {"OK"} if node == "node-0001" else {"OK", "FAIL"}, nd["steps"])
        self.assert_error(self.api("GET", f"/api/deploy/{sr}/nodes/node-0099"), 404, "not_found", "node-0099")
        self.assert_error(self.api("GET", f"/api/deploy/SR-NONE-{self.tag}/nodes/node-0001"), 404, "not_found")


    # ================================================================== 6. hardening (review)
    def test_06_a_stream_ends_with_its_session(self):
        """Attack: sign in, open a live stream with the cookie, sign out (or have the session
        evicted); the stream kept delivering for as long as the socket stayed open. Now each
        tick re-checks the session: the cookie's stream ends (EOF) within 5 s of the sign-out,
        a stream of the same client opened with its Bearer token goes on."""
        from test_console_live import Sse
        self.start_service(conf=self.clients_config({"pm": ["read"]}))
        cookie, doc = self.sign_in("pm")
        by_cookie = Sse(self.svc.host, self.svc.port, "/api/events", None, cookie=cookie)
        self.addCleanup(by_cookie.close)
        by_token = Sse(self.svc.host, self.svc.port, "/api/events", self.tokens["pm"])
        self.addCleanup(by_token.close)
        self.assertEqual((by_cookie.status, by_token.status), (200, 200))
        self.assertFalse(by_cookie.eof.wait(1.5), "the stream ended while its session lives")
        r = self.api("DELETE", "/ui/session", token=False, headers=self.as_cookie(cookie, doc["csrf"]))
        self.assertEqual(r.status, 204, r)
        self.assertTrue(by_cookie.eof.wait(5), "the cookie's stream outlived its session")
        self.assertFalse(by_token.eof.is_set(), "the Bearer stream ended too")
        self.assertEqual(self.api("GET", "/api/tasks", token=f"Bearer {self.tokens['pm']}").status, 200)

    def test_07_one_client_cannot_sign_everyone_out(self):
        """Attack: the session store held at most 1,000 sessions and evicted the oldest, so one
        client signing in 1,000 times signed every other user out. Now a client holds at most
        16 live sessions (its 17th sign-in ends its own oldest); "pm" signs in, "ops" signs in
        1,100 times, and pm's session still works; ops's first sessions are gone, 16 of its
        newest live."""
        self.start_service(conf=self.clients_config({"pm": ["read"], "ops": ["read"]}))
        cookie, _ = self.sign_in("pm")
        ops = []
        for _ in range(1100):
            r = self.api("POST", "/ui/session", {"token": self.tokens["ops"]}, token=False)
            self.assertEqual(r.status, 200, r)
            ops.append(re.match(r"guardia_session=([0-9a-f]{64});", r.header("set-cookie")).group(1))
        r = self.api("GET", "/ui/session", token=False, headers=self.as_cookie(cookie))
        self.assertEqual((r.status, r.json and r.json.get("principal")), (200, "pm"), r)
        self.assertEqual(self.api("GET", "/api/tasks", token=False, headers=self.as_cookie(cookie)).status, 200)
        for old in ops[:3]:
            self.assert_error(self.api("GET", "/ui/session", token=False, headers=self.as_cookie(old)),
                              401, "unauthorized")
        # ops holds 16 live sessions, its newest ones (sign-ins within one millisecond are of the
        # same age: which of those goes first is not promised).
        live = [c for c in ops[-40:]
                if self.api("GET", "/ui/session", token=False, headers=self.as_cookie(c)).status == 200]
        self.assertEqual(len(live), 16, live)
        self.assertIn(ops[-1], live)

    def test_08_behind_a_tls_proxy_the_cookie_and_origin_follow_public_url(self):
        """Attack: behind a TLS-terminating proxy (public_url https://..., the service itself plain
        HTTP on loopback) the cookie lacked Secure (a browser would send it over plain http to
        that host, readable on the wire) and the Origin check expected http://<Host>, refusing
        the real page and accepting a plain-http one. Now the cookie is Secure and the one origin
        accepted is public_url's."""
        public = "https://Guardia.Example.test:443/console/"
        self.start_service(conf=self.clients_config({"sub": ["submit", "read"]},
                                                    service={"public_url": public}))
        r = self.api("POST", "/ui/session", {"token": self.tokens["sub"]}, token=False)
        self.assertEqual(r.status, 200, r)
        m = re.fullmatch(r"guardia_session=([0-9a-f]{64}); Path=/; HttpOnly; SameSite=Strict; Secure",
                         r.header("set-cookie") or "")
        self.assertTrue(m, f"cookie attributes: {r.header('set-cookie')!r}")
        cookie, csrf = m.group(1), r.json["csrf"]
        body = {"sr_id": f"SR-PX-{self.tag}", "inst_id": self.inst_id, "system_name": self.system_name,
                "requester": "alice"}
        for origin in (f"http://127.0.0.1:{self.svc.port}", "http://guardia.example.test",
                       "https://evil.example", "https://guardia.example.test:8443"):
            with self.subTest(origin=origin):
                r = self.api("POST", "/api/tasks", body, token=False, headers=self.as_cookie(cookie, csrf, origin))
                self.assert_error(r, 403, "csrf_failed")
        self.assertEqual(self.q("SELECT * FROM tasks WHERE sr_id = ?", body["sr_id"]), [])
        r = self.api("POST", "/api/tasks", body, token=False,
                     headers=self.as_cookie(cookie, csrf, "https://guardia.example.test"))
        self.assertEqual(r.status, 201, r)
        r = self.api("DELETE", "/ui/session", token=False,
                     headers=self.as_cookie(cookie, csrf, "https://guardia.example.test"))
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.header("set-cookie"),
                         "guardia_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure")
        # Signing in from a plain-http page of the proxy's host name is refused too.
        r = self.api("POST", "/ui/session", {"token": self.tokens["sub"]}, token=False,
                     headers={"Origin": "http://guardia.example.test"})
        self.assert_error(r, 403, "csrf_failed")

    def test_09_task_paging_returns_tasks_sharing_a_millisecond_once(self):
        """Attack (a burst of tasks, or one written to hide): the GET /api/tasks cursor was
        updated_ms alone, so tasks sharing the page's last millisecond were skipped (before=N is
        strict) and no cursor could step through them. Seven tasks share one updated_ms (set with
        sqlite3, as a burst in one millisecond would leave them); paging two by two with
        next_cursor returns each exactly once, in order; the old numeric before still works."""
        self.start_service(conf=self.clients_config({"sub": ["submit", "read"]}))
        self.token = self.tokens["sub"]
        made = [f"SR-TIE{i}-{self.tag}" for i in range(7)]
        for sr in made:
            self.create_task(sr, requester="alice", title="tie")
        same = int(time.time() * 1000) - 60000
        c = sqlite3.connect(self.db, timeout=10)
        try:
            with c:
                c.executemany("UPDATE tasks SET updated_ms = ? WHERE sr_id = ?", [(same, sr) for sr in made])
        finally:
            c.close()
        self.assertEqual({r["updated_ms"] for r in self.q("SELECT updated_ms FROM tasks WHERE sr_id LIKE ?",
                                                            f"SR-TIE%-{self.tag}")}, {same})
        seen, cursor, pages = [], None, 0
        while True:
            q = {"limit": 2, "q": f"-{self.tag}", **({"before": cursor} if cursor is not None else {})}
            page = self.ok(self.api("GET", "/api/tasks", query=q))
            seen += [t["sr_id"] for t in page["tasks"]]
            pages += 1
            self.assertLess(pages, 10, seen)
            cursor = page.get("next_cursor", page["next_before"])  # the old service: next_before
            if cursor is None:
                break
            self.assertEqual(page["next_before"], page["tasks"][-1]["updated_ms"])  # kept as it was
        self.assertEqual(seen, sorted(made, reverse=True))
        self.assertIsInstance(cursor, type(None))
        self.assertIn("next_cursor", page)
        # The old numeric cursor: strictly below, as before.
        sel = lambda before: [t["sr_id"] for t in
                              self.ok(self.api("GET", "/api/tasks", query={"q": f"-{self.tag}", "before": before}))["tasks"]]
        self.assertEqual(sel(same), [])
        self.assertEqual(sel(same + 1), sorted(made, reverse=True))
        for bad in ("c1.x.00", "c1.5.zz", "c1.5", "c2.5.41", "1.5"):
            with self.subTest(cursor=bad):
                self.assert_error(self.api("GET", "/api/tasks", query={"before": bad}), 400, "bad_request", "before")


load_tests = own_tests(ConsoleApiTest)

if __name__ == "__main__":
    main()
