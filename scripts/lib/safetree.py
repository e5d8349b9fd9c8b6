#!/usr/bin/env python3
"""Trees that test tooling mounts into, chroots into, copies and deletes, handled so that it
cannot harm the machine: nothing is used, stamped, copied or deleted while anything is
mounted under it; copies and deletions never cross a file system; a chroot's own processes
are ended (by their ids) before its mounts are unmounted; every unmount is checked, and one
that fails says what is still mounted and which processes hold it.

Why: a root whose /proc stayed mounted after a failed unmount was then copied with `cp -a`,
which copied the live /proc of the machine until its disk was full (issue 19).

As a module (scripts/vm-proof, scripts/vm/powercut.py, ansible/tests/fleetlab.py):

    with chroot_mounts(root):          # proc, sys and /dev mounted; all unmounted, checked
        subprocess.run(["chroot", root, "apt-get", ...], check=True)
    copy_tree(root, stage)             # refuses a root with a mount under it
    remove_tree(stage)

As a command (packaging/make-test-root, the Swift tests):

    safetree.py check PATH [--doing WORD]   exit 1 when something is mounted under PATH
    safetree.py copy SOURCE DESTINATION      cp -a on one file system, after the check
    safetree.py remove PATH                  rm -rf on one file system, after the check
    safetree.py unmount ROOT                 ends ROOT's chroot processes, unmounts all under it
    safetree.py end-processes ROOT           ends the processes whose root is ROOT or under it
"""
import argparse
import os
import signal
import subprocess
import sys
import time


class TreeError(Exception):
    """A tree that must not be touched, or an unmount that failed: the message says what and
    what to do."""


def _unescape(field):
    """A path of /proc/self/mountinfo (space, tab, newline and backslash are octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def mounts_under(path):
    """The mount points at or under `path` (this process's mount namespace), deepest first."""
    root = os.path.realpath(path)
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split(" ")[4])
            if _inside(point, root):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def _described(pids):
    names = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                names.append(f"{pid} ({f.read().strip()})")
        except OSError:
            names.append(str(pid))
    return ", ".join(names)


def refuse_mounted(path, doing):
    """Raises TreeError, naming the mounts and what to do, when anything is mounted at or
    under `path`; `doing` is what was about to be done ("copy", "use", "remove", ...)."""
    mounts = mounts_under(path)
    if not mounts:
        return
    held = {m: holders(m) for m in mounts}
    detail = "; ".join(f"{m}" + (f" (held by {_described(held[m])})" if held[m] else "") for m in mounts)
    raise TreeError(
        f"refusing to {doing} {path}: mounted under it: {detail}. Nothing was done to it. End the "
        f"processes that hold these mounts, unmount them (umount {mounts[0]}), then run this again; "
        f"`findmnt -R {os.path.realpath(path)}` lists them.")


def _link(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]


def chroot_processes(root):
    """The processes whose root directory is `root` or under it: a chroot's own (daemons a
    package's scripts started inside it, the usual cause of a busy mount)."""
    root = os.path.realpath(root)
    found = []
    for pid in _pids():
        link = _link(f"/proc/{pid}/root")
        if link and link != "/" and _inside(link, root):
            found.append(pid)
    return found


def holders(mountpoint):
    """The processes that keep `mountpoint` busy: their root, working directory, executable or
    an open file is on it."""
    mountpoint = os.path.realpath(mountpoint)
    found = []
    for pid in _pids():
        links = [_link(f"/proc/{pid}/{name}") for name in ("root", "cwd", "exe")]
        try:
            links += [_link(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
        if any(link and link != "/" and _inside(link, mountpoint) for link in links):
            found.append(pid)
    return found


def end_processes(root, grace=5.0):
    """Ends the chroot's processes (SIGTERM, then SIGKILL after `grace` seconds), by the ids
    found under `root` and only those; returns their descriptions."""
    pids = chroot_processes(root)
    if not pids:
        return []
    ended = _described(pids).split(", ")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(p in chroot_processes(root) for p in pids):
        time.sleep(0.1)
    # Only those still in the chroot (an id reused by another process is not touched).
    for pid in [p for p in chroot_processes(root) if p in pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(p in chroot_processes(root) for p in pids):
        time.sleep(0.1)
    return ended


def unmount_all(root, tries=10):
    """Ends the chroot's processes, then unmounts every mount under `root`, deepest first,
    checking each; retries a busy one for a few seconds. Raises TreeError naming what is
    still mounted and who holds it when one will not go."""
    errors = {}
    for attempt in range(tries):
        for ended in end_processes(root):
            print(f"safetree: ended {ended}, left running in the chroot {root}", file=sys.stderr)
        mounts = mounts_under(root)
        if not mounts:
            return
        for point in mounts:
            result = subprocess.run(["umount", point], capture_output=True, text=True)
            if result.returncode != 0:
                errors[point] = result.stderr.strip() or f"umount exited {result.returncode}"
        if not mounts_under(root):
            return
        time.sleep(0.5)
    detail = []
    for point in mounts_under(root):
        held = holders(point)
        detail.append(f"{point}: {errors.get(point, 'still mounted')}"
                      + (f" (held by {_described(held)})" if held else ""))
    detail = "; ".join(detail)
    raise TreeError(
        f"could not unmount everything under {root}: still mounted: {detail}. Nothing under it will be "
        f"used, stamped, copied or removed. End the processes named, then `umount` each mount "
        f"(`findmnt -R {os.path.realpath(root)}` lists them).")


class chroot_mounts:
    """proc, sys and /dev mounted in `root` for a chroot (refused when anything is mounted
    there already); on leaving, the chroot's processes ended and everything unmounted,
    checked (TreeError when an unmount fails, even if the body failed too)."""

    MOUNTS = (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]), ("/dev", "dev", ["--bind"]))

    def __init__(self, root, mounts=MOUNTS):
        self.root, self.mounts = root, mounts

    def __enter__(self):
        refuse_mounted(self.root, "mount into")
        try:
            for source, point, options in self.mounts:
                result = subprocess.run(["mount", *options, source, f"{self.root}/{point}"],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    raise TreeError(f"mount {source} on {self.root}/{point} failed: {result.stderr.strip()}")
        except BaseException:
            unmount_all(self.root)
            raise
        return self

    def __exit__(self, kind, value, traceback):
        try:
            unmount_all(self.root)
        except TreeError:
            if kind is not None:
                print(f"safetree: {value}", file=sys.stderr)
            raise
        return False


def copy_tree(source, destination):
    """`cp -a` of `source` to `destination` (which must not exist), never crossing a file
    system, refused while anything is mounted under `source`."""
    refuse_mounted(source, "copy")
    if os.path.lexists(destination):
        raise TreeError(f"refusing to copy {source} to {destination}: it exists already")
    subprocess.run(["cp", "-a", "--one-file-system", source, destination], check=True)


def remove_tree(path):
    """`rm -rf` of `path`, never crossing a file system, refused while anything is mounted
    under it (rm would otherwise delete what the mount shows: the machine's /dev, say)."""
    if not os.path.lexists(path):
        return
    refuse_mounted(path, "remove")
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="exit 1 when anything is mounted under PATH")
    check.add_argument("path")
    check.add_argument("--doing", default="use", help="the word the refusal uses (default: use)")
    copy = commands.add_parser("copy", help="cp -a on one file system, after the check")
    copy.add_argument("source")
    copy.add_argument("destination")
    commands.add_parser("remove", help="rm -rf on one file system, after the check").add_argument("path")
    commands.add_parser("unmount", help="end ROOT's processes, unmount all under it").add_argument("root")
    commands.add_parser("end-processes", help="end the processes whose root is ROOT").add_argument("root")
    options = parser.parse_args(argv)
    try:
        if options.command == "check":
            refuse_mounted(options.path, options.doing)
        elif options.command == "copy":
            copy_tree(options.source, options.destination)
        elif options.command == "remove":
            remove_tree(options.path)
        elif options.command == "unmount":
            unmount_all(options.root)
        elif options.command == "end-processes":
            for line in end_processes(options.root):
                print(f"ended {line}")
    except TreeError as error:
        print(f"safetree: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"safetree: {' '.join(error.cmd)} exited {error.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
