#!/usr/bin/python3
"""An exec activation client (contract §3) for the tests that writes the descriptors it was
started with to $PLUGIN_DIR/fds (JSON: descriptor -> what it points to), read first thing,
then answers with the key in $PLUGIN_DIR/key."""
import json
import os
import sys

targets = {}
for name in os.listdir("/proc/self/fd"):
    try:
        targets[name] = os.readlink("/proc/self/fd/" + name)
    except OSError:
        pass  # the listing's own descriptor, closed by now
sys.stdin.read()
folder = os.environ["PLUGIN_DIR"]
with open(folder + "/fds", "w") as f:
    json.dump(targets, f)
with open(folder + "/key") as f:
    print(json.dumps({"key": f.read().strip()}))
