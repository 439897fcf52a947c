"""ParetoDA: the TCM loss against a loop oracle and the released formula, the target
refinement, and the EPO linear program against scipy's LP solver on the released program
(``tools/epo_lp_dna.py`` restated), in both of its modes; one combined step end to end."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.train.pareto_da import (
    pareto_da_combine,
    pareto_da_weights,
    refined_target_logits,
    tcm_loss,
)

f64 = torch.float64


def oracle_tcm(logits: list[list[float]], eps: float = 1e-6) -> float:
    probs = []
    for row in logits:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        probs.append([v / sum(e) for v in e])
    b, c = len(probs), len(probs[0])
    mean = [sum(p[k] for p in probs) / b for k in range(c)]
    h_mean = -sum(m * math.log(m + eps) for m in mean)
    h_cond = -sum(sum(v * math.log(v) for v in p) for p in probs) / b
    return -(h_mean - h_cond)


def test_tcm_matches_the_loop_oracle_and_the_released_code() -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=f64)
    assert tcm_loss(x).item() == pytest.approx(oracle_tcm(x.tolist()), rel=1e-12)
    # tools/TCM_loss.py restated (the loss is -TCM)
    p = torch.softmax(x, 1)
    avg = p.sum(0) / 7
    released = -(-(avg * torch.log(avg + 1e-6)).sum() + (p * torch.log(p)).sum() / 7)
    torch.testing.assert_close(tcm_loss(x), released)


def test_tcm_range() -> None:
    confident_balanced = torch.eye(4, dtype=f64).repeat(3, 1) * 60.0
    assert tcm_loss(confident_balanced).item() == pytest.approx(-math.log(4), abs=1e-5)
    same = torch.tensor([[2.0, -1.0, 0.5]], dtype=f64).repeat(6, 1)
    assert tcm_loss(same).item() == pytest.approx(0.0, abs=1e-5)
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=f64)
    assert -math.log(4) - 1e-9 <= tcm_loss(x).item() <= 1e-9


def test_refined_target_logits() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 3, generator=g, dtype=f64)
    q = torch.rand(5, 3, generator=g, dtype=f64)
    # Bayes: posterior proportional to p(y|x) p(d=t|x,y)
    post = torch.softmax(z, 1) * q
    torch.testing.assert_close(torch.softmax(refined_target_logits(z, q), 1),
                               post / post.sum(1, keepdim=True))
    flat = torch.full_like(q, 0.3)  # a class-independent domain posterior changes nothing
    torch.testing.assert_close(torch.softmax(refined_target_logits(z, flat), 1),
                               torch.softmax(z, 1))
    torch.testing.assert_close(refined_target_logits(z, q, form="released"), z * q)


def released_lp(grads: torch.Tensor, val_grad: torch.Tensor, val_loss: float,
                eps: float = 1e-3) -> float | None:
    """EPO_LP.get_alpha restated with scipy's linprog: the optimal objective (or None)."""
    from scipy.optimize import linprog

    g, gv = grads.numpy(), val_grad.numpy()
    cmat, ca = g @ g.T, g @ gv
    m = len(ca)
    if val_loss > eps:
        j = ca > 0
        rhs = ca.copy()
        if j.any():
            rl = (g * gv).mean(1)
            rhs[j] = -math.inf
            rhs[rl == rl.max()] = 0.0
        else:
            rhs[:] = 0.0
        rows = rhs > -math.inf
        res = linprog(-ca, A_ub=-cmat[rows], b_ub=-rhs[rows], A_eq=[[1.0] * m], b_eq=[1.0],
                      bounds=[(0, None)] * m)
        return None if res.status != 0 else float(ca @ res.x)
    floor = min(ca.max(), 0.0)
    a_ub = -torch.cat([torch.as_tensor(cmat), torch.as_tensor(ca)[None]]).numpy()
    b_ub = -torch.cat([torch.zeros(m, dtype=f64), torch.tensor([floor], dtype=f64)]).numpy()
    res = linprog(-cmat.sum(0), A_ub=a_ub, b_ub=b_ub, A_eq=[[1.0] * m], b_eq=[1.0],
                  bounds=[(0, None)] * m)
    return None if res.status != 0 else float(cmat.sum(0) @ res.x)


@pytest.mark.parametrize("val_loss", [0.5, 0.0])
@pytest.mark.parametrize("seed", range(12))
def test_epo_weights_solve_the_released_program(seed: int, val_loss: float) -> None:
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(seed)
    m = 3 if seed % 3 else 4
    grads = torch.randn(m, 6, generator=g, dtype=f64)
    val_grad = torch.randn(6, generator=g, dtype=f64)
    if seed % 4 == 0:  # every loss conflicts with the held-out gradient
        val_grad = -grads.sum(0)
    want = released_lp(grads, val_grad, val_loss)
    alpha = pareto_da_weights(grads, val_grad, val_loss)
    if want is None:
        assert alpha is None
        return
    assert alpha is not None
    assert bool((alpha >= -1e-12).all()) and alpha.sum().item() == pytest.approx(1.0)
    cmat, ca = grads @ grads.T, grads @ val_grad
    got = float(ca @ alpha) if val_loss > 1e-3 else float(cmat.sum(0) @ alpha)
    assert got == pytest.approx(want, rel=1e-7, abs=1e-7)


def test_combined_step_weights_and_value() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, generator=g, dtype=f64, requires_grad=True)
    a, b, c = (torch.randn(4, generator=g, dtype=f64) for _ in range(3))
    losses = [(w * a).sum() ** 2, ((w - b) ** 2).sum(), (w * c).sum()]
    val = ((w - a) ** 2).sum()
    total, weights = pareto_da_combine(losses, val, [w])
    assert weights.shape == (3,) and weights.sum().item() == pytest.approx(3.0)
    torch.testing.assert_close(total, sum(wi * li for wi, li in zip(weights, losses)))
    total.backward()
    assert w.grad is not None
    with pytest.raises(ValueError, match="at least 2"):
        pareto_da_combine(losses[:1], val, [w])
