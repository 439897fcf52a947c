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


def test_report_on_empty_folder(tmp_path, capsys):
    assert _run(["report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_help_lists_task_options(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", "fewshot", "--help"])
    out = capsys.readouterr().out
    for flag in ("--train-way", "--test-episodes", "--flatten", "--losses", "--seeds"):
        assert flag in out
