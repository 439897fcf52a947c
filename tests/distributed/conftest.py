"""One spawn of gloo processes per world size, shared by the tests of this folder: every case
of ``_ddp_worker.cases()`` runs inside it, each rank writes its results."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from torch.multiprocessing.spawn import start_processes

from tests.distributed import _ddp_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for world in _ddp_worker.WORLDS:
        folder = tmp_path_factory.mktemp(f"ddp{world}")
        start_processes(_ddp_worker.main,
                        args=(world, free_port(), str(folder), _ddp_worker.cases()),
                        nprocs=world, join=True, start_method="spawn")
        out[world] = [json.loads(Path(folder, f"rank{r}.json").read_text())
                      for r in range(world)]
    return out
