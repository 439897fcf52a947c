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


def open_clip_loss_module() -> ModuleType:
    """``open_clip/loss.py`` as a module (skips the test when open_clip is absent).

    The package ``open_clip`` imports torchvision, whose wheels do not import beside our CPU
    torch build (torchvision 0.28.0, the release of torch 2.13.0, fails with ``operator
    torchvision::nms does not exist``); its ``loss.py`` needs only torch, so it is loaded from
    its file without running the package ``__init__``.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed")
    key = "_open_clip_loss"
    if key in sys.modules:
        return sys.modules[key]
    path = f"{next(iter(spec.submodule_search_locations))}/loss.py"
    file_spec = importlib.util.spec_from_file_location(key, path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except ImportError as e:  # pragma: no cover - depends on the open_clip release
        pytest.skip(f"open_clip's loss.py does not import here: {e}")
    sys.modules[key] = module
    return module


def lightly_ntxent_module() -> ModuleType:
    """``lightly/loss/ntx_ent_loss.py`` as a module (skips without lightly).

    It imports ``lightly.models.modules.memory_bank``, whose package ``__init__`` files (and
    ``lightly/models/utils.py``) import torchvision; ``memory_bank.py`` (torch only) is loaded
    from its file beside an empty stand-in for ``lightly.models.utils`` (the bank uses it only
    to gather a memory bank across processes; the loss here has none) for the duration of the
    load, and ``sys.modules`` is restored afterwards.
    """
    spec = importlib.util.find_spec("lightly")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lightly is not installed")
    key = "_lightly_loss_ntx_ent_loss"
    if key in sys.modules:
        return sys.modules[key]
    root = next(iter(spec.submodule_search_locations))
    names = ("lightly.models", "lightly.models.utils", "lightly.models.modules",
             "lightly.models.modules.memory_bank")
    saved = {n: sys.modules[n] for n in names if n in sys.modules}

    def load(name: str, path: str) -> ModuleType:
        file_spec = importlib.util.spec_from_file_location(name, path)
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        file_spec.loader.exec_module(module)
        return module

    try:
        models = ModuleType("lightly.models")
        models.__path__ = []  # a namespace stand-in: its __init__ (torchvision) is not run
        modules = ModuleType("lightly.models.modules")
        modules.__path__ = []
        sys.modules["lightly.models"] = models
        sys.modules["lightly.models.modules"] = modules
        utils = ModuleType("lightly.models.utils")
        sys.modules["lightly.models.utils"] = utils
        models.utils = utils  # type: ignore[attr-defined]
        load("lightly.models.modules.memory_bank", f"{root}/models/modules/memory_bank.py")
        module = load(key, f"{root}/loss/ntx_ent_loss.py")
    except ImportError as e:  # pragma: no cover - depends on the lightly release
        pytest.skip(f"lightly's ntx_ent_loss does not import here: {e}")
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    return module
