"""``examples/ddp_tiny_lm.py`` run as a script: 2 gloo processes with shards of unequal token
counts; sum / global token count gives the single-process full-batch gradient (float64) and the
same weights on both ranks; the naive per-rank mean does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch.distributed as dist

pytest.importorskip("transformers")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

from tests.examples import EXAMPLES, load_example

ex = load_example("ddp_tiny_lm")


def test_script_gradients_equal_the_single_process_run(tmp_path) -> None:
    out = tmp_path / "ddp.json"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp_tiny_lm.py"), "--world", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: DDP = single process" in proc.stdout
    r = json.loads(out.read_text())
    assert r["ok"] and r["world"] == 2
    a, b = r["tokens_per_rank"]
    assert a != b and min(a, b) > 0, r  # the shards have unequal token counts
    assert r["grad"] < 1e-10, r
    assert r["weights"] < 1e-6, r
    assert r["ranks_agree"] < 1e-12, r
    assert r["naive_grad"] > 0.05, r  # the per-rank mean is not the full batch's gradient


def test_shards_cover_the_rows_in_order() -> None:
    rows = [[i] for i in range(7)]
    parts = ex.shard(rows, 3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert [r for p in parts for r in p] == rows


def test_more_processes_than_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="rows=1 must be at least world=2"):
        ex.check(2, rows=1)
