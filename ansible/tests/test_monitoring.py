"""The monitoring chain end to end, as a site runs it: Debian's node_exporter on Debian 12
SVMs booted with systemd (fleetlab.py), each running the project's .deb installed by the
collection's role; Debian's `prometheus` scraping them with the shipped alert rules
(packaging/prometheus/license-agent.rules.yml); Debian's `prometheus-alertmanager` routing
the alerts to a webhook receiver. Prometheus, Alertmanager and the receiver are processes of
the test's own (not this machine's services), inside the lab's network namespace, on its
loopback; their files are in the lab's folder.

Time is compressed: the keys end within the hour, and Prometheus evaluates a copy of the
shipped rules whose time spans (`for:`, range selectors, the seconds in a day, thresholds in
seconds) are divided by SCALE; the test checks that every expression is the shipped one
apart from those numbers, so the shipped expressions are the ones evaluated. A day of the
rules is then 288 s: "ends within 30 days" is within 2.4 h, "within 7 days" is 33.6 min.

One lab for the whole class; the tests run in order, each on what the previous ones left:
svm-m1 holds an active key ending in an hour with nothing to take over, svm-m2 the same
key with a reserve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest
from urllib.parse import quote

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleetlab  # noqa: E402
from fleetlab import keytool  # noqa: E402

RULES = os.path.join(fleetlab.REPOSITORY, "packaging", "prometheus", "license-agent.rules.yml")
SVMS = ["svm-m1", "svm-m2"]
# One second of the rendered rules stands for SCALE seconds of the shipped ones.
SCALE = 300
# The numbers of the shipped expressions that are spans of time in seconds (compared with
# differences of timestamps, or a delay in seconds): scaled like the durations. Any other
# number (30 days, == 1, > 0) stays.
SECONDS_CONSTANTS = {"86400", "600", "60"}
PROMETHEUS_PORT = 9090  # on the lab namespace's loopback: nothing else listens there
ALERTMANAGER_PORT = 9093
# A token of an expression: a range selector's or offset's duration, or a number.
TOKEN = re.compile(r"\[(?P<range>[0-9a-z]+)\]|\boffset\s+(?P<offset>[0-9a-z]+)|(?P<number>\b\d+(?:\.\d+)?\b)")
DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

WEBHOOK = r"""
import http.server, json, sys
log = sys.argv[1]
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.loads(body)
        with open(log, "a") as f:
            f.write(json.dumps(payload) + "\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
print("listening on %d" % server.server_port, flush=True)
server.serve_forever()
"""

GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def rule_name(rule):
    """An alerting rule's alert, a recording rule's record."""
    return rule.get("alert") or rule["record"]


def seconds(duration):
    """A Prometheus duration (`15m`, `1h30m`, `400ms`) in seconds."""
    parts = DURATION_PART.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError("not a duration: %r" % duration)
    return sum(int(n) * UNITS[u] for n, u in parts)


def duration(value):
    """Seconds as a Prometheus duration: whole seconds, else whole milliseconds."""
    if value == int(value):
        return "%ds" % value
    milliseconds = round(value * 1000)
    if abs(milliseconds - value * 1000) > 1e-6 or milliseconds == 0:
        raise ValueError("%r s is no whole number of milliseconds" % value)
    return "%dms" % milliseconds


def number(value):
    return str(int(value)) if value == int(value) else repr(value)


def compress_expression(expr):
    def replace(match):
        if match.group("range"):
            return "[%s]" % duration(seconds(match.group("range")) / SCALE)
        if match.group("offset"):
            return match.group(0).replace(match.group("offset"), duration(seconds(match.group("offset")) / SCALE))
        text = match.group("number")
        return number(float(text) / SCALE) if text in SECONDS_CONSTANTS else text

    return TOKEN.sub(replace, expr)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the expressions) as literal blocks, as the shipped file has them."""


_Dumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)
)


def render_rules(shipped):
    """The shipped rule file's structure with its time spans divided by SCALE."""
    rendered = json.loads(json.dumps(shipped))
    for group in rendered["groups"]:
        for rule in group["rules"]:
            rule["expr"] = compress_expression(rule["expr"])
            if "for" in rule:
                rule["for"] = duration(seconds(rule["for"]) / SCALE)
    return rendered


class MonitoringTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Never skipped: a machine that cannot run the chain fails here, saying why.
        reason = fleetlab.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        for program, package in (("prometheus", "prometheus"), ("promtool", "prometheus"),
                                 ("prometheus-alertmanager", "prometheus-alertmanager"),
                                 ("amtool", "prometheus-alertmanager")):
            if shutil.which(program) is None:
                raise RuntimeError("%s is missing: apt-get install %s (scripts/ensure-deps installs it)"
                                   % (program, package))
        cls.package = fleetlab.built_package()
        cls.processes = []
        cls.lab = fleetlab.FleetLab(SVMS)
        try:
            cls.make_keys()
            cls.render()
            cls.lab.up()
            for svm in cls.lab.svms:
                svm.sh("systemctl enable --quiet --now prometheus-node-exporter")
            installed = cls.lab.ansible_playbook(
                "playbooks/install.yml", "-e", "license_agent_deb=%s" % cls.package,
                "-e", json.dumps({"license_agent_trusted_issuers": [cls.jwk]}),
            )
            if installed.returncode != 0:
                raise RuntimeError("install.yml exited %d:\n%s%s" % (
                    installed.returncode, installed.stdout[-6000:], installed.stderr[-3000:]))
            # Started once the agents run: a restart during the install is no outage.
            cls.start_webhook()
            cls.start_alertmanager()
            cls.start_prometheus()
        except BaseException:
            cls.stop_processes()
            cls.lab.down()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.stop_processes()
        finally:
            cls.lab.down()

    @classmethod
    def stop_processes(cls):
        for process in reversed(cls.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        cls.processes = []

    # Setting up

    @classmethod
    def make_keys(cls):
        k = cls.keys = os.path.join(cls.lab.directory, "keys")
        os.makedirs(k)
        keytool("keygen", "--kid", "monitoring-issuer", "--out", k)
        cls.signer = os.path.join(k, "monitoring-issuer.private.jwk")
        cls.jwk = os.path.join(k, "monitoring-issuer.jwk")
        cls.key_files = {}

        def issue(name, serial, expires):
            path = os.path.join(k, name + ".jws")
            with open(path, "w") as f:
                f.write(keytool(
                    "issue", "--signer", cls.signer, "--serial", serial, "--edition", "enterprise",
                    "--scheme", "vm-count", "--os-type", "server", "--license-type", "commercial",
                    "--units", "50", "--not-before=-1d", "--expires=" + expires,
                ) + "\n")
            cls.key_files[name] = path

        # An hour: within the rendered 30 days (2.4 h), not within its 7 days (33.6 min).
        issue("active-m1", "KS-M1", "+1h")
        issue("active-m2", "KS-M2", "+1h")
        issue("reserve", "KS-R", "+180d")

    @classmethod
    def render(cls):
        with open(RULES) as f:
            cls.shipped = yaml.safe_load(f)
        cls.rendered = render_rules(cls.shipped)
        cls.monitoring = os.path.join(cls.lab.directory, "monitoring")
        os.makedirs(cls.monitoring)
        cls.rules_file = os.path.join(cls.monitoring, "license-agent.rules.yml")
        with open(cls.rules_file, "w") as f:
            f.write("# %s with its time spans divided by %d (ansible/tests/test_monitoring.py)\n" % (RULES, SCALE))
            yaml.dump(cls.rendered, f, Dumper=_Dumper, sort_keys=False, width=1000)

    @classmethod
    def in_lab(cls, args, log_name, first_line=None):
        """Starts a program inside the lab's network namespace (nsenter execs it: the
        process is the program); waits for `first_line` (a regex) on its output when given."""
        log = open(os.path.join(cls.monitoring, log_name), "w")
        try:
            process = subprocess.Popen(
                ["nsenter", "--net=/run/netns/" + cls.lab.netns] + args, cwd=cls.monitoring,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if first_line else log, stderr=log, text=True,
            )
        finally:
            log.close()
        cls.processes.append(process)
        if first_line:
            line = process.stdout.readline()
            match = re.search(first_line, line)
            if not match:
                raise RuntimeError("%s did not start: %r" % (args[0], line))
            return match
        return None

    @classmethod
    def start_webhook(cls):
        cls.webhook_log = os.path.join(cls.monitoring, "webhook.jsonl")
        open(cls.webhook_log, "w").close()
        match = cls.in_lab([sys.executable, "-u", "-c", WEBHOOK, cls.webhook_log], "webhook.log",
                           first_line=r"listening on (\d+)")
        cls.webhook_url = "http://127.0.0.1:%s/alerts" % match.group(1)

    @classmethod
    def start_alertmanager(cls):
        config = os.path.join(cls.monitoring, "alertmanager.yml")
        with open(config, "w") as f:
            yaml.safe_dump({
                "route": {
                    "receiver": "webhook", "group_by": ["alertname", "instance"],
                    "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
                },
                "receivers": [{"name": "webhook", "webhook_configs": [{"url": cls.webhook_url, "send_resolved": True}]}],
            }, f, sort_keys=False)
        fleetlab.run(["amtool", "check-config", config])
        cls.in_lab([
            "prometheus-alertmanager", "--config.file=" + config,
            "--storage.path=" + os.path.join(cls.monitoring, "alertmanager-data"),
            "--web.listen-address=127.0.0.1:%d" % ALERTMANAGER_PORT,
            "--cluster.listen-address=",  # no peers: one Alertmanager
        ], "alertmanager.log")
        cls.wait_ready("http://127.0.0.1:%d/-/ready" % ALERTMANAGER_PORT, "alertmanager.log")

    @classmethod
    def start_prometheus(cls):
        config = os.path.join(cls.monitoring, "prometheus.yml")
        with open(config, "w") as f:
            yaml.safe_dump({
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [cls.rules_file],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:%d" % ALERTMANAGER_PORT]}]}]},
                # node_exporter on each SVM; the instance label names the SVM.
                "scrape_configs": [{
                    "job_name": "node",
                    "static_configs": [
                        {"targets": ["%s:9100" % svm.address], "labels": {"instance": svm.name}}
                        for svm in cls.lab.svms
                    ],
                }],
            }, f, sort_keys=False)
        fleetlab.run(["promtool", "check", "config", config])
        cls.in_lab([
            "prometheus", "--config.file=" + config,
            "--storage.tsdb.path=" + os.path.join(cls.monitoring, "prometheus-data"),
            "--storage.tsdb.retention.time=1h",
            "--web.listen-address=127.0.0.1:%d" % PROMETHEUS_PORT,
        ], "prometheus.log")
        cls.wait_ready("http://127.0.0.1:%d/-/ready" % PROMETHEUS_PORT, "prometheus.log")

    @classmethod
    def get(cls, url, check=True):
        """GET inside the lab's network namespace; the body, or None when it failed."""
        result = fleetlab.run(["nsenter", "--net=/run/netns/" + cls.lab.netns, sys.executable, "-c", GET, url],
                              check=check, timeout=30)
        return result.stdout if result.returncode == 0 else None

    @classmethod
    def wait_ready(cls, url, log_name, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cls.get(url, check=False) is not None:
                return
            if any(p.poll() is not None for p in cls.processes):
                break
            time.sleep(0.2)
        with open(os.path.join(cls.monitoring, log_name)) as f:
            raise RuntimeError("%s is not ready:\n%s" % (url, f.read()[-3000:]))

    # Helpers

    def notifications(self):
        """The alerts the webhook received, in order."""
        with open(self.webhook_log) as f:
            payloads = [json.loads(line) for line in f if line.strip()]
        return [alert for payload in payloads for alert in payload["alerts"]]

    def wait_notification(self, alertname, instance, status, after=0, timeout=60):
        """The first alert notified with that name, SVM and status, from the `after`th on."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for alert in self.notifications()[after:]:
                labels = alert["labels"]
                if (labels.get("alertname"), labels.get("instance"), alert["status"]) == (alertname, instance, status):
                    return alert
            time.sleep(0.5)
        self.fail("no %s notification of %s for %s within %d s; the webhook got:\n%s\nPrometheus's alerts:\n%s"
                  % (status, alertname, instance, timeout, json.dumps(self.notifications(), indent=1),
                     self.get("http://127.0.0.1:%d/api/v1/alerts" % PROMETHEUS_PORT, check=False)))

    def alertmanager_alerts(self):
        return json.loads(self.get("http://127.0.0.1:%d/api/v2/alerts" % ALERTMANAGER_PORT))

    def query(self, promql):
        answer = json.loads(self.get("http://127.0.0.1:%d/api/v1/query?query=%s" % (PROMETHEUS_PORT, quote(promql))))
        self.assertEqual(answer["status"], "success", answer)
        return answer["data"]["result"]

    def add_key(self, svm, key):
        with open(self.key_files[key]) as f:
            self.lab.svm(svm).sh("agentctl add-key -", input=f.read())

    # The tests, in order

    def test_01_the_rendered_rules_are_the_shipped_expressions_with_shorter_spans(self):
        shipped = [r for g in self.shipped["groups"] for r in g["rules"]]
        rendered = [r for g in self.rendered["groups"] for r in g["rules"]]
        self.assertEqual([rule_name(r) for r in rendered], [rule_name(r) for r in shipped])
        self.assertIn("LicenseKeyExpiresWithoutTakeover", [rule_name(r) for r in shipped])
        self.assertIn("LicenseAgentMetricsMissing", [rule_name(r) for r in shipped])
        self.assertIn("serial_slot:license_agent_units_in_use:percent", [rule_name(r) for r in shipped])
        for before, after in zip(shipped, rendered):
            name = rule_name(before)
            # Everything but the expression and `for:` is the shipped text.
            self.assertEqual({k: v for k, v in after.items() if k not in ("expr", "for")},
                             {k: v for k, v in before.items() if k not in ("expr", "for")}, name)
            self.assertEqual("for" in after, "for" in before, name)
            if "for" in before:
                self.assertAlmostEqual(seconds(after["for"]) * SCALE, seconds(before["for"]), msg=name)
            # The expressions: equal with every number and duration taken out...
            self.assertEqual(TOKEN.sub("#", after["expr"]), TOKEN.sub("#", before["expr"]), name)
            # ...and each of those the shipped one, or the shipped span divided by SCALE.
            old_tokens, new_tokens = list(TOKEN.finditer(before["expr"])), list(TOKEN.finditer(after["expr"]))
            self.assertEqual(len(old_tokens), len(new_tokens), name)
            for old, new in zip(old_tokens, new_tokens):
                if old.group("number"):
                    if old.group("number") in SECONDS_CONSTANTS:
                        self.assertAlmostEqual(float(new.group("number")) * SCALE, float(old.group("number")),
                                               msg=name)
                    else:
                        self.assertEqual(new.group("number"), old.group("number"), name)
                else:
                    span = old.group("range") or old.group("offset")
                    new_span = new.group("range") or new.group("offset")
                    self.assertAlmostEqual(seconds(new_span) * SCALE, seconds(span), msg=name)
        checked = fleetlab.run(["promtool", "check", "rules", self.rules_file], check=False)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        self.assertIn("SUCCESS: %d rules found" % len(shipped), checked.stdout)
        # And that is the file Prometheus evaluates.
        loaded = json.loads(self.get("http://127.0.0.1:%d/api/v1/rules" % PROMETHEUS_PORT))["data"]["groups"]
        self.assertEqual([g["file"] for g in loaded], [self.rules_file] * len(self.shipped["groups"]))
        self.assertEqual([g["name"] for g in loaded], [g["name"] for g in self.shipped["groups"]])
        self.assertEqual([r["name"] for g in loaded for r in g["rules"]], [rule_name(r) for r in shipped])

    def test_02_a_key_ending_with_nothing_to_take_over_reaches_the_webhook(self):
        self.add_key("svm-m1", "active-m1")
        # svm-m2: the same key with a reserve taking over, added right after it.
        with open(self.key_files["active-m2"]) as a, open(self.key_files["reserve"]) as r:
            self.lab.svm("svm-m2").sh(
                'read -r active && read -r reserve && printf "%s\\n" "$active" | agentctl add-key - '
                '&& printf "%s\\n" "$reserve" | agentctl add-key --reserve -',
                input=a.read() + r.read(),
            )
        # node_exporter serves the agent's series as the agent wrote them.
        scraped = self.lab.svm("svm-m1").sh(
            "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9100/metrics\").read().decode())'"
        ).stdout
        self.assertRegex(
            scraped, r'license_agent_key_expiry_timestamp_seconds\{role="active",serial="KS-M1",slot="server"\} \d')
        self.assertIn('license_agent_slot_takeover{slot="server",takeover="none"} 1', scraped)

        alert = self.wait_notification("LicenseKeyExpiresWithoutTakeover", "svm-m1", "firing")
        self.assertEqual(alert["labels"]["slot"], "server")
        self.assertEqual(alert["labels"]["serial"], "KS-M1")
        self.assertEqual(alert["labels"]["role"], "active")
        self.assertEqual(alert["labels"]["severity"], "warning")
        self.assertEqual(alert["labels"]["job"], "node")
        self.assertEqual(alert["annotations"]["summary"],
                         "svm-m1: the server licence ends within 30 days with nothing to take over")
        # $value: the key's time left, an hour less the few seconds since it was added.
        self.assertRegex(alert["annotations"]["description"],
                         r"^Key KS-M1 of the server slot on svm-m1 expires in 59m \d+s and no reserve key")
        self.assertTrue(alert["annotations"]["runbook_url"].endswith("RUNBOOK.md#licensekeyexpireswithouttakeover"))
        # Alertmanager holds it as active.
        held = [a for a in self.alertmanager_alerts() if a["labels"]["alertname"] == "LicenseKeyExpiresWithoutTakeover"]
        self.assertEqual([(a["labels"]["instance"], a["status"]["state"]) for a in held], [("svm-m1", "active")])
        # svm-m2's reserve takes over: no alert; an hour is not within 7 days (33.6 min here).
        firing = self.query('ALERTS{alertstate="firing"}')
        self.assertEqual(sorted((a["metric"]["alertname"], a["metric"]["instance"]) for a in firing),
                         [("LicenseKeyExpiresWithoutTakeover", "svm-m1")])
        self.assertFalse([a for a in self.notifications() if a["labels"].get("instance") == "svm-m2"])

    def test_03_a_reserve_added_silences_it(self):
        before = len(self.notifications())
        # As a site adds one: the fleet's activation task, reserve=true.
        report = os.path.join(self.lab.directory, "report.json")
        result = self.lab.ansible_playbook(
            "playbooks/activation_task.yml", "-e", "key_file=%s" % self.key_files["reserve"],
            "-e", "reserve=true", "-e", "target=svm-m1", "-e", "report=%s" % report,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-2000:])
        with open(report) as f:
            self.assertEqual([(s["host"], s["result"]) for s in json.load(f)["svms"]], [("svm-m1", "added")])
        resolved = self.wait_notification("LicenseKeyExpiresWithoutTakeover", "svm-m1", "resolved", after=before)
        self.assertEqual(resolved["labels"]["serial"], "KS-M1")
        self.assertEqual(resolved["annotations"]["summary"],
                         "svm-m1: the server licence ends within 30 days with nothing to take over")
        self.assertFalse([a for a in self.alertmanager_alerts()
                          if a["labels"]["alertname"] == "LicenseKeyExpiresWithoutTakeover"])
        self.assertEqual(self.query('ALERTS{alertname="LicenseKeyExpiresWithoutTakeover"}'), [])

    def test_04_an_agent_stopped_raises_metrics_gone(self):
        svm = self.lab.svm("svm-m2")
        before = len(self.notifications())
        svm.sh("systemctl stop license-agent")
        textfile = "/var/lib/prometheus/node-exporter/license-agent.prom"
        self.assertEqual(svm.sh("test -e " + textfile, check=False).returncode, 1)
        alert = self.wait_notification("LicenseAgentMetricsMissing", "svm-m2", "firing", after=before)
        # node_exporter is still scraped: it is the agent's series that are gone.
        self.assertEqual([r["value"][1] for r in self.query('up{instance="svm-m2"}')], ["1"])
        self.assertEqual(self.query('license_agent_info{instance="svm-m2"}'), [])
        self.assertEqual(alert["labels"]["severity"], "critical")
        self.assertEqual(alert["annotations"]["summary"], "svm-m2: license-agent is not running (its metrics are gone)")
        self.assertTrue(alert["annotations"]["runbook_url"].endswith("RUNBOOK.md#licenseagentmetricsmissing"))
        held = [a for a in self.alertmanager_alerts() if a["labels"]["alertname"] == "LicenseAgentMetricsMissing"]
        self.assertEqual([a["labels"]["instance"] for a in held], ["svm-m2"])
        # Started again: the alert resolves.
        before = len(self.notifications())
        svm.sh("systemctl start license-agent")
        self.wait_notification("LicenseAgentMetricsMissing", "svm-m2", "resolved", after=before)

    def test_05_nothing_else_fired(self):
        names = sorted({(a["labels"]["alertname"], a["labels"]["instance"]) for a in self.notifications()})
        self.assertEqual(names, [("LicenseAgentMetricsMissing", "svm-m2"),
                                 ("LicenseKeyExpiresWithoutTakeover", "svm-m1")])
        self.assertEqual(self.query("ALERTS"), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
