"""Metrix (embedding mixup): reduces to its base loss, mixes, the mixed part's formula, the
module that wraps a base loss, and the deprecated name ``Metrix``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.losses.metric_learning.metrix import MetrixLoss, metrix_mixed_terms
from losslab.losses.metric_learning.weighted import ms_terms
from tests.losses.metric_learning.common import (
    batch,
    check_bad_hyperparameters,
    check_degenerate_declarations,
    check_half_inputs_return_float32,
    check_integer_labels,
    check_nan_propagates,
)


def test_metrix_reduces_to_base_and_mixes():
    x, y = batch(seed=12)
    for base in ("contrastive", "multi_similarity"):
        m0 = losslab.create("metrix", base=base, weight=0.0)
        torch.testing.assert_close(m0(x, y), losslab.create(base)(x, y))
        m = losslab.create("metrix", base=base, seed=0)
        x1 = x.clone().requires_grad_(True)
        v = m(x1, y)
        v.backward()
        assert torch.isfinite(v) and v > losslab.create(base)(x, y)
    pa = losslab.create("metrix", base="proxy_anchor",
                        base_hparams={"num_classes": 4, "embedding_dim": 5}, seed=0)
    v = pa(x, y)
    v.backward()
    assert pa.base_loss.proxies.grad is not None


def test_metrix_mixed_terms_with_hard_labels_is_base_formula():
    """With lambda = 1 the mixed samples are the clean ones: mixed MS = MS on them (no mining)."""
    x, y = batch(seed=13)
    lam = torch.ones(len(y), dtype=torch.float64)
    got = metrix_mixed_terms(x, y, x, lam, y, (y + 1) % 4, base="multi_similarity")
    # clean MS over all pairs INCLUDING self-pairs (the mix of i with itself is a positive)
    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).t()
    same = (y[:, None] == y[None]).double()
    torch.testing.assert_close(got, ms_terms(s, same, 1 - same, 2.0, 50.0, 0.5).mean())


def test_metrix_module_options_and_checks():
    m = losslab.create("metrix", base="contrastive", seed=3)
    assert m.config == {"seed": 3}
    assert m.hparams["base"] == "contrastive" and "seed" not in m.hparams
    x, y = batch(seed=12)
    again = losslab.create("metrix", base="contrastive", seed=3)
    torch.testing.assert_close(m(x, y), again(x, y))  # the seed makes the mixing repeatable
    wrapped = MetrixLoss(base=losslab.create("multi_similarity", alpha=3.0))
    assert wrapped.hparams["base_hparams"]["alpha"] == 3.0
    with pytest.raises(ValueError, match="base"):
        losslab.create("metrix", base="triplet")
    with pytest.raises(ValueError, match="mix_alpha"):
        losslab.create("metrix", mix_alpha=0.0)
    with pytest.raises(ValueError, match="weight"):
        losslab.functional.metrix_loss(x, y, weight=-1.0)


# -- issue #11: bad input and faults ---------------------------------------------------------

BASES = [("multi_similarity", {}), ("contrastive", {}),
         ("proxy_anchor", {"num_classes": 4, "embedding_dim": 5})]


@pytest.mark.parametrize("base,hp", BASES, ids=[b for b, _ in BASES])
def test_degenerate_declarations(base, hp):
    """Finding 9: one class is zero with the default base (no partner of another class to mix
    with, and multi-similarity's mining keeps no pair); distinct labels are not zero (every mix
    is a partial positive of its anchor), so only one_class is declared."""
    if base == "multi_similarity":
        check_degenerate_declarations("metrix", ("one_class",))
    x, y = batch(seed=30)
    m = losslab.create("metrix", base=base, base_hparams=hp, seed=0).double()
    if base != "proxy_anchor":
        assert m(x, torch.arange(len(y))).item() != 0.0


@pytest.mark.parametrize("form", ["labels", "ref", "indices"])
@pytest.mark.parametrize("base,hp", BASES, ids=[b for b, _ in BASES])
def test_half_inputs_are_computed_and_returned_in_float32(base, hp, form):
    """Finding 2: the mixed part was computed in the input dtype and the sum returned in it."""
    if base == "proxy_anchor" and form != "labels":
        pytest.skip("proxies: no ref_embeddings / indices")
    check_half_inputs_return_float32("metrix", ref=form == "ref", indices=form == "indices",
                                     base=base, base_hparams=hp, seed=0)


@pytest.mark.parametrize("base,hp", BASES[:2], ids=[b for b, _ in BASES[:2]])
def test_integer_label_dtypes_and_nan(base, hp):
    """Finding 7, and NaN in ref_embeddings gave a finite metrix loss (its base's mining)."""
    check_integer_labels("metrix", base=base, base_hparams=hp, seed=0)
    check_nan_propagates("metrix", base=base, base_hparams=hp, seed=0)


def test_every_hyperparameter_is_validated():
    """Finding 5: NaN / string values; base_hparams must be a mapping; seed an integer."""
    x, y = batch()
    check_bad_hyperparameters("metrix", {
        "mix_alpha": [0.0, math.nan, "2"], "weight": [-1.0, math.inf], "base": [None, "circle"],
        "base_hparams": ["alpha=2", [("alpha", 2.0)]], "seed": ["0", 1.5, -1]},
        call=lambda fn, **kw: fn(x, y, **kw))
    with pytest.raises(ValueError, match="alpha"):  # the base's own rules
        losslab.create("metrix", base_hparams={"alpha": math.nan})


def test_metrix_is_a_deprecated_alias_of_metrix_loss():
    import losslab.losses.metric_learning as ml
    from losslab.losses.metric_learning import metrix

    with pytest.warns(DeprecationWarning, match="MetrixLoss"):
        assert ml.Metrix is MetrixLoss
    with pytest.warns(DeprecationWarning, match="MetrixLoss"):
        assert metrix.Metrix is MetrixLoss
    assert losslab.spec("metrix").module is MetrixLoss
    with pytest.raises(AttributeError):
        ml.NotALoss  # noqa: B018


# -- torch.compile (issue #18): the draws in a custom op, the same stream as eager -----------


def _steps(f, x, batches, generator=None):
    """Values, gradients and the generator state after each call (torch's default generator,
    seeded first, unless ``generator``): the draws, counted by where the stream ends up."""
    torch.manual_seed(5)
    out = []
    for y in batches:
        leaf = x.clone().requires_grad_(True)
        v = f(leaf, y)
        (g,) = torch.autograd.grad(v.sum(), leaf)
        state = (generator or torch.default_generator).get_state()
        out.append((v.detach(), g, state))
    return out


def _check_same_steps(eager, compiled):
    for (ve, ge, se), (vc, gc, sc) in zip(eager, compiled, strict=True):
        torch.testing.assert_close(vc, ve)
        torch.testing.assert_close(gc, ge)
        assert torch.equal(sc, se)  # the same number of draws


@pytest.mark.slow
def test_metrix_compiled_equals_eager_with_the_same_draws():
    """Under ``torch.compile(fullgraph=True)`` the partners and factors are drawn by the
    ``losslab::metrix_draws`` op from the eager stream: the same values, gradients and
    generator states, call after call, for torch's default generator and a module's seed; a
    one-class batch draws nothing in both; and two calls in one compiled function (equal
    inputs: an op without its ordered effect would be merged by CSE) draw twice, as eager."""
    x, y = batch(seed=12)  # 4 classes x 3
    one = torch.zeros_like(y)
    m = losslab.create("metrix").double()
    torch._dynamo.reset()
    cm = torch.compile(m, fullgraph=True)
    _check_same_steps(_steps(m, x, [y, one, y]), _steps(cm, x, [y, one, y]))

    def twice(f):
        return lambda a, b: torch.stack([f(a, b), f(a, b)])

    eager, compiled = _steps(twice(m), x, [y]), _steps(torch.compile(twice(m), fullgraph=True),
                                                       x, [y])
    assert eager[0][0][0] != eager[0][0][1]
    _check_same_steps(eager, compiled)

    me = losslab.create("metrix", base="contrastive", seed=3).double()
    mc = losslab.create("metrix", base="contrastive", seed=3).double()
    _check_same_steps(_steps(me, x, [y, y], me.generator),
                      _steps(torch.compile(mc, fullgraph=True), x, [y, y], mc.generator))


def test_metrix_draws_op_checks():
    """The op's schema and fake implementation (``torch.library.opcheck``; the tests that
    compare two calls do not apply to a random op)."""
    from losslab._ops.draws import generator_key

    _, y = batch(seed=12)
    g = torch.Generator().manual_seed(0)
    for labels in (y, torch.zeros_like(y)):
        torch.library.opcheck(torch.ops.losslab.metrix_draws.default,
                              (labels, 2.0, generator_key(g)),
                              test_utils=("test_schema", "test_faketensor"))
    partner, lam = torch.ops.losslab.metrix_draws(y, 2.0, 0)
    assert partner.dtype == torch.long and lam.dtype == torch.float64
    assert bool((y[partner] != y).all()) and bool(((lam > 0) & (lam < 1)).all())
    partner, lam = torch.ops.losslab.metrix_draws(torch.zeros_like(y), 2.0, 0)
    assert bool((partner == -1).all()) and bool((lam == 0).all())
