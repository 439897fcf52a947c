"""``make demo``: the demo entry point runs the shipped config, flags override it."""

from losslab.lab import demo


def test_demo_entry_with_overrides(tmp_path, tiny_flags, capsys):
    assert demo.main([*tiny_flags(losses=["protonet"]), "--out", str(tmp_path / "d"),
                      "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| 3-way 1-shot | `protonet` |" in text and "plot: " in text
    saved = (tmp_path / "d" / "config.json").read_text()
    assert '"train_query": 3' in saved  # flags beat the demo config
