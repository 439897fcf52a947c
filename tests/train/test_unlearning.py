"""Gradient Collision loss: a loop oracle over mini-batch gradient pairs, its range and
special cases, the double backward through :func:`minibatch_gradients`, and what the loss is
for: descending it drives the source mini-batches' gradients apart while a target loss keeps
falling."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.train.unlearning import gradient_collision_loss, minibatch_gradients

f64 = torch.float64


def oracle(grads: list[list[float]], similarity: str = "cosine") -> list[float]:
    out = []
    for i in range(len(grads)):
        for j in range(i + 1, len(grads)):
            dot = sum(a * b for a, b in zip(grads[i], grads[j]))
            if similarity == "cosine":
                ni = math.sqrt(sum(a * a for a in grads[i]))
                nj = math.sqrt(sum(b * b for b in grads[j]))
                dot /= ni * nj
            out.append(dot)
    return out


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("n", [2, 3, 6])
def test_gradient_collision_matches_the_loop_oracle(similarity: str, n: int) -> None:
    g = torch.randn(n, 11, generator=torch.Generator().manual_seed(n), dtype=f64)
    want = oracle(g.tolist(), similarity)
    sim = "cosine" if similarity == "cosine" else "dot"
    got = gradient_collision_loss(g, similarity=sim, reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    mean = gradient_collision_loss(g, similarity=sim)
    assert mean.item() == pytest.approx(sum(want) / len(want), rel=1e-12)
    total = gradient_collision_loss(g, similarity=sim, reduction="sum")
    assert total.item() == pytest.approx(sum(want), rel=1e-12)


def test_range_and_special_cases() -> None:
    e = torch.eye(4, dtype=f64)
    assert gradient_collision_loss(e).item() == 0.0  # orthogonal gradients
    same = torch.ones(3, 5, dtype=f64)
    assert gradient_collision_loss(same).item() == pytest.approx(1.0)
    pair = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=f64)
    assert gradient_collision_loss(pair).item() == pytest.approx(-1.0)
    # n unit vectors summing to zero reach the lower bound -1/(n-1)
    ang = torch.arange(5, dtype=f64) * 2 * math.pi / 5
    star = torch.stack([ang.cos(), ang.sin()], 1)
    assert gradient_collision_loss(star).item() == pytest.approx(-1 / 4)
    # a zero gradient gives zero terms, finite gradient
    z = torch.zeros(3, 4, dtype=f64, requires_grad=True)
    out = gradient_collision_loss(z)
    out.backward()
    assert out.item() == 0.0 and z.grad is not None and bool(torch.isfinite(z.grad).all())


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        gradient_collision_loss(torch.randn(1, 3))
    with pytest.raises(ValueError, match="similarity"):
        gradient_collision_loss(torch.randn(2, 3), similarity="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating-point"):
        gradient_collision_loss(torch.ones(2, 3, dtype=torch.long))
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        minibatch_gradients([w * 2], [w])
    with pytest.raises(ValueError, match="require grad"):
        minibatch_gradients([(w * 2).sum()], [torch.randn(3)])


def test_minibatch_gradients_and_the_double_backward() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, generator=g, dtype=f64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=f64, requires_grad=True)
    unused = torch.randn(4, generator=g, dtype=f64, requires_grad=True)
    xs = [torch.randn(5, 3, generator=g, dtype=f64) for _ in range(3)]
    losses = [((x @ w + b) ** 2).mean() for x in xs]
    grads = minibatch_gradients(losses, [w, b, unused])
    assert tuple(grads.shape) == (3, 6 + 2 + 4)
    for x, row in zip(xs, grads):  # closed form of d mean((xw+b)^2)
        r = 2 * (x @ w + b) / r_numel(x, w)
        torch.testing.assert_close(row[:6], (x.T @ r).reshape(-1))
        torch.testing.assert_close(row[6:8], r.sum(0))
        assert bool((row[8:] == 0).all())

    def f(w_: torch.Tensor) -> torch.Tensor:
        ls = [((x @ w_ + b.detach()) ** 2).mean() for x in xs]
        return gradient_collision_loss(minibatch_gradients(ls, [w_]))

    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-6)


def r_numel(x: torch.Tensor, w: torch.Tensor) -> int:
    return x.shape[0] * w.shape[1]


@pytest.mark.slow
def test_descending_gc_drives_source_gradients_apart_while_the_target_loss_falls() -> None:
    """Linear regression, shared weights: the target task sees input dims 0-2 only, every
    source mini-batch sees dims 0-2 and one private dim. Target training alone leaves the
    source mini-batches' gradients aligned; adding the GC loss pulls them apart (and raises
    the source loss) while the target loss still falls."""
    g = torch.Generator().manual_seed(1)
    d, k = 6, 2
    torch.randn(d, k, generator=g, dtype=f64)  # (keeps the draws of the tuned setting)
    src_teacher = torch.randn(d, k, generator=g, dtype=f64)
    tgt_teacher = torch.randn(d, k, generator=g, dtype=f64)
    src = []
    for b in range(3):
        scale = torch.zeros(d, dtype=f64)
        scale[:3] = 1.0
        scale[3 + b] = 1.0
        src.append(torch.randn(32, d, generator=g, dtype=f64) * scale)
    tgt = torch.randn(64, d, generator=g, dtype=f64)
    tgt[:, 3:] = 0

    def source_losses(w_: torch.Tensor) -> list[torch.Tensor]:
        return [((x @ w_ - x @ src_teacher) ** 2).mean() for x in src]

    def target_loss(w_: torch.Tensor) -> torch.Tensor:
        return ((tgt @ w_ - tgt @ tgt_teacher) ** 2).mean()

    def gc(w_: torch.Tensor) -> torch.Tensor:
        return gradient_collision_loss(minibatch_gradients(source_losses(w_), [w_]))

    w0 = 0.1 * torch.randn(d, k, generator=torch.Generator().manual_seed(5), dtype=f64)
    t0 = target_loss(w0).item()
    out = {}
    for lam in (0.0, 5.0):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=0.05)
        for _ in range(200):
            opt.zero_grad()
            (target_loss(w) + lam * gc(w)).backward()
            opt.step()
        out[lam] = (gc(w).item(), target_loss(w).item(), float(torch.stack(source_losses(w)).sum()))
    assert out[0.0][0] > 0.4  # target training alone: the source gradients stay aligned
    assert out[5.0][0] < out[0.0][0] - 0.3
    assert out[5.0][1] < 0.15 * t0  # the target task is still learnt
    assert out[5.0][2] > out[0.0][2]  # and the source task is worse off
