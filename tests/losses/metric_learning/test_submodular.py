"""SCoRe submodular losses: loop oracles from the set functions (fp64), the identities between
the Total-Information and Total-Correlation forms, submodularity consequences (non-negative
total correlation, Fischer's inequality, monotonicity in the number of negatives), invariances
and inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import losslab
import losslab.functional as LF
from tests.losses.metric_learning.common import ORACLE_TOL, batch

FNS = {"score_fl": LF.score_fl_loss, "score_gc": LF.score_gc_loss,
       "score_logdet": LF.score_logdet_loss}
FORMS = ("total_correlation", "total_information")


# -- the oracle: set functions written out with loops --------------------------------------------


def kernel_matrix(x, kernel, bandwidth=1.0):
    n = len(x)
    s = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if kernel == "cosine":
                dot = sum(float(a) * float(b) for a, b in zip(x[i], x[j]))
                ni = math.sqrt(sum(float(a) ** 2 for a in x[i]))
                nj = math.sqrt(sum(float(b) ** 2 for b in x[j]))
                s[i][j] = dot / (ni * nj)
            else:
                d2 = sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j]))
                s[i][j] = math.exp(-d2 / (2 * bandwidth ** 2))
    return s


def f_fl(s, subset):
    return sum(max(s[i][j] for j in subset) for i in range(len(s)))


def f_gc(s, subset, lam):
    n = len(s)
    return (sum(s[i][j] for i in subset for j in range(n))
            - lam * sum(s[i][j] for i in subset for j in subset))


def f_logdet(s, subset, lam):
    m = torch.tensor([[s[i][j] + (lam if a == b else 0.0) for b, j in enumerate(subset)]
                      for a, i in enumerate(subset)], dtype=torch.float64)
    return float(torch.logdet(m))


def oracle(name, x, y, *, form="total_correlation", lam=0.5, kernel="cosine", bandwidth=1.0):
    s = kernel_matrix(x, kernel, bandwidth)
    n = len(s)
    classes = sorted({int(v) for v in y})
    sets = [[i for i in range(n) if int(y[i]) == c] for c in classes]

    def f(subset):
        if name == "score_fl":
            return f_fl(s, subset)
        if name == "score_gc":
            return f_gc(s, subset, lam)
        return f_logdet(s, subset, lam)

    total = sum(f(a) for a in sets)
    if form == "total_correlation":
        total -= f(list(range(n)))
    return total / n


def call(name, x, y, **kw):
    if name == "score_fl":
        kw.pop("lam", None)
    return FNS[name](x, y, **kw)


@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(FNS))
def test_oracle(name, form, kernel):
    x, y = batch(n_classes=3, per_class=3, dim=4, seed=1)
    y[:2] = 7  # uneven class sizes and a non-contiguous class id
    for lam in (0.5, 1.3):
        got = call(name, x, y, form=form, lam=lam, kernel=kernel, bandwidth=1.7)
        want = oracle(name, x, y, form=form, lam=lam, kernel=kernel, bandwidth=1.7)
        torch.testing.assert_close(got.item(), want, **ORACLE_TOL)


@pytest.mark.parametrize("name", list(FNS))
def test_module_and_defaults(name):
    x, y = batch(seed=2)
    torch.testing.assert_close(losslab.create(name)(x, y), FNS[name](x, y))
    torch.testing.assert_close(FNS[name](x, y).item(), oracle(name, x, y), **ORACLE_TOL)


# -- identities between the two forms -----------------------------------------------------------


@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
@pytest.mark.parametrize("name", list(FNS))
def test_information_minus_correlation_is_f_of_the_ground_set(name, kernel):
    """S_f - C_f = f(V) / N whatever the partition; f(V) / N is S_f of the one-class batch."""
    x, y = batch(seed=3)
    ti = call(name, x, y, form="total_information", kernel=kernel)
    tc = call(name, x, y, form="total_correlation", kernel=kernel)
    one = torch.zeros_like(y)
    fv = call(name, x, one, form="total_information", kernel=kernel)
    torch.testing.assert_close(ti - tc, fv, **ORACLE_TOL)
    torch.testing.assert_close(call(name, x, one, form="total_correlation", kernel=kernel),
                               torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)


def test_facility_location_forms_share_the_gradient_under_cosine():
    """With the cosine kernel max_j S_ij = S_ii = 1: S_f = C_f + 1 (FL [C_f / S_f])."""
    x, y = batch(seed=4)
    grads = []
    for form in FORMS:
        xx = x.clone().requires_grad_(True)
        out = LF.score_fl_loss(xx, y, form=form)
        (g,) = torch.autograd.grad(out, xx)
        grads.append((out.detach(), g))
    torch.testing.assert_close(grads[1][0] - grads[0][0], torch.tensor(1.0, dtype=x.dtype),
                               **ORACLE_TOL)
    torch.testing.assert_close(grads[0][1], grads[1][1], **ORACLE_TOL)


def test_graph_cut_correlation_is_linear_in_lambda():
    x, y = batch(seed=5)
    one = LF.score_gc_loss(x, y, lam=1.0)
    torch.testing.assert_close(LF.score_gc_loss(x, y, lam=0.3), 0.3 * one, **ORACLE_TOL)
    torch.testing.assert_close(LF.score_gc_loss(x, y, lam=0.0), 0.0 * one, **ORACLE_TOL)


# -- consequences of submodularity ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", list(FNS))
def test_total_correlation_is_non_negative(name, seed):
    """A normalised submodular f is subadditive: sum_k f(A_k) >= f(V) (graph cut and facility
    location on the non-negative RBF kernel; log-det on any PSD kernel -- Fischer's inequality
    det(M) <= prod_k det(M_kk) -- so the cosine kernel too)."""
    x, y = batch(n_classes=4, per_class=3, dim=3, seed=seed)
    kernels = ("rbf", "cosine") if name == "score_logdet" else ("rbf",)
    for kernel in kernels:
        for lam in (0.1, 0.5, 2.0):
            assert call(name, x, y, lam=lam, kernel=kernel).item() >= -1e-12


@pytest.mark.parametrize("name", ["score_gc", "score_logdet"])
def test_monotone_in_the_number_of_negatives(name):
    """Adding a sample of a new class (a new negative for everyone) never lowers N * C_f
    (graph cut: + 2 lam sum_j S_ej > 0 on the RBF kernel; log-det: log(1 + lam) minus the log
    of a Schur complement <= 1 + lam)."""
    x, _ = batch(n_classes=1, per_class=10, dim=3, seed=6)
    y = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 6, 7])
    values = []
    for n in range(4, 11):
        values.append(n * call(name, x[:n], y[:n], kernel="rbf").item())
    assert all(b > a for a, b in itertools.pairwise(values)), values


@pytest.mark.parametrize("name", list(FNS))
def test_refining_the_partition_never_lowers_the_total_correlation(name):
    """Subadditivity (f(A + B) <= f(A) + f(B) for a normalised submodular f): splitting a class
    in two adds f(A) + f(B) - f(A + B) >= 0 to N * C_f (RBF kernel; for log-det Fischer's
    inequality, any PSD kernel)."""
    x, _ = batch(n_classes=1, per_class=8, dim=3, seed=7)
    coarse = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    finer = torch.tensor([0, 0, 2, 2, 1, 1, 1, 1])
    finest = torch.tensor([0, 3, 2, 4, 1, 5, 1, 6])
    vals = [call(name, x, y, kernel="rbf").item() for y in (coarse, finer, finest)]
    assert vals[0] <= vals[1] + 1e-12 and vals[1] <= vals[2] + 1e-12, vals
    assert vals[0] < vals[2]


# -- invariances, gradients, inputs --------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(FNS))
def test_permutation_and_label_renaming_invariance(name, form):
    x, y = batch(seed=8)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    want = call(name, x, y, form=form)
    torch.testing.assert_close(call(name, x[perm], y[perm], form=form), want, **ORACLE_TOL)
    torch.testing.assert_close(call(name, x, y * 10 + 3, form=form), want, **ORACLE_TOL)


def test_graph_cut_step_lowers_inter_class_similarity():
    x, y = batch(seed=9)
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(LF.score_gc_loss(x, y), x)

    def inter(z):
        zn = z / z.norm(dim=1, keepdim=True)
        s = zn @ zn.T
        return s[y[:, None] != y[None]].sum()

    assert inter(x.detach() - 0.01 * g) < inter(x.detach())


@pytest.mark.parametrize("name", list(FNS))
def test_reference_set_and_indices_are_rejected(name):
    x, y = batch()
    with pytest.raises(ValueError, match="ref_embeddings"):
        FNS[name](x, y, ref_embeddings=x, ref_labels=y)
    with pytest.raises(ValueError, match="indices"):
        FNS[name](x, y, indices=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))


@pytest.mark.parametrize("name", list(FNS))
def test_hyperparameters_are_validated(name):
    x, y = batch()
    bad = {"form": "total", "kernel": "linear", "bandwidth": 0.0}
    if name != "score_fl":
        bad["lam"] = -1.0 if name == "score_gc" else 0.0
    for key, value in bad.items():
        with pytest.raises(ValueError, match=key):
            losslab.create(name, **{key: value})
        with pytest.raises(ValueError, match=key):
            FNS[name](x, y, **{key: value})


@pytest.mark.parametrize("name", list(FNS))
def test_half_inputs_are_computed_in_float32(name):
    x, y = batch(seed=10)
    for dt in (torch.float16, torch.bfloat16):
        xh = (x * 50).to(dt).requires_grad_(True)
        out = FNS[name](xh, y)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, FNS[name](xh.detach().float(), y), rtol=1e-5, atol=1e-5)
        out.backward()
        assert xh.grad is not None and torch.isfinite(xh.grad).all()
