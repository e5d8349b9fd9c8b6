"""A fleet of SVMs for the Ansible tests and benchmark: Debian 12 containers booted with
systemd (systemd-nspawn on the package test's root, packaging/make-test-root), each with
its own network namespace and an OpenSSH server, on a bridge inside a network namespace
this lab makes. The controller (ansible-playbook) runs inside that namespace too, so every
packet stays among the lab's own addresses (10.231.0.0/24 inside the lab's namespace);
nothing is routed to or from the host's network.

    lab = FleetLab(["svm-a1", "svm-a2"], down=["svm-down"])
    lab.up()                       # boots, starts sshd, writes the inventory
    lab.ansible_playbook("playbooks/activation_task.yml", "-e", "key_file=...")
    lab.down()

Also a command: python3 fleetlab.py up N DIR / down DIR (for trying things by hand).
Needs root, systemd-nspawn, iproute2, OpenSSH's client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPOSITORY, "scripts", "lib"))
import safetree  # noqa: E402  (roots never used or removed with anything mounted under them)

ANSIBLE_DIR = os.path.join(REPOSITORY, "ansible")
SUBNET = "10.231.0"
# The debug build's programs (license-keytool, activation-server) the tests and bench use.
BIN = os.environ.get("LICENSE_AGENT_BIN_DIR") or os.path.join(REPOSITORY, ".build", "debug")


def run(args, check=True, input=None, timeout=120, env=None, cwd=None):
    result = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            "%s exited %d:\n%s%s" % (" ".join(args), result.returncode, result.stdout, result.stderr)
        )
    return result


def keytool(*args):
    """Runs license-keytool; returns what it printed."""
    return run([os.path.join(BIN, "license-keytool")] + list(args)).stdout.strip()


def unavailable_reason():
    """Why this machine cannot run the lab, or None."""
    if os.geteuid() != 0:
        return "the fleet lab needs root (network namespaces, systemd-nspawn)"
    for tool in ("/usr/bin/systemd-nspawn", "/usr/bin/ssh", "/usr/bin/ssh-keygen", "/usr/bin/nsenter"):
        if not os.access(tool, os.X_OK):
            return "%s is missing (scripts/ensure-deps installs what the tests need)" % tool
    if shutil.which("ip") is None:
        return "iproute2's ip is missing"
    if shutil.which("ansible-playbook") is None:
        return "ansible-playbook is missing (scripts/ensure-deps installs the pinned ansible-core)"
    return None


def test_root():
    made = run([os.path.join(REPOSITORY, "packaging", "make-test-root")], timeout=900)
    return made.stdout.strip()


def built_package():
    dist = os.path.join(REPOSITORY, "dist")
    names = sorted(n for n in os.listdir(dist) if n.startswith("license-agent_") and n.endswith("-1_amd64.deb"))
    if not names:
        raise RuntimeError("no dist/license-agent_*-1_amd64.deb: run packaging/build-deb (scripts/test does)")
    return os.path.join(dist, names[-1])


def own_cgroup_paths():
    """This process's cgroup folders in the hierarchies nspawn uses (as BootedContainer)."""
    unified = "/sys/fs/cgroup/unified" if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs") else "/sys/fs/cgroup"
    paths = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            path = "" if parts[2] == "/" else parts[2]
            if parts[1] == "name=systemd":
                paths.append("/sys/fs/cgroup/systemd" + path)
            elif parts[0] == "0" and parts[1] == "":
                paths.append(unified + path)
    return paths


def remove_cgroup(path):
    if not os.path.isdir(path):
        return
    dirs = [os.path.join(root, d) for root, ds, _ in os.walk(path) for d in ds]
    for d in sorted(dirs, key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def make_apt_repository(package, directory, key_out=None, impostor=None):
    """A flat apt repository in `directory` holding `package`, signed (InRelease) with a key
    made for it; returns (directory, the armoured public key's path). `key_out` names
    where the public key goes (default: beside the repository). `impostor` (a package name)
    adds an empty package of that name at version 99:9.9-1, which a repository trusted for
    license-agent only must never get installed."""
    os.makedirs(directory)
    shutil.copy(package, directory)
    if impostor:
        tree = os.path.join(directory + ".impostor", "DEBIAN")
        os.makedirs(tree)
        with open(os.path.join(tree, "control"), "w") as f:
            f.write("Package: %s\nVersion: 99:9.9-1\nArchitecture: all\nMaintainer: fleetlab <fleetlab@example.net>\n"
                    "Description: an impostor the repository must not provide\n" % impostor)
        run(["dpkg-deb", "--root-owner-group", "--build", os.path.dirname(tree),
             os.path.join(directory, "%s_9.9-1_all.deb" % impostor)])
        safetree.remove_tree(os.path.dirname(tree))
    # dpkg-scanpackages in the repository's folder: the file names relative to it.
    packages = run(["sh", "-c", "cd \"$1\" && dpkg-scanpackages --multiversion .", "sh", directory]).stdout
    with open(os.path.join(directory, "Packages"), "w") as f:
        f.write(packages)
    data = packages.encode()
    release = (
        "Origin: fleetlab\nLabel: fleetlab\nSuite: ./\nDate: %s\nSHA256:\n %s %d Packages\n"
        % (time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()), hashlib.sha256(data).hexdigest(), len(data))
    )
    with open(os.path.join(directory, "Release"), "w") as f:
        f.write(release)
    home = tempfile.mkdtemp(prefix="fleetlab-gpg-")
    try:
        gpg = ["gpg", "--homedir", home, "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        run(gpg + ["--quick-gen-key", "fleetlab apt repository", "ed25519", "sign", "never"])
        run(gpg + ["--clearsign", "--output", os.path.join(directory, "InRelease"), os.path.join(directory, "Release")])
        key_out = key_out or os.path.join(os.path.dirname(directory), os.path.basename(directory) + ".asc")
        with open(key_out, "w") as f:
            f.write(run(gpg + ["--armor", "--export"]).stdout)
    finally:
        run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
        safetree.remove_tree(home)
    return directory, key_out


class SVM:
    """One container: its name, address, nspawn process and PID 1 on the host."""

    def __init__(self, name, address, lab):
        self.name = name
        self.address = address
        self.lab = lab
        self.process = None
        self.leader = None
        self.cgroups = [p + "/" + lab.tag + "-" + name for p in own_cgroup_paths()]

    def start(self, root, binds):
        script = (
            "set -e\n"
            + "".join('mkdir "%s"\necho $$ >"%s/cgroup.procs"\n' % (c, c) for c in self.cgroups)
            + "exec nsenter --net=/run/netns/%s /usr/bin/systemd-nspawn -q -D %s --boot --volatile=overlay "
            "--register=no --keep-unit --console=passive --machine=%s --network-bridge=br0 %s\n"
            % (self.lab.netns, root, self.name, " ".join("--bind-ro=%s" % b for b in binds))
        )
        with open(os.path.join(self.lab.directory, self.name + ".nspawn.log"), "w") as log:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )

    def find_leader(self, deadline):
        while time.time() < deadline and self.process.poll() is None:
            pid = self.process.pid
            try:
                with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                children = []
            for child in children:
                try:
                    with open("/proc/%d/comm" % child) as f:
                        if f.read() == "systemd\n":
                            self.leader = child
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("%s did not boot (see %s.nspawn.log)" % (self.name, self.name))

    def sh(self, script, input=None, check=True, timeout=120):
        """Runs a shell script as root inside the container (all its namespaces)."""
        return run(
            [
                "nsenter", "--target", str(self.leader), "--all", "/usr/bin/env", "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "/bin/sh", "-c", script,
            ],
            input=input, check=check, timeout=timeout,
        )

    def net(self, *args, check=True):
        """Runs a host command in the container's network namespace only."""
        return run(["nsenter", "--target", str(self.leader), "--net"] + list(args), check=check)

    def wait_running(self, deadline):
        state = ""
        while time.time() < deadline:
            state = self.sh("systemctl is-system-running --wait", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.25)
        raise RuntimeError("%s: systemd did not come up: %s" % (self.name, state))

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nspawn: a clean poweroff
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # nspawn killed leaves its machine running: end the machine's init, by its id (the
        # kernel then ends every process of its PID namespace), and wait until it is gone.
        if self.leader is not None and self.owns(self.leader):
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.time() + 10
            while time.time() < deadline and self.owns(self.leader):
                time.sleep(0.05)
        for cgroup in self.cgroups:
            remove_cgroup(cgroup)

    def owns(self, pid):
        """Whether `pid` is still a process in this machine's cgroup (not a reused id)."""
        try:
            with open("/proc/%d/cgroup" % pid) as f:
                text = f.read()
        except OSError:
            return False
        tag = "/%s-%s" % (self.lab.tag, self.name)
        return any(tag + "\n" in line + "\n" or tag + "/" in line for line in text.splitlines())


class FleetLab:
    def __init__(self, names, down=(), directory=None, binds=()):
        self.tag = "lafleet-%d" % os.getpid()
        self.netns = self.tag
        self.directory = directory or tempfile.mkdtemp(prefix="fleetlab-")
        self.svms = [SVM(name, "%s.%d" % (SUBNET, 11 + i), self) for i, name in enumerate(names)]
        # Hosts in the inventory that never answer: an address of the lab's subnet with no
        # machine behind it.
        self.down_hosts = [(name, "%s.%d" % (SUBNET, 250 - i)) for i, name in enumerate(down)]
        self.binds = list(binds)
        self.root = None
        self.home = os.path.join(self.directory, "home")
        self.inventory = os.path.join(self.directory, "inventory.yml")
        self.groups = {}
        self.host_vars = {}

    def svm(self, name):
        return next(s for s in self.svms if s.name == name)

    def up(self, timeout=180):
        deadline = time.time() + timeout
        os.makedirs(self.home, exist_ok=True)
        root = test_root()
        # Every container overlays this root in a mount namespace of its own; one with a mount
        # under it (a chroot's /proc left behind) is refused, not booted.
        safetree.refuse_mounted(root, "boot containers on")
        self.root = root
        run(["ip", "netns", "add", self.netns])
        for command in (
            "ip link set lo up",
            "ip link add br0 type bridge",
            "ip addr add %s.1/24 dev br0" % SUBNET,
            "ip link set br0 up",
        ):
            run(["ip", "netns", "exec", self.netns] + command.split())
        key = os.path.join(self.directory, "id_ed25519")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetlab", "-f", key])
        with open(key + ".pub") as f:
            public_key = f.read()
        for svm in self.svms:
            svm.start(root, self.binds)
        for svm in self.svms:
            svm.find_leader(deadline)
            svm.net("ip", "addr", "add", svm.address + "/24", "dev", "host0")
            svm.net("ip", "link", "set", "host0", "up")
        for svm in self.svms:
            svm.wait_running(deadline)
            svm.sh(
                "umask 077 && mkdir -p /root/.ssh && cat >/root/.ssh/authorized_keys && systemctl start ssh",
                input=public_key,
            )
        # The machines share the root's host keys: known_hosts names each address with it.
        with open(os.path.join(root, "etc/ssh/ssh_host_ed25519_key.pub")) as f:
            host_key = " ".join(f.read().split()[:2])
        with open(os.path.join(self.directory, "known_hosts"), "w") as f:
            for svm in self.svms:
                f.write("%s %s\n" % (svm.address, host_key))
        self.write_inventory()
        return self

    def write_inventory(self):
        hosts = {}
        for svm in self.svms:
            hosts[svm.name] = {"ansible_host": svm.address}
        for name, address in self.down_hosts:
            hosts[name] = {"ansible_host": address}
        for name, variables in self.host_vars.items():
            hosts[name].update(variables)
        children = {}
        for group, members in self.groups.items():
            children[group] = {"hosts": {m: {} for m in members}}
        inventory = {
            "all": {
                "hosts": hosts,
                "children": children,
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": os.path.join(self.directory, "id_ed25519"),
                    "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o ConnectTimeout=5"
                    % os.path.join(self.directory, "known_hosts"),
                },
            }
        }
        with open(self.inventory, "w") as f:
            json.dump(inventory, f, indent=2)  # JSON is YAML

    def environment(self):
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
        }
        return env

    def ansible_playbook(self, *args, timeout=600, extra_env=None, cwd=ANSIBLE_DIR):
        """Runs ansible-playbook inside the lab's network, by default from ansible/ (its
        ansible.cfg and the checkout's collection)."""
        env = self.environment()
        env.update(extra_env or {})
        return subprocess.run(
            ["nsenter", "--net=/run/netns/" + self.netns, "ansible-playbook", "-i", self.inventory] + list(args),
            cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
        )

    def ansible(self, *args, timeout=300):
        return subprocess.run(
            ["nsenter", "--net=/run/netns/" + self.netns, "ansible", "-i", self.inventory] + list(args),
            cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=timeout, env=self.environment(),
        )

    def serve(self, directory):
        """Serves `directory` over HTTP on the lab bridge's address (the SVMs reach it, nothing
        outside the lab's namespace does); returns (the server process, its URL)."""
        process = subprocess.Popen(
            ["nsenter", "--net=/run/netns/" + self.netns, sys.executable, "-u", "-m", "http.server",
             "--bind", SUBNET + ".1", "--directory", directory, "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = process.stdout.readline()
        match = re.search(r" port (\d+) ", line)
        if not match:
            process.kill()
            process.wait()
            raise RuntimeError("http.server did not start: %r" % line)
        return process, "http://%s.1:%s/" % (SUBNET, match.group(1))

    def down(self):
        for svm in self.svms:
            svm.stop()
        if os.path.exists("/run/netns/" + self.netns):
            run(["ip", "netns", "del", self.netns])
        # nspawn mounts in the containers' own namespaces: nothing may be left on the host.
        if self.root:
            safetree.refuse_mounted(self.root, "leave behind")
        safetree.refuse_mounted(self.directory, "leave behind")
        if os.path.exists("/run/netns/" + self.netns):
            raise RuntimeError("the lab's network namespace /run/netns/%s is still there" % self.netns)
        if os.environ.get("FLEETLAB_KEEP") is None:
            safetree.remove_tree(self.directory)


def main(argv):
    if len(argv) >= 3 and argv[0] == "up":
        names = ["svm-%02d" % (i + 1) for i in range(int(argv[1]))]
        lab = FleetLab(names, directory=argv[2])
        os.makedirs(argv[2], exist_ok=True)
        lab.up()
        print("inventory: %s; run ansible with: ip netns exec %s ..." % (lab.inventory, lab.netns))
        print("stop with Ctrl-C")
        try:
            signal.pause()
        finally:
            lab.down()
        return 0
    print("usage: fleetlab.py up N DIR", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
