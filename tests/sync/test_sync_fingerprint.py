"""The key order of range reconciliation (crdtstore.sync.fingerprint): a key's bucket
depends on its encoding less the last byte (or two digits), the rest of its hash on all
of it."""

from __future__ import annotations

from collections import Counter

from crdtstore.sync.fingerprint import (
    HASH_SPACE,
    bucket_part,
    encode_key,
    encoded_position,
    key_hash,
    split_range,
)


def bucket(key: object) -> int:
    return key_hash(key) >> 56


def test_keys_that_differ_in_their_last_byte_share_a_bucket() -> None:
    # 50,000..50,999 encode as 0xcd, then two bytes: five values of the first of the two.
    neighbours = range(50_000, 51_000)
    assert len({encode_key(k)[:-1] for k in neighbours}) == 5
    assert len({bucket(k) for k in neighbours}) <= 5  # a hash of all of it: ~250 of 256
    # Decimal ids in strings: "user:10".."user:19", a hundred keys each.
    assert len({bucket(f"user:{i}") for i in range(1000, 2000)}) <= 10
    for k in (7, 50_000, "user:1234", b"\x00\x01", 12336):
        ekey = encode_key(k)
        assert encoded_position(ekey) == bytes((bucket(k),)) + ekey  # one rule, two uses


def test_a_bucket_hashes_all_but_the_last_byte_or_two_digits() -> None:
    assert bucket_part(encode_key("user:1234")) == encode_key("user:1234")[:-2]
    assert bucket_part(encode_key("user:123x")) == encode_key("user:123x")[:-1]
    assert bucket_part(encode_key("user:1x")) == encode_key("user:1x")[:-1]
    assert bucket_part(encode_key(12336)) == b"\xcd"  # 0xcd 0x30 0x30: two "digits"
    assert bucket_part(encode_key(50_000)) == b"\xcd\xc3"
    for one_byte in (0, 48, 57, -1, ""):  # "0".."9" as bytes are ints 48..57
        assert bucket_part(encode_key(one_byte)) == b""
    assert bucket_part(encode_key("9")) == encode_key("9")[:-1]  # 0xa1 is no digit


def test_buckets_are_even_over_many_prefixes() -> None:
    keys = [f"user:{i}/" for i in range(10_000)]  # 10,000 prefixes, one key each
    load = Counter(bucket(k) for k in keys)
    assert len(load) == 256
    assert max(load.values()) < 2 * len(keys) / 256


def test_a_range_inside_a_bucket_splits_its_keys_evenly() -> None:
    one_prefix = range(0x4200, 0x4300)  # 256 keys, one bucket
    (b,) = {bucket(k) for k in one_prefix}
    width = HASH_SPACE >> 8
    parts = split_range(b * width, (b + 1) * width, 16)
    load = Counter(
        next(i for i, (lo, hi) in enumerate(parts) if lo <= key_hash(k) < hi) for k in one_prefix
    )
    assert len(load) == 16  # every part holds some
    assert max(load.values()) <= 3 * 256 // 16
