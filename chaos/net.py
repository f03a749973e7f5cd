"""The chaos network: a namespace per node, each joined by a veth pair to a bridge in a hub
namespace, and every network fault built from what this kernel offers.

The kernel has no netem and no ``gact`` (so no ``action drop``), but it has HTB, u32,
classic-BPF classifiers, ``mirred`` and TAP devices. Each fault is made of those:

- **drop**: an HTB class (``1:20``) on each node's ``eth0`` whose leaf is a ``pfifo`` of
  ``limit 0``: every packet classified there is dropped at enqueue.
- **partition**: u32 filters on each node's egress, matching the blocked peers' addresses,
  classify into the drop class. Both sides get the filter, so a cut is symmetric. Only IP
  is blocked: ARP keeps flowing, so a heal is not slowed by neighbour discovery.
- **loss**: a classic-BPF classifier (``tc ... bpf bytecode``) loads the kernel's
  per-packet random number (``SKF_AD_RANDOM``) and matches below a threshold, into the
  drop class.
- **duplication**: the same random classifier on the node's hub port, on ingress, with
  ``mirred egress mirror`` to every other hub port: the destination gets the copy and the
  original (the bridge forwards that one), the others drop a frame not addressed to them.
- **delay and reordering**: the random classifier on the hub port redirects the picked
  frames to a TAP device on the bridge, read by :mod:`chaos.delayer`, which holds each for
  a seeded random time and writes it back into the bridge. Frames not picked overtake the
  held ones, so a stream is both delayed and reordered. The TAP port learns no addresses
  and gets no flooded frames, so only the redirected frames ever reach the delay line.

Every name of a run starts with its prefix (``cx<pid>-<run>``), so parallel runs never
collide, and :func:`remove_stale` can delete what a killed run left behind. Addresses come
from a private /24 that exists only inside the run's namespaces.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SUBNET = "10.201.0"
"""The /24 of every run. Each run has its own bridge, so runs share it without meeting."""
NODE_IF = "eth0"
BRIDGE = "br0"
DELAY_TAP = "dly0"
DROP_CLASS = "1:20"
PASS_CLASS = "1:10"
PARTITION_PRIO = 10
LOSS_PRIO = 20
DUPLICATE_PRIO = 1
DELAY_PRIO = 2
ACTION_FAULTS = {DUPLICATE_PRIO: "duplicated", DELAY_PRIO: "delayed"}
HTB_QUANTUM = 60_000  # explicit, so tc does not warn that 10gbit's derived quantum is big

# Classic BPF (linux/filter.h): a packet's random number is an ancillary load at
# SKF_AD_OFF + SKF_AD_RANDOM; the opcodes are BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JGE|BPF_K
# and BPF_RET|BPF_K. cls_bpf reads a return of 0 as "no match" and -1 as "match, with the
# filter's classid".
SKF_AD_RANDOM = 0xFFFFF000 + 56
BPF_LD_ABS_W = 0x20
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
BPF_MATCH = 0xFFFFFFFF

STALE = re.compile(r"^cx(\d+)-\d+-")


class NetError(RuntimeError):
    """A network set-up command failed; the message holds the command and its stderr."""


def run(args: Sequence[str], stdin: str | None = None) -> str:
    out = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        shown = " ".join(args) + (f" <<< {stdin.strip()}" if stdin else "")
        raise NetError(f"{shown}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def random_match(probability: float) -> str:
    """A cls_bpf classic program (tc's ``bytecode`` syntax) matching each packet with
    ``probability``, drawn by the kernel per packet."""
    if probability >= 1.0:
        program = [(BPF_RET_K, 0, 0, BPF_MATCH)]
    else:
        threshold = max(0, int(probability * 2**32))
        program = [
            (BPF_LD_ABS_W, 0, 0, SKF_AD_RANDOM),
            (BPF_JGE_K, 1, 0, threshold),  # at or above the threshold: to "no match"
            (BPF_RET_K, 0, 0, BPF_MATCH),
            (BPF_RET_K, 0, 0, 0),
        ]
    return f"{len(program)}," + ",".join(f"{c} {jt} {jf} {k}" for c, jt, jf, k in program)


def netns_available() -> str | None:
    """Why this machine cannot run the chaos suite, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and tc)"
    for tool in ("ip", "tc"):
        try:
            run([tool, "-V"])
        except (OSError, NetError) as exc:
            return f"`{tool}` is unavailable: {exc}"
    probe = f"cx{os.getpid()}-0-probe"
    try:
        run(["ip", "netns", "add", probe])
        run(["ip", "netns", "del", probe])
    except (OSError, NetError) as exc:
        return f"`ip netns` does not work here: {exc}"
    return None


def remove_stale() -> list[str]:
    """Delete the namespaces of runs whose process is gone (a SIGKILLed run cannot clean
    up after itself); returns their names."""
    removed = []
    for line in run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.strip() else ""
        found = STALE.match(name)
        if found is None or os.path.exists(f"/proc/{found.group(1)}"):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        removed.append(name)
    return removed


@dataclass
class Topology:
    """The namespaces, links and installed faults of one run."""

    prefix: str
    count: int
    created: list[str] = field(default_factory=list)
    filters: set[tuple[str, str, str, int]] = field(default_factory=set)
    """(namespace, device, parent, prio) of every fault filter now installed."""
    acted: Counter[str] = field(default_factory=Counter)
    """Packets the removed filters with actions acted on, by fault: evidence that the
    duplication and delay faults did something (their counts go with the filters)."""

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def port(self, i: int) -> str:
        """Node ``i``'s veth end on the bridge, in the hub namespace."""
        return f"p{i}"

    def nodes(self) -> range:
        return range(1, self.count + 1)

    # -- set-up and tear-down ----------

    def create(self) -> None:
        self._add_ns(self.hub)
        hub = [f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up", "link set lo up"]
        run(["ip", "-n", self.hub, "-batch", "-"], "\n".join(hub) + "\n")
        for i in self.nodes():
            ns = self.node_ns(i)
            self._add_ns(ns)
            port = self.port(i)
            run(f"ip -n {self.hub} link add {port} type veth peer {NODE_IF} netns {ns}".split())
            run(f"ip -n {self.hub} link set {port} master {BRIDGE} up".split())
            node = [
                "link set lo up",
                f"addr add {self.address(i)}/24 dev {NODE_IF}",
                f"link set {NODE_IF} up",
            ]
            run(["ip", "-n", ns, "-batch", "-"], "\n".join(node) + "\n")
            # The node's egress: everything passes through 1:10 unless a fault filter
            # classifies it into 1:20, whose zero-length fifo drops it.
            egress = [
                f"qdisc add dev {NODE_IF} root handle 1: htb default 10",
                f"class add dev {NODE_IF} parent 1: classid {PASS_CLASS} htb rate 10gbit"
                f" quantum {HTB_QUANTUM}",
                f"class add dev {NODE_IF} parent 1: classid {DROP_CLASS} htb rate 10gbit"
                f" quantum {HTB_QUANTUM}",
                f"qdisc add dev {NODE_IF} parent {DROP_CLASS} handle 20: pfifo limit 0",
            ]
            run(["tc", "-n", ns, "-batch", "-"], "\n".join(egress) + "\n")
            run(["tc", "-n", self.hub, "qdisc", "add", "dev", self.port(i), "ingress"])

    def _add_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.created.append(name)
        # IPv4 only: the nodes use nothing else, and IPv6's router solicitations and
        # multicast reports would be the only traffic of an idle hub.
        ipv6_off = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        run(["ip", "netns", "exec", name, "sysctl", "-qw", *ipv6_off])

    def attach_delayer(self) -> None:
        """Put the delay line's TAP (created by the delayer process) on the bridge."""
        # Quiet before up: a frame flooded to the TAP would come back as a duplicate.
        run(f"ip -n {self.hub} link set {DELAY_TAP} master {BRIDGE}".split())
        quiet = "learning off flood off mcast_flood off bcast_flood off"
        run(f"ip -n {self.hub} link set {DELAY_TAP} type bridge_slave {quiet}".split())
        run(f"ip -n {self.hub} link set {DELAY_TAP} up".split())

    def destroy(self) -> None:
        """Delete every namespace of the run (their veths and bridge go with them).
        Idempotent; processes must be gone first or the namespaces outlive their names."""
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.created.clear()
        self.filters.clear()

    # -- faults ----------

    def partition(self, blocked: Iterable[tuple[int, int]]) -> None:
        """Cut every pair in ``blocked`` (both directions), replacing any earlier cut."""
        self._clear(PARTITION_PRIO)
        peers: dict[int, set[int]] = {}
        for a, b in blocked:
            peers.setdefault(a, set()).add(b)
            peers.setdefault(b, set()).add(a)
        for i, others in sorted(peers.items()):
            lines = [
                f"filter add dev {NODE_IF} parent 1: protocol ip prio {PARTITION_PRIO} u32"
                f" match ip dst {self.address(j)}/32 flowid {DROP_CLASS}"
                for j in sorted(others)
            ]
            self._install(self.node_ns(i), NODE_IF, "1:", PARTITION_PRIO, lines)

    def loss(self, node: int, probability: float) -> None:
        """Drop ``probability`` of the IP packets ``node`` sends."""
        line = (
            f"filter add dev {NODE_IF} parent 1: protocol ip prio {LOSS_PRIO} bpf bytecode"
            f" '{random_match(probability)}' flowid {DROP_CLASS}"
        )
        self._install(self.node_ns(node), NODE_IF, "1:", LOSS_PRIO, [line])

    def duplicate(self, node: int, probability: float) -> None:
        """Deliver ``probability`` of the IP packets ``node`` sends twice."""
        mirrors = " ".join(
            f"action mirred egress mirror dev {self.port(j)}" for j in self.nodes() if j != node
        )
        line = (
            f"filter add dev {self.port(node)} parent ffff: protocol ip prio {DUPLICATE_PRIO}"
            f" bpf bytecode '{random_match(probability)}' {mirrors}"
        )
        self._install(self.hub, self.port(node), "ffff:", DUPLICATE_PRIO, [line])

    def delay(self, node: int, probability: float) -> None:
        """Send ``probability`` of the IP packets ``node`` sends through the delay line."""
        line = (
            f"filter add dev {self.port(node)} parent ffff: protocol ip prio {DELAY_PRIO}"
            f" bpf bytecode '{random_match(probability)}'"
            f" action mirred egress redirect dev {DELAY_TAP}"
        )
        self._install(self.hub, self.port(node), "ffff:", DELAY_PRIO, [line])

    def heal(self, prios: Iterable[int] | None = None) -> None:
        """Remove the fault filters of ``prios`` (None: every fault)."""
        wanted = None if prios is None else set(prios)
        for ns, dev, parent, prio in sorted(self.filters):
            if wanted is None or prio in wanted:
                self._delete(ns, dev, parent, prio)

    def _clear(self, prio: int) -> None:
        for ns, dev, parent, p in sorted(self.filters):
            if p == prio:
                self._delete(ns, dev, parent, p)

    def _install(self, ns: str, dev: str, parent: str, prio: int, lines: list[str]) -> None:
        if (ns, dev, parent, prio) in self.filters:
            self._delete(ns, dev, parent, prio)
        run(["tc", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n")
        self.filters.add((ns, dev, parent, prio))

    def _delete(self, ns: str, dev: str, parent: str, prio: int) -> None:
        if prio in ACTION_FAULTS:
            shown = run(["tc", "-s", "-n", ns, "filter", "show", "dev", dev, "parent", parent])
            # The first action's count: a duplicating filter mirrors each packet to every
            # other port, one action each, and every one of them sees the same packets.
            sent = re.search(rf"pref {prio} .*?Sent \d+ bytes (\d+) pkt", shown, re.S)
            self.acted[ACTION_FAULTS[prio]] += int(sent.group(1)) if sent else 0
        run(["tc", "-n", ns, "filter", "del", "dev", dev, "parent", parent, "prio", str(prio)])
        self.filters.discard((ns, dev, parent, prio))

    def dropped(self) -> int:
        """Packets the nodes' drop classes have dropped so far (partitions and loss)."""
        total = 0
        for i in self.nodes():
            out = run(["tc", "-n", self.node_ns(i), "-s", "class", "show", "dev", NODE_IF])
            found = re.search(r"class htb 1:20 .*?dropped (\d+)", out, re.S)
            total += int(found.group(1)) if found else 0
        return total
