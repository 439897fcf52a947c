"""Parity with segmentation-models-pytorch's losses where the definitions match, values and
gradients in float64.

smp imports timm and torchvision at package import; its ``losses`` subpackage needs torch only,
so it is loaded on its own (as ``_smp_losses``) when the package import fails. Where smp's
definition differs, the test says how, and checks the relation instead:

* Dice, Jaccard: smp aggregates over the batch (``per_image=False``) and gives a class absent
  from the batch's target loss 0 while still averaging over all ``C`` classes: ``smp =
  ours(classes="present") * n_present / C``. Its counts are the L1 "metric" counts of arXiv
  2302.05666, equal to the classic ones for hard labels; with soft labels smp's Dice is our
  ``dice_semimetric``. smp's ``smooth`` enters the Tversky-form score ``(TP + s) / (TP +
  FP/2 + FN/2 + s)``, i.e. our Dice with ``smooth = 2 s``.
* Tversky: smp raises the *class mean* of ``1 - TI`` to ``gamma``; our ``focal_tversky`` raises
  each class's ``1 - TI`` to ``1/gamma`` (the paper's). They agree on binary inputs.
* Focal: smp's multiclass focal is a sum of one-vs-rest sigmoid focal terms, not the softmax
  focal loss; only the binary form is compared (our ``dice_focal`` with ``lambda_dice=0``).
* SoftBCEWithLogitsLoss: our binary ``dice_ce`` with ``lambda_dice=0`` on smoothed targets
  ``(1 - e) y + e (1 - y)``; smp's mean with ``ignore_index`` divides by all pixels (ignored
  ones included), so the comparison is without ignored pixels.
* Lovasz: smp's weights are computed in float32 (``.float()`` in ``_lovasz_grad``), so that
  comparison runs in float32 (tolerance 1e-5); the others are float64.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import losslab.functional as LF


def _smp_losses() -> ModuleType:
    try:
        return importlib.import_module("segmentation_models_pytorch.losses")
    except Exception:  # timm / torchvision missing or incompatible
        pass
    if "_smp_losses" in sys.modules:
        return sys.modules["_smp_losses"]
    found = importlib.util.find_spec("segmentation_models_pytorch")
    if found is None or found.origin is None:
        pytest.skip("segmentation-models-pytorch is not installed")
    folder = Path(found.origin).parent / "losses"
    spec = importlib.util.spec_from_file_location(
        "_smp_losses", folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_smp_losses"] = module
    spec.loader.exec_module(module)
    return module


smp = pytest.fixture(scope="module")(lambda: _smp_losses())


def _both(ours: Any, theirs: Any, logits: torch.Tensor, target: torch.Tensor,
          smp_target: torch.Tensor | None = None, scale: float = 1.0, tol: float = 1e-10
          ) -> None:
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    va = ours(a, target)
    vb = theirs(b, target if smp_target is None else smp_target) * scale
    torch.testing.assert_close(va, vb, rtol=tol, atol=tol * 1e-2)
    va.backward()
    vb.backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=tol * 10, atol=tol * 1e-2)


def _multiclass(seed: int = 0, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, c, 6, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (3, 6, 7), generator=g)
    target[0, 0, :c] = torch.arange(c)  # every class present in the batch
    return logits, target


def _binary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 6, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 2, (3, 6, 7), generator=g)
    return logits, target


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_dice_multiclass(smp: ModuleType, smooth: float) -> None:
    logits, target = _multiclass()
    _both(lambda x, y: LF.dice_loss(x, y, per_image=False, smooth=2 * smooth),
          smp.DiceLoss("multiclass", smooth=smooth), logits, target)


def test_dice_absent_class_and_ignore_index(smp: ModuleType) -> None:
    logits, target = _multiclass(1)
    target[target == 3] = 2  # class 3 absent
    target[1, :2] = -100
    _both(lambda x, y: LF.dice_loss(x, y, per_image=False, smooth=0.0, classes="present"),
          smp.DiceLoss("multiclass", ignore_index=-100), logits, target, scale=4 / 3)


def test_dice_binary_hard_and_soft(smp: ModuleType) -> None:
    logits, target = _binary()
    _both(lambda x, y: LF.dice_loss(x, y, per_image=False, smooth=0.0),
          smp.DiceLoss("binary"), logits, target)
    soft = torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)
    _both(lambda x, y: LF.dice_semimetric_loss(x, y, per_image=False, smooth=0.0),
          smp.DiceLoss("binary"), logits, soft)


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_jaccard_multiclass_and_binary(smp: ModuleType, smooth: float) -> None:
    logits, target = _multiclass(3)
    _both(lambda x, y: LF.jaccard_loss(x, y, per_image=False, smooth=smooth),
          smp.JaccardLoss("multiclass", smooth=smooth), logits, target)
    logits, target = _binary(3)
    _both(lambda x, y: LF.jaccard_loss(x, y, per_image=False, smooth=smooth),
          smp.JaccardLoss("binary", smooth=smooth), logits, target)


def test_jaccard_soft_is_jaccard_metric(smp: ModuleType) -> None:
    logits, _ = _binary(4)
    soft = torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(5),
                      dtype=torch.float64)
    _both(lambda x, y: LF.jaccard_metric_loss(x, y, per_image=False, smooth=0.0),
          smp.JaccardLoss("binary"), logits, soft)


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.5, 0.5), (0.8, 0.2)])
def test_tversky(smp: ModuleType, alpha: float, beta: float) -> None:
    logits, target = _multiclass(6)
    _both(lambda x, y: LF.tversky_loss(x, y, alpha=alpha, beta=beta, per_image=False,
                                       smooth=0.0),
          smp.TverskyLoss("multiclass", alpha=alpha, beta=beta, gamma=1.0), logits, target)


@pytest.mark.parametrize("gamma", [0.75, 2.0])
def test_focal_tversky_binary(smp: ModuleType, gamma: float) -> None:
    logits, target = _binary(7)
    _both(lambda x, y: LF.focal_tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=1 / gamma,
                                             per_image=False, smooth=0.0),
          smp.TverskyLoss("binary", alpha=0.3, beta=0.7, gamma=gamma), logits, target)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz(smp: ModuleType, per_image: bool) -> None:
    # smp computes the Lovasz (Jaccard) weights with .float(): the comparison is in float32
    logits, target = _multiclass(8)
    _both(lambda x, y: LF.lovasz_softmax_loss(x, y, per_image=per_image),
          smp.LovaszLoss("multiclass", per_image=per_image), logits.float(), target, tol=1e-5)
    logits, target = _binary(8)
    _both(lambda x, y: LF.lovasz_hinge_loss(x, y, per_image=per_image),
          smp.LovaszLoss("binary", per_image=per_image), logits.float(), target,
          smp_target=target.unsqueeze(1).float(), tol=1e-5)


def test_binary_focal(smp: ModuleType) -> None:
    logits, target = _binary(9)
    _both(lambda x, y: LF.dice_focal_loss(x, y, lambda_dice=0.0, gamma=2.0),
          smp.FocalLoss("binary", alpha=None, gamma=2.0), logits, target)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_bce(smp: ModuleType, eps: float) -> None:
    logits, target = _binary(10)
    y = target.unsqueeze(1).double()
    smoothed = (1 - eps) * y + eps * (1 - y)
    _both(lambda x, _: LF.dice_ce_loss(x, smoothed, lambda_dice=0.0),
          smp.SoftBCEWithLogitsLoss(smooth_factor=eps if eps else None), logits, target,
          smp_target=y)
