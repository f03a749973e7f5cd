"""Every tunable of a node: one tree of frozen dataclasses with documented defaults.

:class:`NodeSettings` holds the node's own settings (storage, API, network identity, the
replicator's timers) and one typed sub-settings object per layer: ``sync``
(:class:`~crdtstore.sync.settings.SyncSettings`), ``transport``
(:class:`transport.TransportSettings`) and ``membership``
(:class:`~crdtstore.membership.settings.MembershipSettings`).

``crdtstore.open(path, **options)``, ``crdtstore serve`` and the TOML configuration file
all name settings flat (``suspect_after_ms``, not ``membership.suspect_after_ms``) and build
a :class:`NodeSettings` through :meth:`NodeSettings.from_mapping`, which routes each name
to the one place it is defined and rejects unknown names, so a misspelt option fails
loudly instead of being ignored.

Invariants: a flat name is defined in exactly one place of the tree (``flat_names`` checks
it), so it is never ambiguous; each limit is a named field, never a literal in the middle
of the code; a bad value raises :class:`~crdtstore.errors.InvalidValue` naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from crdtstore.addresses import check_bind
from crdtstore.codec import MAX_VALUE_DEPTH
from crdtstore.errors import InvalidValue
from crdtstore.membership.settings import MembershipSettings
from crdtstore.sync.settings import SyncSettings
from transport.settings import TransportSettings

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

    watch_poll_interval_ms: int = 50
    """How often a node's watcher thread polls the change journal for commits made by
    other processes sharing the directory (commits of this process wake it at once), and
    how often ``watch_members`` reads the directory's member view."""

    journal_max_entries: int = 10_000
    """Most commits kept in the change journal. A watcher that falls further behind than
    the journal holds (this, ``journal_max_bytes`` or ``journal_max_age_ms``, whichever
    binds first) skips the trimmed commits (counted in ``stats["journal_overrun"]``)."""

    journal_max_bytes: int = 4 * 1024 * 1024
    """Most bytes of pages the change journal holds (as LMDB counts them, so this bounds
    its share of the file): commits of many events hold more per commit than the count
    bound assumes. Watchers poll every ``watch_poll_interval_ms``; this is seconds of
    history at the fastest write rates, which is all they need."""

    log_max_bytes: int = 8 * 1024 * 1024
    """Most bytes of pages the delta log holds (as LMDB counts them). Logged batches serve
    peers' repairs; past this the oldest of the namespace being written go, whatever
    peers have acknowledged, and a peer that still needed them reconciles by ranges
    instead. (The sync engine's ``max_log_batches`` bounds each namespace by count, and
    peers' acknowledgements trim sooner, where a replicator runs.)"""

    journal_max_age_ms: int = 3_600_000
    """Commits older than this leave the change journal (an hour: a journal of a quiet
    node holds no old changes forever)."""

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
    """How often the replicator ticks the sync engine while it has timed work under way
    (repairs, range sessions, held batches, or frames received since the last tick). A
    quiet engine is ticked at its next digest only. Commits of this process are
    published at once, not on this tick."""

    publish_interval_ms: int = 5
    """Own commits are published at most this often. Commits made in between travel as one
    frame per namespace, so a busy writer costs its peers fewer (durable) batch applies,
    for at most this much added latency. An idle node publishes a commit at once."""

    poll_ms: int = 50
    """How often the replicator looks for commits made by other processes sharing the
    directory (one read of LMDB's last transaction id; their batches are published
    within this long). Otherwise it waits for a delivery, a wake or its next timer."""

    leave_on_terminate: bool = False
    """``crdtstore serve`` only: SIGTERM announces a graceful leave (peers see ``left`` at
    once) before stopping. False (the default): a stop is a restart to be, peers see the
    node suspect, then dead, until it returns with a higher incarnation."""

    status_interval_ms: int = 1_000
    """How often the node with the network role writes ``status.json`` (members, per-peer
    lag, counters) into its directory for ``crdt-inspect DIR status``."""

    # -- the layers' own settings (each flat name of theirs is a name of ``open`` too) ----

    sync: SyncSettings = field(default_factory=SyncSettings)
    """The sync engine's limits and intervals (digests, repair, range reconciliation, the
    causal buffer, ``max_clock_drift_ms``), see :class:`~crdtstore.sync.settings.SyncSettings`."""

    transport: TransportSettings = field(default_factory=TransportSettings)
    """Socket limits and timers, see :class:`transport.TransportSettings`."""

    membership: MembershipSettings = field(default_factory=MembershipSettings)
    """Heartbeats, suspicion, pruning, see
    :class:`~crdtstore.membership.settings.MembershipSettings`."""

    @property
    def max_clock_drift_ms(self) -> int:
        """The one bound on a remote timestamp's lead (defined in ``SyncSettings``): the
        engine, the replica's receive path and the clock check all read it."""
        return self.sync.max_clock_drift_ms

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidValue(f"setting {name}={value!r} must be a positive int")

        for f in dataclasses.fields(self):
            if f.name not in NOT_COUNTS:
                positive(f.name)
        check_layer(self.sync, SyncSettings, positive=False)
        check_layer(self.membership, MembershipSettings, positive=True)
        if not self.membership.overlay:
            raise InvalidValue(FULL_MESH_REMOVED)
        if not isinstance(self.transport, TransportSettings):
            raise InvalidValue(f"setting transport={self.transport!r} must be TransportSettings")
        if self.topics is not None and not valid_topics(self.topics):
            raise InvalidValue(
                f"setting topics={self.topics!r} must be a list of non-empty namespace names"
            )
        for name in ("role_standby", "leave_on_terminate"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValue(f"setting {name}={getattr(self, name)!r} must be true or false")
        if self.pub_bind is not None:
            check_bind(self.pub_bind, "pub_bind")
        for name in ("pub_bind", "secret_key", "keys_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidValue(f"setting {name}={value!r} must be a string")
        if (self.secret_key is None) != (self.keys_dir is None):
            raise InvalidValue("settings secret_key and keys_dir go together (CurveZMQ)")
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
        """Settings from flat names (keyword arguments, a TOML table): each name of a
        layer's settings goes to that layer's sub-settings; unknown names raise."""
        routes = flat_names()
        unknown = sorted(set(options) - set(routes))
        if unknown:
            raise InvalidValue(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(routes))}"
            )
        parts: dict[str, dict[str, Any]] = {layer: {} for layer in LAYERS}
        mine: dict[str, Any] = {}
        for name, value in options.items():
            layer = routes[name]
            if layer is not None and isinstance(value, list):
                value = tuple(value)  # a TOML array, for a tuple field
            (mine if layer is None else parts[layer])[name] = value
        if mine.get("topics") is not None and not isinstance(mine["topics"], str):
            mine["topics"] = tuple(mine["topics"])
        built: dict[str, Any] = {}
        for layer, kind in LAYERS.items():
            try:
                built[layer] = kind(**parts[layer])
            except ValueError as exc:  # TransportSettings' own checks
                raise InvalidValue(f"setting {exc}") from None
        return cls(**mine, **built)


FULL_MESH_REMOVED = (
    "setting overlay=False: the full-mesh membership mode was removed in this release; "
    "membership always runs over the overlay (drop the setting, or set overlay = true). "
    "To upgrade a full-mesh cluster, first move it to the overlay on v0.2.0 (restart each "
    "node there without --full-mesh / overlay = false, see the README, 'Upgrading a "
    "full-mesh cluster'), then upgrade its nodes to this release one at a time"
)
"""Why ``overlay = false`` is refused, and the way out."""


LAYERS: dict[str, type[Any]] = {
    "sync": SyncSettings,
    "transport": TransportSettings,
    "membership": MembershipSettings,
}
"""The sub-settings of a node, by field name of :class:`NodeSettings`."""

NOT_COUNTS = frozenset(
    {
        "durability",
        "topics",
        "pub_bind",
        "secret_key",
        "keys_dir",
        "role_standby",
        "leave_on_terminate",
        *LAYERS,
    }
)


def valid_topics(topics: object) -> bool:
    return isinstance(topics, tuple) and all(
        isinstance(t, str) and t and not t.startswith("\x00") for t in topics
    )


def flat_names() -> dict[str, str | None]:
    """Every flat setting name -> the sub-settings holding it (None: NodeSettings itself).
    The layers' names never collide (checked here), so a flat name is never ambiguous."""
    routes: dict[str, str | None] = {
        f.name: None for f in dataclasses.fields(NodeSettings) if f.name not in LAYERS
    }
    for layer, kind in LAYERS.items():
        for f in dataclasses.fields(kind):
            if f.name in routes:
                raise AssertionError(f"setting {f.name} is defined twice ({layer})")
            routes[f.name] = layer
    return routes


def check_layer(value: object, kind: type[Any], positive: bool) -> None:
    """A layer's settings are of its class, and each field of the type its default has:
    ints (not bools) >= 0 (> 0 with ``positive``), bools, tuples of strings."""
    if not isinstance(value, kind):
        raise InvalidValue(f"settings {value!r} must be {kind.__name__}")
    default = kind()
    for f in dataclasses.fields(kind):
        got, want = getattr(value, f.name), getattr(default, f.name)
        if isinstance(want, bool):
            ok = isinstance(got, bool)
            rule = "true or false"
        elif isinstance(want, int):
            ok = isinstance(got, int) and not isinstance(got, bool) and got >= int(positive)
            rule = "a positive int" if positive else "an int >= 0"
        else:
            ok = isinstance(got, tuple) and all(isinstance(v, str) for v in got)
            rule = "a list of strings"
        if not ok:
            raise InvalidValue(f"setting {f.name}={got!r} must be {rule}")
