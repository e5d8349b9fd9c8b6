#!/usr/bin/env python3
"""Makes COUNT durable changes as fast as one connection allows: AddKey of two reserve keys in
turn (each replaces the other: a RESERVE_ADDED each time), with the reference varlink client.

  churn.py SOCKET KEY_FILE_1 KEY_FILE_2 COUNT
"""
import sys

import varlink


def main():
    path, first, second, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    keys = [open(first, encoding="utf-8").read().strip(), open(second, encoding="utf-8").read().strip()]
    with varlink.Client(address="unix:" + path) as client:
        with client.open("io.licenseagent.Agent") as agent:
            for index in range(count):
                agent.AddKey(keys[index % 2], "reserve")
    print(count)


if __name__ == "__main__":
    main()
