#!/usr/bin/env python3
"""GET /metrics after a real rollout (issue 15, metrics): `guardia serve` deploys to a fleet of
its own (metrics_fleet in test/service/CMakeLists.txt: node-0001..0003 healthy, node-0004
rejects every new build), then the exposition is
  - validated by `promtool check metrics` (Debian `prometheus`; missing promtool fails the test),
  - parsed and checked against the store: the step-duration histogram's count per step is the
    number of STEP_START rows of that step in the rollout's audit log; buckets are cumulative
    and end in +Inf == _count; node outcomes and the rollout's status and duration match the
    store's rows; guardia_build_info names the binary's `guardia --version`,
  - compared with the Grafana dashboard (conf/grafana/guardia.json): every metric name its
    expressions use is one this service exposes.
The harness is test_serve.py's (real binary, port 0, HTTP only)."""

import collections
import json
import os
import re
import shutil
import subprocess

from trust_base import own_tests, main
from test_serve import ServeTest, ROOT, GUARDIA, FINAL_TASK, ROLLOUT_TIMEOUT

GOOD = ["node-0001", "node-0002", "node-0003"]
BAD = "node-0004"
DASHBOARD = os.path.join(ROOT, "conf", "grafana", "guardia.json")
STEP_BUCKETS = ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
                "120", "300", "600", "+Inf"]

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_exposition(text):
    """[(name, {label: value}, float)] and {family: type} of a Prometheus text document."""
    samples, types = [], {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError(f"not a sample line: {line!r}")
        labels = {}
        if m.group(2):
            pos = 0
            for lm in LABEL_RE.finditer(m.group(2)):
                if lm.start() != pos:
                    raise AssertionError(f"bad labels in {line!r}")
                labels[lm.group(1)] = re.sub(r"\\(.)", lambda x: "\n" if x.group(1) == "n" else x.group(1),
                                             lm.group(2))
                pos = lm.end()
            if pos != len(m.group(2)):
                raise AssertionError(f"bad labels in {line!r}")
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples, types


def dashboard_metric_names(dash):
    """Every guardia_* metric name in the dashboard's PromQL (panel targets and variables)."""
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash.get("templating", {}).get("list", [])
              if isinstance(v.get("query"), dict)]
    return exprs, {n for e in exprs for n in re.findall(r"\b(guardia_[a-z0-9_]+)\b", e)}


class MetricsTest(ServeTest):
    FIXTURE = "metrics_fleet"

    @classmethod
    def expected_faults(cls):
        return {**{n: [] for n in GOOD}, BAD: ["rejects_new_build"]}

    def promtool(self, text):
        tool = shutil.which("promtool")
        self.assertIsNotNone(tool, "promtool not found: install the Debian package prometheus (tools/install-deps)")
        return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)

    def test_dashboard_is_importable(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        self.assertTrue(dash.get("uid"))
        self.assertTrue(dash.get("title"))
        self.assertTrue(dash["panels"])
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        for p in dash["panels"]:
            self.assertTrue(p["title"] and p["targets"], p)
            self.assertEqual(p["datasource"]["type"], "prometheus", p["title"])
            for t in p["targets"]:
                self.assertTrue(t["expr"].strip(), p["title"])
        exprs, _ = dashboard_metric_names(dash)
        for q in (0.5, 0.95):
            self.assertTrue(any(f"histogram_quantile({q}," in e and "guardia_step_duration_seconds_bucket" in e
                                for e in exprs), f"step duration p{int(q * 100)} panel")

    def test_metrics_after_a_rollout_with_a_faulty_node(self):
        self.start_service()
        sr = f"SR-METRICS-{self.tag}"
        tiers = {"node-0001": 1, "node-0002": 2, "node-0003": 2, BAD: 2}
        self.fresh(*tiers)
        self.prepare(sr, tiers, "metrics")
        rollout_id = self.trigger_ok(sr)
        final = self.wait_for(f"{sr} to reach a final status", lambda: (
            lambda d: d if d["task_status"] in FINAL_TASK else None)(self.deploy_status(sr)), ROLLOUT_TIMEOUT)
        nodes = {n["name"]: n["state"] for n in final["nodes"]}
        self.assertIn(nodes[BAD], ("failed", "rolled_back"), final)

        def settled():
            r = self.api("GET", "/metrics")
            self.assertEqual(r.status, 200, r)
            text = r.data.decode()
            samples, _ = parse_exposition(text)
            done = sum(v for n, _, v in samples if n == "guardia_rollouts_total")
            queue = [v for n, _, v in samples if n == "guardia_audit_queue_depth"]
            return text if done >= 1 and queue == [0] else None
        text = self.wait_for("the rollout counted and the audit queue empty", settled, 60)
        samples, types = parse_exposition(text)

        # promtool: the exposition is valid (and lint-clean)
        r = self.promtool(text)
        self.assertEqual(r.returncode, 0, f"promtool check metrics:\n{r.stdout}{r.stderr}\n---\n{text}")
        self.assertEqual((r.stdout + r.stderr).strip(), "", "promtool found problems")

        # step durations: a histogram per step, counts = the audit log's STEP_START rows
        self.assertEqual(types["guardia_step_duration_seconds"], "histogram")
        rows = self.q("SELECT node, step FROM audit_log WHERE rollout_id = ? AND event = 'STEP_START'", rollout_id)
        starts = collections.Counter(r["step"] for r in rows)
        self.assertTrue(starts, "the rollout audited its steps")
        self.assertEqual({r["node"] for r in rows}, set(tiers), "every node ran steps")
        self.assertEqual({r["node"] for r in rows if r["step"].startswith("ROLLBACK")}, {BAD},
                         "only the faulty node rolled back")
        counts = {l["step"]: v for n, l, v in samples if n == "guardia_step_duration_seconds_count"}
        self.assertEqual(counts, {k: float(v) for k, v in starts.items()},
                         "per step: observations == STEP_START rows of the rollout")
        sums = {l["step"]: v for n, l, v in samples if n == "guardia_step_duration_seconds_sum"}
        self.assertEqual(set(sums), set(counts))
        for step, total in sums.items():
            self.assertGreaterEqual(total, 0, step)
        self.assertGreater(sum(sums.values()), 0)
        for step, count in counts.items():
            with self.subTest(step=step):
                buckets = [(l["le"], v) for n, l, v in samples
                           if n == "guardia_step_duration_seconds_bucket" and l["step"] == step]
                self.assertEqual([le for le, _ in buckets], STEP_BUCKETS)
                values = [v for _, v in buckets]
                self.assertEqual(values, sorted(values), "cumulative")
                self.assertEqual(values[-1], count, "+Inf == _count")

        # node outcomes and the rollout: as the store has them
        results = collections.Counter(r["status"] for r in self.q(
            "SELECT status FROM node_results WHERE rollout_id = ?", rollout_id))
        outcomes = {l["outcome"]: v for n, l, v in samples if n == "guardia_nodes_total"}
        self.assertEqual(outcomes, {k: float(v) for k, v in results.items()})
        [ro] = self.q("SELECT status, created_ms, finished_ms FROM rollouts WHERE id = ?", rollout_id)
        self.assertEqual({l["status"]: v for n, l, v in samples if n == "guardia_rollouts_total"},
                         {ro["status"]: 1.0})
        self.assertEqual(types["guardia_rollout_duration_seconds"], "histogram")
        rd = {n: v for n, l, v in samples if n.startswith("guardia_rollout_duration_seconds_")
              and l.get("status") == ro["status"] and "le" not in l}
        self.assertEqual(rd["guardia_rollout_duration_seconds_count"], 1.0)
        wall = (ro["finished_ms"] - ro["created_ms"]) / 1000
        self.assertGreater(rd["guardia_rollout_duration_seconds_sum"], 0)
        self.assertLessEqual(rd["guardia_rollout_duration_seconds_sum"], wall + 1.0)
        inf = [v for n, l, v in samples if n == "guardia_rollout_duration_seconds_bucket" and l["le"] == "+Inf"]
        self.assertEqual(inf, [1.0])

        # build info: this binary's version, a commit id, the libraries
        v = subprocess.run([GUARDIA, "--version"], capture_output=True, text=True, timeout=30)
        self.assertEqual(v.returncode, 0)
        version = v.stdout.split()[-1]
        [info] = [(l, val) for n, l, val in samples if n == "guardia_build_info"]
        self.assertEqual(info[1], 1.0)
        self.assertEqual(set(info[0]), {"version", "commit", "libssh2", "openssl", "boost"})
        self.assertEqual(info[0]["version"], version)
        self.assertRegex(info[0]["commit"], r"^([0-9a-f]{12}|unknown)$")
        if info[0]["commit"] != "unknown":
            self.assertEqual(subprocess.run(["git", "-C", ROOT, "cat-file", "-e", info[0]["commit"] + "^{commit}"],
                                            capture_output=True).returncode, 0, "a commit of this repository")
        for lib in ("libssh2", "openssl", "boost"):
            self.assertRegex(info[0][lib], r"^\d+\.\d+", lib)

        # the existing families keep their names and types
        for name, kind in {"guardia_rollouts_total": "counter", "guardia_nodes_total": "counter",
                           "guardia_rollouts_running": "gauge", "guardia_http_requests_total": "counter",
                           "guardia_store_degraded": "gauge", "guardia_notifications_pending": "gauge",
                           "guardia_build_info": "gauge"}.items():
            self.assertEqual(types.get(name), kind, name)

        # the dashboard uses only names this service exposes
        with open(DASHBOARD) as f:
            _, used = dashboard_metric_names(json.load(f))
        exposed = {n for n, _, _ in samples}
        self.assertTrue(used)
        self.assertEqual(sorted(used - exposed), [], "dashboard metric names missing from /metrics")


load_tests = own_tests(MetricsTest)

if __name__ == "__main__":
    main()
