"""meta/runtime.yml through real ansible-playbook (local connection) against a fake agent on a
real Unix socket: the action group sets `socket` once for every module, and 0.1.0's name
`license_status` still runs, redirected to `license_status_info`."""

from __future__ import annotations

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


if __name__ == "__main__":
    unittest.main()
