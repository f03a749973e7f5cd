"""Hostile frames at every port of a running node: it keeps serving, counts them, and its
state does not change."""

from __future__ import annotations

import os
import random

import msgpack
import zmq
from cluster_support import Cluster, same_state, wait_until

import crdtstore
from crdtstore.crdt import make_timestamp
from crdtstore.membership.messages import Hello
from crdtstore.membership.versions import SPOKEN
from crdtstore.membership.wire import Contact, Join
from crdtstore.storage.replica import wall_ms
from crdtstore.sync.messages import encode_message
from crdtstore.testing.memory import MemoryReplica
from transport import routing_id

MAX_MESSAGE = 256 * 1024


def first_batch(origin: str) -> bytes:
    """A well-formed first batch of ``origin`` in "orders", as its node would publish it.
    (Not read from the node's log: the log is trimmed once every peer has the batch, which
    may happen before a test gets to read it.)"""
    writer = MemoryReplica(origin)
    ts = make_timestamp(wall_ms())
    writer.mutate("orders", "lww_map", lambda st: st.put(origin, "o1", "real", ts))  # type: ignore[attr-defined]
    batches = writer.log_batches("orders", origin, 1, 1)
    assert batches
    return batches[0]


def test_hostile_frames_on_every_port_change_nothing(cluster: Cluster) -> None:
    n1 = cluster.add("n1", max_message_bytes=MAX_MESSAGE)
    n2 = cluster.add("n2", max_message_bytes=MAX_MESSAGE)
    wait_until(lambda: cluster.all_members_alive(2), "both nodes see each other")
    with crdtstore.open(n2.data) as h:
        h.lww_map("orders")["o1"] = "real"
    wait_until(lambda: same_state([n1, n2], ["orders"]), "n1 has n2's order")
    before = n1.dump("orders")
    valid = first_batch("n2")
    fields = msgpack.unpackb(valid)
    rng = random.Random(7)
    status = n1.status()
    assert status is not None
    router, pub = status["router"], status["pub"]

    ctx = zmq.Context()
    try:
        # 1. A raw DEALER at the ROUTER: garbage, truncated, oversized, wrong versions,
        #    batches sent directly (forged: "n2"'s next seq, and n1's own origin).
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"evil")
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(router)
        forged = list(fields)
        forged[4:6] = [2, 2]
        wrong_version = [99, *fields[1:]]
        frames: list[list[bytes]] = [
            [b""],
            [b"S"],
            [b"M"],
            [b"X" + valid],
            [b"S" + valid[: len(valid) // 2]],
            [b"S" + bytes(rng.randrange(256) for _ in range(300))],
            [b"M" + bytes(rng.randrange(256) for _ in range(300))],
            [b"S" + msgpack.packb(wrong_version)],
            [b"S" + msgpack.packb([True, *fields[1:]])],
            [b"S" + msgpack.packb(forged)],
            [b"S" + valid],
            [b"S", b"two", b"frames"],
            [b"S" + b"\x91" * 5000],  # nesting far beyond the decoder's depth limit
            [b"S" + os.urandom(MAX_MESSAGE * 2)],  # oversized: libzmq cuts the connection
        ]
        for parts in frames:
            dealer.send_multipart(parts)
        # 2. Raw TCP bytes (no ZMTP greeting) at both ports.
        for endpoint in (router, pub):
            stream = ctx.socket(zmq.STREAM)
            stream.setsockopt(zmq.LINGER, 0)
            stream.connect(endpoint)
            wait_until(lambda s=stream: s.poll(50), "the stream socket connected")  # type: ignore[misc]
            peer_id = stream.recv_multipart()[0]
            stream.send_multipart([peer_id, os.urandom(4096)])
            stream.close()
        # 3. A stranger that says hello with its own PUB, then joins, then publishes junk
        #    and batches in someone else's name: a hello makes no link; a join does (no
        #    keys configured), but what it publishes is held to its own origin.
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub_port = xpub.bind_to_random_port("tcp://127.0.0.1")
        evil_pub = f"tcp://127.0.0.1:{xpub_port}"
        hello = Hello(
            "evil",
            "tcp://127.0.0.1:9",
            evil_pub,
            None,
            reply=False,
            incarnation=1,
            started_at_ms=wall_ms(),
            clock_ms=wall_ms(),
            versions=SPOKEN,  # refused otherwise, before anything
        )
        prober = ctx.socket(zmq.DEALER)
        # A connection id of its own, as a node's: a second connection under the raw
        # dealer's id would be refused while that one is still up (no handover).
        prober.setsockopt(zmq.IDENTITY, routing_id.for_connection(b"evil"))
        prober.setsockopt(zmq.LINGER, 0)
        prober.connect(router)
        prober.send(b"M" + encode_message(hello))
        # A hello alone makes no link: n1 subscribes only to its neighbours and topic
        # links, whose publications are relayed batches of any origin, so a stranger
        # must not become one by saying hello.
        wait_until(
            lambda: n1.counter("replicator", "pin_back_refused") >= 1,
            "n1 refused to link back to the stranger",
        )
        assert not xpub.poll(0), "n1 subscribed to a stranger"
        # A Join in its own name is taken (nothing tells a stranger from a new node
        # without keys), so n1 subscribes to it; but with no replicated record it is no
        # member link: held to its own origin.
        stranger = Contact("evil", "tcp://127.0.0.1:9", evil_pub, None, 1)
        prober.send(b"O" + encode_message(Join(stranger)))
        wait_until(lambda: xpub.poll(50), "n1 subscribed to the joiner's PUB")
        # To its digests, its have notices (n1 holds every namespace: they name new
        # ones) and its own data topics ("-": batches it originated): a link no
        # replicated record vouches for carries its publisher's own batches only.
        subscribed = set()
        while xpub.poll(200):
            subscribed.add(xpub.recv())
        base = {b"\x01\x00digest\x00", b"\x01hevil\x00"}
        assert base <= subscribed, subscribed
        own = subscribed - base
        assert own and all(t.startswith(b"\x01devil\x00") and t.endswith(b"\x00-") for t in own)
        junk_topics = [b"orders\x00", b"\x00digest\x00", b"\x00heartbeat\x00", b"no-terminator"]
        for topic in [*junk_topics, b"devil\x00orders\x00-00000000", b"dn2\x00orders\x00-00000000"]:
            xpub.send_multipart([topic, os.urandom(200)])
        xpub.send_multipart([b"orders\x00", valid])  # n2's batch, published by "evil"
        # The same on evil's own data topic (as its relay) and on one naming n2.
        xpub.send_multipart([b"devil\x00orders\x00-00000000", valid])
        xpub.send_multipart([b"dn2\x00orders\x00-00000000", valid])
        xpub.send_multipart([b"orders\x00", msgpack.packb(forged)])
        xpub.send_multipart([b"orders\x00", b"one", b"frame too many"])

        def counted() -> bool:
            sync = (n1.status() or {}).get("sync", {})
            # Only what its subscriptions let through reaches the engine.
            return (
                sync.get("decode_errors", 0) >= 2  # junk digest, junk on its own topic
                and sync.get("relay_rejected_not_vouched", 0) >= 1  # n2's batch by evil
            )

        wait_until(counted, "n1 counted the hostile frames")

    finally:
        # Whatever failed above, no socket outlives the test: a context left to the
        # garbage collector with open sockets blocks the whole test run in term().
        ctx.destroy(linger=0)

    # Still serving: a real write on n2 arrives, and nothing else changed.
    with crdtstore.open(n2.data) as h:
        h.lww_map("orders")["o2"] = "after the attack"
    wait_until(lambda: same_state([n1, n2], ["orders"]), "n1 still replicates")
    after = n1.dump("orders")
    assert [e for e in after if e["key"] != "o2"] == before
    assert n1.alive() and n2.alive()
    replicator = (n1.status() or {})["replicator"]
    assert replicator.get("rejected_channel", 0) >= 1
    assert "Traceback" not in n1.log.read_text()
