"""Bind addresses and seeds: one check behind ``open``, ``serve`` (flags, TOML) and tooz.

A bad value fails before anything is created, bound or printed, with one line that names
it; a good one of every accepted shape passes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tooz import coordination

import crdtstore
from crdtstore.addresses import check_bind, check_seed, check_seeds

BAD_OPEN = [
    ({"seeds": "tcp://127.0.0.1:7101"}, "seeds='tcp://127.0.0.1:7101' must be a list"),
    ({"seeds": ["127.0.0.1:7101"]}, "did you mean 'tcp://127.0.0.1:7101'?"),
    ({"seeds": ["tcp://127.0.0.1"]}, "seed 'tcp://127.0.0.1' must look like tcp://HOST:PORT"),
    ({"seeds": ["tcp://127.0.0.1:0"]}, "seed 'tcp://127.0.0.1:0' must name a host and a port"),
    ({"seeds": ["tcp://*:7101"]}, "seed 'tcp://*:7101' must name a host"),
    ({"seeds": ["@tcp://h:1"]}, "the key name before '@' is empty"),
    ({"seeds": [7101]}, "seed 7101 must be a string"),
    ({"seeds": 7101}, "seeds=7101 must be a list"),
    ({"bind": "127.0.0.1:7101"}, "bind address '127.0.0.1:7101' must look like tcp://HOST:PORT"),
    ({"bind": "ipc:///tmp/x"}, "bind address 'ipc:///tmp/x' must look like tcp://HOST:PORT"),
    ({"bind": "tcp://127.0.0.1:70000"}, "the port must be 0-65535"),
    ({"bind": 7101}, "bind address 7101 must be a string"),
    ({"pub_bind": "127.0.0.1:*"}, "pub_bind '127.0.0.1:*' must look like tcp://HOST:PORT"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPEN)
def test_a_bad_address_is_refused_by_open_before_anything_is_created(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    path = tmp_path / "n"
    with pytest.raises(crdtstore.InvalidValue) as raised:
        crdtstore.open(path, **options)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not path.exists()


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:7101", "tcp://*:7101", "tcp://*:*", "tcp://[::1]:0", "tcp://eth0:1"],
)
def test_bind_addresses_of_every_accepted_shape_pass(address: str) -> None:
    assert check_bind(address) == address


@pytest.mark.parametrize(
    "seed", ["tcp://127.0.0.1:7101", "tcp://seed.example:1", "n1@tcp://10.0.0.4:7101"]
)
def test_seeds_of_every_accepted_shape_pass(seed: str) -> None:
    assert check_seed(seed) == seed
    assert check_seeds((seed,)) == (seed,)


def test_a_tooz_url_with_a_bad_address_fails_to_start_naming_it(tmp_path: Path) -> None:
    url = f"crdt://{tmp_path / 'n'}?bind=127.0.0.1:7101"
    coord = coordination.get_coordinator(url, b"m")
    with pytest.raises(
        coordination.ToozConnectionError, match=re.escape("'127.0.0.1:7101' must look")
    ):
        coord.start()
    assert not (tmp_path / "n").exists()
