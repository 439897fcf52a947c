"""RMT's source-prototype alignment: prototypes, the nearest-prototype choice, and the
three-view contrastive loss against an explicit-loop oracle of the formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losslab.train import class_prototypes, nearest_prototype, prototype_alignment_loss


def test_class_prototypes_are_class_means() -> None:
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    y = torch.tensor([0, 0, 1])
    torch.testing.assert_close(class_prototypes(x, y, 2), torch.tensor([[2.0, 1.0], [0.0, 5.0]]))
    with pytest.raises(ValueError, match="classes \\[2\\]"):
        class_prototypes(x, y, 3)
    with pytest.raises(ValueError, match="labels"):
        class_prototypes(x, y.float(), 2)


def test_nearest_prototype_by_cosine_not_distance() -> None:
    protos = torch.tensor([[10.0, 0.0], [0.1, 0.1]])
    f = torch.tensor([[1.0, 1.2], [5.0, 0.1]])
    # the first feature is closer in distance to prototype 1 and in angle too; the second is
    # nearer prototype 0 in angle although far from it in distance
    assert nearest_prototype(f, protos).tolist() == [1, 0]


def _oracle(f: torch.Tensor, fa: torch.Tensor, protos: torch.Tensor, tau: float) -> float:
    n = f.shape[0]
    views = []
    for i in range(n):
        cos = [float(F.cosine_similarity(f[i], protos[k], dim=0)) for k in range(protos.shape[0])]
        views.append([protos[max(range(len(cos)), key=cos.__getitem__)], f[i], fa[i]])
    z = {(i, v): views[i][v] / views[i][v].norm() for i in range(n) for v in range(3)}
    total = 0.0
    for (i, v), za in z.items():
        denom = sum(math.exp(float(za @ zb) / tau) for key, zb in z.items() if key != (i, v))
        pos = [math.log(math.exp(float(za @ z[(i, u)]) / tau) / denom) for u in range(3) if u != v]
        total += -sum(pos) / len(pos)
    return total / (3 * n)


def test_prototype_alignment_matches_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 4, generator=g, dtype=torch.float64)
    fa = f + 0.3 * torch.randn(5, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(3, 4, generator=g, dtype=torch.float64)
    out = prototype_alignment_loss(f, fa, protos, temperature=0.1)
    assert out.item() == pytest.approx(_oracle(f, fa, protos, 0.1), rel=1e-10)


def test_prototype_alignment_projector_and_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, 8, generator=g).requires_grad_()
    fa = torch.randn(6, 8, generator=g)
    protos = torch.randn(4, 8, generator=g)
    proj = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    loss = prototype_alignment_loss(f, fa, protos, projector=proj)
    loss.backward()
    assert torch.isfinite(loss) and f.grad is not None and torch.isfinite(f.grad).all()
    assert all(p.grad is not None for p in proj.parameters())


def test_aligned_features_have_lower_loss() -> None:
    """Features that sit on their prototypes, with views that agree, score lower than random."""
    g = torch.Generator().manual_seed(2)
    protos = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    idx = torch.tensor([0, 1, 2, 3, 0, 1])
    aligned = protos[idx] + 0.01 * torch.randn(6, 16, generator=g)
    rand = torch.randn(6, 16, generator=g)
    assert (prototype_alignment_loss(aligned, aligned.clone(), protos)
            < prototype_alignment_loss(rand, torch.randn(6, 16, generator=g), protos))


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="features_aug"):
        prototype_alignment_loss(torch.randn(3, 4), torch.randn(3, 5), torch.randn(2, 4))
    with pytest.raises(ValueError, match="prototypes"):
        prototype_alignment_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="temperature"):
        prototype_alignment_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4),
                                 temperature=0.0)
