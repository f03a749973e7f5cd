"""The chaos history files: invokes paired with their completions, across processes."""

from __future__ import annotations

from pathlib import Path

from chaos.history import ADD, PUT, REMOVE, HistoryWriter, read_history


def test_each_invoke_pairs_with_its_completion_and_one_cut_short_is_info(tmp_path: Path) -> None:
    first = HistoryWriter(tmp_path / "c1.0.jsonl", "c1.0", "n1")
    first.invoke(1, ADD, "c1.0:1", None, observed=False)
    first.ok(1)
    first.invoke(2, PUT, "s0", "c1.0:2", observed=False)
    first.fail(2, "StorageError: full")
    first.invoke(3, REMOVE, "c1.0:1", None, observed=True)  # then SIGKILL: no completion
    first.close()
    second = HistoryWriter(tmp_path / "c1.1.jsonl", "c1.1", "n1")
    second.invoke(1, ADD, "c1.1:1", None, observed=False)
    second.ok(1)
    second.close()
    with (tmp_path / "c1.1.jsonl").open("a") as fh:
        fh.write('{"type": "inv')  # what the format never produces, counted if it did

    history = read_history(tmp_path)
    by_id = {(op.process, op.n): op for op in history.ops}
    assert [op.process for op in history.ops] == ["c1.0", "c1.0", "c1.0", "c1.1"]
    assert by_id["c1.0", 1].acked and by_id["c1.0", 1].complete_wall is not None
    assert by_id["c1.0", 2].outcome == "fail" and by_id["c1.0", 2].error == "StorageError: full"
    cut = by_id["c1.0", 3]
    assert (cut.outcome, cut.complete_wall, cut.observed) == ("info", None, True)
    assert by_id["c1.1", 1].acked
    assert history.torn_lines == 1
