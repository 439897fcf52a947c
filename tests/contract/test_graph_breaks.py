"""torch.compile readiness: every registered loss traces without graph breaks (issue #18).

``torch._dynamo.explain`` runs each loss's module on the contract suite's float32 inputs of its
kind and counts the graph breaks. A loss that still breaks is listed in
:data:`EXPECTED_BREAKS` with the reason; it is a strict expected failure, so the test fails
both when a new break appears and when a listed loss gets fixed (then remove it from the list).

Cost: about 0.3-1.5 s of tracing per loss on a CPU (a few up to ~8 s), about a minute for
the whole registry under pytest. The default suite traces :data:`REPRESENTATIVE` (every kind,
and each site that once broke); the rest is ``slow`` (``-m slow``).
``benchmarks/bench_compile.py`` prints the same census with the break sites.

The compile-only code paths (static bounds instead of data-dependent sizes) are checked against
eager on inputs chosen to exercise the padding (``test_compiled_equals_eager``, slow).
"""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.registry import LossSpec
from tests.contract.cases import make_call

NAMES = losslab.available()

#: Losses that still break the graph, with the reason (source line of the break). Empty since
#: 2026-12-04 (issue #18): every registered loss traces without graph breaks in its default
#: path. A new loss that cannot goes here, with the reason, until it is fixed.
EXPECTED_BREAKS: dict[str, str] = {}

#: Traced in the default suite: every kind, and each site that once broke.
REPRESENTATIVE = (
    "cross_entropy", "ldam",  # logits; PerClass value check
    "cosine_alignment",  # paired
    "listmle",  # scores
    "multi_similarity", "contrastive", "proxy_anchor",  # embeddings: members(), fused kernels
    "bag_level", "easyllp",  # bags: bincount, data checks
    "mse", "hazard", "ordinal",  # regression
    "dice",  # dense
    "kd",  # teacher
    "emo", "number_token",  # tokens
    "dpo", "orpo",  # preference
    "protonet",  # episode: padded classes
    "wdr",  # weights
    "meco",  # unnormalized
    "linear_cross_entropy",  # hidden: custom ops (kernels/linear_ce/compiled.py)
    "icnn",  # the core paper: the window as a tensor, padded episode classes
    "metrix", "mar_diffusion",  # random draws in ordered-effect custom ops
    "hausdorff_dt", "betti_matching",  # scipy / numpy persistence as custom ops (_ops/)
)


def _params(expected: dict[str, str], default: tuple[str, ...] = REPRESENTATIVE) -> list:
    """Every registered loss: those in ``default`` in the default suite, the rest ``slow``;
    those in ``expected`` a strict expected failure with their reason."""
    out = []
    for n in NAMES:
        marks = [] if n in default else [pytest.mark.slow]
        if n in expected:
            marks.append(pytest.mark.xfail(strict=True, reason=expected[n]))
        out.append(pytest.param(n, marks=marks, id=n))
    return out


def _module(s: LossSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    m = losslab.create(s.name, **dict(s.example_hparams))
    if s.needs_index:
        m.eval()  # per-sample state: the same state for every call
    return m


def test_lists_name_registered_losses() -> None:
    assert set(EXPECTED_BREAKS) <= set(NAMES), set(EXPECTED_BREAKS) - set(NAMES)
    assert set(REPRESENTATIVE) <= set(NAMES), set(REPRESENTATIVE) - set(NAMES)
    assert set(EXPECTED_DYNAMIC_FAILURES) <= set(NAMES)
    assert not set(REPRESENTATIVE) & set(EXPECTED_BREAKS)


@pytest.mark.parametrize("name", _params(EXPECTED_BREAKS))
def test_traces_without_graph_breaks(name: str) -> None:
    s = losslab.spec(name)
    call = make_call(s, dtype=torch.float32)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(_module(s))(*call.args, **call.kwargs)
    sites = [str(b.reason).splitlines()[0][:80] for b in ex.break_reasons]
    assert ex.graph_break_count == 0, sites


#: Losses that still fail to trace with dynamic shapes (``dynamic=True``), with the reason.
EXPECTED_DYNAMIC_FAILURES: dict[str, str] = {}

#: Representative, but 4-5 s each to trace with dynamic shapes: ``-m slow`` only.
_DYNAMIC_SLOW = ("betti_matching", "hausdorff_dt", "metrix", "mar_diffusion")


@pytest.mark.parametrize("name", _params(
    EXPECTED_DYNAMIC_FAILURES, tuple(n for n in REPRESENTATIVE if n not in _DYNAMIC_SLOW)))
def test_traces_with_dynamic_shapes(name: str) -> None:
    """``torch.compile(dynamic=True, fullgraph=True)``: sizes and float hyperparameters are
    traced as symbols (no Python ``math`` on them, no ``bool()`` of a data check); traced with
    the ``eager`` backend (dynamo only: the graph capture is what can fail) and equal to eager.
    """
    s = losslab.spec(name)
    call = make_call(s, dtype=torch.float32)
    m = _module(s)
    torch._dynamo.reset()
    got = torch.compile(m, dynamic=True, fullgraph=True, backend="eager")(*call.args,
                                                                         **call.kwargs)
    want = _module(s)(*call.args, **call.kwargs)
    torch.testing.assert_close(got, want, equal_nan=True)


def _episode() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    support = torch.randn(10, 4, generator=g, dtype=torch.float64)
    query = torch.randn(6, 4, generator=g, dtype=torch.float64)
    # unsorted, non-contiguous class ids: 3 classes in 10 slots (7 padded under compile)
    sl = torch.tensor([7, 3, 3, 9, 7, 9, 3, 9, 9, 7])
    ql = torch.tensor([3, 9, 9, 7, 3, 7])
    return support, sl, query, ql


def _embeddings(ref: bool) -> tuple[tuple[torch.Tensor, ...], dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 3, 3, 3])  # class sizes 4, 3, 2, 3
    if not ref:
        return (x, labels), {}
    r = torch.randn(7, 5, generator=g, dtype=torch.float64)
    rl = torch.tensor([0, 0, 1, 1, 1, 4, 4])  # classes 2, 3 have no member in the reference
    return (x, labels), {"ref_embeddings": r, "ref_labels": rl}


def _cases() -> list:
    ep = _episode()
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[1, 2, 0, 6, 3], [5, -100, 4, 2, 1]])
    nt = {"number_values": [float("nan"), 0.0, 1.0, 2.0, 3.0, 4.0, float("nan")]}
    e, _ = _embeddings(False)
    er, ekw = _embeddings(True)
    return [
        pytest.param("protonet", {}, ep, {}, id="protonet"),
        pytest.param("proto_triplet", {}, ep, {}, id="proto_triplet"),
        pytest.param("number_token", nt, (logits, tokens), {}, id="number_token"),
        pytest.param("contrastive", {}, e, {}, id="contrastive"),
        pytest.param("contrastive", {"mean_over": "nonzero", "neg_margin": 0.1}, e, {},
                     id="contrastive_nonzero_sparse"),
        pytest.param("contrastive", {"power": 2.0, "metric": "cosine", "neg_margin": 0.3}, er,
                     ekw, id="contrastive_ref"),
        pytest.param("multi_similarity", {}, er, ekw, id="multi_similarity_ref"),
        pytest.param("proxy_anchor", {"num_classes": 4, "embedding_dim": 5}, e, {},
                     id="proxy_anchor"),
        pytest.param("triplet", {}, e, {}, id="triplet_all"),
        pytest.param("triplet", {"mean_over": "nonzero", "margin": 0.5}, er, ekw,
                     id="triplet_all_nonzero_ref"),
        pytest.param("triplet_ratio", {}, e, {}, id="triplet_ratio"),
        pytest.param("triplet_ratio", {}, er, ekw, id="triplet_ratio_ref"),
        pytest.param("supcon", {}, e, {}, id="supcon"),
        pytest.param("circle", {}, er, ekw, id="circle_ref"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "hp", "args", "kwargs"), _cases())
def test_compiled_equals_eager(name: str, hp: dict, args: tuple, kwargs: dict) -> None:
    """The compile-only paths (padded classes, members padded to M, masked number tokens,
    the dense contrastive path with tensor counts, every positive slot swept by the
    all-triplets kernel, triplet_ratio's static positive bound) give the eager value and
    gradient."""
    torch.manual_seed(0)
    m = losslab.create(name, **hp).double()
    leaf = args[0].clone().requires_grad_(True)
    eager = m(leaf, *args[1:], **kwargs)
    (g_eager,) = torch.autograd.grad(eager, leaf)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)(leaf, *args[1:], **kwargs)
    (g_compiled,) = torch.autograd.grad(compiled, leaf)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.slow
def test_compiled_data_check_raises() -> None:
    """A data check under compile is an async assert: a query class absent from the support
    set raises (RuntimeError) instead of a silently wrong loss."""
    support, sl, query, ql = _episode()
    m = torch.compile(losslab.create("protonet"), fullgraph=True)
    m(support, sl, query, ql)
    with pytest.raises(RuntimeError, match=r"absent|invalid input"):
        m(support, sl, query, ql.clone().fill_(5))
