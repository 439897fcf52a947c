"""Distillation losses: loop oracles from the papers' formulas (fp64), torch peers, properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.functional import binary_kl_loss, cosine_alignment_loss, kd_loss


def logits_pair(n: int = 5, c: int = 6, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return s.requires_grad_(True), t.requires_grad_(True), y


def softmax_list(z: list[float], temp: float) -> list[float]:
    m = max(v / temp for v in z)
    e = [math.exp(v / temp - m) for v in z]
    return [v / sum(e) for v in e]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.9), (4.0, 0.0), (3.0, 1.0)])
def test_kd_matches_loop_oracle(temperature: float, alpha: float) -> None:
    s, t, y = logits_pair()
    S, T = s.tolist(), t.tolist()
    want = []
    for i in range(len(S)):
        p, q = softmax_list(S[i], temperature), softmax_list(T[i], temperature)
        kl = sum(qc * math.log(qc / pc) for pc, qc in zip(p, q))
        p1 = softmax_list(S[i], 1.0)
        ce = -math.log(p1[int(y[i])])
        want.append(alpha * temperature**2 * kl + (1 - alpha) * ce)
    got = kd_loss(s, t, target=y, temperature=temperature, alpha=alpha, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    no_target = kd_loss(s, t, temperature=temperature, alpha=alpha)
    kl_only = [w - (1 - alpha) * -math.log(softmax_list(S[i], 1.0)[int(y[i])])
               for i, w in enumerate(want)]
    assert float(no_target.detach()) == pytest.approx(sum(kl_only) / len(kl_only), rel=1e-12)


def test_kd_matches_torch_kl_div_and_cross_entropy() -> None:
    s, t, y = logits_pair(seed=1)
    T, alpha = 2.0, 0.3
    peer = alpha * T**2 * F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1),
                                   log_target=True, reduction="batchmean")
    peer = peer + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, target=y, temperature=T, alpha=alpha), peer)
    gs, gt = torch.autograd.grad(kd_loss(s, t, target=y, temperature=T, alpha=alpha), (s, t))
    ps, pt = torch.autograd.grad(peer, (s, t))
    torch.testing.assert_close(gs, ps)
    torch.testing.assert_close(gt, pt)


def test_kd_properties() -> None:
    s, _, y = logits_pair(seed=2)
    # the soft term vanishes when the student equals the teacher (any temperature)
    assert abs(float(kd_loss(s, s.detach().clone(), temperature=5.0).detach())) < 1e-12
    # alpha=0 is plain cross-entropy; shifting logits per row changes nothing
    torch.testing.assert_close(kd_loss(s, s.detach() * 3, target=y, alpha=0.0),
                               F.cross_entropy(s, y))
    shift = torch.randn(s.shape[0], 1, dtype=torch.float64)
    t = torch.randn_like(s)
    torch.testing.assert_close(kd_loss(s + shift, t - shift, target=y), kd_loss(s, t, target=y))
    # soft-target gradient: (T^2 / T) (p_T - q_T) / N per class (Hinton et al., eq. 2)
    T = 3.0
    (g,) = torch.autograd.grad(kd_loss(s, t, temperature=T, alpha=1.0), s)
    want = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / s.shape[0]
    torch.testing.assert_close(g, want)


def test_kd_bad_inputs() -> None:
    s, t, y = logits_pair()
    with pytest.raises(ValueError, match="target"):
        kd_loss(s, t, target=torch.full_like(y, 99))
    with pytest.raises(ValueError, match="target"):
        kd_loss(s, t, target=y.float())
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, t[:, :-1])
    with pytest.raises(ValueError, match="alpha"):
        losslab.create("kd", alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        losslab.create("kd", temperature=0.0)
    m = losslab.create("kd", alpha=0.2)
    torch.testing.assert_close(m(s, t, target=y), kd_loss(s, t, target=y, alpha=0.2))


# ---------------------------------------------------------------------------------------------
# Masked classes: -inf logits (issue #10 item 8)
# ---------------------------------------------------------------------------------------------

INF = float("inf")


def masked_teacher(seed: int = 7):
    """Student logits [4, 5] and teacher logits with -inf at some classes (a masked vocabulary),
    never a whole row."""
    s, t, y = logits_pair(n=4, c=5, seed=seed)
    t = t.detach().clone()
    t[0, 1] = t[2, 4] = t[2, 0] = t[3, 3] = -INF
    y = torch.tensor([0, 2, 1, 4])  # no target on a masked class
    return s, t.requires_grad_(True), y


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_with_minus_inf_teacher_logits_matches_oracle_and_has_finite_gradients(
        temperature: float) -> None:
    s, t, y = masked_teacher()
    S, T = s.tolist(), t.tolist()
    want = []
    for i in range(len(S)):
        p, q = softmax_list(S[i], temperature), softmax_list(T[i], temperature)
        kl = sum(qc * math.log(qc / pc) for pc, qc in zip(p, q) if qc > 0)  # 0 log 0 = 0
        ce = -math.log(softmax_list(S[i], 1.0)[int(y[i])])
        want.append(0.5 * temperature**2 * kl + 0.5 * ce)
    got = kd_loss(s, t, target=y, temperature=temperature, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    gs, gt = torch.autograd.grad(got.sum(), (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    assert torch.count_nonzero(gt[torch.isinf(t)]) == 0
    m = losslab.create("kd", temperature=temperature)
    torch.testing.assert_close(m(s, t, target=y), got.mean())


def test_kd_with_minus_inf_in_both_equals_kd_without_that_class() -> None:
    s, t, y = masked_teacher(seed=8)
    s = s.detach().clone()
    s[0, 1] = -INF  # the same class masked in the student: as if the class did not exist
    s.requires_grad_(True)
    got = kd_loss(s, t, target=y, reduction="none")
    row0 = kd_loss(s[:1, [0, 2, 3, 4]], t[:1, [0, 2, 3, 4]], target=y[:1], reduction="none")
    torch.testing.assert_close(got[:1], row0)
    assert torch.isfinite(got).all()
    gs, gt = torch.autograd.grad(got.sum(), (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()


def test_kd_of_a_teacher_with_itself_is_exactly_zero_also_with_minus_inf() -> None:
    _, t, _ = masked_teacher(seed=9)
    for temperature in (0.5, 1.0, 4.0):
        student = t.detach().clone().requires_grad_(True)
        out = kd_loss(student, t, temperature=temperature, alpha=1.0, reduction="none")
        assert torch.isfinite(out).all()
        assert float(out.detach().abs().max()) < 1e-15
        (g,) = torch.autograd.grad(out.sum(), student)
        assert torch.isfinite(g).all() and float(g.abs().max()) < 1e-15
    # half precision (computed in float32) stays finite too
    half = t.detach().to(torch.float16)
    assert float(kd_loss(half, half).abs()) == 0.0


def test_binary_kl_with_infinite_teacher_logits_is_the_finite_limit() -> None:
    """KL(Bern(q) || Bern(p)) with q in {0, 1} is -log(1 - p) or -log(p) (0 log 0 = 0)."""
    s, _, _ = logits_pair(n=2, c=3, seed=10)
    t = torch.tensor([[-INF, 1.0, INF], [0.5, INF, -2.0]], dtype=torch.float64,
                     requires_grad=True)
    T = 2.0
    want = []
    for srow, trow in zip(s.tolist(), t.tolist()):
        tot = 0.0
        for sc, tc in zip(srow, trow):
            p, q = sigmoid(sc / T), sigmoid(tc / T)
            for qq, pp in ((q, p), (1 - q, 1 - p)):
                tot += qq * math.log(qq / pp) if qq > 0 else 0.0
        want.append(T**2 * tot)
    got = binary_kl_loss(s, t, temperature=T, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    gs, gt = torch.autograd.grad(got.sum(), (s, t))
    assert torch.isfinite(gs).all() and torch.isfinite(gt).all()
    # the same infinite logit on both sides contributes 0 (norm=False and BinaryKL-Norm)
    for norm in (False, True):
        student = t.detach().clone().requires_grad_(True)
        out = binary_kl_loss(student, t, norm=norm, reduction="none")
        assert torch.isfinite(out).all() and float(out.detach().abs().max()) < 1e-15
        (g,) = torch.autograd.grad(out.sum(), student)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_binary_kl_matches_loop_oracle(temperature: float) -> None:
    s, t, _ = logits_pair(seed=3)
    S, T = s.tolist(), t.tolist()
    want, want_norm = [], []
    for i in range(len(S)):
        tot, tot_n = 0.0, 0.0
        for sc, tc in zip(S[i], T[i]):
            p, q = sigmoid(sc / temperature), sigmoid(tc / temperature)
            tot += q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
            d = sigmoid((sc - tc) / temperature)
            tot_n += 0.5 * math.log(0.5 / d) + 0.5 * math.log(0.5 / (1 - d))
        want.append(temperature**2 * tot)
        want_norm.append(temperature**2 * tot_n)
    torch.testing.assert_close(
        binary_kl_loss(s, t, temperature=temperature, reduction="none"),
        torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(
        binary_kl_loss(s, t, temperature=temperature, norm=True, reduction="none"),
        torch.tensor(want_norm, dtype=torch.float64))


def test_binary_kl_matches_torch_kl_div_form_of_official_code() -> None:
    """The official code: T^2 (kl_div(log σ_s, σ_t) + kl_div(log(1-σ_s), 1-σ_t)).sum() / N."""
    s, t, _ = logits_pair(seed=4)
    T = 2.0
    ps, pt = torch.sigmoid(s / T), torch.sigmoid(t / T)
    peer = (F.kl_div(ps.log(), pt, reduction="none")
            + F.kl_div((1 - ps).log(), 1 - pt, reduction="none")).sum() * T**2 / s.shape[0]
    torch.testing.assert_close(binary_kl_loss(s, t), peer)


def test_binary_kl_sees_logit_shifts_that_softmax_kd_ignores() -> None:
    t = torch.tensor([[2.0, 3.0, 4.0]], dtype=torch.float64)
    s = t - 4.0  # [-2, -1, 0]: the same softmax
    assert abs(float(kd_loss(s, t, alpha=1.0))) < 1e-12
    assert float(binary_kl_loss(s, t)) > 0.5
    assert abs(float(binary_kl_loss(t, t))) < 1e-12
    assert abs(float(binary_kl_loss(t, t, norm=True))) < 1e-12
    assert float(binary_kl_loss(s, t, norm=True)) > 0.5
    # extreme logits stay finite in half precision
    big = torch.tensor([[80.0, -80.0, 0.0]], dtype=torch.float16, requires_grad=True)
    out = binary_kl_loss(big, -big.detach())
    out.backward()
    assert big.grad is not None
    assert torch.isfinite(out) and torch.isfinite(big.grad).all()
    with pytest.raises(ValueError, match="target"):
        binary_kl_loss(s, t, target=torch.tensor([0]))
    with pytest.raises(ValueError, match="target"):
        losslab.create("binary_kl")(s, t, target=torch.tensor([0]))


def test_cosine_alignment_matches_loop_and_cosine_embedding_loss() -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    A, B = a.tolist(), b.tolist()
    want = [1 - sum(x * y for x, y in zip(A[i], B[i]))
            / (math.sqrt(sum(x * x for x in A[i])) * math.sqrt(sum(y * y for y in B[i])))
            for i in range(7)]
    torch.testing.assert_close(cosine_alignment_loss(a, b, reduction="none"),
                               torch.tensor(want, dtype=torch.float64))
    peer = torch.nn.CosineEmbeddingLoss()(a, b, torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(cosine_alignment_loss(a, b), peer)
    ga = torch.autograd.grad(cosine_alignment_loss(a, b), a)[0]
    pa = torch.autograd.grad(peer, a)[0]
    torch.testing.assert_close(ga, pa)
    # scale invariance: only the direction is aligned
    torch.testing.assert_close(cosine_alignment_loss(3 * a, 0.5 * b), cosine_alignment_loss(a, b))


def test_distilbert_triple_loss_composes() -> None:
    """5.0 L_ce + 2.0 L_mlm + 1.0 L_cos, written with losslab functions."""
    s, t, y = logits_pair(seed=6)
    hs, ht = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    total = (5.0 * kd_loss(s, t, alpha=1.0) + 2.0 * F.cross_entropy(s, y)
             + 1.0 * cosine_alignment_loss(hs, ht))
    T = 2.0
    want = (5.0 * T**2 * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1),
                                  reduction="batchmean")
            + 2.0 * F.cross_entropy(s, y)
            + torch.nn.CosineEmbeddingLoss()(hs, ht, torch.ones(5)))
    torch.testing.assert_close(total, want)


# ---------------------------------------------------------------------------------------------
# Bad input and faults (issue #11)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["kd", "binary_kl", "cosine_alignment"])
def test_half_inputs_are_computed_and_returned_in_float32(name: str, dtype) -> None:
    """Finding 2: the loss of half inputs is float32 and equals the float32 loss of the same
    values (it used to be rounded back to the input dtype)."""
    s, t, _ = logits_pair(scale=30.0)
    s, t = s.detach().to(dtype), t.detach().to(dtype)
    fn = losslab.spec(name).function
    out = fn(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(s.float(), t.float()), rtol=0, atol=0)
    assert losslab.create(name).to(dtype)(s, t).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_kd_target_of_any_integer_dtype(dtype) -> None:
    """Finding 7: integer targets of any dtype give the int64 result; bool is rejected."""
    s, t, y = logits_pair()
    torch.testing.assert_close(kd_loss(s, t, target=y.to(dtype)), kd_loss(s, t, target=y))
    with pytest.raises(ValueError, match=r"target .*bool"):
        kd_loss(s, t, target=y > 2)


@pytest.mark.parametrize(
    "name,hparams",
    [
        ("kd", {"temperature": math.nan}),
        ("kd", {"temperature": math.inf}),
        ("kd", {"temperature": "2"}),
        ("kd", {"alpha": math.nan}),
        ("kd", {"alpha": True}),
        ("kd", {"alpha": -0.5}),
        ("binary_kl", {"temperature": math.inf}),
        ("binary_kl", {"temperature": 0}),
        ("binary_kl", {"norm": "yes"}),
        ("binary_kl", {"norm": 1}),
    ],
)
def test_bad_hyperparameters_raise_in_module_and_function(name: str, hparams: dict) -> None:
    """Finding 5: every hyperparameter is declared (type, finiteness, range) and checked at
    construction and by the function (an infinite temperature, alpha=True and norm="yes"
    used to be accepted; a string temperature failed with a TypeError)."""
    (key,) = hparams
    with pytest.raises(ValueError, match=key):
        losslab.create(name, **hparams)
    s, t, _ = logits_pair()
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(s, t, **hparams)
