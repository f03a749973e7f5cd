"""``crdtstore serve`` refusing bad input in one line, ``keygen``, ``--version``."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import pytest
from cli_support import CRDTSTORE, run, run_json

from crdtstore.testing.localcluster import BIN, ServeNode, free_port


@pytest.mark.parametrize(
    ("toml", "flags", "said"),
    [
        ("bind = 'x'\nheartbeat_interval_ms = = 5\n", [], "invalid TOML: Invalid value (at line 3"),
        (None, ["--config", "{tmp}/missing.toml"], "cannot read --config"),
        ("", ["--log-level", "verbose"], "--log-level 'verbose': expected one of DEBUG"),
        ("", ["--log-format", "xml"], "--log-format 'xml': expected one of text, json"),
        ("heartbeat_interval_ms = -5\n", [], "setting heartbeat_interval_ms=-5 must be"),
        ("durability = 'never'\n", [], "durability='never'"),
        ("", ["--metrics-bind", "9100"], "--metrics-bind '9100': expected HOST:PORT"),
        # The full mesh of v0.2.0, by flag or key: refused with the way to upgrade.
        ("", ["--full-mesh"], "--full-mesh: the full-mesh membership mode was removed"),
        ("overlay = false\n", [], "setting overlay=False: the full-mesh membership mode was"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, toml: str | None, flags: list[str], said: str
) -> None:
    data = tmp_path / "d"
    config = tmp_path / "node.toml"
    args = [
        "serve",
        "--bind",
        f"tcp://127.0.0.1:{free_port()}",
        *(f.format(tmp=tmp_path) for f in flags),
    ]
    if toml is not None:
        config.write_text(f'data = "{data}"\n{toml}')
        if "--config" not in flags:
            args += ["--config", str(config)]
    else:
        args += ["--data", str(data)]
    done = run(*args)
    assert done.returncode == 2 and "READY" not in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("crdtstore serve: ") and said in line, line
    if "TOML" in said:
        assert str(config) in line  # the file is named
    if "full-mesh" in said:
        assert "v0.2.0" in line and "README" in line  # how to upgrade such a cluster
    assert not data.exists()


def test_a_taken_metrics_port_fails_the_start_before_the_directory(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "serve", "--data", str(tmp_path / "d"), "--bind", f"tcp://127.0.0.1:{free_port()}",
            "--metrics-bind", f"127.0.0.1:{port}",
        )  # fmt: skip
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "--metrics-bind" in line and "in use" in line, line
    assert not (tmp_path / "d").exists()


def test_a_failed_first_start_does_not_fix_the_node_id(tmp_path: Path) -> None:
    node = ServeNode(tmp_path, "mynode", [])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(node.bind.rsplit(":", 1)[1])))
        taken.listen()
        cmd = node.command()
        at = cmd.index("--node-id")
        del cmd[at : at + 2]  # the first start chooses no id: one is generated
        failed = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "cannot bind" in failed.stderr
    node.start()  # now with --node-id mynode: accepted, the failed start fixed nothing
    try:
        [me] = [m for m in run_json("members", "--data", str(node.data))["members"] if m["is_self"]]
        assert me["node_id"] == "mynode"
    finally:
        assert node.stop() == 0


def test_keygen_writes_the_secret_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    done = run("keygen", str(tmp_path / "keys"), "n1")
    assert done.returncode == 0, done.stderr
    secret = tmp_path / "keys" / "n1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys" / "n1.key").stat().st_mode) & 0o077 == 0o044
    before = secret.read_bytes()
    again = run("keygen", str(tmp_path / "keys"), "n1")
    assert again.returncode == 2 and "exists" in again.stderr
    assert secret.read_bytes() == before


def test_version_of_both_commands() -> None:
    for command in (CRDTSTORE, str(BIN / "crdt-inspect")):
        done = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        name, version = done.stdout.split()
        assert name == Path(command).name and version[0].isdigit()


def test_the_overlay_flag_and_toml_key_of_v020_are_still_accepted(tmp_path: Path) -> None:
    from cli_support import FlaggedNode

    from crdtstore.cli import build_parser, serve_options
    from crdtstore.testing.localcluster import wait_until

    first = ServeNode(tmp_path, "a", [], {"status_interval_ms": 100, "overlay": True})
    second = FlaggedNode(
        tmp_path, "b", [first.bind], {"status_interval_ms": 100}, flags=["--overlay"]
    )
    first.start()
    second.start()
    try:

        def neighbours(node: ServeNode) -> list[str]:
            status = node.status() or {}
            return list((status.get("overlay") or {}).get("neighbours", []))

        wait_until(lambda: neighbours(first) == ["b"] and neighbours(second) == ["a"], "linked")
    finally:
        second.stop()
        first.stop()
    config = tmp_path / "overlay.toml"
    config.write_text("overlay = true\n")
    parser = build_parser()
    args = parser.parse_args(["serve", "--data", "d", "--config", str(config)])
    assert serve_options(args)["overlay"] is True
    args = parser.parse_args(["serve", "--data", "d"])
    assert "overlay" not in serve_options(args)  # the settings' default
