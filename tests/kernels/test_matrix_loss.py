"""The matrix-loss engine (losslab.kernels.matrix_loss): every fused path of
``losslab.losses.metric_learning.FAST_PATHS`` against its autograd reference (the same loss
with ``indices=`` listing every pair or triplet of the labels): values and gradients, float64,
in every regime the fused code branches on (batch vs reference set with missing classes,
distances vs similarities, dense vs sparse gradient, the direct vs sorted all-triplets sweep,
reductions, class-level proxies); the kernel types; gather_rows."""

from __future__ import annotations

import inspect

import pytest
import torch

import losslab
import losslab.functional as LF
from losslab.kernels import matrix_loss as engine
from losslab.kernels.matrix_loss import Kernel, KernelOut, SparseGrad, gather_rows
from losslab.losses import metric_learning
from losslab.losses.metric_learning import FAST_PATHS, triplet
from losslab.losses.metric_learning._common import MEAN_OVER
from tests.losses.metric_learning.common import (
    all_pairs,
    all_triplets,
    check_against_reference,
    fused_data,
)

REDUCTIONS = ("mean", "sum", "none")
#: data scale per loss: enough active and inactive terms at the variants' margins
SCALE = {"contrastive": 0.4, "triplet": 0.5}


def variants(name: str, metric: str | None) -> list[dict]:
    """Hyperparameters run per loss on top of its ``FastPath.hparams``, so that every branch of
    its kernel is taken; a loss not listed runs with its defaults."""
    if name == "contrastive":
        sim = metric in ("cosine", "dot")
        m = {"pos_margin": 0.8, "neg_margin": 0.2} if sim else {"pos_margin": 0.1,
                                                                "neg_margin": 0.9}
        return [{**m, "power": p, "mean_over": mo} for p in (1.0, 2.0) for mo in MEAN_OVER]
    if name == "triplet":
        return [{"margin": 0.3, "mean_over": mo} for mo in MEAN_OVER]
    return [{}]


CASES = [(name, metric) for name, fp in FAST_PATHS.items() for metric in (fp.metrics or (None,))]


def reference_indices(name, y, ry):
    return (all_triplets if FAST_PATHS[name].indices == "triplets" else all_pairs)(y, ry)


@pytest.mark.parametrize("ref", [False, True], ids=["batch", "ref"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,metric", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_fast_path_equals_reference(name, metric, reduction, ref):
    fp = FAST_PATHS[name]
    fn = losslab.spec(name).function
    x, y, r, ry = fused_data(ref=ref, scale=SCALE.get(name, 1.0))
    idx = reference_indices(name, y, ry)
    metric_kw = {} if metric is None else {"metric": metric}
    for hp in variants(name, metric):
        check_against_reference(fn, x, y, r, ry, idx, reduction, **fp.hparams, **metric_kw,
                                **hp)


@pytest.mark.parametrize("name,metric", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_fast_path_with_the_blocked_symmetric_product(monkeypatch, name, metric):
    """The batch against itself through :func:`self_gram`'s block triangle (its thresholds
    lowered so that the 14-row test batch is cut into 4 uneven row blocks)."""
    monkeypatch.setattr(engine, "GRAM_BLOCK_ROWS", 3)
    monkeypatch.setattr(engine, "GRAM_MIN_ROWS", 2)
    monkeypatch.setattr(engine, "GRAM_MIN_DIM", 1)
    fp = FAST_PATHS[name]
    fn = losslab.spec(name).function
    x, y, _, _ = fused_data(scale=SCALE.get(name, 1.0))
    idx = reference_indices(name, y, None)
    metric_kw = {} if metric is None else {"metric": metric}
    for hp in variants(name, metric):
        check_against_reference(fn, x, y, None, None, idx, "mean", **fp.hparams, **metric_kw,
                                **hp)


@pytest.mark.parametrize("n", [1100, 2048])
def test_self_gram_is_the_exactly_symmetric_product(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 300, generator=g)
    got = engine.self_gram(x)
    assert torch.equal(got, got.t())
    torch.testing.assert_close(got, x @ x.t(), rtol=1e-5, atol=1e-4)
    small = torch.randn(64, 300, generator=g)  # below GRAM_MIN_ROWS: the plain product
    assert torch.equal(engine.self_gram(small), small @ small.t())


PROXY_CASES = [name for name, fp in FAST_PATHS.items() if fp.proxies]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", PROXY_CASES)
def test_class_level_fast_path_equals_reference_against_the_proxies(name, reduction):
    """With ``proxies [C, D]`` the loss is the pair-level loss against the proxies as a
    reference set labelled ``0..C-1``: values and gradients (embeddings and proxies)."""
    fn = losslab.spec(name).function
    x, y, _, _ = fused_data()
    w = torch.randn(5, x.shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    classes = torch.arange(5)
    out = fn(x, y, w, reduction=reduction, **FAST_PATHS[name].hparams)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    got = torch.autograd.grad((out * weights).sum(), (x, w))
    ref = fn(x, y, ref_embeddings=w, ref_labels=classes, indices=all_pairs(y, classes),
             reduction=reduction, **FAST_PATHS[name].hparams)
    want = torch.autograd.grad((ref * weights).sum(), (x, w))
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-10)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_contrastive_sparse_gradient(monkeypatch):
    """Far negatives: only the positive pairs have a gradient, kept sparse (by the kernel or
    by the engine from the kernel's non-zero count)."""
    for ratio in (1, 10**9):  # sparse always / never
        monkeypatch.setattr(engine, "SPARSE_RATIO", ratio)
        for ref in (False, True):
            x, y, r, ry = fused_data(ref=ref, scale=3.0)
            for red in REDUCTIONS:
                idx = all_pairs(y, ry)
                check_against_reference(LF.contrastive_loss, x, y, r, ry, idx, red,
                                        neg_margin=0.5)
                check_against_reference(LF.contrastive_loss, x, y, r, ry, idx, red,
                                        metric="cosine", neg_margin=0.3)
                check_against_reference(LF.contrastive_loss, x, y, r, ry, idx, red,
                                        metric="squared_euclidean", neg_margin=4.0)


@pytest.mark.parametrize("ref", [False, True], ids=["batch", "ref"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_triplet_all_sorted_sweep(monkeypatch, ref, metric):
    """The all-triplets kernel's sorted sweep (many positives per anchor) equals the
    reference too (the direct per-slot sweep runs in test_fast_path_equals_reference)."""
    monkeypatch.setattr(triplet, "DIRECT_MAX_POSITIVES", 0)
    x, y, r, ry = fused_data(ref=ref, scale=0.5)
    idx = all_triplets(y, ry)
    for red in REDUCTIONS:
        for mean_over in MEAN_OVER:
            check_against_reference(LF.triplet_loss, x, y, r, ry, idx, red, metric=metric,
                                    margin=0.3, mean_over=mean_over)


def _kernel_classes():
    out = {}
    for mod in (metric_learning.pairs, metric_learning.triplet, metric_learning.weighted,
                metric_learning.proxy):
        for obj in vars(mod).values():
            if inspect.isclass(obj) and obj.__module__ == mod.__name__ and "Kernel" in obj.__name__:
                out[obj.__name__] = obj
    return out


def test_every_kernel_is_a_fast_path_or_has_its_own_checks():
    """A new kernel must be listed in FAST_PATHS (then the tests above cover it); only
    Proxy-Anchor's, which has no autograd twin, is checked by its oracle and PML instead."""
    kernels = _kernel_classes()
    listed = {fp.kernel.__name__ for fp in FAST_PATHS.values()}
    assert set(kernels) - listed == {"ProxyAnchorKernel"}
    for k in kernels.values():
        assert isinstance(k.symmetric, bool) and k.axis in (0, 1)
        params = list(inspect.signature(k.__call__).parameters)
        assert params == ["self", "mat", "members", "mean"]
        with pytest.raises(AttributeError):  # frozen: hyperparameters cannot drift
            k.__new__(k).margin = 1.0


def test_kernel_out_holds_exactly_one_gradient():
    v, g = torch.zeros(3), torch.zeros(3, 4)
    sp = SparseGrad(torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    assert KernelOut(v, grad=g).sparse is None
    assert KernelOut(v, sparse=sp).grad is None
    with pytest.raises(ValueError, match="exactly one"):
        KernelOut(v)
    with pytest.raises(ValueError, match="exactly one"):
        KernelOut(v, grad=g, sparse=sp)


def test_a_kernel_is_a_plain_callable_of_the_protocol():
    """Any object with ``symmetric``, ``axis`` and ``__call__`` works: a tiny kernel whose loss
    is the sum of the matrix (gradient: ones) gives the gradient of ``sum(x @ x.T)``."""

    class SumKernel:
        symmetric = True
        axis = 1

        def __call__(self, mat, members, mean):
            return KernelOut(mat.sum(1), grad=torch.ones_like(mat))

    kernel: Kernel = SumKernel()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.arange(6) % 2
    out = engine.matrix_loss(x, y, None, None, metric="dot", kernel=kernel, reduction="sum")
    out.backward()
    torch.testing.assert_close(out, (x @ x.t()).sum())
    torch.testing.assert_close(x.grad, 2 * x.detach().sum(0, keepdim=True).expand(6, 3))


def test_gather_rows_backward_sums_repeated_indices():
    src = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([3, 3, 0, 6, 3, 0])
    assert torch.autograd.gradcheck(lambda s: gather_rows(s, idx), (src,))
    w = torch.arange(18.0, dtype=torch.float64).view(6, 3)
    (gather_rows(src, idx) * w).sum().backward()
    ref = torch.zeros(7, 3, dtype=torch.float64).index_add_(0, idx, w)
    assert torch.equal(src.grad, ref)


# -- issue #11: half inputs and non-finite inputs --------------------------------------------


class _SelectingKernel:
    """A kernel that, as the hinge and mining kernels do, keeps only the entries a comparison
    selects (``mat < 1``): a NaN entry fails the comparison and would drop out of the value."""

    symmetric = False
    axis = 1

    def __call__(self, mat, members, mean):
        keep = mat < 1.0
        return KernelOut(mat.where(keep, 0.0).sum(1), grad=keep.to(mat.dtype))


@pytest.mark.parametrize("ref", [False, True], ids=["batch", "ref"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_return_the_float32_value(dtype, ref):
    """Finding 2: MatrixLoss computed half inputs in float32 but cast the value back."""
    x, y, r, ry = fused_data(ref=ref)
    x = (x.detach() * 100).to(dtype).requires_grad_(True)
    r = None if r is None else (r.detach() * 100).to(dtype).requires_grad_(True)
    kernel = _SelectingKernel()
    for metric in ("euclidean", "squared_euclidean", "cosine", "dot"):
        out = engine.matrix_loss(x, y, r, ry, metric=metric, kernel=kernel, reduction="sum")
        assert out.dtype == torch.float32
        want = engine.matrix_loss(x.detach().float(), y, None if r is None else r.detach().float(),
                                  ry, metric=metric, kernel=kernel, reduction="sum")
        torch.testing.assert_close(out, want)
        out.backward()
        assert x.grad.dtype == dtype and (r is None or r.grad.dtype == dtype)


@pytest.mark.parametrize("where", ["embeddings", "ref"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_input_gives_nan_whatever_the_kernel_selects(bad, where):
    x, y, r, ry = fused_data(ref=True)
    x, r = x.detach().clone(), r.detach().clone()
    (x if where == "embeddings" else r)[1, 2] = bad
    for reduction in REDUCTIONS:
        out = engine.matrix_loss(x, y, r, ry, metric="euclidean", kernel=_SelectingKernel(),
                                 reduction=reduction)
        assert torch.isnan(out).all()
    clean = fused_data(ref=True)[0].detach()
    out = engine.matrix_loss(clean, y, None, None, metric="dot", kernel=_SelectingKernel(),
                             reduction="sum")
    assert torch.isfinite(out)


@pytest.mark.parametrize("name,metric", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_every_fast_path_propagates_nan(name, metric):
    """multi-similarity's mining and contrastive's "any active negative?" test dropped the
    pairs of a NaN embedding (here: a sample alone in its class, in the batch or in the
    reference set, whose pairs are all negatives): the fused loss was finite."""
    fp = FAST_PATHS[name]
    fn = losslab.spec(name).function
    x, y, r, ry = fused_data(ref=True)
    x, r, y, ry = x.detach().clone(), r.detach().clone(), y.clone(), ry.clone()
    x[0, 0] = r[1, 0] = float("nan")
    y[0], ry[1] = 99, 98  # alone in its class
    kw = {"metric": metric} if metric else {}
    assert torch.isnan(fn(x, y, **fp.hparams, **kw))
    assert torch.isnan(fn(x.nan_to_num(0.0), y, ref_embeddings=r, ref_labels=ry, **fp.hparams,
                          **kw))
