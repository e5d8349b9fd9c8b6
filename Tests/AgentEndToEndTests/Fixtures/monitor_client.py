#!/usr/bin/env python3
"""A Monitor subscriber written independently of the agent: the reference Python varlink
client, streaming with "more" (rule N1).

  monitor_client.py SOCKET OUT [--consumer NAME] [--state-file PATH] [--ready FILE]

Subscribes to io.licenseagent.Agent.Monitor through the served interface description,
checks every reply against the IDL's types (the client does not), and appends each reply
to OUT as one JSON line as soon as it arrives. With --state-file (a subscriber that can read
the agent's state, as root), each reply also records the state file's lastTransitionID at
the instant it arrived: an event must already be durable when it is delivered. --ready
is created once the first reply has arrived. Runs until the stream ends: the last line is
{"end": ...} with the error or the reason.
"""
import argparse
import json
import os
import sys

import varlink

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from varlink_client import check  # noqa: E402  (the IDL type check, shared)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("out")
    parser.add_argument("--consumer")
    parser.add_argument("--state-file")
    parser.add_argument("--ready")
    args = parser.parse_args()
    with open(args.out, "a", encoding="utf-8") as out:
        def write(record):
            out.write(json.dumps(record) + "\n")
            out.flush()

        try:
            with varlink.Client(address="unix:" + args.socket) as client:
                with client.open("org.varlink.service") as service:
                    description = service.GetInterfaceDescription("io.licenseagent.Agent")["description"]
                iface = varlink.Interface(description)
                with client.open("io.licenseagent.Agent") as agent:
                    parameters = {} if args.consumer is None else {"consumer": args.consumer}
                    for reply in agent.Monitor(_more=True, **parameters):
                        check(reply, iface.members["Monitor"].out_type, iface, "Monitor")
                        record = {"reply": reply}
                        if args.state_file:
                            with open(args.state_file, encoding="utf-8") as state:
                                record["durableTransition"] = json.load(state)["lastTransitionID"]
                        write(record)
                        if args.ready and reply["sequence"] == 0:
                            open(args.ready, "w", encoding="utf-8").close()
            write({"end": "the stream ended"})
        except varlink.VarlinkError as error:
            name = error.error()
            if name.startswith("io.licenseagent.Agent."):
                member = iface.members[name.rsplit(".", 1)[1]]
                check(error.parameters(), member.type, iface, name)
            write({"end": name, "parameters": error.parameters()})
        except (ConnectionError, OSError, BrokenPipeError) as error:
            write({"end": f"connection: {error}"})
        except ValueError as error:
            write({"end": f"mismatch: {error}"})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
