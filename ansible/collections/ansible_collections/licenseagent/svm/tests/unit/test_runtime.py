"""meta/runtime.yml through real ansible-playbook (local connection) against a fake agent on a
real Unix socket: the action group sets `socket` once for every module, 0.1.0's name
`license_status` still runs, redirected to `license_status_info`, and a fleet playbook (the
blocklist's) reports from what the module registered."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_agent  # noqa: E402

COLLECTION = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS_PATH = os.path.abspath(os.path.join(COLLECTION, "..", "..", ".."))


class RuntimeMetadataTests(unittest.TestCase):
    def setUp(self):
        self.agent = fake_agent.FakeAgent({"GetStatus": fake_agent.status([])})
        self.addCleanup(self.agent.close)
        self.folder = tempfile.TemporaryDirectory()
        self.addCleanup(self.folder.cleanup)

    def playbook(self, text):
        path = os.path.join(self.folder.name, "play.yml")
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        env = dict(
            os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1",
            ANSIBLE_CONFIG=os.path.join(self.folder.name, "none.cfg"), ANSIBLE_LOCALHOST_WARNING="0",
            ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        )
        result = subprocess.run(
            ["ansible-playbook", "-i", "localhost,", "-c", "local", path, "-e", "socket=%s" % self.agent.path],
            capture_output=True, text=True, env=env, cwd=self.folder.name, timeout=120, check=False,
        )
        return result

    def test_the_action_group_sets_the_socket_and_the_old_name_is_redirected(self):
        result = self.playbook("""
            - hosts: localhost
              gather_facts: false
              module_defaults:
                group/licenseagent.svm.agent:
                  socket: "{{ socket }}"
              tasks:
                - licenseagent.svm.license_status_info:
                  register: new_name
                - licenseagent.svm.license_status:
                  register: old_name
                - ansible.builtin.assert:
                    that:
                      - new_name.slots == []
                      - old_name.slots == []
            """)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
        self.assertEqual([method for method, _parameters in self.agent.calls], ["GetStatus", "GetStatus"])

    def test_the_socket_the_group_names_is_the_one_tried(self):
        result = self.playbook("""
            - hosts: localhost
              gather_facts: false
              module_defaults:
                group/licenseagent.svm.agent:
                  socket: "{{ socket }}.absent"
              tasks:
                - licenseagent.svm.license_status_info:
            """)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(self.agent.path + ".absent", result.stdout)
        self.assertEqual(self.agent.calls, [])

    def test_a_report_goes_where_the_controller_says_never_where_a_host_says(self):
        # The host's own variables (an SVM's facts become its variables) name another path:
        # the report goes to the folder ansible-playbook runs in, or to -e report=...
        evil = os.path.join(self.folder.name, "chosen-by-the-host.json")
        inventory = os.path.join(self.folder.name, "inventory.ini")
        with open(inventory, "w") as f:
            f.write("svm ansible_connection=local ansible_python_interpreter=%s report=%s license_agent_socket=%s\n"
                    % (sys.executable, evil, self.agent.path))
        playbook = os.path.join(COLLECTION, "playbooks", "fleet_status.yml")
        env = dict(
            os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1",
            ANSIBLE_CONFIG=os.path.join(self.folder.name, "none.cfg"), ANSIBLE_LOCALHOST_WARNING="0",
        )
        for extra, expected in (([], os.path.join(self.folder.name, "fleet-status.json")),
                                (["-e", "report=given.json"], os.path.join(self.folder.name, "given.json"))):
            result = subprocess.run(
                ["ansible-playbook", "-i", inventory, playbook] + extra, capture_output=True, text=True,
                env=env, cwd=self.folder.name, timeout=120, check=False,
            )
            self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
            self.assertTrue(os.path.exists(expected), expected)
            self.assertFalse(os.path.exists(evil))

    def test_the_blocklist_playbook_reports_every_svm_and_fails_on_a_refusal(self):
        # The playbook as an operator runs it, against the fake agent: the list read on the
        # controller, the module through the action group's socket, the report and the table.
        def part(value):
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        listed = "%s.%s.c2ln" % (part({"alg": "EdDSA", "typ": "license-blocklist+jwt", "kid": "lab"}),
                                 part({"iss": "lab", "typ": "license-blocklist", "seq": 4, "iat": 0,
                                       "product": "svm-protection", "blocked": [
                                           {"serial": "KS-1", "since": 1798761600, "reason": "refunded"}]}))
        list_file = os.path.join(self.folder.name, "lab-0004.jws")
        with open(list_file, "w") as f:
            f.write(listed + "\n")
        block = {"slot": "server", "role": "active", "pending": False, "serial": "KS-1",
                 "since": "2027-01-01T00:00:00Z", "reason": "refunded", "dropped": False,
                 "graceEndsAt": "2027-01-09T09:00:00Z"}
        replies = [
            {"parameters": {"issuer": "lab", "sequence": 4, "entries": 1, "unchanged": False, "blocks": [block],
                            "message": "kept"}},
            {"error": "io.licenseagent.Agent.RuleViolation",
             "parameters": {"rule": "B1", "code": "blocklist_rollback", "message": "not newer than 5"}},
        ]
        agent = fake_agent.FakeAgent({"AddBlocklist": lambda _parameters: replies.pop(0)})
        self.addCleanup(agent.close)
        inventory = os.path.join(self.folder.name, "inventory.ini")
        with open(inventory, "w") as f:
            f.write("svm ansible_connection=local ansible_python_interpreter=%s license_agent_socket=%s\n"
                    % (sys.executable, agent.path))
        env = dict(
            os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1",
            ANSIBLE_CONFIG=os.path.join(self.folder.name, "none.cfg"), ANSIBLE_LOCALHOST_WARNING="0",
        )
        playbook = os.path.join(COLLECTION, "playbooks", "blocklist.yml")
        for expected_rc, expected in ((0, {"host": "svm", "result": "applied", "blocks": [block]}),
                                      (2, {"host": "svm", "result": "refused", "rule": "B1",
                                           "code": "blocklist_rollback", "message": "not newer than 5"})):
            result = subprocess.run(
                ["ansible-playbook", "-i", inventory, playbook, "-e", "blocklist_file=%s" % list_file],
                capture_output=True, text=True, env=env, cwd=self.folder.name, timeout=120, check=False,
            )
            self.assertEqual(result.returncode, expected_rc, result.stdout[-3000:] + result.stderr[-3000:])
            with open(os.path.join(self.folder.name, "blocklist-report.json")) as f:
                report = json.load(f)
            self.assertEqual((report["task"], report["issuer"], report["sequence"], report["entries"]),
                             ("blocklist", "lab", 4, 1))
            self.assertEqual(report["svms"], [expected])
        self.assertEqual([method for method, _parameters in agent.calls], ["AddBlocklist", "AddBlocklist"])
        self.assertEqual(agent.calls[0][1], {"blocklist": listed})


if __name__ == "__main__":
    unittest.main()
