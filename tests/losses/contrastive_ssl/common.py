"""Helpers of the contrastive tests: small fp64 pairs, and lightly's loss modules loaded by file.

lightly's package ``lightly.loss`` imports torchvision, whose wheels do not import beside our
torch build; its ``barlow_twins_loss``, ``vicreg_loss`` and ``dcl_loss`` modules themselves need
only torch (and ``lightly.utils.dist``), so :func:`lightly_module` loads one of them from its
file without running the package ``__init__``. Tests that need it skip cleanly without lightly.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import torch


def pairs(n: int = 7, d: int = 5, seed: int = 0, noise: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.requires_grad_(True), b.requires_grad_(True)


def lightly_module(name: str) -> ModuleType:
    """``lightly/loss/<name>.py`` as a module (skips the test when lightly is absent)."""
    spec = importlib.util.find_spec("lightly")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lightly is not installed")
    path = f"{next(iter(spec.submodule_search_locations))}/loss/{name}.py"
    key = f"_lightly_loss_{name}"
    if key in sys.modules:
        return sys.modules[key]
    file_spec = importlib.util.spec_from_file_location(key, path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except ImportError as e:  # pragma: no cover - depends on the lightly release
        pytest.skip(f"lightly's {name} does not import here: {e}")
    sys.modules[key] = module
    return module
