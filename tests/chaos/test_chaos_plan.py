"""The chaos suite's pure parts: the seeded fault plan and the tc programs it installs."""

from __future__ import annotations

import itertools

from chaos.net import BPF_MATCH, SKF_AD_RANDOM, random_match
from chaos.schedule import TRACKS, make_schedule


def test_a_seed_names_one_plan() -> None:
    one = make_schedule(18, 5, 5, 90, TRACKS)
    assert one == make_schedule(18, 5, 5, 90, TRACKS)
    assert one != make_schedule(19, 5, 5, 90, TRACKS)


def test_turning_a_track_off_leaves_the_others_plans_as_they_were() -> None:
    full = make_schedule(3, 5, 5, 90, TRACKS)
    fewer = make_schedule(3, 5, 5, 90, ("cut", "client"))
    assert fewer == [f for f in full if f.track in ("cut", "client")]


def test_a_track_never_stacks_faults_and_every_fault_ends_in_time() -> None:
    for seed in range(20):
        plan = make_schedule(seed, 5, 10, 60, TRACKS)
        for track in TRACKS:
            mine = [f for f in plan if f.track == track]
            assert mine, (seed, track)
            assert all(0 < f.start < f.end <= 60 for f in mine)
            assert all(a.end < b.start for a, b in itertools.pairwise(mine))


def test_cuts_block_exactly_the_pairs_across_their_sides() -> None:
    shapes = set()
    for seed in range(30):
        for fault in make_schedule(seed, 5, 5, 90, ("cut",)):
            shapes.add(fault.kind)
            left, right = fault.sides
            assert not set(left) & set(right)
            assert set(fault.blocked) == {(min(a, b), max(a, b)) for a in left for b in right}
            if fault.kind == "bridge":  # one node outside both sides reaches everyone
                assert len(left) + len(right) == 4
            else:
                assert len(left) + len(right) == 5
            if fault.kind == "isolate":
                assert len(left) == 1
    assert shapes == {"isolate", "majority", "bridge"}


def test_the_random_match_program_compares_the_packet_random_with_a_threshold() -> None:
    count, *program = random_match(0.25).split(",")
    assert int(count) == len(program) == 4
    load, jump, match, miss = (tuple(int(x) for x in p.split()) for p in program)
    assert load == (0x20, 0, 0, SKF_AD_RANDOM)
    assert jump == (0x35, 1, 0, 2**30)  # at or above a quarter of 2**32: skip the match
    assert match == (0x06, 0, 0, BPF_MATCH) and miss == (0x06, 0, 0, 0)
    assert random_match(1.0) == f"1,6 0 0 {BPF_MATCH}"
