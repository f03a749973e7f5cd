"""A writer process for cluster tests: ``cluster_writer.py DIR MODE NS PREFIX COUNT``.

It opens the node directory (shared with the ``crdtstore serve`` process holding the
network role) and performs COUNT writes, printing ``ACK <key>`` only after each write
call returned, so the test knows exactly which writes were acknowledged.

Modes: ``put`` (LWW-map, value = key), ``add`` (OR-Set), ``churn`` (add COUNT elements,
then remove every third; prints ``ACK +k`` / ``ACK -k``), ``bulk`` (one transaction),
``shared`` (each write puts its own key, then one of five keys every writer shares, value
= prefix and i, so writers on several nodes keep observing each other's writes).
"""

from __future__ import annotations

import sys

import crdtstore


def main() -> None:
    data, mode, ns, prefix, count = sys.argv[1:6]
    n = int(count)
    with crdtstore.open(data) as node:
        if mode == "put":
            m = node.lww_map(ns)
            for i in range(n):
                m[f"{prefix}{i}"] = f"{prefix}{i}"
                print(f"ACK {prefix}{i}", flush=True)
        elif mode == "add":
            s = node.or_set(ns)
            for i in range(n):
                s.add(f"{prefix}{i}")
                print(f"ACK {prefix}{i}", flush=True)
        elif mode == "churn":
            s = node.or_set(ns)
            for i in range(n):
                s.add(f"{prefix}{i}")
                print(f"ACK +{prefix}{i}", flush=True)
            for i in range(0, n, 3):
                s.discard(f"{prefix}{i}")
                print(f"ACK -{prefix}{i}", flush=True)
        elif mode == "bulk":
            m = node.lww_map(ns)
            with node.transaction():
                for i in range(n):
                    m[f"{prefix}{i}"] = i
            print(f"ACK {n}", flush=True)
        elif mode == "shared":
            m = node.lww_map(ns)
            for i in range(n):
                m[f"{prefix}{i}"] = i
                m[f"shared{i % 5}"] = f"{prefix}{i}"
                print(f"ACK {prefix}{i}", flush=True)
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
