# Stands in for ansible-test's pip bootstrap script (get-pip.py from ci-files.testing.ansible.com,
# which this machine cannot reach): installs pip with Python's own ensurepip, then the version
# ansible-test asks for from PyPI. scripts/test-ansible copies it into ansible-test's cache.
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "pip==24.2"])
