"""atheris target: untrusted frames into the sync engine's message handler.

``SyncEngine.on_message`` is what every byte from the network reaches. It must never
raise, and a frame the decoder refuses must leave the replica exactly as it was. The
engine under test holds real state (an OR-Set and an LWW-map replicated from a peer in
the deterministic simulator), so valid-looking frames exercise repair, ranges and
batches too. The first input byte picks the sender: a direct peer, a known publisher, a
stranger publishing, or no publisher at all.

    .venv/bin/python fuzz/fuzz_engine.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from crdtstore.errors import DecodeError
    from crdtstore.sync.engine import SyncEngine
    from crdtstore.sync.messages import decode_message
    from crdtstore.testing.simulator import Simulator

SENDERS: list[tuple[str, str | None]] = [("n1", None), ("", "n1"), ("", "stranger"), ("", None)]
NOW_MS = 1_700_000_000_000


def make_engine() -> tuple[SyncEngine, list[bytes]]:
    sim = Simulator(2, seed=3, record=True)
    for i in range(6):
        sim.add("n1", "s", i)
        sim.put("n1", "m", f"k{i}", {"v": i})
    sim.remove("n1", "s", 2)
    sim.run_until_quiescent(30_000)
    engine = sim.engine("n0")
    engine.add_peer("n1")
    wire = sorted({data for _, _, data in sim.wire or []}, key=len)
    return engine, wire


ENGINE, WIRE = make_engine()


def snapshot(engine: SyncEngine) -> dict[str, Any]:
    replica: Any = engine.replica
    return {ns: (replica.value(ns), replica.context(ns)) for ns in replica.namespaces()}


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    peer, publisher = SENDERS[data[0] % len(SENDERS)]
    frame = data[1:]
    try:
        decode_message(frame)
    except DecodeError:
        before = snapshot(ENGINE)
        ENGINE.on_message(peer, frame, NOW_MS, publisher=publisher)
        if snapshot(ENGINE) != before:
            raise AssertionError("an undecodable frame changed the replica") from None
        return
    ENGINE.on_message(peer, frame, NOW_MS, publisher=publisher)  # must not raise


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        # Seed libFuzzer with real protocol frames from a simulated exchange.
        corpus = Path(__file__).with_name("corpus-engine")
        corpus.mkdir(exist_ok=True)
        for i, frame in enumerate(WIRE[:64]):
            (corpus / f"wire{i:02d}").write_bytes(bytes([i % len(SENDERS)]) + frame)
        argv.append(f"-seed_inputs={','.join(str(p) for p in sorted(corpus.iterdir()))}")
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
