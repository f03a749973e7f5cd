"""Protocol versions between real processes: nodes of earlier releases (tags v0.1.0, the
release before versions, full mesh only, and v0.2.0, the overlay's flooding relay or its
full mesh; checked out of this repository) beside nodes of this tree, and a stranger
whose hello shares no version with them. This tree runs the overlay alone: a full-mesh
node of either release is refused, with a logged reason naming both modes."""

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
from crdtstore.membership.versions import SPOKEN
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


def refusals_logged(node: ServeNode) -> list[str]:
    return [line for line in node.log.read_text().splitlines() if "refusing member" in line]


def test_a_node_of_v010_is_refused_with_the_modes_named_and_nothing_crosses(
    cluster: Cluster, old_tree: Path
) -> None:
    """v0.1.0 knew only the full mesh (its hellos carry no version list: version 1). Seeded
    at a node of this tree, it greets it every hello interval; each hello is refused,
    counted, and logged (once per log interval) with both modes and the upgrade path; no
    link is made, so neither side's writes reach the other."""
    new = cluster.add("new", seeds=[])
    old = OldServeNode(old_tree, cluster.root, "old", [new.bind])
    cluster.nodes.append(old.start())
    old.write("cfg", "o", 3)
    write(new, "cfg", "n", 3)
    # Three greetings refused: seconds in which, linked, each would have had the other's.
    wait_until(
        lambda: new.counter("replicator", "refused_membership_mode") >= 3,
        "new refused three hellos of the v0.1.0 node",
    )
    [line, *_] = refusals_logged(new)
    assert "refusing member old:" in line and "speaks protocol versions [1]" in line, line
    assert "it runs the full mesh membership mode, this node the overlay one" in line, line
    assert "v0.2.0" in line and "README" in line, line
    status = new.status()
    assert status is not None
    assert status["protocol_versions"] == {"old": None}
    assert [m["node_id"] for m in status["members"]] == ["new"], status["members"]
    assert status["overlay"]["neighbours"] == []
    # Nothing crossed either way.
    assert keys(new, "cfg") == {f"n{i}": f"n{i}" for i in range(3)}
    assert keys(old, "cfg") == {f"o{i}": f"o{i}" for i in range(3)}
    old_status = old.status()
    assert old_status is not None and "protocol_versions" not in old_status  # the old tree
    assert [m["node_id"] for m in old_status["members"]] == ["old"], old_status["members"]
    # Our answer carries the version list, a form v0.1.0 cannot read: refused there too.
    assert old_status["replicator"].get("rejected_membership", 0) >= 1
    for node in (new, old):
        assert node.alive() and "Traceback" not in node.log.read_text()


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
    versions = ", ".join(map(str, SPOKEN))
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
        assert status["protocol_versions"] == {other.name: max(SPOKEN)}
        assert status["sync"].get("decode_errors", 0) == 0


def test_a_full_mesh_node_of_v020_and_this_tree_refuse_each_other_and_say_why(
    cluster: Cluster, flood_tree: Path
) -> None:
    """A v0.2.0 node run with ``overlay = false`` (its full mesh) seeded at a node of this
    tree, and a node of this tree seeded at the full-mesh one: each hello is refused,
    counted and logged on both sides (this tree answers with its own hello, so the
    full-mesh node says why too), no link is made and nothing replicates across. (The
    README's upgrade: move such a cluster to the overlay on v0.2.0 first.)"""
    overlay = cluster.add("ov", seeds=[])
    mesh = OldServeNode(flood_tree, cluster.root, "mesh", [overlay.bind])
    mesh.config["overlay"] = False
    cluster.nodes.append(mesh.start())
    joiner = cluster.add("ov2", seeds=[mesh.bind])
    mesh.write("cfg", "m", 3)
    write(overlay, "cfg", "o", 3)
    wait_until(
        lambda: overlay.counter("replicator", "refused_membership_mode") >= 2,
        "ov refused two greetings of the full-mesh node",
    )
    # v0.2.0 knew the overlay as version 3 alone: to it, [3, 4] is a later build's list,
    # refused as "none in common" (its answer to ov's hello, and ov2's hello to its seed).
    wait_until(lambda: mesh.counter("replicator", "refused_versions") >= 2, "mesh refused ov")
    # The full-mesh seed drops ov2's joins unread and answers its hello with nothing: ov2
    # says that its seed does not answer.
    wait_until(lambda: joiner.counter("liveness", "seed_unanswered") >= 1, "ov2 says why")
    lines = refusals_logged(overlay)
    assert lines and all("refusing member mesh:" in x for x in lines), lines
    assert all("it runs the full mesh membership mode, this node the overlay" in x for x in lines)
    assert all("v0.2.0" in x and "README" in x for x in lines), lines
    named = "\n".join(refusals_logged(mesh))
    assert "refusing member ov:" in named and "speaks protocol versions [3, 4]" in named, named
    assert "has not answered" in joiner.log.read_text()
    for node in (overlay, mesh, joiner):
        assert "Traceback" not in node.log.read_text()
        status = node.status()
        assert status is not None
        assert [m["node_id"] for m in status["members"]] == [node.name], status["members"]
    assert keys(mesh, "cfg") == {f"m{i}": f"m{i}" for i in range(3)}
    assert keys(overlay, "cfg") == {f"o{i}": f"o{i}" for i in range(3)}
    for node in (overlay, joiner):
        assert (node.status() or {}).get("overlay", {}).get("neighbours") == [], node.name
