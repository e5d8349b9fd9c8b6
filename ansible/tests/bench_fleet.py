"""Benchmark: the activation task and the fleet usage playbook over fleets of booted SVMs.

    python3 ansible/tests/bench_fleet.py [--sizes 5,10,20] [--json]

For each fleet size: boots the SVMs, installs the .deb with the collection's role, adds an
active key everywhere, then times the activation task (a reserve key on every SVM, removed
again after each run) with forks 5 and forks 20, each with pipelining on (the shipped
ansible.cfg) and off, every SSH connection new (as when an operator runs the task once);
then once more with forks 20 and pipelining over the SSH connections the previous run left
open (ControlPersist). Then every SVM but one reports its usage and the fleet usage
playbook (which only reads) is timed the same ways with pipelining. Prints wall time and
per-SVM cost; figures, not assertions. Needs root (as the fleet tests); SVMs come from
fleetlab.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleetlab  # noqa: E402
from fleetlab import keytool  # noqa: E402



def make_keys(directory):
    keytool("keygen", "--kid", "bench-issuer", "--out", directory)
    paths = {}
    for name, serial, expires in (("active", "B-1", "+90d"), ("reserve", "B-2", "+180d")):
        text = keytool(
            "issue", "--signer", os.path.join(directory, "bench-issuer.private.jwk"), "--serial", serial,
            "--edition", "standard", "--scheme", "vm-count", "--os-type", "server", "--license-type",
            "commercial", "--units", "10", "--not-before=-1d", "--expires=" + expires,
        )
        paths[name] = os.path.join(directory, name + ".jws")
        with open(paths[name], "w") as f:
            f.write(text + "\n")
    return paths


def timed(lab, *args, env=None, cold=True):
    env = dict(env or {})
    if cold:
        # A control path folder of its own: every SSH connection of this run is new.
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = tempfile.mkdtemp(prefix="cp-", dir=lab.directory)
    start = time.monotonic()
    result = lab.ansible_playbook(*args, extra_env=env)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError("ansible-playbook %s exited %d\n%s" % (" ".join(args), result.returncode, result.stdout[-4000:]))
    return elapsed


def series(lab, playbook, args, runs, common, after=None):
    """Times `playbooks/PLAYBOOK.yml ARGS` once per (forks, pipelining, new connections) of
    `runs`, calling `after` after each; the run before the last only opens the connections
    the last one reuses, and is not reported."""
    rows = []
    warm_dir = tempfile.mkdtemp(prefix="cp-warm-", dir=lab.directory)
    for index, (forks, pipelining, cold) in enumerate(runs):
        env = {"ANSIBLE_PIPELINING": "1" if pipelining else "0"}
        if not cold:
            env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = warm_dir
        elapsed = timed(lab, "playbooks/%s.yml" % playbook, *args, "-f", str(forks), env=env, cold=cold)
        if after is not None:
            after()
        if index == len(runs) - 2:
            continue
        rows.append(dict(common, playbook=playbook, forks=forks, pipelining=pipelining,
                         connections="new" if cold else "reused", seconds=round(elapsed, 2),
                         perSvmSeconds=round(elapsed / common["svms"], 3)))
    return rows


def bench(size, keys):
    lab = fleetlab.FleetLab(["svm-%02d" % (i + 1) for i in range(size)])
    rows = []
    try:
        start = time.monotonic()
        lab.up(timeout=600)
        boot = time.monotonic() - start
        install = timed(
            lab, "playbooks/install.yml", "-e", "license_agent_deb=%s" % fleetlab.built_package(),
            "-e", json.dumps({"license_agent_trusted_issuers": [keys["jwk"]]}), "-f", "20",
        )
        report = ["-e", "report=%s" % os.path.join(lab.directory, "activation.json")]  # not in the checkout
        timed(lab, "playbooks/activation_task.yml", "-e", "key_file=%s" % keys["active"], *report, "-f", "20")

        def remove_reserve():
            # A reserve added, then removed again, so that every run does the same work.
            removed = lab.ansible("all", "-m", "licenseagent.svm.license_key", "-a", "slot=server state=absent", "-f", "20")
            if removed.returncode != 0:
                raise RuntimeError(removed.stdout[-2000:])

        common = {"svms": size, "bootSeconds": round(boot, 1), "installSeconds": round(install, 1)}
        rows += series(
            lab, "activation_task", ["-e", "key_file=%s" % keys["reserve"], "-e", "reserve=true"] + report,
            [(5, True, True), (5, False, True), (20, True, True), (20, False, True), (20, True, False), (20, True, False)],
            common, after=remove_reserve)
        # The fleet usage playbook (rule U4): every SVM but the last reports its usage, then the
        # playbook reads every status and writes the report and the table. It changes nothing,
        # so every run does the same work.
        reported = lab.ansible("all:!svm-%02d" % size, "-m", "ansible.builtin.command",
                               "-a", "agentctl report-usage server 7", "-f", "20")
        if reported.returncode != 0:
            raise RuntimeError(reported.stdout[-2000:])
        rows += series(
            lab, "fleet_usage", ["-e", "report=%s" % os.path.join(lab.directory, "usage.json")],
            [(5, True, True), (20, True, True), (20, True, False), (20, True, False)], common)
    finally:
        lab.down()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = fleetlab.unavailable_reason()
    if reason:
        print("bench_fleet: " + reason, file=sys.stderr)
        return 1
    directory = tempfile.mkdtemp(prefix="fleet-bench-")
    keys = make_keys(directory)
    keys["jwk"] = os.path.join(directory, "bench-issuer.jwk")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows += bench(size, keys)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("%-16s %5s %6s %11s %12s %9s %11s %8s %10s" % ("playbook", "SVMs", "forks", "pipelining", "connections",
                                                       "task s", "per SVM s", "boot s", "install s"))
    for r in rows:
        print("%-16s %5d %6d %11s %12s %9.2f %11.3f %8.1f %10.1f" % (
            r["playbook"], r["svms"], r["forks"], "on" if r["pipelining"] else "off", r["connections"], r["seconds"],
            r["perSvmSeconds"], r["bootSeconds"], r["installSeconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
