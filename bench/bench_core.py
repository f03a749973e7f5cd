"""Throughput of the pure CRDT core and the codec, against this machine's own references.

Measured in one run, on one core, no I/O:

- ORSet add and remove, LWWMap put: mutate, then join the delta into a growing state
  (what a replica does per write), against a raw ``dict[key] = value``;
- the join of a 1,000-entry delta group into a 100,000-entry state;
- encode (``pack(encode_value(...))``) and strict decode (``decode_value(unpack(...))``)
  of a 10,000-entry LWW delta, against bare ``msgpack.packb``/``unpackb`` of the same
  wire structure.

Figures are reported, never asserted. Run: .venv/bin/python bench/bench_core.py [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from rich.console import Console
from rich.table import Table

# Run from a checkout without `pip install -e .`: the package sits next to bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crdtstore.codec import decode_value, encode_value, pack, unpack
from crdtstore.crdt import CausalContext, Dot, DotMap, HybridClock, Key, LWWMap, ORSet

START_MS = 1_700_000_000_000


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """Shortest wall time of ``repeats`` runs (the least disturbed one)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def orset_adds(n: int) -> tuple[float, ORSet]:
    state: DotMap[None] = ORSet()
    t0 = time.perf_counter()
    for i in range(n):
        assert isinstance(state, ORSet)
        state = state.join(state.add("a", i))
    elapsed = time.perf_counter() - t0
    assert isinstance(state, ORSet)
    return elapsed, state


def orset_removes(state: ORSet, n: int) -> float:
    current: DotMap[None] = state
    t0 = time.perf_counter()
    for i in range(n):
        assert isinstance(current, ORSet)
        current = current.join(current.remove("a", i))
    return time.perf_counter() - t0


def lww_puts(n: int, keys: int) -> float:
    state: DotMap[Any] = LWWMap()
    clock = HybridClock()
    t0 = time.perf_counter()
    for i in range(n):
        clock, ts = clock.tick(START_MS + i // 10)
        assert isinstance(state, LWWMap)
        state = state.join(state.put("a", i % keys, {"v": i}, ts))
    return time.perf_counter() - t0


def dict_setitems(n: int) -> float:
    d: dict[int, Any] = {}
    t0 = time.perf_counter()
    for i in range(n):
        d[i] = None
    return time.perf_counter() - t0


def big_orset(n: int) -> ORSet:
    """n elements, each added by replica "a" and seen by replica "b"."""
    return ORSet({i: {Dot("a", i + 1): None} for i in range(n)}, CausalContext({"a": n}))


def delta_group(state: ORSet, n: int) -> DotMap[None]:
    """Replica "b" removes n/2 existing elements and adds n/2 new ones: one delta group."""
    b: DotMap[None] = state
    group: DotMap[None] = ORSet(is_delta=True)
    for i in range(n // 2):
        assert isinstance(b, ORSet)
        for delta in (b.remove("b", i * 7), b.add("b", f"new-{i}")):
            b = b.join(delta)
            group = group.join(delta)
            assert isinstance(b, ORSet)
    return group


def lww_delta(n: int) -> LWWMap:
    entries: dict[Key, dict[Dot, tuple[int, Any]]] = {
        f"key-{i:06d}": {Dot("a", i + 1): ((START_MS + i) << 16, {"host": f"h{i}", "port": i})}
        for i in range(n)
    }
    return LWWMap(entries, CausalContext({"a": n}), is_delta=True)


def row(table: Table, *cells: str) -> None:
    table.add_row(*cells)


def main() -> None:
    quick = "--quick" in sys.argv
    scale = 10 if quick else 1
    console = Console()
    n_ops = 20_000 // scale

    # -- mutations -------------------------------------------------------------------------
    add_s, state = orset_adds(n_ops)
    remove_s = orset_removes(state, n_ops)
    put_s = lww_puts(n_ops, keys=n_ops // 4)
    dict_s = best_of(3, lambda: dict_setitems(n_ops))
    ref_ops = n_ops / dict_s
    t1 = Table(
        title=f"mutate + join delta into own state ({n_ops:,} ops, state grows to {n_ops:,})"
    )
    for col in ("operation", "ops/s", "µs/op", "ours / dict set-item"):
        t1.add_column(col, justify="right")
    for name, secs in (
        ("ORSet add", add_s),
        ("ORSet remove", remove_s),
        (f"LWWMap put ({n_ops // 4:,} keys)", put_s),
    ):
        row(
            t1,
            name,
            f"{n_ops / secs:,.0f}",
            f"{secs / n_ops * 1e6:.1f}",
            f"{n_ops / secs / ref_ops:.4f}",
        )
    row(t1, "reference: dict\\[k] = v", f"{ref_ops:,.0f}", f"{dict_s / n_ops * 1e6:.3f}", "1")
    console.print(t1)

    # -- join of a delta group into a large state -----------------------------------------
    n_state, n_delta = 100_000 // scale, 1_000 // scale
    big = big_orset(n_state)
    group = delta_group(big, n_delta)
    join_s = best_of(5, lambda: big.join(group))
    copy_s = best_of(5, lambda: dict(big.entries))
    visit_s = best_of(5, lambda: [big.entries.get(k) for k in group.entries])
    t2 = Table(title=f"join a {len(group.entries):,}-entry delta into a {n_state:,}-entry state")
    for col in ("measure", "time per join", "delta entries/s", "note"):
        t2.add_column(col, justify="right")
    row(
        t2, "state.join(delta)", f"{join_s * 1e3:.2f} ms", f"{len(group.entries) / join_s:,.0f}", ""
    )
    row(
        t2,
        "reference: dict(state.entries)",
        f"{copy_s * 1e3:.2f} ms",
        "",
        f"copy is {copy_s / join_s:.0%} of the join",
    )
    row(
        t2,
        "reference: visit delta keys only",
        f"{visit_s * 1e3:.3f} ms",
        f"{len(group.entries) / visit_s:,.0f}",
        f"join / visit = {join_s / visit_s:,.0f}x",
    )
    console.print(t2)

    # -- codec --------------------------------------------------------------------------------
    n_entries = 10_000 // scale
    delta = lww_delta(n_entries)
    wire = pack(encode_value(delta))
    raw_obj = encode_value(delta)
    mb = len(wire) / 1e6
    enc_s = best_of(5, lambda: pack(encode_value(delta)))
    dec_s = best_of(5, lambda: decode_value(unpack(wire)))
    packb_s = best_of(5, lambda: msgpack.packb(raw_obj, use_bin_type=True))
    unpackb_s = best_of(5, lambda: msgpack.unpackb(wire, raw=False, strict_map_key=False))
    assert decode_value(unpack(wire)) == delta
    t3 = Table(title=f"codec, {n_entries:,}-entry LWW delta ({len(wire):,} bytes)")
    for col in ("direction", "ours MB/s", "msgpack MB/s", "ours / msgpack"):
        t3.add_column(col, justify="right")
    row(t3, "encode", f"{mb / enc_s:,.1f}", f"{mb / packb_s:,.1f}", f"{packb_s / enc_s:.3f}")
    row(
        t3,
        "decode (strict)",
        f"{mb / dec_s:,.1f}",
        f"{mb / unpackb_s:,.1f}",
        f"{unpackb_s / dec_s:.3f}",
    )
    console.print(t3)


if __name__ == "__main__":
    main()
