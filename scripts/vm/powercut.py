"""Power cuts replayed from a dm-log-writes log (scripts/vm-proof --power-cuts).

The guest's story (scripts/vm/guest-powercut) ran with the agent's state directory and the
persistent journal on one ext4 file system over the kernel's `dm-log-writes` target: every
write that reached the device is in the log, in the order it became durable (the kernel
logs a write only when the flush after it completes; a FUA write when it completes), with
the flushes and the marks the guest inserted (each event the journal showed, each key
agentctl said it added) in place. This module reads that log (the kernel's format,
drivers/md/dm-log-writes.c: a super block, then per entry one sector of header and the data
written) and makes crash states from it:

- at every flush point (what the device holds after a flush or FUA write completed);
- between flush points: the writes the next flush made durable, cut at a random place, each
  write before the cut kept or dropped at random (a disk's cache keeps any subset of what
  it was not told to flush), and a kept write of several blocks torn at a block (1 KiB)
  boundary one time in four.

Each state is copied, mounted on the host (ext4 replays its own journal, as at boot), and the
real agent is started on it (its state directory there, the replayed journal as the journal
it reads back, the host's journald for what it says now). Checked on every state: the agent
starts (the state loads, or is recovered from its last good copy with STATE_RECOVERED);
nothing announced or acknowledged before the cut is lost (a promotion, a key obtained by
renewal, a key agentctl added); nothing is announced twice (a transition already in the
replayed journal is not sent again; no key is promoted twice).
"""
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import safetree  # noqa: E402  (checked mounts and unmounts, deletions on one file system)

FLUSH, FUA, DISCARD, MARK = 1, 2, 4, 8
MAGIC = 0x6A736677736872
KEY_PROMOTED = "dd8dbaf0eb17480089e04f5c8d85f861"
ACTIVATION_RENEWED = "883efd4f38fd4f73b2b16fd50427571b"
LICENSE_EXPIRED = "31051348bd3a4e6eb3bd5f3df5f85db2"
STATE_RECOVERED = "e3fb7954deee4da0a7c9be130eaa43af"
TEAR = 1024  # the file system's block: a multi-block write may reach the disk in part


class WriteLog:
    """The entries of a dm-log-writes log device (an image file)."""

    def __init__(self, path):
        self.file = open(path, "rb")
        magic, version, count, self.sectorsize = struct.unpack("<QQQI", self.file.read(28))
        if magic != MAGIC or version != 1:
            raise ValueError(f"{path}: not a dm-log-writes log (magic {magic:#x}, version {version})")
        self.entries = []
        offset = self.sectorsize
        for index in range(count):
            self.file.seek(offset)
            header = self.file.read(self.sectorsize)
            sector, sectors, flags, length = struct.unpack("<QQQQ", header[:32])
            entry = {"index": index, "sector": sector, "sectors": sectors, "flags": flags, "data": offset + self.sectorsize}
            if flags & MARK:
                entry["mark"] = header[32:32 + length].decode(errors="replace")
            self.entries.append(entry)
            offset += self.sectorsize
            if not flags & (DISCARD | MARK):
                offset += sectors * self.sectorsize

    def apply(self, image, entry, keep_bytes=None):
        """Writes one entry onto the image (a discard as zeros); `keep_bytes` tears it."""
        if entry["flags"] & MARK or entry["sectors"] == 0:
            return
        size = entry["sectors"] * self.sectorsize
        if entry["flags"] & DISCARD:
            data = bytes(size)
        else:
            self.file.seek(entry["data"])
            data = self.file.read(size)
        if keep_bytes is not None:
            data = data[:keep_bytes]
        image.seek(entry["sector"] * self.sectorsize)
        image.write(data)


def crash_states(log, count, rng):
    """Up to `count` crash states after the story's start (the mark `story`): every flush
    point when there are few enough, else an even spread of them, and as many states
    between flush points. A state is (flush index it builds on, kept entries of the next
    segment as (index, bytes kept or None), cut index: the marks before it were said)."""
    start = next(e["index"] for e in log.entries if e.get("mark") == "story")
    end = next((e["index"] for e in log.entries if e.get("mark") == "end"), len(log.entries) - 1)
    flushes = [e["index"] for e in log.entries[start:end + 1] if e["flags"] & (FLUSH | FUA)]
    points = [start] + flushes
    at_flush = max(1, (count + 1) // 2)
    if len(points) > at_flush:
        step = len(points) / at_flush
        chosen = sorted({points[int(i * step)] for i in range(at_flush)} | {points[-1]})
    else:
        chosen = points
    states = [(p, [], p + 1) for p in chosen]
    segments = [(a, b) for a, b in zip(points, points[1:]) if b - a > 1]
    while len(states) < count and segments:
        a, b = rng.choice(segments)
        cut = rng.randint(a + 1, b)  # the entries a+1 .. cut-1 may have reached the disk
        kept = []
        for entry in log.entries[a + 1:cut]:
            if entry["flags"] & MARK:
                continue
            if entry["flags"] & FUA or rng.random() < 0.5:
                size = entry["sectors"] * log.sectorsize
                torn = None
                if not entry["flags"] & FUA and size >= 2 * TEAR and rng.random() < 0.25:
                    torn = rng.randrange(1, size // TEAR) * TEAR
                kept.append((entry["index"], torn))
        states.append((a, kept, cut))
    return sorted(states, key=lambda s: (s[0], s[2]))


class HostAgent:
    """Starts the host's build of the agent on a mounted crash state: in a mount namespace of
    its own where the replayed journal is the one the agent reads back (its machine id
    too), sending to the host's journald; as the unit runs it, unprivileged: the state
    directory's owner, with the group of the journal files as supplementary group (the
    unit's SupplementaryGroups=systemd-journal)."""

    def __init__(self, work, agent, agentctl, issuer, machine_id):
        # A folder every user may traverse (the agent does not run as root here), outside
        # the harness's own, which is private (it holds the issuer's private key).
        work = tempfile.mkdtemp(prefix="powercut-agent.")
        os.chmod(work, 0o755)
        self.work, self.agent, self.agentctl, self.machine_id = work, agent, agentctl, machine_id
        self.config = work + "/host-config"
        os.makedirs(self.config + "/trusted-issuers", exist_ok=True)
        shutil.copy(issuer, self.config + "/trusted-issuers/vm.jwk")
        os.chmod(self.config + "/trusted-issuers/vm.jwk", 0o644)
        os.makedirs(work + "/metrics")
        os.chmod(work + "/metrics", 0o777)
        client = self.config + "/no-server"
        with open(client, "w") as f:
            f.write("#!/bin/sh\ncat >/dev/null\n"
                    "echo '{\"error\": \"network\", \"message\": \"no activation server in the replay check\"}'\nexit 75\n")
        os.chmod(client, 0o755)
        with open(self.config + "/agent.toml", "w") as f:
            f.write(f'[activation]\nclient = "exec"\ncommand = ["{client}"]\nrenew-before = "0s"\n'
                    f'[metrics]\ntextfile = "{work}/metrics/license-agent.prom"\n')
        with open(work + "/machine-id", "w") as f:
            f.write(machine_id + "\n")
        self.mountpoint = work + "/mnt"
        os.makedirs(self.mountpoint)

    def run(self, mounted):
        owner = os.stat(mounted + "/state")
        journal_files = glob.glob(mounted + "/journal/*/*.journal*")
        journal_group = os.stat(journal_files[0]).st_gid if journal_files else owner.st_gid
        runtime = tempfile.mkdtemp(prefix="rt.", dir=self.work)
        os.chown(runtime, owner.st_uid, owner.st_gid)
        notify_path = runtime + "/notify"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        os.chmod(notify_path, 0o666)
        notify.settimeout(0.2)
        empty = tempfile.mkdtemp(prefix="empty.", dir=self.work)
        script = (f"mount --bind {mounted}/journal /var/log/journal && mount --bind {empty} /run/log/journal"
                  f" && mount --bind {self.work}/machine-id /etc/machine-id"
                  f" && exec setpriv --reuid={owner.st_uid} --regid={owner.st_gid} --groups={journal_group}"
                  f" -- {self.agent}")
        env = dict(os.environ, STATE_DIRECTORY=mounted + "/state", RUNTIME_DIRECTORY=runtime,
                   CONFIGURATION_DIRECTORY=self.config, NOTIFY_SOCKET=notify_path)
        since = time.time()
        process = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                   env=env, stdout=subprocess.DEVNULL, stderr=open(runtime + "/stderr", "w"))
        ready = False
        deadline = time.time() + 20
        while time.time() < deadline and process.poll() is None and not ready:
            try:
                ready = b"READY=1" in notify.recv(4096)
            except socket.timeout:
                pass
        status = {}
        if ready:
            out = subprocess.run([self.agentctl, "status", "--json", "--socket", runtime + "/io.licenseagent.Agent"],
                                 capture_output=True, text=True)
            try:
                status = json.loads(out.stdout)
            except ValueError:
                pass
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        stderr = open(runtime + "/stderr").read()
        notify.close()
        # Both were bound only in the agent's own mount namespace, gone with it.
        safetree.remove_tree(runtime)
        safetree.remove_tree(empty)
        subprocess.run(["journalctl", "--sync"], capture_output=True)
        said = journal(["_PID=" + str(process.pid), "SYSLOG_IDENTIFIER=license-agent", f"--since=@{since - 1:.0f}"])
        return {"ready": ready, "exit": code, "status": status, "said": said, "stderr": stderr[-2000:]}


def journal(arguments):
    out = subprocess.run(["journalctl", "--no-pager", "-q", "-o", "json", *arguments], capture_output=True, text=True)
    entries = []
    for line in out.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    return entries


def index(serial):
    try:
        return int(serial[1:].split("-")[0])
    except (ValueError, IndexError):
        return -1


def judge(marks, replayed, run):
    """The invariants on one crash state: `marks` the guest's marks before the cut,
    `replayed` the license-agent entries of the replayed journal, `run` what the agent did."""
    violations, notes = [], []
    said = run["said"]
    if not run["ready"]:
        errors = " ".join(e.get("MESSAGE", "") for e in said if int(e.get("PRIORITY", 6)) <= 3)
        violations.append(f"the agent did not start on the state (exit {run['exit']}): {errors[-300:]} {run['stderr'][-300:]}")
        return violations, notes
    # Nothing announced twice: the replayed journal and what the agent says now (one
    # transition may hold one event of a kind per slot).
    seen = {}
    for e in replayed + said:
        if e.get("LICENSE_TRANSITION"):
            key = (e["LICENSE_TRANSITION"], e.get("MESSAGE_ID"), e.get("LICENSE_SLOT"), e.get("LICENSE_SERIAL"))
            seen[key] = seen.get(key, 0) + 1
    twice = sorted(k for k, v in seen.items() if v > 1)
    if twice:
        violations.append(f"announced twice: {twice}")
    promoted = [e.get("LICENSE_SERIAL") for e in replayed + said if e.get("MESSAGE_ID") == KEY_PROMOTED]
    if len(set(promoted)) != len(promoted):
        violations.append(f"a key promoted twice: {promoted}")
    # Announcements the guest saw (marks) that neither the replayed journal nor the agent
    # now has: the journal lost them (journald syncs entries below crit only every
    # SyncIntervalSec) and the agent did not send them again. The agent keeps what the
    # journal took and, after an unclean stop, sends again (LICENSE_REPLAYED=1) what the
    # journal no longer holds: a lost announcement is a violation.
    in_journal = {(e.get("LICENSE_TRANSITION"), e.get("MESSAGE_ID", "")[:8], e.get("LICENSE_SERIAL", ""))
                  for e in replayed + said}
    resent = [e for e in said if e.get("LICENSE_REPLAYED") == "1"]
    if resent:
        notes.append(f"sent again: {len(resent)}")
    # "event:<MESSAGE_ID's first 8>:<transition, itself with a colon>:<serial>"
    events = []
    for m in marks:
        if m.startswith("event:"):
            _, kind, rest = m.split(":", 2)
            transition, serial = rest.rsplit(":", 1)
            events.append((kind, transition, serial))
    lost = [f"{t}:{s}" for i, t, s in events if (t, i, s) not in in_journal]
    if lost:
        notes.append(f"seen live before the cut, in no journal after it: {lost}")
        violations.append(f"announced before the cut, lost by the journal and not sent again: {lost}")
    # Nothing said or acknowledged is lost: each slot's chain reaches at least the last key
    # announced (promoted, obtained by renewal) or added.
    status = run["status"]
    for slot, prefix in (("server", "K"), ("workstation", "W")):
        wanted = [s for i, _, s in events if s.startswith(prefix) and i in (KEY_PROMOTED[:8], ACTIVATION_RENEWED[:8])]
        wanted += [e.get("LICENSE_SERIAL", "") for e in replayed
                   if e.get("MESSAGE_ID") in (KEY_PROMOTED, ACTIVATION_RENEWED) and e.get("LICENSE_SERIAL", "").startswith(prefix)]
        wanted += [m.split(":")[1] for m in marks if m.startswith("added:" + prefix)]
        if not wanted:
            continue
        present = set()
        for s in status.get("slots", []):
            if s.get("slot") == slot:
                for role in ("active", "reserve", "pending", "expired"):
                    if s.get(role):
                        present.add(s[role].get("serial", ""))
        for e in said:
            if e.get("LICENSE_SLOT") == slot:
                # The keys it names: a reserve (or a renewed key) that had itself expired
                # by the time the agent started is named by LICENSE_EXPIRED's message (P4).
                present.update({e.get("LICENSE_SERIAL", ""), e.get("LICENSE_PREVIOUS_SERIAL", "")})
                present.update(re.findall(prefix + r"\d+-VM", e.get("MESSAGE", "")))
        last = max((index(s) for s in present if s.startswith(prefix)), default=-1)
        need = max(wanted, key=index)
        if index(need) > last:
            violations.append(f"{slot}: {need} was announced or added before the cut; the agent has {sorted(present)}")
    if any(e.get("MESSAGE_ID") == STATE_RECOVERED for e in said):
        notes.append("STATE_RECOVERED")
    return violations, notes


def replay(work, log_path, data_size, host_agent, count, seed, progress=None):
    """Replays `count` crash states from the log; returns the per-state results."""
    log = WriteLog(log_path)
    rng = random.Random(seed)
    states = crash_states(log, count, rng)
    working_path = work + "/replay-working.img"
    with open(working_path, "wb") as f:
        f.truncate(data_size)
    working = open(working_path, "r+b")
    applied = -1
    mountpoint = host_agent.mountpoint
    state_image = work + "/replay-state.img"
    results = []
    safetree.refuse_mounted(mountpoint, "mount a crash state on")
    marks_all = [(e["index"], e["mark"]) for e in log.entries if "mark" in e]
    for number, (base, kept, cut) in enumerate(states):
        for entry in log.entries[applied + 1:base + 1]:
            log.apply(working, entry)
        applied = max(applied, base)
        working.flush()
        subprocess.run(["cp", "--sparse=always", working_path, state_image], check=True)
        with open(state_image, "r+b") as image:
            for entry_index, torn in kept:
                log.apply(image, log.entries[entry_index], torn)
        marks = [m for i, m in marks_all if i < cut]
        result = {"state": number, "flushPoint": base, "cut": cut, "keptUnflushed": len(kept),
                  "torn": sum(1 for _, t in kept if t is not None), "atFlush": not kept and cut == base + 1}
        mounted = subprocess.run(["mount", "-o", "loop", state_image, mountpoint], capture_output=True, text=True)
        if mounted.returncode != 0:
            result.update(violations=[f"not mountable: {mounted.stderr.strip()}"], notes=[])
            results.append(result)
            continue
        try:
            machine = sorted(glob.glob(mountpoint + "/journal/*/"))
            replayed = journal(["-D", machine[0], "SYSLOG_IDENTIFIER=license-agent"]) if machine else []
            if not os.path.isdir(mountpoint + "/state"):
                result.update(violations=[], notes=["before the story's state directory existed"])
            else:
                run = host_agent.run(mountpoint)
                violations, notes = judge(marks, replayed, run)
                result.update(violations=violations, notes=notes, said=len(run["said"]),
                              replayedEntries=len(replayed))
        finally:
            # Checked: a state left mounted says what holds it, and nothing more is removed.
            safetree.unmount_all(mountpoint)
        results.append(result)
        if progress:
            progress(number + 1, len(states), result)
    working.close()
    safetree.remove_tree(host_agent.work)
    return {"entries": len(log.entries), "flushPoints": sum(1 for e in log.entries if e["flags"] & (FLUSH | FUA)),
            "marks": len(marks_all), "states": results}
