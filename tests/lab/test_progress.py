"""Progress display: the silent one and the tqdm one off a terminal."""

from __future__ import annotations

from losslab.lab.progress import NullProgress, TqdmProgress


def test_null_progress_accepts_everything(capsys):
    p = NullProgress()
    with p.bar(10, "x") as bar:
        bar.update(3)
        bar.set_postfix(epoch=1, loss="0.1")
    p.log("hidden")
    assert capsys.readouterr() == ("", "")


def test_tqdm_progress_off_a_terminal_prints_log_lines_only(capsys):
    p = TqdmProgress(enabled=True)  # stderr is not a terminal under pytest
    assert not p.enabled
    with p.bar(5, "jobs") as bar:
        bar.update(1)
        bar.set_postfix(loss="1.0")
    p.log("[1/1] done")
    out, err = capsys.readouterr()
    assert out == "[1/1] done\n" and err == ""
