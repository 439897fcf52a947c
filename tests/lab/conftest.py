"""Shared helpers of the lab tests: a tiny, fast few-shot configuration on synthetic data."""

from __future__ import annotations

from typing import Any

import pytest

TINY = {
    "dataset": "synthetic",
    "losses": ["protonet", "protonet+proto_triplet"],
    "seeds": 1,
    "shots": [1],
    "way": 3,
    "train_way": [4],
    "query": 3,
    "train_query": 3,
    "epochs": 1,
    "episodes_per_epoch": 2,
    "val_episodes": 4,
    "test_episodes": 10,
    "icnn_classes": 4,
    "icnn_per_class": 4,
    "device": "cpu",
    "threads": 1,
}


def _tiny_flags(**over: Any) -> list[str]:
    """TINY (updated with ``over``) as ``losslab bench fewshot`` flags."""
    cfg = {**TINY, **over}
    out = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            out.append(f"--{'' if v else 'no-'}{k.replace('_', '-')}")
            continue
        out += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else
                str(v)]
    return out


@pytest.fixture
def tiny_flags():
    return _tiny_flags


@pytest.fixture
def tiny_config():
    from losslab.lab.config import resolve_config
    from losslab.lab.tasks import get_task

    def make(**over: Any) -> tuple[Any, dict[str, Any]]:
        task = get_task("fewshot")
        return task, resolve_config(task, {**TINY, **over}, None)

    return make
