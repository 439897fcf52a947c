"""``make demo``: the demo entry point runs the shipped config, flags override it."""

from losslab.lab import demo


def test_demo_entry_with_overrides(tmp_path, tiny_flags, capsys):
    assert demo.main([*tiny_flags(losses=["protonet"]), "--out", str(tmp_path / "d"),
                      "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| 3-way 1-shot | `protonet` |" in text and "plot: " in text
    saved = (tmp_path / "d" / "config.json").read_text()
    assert '"train_query": 3' in saved  # flags beat the demo config


def test_the_shipped_demo_settings_fit_the_glyph_splits():
    """The demo's way per shot: 20-way 1-shot and 150-way 5-shot episodes (15 queries) can be
    drawn from the val and test splits of the shipped glyphs (val has 171 classes)."""
    import numpy as np

    from losslab.lab.config import load_config_file, resolve_config
    from losslab.lab.episodes import EpisodeSampler
    from losslab.lab.tasks.fewshot import FewShotTask

    task = FewShotTask()
    cfg = resolve_config(task, load_config_file("demo"), {})
    task.validate(cfg)
    settings = task.settings(cfg)
    assert [task.setting_label(s) for s in settings] == ["20-way 1-shot", "150-way 5-shot"]
    assert {s["train_way"] for s in settings} == {20}
    data = task.dataset(cfg)
    for s in settings:
        for split in ("val", "test"):
            ep = EpisodeSampler(data.splits[split].labels, way=s["way"], shot=s["shot"],
                                query=cfg["query"], rng=np.random.default_rng(0)).sample(2)
            assert ep.support.shape == (2, s["way"] * s["shot"])
            labels = data.splits[split].labels[ep.query[0]]
            assert np.unique(labels).size == s["way"]
