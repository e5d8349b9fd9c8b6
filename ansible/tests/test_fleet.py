"""The fleet layer end to end: real ansible-core over real OpenSSH to Debian 12 SVMs booted
with systemd (fleetlab.py), each running the project's .deb installed by the collection's
role, plus an inventory host that is down.

One lab for the whole class (booting is the expensive part); the tests run in order and
each builds on the fleet the previous ones left, as an administrator's day would.
"""

from __future__ import annotations

import calendar
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleetlab  # noqa: E402
from fleetlab import BIN, keytool  # noqa: E402

CODE = "QWERT-12345-ASDFG-67890"
SVMS = ["svm-a1", "svm-a2", "svm-b1", "svm-b2"]


class FleetTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Never skipped: a machine that cannot run the fleet fails here, saying why.
        reason = fleetlab.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        cls.package = fleetlab.built_package()
        cls.keys = tempfile.mkdtemp(prefix="fleet-keys-")
        cls.make_keys()
        cls.lab = fleetlab.FleetLab(SVMS, down=["svm-down"])
        cls.lab.groups = {"cluster_a": ["svm-a1", "svm-a2"], "cluster_b": ["svm-b1", "svm-b2", "svm-down"]}
        try:
            cls.lab.up()
            # The activation server for svm-a1 runs on the host, inside svm-a1's network
            # namespace: the agent reaches it on its own loopback.
            cls.server = cls.start_activation_server(cls.lab.svm("svm-a1"))
            cls.lab.host_vars = {
                "svm-a1": {"license_agent_activation": {"url": cls.server_url, "retry-initial": "1s"}}
            }
            cls.lab.write_inventory()
        except Exception:
            cls.lab.down()
            raise

    @classmethod
    def tearDownClass(cls):
        server = getattr(cls, "server", None)
        if server is not None:
            server.terminate()
            server.wait()
            server.stdout.close()
        cls.lab.down()
        subprocess.run(["rm", "-rf", cls.keys])

    @classmethod
    def make_keys(cls):
        k = cls.keys
        keytool("keygen", "--kid", "fleet-issuer", "--out", k)
        cls.signer = os.path.join(k, "fleet-issuer.private.jwk")
        cls.jwk = os.path.join(k, "fleet-issuer.jwk")
        cls.key_files = {}

        def issue(name, serial, expires, os_type="server", units=50):
            args = [
                "issue", "--signer", cls.signer, "--serial", serial, "--edition", "enterprise",
                "--scheme", "vm-count", "--os-type", os_type, "--license-type", "commercial",
                "--units", str(units), "--not-before=-1d", "--expires=" + expires,
            ]
            path = os.path.join(k, name + ".jws")
            with open(path, "w") as f:
                f.write(keytool(*args) + "\n")
            cls.key_files[name] = path

        issue("active", "KS-1", "+90d")
        issue("reserve", "KS-2", "+180d")
        issue("long", "KS-LONG", "+200d")  # svm-b1: the reserve KS-2 would end before it (R5)
        cls.issue = staticmethod(issue)

    @classmethod
    def start_activation_server(cls, svm):
        catalog = os.path.join(cls.keys, "codes.json")
        with open(catalog, "w") as f:
            json.dump(
                {
                    "codes": {
                        CODE: {
                            "state": "valid", "serial": "KS-CODE", "edition": "enterprise",
                            "scheme": "vm-count", "osType": "server", "licenseType": "commercial",
                            "units": 50, "validity": "365d",
                        }
                    }
                },
                f,
            )
        process = subprocess.Popen(
            ["nsenter", "--target", str(svm.leader), "--net", os.path.join(BIN, "activation-server"),
             "--signer", cls.signer, "--catalog", catalog, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = process.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            process.kill()
            raise RuntimeError("activation-server did not start: %r" % line)
        cls.server_url = match.group(1)
        return process

    # Helpers

    def playbook(self, *args, expect=0):
        result = self.lab.ansible_playbook(*args)
        if expect is not None:
            self.assertEqual(
                result.returncode, expect,
                "ansible-playbook %s exited %d\n%s\n%s" % (" ".join(args), result.returncode, result.stdout[-6000:], result.stderr[-3000:]),
            )
        return result

    def activation_task(self, key, reserve, *extra, expect=0):
        report = os.path.join(self.lab.directory, "report.json")
        if os.path.exists(report):
            os.unlink(report)
        result = self.playbook(
            "playbooks/activation_task.yml", "-e", "key_file=%s" % self.key_files[key],
            "-e", "reserve=%s" % str(reserve).lower(), "-e", "report=%s" % report, *extra, expect=expect,
        )
        with open(report) as f:
            return json.load(f), result

    def results(self, report):
        return {svm["host"]: svm["result"] for svm in report["svms"]}

    def state(self, name):
        return self.lab.svm(name).sh("cat /var/lib/license-agent/state.json").stdout

    def recap(self, output):
        """PLAY RECAP counters by host."""
        counters = {}
        for line in output.splitlines():
            match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
            if match and "ok=" in match.group(2):
                counters[match.group(1)] = dict(
                    (k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))
                )
        return counters

    # The tests, in order

    def test_01_the_role_installs_the_agent_everywhere_and_is_idempotent(self):
        args = (
            "playbooks/install.yml", "-e", "license_agent_deb=%s" % self.package,
            "-e", json.dumps({"license_agent_trusted_issuers": [self.jwk]}), "--limit", "!svm-down",
        )
        first = self.playbook(*args)
        for name in SVMS:
            svm = self.lab.svm(name)
            self.assertEqual(svm.sh("systemctl is-active license-agent").stdout, "active\n")
            self.assertEqual(svm.sh("ls /etc/license-agent/trusted-issuers/").stdout.split(), ["README", "fleet-issuer.jwk"])
        self.assertIn('url = "%s"' % self.server_url, self.lab.svm("svm-a1").sh("cat /etc/license-agent/agent.toml").stdout)
        second = self.playbook(*args)
        for name, counters in self.recap(second.stdout).items():
            self.assertEqual(counters["changed"], 0, "%s changed on the second run:\n%s" % (name, second.stdout))
        self.assertIn("svm-a1", first.stdout)

    def test_02_a_bad_configuration_fails_and_leaves_the_agent_as_it_was(self):
        svm = self.lab.svm("svm-b1")
        before = svm.sh("cat /etc/license-agent/agent.toml").stdout
        pid = svm.sh("systemctl show -p MainPID --value license-agent").stdout
        result = self.playbook(
            "playbooks/install.yml", "-e", "license_agent_deb=%s" % self.package,
            "-e", json.dumps({"license_agent_warnings_before": ["-1d"]}), "--limit", "svm-b1", expect=2,
        )
        self.assertIn("failed to validate", result.stdout)
        self.assertIn("warnings.before must be a duration string", result.stdout)
        self.assertEqual(svm.sh("cat /etc/license-agent/agent.toml").stdout, before)
        self.assertEqual(svm.sh("systemctl show -p MainPID --value license-agent").stdout, pid)
        self.assertEqual(svm.sh("systemctl is-active license-agent").stdout, "active\n")

    def test_03_active_keys_on_a_group_on_one_host_and_with_limit(self):
        report, _ = self.activation_task("active", False, "-e", "target=cluster_a")
        self.assertEqual(self.results(report), {"svm-a1": "added", "svm-a2": "added"})
        self.assertEqual(report["role"], "active")
        self.assertEqual(report["serial"], "KS-1")
        report, _ = self.activation_task("long", False, "-e", "target=svm-b1")
        self.assertEqual(self.results(report), {"svm-b1": "added"})
        # svm-b2's workstation key lapses during the tests (the fleet status shows it).
        self.issue("workstation", "WS-1", "+25s", os_type="workstation")
        report, _ = self.activation_task("workstation", False, "--limit", "svm-b2")
        self.assertEqual(self.results(report), {"svm-b2": "added"})
        self.assertEqual(report["svms"][0]["slot"], "workstation")

    def test_04_a_reserve_on_one_host_in_diff_mode(self):
        report, result = self.activation_task("reserve", True, "-e", "target=svm-a2", "--diff")
        self.assertEqual(self.results(report), {"svm-a2": "added"})
        # The slot before and after, as Ansible's diff shows it.
        self.assertRegex(result.stdout, r"-reserve: none")
        self.assertRegex(result.stdout, r"\+reserve: KS-2 \(commercial enterprise")

    def test_05_check_mode_changes_nothing_anywhere(self):
        before = {name: self.state(name) for name in SVMS}
        report, _ = self.activation_task("reserve", True, "--check", expect=2)
        self.assertEqual(
            self.results(report),
            {"svm-a1": "would-add", "svm-a2": "unchanged", "svm-b1": "refused", "svm-b2": "skipped",
             "svm-down": "unreachable"},
        )
        self.assertTrue(report.get("checkMode"))
        for name in SVMS:
            self.assertEqual(self.state(name), before[name], "check mode changed %s's state.json" % name)

    def test_06_the_activation_task_on_the_whole_fleet_reports_every_svm(self):
        report, result = self.activation_task("reserve", True, expect=2)
        self.assertEqual(report["task"], "activation")
        self.assertEqual(report["role"], "reserve")
        self.assertEqual(report["serial"], "KS-2")
        self.assertRegex(report["startedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertGreaterEqual(report["finishedAt"], report["startedAt"])
        by_host = {svm["host"]: svm for svm in report["svms"]}
        self.assertEqual(by_host["svm-a1"], {"host": "svm-a1", "result": "added", "slot": "server"})
        self.assertEqual(by_host["svm-a2"], {"host": "svm-a2", "result": "unchanged", "slot": "server"})
        refused = by_host["svm-b1"]
        self.assertEqual(
            (refused["result"], refused["slot"], refused["rule"], refused["code"]),
            ("refused", "server", "R5", "expires_before_active"),
        )
        self.assertIn("KS-2", refused["message"])
        skipped = by_host["svm-b2"]
        self.assertEqual(
            (skipped["result"], skipped["slot"], skipped["rule"], skipped["code"]),
            ("skipped", "server", "R1", "no_active_key"),
        )
        self.assertEqual(by_host["svm-down"]["result"], "unreachable")
        self.assertIn("10.231.0.250", by_host["svm-down"]["message"])
        self.assertEqual(set(by_host["svm-down"]), {"host", "result", "message"})
        self.assertEqual(
            report["summary"],
            {"added": 1, "unchanged": 1, "refused": 1, "skipped": 1, "unreachable": 1, "failed": 0},
        )
        self.assertEqual(
            list(report), ["task", "role", "serial", "startedAt", "finishedAt", "svms", "summary", "coverage"])
        # U4: no SVM the reserve went to reports its usage yet: none is counted as zero.
        self.assertEqual(report["coverage"], {"units": 50, "used": 0, "unreported": ["svm-a1", "svm-a2"]})
        # The table on standard output, and the agents' own journal on the SVMs.
        self.assertRegex(result.stdout, r"svm-b1\s+refused\s+server\s+R5 expires_before_active")
        # (The YAML callback folds long rows: compare with the folds undone.)
        self.assertIn("1 added, 1 unchanged, 1 refused, 1 skipped, 1 unreachable, 0 failed; "
                      "coverage unknown: no current usage report from svm-a1, svm-a2",
                      re.sub(r"\s+", " ", result.stdout))
        held = json.loads(self.lab.svm("svm-a1").sh("agentctl status --json").stdout)
        self.assertEqual(held["slots"][0]["reserve"]["serial"], "KS-2")
        rejected = self.lab.svm("svm-b1").sh(
            "journalctl -o json MESSAGE_ID=13a9558c214c43cc829f75e2e8da0fea --no-pager").stdout
        self.assertIn("R5 expires_before_active", rejected)

    def test_07_a_second_run_changes_nothing(self):
        report, result = self.activation_task("reserve", True, "--limit", "cluster_a")
        self.assertEqual(self.results(report), {"svm-a1": "unchanged", "svm-a2": "unchanged"})
        for name in ("svm-a1", "svm-a2"):
            self.assertEqual(self.recap(result.stdout)[name]["changed"], 0, result.stdout)

    def test_08_removing_a_reserve(self):
        first = self.lab.ansible("svm-a2", "-m", "licenseagent.svm.license_key", "-a", "slot=server state=absent")
        self.assertEqual(first.returncode, 0, first.stdout + first.stderr)
        self.assertIn("CHANGED", first.stdout)
        self.assertIn("result: removed", first.stdout)
        again = self.lab.ansible("svm-a2", "-m", "licenseagent.svm.license_key", "-a", "slot=server state=absent")
        self.assertEqual(again.returncode, 0, again.stdout + again.stderr)
        self.assertIn("SUCCESS", again.stdout)
        self.assertIn("result: absent", again.stdout)
        held = json.loads(self.lab.svm("svm-a2").sh("agentctl status --json").stdout)
        self.assertIsNone(held["slots"][0].get("reserve"))

    def test_09_the_fleet_status_puts_what_needs_a_person_first(self):
        # svm-b2's workstation key (25 s) lapses with nothing to take over.
        status = self.lab.svm("svm-b2").sh("agentctl status --json", check=False)
        deadline = time.time() + 60
        while '"expired"' not in status.stdout and time.time() < deadline:
            time.sleep(1)
            status = self.lab.svm("svm-b2").sh("agentctl status --json", check=False)
        path = os.path.join(self.lab.directory, "fleet.json")
        result = self.playbook("playbooks/fleet_status.yml", "-e", "report=%s" % path)
        with open(path) as f:
            fleet = json.load(f)
        order = [svm["host"] for svm in fleet["svms"]]
        # Expired first; then what cannot be read; then by the soonest lapse with nothing to
        # take over: svm-a2 (KS-1, 90 d, no reserve), svm-a1 (KS-2 after KS-1: 180 d),
        # svm-b1 (KS-LONG, 200 d).
        self.assertEqual(order, ["svm-b2", "svm-down", "svm-a2", "svm-a1", "svm-b1"], json.dumps(fleet, indent=1))
        by_host = {svm["host"]: svm for svm in fleet["svms"]}
        self.assertEqual(by_host["svm-b2"]["state"], "expired")
        self.assertEqual(by_host["svm-a1"]["slots"][0]["takeover"], "reserve")
        self.assertEqual(by_host["svm-a1"]["slots"][0]["reserve"]["serial"], "KS-2")
        self.assertEqual(by_host["svm-a1"]["soonestLapse"], by_host["svm-a1"]["slots"][0]["reserve"]["expiresAt"])
        self.assertEqual(by_host["svm-down"]["state"], "unreachable")
        self.assertRegex(result.stdout, r"svm-b2\s+expired\s+workstation \(expired\)\s+WS-1")
        self.assertEqual(result.returncode, 0)

    def test_09b_an_installed_collection_writes_where_the_operator_runs_it(self):
        # As an operator uses it: the collection built and installed with ansible-galaxy, the
        # playbook run by its name from the operator's own folder, with Ansible's default
        # configuration (no ansible.cfg of the checkout's: results as JSON).
        work = os.path.join(self.lab.directory, "operator")
        installed = os.path.join(self.lab.directory, "installed")
        os.makedirs(work)
        collection = os.path.join(fleetlab.ANSIBLE_DIR, "collections", "ansible_collections", "licenseagent", "svm")
        environment = {
            "ANSIBLE_CONFIG": os.path.join(work, "none.cfg"),  # absent: Ansible's defaults
            "ANSIBLE_COLLECTIONS_PATH": installed,
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        }
        galaxy_env = dict(self.lab.environment(), **environment)
        built = fleetlab.run(["ansible-galaxy", "collection", "build", "--output-path", work, collection],
                             env=galaxy_env, cwd=work)
        tarball = built.stdout.strip().split()[-1]
        fleetlab.run(["ansible-galaxy", "collection", "install", "-p", installed, tarball], env=galaxy_env, cwd=work)
        os.unlink(tarball)
        result = self.lab.ansible_playbook("licenseagent.svm.fleet_status", "-e", "report=fleet.json",
                                           cwd=work, extra_env=environment)
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-2000:])
        with open(os.path.join(work, "fleet.json")) as f:
            self.assertEqual(json.load(f)["svms"][0]["host"], "svm-b2")
        written = [os.path.join(root, name) for root, _, names in os.walk(installed) for name in names
                   if name.endswith(".json") and name not in ("MANIFEST.json", "FILES.json")]
        self.assertEqual(written, [])
        # The table a row a line, as the default callback prints a list.
        self.assertRegex(result.stdout, r'\n\s+"svm-b2\s+expired\s+workstation \(expired\)\s+WS-1')
        table = result.stdout.split("TASK [Fleet status]", 1)[1].split("PLAY RECAP", 1)[0]
        self.assertNotIn("\\n", table)

    def test_10_an_activation_code_never_shows(self):
        code_file = os.path.join(self.lab.directory, "code.txt")
        with open(code_file, "w") as f:
            f.write(CODE.lower() + "\n")
        os.chmod(code_file, 0o600)
        seen = []
        stop = threading.Event()

        def watch_command_lines():
            while not stop.is_set():
                for path in glob.glob("/proc/[0-9]*/cmdline"):
                    try:
                        with open(path, "rb") as f:
                            text = f.read().replace(b"\0", b" ").decode("utf-8", "replace").upper()
                    except OSError:
                        continue
                    if CODE in text:
                        seen.append(text)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch_command_lines)
        watcher.start()
        try:
            result = self.playbook("playbooks/activate.yml", "-e", "code_file=%s" % code_file, "-e", "target=svm-a1", "-vvv")
        finally:
            stop.set()
            watcher.join()
        output = result.stdout + result.stderr
        self.assertIn("activated: server KS-CODE-1 (code ...67890)", output)
        self.assertNotIn(CODE, output.upper())
        self.assertEqual(seen, [], "the code was on a command line")
        # The controller's files (Ansible's home, the lab) hold it only in the code file.
        for root, _, files in os.walk(self.lab.directory):
            for name in files:
                path = os.path.join(root, name)
                if path == code_file or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    self.assertNotIn(CODE.encode(), f.read().upper(), path)
        svm = self.lab.svm("svm-a1")
        self.assertEqual(svm.sh("journalctl -o export --no-pager | grep -aic %s" % CODE, check=False).stdout.strip(), "0")
        self.assertEqual(svm.sh("grep -rIlis %s /root /tmp /var/tmp /etc" % CODE, check=False).stdout, "")
        status = json.loads(svm.sh("agentctl status --json").stdout)
        self.assertEqual(status["slots"][0]["active"]["codeHint"], "67890")
        # Idempotent: the key from this code is held; the server is not asked again.
        again = self.playbook("playbooks/activate.yml", "-e", "code_file=%s" % code_file, "-e", "target=svm-a1")
        self.assertIn("unchanged: server KS-CODE-1", again.stdout)

    def reloads(self, svm):
        """The agent's "Configuration reloaded" journal entries, oldest first."""
        lines = svm.sh('journalctl -o json --no-pager -u license-agent MESSAGE="Configuration reloaded"').stdout
        return [json.loads(line) for line in lines.splitlines() if line.strip()]

    def test_11_exclusive_issuers_remove_the_ones_not_listed_and_reload(self):
        svm = self.lab.svm("svm-a2")
        stale = os.path.join(self.keys, "stale")
        os.makedirs(stale, exist_ok=True)
        keytool("keygen", "--kid", "stale-issuer", "--out", stale)
        keytool("keygen", "--kid", "linked-issuer", "--out", stale)
        with open(os.path.join(stale, "stale-issuer.jwk")) as f:
            svm.sh("cat >/etc/license-agent/trusted-issuers/stale-issuer.jwk", input=f.read())
        # One more through a symbolic link (the agent follows it), whose target must stay
        # (outside /root and /home, which the unit's ProtectHome= hides from the agent).
        with open(os.path.join(stale, "linked-issuer.jwk")) as f:
            svm.sh("cat >/usr/local/share/linked-issuer.jwk && ln -s /usr/local/share/linked-issuer.jwk "
                   "/etc/license-agent/trusted-issuers/linked-issuer.jwk && systemctl reload license-agent",
                   input=f.read())
        self.assertEqual(self.reloads(svm)[-1]["TRUSTED_ISSUERS"], "3")
        args = ["playbooks/install.yml", "-e", "license_agent_deb=%s" % self.package,
                "-e", json.dumps({"license_agent_trusted_issuers": [self.jwk]}), "--limit", "svm-a2"]
        # Not exclusive (the default): the stale issuer stays.
        kept = self.playbook(*args)
        self.assertEqual(self.recap(kept.stdout)["svm-a2"]["changed"], 0, kept.stdout)
        self.assertIn("stale-issuer.jwk", svm.sh("ls /etc/license-agent/trusted-issuers/").stdout)
        exclusive = args + ["-e", json.dumps({"license_agent_trusted_issuers_exclusive": True})]
        checked = self.playbook(*(exclusive + ["--check"]))
        self.assertEqual(self.recap(checked.stdout)["svm-a2"]["changed"], 2, checked.stdout)  # would remove, reload
        self.assertIn("stale-issuer.jwk", svm.sh("ls /etc/license-agent/trusted-issuers/").stdout)
        before = len(self.reloads(svm))
        removed = self.playbook(*exclusive)
        self.assertEqual(self.recap(removed.stdout)["svm-a2"]["changed"], 2, removed.stdout)  # the file, the reload
        self.assertEqual(svm.sh("ls /etc/license-agent/trusted-issuers/").stdout.split(), ["README", "fleet-issuer.jwk"])
        self.assertEqual(svm.sh("test -f /usr/local/share/linked-issuer.jwk").returncode, 0, "the link's target stays")
        reloads = self.reloads(svm)
        self.assertEqual(len(reloads), before + 1)
        self.assertEqual(reloads[-1]["TRUSTED_ISSUERS"], "1")
        # The keys signed by the issuer that stays are still held.
        held = json.loads(svm.sh("agentctl status --json").stdout)
        self.assertEqual(held["slots"][0]["active"]["serial"], "KS-1")
        again = self.playbook(*exclusive)
        self.assertEqual(self.recap(again.stdout)["svm-a2"]["changed"], 0, again.stdout)

    def test_12_the_role_installs_from_a_signed_apt_repository(self):
        repository, signing_key = fleetlab.make_apt_repository(
            self.package, os.path.join(self.lab.directory, "apt"), impostor="acl")
        server, url = self.lab.serve(repository)
        try:
            svm = self.lab.svm("svm-b2")
            svm.sh("apt-get purge -y -q license-agent >/dev/null && ! test -e /usr/sbin/license-agent")
            version = os.path.basename(self.package).split("_")[1]
            base = ["playbooks/install.yml", "--limit", "svm-b2", "-e", json.dumps({
                "license_agent_apt_repository": url, "license_agent_apt_suite": "./",
                "license_agent_apt_components": [], "license_agent_apt_signing_key": signing_key,
                "license_agent_trusted_issuers": [self.jwk]})]
            # Both sources, or neither: refused before anything is touched.
            both = self.playbook(*(base + ["-e", "license_agent_deb=%s" % self.package]), expect=2)
            self.assertIn("Set exactly one of license_agent_deb", both.stdout)
            self.assertEqual(svm.sh("dpkg-query -W license-agent", check=False).returncode, 1)
            first = self.playbook(*base)
            self.assertEqual(svm.sh("dpkg-query -W -f='${Version}' license-agent").stdout, version)
            self.assertEqual(svm.sh("systemctl is-active license-agent").stdout, "active\n")
            entry = svm.sh("cat /etc/apt/sources.list.d/license-agent.sources").stdout
            self.assertIn("URIs: %s\n" % url, entry)
            self.assertIn("Signed-By: /etc/apt/keyrings/license-agent.asc\n", entry)
            self.assertNotIn("Components:", entry)
            # The repository provides license-agent and nothing else: its acl 99 is pinned
            # away (-1), and an upgrade of the SVM does not take it.
            acl = svm.sh("apt-cache policy acl").stdout
            self.assertRegex(acl, r"99:9\.9-1 -1\n", acl)
            self.assertNotIn("99:9.9-1", svm.sh("apt-get -s -q upgrade").stdout)
            self.assertNotIn("99:", svm.sh("dpkg-query -W -f='${Version}' acl").stdout)
            self.assertRegex(svm.sh("apt-cache policy license-agent").stdout, r"%s 500\n" % re.escape(version))
            self.assertGreater(self.recap(first.stdout)["svm-b2"]["changed"], 0)
            # A field with a line break (which would add "Trusted: yes" to the entry) is refused
            # before anything is written.
            injected = self.playbook(*(base + ["-e", json.dumps({"license_agent_apt_suite": "./\nTrusted: yes"})]),
                                     expect=2)
            self.assertIn("one word without spaces or line breaks", injected.stdout)
            self.assertNotIn("Trusted", svm.sh("cat /etc/apt/sources.list.d/license-agent.sources").stdout)
            # Idempotent, in check mode too, and pinned to the version it has.
            for extra in ([], ["--check"], ["-e", "license_agent_version=%s" % version]):
                again = self.playbook(*(base + extra))
                self.assertEqual(self.recap(again.stdout)["svm-b2"]["changed"], 0, again.stdout)
            # A repository whose signature apt cannot check is refused, and the agent stays.
            forged = os.path.join(self.lab.directory, "other.asc")
            fleetlab.make_apt_repository(self.package, os.path.join(self.lab.directory, "apt-other"), key_out=forged)
            refused = self.playbook(*(base + ["-e", "license_agent_apt_signing_key=%s" % forged]), expect=2)
            self.assertIn("NO_PUBKEY", refused.stdout + refused.stderr)
            self.assertEqual(svm.sh("systemctl is-active license-agent").stdout, "active\n")
        finally:
            server.terminate()
            server.wait()
            server.stdout.close()

    def test_13_usage_across_the_fleet_per_key_and_a_reserves_coverage(self):
        """Rule U4: one key shared by three SVMs, two reporting usage whose sum crosses
        100 %, one not reporting, one SVM unreachable; then a reserve too small for the
        fleet's usage, whose coverage the activation task reports."""
        self.issue("usage", "KS-U", "+120d")
        self.issue("usage-reserve", "KS-UR", "+300d", units=40)
        report, _ = self.activation_task("usage", False, "-e", "target=svm-a1:svm-a2:svm-b1")
        self.assertEqual(self.results(report), {"svm-a1": "added", "svm-a2": "added", "svm-b1": "added"})
        self.assertNotIn("coverage", report)  # an active key: nothing to cover
        for name, units in (("svm-a1", 30), ("svm-a2", 25)):
            said = self.lab.svm(name).sh("agentctl report-usage server %d" % units).stdout
            self.assertIn("%d units of the active key's 50" % units, said)
        # The reserve: 40 units for the 55 its two SVMs use.
        report, result = self.activation_task("usage-reserve", True, "-e", "target=cluster_a")
        self.assertEqual(self.results(report), {"svm-a1": "added", "svm-a2": "added"})
        self.assertEqual(report["coverage"], {"units": 40, "used": 55})
        # (The YAML callback folds long rows: compare with the folds undone.)
        self.assertIn("coverage: 40 units for 55 in use (137.5 %), 15 would be uncovered",
                      re.sub(r"\s+", " ", result.stdout))

        path = os.path.join(self.lab.directory, "usage.json")
        # The table's rows one per line, unfolded: the callback's JSON result format.
        result = self.lab.ansible_playbook("playbooks/fleet_usage.yml", "-e", "report=%s" % path,
                                           extra_env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-2000:])
        with open(path) as f:
            usage = json.load(f)
        reported = {}
        for name in ("svm-a1", "svm-a2"):
            status = json.loads(self.lab.svm(name).sh("agentctl status --json").stdout)
            reported[name] = status["slots"][0]["usage"]["reportedAt"]
        self.assertRegex(usage.pop("at"), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        unreachable = usage.pop("unreachable")
        self.assertEqual([svm["host"] for svm in unreachable], ["svm-down"])
        self.assertIn("10.231.0.250", unreachable[0]["message"])
        self.assertEqual(
            usage,
            {
                "task": "usage",
                "keys": [
                    {
                        "serial": "KS-U", "slot": "server", "units": 50, "used": 55, "percent": 110.0,
                        "band": "exceeded", "svmCount": 3,
                        "svms": [{"host": "svm-a1", "used": 30, "reportedAt": reported["svm-a1"]},
                                 {"host": "svm-a2", "used": 25, "reportedAt": reported["svm-a2"]}],
                        "reserves": [{"serial": "KS-UR", "units": 40, "hosts": ["svm-a1", "svm-a2"]}],
                    }
                ],
                "unknown": [{"host": "svm-b1", "slot": "server", "serial": "KS-U"}],
            },
            json.dumps(usage, indent=1),
        )
        for line in (
            "SERIAL  SLOT    UNITS  USED  PERCENT  BAND      SVMS              NOT COUNTED",
            "KS-U    server  50     55    110.0 %  exceeded  2 of 3 reporting  svm-b1 (no report)",
            "unreachable: svm-down: ",
            "Fleet usage: 1 key: 1 exceeded; 1 SVM slot without a current report, 1 SVM unreachable",
        ):
            self.assertIn(line, result.stdout)
        # The fleet status shows each SVM's usage too.
        status = self.lab.ansible_playbook(
            "playbooks/fleet_status.yml", "-e", "report=%s" % os.path.join(self.lab.directory, "fleet-usage-status.json"),
            extra_env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        self.assertEqual(status.returncode, 0, status.stdout[-4000:])
        self.assertRegex(status.stdout, r"svm-a1 .*KS-U .*30/50 \(60\.0 %, normal\)")
        self.assertRegex(status.stdout, r"svm-b1 .*KS-U .*unknown")

    def test_14_the_fleet_status_lists_a_consumer_that_lags(self):
        """Rule N2 over the fleet: the role makes svm-a2 expect the protection service, which
        does not confirm the active key; the fleet status puts that SVM first and lists the
        consumer lagging, until it confirms."""
        result = self.playbook(
            "playbooks/install.yml", "-e", "license_agent_deb=%s" % self.package,
            "-e", json.dumps({"license_agent_consumers_expect": ["protection-server"],
                              "license_agent_consumers_confirm_within": "2s"}), "--limit", "svm-a2",
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        svm = self.lab.svm("svm-a2")
        toml = svm.sh("cat /etc/license-agent/agent.toml").stdout
        self.assertIn('[consumers]\nexpect = ["protection-server"]\nconfirm-within = "2s"', toml)
        active = json.loads(svm.sh("agentctl status --json").stdout)["slots"][0]["active"]["serial"]
        deadline = time.time() + 30
        journal = "journalctl -u license-agent -o cat --no-pager MESSAGE_ID=fc31db115a6d4ae09692763a54c6d5a6"
        while "protection-server" not in svm.sh(journal, check=False).stdout:
            self.assertLess(time.time(), deadline, "no CONSUMER_NOT_UPDATED on svm-a2")
            time.sleep(0.5)
        path = os.path.join(self.lab.directory, "fleet-consumers.json")
        status = self.lab.ansible_playbook("playbooks/fleet_status.yml", "-e", "report=%s" % path,
                                           extra_env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        self.assertEqual(status.returncode, 0, status.stdout[-4000:])
        with open(path) as f:
            fleet = json.load(f)
        lagging = [(c["host"], c["slot"], c["consumer"], c["serial"]) for c in fleet["consumersLagging"]]
        self.assertEqual(lagging, [("svm-a2", "server", "protection-server", active)], json.dumps(fleet, indent=1))
        by_host = {entry["host"]: entry for entry in fleet["svms"]}
        self.assertIn(by_host["svm-a2"]["state"], ("lagging", "expired", "alert"))
        self.assertIn("CONSUMERS LAGGING", status.stdout)
        self.assertRegex(status.stdout, r"svm-a2\s+server\s+protection-server\s+%s" % re.escape(active))
        # It confirms: nothing lags any more.
        svm.sh("agentctl confirm --consumer protection-server server %s" % active)
        self.lab.ansible_playbook("playbooks/fleet_status.yml", "-e", "report=%s" % path)
        with open(path) as f:
            self.assertEqual(json.load(f)["consumersLagging"], [])

    def test_15_a_blocklist_over_the_fleet_and_the_keys_it_blocks(self):
        """Rules B1-B3 over the fleet: one list (seq 2) blocks svm-b1's active key and svm-a2's
        reserve, blocks nothing on svm-a1, and is refused by svm-b2, which already keeps the
        issuer's newer list (seq 3); check mode first changes nothing. Then the fleet status
        puts svm-b1 first, with its key under KEYS BLOCKED and the end of its grace."""
        since = "2026-11-30T12:00:00Z"
        self.issue("blocked-active", "KS-BA", "+60d")
        self.issue("blocked-reserve", "KS-BR", "+150d")  # after svm-a2's active KS-U (120 d)
        b1, a2, b2 = (self.lab.svm(name) for name in ("svm-b1", "svm-a2", "svm-b2"))
        # The role sets svm-b1's grace ([blocking] grace, rule B2) to 9 days.
        result = self.playbook(
            "playbooks/install.yml", "-e", "license_agent_deb=%s" % self.package,
            "-e", json.dumps({"license_agent_blocking_grace": "9d"}), "--limit", "svm-b1")
        self.assertEqual(result.returncode, 0, result.stdout[-3000:])
        self.assertIn('[blocking]\ngrace = "9d"', b1.sh("cat /etc/license-agent/agent.toml").stdout)
        with open(self.key_files["blocked-active"]) as f:
            b1.sh("agentctl add-key -", input=f.read())
        with open(self.key_files["blocked-reserve"]) as f:
            a2.sh("agentctl add-key --reserve -", input=f.read())

        def blocklist(seq):
            path = os.path.join(self.keys, "blocklist-%d.jws" % seq)
            with open(path, "w") as f:
                f.write(keytool("blocklist", "--signer", self.signer, "--seq", str(seq), "--since", since,
                                "--block", "KS-BA:refunded order", "--block", "KS-BR:leaked") + "\n")
            return path

        listed, newer = blocklist(2), blocklist(3)
        with open(newer) as f:
            self.assertIn("Blocklist 3 of fleet-issuer kept", b2.sh("agentctl add-blocklist -", input=f.read()).stdout)
        path = os.path.join(self.lab.directory, "blocklist.json")
        args = ("playbooks/blocklist.yml", "-e", "blocklist_file=%s" % listed, "-e", "report=%s" % path)

        # Check mode: what the list would block, read on the controller against each SVM's keys.
        before = {name: self.state(name) for name in SVMS}
        self.playbook(*(args + ("--check", "--limit", "!svm-down")))
        with open(path) as f:
            checked = json.load(f)
        self.assertTrue(checked["checkMode"])
        self.assertEqual(
            {svm["host"]: (svm["result"], [(b["serial"], b["role"], b["dropped"]) for b in svm["blocks"]])
             for svm in checked["svms"]},
            {"svm-a1": ("would-apply", []), "svm-a2": ("would-apply", [("KS-BR", "reserve", True)]),
             "svm-b1": ("would-apply", [("KS-BA", "active", False)]), "svm-b2": ("would-apply", [])})
        for name in SVMS:
            self.assertEqual(self.state(name), before[name], "check mode changed %s's state.json" % name)

        # The list given: the whole fleet's report, and the table a row a line.
        result = self.lab.ansible_playbook(*args, extra_env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        self.assertEqual(result.returncode, 2, result.stdout[-6000:] + result.stderr[-3000:])
        with open(path) as f:
            report = json.load(f)
        # (agentctl status exits 1: the key ends at its grace's end, within 30 days, and nothing
        # takes over.)
        held = json.loads(b1.sh("agentctl status --json", check=False).stdout)
        server = next(s for s in held["slots"] if s["slot"] == "server")
        block = server["activeBlocked"]
        grace = block["graceEndsAt"]
        # B2: the grace (the role's 9 days) from when the agent learned of it.
        self.assertAlmostEqual(fleetlab_instant(grace) - fleetlab_instant(block["learnedAt"]), 9 * 86400, delta=0.001)
        self.assertEqual(
            list(report), ["task", "issuer", "sequence", "entries", "startedAt", "finishedAt", "svms", "summary"])
        self.assertEqual((report["task"], report["issuer"], report["sequence"], report["entries"]),
                         ("blocklist", "fleet-issuer", 2, 2))
        by_host = {svm["host"]: svm for svm in report["svms"]}
        self.assertEqual(by_host["svm-a1"], {"host": "svm-a1", "result": "applied", "blocks": []})
        self.assertEqual(by_host["svm-a2"], {"host": "svm-a2", "result": "applied", "blocks": [
            {"slot": "server", "role": "reserve", "pending": False, "serial": "KS-BR", "since": since,
             "reason": "leaked", "dropped": True}]})
        self.assertEqual(by_host["svm-b1"], {"host": "svm-b1", "result": "applied", "blocks": [
            {"slot": "server", "role": "active", "pending": False, "serial": "KS-BA", "since": since,
             "reason": "refunded order", "dropped": False, "graceEndsAt": grace}]})
        refused = by_host["svm-b2"]
        self.assertEqual((refused["result"], refused["rule"], refused["code"]), ("refused", "B1", "blocklist_rollback"))
        self.assertIn("not newer than the one kept (3)", refused["message"])
        self.assertEqual(by_host["svm-down"]["result"], "unreachable")
        self.assertEqual(report["summary"], {"applied": 3, "unchanged": 0, "refused": 1, "unreachable": 1, "failed": 0})
        self.assertRegex(result.stdout, r"svm-b1\s+applied\s+server\s+active KS-BA\s+%s\s+grace ends %s\s+refunded order"
                         % (since, re.escape(grace)))
        self.assertRegex(result.stdout, r"svm-a2\s+applied\s+server\s+reserve KS-BR\s+%s\s+removed\s+leaked" % since)
        self.assertRegex(result.stdout, r"svm-b2\s+refused\s+-\s+-\s+-\s+-\s+B1 blocklist_rollback: ")
        self.assertIn("2 keys blocked on 2 SVMs: 1 active (the first grace ends %s), 1 reserve removed" % grace,
                      result.stdout)
        # On the SVMs: the reserve is gone (B3), the active key works on, KEY_BLOCKED logged.
        self.assertIsNone(json.loads(a2.sh("agentctl status --json", check=False).stdout)["slots"][0].get("reserve"))
        self.assertEqual((server["status"], server["active"]["serial"]), ("active", "KS-BA"))
        self.assertIn("KS-BA", b1.sh("journalctl -o cat --no-pager MESSAGE_ID=e55a64d5379b41d8ba3a6e6c859241a8").stdout)
        # Given again: unchanged, nothing changed, the block as it was.
        again = self.playbook(*(args + ("--limit", "svm-b1")))
        self.assertEqual(self.recap(again.stdout)["svm-b1"]["changed"], 0, again.stdout)
        with open(path) as f:
            self.assertEqual(json.load(f)["svms"], [dict(by_host["svm-b1"], result="unchanged")])

        # The fleet status: the SVM whose active key is blocked first, under KEYS BLOCKED.
        status_path = os.path.join(self.lab.directory, "fleet-blocked.json")
        status = self.lab.ansible_playbook("playbooks/fleet_status.yml", "-e", "report=%s" % status_path,
                                           extra_env={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        self.assertEqual(status.returncode, 0, status.stdout[-4000:])
        with open(status_path) as f:
            fleet = json.load(f)
        self.assertEqual([(svm["host"], svm["state"]) for svm in fleet["svms"]][:2],
                         [("svm-b1", "blocked"), ("svm-down", "unreachable")], json.dumps(fleet, indent=1))
        self.assertEqual(fleet["keysBlocked"], [
            {"host": "svm-b1", "slot": "server", "serial": "KS-BA", "since": since, "reason": "refunded order",
             "learnedAt": block["learnedAt"], "graceEndsAt": grace, "takeover": "none", "takeoverSerial": None,
             "takeoverFrom": None}])
        self.assertIn("KEYS BLOCKED", status.stdout)
        self.assertRegex(status.stdout, r"svm-b1\s+server\s+KS-BA\s+%s\s+%s\s+nothing takes over: LAPSES\s+"
                                        r"refunded order" % (since, re.escape(grace)))
        self.assertIn("; 1 key blocked on 1 SVM", status.stdout)


def fleetlab_instant(text):
    """An agent's RFC 3339 UTC instant in seconds since the epoch."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds + (float("0." + fraction) if fraction else 0.0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
