"""Aggregate-label losses against loop oracles and the paper's identities (arXiv 2401.11081)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import bag_level_loss, instance_level_loss, interpolated_aggregate_loss
from losslab.losses.aggregate import laplace_bag_targets, random_bags


def data(seed: int = 0, n: int = 12, n_bags: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    bag_index = torch.arange(n) % n_bags
    pred = torch.randn(n, generator=g, dtype=torch.float64)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64)
    y = torch.randn(n_bags, generator=g, dtype=torch.float64)
    props = torch.softmax(torch.randn(n_bags, classes, generator=g, dtype=torch.float64), 1)
    frac = torch.rand(n_bags, generator=g, dtype=torch.float64)
    return bag_index, pred, logits, y, props, frac


def members(bag_index: torch.Tensor, a: int) -> list[int]:
    return [i for i, b in enumerate(bag_index.tolist()) if b == a]


def test_mse_oracles() -> None:
    bag_index, pred, _, y, _, _ = data()
    bag, ins = [], []
    for a in range(4):
        m = members(bag_index, a)
        mean = sum(float(pred[i]) for i in m) / len(m)
        bag.append((float(y[a]) - mean) ** 2)
        ins.append(sum((float(y[a]) - float(pred[i])) ** 2 for i in m) / len(m))
    torch.testing.assert_close(bag_level_loss(pred, bag_index, y, reduction="none"),
                               torch.tensor(bag, dtype=torch.float64))
    torch.testing.assert_close(instance_level_loss(pred, bag_index, y, reduction="none"),
                               torch.tensor(ins, dtype=torch.float64))


def test_ce_and_bce_oracles() -> None:
    bag_index, _, logits, _, props, frac = data(1)
    for a in range(4):
        m = members(bag_index, a)
        probs = [torch.softmax(logits[i], 0).tolist() for i in m]
        mean_p = [sum(p[c] for p in probs) / len(m) for c in range(3)]
        bag = -sum(float(props[a, c]) * math.log(mean_p[c]) for c in range(3))
        ins = sum(-sum(float(props[a, c]) * math.log(p[c]) for c in range(3)) for p in probs)
        got_bag = bag_level_loss(logits, bag_index, props, base="ce", reduction="none")[a]
        got_ins = instance_level_loss(logits, bag_index, props, base="ce", reduction="none")[a]
        assert float(got_bag) == pytest.approx(bag, rel=1e-12)
        assert float(got_ins) == pytest.approx(ins / len(m), rel=1e-12)
    z = logits[:, 0]
    for a in range(4):
        m = members(bag_index, a)
        p = sum(1 / (1 + math.exp(-float(z[i]))) for i in m) / len(m)
        t = float(frac[a])
        expected = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        got = bag_level_loss(z, bag_index, frac, base="bce", reduction="none")[a]
        assert float(got) == pytest.approx(expected, rel=1e-10)


def test_instance_loss_is_bag_loss_plus_within_bag_variance() -> None:
    """The paper's identity for the squared loss: L_ins = L_bag + R."""
    bag_index, pred, _, y, _, _ = data(2, n=30, n_bags=5)
    var = torch.stack([pred[bag_index == a].var(unbiased=False) for a in range(5)])
    torch.testing.assert_close(
        instance_level_loss(pred, bag_index, y, reduction="none"),
        bag_level_loss(pred, bag_index, y, reduction="none") + var,
    )
    for rho in (0.0, 0.3, 1.0):
        torch.testing.assert_close(
            interpolated_aggregate_loss(pred, bag_index, y, rho=rho, reduction="none"),
            bag_level_loss(pred, bag_index, y, reduction="none") + rho * var,
        )


def test_ce_bag_level_is_stable_for_extreme_logits() -> None:
    bag_index, _, logits, _, props, _ = data(3)
    out = bag_level_loss(logits * 1e3, bag_index, props, base="ce")
    assert torch.isfinite(out)


def test_validation() -> None:
    bag_index, pred, _, y, props, _ = data()
    with pytest.raises(ValueError, match="bags \\[3\\] have none"):
        bag_level_loss(pred[:3], bag_index[:3], y)
    with pytest.raises(ValueError, match="base must be one of"):
        bag_level_loss(pred, bag_index, y, base="l1")
    with pytest.raises(ValueError, match="base='ce' needs"):
        bag_level_loss(pred, bag_index, props, base="ce")
    with pytest.raises(ValueError, match="rho must be a finite real number >= 0 and <= 1"):
        interpolated_aggregate_loss(pred, bag_index, y, rho=1.5)


def test_random_bags_and_private_targets() -> None:
    g = torch.Generator().manual_seed(0)
    idx = random_bags(20, 5, generator=g)
    assert torch.bincount(idx).tolist() == [5, 5, 5, 5]
    labels = torch.randn(20, dtype=torch.float64) * 10
    exact = torch.stack([labels[idx == a].clamp(-1, 1).mean() for a in range(4)])
    noisy = [laplace_bag_targets(labels, idx, epsilon=1.0, bound=1.0, generator=g)
             for _ in range(4000)]
    stacked = torch.stack(noisy)
    torch.testing.assert_close(stacked.mean(0), exact, atol=0.03, rtol=0)
    # Laplace(b) has variance 2 b^2 with b = (2 * bound / k) / epsilon = 0.4.
    torch.testing.assert_close(stacked.var(0), torch.full((4,), 2 * 0.4**2, dtype=torch.float64),
                               atol=0.03, rtol=0)


# --------------------------------------------------------------------------------------------
# Bad input and faults (issue #11)
# --------------------------------------------------------------------------------------------

BAG_FNS = (bag_level_loss, instance_level_loss, interpolated_aggregate_loss)


def inputs(base: str):
    bag_index, pred, logits, y, props, frac = data()
    return {"mse": (pred, y), "bce": (logits[:, 0], frac), "ce": (logits, props)}[base], bag_index


@pytest.mark.parametrize("base", ["mse", "bce", "ce"])
@pytest.mark.parametrize("fn", BAG_FNS, ids=lambda f: f.__name__)
def test_integer_bag_index_dtypes_and_bool(fn, base: str) -> None:
    """Finding 7: a uint8 bag_index was a boolean mask in instance_level (a wrong value, or an
    IndexError); bool crashed in bincount."""
    (pred, target), bag_index = inputs(base)
    ref = fn(pred, bag_index, target, base=base, reduction="none")
    for dtype in (torch.int32, torch.uint8, torch.int16):
        torch.testing.assert_close(
            fn(pred, bag_index.to(dtype), target, base=base, reduction="none"), ref)
    with pytest.raises(ValueError, match="bag_index"):
        fn(pred, bag_index > 0, target, base=base)
    with pytest.raises(ValueError, match="bag_index"):
        fn(pred, bag_index.double(), target, base=base)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("base", ["mse", "bce", "ce"])
@pytest.mark.parametrize("fn", BAG_FNS, ids=lambda f: f.__name__)
def test_half_inputs_are_computed_and_returned_in_float32(fn, base: str,
                                                          dtype: torch.dtype) -> None:
    """Finding 2: half inputs return float32 (they were cast back to the input dtype)."""
    (pred, target), bag_index = inputs(base)
    pred = (pred * 5).to(dtype).requires_grad_(True)
    target = target.to(dtype)
    out = fn(pred, bag_index, target, base=base)
    assert out.dtype == torch.float32
    ref = fn(pred.detach().float(), bag_index, target.float(), base=base)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    out.backward()
    assert pred.grad.dtype == dtype and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("fn", BAG_FNS, ids=lambda f: f.__name__)
def test_bag_targets_of_bce_and_ce_must_be_fractions_and_proportions(fn) -> None:
    """Finding 6: bce fractions outside [0, 1] and ce proportions that do not sum to 1 (or are
    negative) were accepted and gave a finite, meaningless loss."""
    (z, frac), bag_index = inputs("bce")
    for bad in (frac + 1.5, frac - 2.0, torch.full_like(frac, math.nan)):
        with pytest.raises(ValueError, match="bag_target"):
            fn(z, bag_index, bad, base="bce")
    fn(z, bag_index, torch.tensor([0.0, 1.0, 0.5, 1.0], dtype=torch.float64), base="bce")
    (logits, props), bag_index = inputs("ce")
    for bad in (props * 2, props - 0.5 * props.amax(1, keepdim=True)):
        with pytest.raises(ValueError, match="bag_target"):
            fn(logits, bag_index, bad, base="ce")
    fn(logits, bag_index, props.to(torch.bfloat16).double(), base="ce")  # rounded: tolerated
    # mse targets are any real responses
    (pred, y), bag_index = inputs("mse")
    fn(pred, bag_index, y * 100, base="mse")


BAD = [("bag_level", "base", None), ("bag_level", "base", "l1"), ("instance_level", "base", 1),
       ("interpolated_aggregate", "rho", math.nan), ("interpolated_aggregate", "rho", "0.5"),
       ("interpolated_aggregate", "rho", -0.1), ("interpolated_aggregate", "rho", True),
       ("interpolated_aggregate", "rho", None)]


@pytest.mark.parametrize("name,key,value", BAD, ids=[f"{n}-{k}={v!r}" for n, k, v in BAD])
def test_bad_hyperparameters_raise_in_module_and_function(name: str, key: str, value) -> None:
    """Finding 5: NaN rho passed the range check (NaN comparisons are False)."""
    with pytest.raises(ValueError, match=key):
        losslab.create(name, **{key: value})
    (pred, y), bag_index = inputs("mse")
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(pred, bag_index, y, **{key: value})


def test_helpers_validate_their_arguments() -> None:
    idx = torch.arange(8) % 2
    labels = torch.randn(8, dtype=torch.float64)
    for key, value in (("epsilon", math.nan), ("bound", math.nan), ("epsilon", "1"),
                       ("epsilon", 0.0), ("bound", -1.0)):
        with pytest.raises(ValueError, match=key):
            laplace_bag_targets(labels, idx, **{"epsilon": 1.0, "bound": 1.0, key: value})
    out = laplace_bag_targets(labels, idx.to(torch.uint8), epsilon=1.0, bound=1.0)
    assert out.shape == (2,)
    with pytest.raises(ValueError, match="bag_index"):
        laplace_bag_targets(labels, idx > 0, epsilon=1.0, bound=1.0)
    for n, size, key in ((0, 2, "n must"), (4, 0, "bag_size"), (4.5, 2, "n must"),
                         (4, "2", "bag_size")):
        with pytest.raises(ValueError, match=key):
            random_bags(n, size)


def test_no_degenerate_batch_is_declared() -> None:
    """Finding 9: none of the degenerate cases makes a bag loss zero: one bag holding every
    instance and one instance per bag (then bag level = instance level) are ordinary batches
    with a non-zero loss, and bags have no ignore_index."""
    (pred, y), _ = inputs("mse")
    for name, fn in zip(("bag_level", "instance_level", "interpolated_aggregate"), BAG_FNS,
                        strict=True):
        assert losslab.spec(name).degenerate == ()
        one_bag = fn(pred, torch.zeros(12, dtype=torch.long), y[:1])
        singletons = fn(pred, torch.arange(12), torch.randn(12, dtype=torch.float64))
        assert float(one_bag) > 0 and float(singletons) > 0
    torch.testing.assert_close(bag_level_loss(pred, torch.arange(12), pred.flip(0)),
                               instance_level_loss(pred, torch.arange(12), pred.flip(0)))


def test_empty_batch_is_a_value_error() -> None:
    """An empty batch has no bag: a ValueError naming bag_target (not a torch error)."""
    (pred, y), bag_index = inputs("mse")
    for fn in BAG_FNS:
        with pytest.raises(ValueError, match="bag_target"):
            fn(pred[:0], bag_index[:0], y[:0])


@pytest.mark.parametrize("fn", BAG_FNS, ids=lambda f: f.__name__)
def test_ce_masked_class_of_proportion_zero_is_finite(fn) -> None:
    """(Issue #11, finding 8, for the bags kind) a -inf logit on a class whose proportion is 0
    gave NaN (0 * -inf); the term is 0 log 0 = 0. Mass on a masked class is an infinite loss."""
    (logits, props), bag_index = inputs("ce")
    masked_props = torch.cat([props[:, :2] / props[:, :2].sum(1, keepdim=True),
                              torch.zeros(4, 1, dtype=torch.float64)], 1)
    x = logits.detach().clone()
    x[:, 2] = -math.inf
    x.requires_grad_(True)
    out = fn(x, bag_index, masked_props, base="ce", reduction="none")
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    # equal to the loss over the two unmasked classes
    torch.testing.assert_close(out, fn(logits[:, :2], bag_index, masked_props[:, :2], base="ce",
                                       reduction="none"))
    assert torch.isinf(fn(x.detach(), bag_index, props, base="ce")).all()


# ---- EasyLLP and the proportion loss (learning from label proportions) -----------------------

def test_easyllp_oracle() -> None:
    from losslab.functional import easyllp_loss

    bag_index, _, logits, _, props, frac = data()
    k = 3  # 12 instances in 4 bags
    prior = [sum(float(props[a, c]) for a in range(4)) / 4 for c in range(3)]
    ref = []
    for a in range(4):
        vals = []
        for i in members(bag_index, a):
            z = logits[i].tolist()
            lse = math.log(sum(math.exp(v) for v in z))
            soft = [k * (float(props[a, c]) - prior[c]) + prior[c] for c in range(3)]
            vals.append(-sum(s * (z[c] - lse) for c, s in enumerate(soft)))
        ref.append(sum(vals) / len(vals))
    torch.testing.assert_close(easyllp_loss(logits, bag_index, props, reduction="none"),
                               torch.tensor(ref, dtype=torch.float64))
    # binary, with a given prior
    x = logits[:, 0]
    ref_b = []
    for a in range(4):
        vals = []
        for i in members(bag_index, a):
            s = k * (float(frac[a]) - 0.3) + 0.3
            h = 1 / (1 + math.exp(-float(x[i])))
            vals.append(-(s * math.log(h) + (1 - s) * math.log(1 - h)))
        ref_b.append(sum(vals) / len(vals))
    torch.testing.assert_close(
        easyllp_loss(x, bag_index, frac, base="bce", prior=0.3, reduction="none"),
        torch.tensor(ref_b, dtype=torch.float64))


def test_easyllp_is_unbiased_over_iid_bags() -> None:
    """The paper's property: over bags drawn i.i.d. (here every ordered pair of a population,
    with replacement), the mean EasyLLP loss is the instance loss with the true labels."""
    from losslab.functional import easyllp_loss

    g = torch.Generator().manual_seed(0)
    m = 6
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    f = torch.randn(m, generator=g, dtype=torch.float64)
    p = float(y.mean())
    i, j = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    i, j = i.flatten(), j.flatten()
    pred = torch.stack([f[i], f[j]], 1).flatten()  # bag b = (i_b, j_b)
    bag_index = torch.arange(m * m).repeat_interleave(2)
    bag_target = (y[i] + y[j]) / 2
    # the loss of the first member of each bag, averaged over all bags
    per_inst = easyllp_loss(pred, bag_index, bag_target, base="bce", prior=p, reduction="none")
    # per bag = mean of both members; by symmetry of the pair set, the mean over bags equals
    # the mean over the first members
    truth = torch.nn.functional.binary_cross_entropy_with_logits(f, y)
    torch.testing.assert_close(per_inst.mean(), truth)


def test_proportion_loss_is_the_kl_and_zero_at_a_match() -> None:
    from losslab.functional import bag_level_loss, proportion_loss

    bag_index, _, logits, _, props, _ = data()
    ref = []
    for a in range(4):
        mem = members(bag_index, a)
        mean = [sum(float(torch.softmax(logits[i], 0)[c]) for i in mem) / len(mem)
                for c in range(3)]
        ref.append(sum(float(props[a, c]) * math.log(float(props[a, c]) / mean[c])
                       for c in range(3)))
    out = proportion_loss(logits, bag_index, props, reduction="none")
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64))
    entropy = -(props * props.log()).sum(1)
    torch.testing.assert_close(out, bag_level_loss(logits, bag_index, props, base="ce",
                                                   reduction="none") - entropy)
    # one instance per bag whose prediction is the proportion: zero loss
    torch.testing.assert_close(proportion_loss(props.log(), torch.arange(4), props),
                               torch.tensor(0.0, dtype=torch.float64))
    frac = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        proportion_loss(torch.logit(torch.tensor([1e-300, 0.25, 1.0 - 1e-16], dtype=torch.float64)),
                        torch.arange(3), frac, base="bce"),
        torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_easyllp_bad_prior() -> None:
    from losslab.functional import easyllp_loss

    bag_index, _, logits, _, props, _ = data()
    with pytest.raises(ValueError, match="prior"):
        easyllp_loss(logits, bag_index, props, prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="prior"):
        easyllp_loss(logits, bag_index, props, prior=0.5)
