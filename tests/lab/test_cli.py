import argparse

import pytest

from losslab.lab.cli import add_bench_parser, add_report_parser


def _parser():
    p = argparse.ArgumentParser(prog="losslab")
    sub = p.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    add_report_parser(sub)
    return p


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_bench_and_report(tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    flags = tiny_flags(losses=["protonet", "protonet+icnn"])
    assert _run(["bench", "fewshot", *flags, "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| 3-way 1-shot | `protonet+icnn` |" in text
    assert f"plot: {out / 'test_acc.png'}" in text
    (out / "table.md").unlink()
    assert _run(["report", str(out)]) == 0
    assert (out / "table.md").exists() and "`protonet`" in capsys.readouterr().out


def test_config_file_and_flag_precedence(tmp_path, tiny_flags, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('task = "fewshot"\nepochs = 5\nlosses = ["protonet"]\n'
                   f'out = "{tmp_path / "fromfile"}"\n[loss_hparams.protonet]\ntemperature = 2.0\n')
    flags = tiny_flags(losses=["protonet"])
    flags.remove("--losses")
    flags.remove("protonet")
    assert _run(["bench", "fewshot", "--config", str(cfg), *flags, "--no-report",
                 "--quiet"]) == 0
    import json

    saved = json.loads((tmp_path / "fromfile" / "config.json").read_text())
    assert saved["epochs"] == 1  # the explicit flag beat the file's 5
    assert saved["loss_hparams"] == {"protonet": {"temperature": 2.0}}


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--losses", "nope"], "unknown loss"),
        (["--losses", "protonet", "--dataset", "cub", "--data-root", "/no/such"],
         "does not exist"),
        (["--losses", "protonet", "--config", "nope"], "not found"),
    ],
)
def test_errors_are_one_line(tmp_path, argv, match, capsys):
    assert _run(["bench", "fewshot", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("losslab bench: error:") and match in err


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"losses": ["protonet", "cross_entropy"]}, "kind 'logits'"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"device": "cpux"}, "--device / device: 'cpux'"),
    ],
)
def test_bad_options_are_one_line(tmp_path, tiny_flags, over, match, capsys):
    assert _run(["bench", "fewshot", *tiny_flags(**over), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("losslab bench: error:") and match in err and err.count("\n") == 1


def test_report_on_empty_folder(tmp_path, capsys):
    assert _run(["report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_help_lists_task_options(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "fewshot", "--help"])
    out = capsys.readouterr().out
    for flag in ("--train-way", "--test-episodes", "--flatten", "--losses", "--seeds"):
        assert flag in out


def _fewshot_jobs(monkeypatch, fail=None):
    from losslab.lab.tasks.fewshot import FewShotTask

    calls = []
    real = FewShotTask.run_job

    def run_job(self, job, config, progress):
        calls.append(job.loss)
        if fail is not None:
            fail(len(calls))
        return real(self, job, config, progress)

    monkeypatch.setattr(FewShotTask, "run_job", run_job)
    return calls


@pytest.mark.parametrize("case", ["out_is_a_file", "hparams_typo", "bad_hparam", "wrong_kind"])
def test_bad_runs_stop_before_any_job_with_one_line(tmp_path, tiny_flags, monkeypatch, capsys,
                                                   case):
    out = tmp_path / "run"
    flags = tiny_flags(losses=["protonet"])
    if case == "out_is_a_file":
        out.write_text("x")
    elif case in ("hparams_typo", "bad_hparam"):
        table = "proto_triplt]\nmargin = 0.3" if case == "hparams_typo" else \
            "protonet]\ntemprature = 2.0"
        (tmp_path / "c.toml").write_text(f"[loss_hparams.{table}\n")
        flags += ["--config", str(tmp_path / "c.toml")]
    else:
        flags = tiny_flags(losses=["protonet", "cross_entropy"])
    calls = _fewshot_jobs(monkeypatch)
    assert _run(["bench", "fewshot", *flags, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("losslab bench: error:") and err.count("\n") == 1, err
    assert calls == []


def test_ctrl_c_is_one_line_and_resumable(tmp_path, tiny_flags, monkeypatch, capsys):
    def ctrl_c(n):
        if n == 2:
            raise KeyboardInterrupt

    _fewshot_jobs(monkeypatch, ctrl_c)
    argv = ["bench", "fewshot", *tiny_flags(), "--out", str(tmp_path), "--quiet"]
    try:
        rc = _run(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command")
    assert rc == 130
    err = capsys.readouterr().err
    assert err == (f"losslab bench: interrupted: 1 of 2 jobs done in {tmp_path}; re-run the "
                   "same command to resume\n")
    monkeypatch.undo()
    assert _run(argv) == 0
    assert "2 jobs (1 already done)" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["{not json", "[]", '{"task": 3}', '{"task": "nope"}'])
def test_report_of_a_malformed_config_json(tmp_path, capsys, text):
    (tmp_path / "results.jsonl").write_text("")
    (tmp_path / "config.json").write_text(text)
    assert _run(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("losslab report: error:") and "config.json" in err
    assert err.count("\n") == 1


def test_report_warnings_are_one_line_each(tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    assert _run(["bench", "fewshot", *tiny_flags(), "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    p = out / "results.jsonl"
    p.write_bytes(p.read_bytes() * 2)
    capsys.readouterr()
    assert _run(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("losslab report: warning: ") and "2 duplicated rows" in \
        captured.err and captured.err.count("\n") == 1
    assert "| 1 |" in captured.out  # one seed per (setting, loss), not two


def test_unwritable_report_is_a_message(tmp_path, tiny_flags, capsys):
    out = tmp_path / "run"
    assert _run(["bench", "fewshot", *tiny_flags(), "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    (out / "table.md").mkdir()
    assert _run(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("losslab report: error:") and "table.md" in err
