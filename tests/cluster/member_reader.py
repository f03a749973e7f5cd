"""A process sharing a node's directory without its network role: ``member_reader.py DIR``.

What a service beside ``crdtstore serve`` does: ``crdtstore.open(DIR)``, no ``bind``. It
prints ``READY``, then one JSON line for each thing it sees, as it sees it:
``{"via": "members", "node", "status", "incarnation", "stale"}`` whenever a member's row
of ``member_view()`` changes (polled every 20 ms), and ``{"via": "watch", "node", "old",
"new", "incarnation"}`` for each ``watch_members`` callback.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import crdtstore
from crdtstore.membership import StatusChange

out_lock = threading.Lock()


def say(**fields: object) -> None:
    with out_lock:
        print(json.dumps(fields), flush=True)


def main() -> None:
    with crdtstore.open(sys.argv[1]) as node:

        def on_change(change: StatusChange) -> None:
            old = None if change.old is None else change.old.value
            say(
                via="watch",
                node=change.node_id,
                old=old,
                new=change.new.value,
                incarnation=change.incarnation,
            )

        node.watch_members(on_change)
        say(via="ready")
        last: dict[str, tuple[str, int, bool]] = {}
        while True:
            view = node.member_view()
            for m in view.members:
                state = (m.status, m.incarnation, view.stale is not None)
                if last.get(m.node_id) != state:
                    last[m.node_id] = state
                    say(
                        via="members",
                        node=m.node_id,
                        status=m.status,
                        incarnation=m.incarnation,
                        stale=view.stale is not None,
                    )
            time.sleep(0.02)  # the polling interval of a service asking now and then


if __name__ == "__main__":
    main()
