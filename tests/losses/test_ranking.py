"""Ranking losses: Margin-MSE against the formula (loops, fp64) and the sentence-transformers
MarginMSELoss formula written out."""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.functional import margin_mse_loss


def scores(n: int = 6, k: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 1 + k, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, 1 + k, generator=g, dtype=torch.float64) * 3
    return s, t


@pytest.mark.parametrize("k", [1, 4])
def test_margin_mse_matches_loop_oracle(k: int) -> None:
    s, t = scores(k=k)
    S, T = s.tolist(), t.tolist()
    want = [sum(((S[i][0] - S[i][j]) - (T[i][0] - T[i][j])) ** 2 for j in range(1, k + 1)) / k
            for i in range(len(S))]
    torch.testing.assert_close(margin_mse_loss(s, t, reduction="none"),
                               torch.tensor(want, dtype=torch.float64))
    assert float(margin_mse_loss(s, t).detach()) == pytest.approx(sum(want) / len(want),
                                                                  rel=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_margin_mse_matches_sentence_transformers_formula(k: int) -> None:
    """sentence-transformers MarginMSELoss: labels = teacher margins [N] (or [N, k]);
    loss = MSELoss()(student_pos - student_neg, labels) over all margins."""
    s, t = scores(k=k, seed=1)
    labels = t[:, :1] - t[:, 1:]
    student_margins = torch.stack([s[:, 0] - s[:, j] for j in range(1, k + 1)], dim=1)
    peer = torch.nn.MSELoss()(student_margins, labels)
    torch.testing.assert_close(margin_mse_loss(s, t), peer)
    g1 = torch.autograd.grad(margin_mse_loss(s, t), s)[0]
    g2 = torch.autograd.grad(peer, s)[0]
    torch.testing.assert_close(g1, g2)


def test_margin_mse_properties_and_bad_inputs() -> None:
    s, t = scores(k=2)
    # invariant to a per-query shift of either side's scores (only margins matter)
    shift = torch.randn(s.shape[0], 1, dtype=torch.float64)
    torch.testing.assert_close(margin_mse_loss(s + shift, t - 2 * shift), margin_mse_loss(s, t))
    assert abs(float(margin_mse_loss(t + shift, t))) < 1e-24
    with pytest.raises(ValueError, match="at least 2 columns"):
        margin_mse_loss(s[:, :1], t[:, :1])
    with pytest.raises(ValueError, match="teacher_scores"):
        margin_mse_loss(s, t[:-1])
    assert losslab.spec("margin_mse").kind == "teacher"
    m = losslab.create("margin_mse", reduction="none")
    torch.testing.assert_close(m(s, t), margin_mse_loss(s, t, reduction="none"))
    with pytest.raises(ValueError, match="takes no target"):
        m(s, t, target=torch.zeros(s.shape[0], dtype=torch.long))


def test_listnet_matches_loop_oracle_with_padding() -> None:
    import math

    from losslab.functional import listnet_loss

    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randint(0, 4, (3, 5), generator=g).to(torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2] = False  # an empty (fully padded) list
    want = []
    for q in range(2):
        idx = [i for i in range(5) if mask[q, i]]
        zs = sum(math.exp(float(s[q, i])) for i in idx)
        zr = sum(math.exp(float(r[q, i])) for i in idx)
        want.append(-sum(math.exp(float(r[q, i])) / zr * (float(s[q, i]) - math.log(zs))
                         for i in idx))
    got = listnet_loss(s, r, mask=mask, reduction="none")
    torch.testing.assert_close(got, torch.tensor([*want, 0.0], dtype=torch.float64))
    out = listnet_loss(s, r, mask=mask)
    assert float(out.detach()) == pytest.approx(sum(want) / 2, rel=1e-12)
    out.backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all() and torch.count_nonzero(s.grad[2]) == 0
    assert torch.count_nonzero(s.grad[1, 3:]) == 0
    # minimised when softmax(s) == softmax(r): zero gradient there
    s2 = r.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(listnet_loss(s2, r), s2)
    assert float(g2.abs().max()) < 1e-12
    with pytest.raises(ValueError, match="mask"):
        listnet_loss(s, r, mask=mask.float())


# ---------------------------------------------------------------------------------------------
# RankNet and ListMLE (loop oracles)
# ---------------------------------------------------------------------------------------------


def _lists(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    relevance = torch.randint(0, 3, (4, 6), generator=g).to(torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, :] = False  # an empty list
    return scores, relevance, mask


def test_ranknet_matches_loop_oracle() -> None:
    import math

    from losslab.functional import ranknet_loss

    s, r, m = _lists()
    expected = []
    for q in range(4):
        items = [i for i in range(6) if m[q, i]]
        terms = [math.log1p(math.exp(-(float(s[q, i]) - float(s[q, j]))))
                 for i in items for j in items if float(r[q, i]) > float(r[q, j])]
        expected.append(sum(terms) / len(terms) if terms else 0.0)
    got = ranknet_loss(s, r, mask=m, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    n = sum(1 for v in expected if v > 0)
    assert float(ranknet_loss(s, r, mask=m).detach()) == pytest.approx(sum(expected) / n)


def test_listmle_matches_loop_oracle() -> None:
    import math

    from losslab.functional import listmle_loss

    s, r, m = _lists(1)
    expected = []
    for q in range(4):
        items = [i for i in range(6) if m[q, i]]
        order = sorted(items, key=lambda i: -float(r[q, i]))  # stable: ties keep position
        total = 0.0
        for k, i in enumerate(order):
            rest = order[k:]
            total -= float(s[q, i]) - math.log(sum(math.exp(float(s[q, j])) for j in rest))
        expected.append(total)
    got = listmle_loss(s, r, mask=m, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(torch.autograd.grad(got.sum(), s)[0]).all()


@pytest.mark.parametrize("name", ["listnet", "ranknet", "listmle"])
def test_scores_modules_pass_the_mask_to_the_function(name: str) -> None:
    s, r, m = _lists(2)
    fn = losslab.spec(name).function
    for reduction in ("mean", "none"):
        module = losslab.create(name, reduction=reduction)
        torch.testing.assert_close(module(s, r, mask=m), fn(s, r, mask=m, reduction=reduction))
        torch.testing.assert_close(module(s, r), fn(s, r, reduction=reduction))
    assert not torch.allclose(losslab.create(name)(s, r, mask=m), losslab.create(name)(s, r))


# ---------------------------------------------------------------------------------------------
# Bad input and faults (issue #11)
# ---------------------------------------------------------------------------------------------

RANKING = ("margin_mse", "listnet", "ranknet", "listmle")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", RANKING)
def test_half_inputs_are_computed_and_returned_in_float32(name: str, dtype) -> None:
    """Finding 2: the loss of half inputs is float32 and equals the float32 loss of the same
    values (it used to be rounded back to the input dtype)."""
    if name == "margin_mse":
        x, y = scores(k=3)
    else:
        x, y, _ = _lists()
    x, y = (x.detach() * 30).to(dtype), y.detach().to(dtype)
    fn = losslab.spec(name).function
    out = fn(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(x.float(), y.float()), rtol=0, atol=0)
    assert losslab.create(name).to(dtype)(x, y).dtype == torch.float32


@pytest.mark.parametrize("inf", [-float("inf"), float("inf")])
def test_margin_mse_passage_masked_on_both_sides_is_the_finite_limit(inf: float) -> None:
    """Finding 8: a negative scored -inf (or +inf) by both the student and the teacher (a
    masked or padded passage) used to give inf - inf = NaN. Its margin difference is the limit
    of equal finite scores, (s_0 - t_0)^2: the same value as any equal finite score there,
    with a zero gradient on the masked score."""
    s, t = scores(n=4, k=3, seed=2)
    s_m, t_m = s.detach().clone(), t.clone()
    s_m[1, 2] = t_m[1, 2] = inf
    s_m[3, 1:] = t_m[3, 1:] = inf  # every negative of a query masked
    s_m.requires_grad_(True)
    out = margin_mse_loss(s_m, t_m, reduction="none")
    s_f, t_f = s.detach().clone(), t.clone()
    s_f[1, 2] = t_f[1, 2] = 123.0
    s_f[3, 1:] = t_f[3, 1:] = -7.0
    torch.testing.assert_close(out, margin_mse_loss(s_f, t_f, reduction="none"))
    (g,) = torch.autograd.grad(out.sum(), s_m)
    assert torch.isfinite(g).all()
    assert float(g[1, 2]) == 0.0 and torch.count_nonzero(g[3, 1:]) == 0
    # an infinite score on one side only is an infinite loss, and NaN stays NaN
    s_one = s.detach().clone()
    s_one[0, 1] = inf
    assert torch.isinf(margin_mse_loss(s_one, t))
    s_one[0, 1] = float("nan")
    assert torch.isnan(margin_mse_loss(s_one, t))


@pytest.mark.parametrize("name", ["listnet", "ranknet", "listmle"])
def test_non_finite_relevance_of_a_real_item_raises(name: str) -> None:
    """A NaN grade used to be silently dropped (RankNet compares it False with everything) or
    sorted somewhere (ListMLE), giving a plausible finite loss. It is a ValueError at a real
    item; padding (mask False) may hold anything."""
    s, r, m = _lists(4)
    fn = losslab.spec(name).function
    for bad in (float("nan"), float("inf")):
        r_bad = r.clone()
        r_bad[0, 2] = bad
        with pytest.raises(ValueError, match="relevance must be finite"):
            fn(s, r_bad, mask=m)
        r_pad = r.clone()
        r_pad[1, 5] = bad  # a padded item of list 1
        torch.testing.assert_close(fn(s, r_pad, mask=m), fn(s, r, mask=m))


@pytest.mark.parametrize("name", ["listnet", "ranknet", "listmle"])
def test_integer_relevance_equals_float_relevance_and_bool_is_rejected(name: str) -> None:
    s, r, m = _lists(5)
    fn = losslab.spec(name).function
    for dtype in (torch.int64, torch.int32, torch.uint8):
        torch.testing.assert_close(fn(s, r.to(dtype), mask=m), fn(s, r, mask=m))
    with pytest.raises(ValueError, match="relevance"):
        fn(s, r > 0, mask=m)
