"""One settings tree: flat names of ``open``/TOML/flags routed to typed sub-settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import crdtstore
from crdtstore import InvalidValue, NodeSettings
from crdtstore.membership.settings import MembershipSettings
from crdtstore.settings import LAYERS, flat_names
from crdtstore.sync.settings import SyncSettings
from transport import TransportSettings


def other_value(value: Any) -> Any:
    """A valid value different from a default."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, tuple):
        return ("x",)
    raise AssertionError(f"no other value for {value!r}")


LAYER_FIELDS = [
    (layer, f.name)
    for layer, kind in LAYERS.items()
    for f in dataclasses.fields(kind)
    if f.name != "overlay"  # its one other value is refused: see below
]


@pytest.mark.parametrize(("layer", "name"), LAYER_FIELDS)
def test_each_flat_name_of_a_layer_lands_in_its_sub_settings(layer: str, name: str) -> None:
    default = getattr(LAYERS[layer](), name)
    settings = NodeSettings.from_mapping({name: other_value(default)})
    assert getattr(getattr(settings, layer), name) == other_value(default)
    for other in LAYERS:  # and nowhere else
        if other != layer:
            assert getattr(settings, other) == LAYERS[other]()


def test_overlay_true_is_still_accepted_and_false_is_refused_with_the_upgrade_path(
    tmp_path: Path,
) -> None:
    assert NodeSettings.from_mapping({"overlay": True}).membership.overlay is True
    with pytest.raises(InvalidValue) as refused:
        NodeSettings.from_mapping({"overlay": False})
    said = str(refused.value)
    assert "overlay=False" in said and "full-mesh membership mode was removed" in said
    assert "v0.2.0" in said and "README" in said  # the way out
    # Through open() too, before anything is written.
    with pytest.raises(InvalidValue, match="full-mesh"):
        crdtstore.open(tmp_path / "n", overlay=False)
    assert not (tmp_path / "n").exists()
    with crdtstore.open(tmp_path / "m", overlay=True) as node:
        node.lww_map("cfg")["k"] = 1


def test_the_tree_has_no_untyped_pass_through_and_each_name_once() -> None:
    names = {f.name for f in dataclasses.fields(NodeSettings)}
    assert "extra" not in names
    assert {"sync", "transport", "membership"} <= names
    routes = flat_names()
    assert routes["max_clock_drift_ms"] == "sync"
    assert "max_clock_drift_ms" not in names  # defined once, in SyncSettings
    drift = NodeSettings.from_mapping({"max_clock_drift_ms": 5_000})
    assert drift.max_clock_drift_ms == drift.sync.max_clock_drift_ms == 5_000
    flat = len(names) - len(LAYERS) + sum(len(dataclasses.fields(k)) for k in LAYERS.values())
    assert len(routes) == flat  # no name shared by two layers


def test_unknown_names_raise_listing_every_known_one() -> None:
    with pytest.raises(InvalidValue, match="unknown setting") as raised:
        NodeSettings.from_mapping({"digest_interval": 5, "map_size": 1 << 26})
    message = str(raised.value)
    for known in ("map_size", "digest_interval_ms", "sndhwm", "suspect_after_ms"):
        assert known in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("digest_interval_ms", "1000"),  # sync: an int, not a string
        ("max_log_batches", -1),  # sync: >= 0
        ("publish_flush", 1),  # sync: a bool, not an int
        ("reserved_namespaces", "__members"),  # sync: a list of names
        ("suspect_after_ms", 0),  # membership: positive
        ("heartbeat_interval_ms", True),  # membership: an int, not a bool
        ("sndhwm", -1),  # transport's own check
        ("tcp_keepalive_count", 0),  # transport's own check
    ],
)
def test_a_bad_layer_value_raises_naming_it(name: str, value: object) -> None:
    with pytest.raises(InvalidValue, match=name):
        NodeSettings.from_mapping({name: value})


def test_sub_settings_must_be_of_their_class() -> None:
    with pytest.raises(InvalidValue, match="SyncSettings"):
        NodeSettings(sync=MembershipSettings())  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="TransportSettings"):
        NodeSettings(transport=SyncSettings())  # type: ignore[arg-type]
    tree = NodeSettings(
        sync=SyncSettings(digest_interval_ms=7),
        transport=TransportSettings(sndhwm=3),
        membership=MembershipSettings(dead_after_ms=9),
    )
    assert (
        NodeSettings.from_mapping({"digest_interval_ms": 7, "sndhwm": 3, "dead_after_ms": 9})
        == tree
    )


def test_open_takes_the_flat_keywords_of_every_layer(tmp_path: Path) -> None:
    with crdtstore.open(
        tmp_path / "n", suspect_after_ms=700, repair_grace_ms=10, rcvhwm=5, iter_chunk=3
    ) as node:
        assert node.settings.membership.suspect_after_ms == 700
        assert node.settings.sync.repair_grace_ms == 10
        assert node.settings.transport.rcvhwm == 5
        assert node.settings.iter_chunk == 3
