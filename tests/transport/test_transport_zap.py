"""The refusal log of the ZAP handler: once per key per interval, with what was skipped."""

from __future__ import annotations

import logging

import pytest

from transport.zap import REFUSAL_LOG_INTERVAL_S, REFUSALS_REMEMBERED, RefusalLog


def test_each_key_is_logged_once_per_interval_with_the_count_in_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = RefusalLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="transport.zap"):
        assert refusals.refused("10.0.0.1", "K1")
        assert not refusals.refused("10.0.0.1", "K1")
        assert refusals.refused("10.0.0.2", "K2")  # another key is its own story
        now[0] += REFUSAL_LOG_INTERVAL_S / 2
        assert not refusals.refused("10.0.0.1", "K1")
        now[0] += REFUSAL_LOG_INTERVAL_S / 2
        assert refusals.refused("10.0.0.1", "K1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused CURVE client 10.0.0.1 with public key K1: not in the keys directory",
        "refused CURVE client 10.0.0.2 with public key K2: not in the keys directory",
        "refused CURVE client 10.0.0.1 with public key K1: not in the keys directory "
        "(2 more refusals of it since last said)",
    ]
    assert caplog.records[0].peer_key == "K1"  # type: ignore[attr-defined]


def test_the_table_of_keys_is_bounded() -> None:
    refusals = RefusalLog(clock=lambda: 0.0)
    for i in range(REFUSALS_REMEMBERED * 3):
        refusals.refused("a", f"K{i}")
    assert len(refusals._last) == REFUSALS_REMEMBERED
