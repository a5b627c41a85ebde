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
import sys

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


load_tests = own_tests(ConsoleApiTest)

if __name__ == "__main__":
    main()
