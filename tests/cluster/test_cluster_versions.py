"""Protocol versions between real processes: nodes of earlier releases (tags v0.1.0, the
release before versions, and v0.2.0, the overlay's flooding relay; checked out of this
repository) beside nodes of this tree, and a stranger whose hello shares no version with
them."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zmq
from cluster_support import WRITER, Cluster, ServeNode, wait_until

from crdtstore.membership.messages import Hello
from crdtstore.membership.versions import spoken
from crdtstore.sync.messages import RepairRequest, encode_message
from transport import routing_id

REPO = Path(__file__).resolve().parents[2]
OLD_TAG = "v0.1.0"
FLOOD_TAG = "v0.2.0"


def exported(tag: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source tree of ``tag``, exported into a temporary directory."""
    git = shutil.which("git")
    if git is None:
        pytest.skip(f"git is not installed: cannot check out {tag}")
    found = subprocess.run(
        [git, "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"tag {tag} is not in {REPO} (not a git clone, or cloned without tags)")
    tar = subprocess.run(
        [git, "-C", str(REPO), "archive", "--format=tar", tag], capture_output=True, check=True
    )
    root = tmp_path_factory.mktemp(f"tree-{tag}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(OLD_TAG, tmp_path_factory)


@pytest.fixture(scope="module")
def flood_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(FLOOD_TAG, tmp_path_factory)


def old_env(tree: Path) -> list[str]:
    """``env`` arguments that make this venv's python import the old tree's packages:
    PYTHONSAFEPATH keeps the working directory (this tree, in a test run) off sys.path."""
    return ["env", "PYTHONSAFEPATH=1", f"PYTHONPATH={tree}"]


class OldServeNode(ServeNode):
    """``crdtstore serve`` of the old tree, with this venv's interpreter and libraries;
    read and written through the old tree's own tools."""

    def __init__(self, tree: Path, *args: Any) -> None:
        super().__init__(*args)
        self.tree = tree

    def command(self) -> list[str]:
        return [*old_env(self.tree), *super().command()]

    def dump(self, namespace: str) -> list[dict[str, Any]]:
        base = [*old_env(self.tree), sys.executable, "-m", "crdtstore.inspect", "--json"]
        summary = json.loads(subprocess.check_output([*base, str(self.data)], timeout=60))
        if namespace not in summary["namespaces"]:
            return []
        out = subprocess.check_output([*base, str(self.data), "dump", namespace], timeout=60)
        entries: list[dict[str, Any]] = json.loads(out)["entries"]
        return entries

    def write(self, ns: str, prefix: str, count: int) -> None:
        cmd = [*old_env(self.tree), sys.executable, str(WRITER), str(self.data), "put", ns]
        out = subprocess.run([*cmd, prefix, str(count)], capture_output=True, text=True)
        assert out.stdout.count("ACK ") == count, out.stderr


def write(node: ServeNode, ns: str, prefix: str, count: int) -> None:
    cmd = [sys.executable, str(WRITER), str(node.data), "put", ns, prefix, str(count)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.stdout.count("ACK ") == count, out.stderr


def keys(node: ServeNode, ns: str) -> dict[str, Any]:
    return {e["key"]: e["value"] for e in node.dump(ns)}


def sees_alive(node: ServeNode, others: list[ServeNode]) -> bool:
    seen = node.member_status()
    return all(seen.get(o.name, ("", 0))[0] == "alive" for o in others)


def test_a_node_of_the_previous_release_and_this_one_replicate_both_ways(
    cluster: Cluster, old_tree: Path
) -> None:
    old = OldServeNode(old_tree, cluster.root, "old", [])
    cluster.nodes.append(old.start())
    # This tree joins through the old node (the rolling upgrade's case: the old node
    # refuses the hello with versions, and must still hear the one without), and a
    # second old node joins through the new one.
    # The previous release knows only the full mesh (heartbeats, every node connected to
    # every node): an upgrade from it runs this tree in that mode too.
    new = cluster.add("new", seeds=[old.bind], overlay=False)
    old2 = OldServeNode(old_tree, cluster.root, "old2", [new.bind])
    cluster.nodes.append(old2.start())
    nodes = [old, new, old2]
    for node in nodes:
        wait_until(
            lambda n=node: sees_alive(n, [o for o in nodes if o is not n]),  # type: ignore[misc]
            f"{node.name} sees the others alive",
        )
    old.write("cfg", "o", 20)
    write(new, "cfg", "n", 20)
    old2.write("cfg", "p", 20)
    want = {f"{p}{i}": f"{p}{i}" for p in "onp" for i in range(20)}
    for node in nodes:
        wait_until(lambda n=node: keys(n, "cfg") == want, f"{node.name} holds every write")  # type: ignore[misc]

    status = new.status()
    assert status is not None
    assert status["protocol_versions"] == {"old": 1, "old2": 1}
    # Digests to version-1 peers stay in the form they read: they decoded every frame.
    for node in (old, old2):
        old_status = node.status()
        assert old_status is not None
        assert "protocol_versions" not in old_status, "the old tree must be what runs"
        assert old_status["sync"].get("decode_errors", 0) == 0, old_status["sync"]
    # The seed got the hello with versions first and refused it: the copy without them
    # is what let the new node in.
    old_status = old.status()
    assert old_status is not None and old_status["replicator"]["rejected_membership"] >= 1
    assert status["sync"].get("decode_errors", 0) == 0, status["sync"]


def test_overlay_nodes_of_the_flooding_release_and_this_one_replicate_both_ways(
    cluster: Cluster, flood_tree: Path
) -> None:
    """The overlay's upgrade from v0.2.0 (version 3: every batch flooded on the
    namespace's topic) to this tree (version 4: relayed along a tree on publisher-named
    topics), one node at a time: a new node links to an old one in the old form, to a new
    one in the new, and every write reaches every node whichever way it has to cross."""
    old = OldServeNode(flood_tree, cluster.root, "old", [])
    cluster.nodes.append(old.start())
    new = cluster.add("new", seeds=[old.bind])
    old2 = OldServeNode(flood_tree, cluster.root, "old2", [new.bind])
    cluster.nodes.append(old2.start())
    new2 = cluster.add("new2", seeds=[old2.bind])
    nodes = [old, new, old2, new2]
    for node in nodes:
        wait_until(
            lambda n=node: sees_alive(n, [o for o in nodes if o is not n]),  # type: ignore[misc]
            f"{node.name} sees the others alive",
        )
    old.write("cfg", "o", 20)
    write(new, "cfg", "n", 20)
    old2.write("cfg", "p", 20)
    write(new2, "cfg", "q", 20)
    want = {f"{p}{i}": f"{p}{i}" for p in "onpq" for i in range(20)}
    for node in nodes:
        wait_until(lambda n=node: keys(n, "cfg") == want, f"{node.name} holds every write")  # type: ignore[misc]
    for node in (new, new2):
        status = node.status()
        assert status is not None
        versions = status["protocol_versions"]
        assert {n: v for n, v in versions.items() if n.startswith("old")} == {"old": 3, "old2": 3}
        assert versions.get("new" if node is new2 else "new2", 4) == 4
        assert status["sync"].get("decode_errors", 0) == 0, status["sync"]
        assert "Traceback" not in node.log.read_text()
    for node in (old, old2):
        assert "Traceback" not in node.log.read_text()


def test_a_hello_with_no_common_version_is_refused_and_logged(cluster: Cluster) -> None:
    [n1] = cluster.start(1)
    status = n1.status() or wait_until(n1.status, "n1 wrote its status")
    router = status["router"]
    ctx = zmq.Context()
    try:
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        evil_pub = f"tcp://127.0.0.1:{xpub.bind_to_random_port('tcp://127.0.0.1')}"
        prober = ctx.socket(zmq.DEALER)
        prober.setsockopt(zmq.IDENTITY, routing_id.for_connection(b"future"))
        prober.setsockopt(zmq.LINGER, 0)
        prober.connect(router)
        hello = Hello(
            "future",
            "tcp://127.0.0.1:9",
            evil_pub,
            None,
            reply=False,
            incarnation=1,
            topics=None,
            started_at_ms=1,
            clock_ms=1,
            versions=(99, 100),
        )
        for _ in range(3):
            prober.send(b"M" + encode_message(hello))
        wait_until(lambda: n1.counter("replicator", "refused_versions") == 3, "3 hellos refused")
        # Its frames are ignored: a repair request gets no answer, and is counted.
        prober.send(b"S" + encode_message(RepairRequest(1, "__members", "n1", 1, 1)))
        wait_until(
            lambda: n1.counter("replicator", "refused_version_frames") == 1, "the frame ignored"
        )
        assert not prober.poll(0), "a refused peer was answered"
        assert not xpub.poll(0), "n1 subscribed to a refused peer's PUB"
        status = n1.status()
        assert status is not None
        assert status["protocol_versions"] == {"future": None}
        assert [m["node_id"] for m in status["members"]] == ["n1"]
    finally:
        ctx.destroy(linger=0)
    lines = [line for line in n1.log.read_text().splitlines() if "refusing member" in line]
    assert len(lines) == 1, lines  # rate-limited: three hellos, one line
    versions = ", ".join(map(str, spoken(status["overlay"] is not None)))
    assert "future" in lines[0] and "[99, 100]" in lines[0] and f"[{versions}]" in lines[0]
    assert n1.alive() and "Traceback" not in n1.log.read_text()


def test_two_nodes_of_this_tree_agree_on_hashed_digests(cluster: Cluster) -> None:
    n1, n2 = cluster.start(2)
    wait_until(lambda: cluster.all_members_alive(2), "both see each other alive")
    write(n1, "cfg", "k", 5)
    wait_until(lambda: keys(n2, "cfg") == {f"k{i}": f"k{i}" for i in range(5)}, "n2 has n1's")
    for node, other in ((n1, n2), (n2, n1)):
        wait_until(
            lambda n=node: n.counter("sync", "digests_sent_hashed") >= 3,  # type: ignore[misc]
            f"{node.name} publishes hashed digests",
        )
        status = node.status()
        assert status is not None
        assert status["protocol_versions"] == {
            other.name: max(spoken(status["overlay"] is not None))
        }
        assert status["sync"].get("decode_errors", 0) == 0


def test_nodes_of_the_two_membership_modes_refuse_each_other_and_both_say_why(
    cluster: Cluster,
) -> None:
    """A full-mesh node seeded at an overlay node, and an overlay node seeded at the
    full-mesh one: each hello is refused, counted and logged on both sides (the refuser
    answers with its own hello), no link is made and nothing replicates across."""
    overlay = cluster.add("ov", seeds=[], overlay=True)
    mesh = cluster.add("mesh", seeds=[overlay.bind], overlay=False)
    joiner = cluster.add("ov2", seeds=[mesh.bind], overlay=True)
    write(mesh, "cfg", "m", 3)
    write(overlay, "cfg", "o", 3)
    for node, minimum in ((overlay, 1), (mesh, 2), (joiner, 1)):
        wait_until(
            lambda n=node, k=minimum: n.counter("replicator", "refused_membership_mode") >= k,  # type: ignore[misc]
            f"{node.name} refused the other mode",
        )
    for node in (overlay, mesh, joiner):
        lines = [x for x in node.log.read_text().splitlines() if "refusing member" in x]
        assert lines and all("membership mode" in x for x in lines), lines
        assert "Traceback" not in node.log.read_text()
        status = node.status()
        assert status is not None
        assert [m["node_id"] for m in status["members"]] == [node.name], status["members"]
    named = "\n".join(mesh.log.read_text().splitlines())
    assert "refusing member ov:" in named and "refusing member ov2:" in named
    assert keys(mesh, "cfg") == {f"m{i}": f"m{i}" for i in range(3)}
    assert keys(overlay, "cfg") == {f"o{i}": f"o{i}" for i in range(3)}
    assert (overlay.status() or {}).get("overlay", {}).get("neighbours") == []


def test_a_full_mesh_cluster_moved_to_the_overlay_node_by_node_converges(
    cluster: Cluster,
) -> None:
    """The README's rolling path: each node restarted in the overlay mode, seeded at one
    moved before it; writes made on either side meanwhile are everywhere once the last
    node has moved, and every node sees every other alive."""
    nodes = cluster.start(3, overlay=False, status_interval_ms=200)
    wait_until(lambda: cluster.all_members_alive(3), "the full mesh formed")
    write(nodes[0], "cfg", "before", 5)
    wait_until(lambda: all(len(keys(n, "cfg")) == 5 for n in nodes), "the mesh replicated")
    moved: list[ServeNode] = []
    for i, node in enumerate(nodes):
        assert node.stop() == 0
        node.config["overlay"] = True
        node.seeds = [moved[-1].bind] if moved else []
        node.start()
        moved.append(node)
        write(node, "cfg", f"during{i}-", 3)  # in the new mode, before the rest have moved
        if i == 0:
            write(nodes[2], "cfg", "mesh-side", 2)  # and on the side still in the old one
    want = {f"before{i}": f"before{i}" for i in range(5)}
    want.update({f"during{i}-{j}": f"during{i}-{j}" for i in range(3) for j in range(3)})
    want.update({f"mesh-side{j}": f"mesh-side{j}" for j in range(2)})
    for node in nodes:
        wait_until(lambda n=node: keys(n, "cfg") == want, f"{node.name} holds every write")  # type: ignore[misc]
    wait_until(lambda: cluster.all_members_alive(3), "all alive in the overlay mode")
    for node in nodes:
        status = node.status()
        assert status is not None and status["overlay"] is not None
        assert "Traceback" not in node.log.read_text()
