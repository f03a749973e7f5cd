"""The faults tests inject through the transport's seam: loss and the partition file."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtstore.errors import InvalidValue
from crdtstore.settings import NodeSettings
from crdtstore.testing.faults import PARTITION_POLL_MS, FaultSpec
from crdtstore.testing.serve import main as serve_main


class FakeClock:
    def __init__(self) -> None:
        self.ms = 0.0

    def __call__(self) -> float:
        return self.ms


def test_partition_file_is_read_on_its_poll_interval_and_heals(tmp_path: Path) -> None:
    path = tmp_path / "cut"
    clock = FakeClock()
    faults = FaultSpec(partition_file=str(path)).build(clock)
    assert faults.blocked_peers() == frozenset()  # no file: nobody is cut
    path.write_text("n2\n\n n3 \n")
    assert faults.blocked_peers() == frozenset()  # within the interval: the cached answer
    clock.ms += PARTITION_POLL_MS
    assert faults.blocked_peers() == {b"n2", b"n3"}
    path.write_text("")
    clock.ms += PARTITION_POLL_MS
    assert faults.blocked_peers() == frozenset()


def test_loss_applies_to_publications_only_and_reproduces() -> None:
    spec = FaultSpec(drop_publish_fraction=0.5, drop_seed=3)
    first, second = spec.build(), spec.build()
    runs = [[f.drop_outgoing("publish") for _ in range(200)] for f in (first, second)]
    assert runs[0] == runs[1]
    assert 50 < sum(runs[0]) < 150
    assert not any(first.drop_outgoing("direct") for _ in range(200))
    assert not any(FaultSpec().build().drop_outgoing("publish") for _ in range(200))


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_a_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="drop_publish_fraction"):
        FaultSpec(drop_publish_fraction=fraction)


def test_args_round_trip_through_the_test_serve_entry_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = FaultSpec(partition_file=str(tmp_path / "cut"), drop_publish_fraction=0.25, drop_seed=9)
    seen: list[tuple[list[str], object]] = []

    def fake_serve(args: object, clock: object = None, faults: object = None) -> int:
        seen.append((vars(args)["seed"], faults))
        return 0

    monkeypatch.setattr("crdtstore.cli.serve.serve", fake_serve)
    assert serve_main([*spec.args(), "--data", str(tmp_path), "--seed", "tcp://h:1"]) == 0
    [(seeds, faults)] = seen
    assert seeds == ["tcp://h:1"]
    assert getattr(faults, "spec", None) == spec


def test_faults_are_not_node_settings() -> None:
    for name in ("partition_file", "drop_publish_fraction", "drop_seed"):
        with pytest.raises(InvalidValue, match="unknown setting"):
            NodeSettings.from_mapping({name: 1})
