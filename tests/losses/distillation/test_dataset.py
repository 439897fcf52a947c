"""AST's dataset-distillation matching losses: loop oracles from the formulas (fp64), the
normalisation's invariances, the class means, an unrolled inner loop and bad inputs."""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.functional import feature_mean_matching_loss, trajectory_matching_loss

close = torch.testing.assert_close
f64 = torch.float64


def test_trajectory_matching_oracle_and_invariances() -> None:
    g = torch.Generator().manual_seed(0)
    student, target, start = (torch.randn(3, 11, generator=g, dtype=f64) for _ in range(3))
    ref = []
    for s, t, a in zip(student.tolist(), target.tolist(), start.tolist()):
        num = sum((x - y) ** 2 for x, y in zip(s, t))
        den = sum((x - y) ** 2 for x, y in zip(a, t))
        ref.append(num / den)
    out = trajectory_matching_loss(student, target, start=start, reduction="none")
    close(out, torch.tensor(ref, dtype=f64))
    close(trajectory_matching_loss(student, target, start=start),
          torch.tensor(ref, dtype=f64).mean())
    # a student that stays at the start scores exactly 1; at the target 0
    close(trajectory_matching_loss(start, target, start=start, reduction="none"),
          torch.ones(3, dtype=f64))
    assert trajectory_matching_loss(target, target, start=start) == 0
    # invariant to a common shift and to a common scale of the three parameter vectors
    for a, b in ((1.0, 5.0), (7.5, -2.0)):
        close(trajectory_matching_loss(a * student + b, a * target + b, start=a * start + b,
                                       reduction="none"), out)
    # without start: the squared distance
    close(trajectory_matching_loss(student, target, reduction="none"),
          (student - target).pow(2).sum(1))
    # parameter tensors of any shape per row
    close(trajectory_matching_loss(student.reshape(3, 11, 1), target.reshape(3, 11, 1),
                                   start=start.reshape(3, 11, 1), reduction="none"), out)


def test_trajectory_matching_through_an_unrolled_inner_loop() -> None:
    # a linear model trained by gradient steps on a learnable synthetic point
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(1, 3, generator=g, dtype=f64)
    target = theta0 + torch.randn(1, 3, generator=g, dtype=f64)
    x_syn = torch.randn(4, 3, generator=g, dtype=f64, requires_grad=True)
    y_syn = torch.randn(4, generator=g, dtype=f64)
    theta = theta0.clone().requires_grad_(True)
    for _ in range(3):
        inner = ((x_syn @ theta[0] - y_syn) ** 2).mean()
        (grad,) = torch.autograd.grad(inner, theta, create_graph=True)
        theta = theta - 0.1 * grad
    loss = trajectory_matching_loss(theta, target, start=theta0)
    loss.backward()
    assert x_syn.grad is not None and torch.isfinite(x_syn.grad).all()
    assert torch.count_nonzero(x_syn.grad) > 0


def test_trajectory_matching_bad_inputs_and_module() -> None:
    a = torch.randn(2, 4)
    with pytest.raises(ValueError, match="start"):
        trajectory_matching_loss(a, a + 1, start=a[:, :2])
    with pytest.raises(ValueError, match="differ"):
        trajectory_matching_loss(a, a + 1, start=a + 1)
    m = losslab.create("trajectory_matching")
    close(m(a, a + 1, start=a - 1), trajectory_matching_loss(a, a + 1, start=a - 1))


def test_feature_mean_matching_oracle() -> None:
    g = torch.Generator().manual_seed(2)
    syn = torch.randn(7, 4, generator=g, dtype=f64)
    y = torch.tensor([0, 0, 2, 2, 2, 5, 0])
    real = torch.randn(12, 4, generator=g, dtype=f64)
    ry = torch.tensor([0, 2, 5, 5, 0, 2, 3, 3, 0, 2, 5, 2])
    terms = {}
    for c in sorted(set(y.tolist())):
        ms = [sum(syn[i, d].item() for i in range(7) if y[i] == c) / int((y == c).sum())
              for d in range(4)]
        mr = [sum(real[i, d].item() for i in range(12) if ry[i] == c) / int((ry == c).sum())
              for d in range(4)]
        terms[c] = sum((a - b) ** 2 for a, b in zip(ms, mr)) / 4
    total = sum(terms.values())
    close(feature_mean_matching_loss(syn, y, ref_embeddings=real, ref_labels=ry,
                                     reduction="sum"), torch.tensor(total, dtype=f64))
    close(feature_mean_matching_loss(syn, y, ref_embeddings=real, ref_labels=ry),
          torch.tensor(total / len(terms), dtype=f64))
    share = feature_mean_matching_loss(syn, y, ref_embeddings=real, ref_labels=ry,
                                       reduction="none")
    close(share[y == 2].sum(), torch.tensor(terms[2], dtype=f64))
    # only the class means matter: permuting within a class changes nothing
    perm = torch.tensor([6, 1, 4, 2, 3, 5, 0])
    close(feature_mean_matching_loss(syn[perm], y[perm], ref_embeddings=real, ref_labels=ry,
                                     reduction="sum"), torch.tensor(total, dtype=f64))
    # self-reference: zero
    assert feature_mean_matching_loss(syn, y) == 0


def test_feature_mean_matching_bad_inputs() -> None:
    syn, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="ref_labels"):
        feature_mean_matching_loss(syn, y, ref_embeddings=torch.randn(2, 4),
                                   ref_labels=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="together"):
        feature_mean_matching_loss(syn, y, ref_embeddings=torch.randn(2, 4))
    with pytest.raises(ValueError, match="columns"):
        feature_mean_matching_loss(syn, y, ref_embeddings=torch.randn(2, 5),
                                   ref_labels=torch.tensor([0, 1]))
