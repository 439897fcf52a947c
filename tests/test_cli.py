"""The ``losslab`` command and the README it generates."""

from __future__ import annotations

from pathlib import Path

import pytest

import losslab
from losslab.cli import catalog_markdown, main, readme_with_catalog

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_catalog_is_up_to_date() -> None:
    text = README.read_text(encoding="utf-8")
    assert readme_with_catalog(text) == text, "run `make catalog` to regenerate the README table"


def test_catalog_lists_every_loss() -> None:
    table = catalog_markdown()
    for name in losslab.available():
        assert f"| `{name}` |" in table
    assert "2305.09062" in table


def test_list_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "proto_triplet" in out and "few-shot" in out
    assert main(["list", "--family", "few-shot", "--markdown"]) == 0
    assert "| `icnn` |" in capsys.readouterr().out
    assert main(["info", "proto_triplet"]) == 0
    out = capsys.readouterr().out
    assert "margin=0.5" in out and "2305.09062" in out and "episode" in out


def test_unknown_loss_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["info", "nope"])
    assert e.value.code == 2
    assert "unknown loss 'nope'" in capsys.readouterr().err


def test_update_readme(tmp_path: Path) -> None:
    p = tmp_path / "README.md"
    p.write_text("x\n<!-- catalog:start -->\nSTALE-ROW\n<!-- catalog:end -->\ny\n")
    assert main(["list", "--update-readme", str(p)]) == 0
    assert "| `protonet` |" in p.read_text() and "STALE-ROW" not in p.read_text()


def test_python_dash_m_losslab(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m losslab`` is the ``losslab`` command."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["losslab", "list", "--family", "few-shot"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("losslab", run_name="__main__", alter_sys=True)
    assert e.value.code == 0
    assert "proto_triplet" in capsys.readouterr().out


def test_ctrl_c_is_a_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import losslab.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_list", interrupted)
    try:
        rc = main(["list"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command")
    assert rc == 130 and capsys.readouterr().err == "losslab: interrupted\n"
