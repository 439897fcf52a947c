"""DualHeadKD: the combination of the official code, gradients reach only the right heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losslab.functional import binary_kl_loss, kd_loss
from losslab.losses.distillation import DualHeadKD


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(8, 5, generator=g, requires_grad=True)
    main = torch.nn.Linear(5, 4)
    t = torch.randn(8, 4, generator=g) * 2
    y = torch.randint(0, 4, (8,), generator=g)
    return f, main, t, y


def test_objective_is_the_official_combination() -> None:
    torch.manual_seed(0)
    f, main, t, y = batch()
    m = DualHeadKD(in_features=5, num_classes=4, binary_kl_weight=0.7, kd_weight=0.3)
    z = main(f)
    got = m(f, z, t, y)
    aux = m.aux_head(f)
    want = (0.7 * binary_kl_loss(aux, t, temperature=2.0, norm=True) + F.cross_entropy(z, y)
            + 0.3 * kd_loss(z, t, alpha=1.0, temperature=4.0))
    torch.testing.assert_close(got, want)


def test_binary_kl_trains_only_the_auxiliary_head_and_the_backbone() -> None:
    f, main, t, y = batch(seed=1)
    m = DualHeadKD(in_features=5, num_classes=4, binary_kl_weight=1.0, ce_weight=0.0)
    m(f, main(f), t, y).backward()
    assert main.weight.grad is None or bool((main.weight.grad == 0).all())
    aux = m.aux_head
    assert isinstance(aux, torch.nn.Linear) and aux.weight.grad is not None
    assert bool((aux.weight.grad != 0).any())
    assert f.grad is not None and bool((f.grad != 0).any())


def test_nonlinear_head_and_bad_inputs() -> None:
    f, main, t, y = batch(seed=2)
    m = DualHeadKD(in_features=5, num_classes=4, binary_kl_weight=1.0, aux_linear=False)
    assert torch.isfinite(m(f, main(f), t, y))
    assert m.aux_logits(f).shape == (8, 4)
    with pytest.raises(ValueError, match="binary_kl_weight"):
        DualHeadKD(in_features=5, num_classes=4, binary_kl_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        DualHeadKD(in_features=5, num_classes=4, binary_kl_weight=1.0, temperature=0.0)
    lin = DualHeadKD(in_features=5, num_classes=4, binary_kl_weight=1.0)
    with pytest.raises(ValueError, match="features"):
        lin(f[:-1], main(f), t, y)
    with pytest.raises(ValueError, match="teacher_logits"):
        lin(f, main(f), t[:, :-1], y)
