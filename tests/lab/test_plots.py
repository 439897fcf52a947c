"""The figures: metric plots of a run folder and the reliability diagram."""

from __future__ import annotations

import json

import pytest
import torch

from losslab.lab.plots import line_groups, plot_reliability_diagram
from losslab.lab.report import write_report
from losslab.lab.results import append_row
from losslab.lab.summary import summarise


def test_line_plot_one_panel_per_noise_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "task": "noisy", "losses": ["cross_entropy", "gce"], "dataset": "fashion_mnist",
        "model": "cnn", "train_subset": 0, "epochs": 1, "optimizer": "sgd", "lr": 0.1,
        "noise": ["symmetric:0.0", "symmetric:0.4", "pair:0.3"]}))
    for loss in ("cross_entropy", "gce"):
        for kind, rate in (("symmetric", 0.0), ("symmetric", 0.4), ("pair", 0.3)):
            for seed in range(2):
                append_row(tmp_path / "results.jsonl", {
                    "job_id": f"{loss}{kind}{rate}{seed}", "task": "noisy", "loss": loss,
                    "setting": {"noise": kind, "rate": rate},
                    "setting_label": f"{kind} {rate:g}", "seed": seed,
                    "metrics": {"test_acc": 80 - 50 * rate + seed, "ece": 5.0 + seed,
                                "aece": 5.0}})
    groups = line_groups(summarise(tmp_path), "rate")
    assert groups == {"noise=symmetric": [(0.0, "symmetric 0"), (0.4, "symmetric 0.4")],
                      "noise=pair": [(0.3, "pair 0.3")]}
    rep = write_report(tmp_path)
    assert [p.name for p in rep["plots"]] == ["test_acc.png", "ece.png"]
    assert "| pair 0.3 | `gce` |" in rep["markdown"]


def test_plot_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 6, generator=g, dtype=torch.float64) * 1.5
    target = torch.randint(0, 6, (200,), generator=g)
    logits[torch.arange(100), target[:100]] += 2.0
    probs = torch.softmax(logits, 1)
    out = plot_reliability_diagram(probs, target, tmp_path / "sub" / "rel.png", adaptive=True)
    assert out.exists() and out.stat().st_size > 1000
