"""A tooz coordinator in its own process, for the across-hosts test.

``tooz_member.py URL MEMBER GROUP``: joins ``hosts`` (capabilities {"host": MEMBER}) and
GROUP through a partitioner, heartbeats, and answers commands on stdin, one per line:
``owners`` prints the owner of objects 0..199 as JSON once it sees 2 members;
``leave`` leaves the group; ``quit`` stops.
"""

from __future__ import annotations

import json
import sys
import threading

from tooz import coordination


def main() -> None:
    url, member, group = sys.argv[1:4]
    coord = coordination.get_coordinator(url, member.encode())
    coord.start(start_heart=True)
    coord.join_group_create(b"hosts", {"host": member})
    partitioner = coord.join_partitioned_group(group.encode())
    lock = threading.Lock()
    print("JOINED", flush=True)
    for line in sys.stdin:
        command = line.strip()
        with lock:
            coord.run_watchers()
            if command == "owners":
                owners = {
                    str(i): sorted(m.decode() for m in partitioner.members_for_object(i))
                    for i in range(200)
                }
                members = sorted(m.decode() for m in coord.get_members(group.encode()).get())
                print(json.dumps({"members": members, "owners": owners}), flush=True)
            elif command == "leave":
                coord.leave_partitioned_group(partitioner)
                print("LEFT", flush=True)
            elif command == "quit":
                break
    coord.stop()


if __name__ == "__main__":
    main()
