"""Tests of the classification losses (losslab.losses.classification, AnyLoss included).

Oracles are written from the papers' formulas with explicit loops in float64; peers are
torch.nn.functional (cross_entropy, multi_margin_loss) and kornia (focal loss). The last
section runs contract-style checks over every ``logits`` loss of the classification, robust
and sequence families (the robust and sequence losses' own tests are in test_robust.py and
test_sequence.py).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF

torch.manual_seed(0)
D = torch.float64


def rand_logits(n=7, c=5, *spatial, scale=2.0, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, *spatial, generator=g, dtype=D) * scale).to(dtype)


def rand_target(n=7, c=5, *spatial, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n, *spatial), generator=g)


def rand_soft(n=7, c=5, *spatial, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, *spatial, generator=g, dtype=D) * 2, dim=1)


def softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def per_item_oracle(logits, target, fn):
    """Apply ``fn(row: list[float], y: int) -> float`` to every item of [N, C] logits."""
    return torch.tensor([fn(logits[i].tolist(), int(target[i])) for i in range(len(target))],
                        dtype=D)


# --------------------------------------------------------------------------------------------
# cross_entropy == torch.nn.functional.cross_entropy
# --------------------------------------------------------------------------------------------

CE_CASES = list(itertools.product(
    [False, True],  # weight
    [False, True],  # some items ignored
    [0.0, 0.2],  # label smoothing
    [(), (3, 2)],  # spatial dims
    ["mean", "sum", "none"],
))


@pytest.mark.parametrize("use_w,ignore,ls,spatial,reduction", CE_CASES)
def test_cross_entropy_matches_torch_class_ids(use_w, ignore, ls, spatial, reduction):
    x = rand_logits(6, 4, *spatial).requires_grad_()
    t = rand_target(6, 4, *spatial)
    if ignore:
        t.view(-1)[::3] = -100
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=D) if use_w else None
    ours = LF.cross_entropy_loss(x, t, weight=w, label_smoothing=ls, reduction=reduction)
    ref = F.cross_entropy(x, t, weight=w, label_smoothing=ls, reduction=reduction)
    close(ours, ref)
    g1, = torch.autograd.grad(ours.sum(), x)
    g2, = torch.autograd.grad(ref.sum(), x)
    close(g1, g2)


@pytest.mark.parametrize("use_w,ls,spatial,reduction", [
    c for c in itertools.product([False, True], [0.0, 0.3], [(), (2, 3)],
                                 ["mean", "sum", "none"])
])
def test_cross_entropy_matches_torch_soft_targets(use_w, ls, spatial, reduction):
    x = rand_logits(5, 4, *spatial)
    q = rand_soft(5, 4, *spatial)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=D) if use_w else None
    close(LF.cross_entropy_loss(x, q, weight=w, label_smoothing=ls, reduction=reduction),
          F.cross_entropy(x, q, weight=w, label_smoothing=ls, reduction=reduction))


def test_cross_entropy_custom_ignore_index_and_module():
    x, t = rand_logits(), rand_target()
    t[2] = 3
    mod = losslab.create("cross_entropy", ignore_index=3, weight=[1, 2, 3, 4, 5])
    close(mod(x, t), F.cross_entropy(x, t, ignore_index=3,
                                     weight=torch.tensor([1, 2, 3, 4, 5.0], dtype=D)))


def test_cross_entropy_oracle_loop():
    x, t = rand_logits(), rand_target()

    def ce(row, y):
        return -math.log(softmax_row(row)[y])

    close(LF.cross_entropy_loss(x, t, reduction="none"), per_item_oracle(x, t, ce))


def _ce_zloss_oracle(x, t, w, tw, lam, ls, ignore=-100):
    """Loops: per-item CE + lam lse^2, token-weighted mean over non-ignored items."""
    n, c = x.shape
    num = z_num = den = 0.0
    per, per_z = [], []
    for i in range(n):
        y = int(t[i])
        if y == ignore:
            per.append(0.0)
            per_z.append(0.0)
            continue
        row = [float(v) for v in x[i]]
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        wc = [1.0] * c if w is None else [float(v) for v in w]
        ce = -(1 - ls) * wc[y] * logp[y] - ls / c * sum(wc[k] * logp[k] for k in range(c))
        zl = lam * lse * lse
        ti = 1.0 if tw is None else float(tw[i])
        per.append(ti * (ce + zl))
        per_z.append(ti * zl)
        num += ti * (ce + zl)
        z_num += ti * zl
        den += ti * wc[y]
    return num / den, z_num / den, torch.tensor(per, dtype=D), torch.tensor(per_z, dtype=D)


@pytest.mark.parametrize("use_w,ls,use_tw", [(False, 0.0, True), (True, 0.1, True),
                                             (True, 0.0, False), (False, 0.2, True)])
def test_cross_entropy_logz_penalty_and_token_weight_oracle(use_w, ls, use_tw):
    x, t = rand_logits(n=9), rand_target(n=9)
    t[3] = -100
    w = [0.5, 1.0, 2.0, 1.5, 0.7] if use_w else None
    tw = torch.rand(9, generator=torch.Generator().manual_seed(5), dtype=D) if use_tw else None
    mean, zmean, per, per_z = _ce_zloss_oracle(x, t, w, tw, 0.01, ls)
    kw: dict[str, Any] = dict(weight=w, label_smoothing=ls, logz_penalty=0.01, token_weight=tw)
    loss, z = LF.cross_entropy_loss(x, t, return_z_loss=True, **kw)
    close(loss, torch.tensor(mean, dtype=D))
    close(z, torch.tensor(zmean, dtype=D))
    none, z_none = LF.cross_entropy_loss(x, t, return_z_loss=True, reduction="none", **kw)
    close(none, per)
    close(z_none, per_z)
    total, z_total = LF.cross_entropy_loss(x, t, return_z_loss=True, reduction="sum", **kw)
    close(total, per.sum())
    close(z_total, per_z.sum())


def test_cross_entropy_z_loss_is_returned_not_hidden():
    """The z-term is only in the loss when asked for; return_z_loss isolates it, and the
    loss minus it is torch's CE."""
    x, t = rand_logits(), rand_target()
    t[0] = -100
    plain = F.cross_entropy(x, t)
    loss, z = LF.cross_entropy_loss(x, t, logz_penalty=1e-3, return_z_loss=True)
    close(loss - z, plain)
    assert float(z) > 0
    off, z_off = LF.cross_entropy_loss(x, t, return_z_loss=True)
    close(off, plain)
    assert float(z_off) == 0.0
    close(LF.cross_entropy_loss(x, t), plain)  # the default returns one tensor


@pytest.mark.parametrize("use_w,ls", [(False, 0.0), (True, 0.1)])
def test_cross_entropy_matches_linear_cross_entropy_options(use_w, ls):
    """cross_entropy on logits h @ W.T == the fused linear_cross_entropy with the same
    logz_penalty, token_weight, class weights and smoothing (values and gradients)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(10, 6, generator=g, dtype=D, requires_grad=True)
    wt = torch.randn(5, 6, generator=g, dtype=D)
    t = torch.randint(0, 5, (10,), generator=g)
    t[1] = -100
    tw = torch.rand(10, generator=g, dtype=D)
    cw = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.7], dtype=D) if use_w else None
    for reduction in ("mean", "sum", "none"):
        a = LF.cross_entropy_loss(h @ wt.T, t, weight=cw, label_smoothing=ls,
                                  logz_penalty=0.05, token_weight=tw, reduction=reduction)
        b = LF.linear_cross_entropy_loss(h, wt, t, class_weight=cw, label_smoothing=ls,
                                         logz_penalty=0.05, token_weight=tw,
                                         reduction=reduction)
        assert isinstance(b, torch.Tensor)
        close(a, b)
        ga, = torch.autograd.grad(a.sum(), h)
        gb, = torch.autograd.grad(b.sum(), h)
        close(ga, gb)


def test_cross_entropy_token_weight_soft_targets_and_module():
    x, q = rand_logits(6, 5, 2), rand_soft(6, 5, 2)
    tw = torch.rand(6, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    per = -(q * torch.log_softmax(x, 1)).sum(1)
    close(LF.cross_entropy_loss(x, q, token_weight=tw), (tw * per).sum() / tw.sum())
    mod = losslab.create("cross_entropy", logz_penalty=0.0)
    close(mod(x, q, token_weight=tw), (tw * per).sum() / tw.sum())
    with pytest.raises(ValueError, match="token_weight"):
        LF.cross_entropy_loss(x, q, token_weight=tw[:, :1])
    with pytest.raises(ValueError, match="token_weight"):
        LF.cross_entropy_loss(x, q, token_weight=tw.long())
    with pytest.raises(ValueError, match="logz_penalty"):
        LF.cross_entropy_loss(x, q, logz_penalty=-1.0)
    with pytest.raises(ValueError, match="takes no token_weight"):
        losslab.create("focal")(x, q.argmax(1), token_weight=tw)


def test_cross_entropy_token_weight_all_zero_or_all_ignored_is_zero():
    x = rand_logits().requires_grad_()
    t = rand_target()
    loss = LF.cross_entropy_loss(x, t, token_weight=torch.zeros(7, dtype=D), logz_penalty=0.1)
    assert float(loss) == 0.0
    loss.backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad) == 0


# --------------------------------------------------------------------------------------------
# focal
# --------------------------------------------------------------------------------------------


def focal_oracle(row, y, gamma, alpha_vec=None):
    p = softmax_row(row)[y]
    a = 1.0 if alpha_vec is None else alpha_vec[y]
    return -a * (1 - p) ** gamma * math.log(p)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
def test_focal_oracle(gamma):
    x, t = rand_logits(), rand_target()
    close(LF.focal_loss(x, t, gamma=gamma, reduction="none"),
          per_item_oracle(x, t, lambda r, y: focal_oracle(r, y, gamma)))
    alpha = [0.1, 0.2, 0.3, 0.2, 0.2]
    close(LF.focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none"),
          per_item_oracle(x, t, lambda r, y: focal_oracle(r, y, gamma, alpha)))


def test_focal_gamma0_is_ce_and_soft_oracle():
    x, t = rand_logits(), rand_target()
    close(LF.focal_loss(x, t, gamma=0.0), F.cross_entropy(x, t))
    q = rand_soft()
    ref = []
    for i in range(x.shape[0]):
        p = softmax_row(x[i].tolist())
        ref.append(sum(-q[i, c].item() * (1 - p[c]) ** 2 * math.log(p[c]) for c in range(5)))
    close(LF.focal_loss(x, q, reduction="none"), torch.tensor(ref, dtype=D))


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("spatial", [(), (3, 4)])
def test_focal_matches_kornia(alpha, spatial):
    kornia = pytest.importorskip("kornia")
    x, t = rand_logits(4, 3, *spatial), rand_target(4, 3, *spatial)
    t.view(-1)[::5] = -100
    ref = kornia.losses.focal_loss(x, t, alpha=alpha, gamma=2.0, reduction="none").sum(1)
    close(LF.focal_loss(x, t, alpha=alpha, gamma=2.0, reduction="none"), ref)


def test_binary_sigmoid_focal_formula_via_two_class_softmax():
    # torchvision's sigmoid_focal_loss formula, written out: with logit z = x1 - x0 and
    # p = sigmoid(z): -alpha_t (1 - p_t)^gamma log p_t, alpha_t = alpha (y=1) / 1 - alpha (y=0).
    x, t = rand_logits(9, 2), rand_target(9, 2)
    z = x[:, 1] - x[:, 0]
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, t.to(D), reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    ref = alpha_t * ce * (1 - p_t) ** 2
    close(LF.focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="none"), ref)


def test_focal_small_gamma_saturated_gradient_finite():
    x = torch.tensor([[60.0, -60.0, 0.0]], dtype=torch.float32, requires_grad=True)
    t = torch.tensor([0])
    LF.focal_loss(x, t, gamma=0.5).backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------
# poly1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1.0, -0.5, 3.0])
def test_poly1_oracle(eps):
    x, t = rand_logits(), rand_target()

    def poly(row, y):
        p = softmax_row(row)[y]
        return -math.log(p) + eps * (1 - p)

    def poly_focal(row, y):
        p = softmax_row(row)[y]
        return -(1 - p) ** 2 * math.log(p) + eps * (1 - p) ** 3

    close(LF.poly1_loss(x, t, epsilon=eps, reduction="none"), per_item_oracle(x, t, poly))
    close(LF.poly1_loss(x, t, epsilon=eps, focal=True, reduction="none"),
          per_item_oracle(x, t, poly_focal))


def test_poly1_soft_targets_and_eps0_is_ce():
    x, q, t = rand_logits(), rand_soft(), rand_target()
    close(LF.poly1_loss(x, t, epsilon=0.0), F.cross_entropy(x, t))
    p = torch.softmax(x, 1)
    ref = F.cross_entropy(x, q, reduction="none") + 1.0 * (1 - (q * p).sum(1))
    close(LF.poly1_loss(x, q, reduction="none"), ref)
    onehot = F.one_hot(t, 5).to(D)
    close(LF.poly1_loss(x, onehot), LF.poly1_loss(x, t))


# --------------------------------------------------------------------------------------------
# comp_sum (and its members gce, mae of losslab.losses.robust)
# --------------------------------------------------------------------------------------------


def comp_sum_oracle(row, y, tau):
    u = sum(math.exp(row[k] - row[y]) for k in range(len(row)) if k != y)
    if tau == 1:
        return math.log1p(u)
    return ((1 + u) ** (1 - tau) - 1) / (1 - tau)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0, 1.5, 1.7, 2.0, 3.0])
def test_comp_sum_oracle(tau):
    x, t = rand_logits(), rand_target()
    close(LF.comp_sum_loss(x, t, tau=tau, reduction="none"),
          per_item_oracle(x, t, lambda r, y: comp_sum_oracle(r, y, tau)), rtol=1e-9)


def test_comp_sum_special_cases():
    x, t = rand_logits(), rand_target()
    p_y = torch.softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    close(LF.comp_sum_loss(x, t, tau=1.0), F.cross_entropy(x, t))
    close(LF.comp_sum_loss(x, t, tau=1.7), LF.gce_loss(x, t, q=0.7))
    close(LF.gce_loss(x, t, q=0.7, reduction="none"), (1 - p_y**0.7) / 0.7)
    close(LF.comp_sum_loss(x, t, tau=0.0, reduction="none"), 1 / p_y - 1)
    close(LF.comp_sum_loss(x, t, tau=2.0, reduction="none"), 1 - p_y)
    close(LF.mae_loss(x, t), 2 * LF.comp_sum_loss(x, t, tau=2.0))
    # tau -> 1 is continuous
    close(LF.comp_sum_loss(x, t, tau=1 + 1e-7), F.cross_entropy(x, t), rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_comp_sum_small_tau_extreme_logits_finite(dtype):
    x = torch.tensor([[0.0, 300.0, -300.0], [5.0, 0.0, 1.0]], dtype=dtype, requires_grad=True)
    t = torch.tensor([0, 0])
    for tau in (0.0, 0.5):
        loss = LF.comp_sum_loss(x, t, tau=tau).float()
        assert torch.isfinite(loss)
        g, = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all() and g[0, 0] < 0  # still pushes the target up


# --------------------------------------------------------------------------------------------
# z_loss
# --------------------------------------------------------------------------------------------


def z_oracle(row, y, a, b):
    c = len(row)
    mu = sum(row) / c
    sigma = math.sqrt(sum(v * v for v in row) / c - mu * mu)
    z = (row[y] - mu) / sigma
    return math.log1p(math.exp(a * (b - z))) / a


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (0.1, 10.0), (3.0, -0.5)])
def test_z_loss_oracle(a, b):
    x, t = rand_logits(), rand_target()
    close(LF.z_loss(x, t, a=a, b=b, reduction="none"),
          per_item_oracle(x, t, lambda r, y: z_oracle(r, y, a, b)), rtol=1e-9)


def test_z_loss_shift_scale_invariant_and_constant_logits():
    x, t = rand_logits(5, 7, 2), rand_target(5, 7, 2)
    base = LF.z_loss(x, t, reduction="none")
    for alpha, beta in [(3.0, -2.0), (0.01, 100.0), (250.0, 7.0)]:
        close(LF.z_loss(x * alpha + beta, t, reduction="none"), base, rtol=1e-8)
    const = torch.full((2, 4), 3.0, dtype=D, requires_grad=True)
    loss = LF.z_loss(const, torch.tensor([0, 1]))
    loss.backward()
    close(loss, F.softplus(torch.tensor(1.0, dtype=D)))
    assert torch.isfinite(const.grad).all()


# --------------------------------------------------------------------------------------------
# logit_adjusted, ldam
# --------------------------------------------------------------------------------------------


def test_logit_adjusted():
    x, t = rand_logits(), rand_target()
    prior = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=D)
    close(LF.logit_adjusted_loss(x, t, class_priors=prior, tau=1.5),
          F.cross_entropy(x + 1.5 * prior.log(), t))
    close(LF.logit_adjusted_loss(x, t, class_priors=prior * 37, tau=1.0),
          LF.logit_adjusted_loss(x, t, class_priors=prior, tau=1.0))
    close(LF.logit_adjusted_loss(x, t, class_priors=prior, tau=0.0), F.cross_entropy(x, t))


def test_ldam_oracle():
    x, t = rand_logits(), rand_target()
    counts = [400, 100, 50, 20, 5]
    raw = [n ** -0.25 for n in counts]
    m = [0.5 * r / max(raw) for r in raw]

    def ldam(row, y):
        z = [30.0 * (row[k] - (m[k] if k == y else 0.0)) for k in range(5)]
        return -math.log(softmax_row(z)[y])

    close(LF.ldam_loss(x, t, class_counts=counts, reduction="none"),
          per_item_oracle(x, t, ldam), rtol=1e-9)
    w = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0], dtype=D)
    onehot = F.one_hot(t, 5).to(D)
    ref = F.cross_entropy(30 * (x - onehot * torch.tensor(m, dtype=D)), t, weight=w)
    close(LF.ldam_loss(x, t, class_counts=counts, weight=w), ref)


# --------------------------------------------------------------------------------------------
# multi-class hinge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [1.0, 0.1, 3.0])
def test_hinge_oracles_and_torch_multi_margin(margin):
    x, t = rand_logits(), rand_target()

    def cs(row, y):
        return max(0.0, margin + max(row[k] for k in range(5) if k != y) - row[y])

    def ww(row, y):
        return sum(max(0.0, margin + row[k] - row[y]) for k in range(5) if k != y)

    close(LF.crammer_singer_loss(x, t, margin=margin, reduction="none"),
          per_item_oracle(x, t, cs))
    close(LF.weston_watkins_loss(x, t, margin=margin, reduction="none"),
          per_item_oracle(x, t, ww))
    close(LF.weston_watkins_loss(x, t, margin=margin),
          5 * F.multi_margin_loss(x, t, p=1, margin=margin))


# --------------------------------------------------------------------------------------------
# stablemax_ce
# --------------------------------------------------------------------------------------------


def s_fn(v):
    return v + 1 if v >= 0 else 1 / (1 - v)


def test_stablemax_oracle_and_extremes():
    x, t = rand_logits(), rand_target()

    def sm(row, y):
        return -math.log(s_fn(row[y]) / sum(s_fn(v) for v in row))

    close(LF.stablemax_ce_loss(x, t, reduction="none"), per_item_oracle(x, t, sm))
    big = torch.tensor([[1e30, -1e30, 0.0], [3e38, 3e38, 3e38]], requires_grad=True)
    loss = LF.stablemax_ce_loss(big, torch.tensor([1, 0]), reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(big.grad).all()
    q = rand_soft()
    close(LF.stablemax_ce_loss(x, q, reduction="none"),
          -(q * torch.log(torch.stack([torch.tensor([s_fn(v) for v in r.tolist()], dtype=D)
                                       for r in x]).div_(
              torch.stack([torch.tensor([s_fn(v) for v in r.tolist()], dtype=D)
                           for r in x]).sum(1, keepdim=True)))).sum(1))


# --------------------------------------------------------------------------------------------
# anyloss
# --------------------------------------------------------------------------------------------


def anyloss_metric_oracle(p_list, y_list, metric, beta=1.0, big_l=73.0, eps=1e-7):
    yh = [1 / (1 + math.exp(-big_l * (p - 0.5))) for p in p_list]
    tp = sum(y * h for y, h in zip(y_list, yh))
    fn = sum(y * (1 - h) for y, h in zip(y_list, yh))
    fp = sum((1 - y) * h for y, h in zip(y_list, yh))
    tn = sum((1 - y) * (1 - h) for y, h in zip(y_list, yh))
    if metric in ("f1", "fbeta"):
        b2 = 1.0 if metric == "f1" else beta * beta
        return (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + eps)
    if metric == "accuracy":
        return (tp + tn) / (tp + tn + fp + fn + eps)
    tpr, tnr = tp / (tp + fn + eps), tn / (tn + fp + eps)
    return (tpr + tnr) / 2 if metric == "balanced_accuracy" else math.sqrt(tpr * tnr + eps)


@pytest.mark.parametrize("metric", ["f1", "fbeta", "balanced_accuracy", "gmean", "accuracy"])
def test_anyloss_binary_and_macro_oracle(metric):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20, generator=g, dtype=D) * 0.3
    y = torch.randint(0, 2, (20,), generator=g)
    p = [1 / (1 + math.exp(-v)) for v in z.tolist()]
    ref = 1 - anyloss_metric_oracle(p, y.tolist(), metric, beta=2.0)
    close(LF.anyloss(z, y, metric=metric, beta=2.0), ref, rtol=1e-9)
    close(LF.anyloss(z[:, None], y, metric=metric, beta=2.0), ref, rtol=1e-9)
    x, t = rand_logits(20, 4, scale=0.3), rand_target(20, 4)
    probs = torch.softmax(x, 1)
    per_class = [anyloss_metric_oracle(probs[:, c].tolist(), (t == c).long().tolist(), metric,
                                       beta=2.0) for c in range(4)]
    close(LF.anyloss(x, t, metric=metric, beta=2.0), 1 - sum(per_class) / 4, rtol=1e-9)


def test_anyloss_perfect_prediction_near_zero_and_ignore():
    t = torch.tensor([0, 1, 2, 1, 0])
    x = F.one_hot(t, 3).to(D) * 20
    assert LF.anyloss(x, t) < 1e-6
    t2 = t.clone()
    t2[1] = -100
    close(LF.anyloss(x, t2), LF.anyloss(x[[0, 2, 3, 4]], t[[0, 2, 3, 4]]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        LF.anyloss(torch.randn(4), torch.tensor([0, 1, 2, 1]))


# --------------------------------------------------------------------------------------------
# Contract-style checks over the logits losses of classification, robust and sequence
# --------------------------------------------------------------------------------------------

MY_LOSSES = [
    "aldr_kl", "anyloss", "comp_sum", "crammer_singer", "cross_entropy", "focal", "gce",
    "ldam", "ldr_kl", "logit_adjusted", "logz_penalty", "mae", "nce", "nce_mae", "nce_rce",
    "nfl", "nfl_rce", "poly1", "rce", "sce", "stablemax_ce", "weston_watkins", "z_loss",
]
SOFT = {"cross_entropy", "focal", "poly1", "logit_adjusted", "stablemax_ce", "logz_penalty"}
C = 4


def make(name, **kw):
    return losslab.create(name, **{**losslab.spec(name).example_hparams, **kw})


def call(mod, x, t):
    if losslab.spec(mod.spec.name).needs_index:
        return mod(x, t, index=torch.arange(x.shape[0]))
    return mod(x, t)


def spatial_ok(name):
    return name != "aldr_kl"


def test_registry_entries():
    assert set(MY_LOSSES) <= set(losslab.available(kind="logits"))
    for name in MY_LOSSES:
        s = losslab.spec(name)
        assert s.function is getattr(LF, s.function_name)
        assert s.kind == "logits"


@pytest.mark.parametrize("name", MY_LOSSES)
def test_gradcheck_and_module_equals_functional(name):
    x = rand_logits(6, C, scale=1.0).requires_grad_()
    t = rand_target(6, C)
    mod = make(name)
    if name == "aldr_kl":
        mod.eval()
    f = lambda z: call(mod, z, t)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    kw = mod.call_kwargs()
    if name == "aldr_kl":
        ref = LF.aldr_kl_loss(x, t, lambdas=mod.lambdas.clone(), index=torch.arange(6),
                              update=False, **kw)
        close(LF.aldr_kl_loss(x, t, **kw), ref)  # no state: every sample on its first visit
    else:
        ref = losslab.spec(name).function(x, t, **kw)
    close(call(mod, x, t), ref)


@pytest.mark.parametrize("name", [n for n in MY_LOSSES if n != "anyloss"])
def test_reduction_shapes(name):
    spatial = (2, 3) if spatial_ok(name) else ()
    x, t = rand_logits(4, C, *spatial), rand_target(4, C, *spatial)
    none = call(make(name, reduction="none"), x, t)
    assert none.shape == (4, *spatial)
    close(call(make(name, reduction="sum"), x, t), none.sum())
    close(call(make(name, reduction="mean"), x, t), none.mean())


@pytest.mark.parametrize("name", MY_LOSSES)
def test_all_ignored_is_zero_with_zero_grad(name):
    x = rand_logits(4, C).requires_grad_()
    t = torch.full((4,), -100)
    loss = call(make(name), x, t)
    assert loss.item() == 0.0
    g, = torch.autograd.grad(loss, x)
    assert torch.all(g == 0)


@pytest.mark.parametrize("name", MY_LOSSES)
def test_ignored_items_are_skipped(name):
    x, t = rand_logits(6, C), rand_target(6, C)
    t2 = t.clone()
    t2[[1, 4]] = -100
    keep = [0, 2, 3, 5]
    close(call(make(name), x, t2), call(make(name), x[keep], t[keep]))


@pytest.mark.parametrize("name", MY_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extreme_values_finite(name, dtype):
    x = rand_logits(6, C, scale=1.0, dtype=dtype)
    x[0, 0], x[1, 1], x[2] = 6e4 if dtype == torch.float16 else 1e30, -6e4, 0.0
    x = x.requires_grad_()
    t = rand_target(6, C)
    loss = call(make(name), x, t)
    assert loss.dtype == torch.float32  # half inputs are computed and returned in float32 (#11.2)
    loss.backward()
    assert torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("name", MY_LOSSES)
def test_bad_inputs_raise(name):
    mod = make(name)
    x, t = rand_logits(4, C), rand_target(4, C)
    bad = t.clone()
    bad[0] = C
    with pytest.raises(ValueError, match=r"target.*\[0, 4\)"):
        call(mod, x, bad)
    bad[0] = -1
    with pytest.raises(ValueError, match="target"):
        call(mod, x, bad)
    with pytest.raises(ValueError, match="target"):
        call(mod, x, t[:3])
    with pytest.raises(ValueError, match="logits"):
        call(mod, x.long(), t)
    if name not in SOFT:
        with pytest.raises(ValueError, match="soft"):
            call(mod, x, rand_soft(4, C))


@pytest.mark.parametrize("name", MY_LOSSES)
def test_state_dict_round_trip(name):
    a = make(name)
    x, t = rand_logits(4, C), rand_target(4, C)
    call(a, x, t)
    b = make(name)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        close(b.state_dict()[k], v)


# --------------------------------------------------------------------------------------------
# Issue #11 "Bad input and faults", over every logits loss of the three families (the number
# after "#11." is the finding each test covers)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MY_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_float32_equal_to_float32_inputs(name, dtype):  # 11.2
    x = rand_logits(6, C, scale=3.0, dtype=dtype)
    t = rand_target(6, C)
    out = call(make(name), x, t)
    assert out.dtype == torch.float32
    # the same (rounded) values given as float32: the same computation
    torch.testing.assert_close(out, call(make(name), x.float(), t), rtol=1e-6, atol=1e-6)
    none = call(make(name, **({} if name == "anyloss" else {"reduction": "none"})), x, t)
    assert none.dtype == torch.float32


@pytest.mark.parametrize("name", MY_LOSSES)
def test_integer_target_dtypes_give_the_int64_result_and_bool_is_rejected(name):  # 11.7
    x, t = rand_logits(6, C), rand_target(6, C)
    t[2] = -100
    ref = call(make(name), x, t)
    for dtype in (torch.int8, torch.int16, torch.int32):
        close(call(make(name), x, t.to(dtype)), ref)
    t_u8 = t.clone()
    t_u8[2] = 0
    ref_u8 = call(make(name, ignore_index=255), x, t_u8.masked_fill(t < 0, 255))
    close(call(make(name, ignore_index=255), x, t_u8.masked_fill(t < 0, 255).to(torch.uint8)),
          ref_u8)
    with pytest.raises(ValueError, match="bool"):
        call(make(name), x, t > 0)


@pytest.mark.parametrize("name", MY_LOSSES)
def test_masked_class_gives_a_finite_loss_and_gradient(name):  # 11.8
    x, t = rand_logits(6, C), rand_target(6, C)
    x[torch.arange(6), (t + 1) % C] = -math.inf  # a class that is not the row's target
    x[0, (t[0] + 2) % C] = -math.inf  # two masked classes in row 0
    x.requires_grad_()
    loss = call(make(name), x, t)
    assert torch.isfinite(loss), f"{name}: {loss}"
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", MY_LOSSES)
def test_nan_logit_gives_nan_even_beside_a_masked_class(name):  # 11.8 (the mask hides no NaN)
    x, t = rand_logits(6, C), rand_target(6, C)
    x[0, (t[0] + 1) % C] = -math.inf
    x[0, (t[0] + 2) % C] = math.nan
    assert torch.isnan(call(make(name), x, t))


@pytest.mark.parametrize("name", sorted(SOFT))
@pytest.mark.parametrize("spatial", [(), (2, 3)])
def test_soft_targets_must_be_distributions(name, spatial):  # 11.6
    x, q = rand_logits(4, C, *spatial), rand_soft(4, C, *spatial)
    call(make(name), x, q)
    call(make(name), x, q * (1 + 5e-4))  # within PROB_ATOL
    call(make(name), x, q.to(torch.bfloat16))  # rounded to bf16: within the dtype's epsilon
    negative = q.clone()  # rows that sum to 1 with a negative entry
    negative[:, 0] = -0.1
    negative[:, 1:] = q[:, 1:] / q[:, 1:].sum(1, keepdim=True) * 1.1
    nan = q.clone()
    nan.view(-1)[0] = math.nan
    for bad, what in ((q * 2, "sum to 1"), (negative, ">= 0"), (nan, "finite")):
        with pytest.raises(ValueError, match=f"target.*{what}"):
            call(make(name), x, bad)
        with pytest.raises(ValueError, match="target"):
            losslab.spec(name).function(x, bad, **make(name).call_kwargs())


def test_degenerate_declarations():  # 11.9
    # Every logits loss defines the all-ignored batch as zero (no item counts); none declares
    # one_class: a batch whose targets are all one class is an ordinary batch (next test).
    for name in MY_LOSSES:
        assert losslab.spec(name).degenerate == ("all_ignored",), name


@pytest.mark.parametrize("name", MY_LOSSES)
def test_one_class_batch_is_an_ordinary_batch(name):  # 11.9
    x = rand_logits(6, C).requires_grad_()
    loss = call(make(name), x, torch.zeros(6, dtype=torch.long))
    assert torch.isfinite(loss) and loss != 0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(g) > 0


@pytest.mark.parametrize("name", MY_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_ignored_is_an_exact_zero_in_every_dtype(name, dtype):  # 11.9
    x = rand_logits(4, C, dtype=dtype).requires_grad_()
    loss = call(make(name), x, torch.full((4,), -100))
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert g.dtype == dtype and torch.count_nonzero(g) == 0


NAN = math.nan
#: (loss, hyperparameter, a value it must reject), from the issue's list and the declared rules
BAD_HPARAMS = [
    ("cross_entropy", "label_smoothing", NAN), ("cross_entropy", "label_smoothing", 1.5),
    ("cross_entropy", "label_smoothing", "0.1"), ("cross_entropy", "ignore_index", 1.5),
    ("cross_entropy", "ignore_index", "-100"),
    ("focal", "gamma", NAN), ("focal", "gamma", -1.0), ("focal", "gamma", "2"),
    ("focal", "alpha", NAN), ("focal", "alpha", 1.5), ("focal", "alpha", True),
    ("poly1", "epsilon", NAN), ("poly1", "epsilon", -2.0), ("poly1", "focal", 1),
    ("poly1", "gamma", NAN),
    ("comp_sum", "tau", NAN), ("comp_sum", "tau", -0.5), ("comp_sum", "tau", "1"),
    ("z_loss", "a", 0.0), ("z_loss", "a", NAN), ("z_loss", "b", NAN), ("z_loss", "b", "1"),
    ("z_loss", "eps", 0.0),
    ("logit_adjusted", "tau", NAN), ("logit_adjusted", "tau", -1.0),
    ("ldam", "scale", 0.0), ("ldam", "scale", NAN), ("ldam", "max_margin", NAN),
    ("ldam", "max_margin", -0.5),
    ("crammer_singer", "margin", "0.2"), ("crammer_singer", "margin", NAN),
    ("weston_watkins", "margin", -1.0), ("weston_watkins", "margin", math.inf),
    ("stablemax_ce", "ignore_index", None),
    ("anyloss", "beta", -1.0), ("anyloss", "beta", NAN), ("anyloss", "amplifier", 0.0),
    ("anyloss", "metric", "f2"),
]
#: per-class vectors (module buffers): checked by every functional call
BAD_VECTORS = [
    ("cross_entropy", "weight", [1.0, NAN, 1.0, 1.0]), ("cross_entropy", "weight", [1, -1, 1, 1]),
    ("cross_entropy", "weight", "1,1,1,1"),
    ("focal", "alpha", [0.25, NAN, 0.25, 0.25]), ("focal", "alpha", [0.25, -0.1, 0.25, 0.25]),
    ("logit_adjusted", "class_priors", (0.4, 0.3, 0.0, 0.3)),
    ("logit_adjusted", "class_priors", (0.4, NAN, 0.2, 0.1)),
    ("ldam", "class_counts", (500, 100, -1, 10)), ("ldam", "class_counts", (500, math.inf, 5, 1)),
    ("ldam", "weight", [1.0, 1.0, NAN, 1.0]),
]


@pytest.mark.parametrize("name,key,value", BAD_HPARAMS,
                         ids=[f"{n}-{k}={v!r}" for n, k, v in BAD_HPARAMS])
def test_bad_hyperparameters_raise_at_construction_and_call(name, key, value):  # 11.5
    with pytest.raises(ValueError, match=key):
        make(name, **{key: value})
    x, t = rand_logits(4, C), rand_target(4, C)
    kw = {**make(name).call_kwargs(), key: value}
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(x, t, **kw)


@pytest.mark.parametrize("name,key,value", BAD_VECTORS,
                         ids=[f"{n}-{k}={v!r}" for n, k, v in BAD_VECTORS])
def test_bad_per_class_vectors_raise(name, key, value):  # 11.5
    x, t = rand_logits(4, C), rand_target(4, C)
    kw = {**make(name).call_kwargs(), key: value}
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(x, t, **kw)


def test_every_shell_declares_its_hyperparameters():  # 11.5
    from losslab._hparams import HParamCheck

    for name in MY_LOSSES:
        s = losslab.spec(name)
        assert isinstance(s.module.check, HParamCheck), name
        assert set(s.defaults) - {"reduction"} <= set(s.module.check.rules), name


def test_z_loss_leaves_masked_classes_out_of_the_statistics():  # 11.8
    x, t = rand_logits(6, 5), rand_target(6, 5)
    keep = torch.ones(6, 5, dtype=torch.bool)
    keep[torch.arange(6), (t + 2) % 5] = False
    keep[0, (t[0] + 1) % 5] = False
    xm = x.masked_fill(~keep, -math.inf).requires_grad_()
    out = LF.z_loss(xm, t, reduction="none")
    for i in range(6):
        cols = keep[i].nonzero().squeeze(1)
        y = int((cols == t[i]).nonzero())
        close(out[i], LF.z_loss(x[i, cols][None], torch.tensor([y])))
    out.sum().backward()
    assert torch.isfinite(xm.grad).all() and (xm.grad[~keep] == 0).all()
    # a masked target is an impossible prediction: an infinite loss
    xt = x.clone()
    xt[0, t[0]] = -math.inf
    assert LF.z_loss(xt, t, reduction="none")[0] == math.inf
