import json

import pytest

from losslab.lab.results import CorruptResultsError, append_row, job_id, read_rows


def _row(i):
    return {"job_id": f"j{i}", "task": "t", "loss": "protonet", "setting": {"shot": 1},
            "seed": i, "metrics": {"acc": 50.0 + i}}


def test_append_and_read(tmp_path):
    p = tmp_path / "results.jsonl"
    assert read_rows(p) == []
    for i in range(3):
        append_row(p, _row(i))
    rows = read_rows(p)
    assert [r["job_id"] for r in rows] == ["j0", "j1", "j2"]
    assert p.read_bytes().endswith(b"\n") and p.read_bytes().count(b"\n") == 3


def test_truncated_last_line_without_newline_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "results.jsonl"
    append_row(p, _row(0))
    append_row(p, _row(1))
    good = p.read_bytes()
    line = (json.dumps(_row(2)) + "\n").encode()
    with open(p, "ab") as f:
        f.write(line[: len(line) // 2])  # a job killed in the middle of its write
    with pytest.warns(RuntimeWarning, match="truncated"):
        rows = read_rows(p)
    assert [r["job_id"] for r in rows] == ["j0", "j1"]
    assert p.read_bytes() == good  # the file was repaired, good lines byte-identical
    append_row(p, _row(2))
    assert [r["job_id"] for r in read_rows(p)] == ["j0", "j1", "j2"]


def test_unparseable_last_line_with_newline_is_truncated(tmp_path):
    p = tmp_path / "results.jsonl"
    append_row(p, _row(0))
    with open(p, "ab") as f:
        f.write(b'{"job_id": "j1", "metr\n')
    with pytest.warns(RuntimeWarning):
        assert [r["job_id"] for r in read_rows(p, repair=False)] == ["j0"]
    assert p.read_bytes().count(b"\n") == 2  # repair=False leaves the file alone


def test_corrupt_middle_line_raises(tmp_path):
    p = tmp_path / "results.jsonl"
    append_row(p, _row(0))
    with open(p, "ab") as f:
        f.write(b"garbage{\n")
    append_row(p, _row(2))
    with pytest.raises(CorruptResultsError, match="line 2"):
        read_rows(p)


def test_row_missing_keys_in_middle_raises(tmp_path):
    p = tmp_path / "results.jsonl"
    append_row(p, {"job_id": "x"})
    append_row(p, _row(1))
    with pytest.raises(CorruptResultsError):
        read_rows(p)


def test_job_id_depends_on_everything():
    base = job_id("fewshot", "protonet", {"shot": 1}, 0, {"epochs": 5})
    assert base == job_id("fewshot", "protonet", {"shot": 1}, 0, {"epochs": 5})
    assert base != job_id("fewshot", "protonet", {"shot": 1}, 0, {"epochs": 6})
    assert base != job_id("fewshot", "protonet", {"shot": 5}, 0, {"epochs": 5})
    assert base != job_id("fewshot", "protonet", {"shot": 1}, 1, {"epochs": 5})
    assert base != job_id("fewshot", "protonet+icnn", {"shot": 1}, 0, {"epochs": 5})


def test_a_short_write_is_cut_off_again(tmp_path, monkeypatch):
    """A full disk (or `ulimit -f`) lets part of a line through, then fails: the file goes
    back to its previous bytes, so no half row is ever left behind."""
    import errno
    import os

    from losslab.lab import results as results_mod

    p = tmp_path / "results.jsonl"
    append_row(p, _row(0))
    good = p.read_bytes()
    real_write = os.write
    calls = []

    def full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results_mod.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        append_row(p, _row(1))
    assert p.read_bytes() == good
    monkeypatch.undo()
    append_row(p, _row(1))
    assert [r["job_id"] for r in read_rows(p)] == ["j0", "j1"]


def test_writer_is_opened_once_before_the_jobs(tmp_path):
    from losslab.lab.results import ResultsWriter

    p = tmp_path / "results.jsonl"
    with ResultsWriter(p) as w:
        assert p.exists()  # created (and so known writable) before any row
        w.append(_row(0))
        p.chmod(0o444)  # the descriptor was opened for writing already
        w.append(_row(1))
    assert [r["job_id"] for r in read_rows(p)] == ["j0", "j1"]
    with pytest.raises(IsADirectoryError):
        ResultsWriter(tmp_path)


def test_unique_rows_keeps_the_first_of_each_job():
    from losslab.lab.results import unique_rows

    a, b = _row(0), _row(1)
    changed = {**a, "metrics": {"acc": 1.0}}
    rows, dup = unique_rows([a, b, dict(a), changed, b])
    assert rows == [a, b]
    assert dup.copies == {"j0": 2, "j1": 1} and dup.conflicting == ["j0"]
    assert unique_rows([a, b])[1].copies == {}
