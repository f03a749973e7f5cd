"""Lifeguard's local health in the overlay's protocol, driven tick by tick: a node that
runs late stretches its suspicion timeout for as long as what it missed may still be on
its way, not for one tick."""

from __future__ import annotations

import random

from crdtstore.membership.detector import MemberStatus
from crdtstore.membership.protocol import MembershipProtocol, ProtocolSettings
from crdtstore.membership.wire import Ack, Contact, Neighbor, Ping

SETTINGS = ProtocolSettings(probe_interval_ms=100, suspect_after_ms=600, dead_after_ms=1500)


def contact(node_id: str) -> Contact:
    return Contact(node_id, f"tcp://{node_id}:1", f"tcp://{node_id}:2", None, 1)


def linked() -> MembershipProtocol:
    """``a`` with ``b`` as its neighbour since time 0."""
    a = MembershipProtocol(contact("a"), SETTINGS, random.Random(1), 0)
    a.learn(contact("b"), 0)
    a.on_message("b", Neighbor(contact("b"), high=True), 0)
    assert a.neighbours() == ["b"]
    return a


def run_on_time(a: MembershipProtocol, until_ms: int) -> None:
    """Tick at every deadline, on time, until ``until_ms`` (b says nothing meanwhile)."""
    while (due := a.next_deadline()) <= until_ms:
        a.tick(due)


def test_a_late_tick_stretches_the_suspicion_timeout_for_a_suspicion_timeout() -> None:
    a = linked()
    run_on_time(a, 50)
    # This node's thread stalls: its next tick comes 350 ms after its deadline, and the
    # frames b sent meanwhile are still behind this node's own I/O.
    late = a.next_deadline() + 350
    a.tick(late)
    assert a.local_health == 1
    # On-time ticks follow at every deadline (probes, their timeouts): health holds.
    run_on_time(a, late + SETTINGS.suspect_after_ms - 1)
    assert a.local_health == 1
    assert a.status("b") is MemberStatus.ALIVE  # silent ~1000 ms, limit stretched to 1200
    # Then it falls by one per on-time interval, and a silent b is suspected after all.
    run_on_time(a, late + SETTINGS.suspect_after_ms + 2 * SETTINGS.probe_interval_ms)
    assert a.local_health == 0
    run_on_time(a, late + 2 * SETTINGS.suspect_after_ms)
    assert a.status("b") is MemberStatus.SUSPECT


def test_on_time_ticks_keep_health_at_zero_and_a_silent_neighbour_is_suspected() -> None:
    a = linked()
    run_on_time(a, SETTINGS.suspect_after_ms + 2 * SETTINGS.probe_interval_ms)
    assert a.local_health == 0
    assert a.status("b") is MemberStatus.SUSPECT


def three() -> MembershipProtocol:
    """``a`` with ``b`` and ``c`` as its neighbours since time 0."""
    a = linked()
    a.learn(contact("c"), 0)
    a.on_message("c", Neighbor(contact("c"), high=True), 0)
    assert a.neighbours() == ["b", "c"]
    return a


def test_every_neighbour_silent_at_once_is_taken_as_this_node_s_own_slowness() -> None:
    a = three()
    # Nothing from anyone for three suspicion timeouts, every tick on time (this node's
    # I/O held up, say): its health rises instead of both neighbours being suspected.
    run_on_time(a, 3 * SETTINGS.suspect_after_ms)
    assert a.local_health >= 1
    assert a.status("b") is a.status("c") is MemberStatus.ALIVE
    assert a.stats["all_neighbours_silent"] >= 1


def test_one_silent_neighbour_among_others_heard_is_suspected_on_time() -> None:
    a = three()
    t = 0
    while (due := a.next_deadline()) <= SETTINGS.suspect_after_ms + 2 * SETTINGS.probe_interval_ms:
        for command in a.tick(due):  # c answers every probe at once, b none
            msg = getattr(command, "msg", None)
            if isinstance(msg, Ping) and getattr(command, "to", None) == contact("c"):
                a.on_message("c", Ack(msg.seq, 1, (), True, due), due)
        t = due
    assert t > SETTINGS.suspect_after_ms
    assert a.local_health == 0
    assert a.status("b") is MemberStatus.SUSPECT and a.status("c") is MemberStatus.ALIVE
