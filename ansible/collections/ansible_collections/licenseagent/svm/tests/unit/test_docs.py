"""What Ansible users read: ansible-doc shows every module, filter and the role with their
documentation, examples and return values; ansible-galaxy builds the collection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import tempfile
import unittest

COLLECTION = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS_PATH = os.path.abspath(os.path.join(COLLECTION, "..", "..", ".."))
MODULES = ["license_key", "license_activation", "license_status_info", "license_blocklist"]
FILTERS = ["activation_report", "activation_table", "report_failed", "fleet_status", "fleet_table", "key_claim", "report_path",
           "fleet_usage", "usage_table", "blocklist_report", "blocklist_table"]


def ansible_doc(*args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_PATH, ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        ["ansible-doc", "--json"] + list(args), capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise AssertionError("ansible-doc %s: %s" % (" ".join(args), result.stderr))
    return json.loads(result.stdout)


class DocumentationTests(unittest.TestCase):
    def test_every_module_has_documentation_examples_and_return_values(self):
        docs = ansible_doc(*("licenseagent.svm." + m for m in MODULES))
        for module in MODULES:
            entry = docs["licenseagent.svm." + module]
            self.assertTrue(entry["doc"]["description"], module)
            self.assertIn("licenseagent.svm." + module, entry["examples"], module)
            self.assertIn("result" if module != "license_status_info" else "slots", entry["return"], module)
            for option in entry["doc"]["options"].values():
                self.assertTrue(option.get("description"), module)

    def test_the_code_option_is_marked_secret(self):
        entry = ansible_doc("licenseagent.svm.license_activation")["licenseagent.svm.license_activation"]
        self.assertIn("no_log", entry["doc"]["description"][1])

    def test_every_filter_and_the_role_are_documented(self):
        docs = ansible_doc("-t", "filter", *("licenseagent.svm." + f for f in FILTERS))
        for name in FILTERS:
            self.assertTrue(docs["licenseagent.svm." + name]["doc"]["short_description"], name)
        role = ansible_doc("-t", "role", "licenseagent.svm.license_agent")["licenseagent.svm.license_agent"]
        options = role["entry_points"]["main"]["options"]
        for option in ("license_agent_deb", "license_agent_apt_repository", "license_agent_apt_signing_key",
                       "license_agent_trusted_issuers_exclusive"):
            self.assertIn(option, options)
        # Every default the role has is documented, and every documented option has a default
        # or is the socket (the modules' own default).
        with open(os.path.join(COLLECTION, "roles", "license_agent", "defaults", "main.yml")) as f:
            defaults = set(re.findall(r"^(license_agent_\w+):", f.read(), re.M))
        self.assertEqual(defaults, set(options) - {"license_agent_socket"})

    def test_ansible_galaxy_builds_a_tarball_with_modules_role_and_playbooks(self):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                ["ansible-galaxy", "collection", "build", "--output-path", out, COLLECTION],
                check=True, capture_output=True, text=True,
            )
            with open(os.path.join(COLLECTION, "galaxy.yml")) as f:
                version = re.search(r"^version: *(\S+)$", f.read(), re.M).group(1)
            path = os.path.join(out, "licenseagent-svm-%s.tar.gz" % version)
            with tarfile.open(path) as tar:
                names = set(tar.getnames())
                manifest = json.load(tar.extractfile("MANIFEST.json"))
        for name in ("plugins/modules/license_key.py", "plugins/modules/license_status_info.py",
                     "plugins/module_utils/varlink.py", "roles/license_agent/tasks/main.yml",
                     "roles/license_agent/templates/license-agent.sources.j2", "playbooks/activation_task.yml",
                     "playbooks/blocklist.yml", "plugins/modules/license_blocklist.py",
                     "meta/runtime.yml", "LICENSE", "CHANGELOG.md", "changelogs/changelog.yaml", "MANIFEST.json"):
            self.assertIn(name, names)
        # Nothing generated: no report, no bytecode, no test output, no changelog cache.
        generated = [n for n in names if "__pycache__" in n or n.startswith("tests/output") or n.endswith(".json")
                     and n not in ("MANIFEST.json", "FILES.json") or n.endswith(".plugin-cache.yaml")]
        self.assertEqual(generated, [])
        info = manifest["collection_info"]
        self.assertEqual(info["license"], ["GPL-3.0-or-later"])
        for field in ("documentation", "homepage", "issues", "repository"):
            self.assertTrue(info[field].startswith("https://"), field)


if __name__ == "__main__":
    unittest.main()
