#!/usr/bin/env python3
"""End-to-end test of the web console (/ui/) in a real browser: headless Chromium driven by
Selenium (Debian chromium + chromium-driver + python3-selenium) against the real `guardia
serve` and a real fleet (the ui_fleet fixture of test/ui/CMakeLists.txt).

The setup goes through the API with a Bearer token (inventory, tasks, staged artifacts); then,
in the browser: sign in as the operator, trigger SR-A, watch the cells turn green and the
faulty node fail and get rolled back, open its drawer and read its error, roll the task back
(a rollout with a failed node ends FAILED_ROLLBACK: there is no PM review of it); trigger SR-B
on the nine healthy nodes, sign out, sign in as the PM, reject SR-B with a comment on the
review page and watch every node rolled back. The outcome is
asserted in the page (the cells' data-state attributes, the counts), on the nodes (every file
back to its old checksum: `tools/fleet check`) and in the store (audit rows and principals).
Screenshots go to GUARDIA_UI_SHOTS.

Layout of the fixture (checked in setUpClass): node-0001..0010 healthy but node-0009
(rejects_new_build: every new build fails health, an exact rollback heals it).

Environment (set by test/ui/CMakeLists.txt): GUARDIA_TEST_FLEET_SERVE, GUARDIA_SERVE_WORK,
GUARDIA_BIN, GUARDIA_FLEET_TOOL as for test/service, and GUARDIA_UI_SHOTS (screenshot dir).
Missing Chromium, chromedriver or Selenium fails the test: it never skips.

  test_console_browser.py [unittest args]   (as root: the fleet's key and files are root-only)
  test_console_browser.py --cleanup         kill leftover `guardia serve`, remove the work root
"""

import hashlib
import http.client
import os
import secrets
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "service"))

import test_serve  # noqa: E402
from test_serve import ServeTest, sha256  # noqa: E402
from trust_base import own_tests  # noqa: E402

try:
    import selenium  # noqa: F401
except ImportError:        # a Python outside Debian's (pyenv): Debian's python3-selenium lives here
    sys.path.append("/usr/lib/python3/dist-packages")
try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    SELENIUM_ERROR = None
except ImportError as e:
    SELENIUM_ERROR = e

CHROMIUM = os.environ.get("GUARDIA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GUARDIA_CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = os.environ.get("GUARDIA_UI_SHOTS") or os.path.join(HERE, "screenshots")
NODES = [f"node-{i:04d}" for i in range(1, 11)]
FAULTY = "node-0009"
TIERS = {n: (1 if i < 2 else 2 if i < 6 else 3) for i, n in enumerate(NODES)}   # 2 / 4 / 4 nodes
UI_TIMEOUT = 150          # a state the page must reach (a whole rollout fits in it)
# The same per-tier shape as the service tests, and a gate that lets one failed node of four
# in tier 3 pass (the gate holds; the rollout still ends FAILED, its task FAILED_ROLLBACK).
ROLLOUT = {"tiers": test_serve.TIERS, "failure_threshold_percent": 50}

# Read in the page: {node: [state, group, has-error]} of every cell.
CELLS_JS = """return Object.fromEntries([...document.querySelectorAll('#tiers .cell')].map(
  c => [c.dataset.node, [c.dataset.state || '', c.dataset.group || '', c.classList.contains('has-error')]]));"""
# Records every colour group each cell shows (the page's own DOM mutations), so the test sees a
# node fail and then get rolled back even when it happens between two polls.
WATCH_JS = """
window.__seen = window.__seen || {};
const seen = window.__seen;
const note = c => { const n = c.dataset.node, g = c.dataset.group; if (!n || !g) return;
  const l = seen[n] || (seen[n] = []); if (l[l.length - 1] !== g) l.push(g); };
document.querySelectorAll('#tiers .cell').forEach(note);
if (window.__obs) window.__obs.disconnect();
window.__obs = new MutationObserver(ms => ms.forEach(m => {
  if (m.type === 'attributes' && m.target.classList && m.target.classList.contains('cell')) note(m.target);
  if (m.type === 'childList') m.addedNodes.forEach(x => x.querySelectorAll && x.querySelectorAll('.cell').forEach(note));
}));
window.__obs.observe(document.getElementById('tiers'), {subtree: true, attributes: true, childList: true,
                                                        attributeFilter: ['data-group']});
"""


class ConsoleBrowserTest(ServeTest):
    FIXTURE = "ui_fleet"

    @classmethod
    def expected_faults(cls):
        return {n: (["rejects_new_build"] if n == FAULTY else []) for n in NODES}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if SELENIUM_ERROR is not None:
            raise AssertionError(f"python3-selenium is missing ({SELENIUM_ERROR}): tools/install-deps installs it")
        for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
            if not os.access(path, os.X_OK):
                raise AssertionError(f"{path} not found: install the Debian package {pkg} (tools/install-deps)")
        os.makedirs(SHOTS, exist_ok=True)

    # ------------------------------------------------------------------ browser plumbing
    def start_browser(self):
        opts = Options()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--window-size=1280,800", "--force-device-scale-factor=1", "--no-first-run",
                  "--disable-extensions", "--disable-background-networking", "--lang=en-US"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=opts)
        except WebDriverException as e:
            self.fail(f"cannot start headless Chromium ({CHROMIUM}, {CHROMEDRIVER}): {e}")
        self.addCleanup(self.driver.quit)
        self.driver.set_page_load_timeout(60)
        self.base = f"http://{self.svc.host}:{self.svc.port}"
        self.console_log = []

    def wait(self, what, fn, timeout=UI_TIMEOUT):
        """Poll fn(driver) until it returns something truthy; fail naming `what` and the page."""
        last = []

        def probe(d):
            try:
                v = fn(d)
            except WebDriverException as e:       # an element replaced between find and read
                last[:] = [repr(e)]
                return None
            last[:] = [v]
            return v
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(probe)
        except Exception:
            self.shot(f"FAILED-{self._testMethodName}")
            self.fail_with_log(f"browser: timed out after {timeout} s waiting for {what}; last seen {last}; "
                               f"page: {self.driver.current_url}\n{self.text('body')[:3000]}\n"
                               f"console: {self.browser_log()}")

    def shot(self, name):
        path = os.path.join(SHOTS, f"{name}.png")
        self.driver.save_screenshot(path)
        return path

    def el(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def els(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css):
        found = self.els(css)
        return found[0].text if found else ""

    def visible(self, css):
        found = self.els(css)
        return found[0] if found and found[0].is_displayed() else None

    def cells(self):
        return self.driver.execute_script(CELLS_JS)

    def browser_log(self):
        self.console_log += self.driver.get_log("browser")
        return self.console_log

    def has_stream(self, sr):
        """Does the service offer GET /api/deploy/{sr}/events (the head only)?"""
        c = http.client.HTTPConnection(self.svc.host, self.svc.port, timeout=10)
        try:
            c.request("GET", f"/api/deploy/{sr}/events", headers={"Authorization": f"Bearer {self.token}"})
            r = c.getresponse()
            return r.status == 200 and r.getheader("Content-Type", "").startswith("text/event-stream")
        finally:
            c.close()

    def click(self, what, css):
        """Wait for a visible element and click it (again if the page replaced it meanwhile)."""
        self.wait(what, lambda d: self.visible(css) and (self.el(css).click() or True))

    def sign_in(self, token, principal):
        self.driver.get(self.base + "/ui/")
        field = self.wait("the sign-in form", lambda d: self.visible("#token"))
        field.clear()
        field.send_keys(token)
        self.el("#signin-submit").click()
        self.wait(f"the top bar to name {principal}", lambda d: self.text("#principal") == principal)

    def sign_out(self):
        self.el("#signout").click()
        self.wait("the sign-in form after sign-out", lambda d: self.visible("#token"))

    def counts(self):
        return {e.get_attribute("data-count"): int(e.find_element(By.TAG_NAME, "b").text or 0)
                for e in self.els("#counts [data-count]")}

    # ------------------------------------------------------------------ the test
    def final_cells(self, what, want):
        """Wait until every cell shows the state want[node]; returns the cells."""
        return self.wait(what, lambda d: (lambda c: c if {n: s for n, (s, _, _) in c.items()} == want else None)(self.cells()))

    def test_console_operator_and_pm_end_to_end(self):
        tokens = {"ops": secrets.token_hex(24), "pm": secrets.token_hex(24)}
        digest = lambda t: hashlib.sha256(t.encode()).hexdigest()   # noqa: E731
        clients = [{"name": "setup", "token_sha256": digest(self.token), "roles": ["admin", "submit", "read"]},
                   {"name": "ops", "token_sha256": digest(tokens["ops"]), "roles": ["submit", "operate", "read"]},
                   {"name": "carol-pm", "token_sha256": digest(tokens["pm"]), "roles": ["validate", "read"]}]
        conf = self.config(service={"clients": clients}, rollout=ROLLOUT)
        del conf["service"]["token_file"]
        self.start_service(conf=conf)
        self.start_browser()

        # -- setup through the API (Bearer): inventory, task, staged artifacts. A rollout with a
        # failed node ends FAILED_ROLLBACK (no PM review), so two tasks: SR-A on all ten nodes
        # (node-0009 fails and is rolled back; the operator then rolls the rest back), SR-B on
        # the nine healthy ones (the PM rejects it).
        sr_a, sr_b = f"SR-UI-A-{self.tag}", f"SR-UI-B-{self.tag}"
        healthy = [n for n in NODES if n != FAULTY]
        before = self.fresh(*NODES)
        self.import_inventory(TIERS)
        self.create_task(sr_a, requester="alice", title="Console end-to-end: operator")
        arts_a = self.artifacts("ui-a")
        self.stage(sr_a, arts_a)

        # the console is served with its security headers
        r = self.api("GET", "/ui/", token=False)
        self.assertEqual(r.status, 200, r)
        self.assertIn("script-src 'self'", r.header("content-security-policy") or "", r.headers)

        # -- sign-in: a wrong token is refused in the page, the operator's works
        self.driver.get(self.base + "/ui/")
        self.wait("the sign-in form", lambda d: self.visible("#token")).send_keys("not-a-token")
        self.shot("01-sign-in")
        self.el("#signin-submit").click()
        self.assertIn("Unknown token", self.wait("the sign-in error", lambda d: self.visible("#signin-error")).text)
        self.sign_in(tokens["ops"], "ops")

        # -- the task list shows the SR
        row = self.wait(f"{sr_a} in the task list", lambda d: self.visible(f'#task-rows tr[data-sr="{sr_a}"]'))
        self.assertEqual(row.get_attribute("data-status"), "CREATED")
        self.assertIn("alice", row.text)
        row.find_element(By.CSS_SELECTOR, "a").click()

        # -- the rollout view: no rollout yet; the operator may trigger
        self.wait("the trigger button", lambda d: self.visible("#act-trigger"))
        self.assertEqual(self.text("#sr-id"), sr_a)
        self.assertEqual(self.els("#act-pause") + self.els("#act-rollback"), [], "nothing to pause or roll back yet")
        self.click("the trigger button", "#act-trigger")

        # cells turn green while the rollout runs: a screenshot mid-way
        self.wait("10 cells", lambda d: len(self.cells()) == len(NODES))
        self.driver.execute_script(WATCH_JS)
        # One event stream per view: the page must be fed by it (not by its polling fallback).
        self.assertTrue(self.has_stream(sr_a), "GET /api/deploy/{sr}/events must answer an event stream")
        self.wait("the live stream", lambda d: self.text("#rollout-live") == "live")
        self.wait("a deployed cell", lambda d: any(s == "deployed" for s, _, _ in self.cells().values()))
        self.wait("the pause button while the rollout runs", lambda d: self.visible("#act-pause"))
        self.shot("02-rollout-live")
        cells = self.final_cells("every healthy cell green, the faulty one rolled back",
                                 {n: ("rolled_back" if n == FAULTY else "deployed") for n in NODES})
        self.wait("the task FAILED_ROLLBACK", lambda d: self.text("#task-status") == "FAILED_ROLLBACK")
        self.assertEqual(cells[FAULTY][1:], ["rolledback", True], "the faulty cell: amber with its error")
        seen = self.driver.execute_script("return window.__seen")
        self.assertIn("running", seen.get(FAULTY, []), seen)
        self.assertEqual(seen[FAULTY][-1], "rolledback", seen)
        self.wait("the counts", lambda d: (self.counts().get("deployed"), self.counts().get("failed")) == (9, 1))
        self.assertEqual(self.counts()["total"], 10, self.counts())
        api_doc = self.deploy_status(sr_a)
        faulty_err = {n["name"]: n for n in api_doc["nodes"]}[FAULTY]["error"]
        self.assertTrue(faulty_err, api_doc)

        # -- the faulty node's drawer: its error in full, its steps and audit trail
        self.el(f'#tiers .cell[data-node="{FAULTY}"]').click()
        self.wait("the drawer of the faulty node", lambda d: self.driver.current_url.endswith(f"/node/{FAULTY}"))
        rows = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);"
        self.wait("the drawer's error, exactly as the API has it", lambda d: d.execute_script(
            rows, "#drawer-error") == [faulty_err])
        self.wait("the drawer's steps", lambda d: d.execute_script(rows, "#drawer-steps tbody tr"))
        self.wait("a ROLLBACK row in the drawer's audit trail", lambda d: any(
            "ROLLBACK" in t for t in d.execute_script(rows, "#drawer-audit tbody tr")))
        self.shot("03-node-drawer")
        self.el("body").send_keys(Keys.ESCAPE)
        self.wait("the drawer to close", lambda d: not self.visible("#drawer"))

        # -- the operator rolls every deployed node back; the faulty one stays as it is
        self.click("the operator's rollback button", "#act-rollback")
        self.final_cells("the operator's rollback of SR-A",
                         {n: ("rolled_back" if n == FAULTY else "rolled_back_by_pm") for n in NODES})
        self.wait("SR-A ROLLED_BACK", lambda d: self.text("#task-status") == "ROLLED_BACK")
        self.wait("the counts after the rollback", lambda d: self.counts().get("rolled_back") == 9)
        mid = self.check(*NODES)
        for n in NODES:
            self.assert_restored(before[n], mid[n])

        # -- SR-B on the nine healthy nodes, triggered by the operator, reviewed by the PM
        self.system_name = f"{self.system_name}-b"
        self.import_inventory({n: TIERS[n] for n in healthy})
        self.create_task(sr_b, requester="alice", title="Console end-to-end: PM review")
        arts_b = self.artifacts("ui-b")
        self.stage(sr_b, arts_b)
        self.driver.get(f"{self.base}/ui/#/sr/{sr_b}")
        self.click("the trigger button of SR-B", "#act-trigger")
        self.final_cells("SR-B deployed", {n: "deployed" for n in healthy})
        self.wait("SR-B waiting for the PM", lambda d: self.text("#task-status") == "PENDING_PM_VALIDATION")

        self.sign_out()
        self.sign_in(tokens["pm"], "carol-pm")
        self.driver.get(f"{self.base}/ui/#/sr/{sr_b}")
        self.wait("the PM review link", lambda d: self.visible("#act-review"))
        self.wait("the cells as the PM", lambda d: len(self.cells()) == len(healthy))
        self.assertEqual([e.get_attribute("id") for e in self.els("#actions button")], [], "the PM has no operate/submit")
        self.click("the PM review link", "#act-review")
        self.wait("the review page's node table", lambda d: len(self.els("#review-node-table tbody tr")) == len(healthy))
        shas = self.wait("the artifacts and their sha256", lambda d: [e.text for e in self.els("#review-artifacts tr td.mono")])
        self.assertEqual(sorted(shas), sorted(sha256(b) for b in arts_b.values()))
        comment = self.wait("the verdict form", lambda d: self.visible("#verdict-comment"))
        self.assertEqual(self.el("#pm-id").get_attribute("value"), "carol-pm")
        comment.send_keys("the login page is broken on node-0003")
        self.shot("04-review")
        self.click("the reject button", "#verdict-reject")
        self.wait("the verdict to be recorded", lambda d: self.visible("#verdict-ok"))
        self.final_cells("every node of SR-B rolled back by the PM", {n: "rolled_back_by_pm" for n in healthy})
        self.wait("SR-B ROLLED_BACK", lambda d: self.text("#task-status") == "ROLLED_BACK")
        self.wait("the counts after the PM's rollback", lambda d: self.counts().get("rolled_back") == 9)
        self.assertEqual((self.counts()["deployed"], self.counts()["failed"]), (0, 0), self.counts())
        self.assertTrue(all(g == "reverted" for _, g, _ in self.cells().values()), self.cells())
        self.wait("the closed verdict", lambda d: self.visible("#verdict-closed"))
        self.driver.get(f"{self.base}/ui/#/sr/{sr_b}")
        self.wait("SR-B's rollout view after the rollback", lambda d: self.text("#task-status") == "ROLLED_BACK" and (
            lambda c: len(c) == len(healthy) and all(g == "reverted" for _, g, _ in c.values()))(self.cells()))
        self.shot("05-rolled-back")

        # -- the nodes: every file back to its old checksum, services up, nothing left behind
        after = self.check(*NODES)
        for n in NODES:
            self.assert_restored(before[n], after[n])
        # -- the store: who did what
        tasks = {t["sr_id"]: t for t in self.q("SELECT sr_id, status, approver FROM tasks")}
        self.assertEqual((tasks[sr_a]["status"], tasks[sr_a]["approver"]), ("ROLLED_BACK", "ops"))
        self.assertEqual((tasks[sr_b]["status"], tasks[sr_b]["approver"]), ("ROLLED_BACK", "ops"))
        rows_a, rows_b = self.audit_rows(sr_a), self.audit_rows(sr_b)
        self.assertTrue([r for r in rows_a if r["event"] == "TASK_ROLLING_BACK" and r["principal"] == "ops"],
                        sorted({(r["event"], r["principal"]) for r in rows_a}))
        self.assertTrue([r for r in rows_b if r["principal"] == "carol-pm"],
                        sorted({(r["event"], r["principal"]) for r in rows_b}))
        for rows in (rows_a, rows_b):
            for n in healthy:
                self.assertTrue([r for r in rows if r["node"] == n and r["event"] == "ROLLBACK_OK"], f"{n}: no ROLLBACK_OK")
        self.assertTrue([r for r in rows_a if r["node"] == FAULTY and r["step"] == "SUMMARY" and r["event"] == "DEPLOY_FAILED"])

        # -- no script error and no CSP violation in the whole session (the network entries are
        # the expected 401s of the sign-in page)
        severe = [e for e in self.browser_log() if e.get("level") == "SEVERE" and e.get("source") != "network"]
        self.assertEqual(severe, [], "browser console errors")


load_tests = own_tests(ConsoleBrowserTest)

if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        sys.exit(test_serve.cleanup())
    unittest.main(verbosity=2)
