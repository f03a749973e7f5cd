"""Every tunable of a node, in one frozen dataclass with documented defaults.

``crdtstore.open(path, **options)``, ``crdtstore serve`` and the TOML configuration file
all build a :class:`NodeSettings` through :meth:`NodeSettings.from_mapping`, which
rejects unknown names, so a misspelt option fails loudly instead of being ignored.
Each limit is a named field here, never a literal in the middle of the code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from crdtstore.addresses import check_bind
from crdtstore.codec import MAX_VALUE_DEPTH
from crdtstore.errors import InvalidValue

Durability = Literal["sync", "async"]

# LMDB 0.9's largest key is 511 bytes; a state row key spends 12 of them on the namespace
# id and the key hash (see crdtstore.storage.layout).
LMDB_MAX_KEY = 511
ROW_KEY_OVERHEAD = 12


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Settings of one node. Every field has a default; all are validated on creation."""

    map_size: int = 64 * 1024 * 1024
    """Initial size of the LMDB memory map in bytes. The map grows by itself (doubling, up
    to ``max_map_size``) when it fills, so this only needs to be a sensible starting point."""

    max_map_size: int = 1 << 40
    """Largest the map may grow to, in bytes. A write that would need more raises
    :class:`~crdtstore.errors.StorageError` and changes nothing."""

    durability: Durability = "sync"
    """``"sync"`` (the default): a mutation call that returned is on disk. Every commit
    fsyncs (LMDB ``sync=True, metasync=True``), so an acknowledged write survives
    ``kill -9`` and power loss. Throughput comes from batching with
    ``node.transaction()``, not from weakening this.

    ``"async"``: commits do not fsync (LMDB ``sync=False``); a background flusher owned by
    the node calls ``env.sync()`` every ``flush_interval_ms``, and ``close()`` flushes.
    A process crash loses nothing (the data is in the OS page cache), but an OS crash or
    power loss may lose the commits of the last ``flush_interval_ms``. The file stays
    consistent either way."""

    flush_interval_ms: int = 100
    """With ``durability="async"``: the bound on the loss window, in milliseconds."""

    max_key_bytes: int = 256
    """Largest encoded (msgpack) key, set element or namespace key, in bytes. At most
    ``511 - 12`` because a key lives inside an LMDB key."""

    max_value_bytes: int = 1024 * 1024
    """Largest encoded (msgpack) LWW-map value, in bytes."""

    max_value_depth: int = 24
    """Deepest nesting of lists and dicts inside one value. Peers decode deltas with a
    depth limit of 32 levels, of which the delta's own framing uses six."""

    max_clock_drift_ms: int = 60_000
    """A remote LWW timestamp further ahead of local time than this is rejected (the whole
    batch or range, counted in ``stats["rejected_clock_drift"]``), so one node with a bad
    clock cannot win every write forever."""

    watch_poll_interval_ms: int = 50
    """How often a node's watcher thread polls the change journal for commits made by
    other processes sharing the directory (commits of this process wake it at once), and
    how often ``watch_members`` reads the directory's member view."""

    journal_max_entries: int = 10_000
    """Commits kept in the change journal. A watcher that falls further behind than this
    skips the trimmed commits (counted in ``stats["journal_overrun"]``)."""

    role_standby: bool = False
    """With ``bind``, when another process already holds the directory's network role:
    False (the default) makes ``open`` raise :class:`~crdtstore.errors.RoleHeld`, naming
    the holder's pid and address; True opens without the role, and takes it over
    (binding then) once the holder stops."""

    role_poll_interval_ms: int = 200
    """With ``role_standby``: how often a node waiting for the network role tries to take
    it."""

    iter_chunk: int = 1_000
    """Entries read per LMDB read transaction while iterating a namespace view. Each chunk
    is a consistent snapshot; iteration as a whole is weakly consistent."""

    # -- network (used only with ``bind``) -------------------------------------------------

    topics: tuple[str, ...] | None = None
    """Namespaces this node replicates (it always replicates membership too). None: all.
    A node with topics stores no other namespace: writing one raises ``NotReplicated``."""

    pub_bind: str | None = None
    """Where the PUB socket (own delta batches) binds. None: the bind host, a port the OS
    picks; peers learn it from the handshake and the member record, never by convention."""

    secret_key: str | None = None
    """Path of this node's CurveZMQ ``.key_secret`` file (``crdtstore keygen``). With it,
    every socket is encrypted and only keys found in ``keys_dir`` may connect."""

    keys_dir: str | None = None
    """Directory of allowed members' public ``.key`` files (the ZAP allow-list)."""

    sync_tick_ms: int = 50
    """How often the replicator ticks the sync engine (digests, repair timers) and looks
    for commits made by other processes sharing the directory. Commits of this process
    are published at once, not on this tick."""

    publish_interval_ms: int = 5
    """Own commits are published at most this often. Commits made in between travel as one
    frame per namespace, so a busy writer costs its peers fewer (durable) batch applies,
    for at most this much added latency. An idle node publishes a commit at once."""

    poll_ms: int = 50
    """Longest the replicator thread blocks on the transport before checking its timers."""

    heartbeat_interval_ms: int = 500
    """How often a node publishes a heartbeat and the failure detector ticks."""

    suspect_after_ms: int = 2_000
    """Silence after which a member is suspected. Lifeguard-style: stretched while this
    node itself is falling behind, so an overloaded node does not accuse healthy ones."""

    dead_after_ms: int = 6_000
    """How long a member stays suspect without refuting before it is declared dead (so
    a silent member is dead after ``suspect_after_ms + dead_after_ms``, both stretched by
    Lifeguard's local health while this node itself runs late)."""

    hello_interval_ms: int = 1_000
    """How often a node with no known peer greets its seeds again."""

    prune_after_ms: int = 24 * 3600 * 1000
    """A member that left, or has been dead this long, is removed from the member set."""

    member_view_interval_ms: int = 1_000
    """The role holder writes its failure detector's view into the directory (for every
    process sharing it: ``members()``, ``watch_members()``, tooz) at once on each status
    change, and at least this often otherwise (last-heard times, and a stamp that tells
    readers the view is current; one older than three intervals reads as stale)."""

    overlay: bool = False
    """Membership over a partial-view overlay (HyParView neighbours, probing, gossip;
    :mod:`crdtstore.membership.protocol`) instead of every node connecting to, and
    hearing the heartbeats of, every other: connections and idle cost per node stay flat
    as the cluster grows, and deltas reach non-neighbours relayed by neighbours. Every
    node of a cluster must use the same mode."""

    leave_on_terminate: bool = False
    """``crdtstore serve`` only: SIGTERM announces a graceful leave (peers see ``left`` at
    once) before stopping. False (the default): a stop is a restart to be, peers see the
    node suspect, then dead, until it returns with a higher incarnation."""

    status_interval_ms: int = 1_000
    """How often the node with the network role writes ``status.json`` (members, per-peer
    lag, counters) into its directory for ``crdt-inspect DIR status``."""

    partition_file: str | None = None
    """TEST HOOK: a file of node ids, one per line, polled every heartbeat; while a peer is
    listed, every frame to or from it is dropped (a network partition between processes)."""

    drop_publish_fraction: float = 0.0
    """TEST HOOK: drop this fraction of outgoing PUB frames so tests exercise repair."""

    extra: Mapping[str, Any] = field(default_factory=dict)
    """Options for the sync engine (any ``SyncSettings`` field) and the transport (any
    ``TransportSettings`` field), passed through by name and validated by those layers."""

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidValue(f"setting {name}={value!r} must be a positive int")

        for f in dataclasses.fields(self):
            if f.name not in NOT_COUNTS:
                positive(f.name)
        if self.topics is not None and not valid_topics(self.topics):
            raise InvalidValue(
                f"setting topics={self.topics!r} must be a list of non-empty namespace names"
            )
        for name in ("role_standby", "leave_on_terminate", "overlay"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValue(f"setting {name}={getattr(self, name)!r} must be true or false")
        if self.pub_bind is not None:
            check_bind(self.pub_bind, "pub_bind")
        for name in ("pub_bind", "secret_key", "keys_dir", "partition_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidValue(f"setting {name}={value!r} must be a string")
        if (self.secret_key is None) != (self.keys_dir is None):
            raise InvalidValue("settings secret_key and keys_dir go together (CurveZMQ)")
        if not 0.0 <= self.drop_publish_fraction <= 1.0:
            raise InvalidValue("setting drop_publish_fraction must be in [0, 1]")
        if self.durability not in ("sync", "async"):
            raise InvalidValue(f"setting durability={self.durability!r}: use 'sync' or 'async'")
        if self.map_size > self.max_map_size:
            raise InvalidValue(
                f"setting map_size={self.map_size} exceeds max_map_size={self.max_map_size}"
            )
        if self.max_key_bytes > LMDB_MAX_KEY - ROW_KEY_OVERHEAD:
            raise InvalidValue(
                f"setting max_key_bytes={self.max_key_bytes} exceeds the LMDB bound "
                f"{LMDB_MAX_KEY - ROW_KEY_OVERHEAD}"
            )
        if self.max_value_depth > MAX_VALUE_DEPTH:
            raise InvalidValue(
                f"setting max_value_depth={self.max_value_depth} exceeds {MAX_VALUE_DEPTH}"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> NodeSettings:
        """Settings from a dict (keyword arguments, a TOML table); unknown names raise."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        passthrough = layer_options()
        unknown = sorted(set(options) - known - passthrough)
        if unknown:
            raise InvalidValue(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known | passthrough))}"
            )
        mine = {k: v for k, v in options.items() if k in known}
        if mine.get("topics") is not None and not isinstance(mine["topics"], str):
            mine["topics"] = tuple(mine["topics"])
        extra = {k: v for k, v in options.items() if k in passthrough}
        return cls(**mine, extra=extra)


NOT_COUNTS = frozenset(
    {
        "durability",
        "extra",
        "topics",
        "pub_bind",
        "secret_key",
        "keys_dir",
        "partition_file",
        "drop_publish_fraction",
        "role_standby",
        "leave_on_terminate",
        "overlay",
    }
)


def valid_topics(topics: object) -> bool:
    return isinstance(topics, tuple) and all(
        isinstance(t, str) and t and not t.startswith("\x00") for t in topics
    )


def layer_options() -> frozenset[str]:
    """Names of the sync engine's and the transport's settings, accepted as pass-through."""
    from crdtstore.sync.settings import SyncSettings
    from transport import TransportSettings

    names = {f.name for f in dataclasses.fields(SyncSettings)}
    names |= {f.name for f in dataclasses.fields(TransportSettings)}
    return frozenset(names - {"max_clock_drift_ms", "drop_publish_fraction"})
