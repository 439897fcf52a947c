"""Loaders for the ranking peers: allRank, LibAUC and Rax (TF-Ranking's JAX successor).

allRank 1.4.3 pins torch <= 1.8 and LibAUC 2.0.1 pulls torch_geometric, ogb, opencv and more,
so both are installed without their dependencies (``make setup``). Their loss modules need only
torch and numpy; their packages' other imports (allRank's dataset loading needs torchvision,
LibAUC's utils need scikit-learn metrics and its datasets) are replaced here by the few names
the loss files use: allRank's ``PADDED_Y_VALUE = -1`` and ``get_torch_device``; LibAUC's loss
files are loaded one by one with its ``utils/utils.py``. Each loader skips the test when the
package is not installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch


def _package_dir(name: str) -> Path:
    found = importlib.util.find_spec(name)
    if found is None or found.origin is None:
        pytest.skip(f"{name} is not installed")
    return Path(found.origin).parent


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stub(name: str, **attrs: object) -> ModuleType:
    module = sys.modules.get(name) or ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


@functools.cache
def allrank_losses() -> ModuleType:
    """``allrank.models.losses`` (rankNet, listNet, lambdaLoss, approxNDCGLoss, neuralNDCG ...)."""
    _package_dir("allrank")
    if "allrank.models.losses" not in sys.modules:
        # the loss files need only these two names; the real modules import torchvision
        _stub("allrank.data.dataset_loading", PADDED_Y_VALUE=-1)
        _stub("allrank.models.model_utils", get_torch_device=lambda: torch.device("cpu"))
    return importlib.import_module("allrank.models.losses")


@functools.cache
def libauc_losses() -> ModuleType:
    """LibAUC's ``losses/auc.py`` (AUCMLoss, PairwiseAUCLoss, ...) loaded on its own."""
    root = _package_dir("libauc")
    for pkg, folder in (("libauc", root), ("libauc.utils", root / "utils"),
                        ("libauc.losses", root / "losses")):
        if pkg not in sys.modules:
            module = ModuleType(pkg)
            module.__path__ = [str(folder)]
            sys.modules[pkg] = module
    _load("libauc.utils.utils", root / "utils" / "utils.py")
    _load("libauc.losses.surrogate", root / "losses" / "surrogate.py")
    return _load("libauc.losses.auc", root / "losses" / "auc.py")


def rax() -> ModuleType:
    """Rax (JAX), in float64."""
    module = pytest.importorskip("rax")
    jax = importlib.import_module("jax")
    jax.config.update("jax_enable_x64", True)
    return module
