"""atheris target: untrusted bytes into the decoders must raise DecodeError or decode.

Any other exception, or a decoded value that breaks an invariant (a live dot outside its
value's context, a dot live at two keys, an empty entry in a state), is a crash.

    .venv/bin/python fuzz/fuzz_decode.py -max_total_time=60 [fuzz/corpus]
    .venv/bin/python fuzz/fuzz_decode.py --make-corpus   # (re)write the small seed corpus
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, cast

import atheris

# Run from a checkout without `pip install -e .`: the package sits next to fuzz/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from crdtstore.codec import decode_value, encode_value, pack, unpack
    from crdtstore.crdt import CausalContext, DotMap, HybridClock, LWWMap, ORSet
    from crdtstore.errors import DecodeError
    from crdtstore.sync.fingerprint import HASH_SPACE
    from crdtstore.sync.messages import (
        DeltaBatch,
        Digest,
        DigestSummary,
        PackedRange,
        RangeReply,
        RepairRequest,
        VectorReply,
        VectorRequest,
        decode_message,
        encode_message,
    )
    from crdtstore.sync.shipped import ShippedEntries

CORPUS = Path(__file__).with_name("corpus")


def check_sound(value: DotMap[Any]) -> None:
    owner: dict[Any, Any] = {}
    for key, entry in value.entries.items():
        if not entry and not value.is_delta:
            raise AssertionError(f"decoded state has an empty entry at {key!r}")
        for dot in entry:
            if dot not in value.context:
                raise AssertionError(f"decoded live dot {dot} outside the context")
            if owner.setdefault(dot, key) != key:
                raise AssertionError(f"decoded dot {dot} live at two keys")


def check_shipped(packed: PackedRange, lo: int, hi: int) -> None:
    """A shipped range's entries, checked as a session applies them (every base holds
    every dot here, so nothing is dropped and the value must be sound)."""
    try:
        value = ShippedEntries(packed, CausalContext(), 0, 1 << 62).value(lo, hi)
    except DecodeError:
        return
    dots = [d for e in value.entries.values() for d in e]
    check_sound(type(value)(value.entries, CausalContext.from_dots(dots), is_delta=True))


def TestOneInput(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except DecodeError:
        pass
    else:
        if isinstance(msg, DeltaBatch):
            check_sound(msg.delta)
        if isinstance(msg, RangeReply):
            for answer in msg.answers:
                if answer.packed is not None:
                    check_shipped(answer.packed, answer.lo, answer.hi)
    try:
        items = unpack(data)
    except DecodeError:
        items = None
    else:
        with contextlib.suppress(DecodeError):
            check_sound(decode_value(items))
    count = len(items) if isinstance(items, list) else 0
    for type_name in ("or_set", "lww_map"):  # the bytes as a range's entries
        check_shipped(PackedRange(type_name, count, data), 0, HASH_SPACE)


def seed_inputs() -> dict[str, bytes]:
    """A few valid encodings of each shape: states, deltas, batches of both types, a
    range's shipped entries."""
    seeds: dict[str, bytes] = {}
    s = ORSet()
    for element in ("x", b"y", 3):
        s = cast(ORSet, s.join(s.add("a", element)))
    removed = s.remove("a", "x")
    s = cast(ORSet, s.join(removed))
    seeds["orset_state"] = pack(encode_value(s))
    seeds["orset_delta_remove"] = pack(encode_value(removed))
    m = LWWMap()
    clock = HybridClock()
    for i, value in enumerate([None, 1.5, "v", b"b", [1, {"k": True}]]):
        clock, ts = clock.tick(1_700_000_000_000 + i)
        m = cast(LWWMap, m.join(m.put("a", f"k{i % 3}", value, ts)))
    concurrent = LWWMap().put("b", "k0", "other", 5)
    m = cast(LWWMap, m.join(concurrent))
    seeds["lww_state"] = pack(encode_value(m))
    seeds["lww_delta_concurrent"] = pack(encode_value(concurrent))
    batch = DeltaBatch("config", "b", 1, 1, concurrent)
    seeds["msg_delta_batch"] = encode_message(batch)
    seeds["msg_orset_batch"] = encode_message(DeltaBatch("hosts", "a", 4, 4, removed))
    seeds["msg_digest"] = encode_message(Digest("a", (("config", "lww_map", {"a": 5, "b": 1}),)))
    summary = DigestSummary("a", (("config", "lww_map", 6, bytes(range(8))),))
    seeds["msg_digest_hashed"] = encode_message(summary)
    seeds["msg_vector_req"] = encode_message(VectorRequest("config"))
    seeds["msg_vector"] = encode_message(VectorReply("config", "lww_map", {"a": 5, "b": 1}))
    seeds["msg_repair_req"] = encode_message(RepairRequest(7, "config", "b", 2, 9))
    seeds["range_entries_lww"] = PackedRange.of(m).data
    seeds["range_entries_orset"] = PackedRange.of(s).data
    return seeds


def write_corpus() -> None:
    CORPUS.mkdir(exist_ok=True)
    for name, data in seed_inputs().items():
        (CORPUS / name).write_bytes(data)


def main() -> None:
    if "--make-corpus" in sys.argv:
        write_corpus()
        return
    argv = list(sys.argv)
    # Start from the seed corpus (read only: -seed_inputs, so that libFuzzer does not fill
    # the checked-in directory with its finds) unless the caller named a corpus.
    named_corpus = any(not a.startswith("-") for a in argv[1:])
    if CORPUS.is_dir() and not named_corpus and not any("-seed_inputs" in a for a in argv):
        seeds = ",".join(str(p) for p in sorted(CORPUS.iterdir()))
        argv.append(f"-seed_inputs={seeds}")
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
