"""CombinedLoss: ``index=`` goes only to the terms with per-sample state, and ``last_terms``.

(The mean/weights/hyperparameter and error tests of ``combine`` are in tests/test_core.py.)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import losslab
from losslab.combine import CombinedLoss, term_keys


def logits_batch(n: int = 8, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, c, (n,), generator=g)
    return logits, target


def episode(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    return s, y, q, y


class Recorder(torch.nn.Module):
    """A logits-kind term that records the keywords it was called with."""

    def __init__(self, name: str, needs_index: bool) -> None:
        super().__init__()
        self.spec = SimpleNamespace(name=name, kind="logits", needs_index=needs_index)
        self.calls: list[dict[str, Any]] = []

    def forward(self, logits, target, **kwargs):
        self.calls.append(kwargs)
        return logits.sum() * 0.0


def test_index_goes_only_to_terms_that_need_it() -> None:
    logits, target = logits_batch()
    index = torch.arange(8)
    stateful, plain = Recorder("stateful", True), Recorder("plain", False)
    c = CombinedLoss([losslab.create("cross_entropy"), stateful, plain], [1.0, 1.0, 1.0])
    c(logits, target, index=index)
    assert len(stateful.calls) == 1 and stateful.calls[0]["index"] is index
    assert plain.calls == [{}]
    # without index= nobody gets one
    c(logits, target)
    assert stateful.calls[1] == {} and plain.calls[1] == {}


def test_index_routing_with_real_losses_matches_the_terms() -> None:
    logits, target = logits_batch(seed=1)
    index = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    combo = losslab.combine(["cross_entropy", "aldr_kl"], aldr_kl={"num_samples": 8})
    ce = losslab.create("cross_entropy")
    aldr = losslab.create("aldr_kl", num_samples=8)
    # cross_entropy itself refuses index= (so the combination must not pass it on)
    with pytest.raises(ValueError, match="index"):
        ce(logits, target, index=index)
    got = combo(logits, target, index=index)
    want_ce, want_aldr = ce(logits, target), aldr(logits, target, index=index)
    torch.testing.assert_close(got, 0.5 * want_ce + 0.5 * want_aldr)
    assert combo.last_terms == {"cross_entropy": float(want_ce.detach()),
                                "aldr_kl": float(want_aldr.detach())}
    # the per-sample state of the term moved exactly as the stand-alone loss's did
    torch.testing.assert_close(combo.terms[1].lambdas, aldr.lambdas)
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_stateful_term_without_index_is_an_error_of_the_term() -> None:
    logits, target = logits_batch()
    combo = losslab.combine(["cross_entropy", "aldr_kl"], aldr_kl={"num_samples": 8})
    with pytest.raises(ValueError, match="needs index="):
        combo(logits, target)


def test_last_terms_are_the_values_of_the_last_call() -> None:
    names = ["protonet", "proto_triplet", "icnn"]
    c = losslab.combine(names)
    for seed in (0, 1):
        ep = episode(seed)
        total = c(*ep)
        want = {n: float(losslab.create(n)(*ep)) for n in names}
        assert c.last_terms == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert float(total) == pytest.approx(sum(want.values()) / 3, rel=1e-12)
        assert list(c.last_terms) == names


def test_repeated_names_get_their_position() -> None:
    assert term_keys(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]
    # a key never collides, even with a name that looks like a generated key
    keys = term_keys(["a", "a", "a#1"])
    assert len(set(keys)) == 3 and keys[:2] == ["a", "a#1"]
    c = losslab.combine([losslab.create("protonet"), "icnn",
                         losslab.create("protonet", temperature=2.0)])
    assert c.keys == ["protonet", "icnn", "protonet#2"]
    ep = episode()
    c(*ep)
    assert set(c.last_terms) == {"protonet", "icnn", "protonet#2"}
    assert c.last_terms["protonet"] == pytest.approx(float(losslab.create("protonet")(*ep)))
    assert c.last_terms["protonet#2"] == pytest.approx(
        float(losslab.create("protonet", temperature=2.0)(*ep)))


def test_combine_is_the_mean_of_terms_by_default() -> None:
    ep = episode()
    names = ["protonet", "proto_triplet", "icnn"]
    expected = sum(losslab.create(n)(*ep) for n in names) / 3
    c = losslab.combine(names)
    torch.testing.assert_close(c(*ep), expected)
    assert set(c.last_terms) == set(names)
    weighted = losslab.combine({"protonet": 1.0, "proto_triplet": 0.5})
    torch.testing.assert_close(
        weighted(*ep), losslab.create("protonet")(*ep) + 0.5 * losslab.create("proto_triplet")(*ep)
    )
    custom = losslab.combine(["protonet", "icnn"], icnn={"variant": "support"})
    torch.testing.assert_close(
        custom(*ep),
        (losslab.create("protonet")(*ep) + losslab.create("icnn", variant="support")(*ep)) / 2,
    )


def test_combine_rejects_mixed_kinds_and_non_scalars() -> None:
    class Fake(torch.nn.Module):
        spec = type("S", (), {"kind": "logits", "name": "fake"})()

    with pytest.raises(ValueError, match="share one kind"):
        CombinedLoss([losslab.create("protonet"), Fake()], [1.0, 1.0])
    c = losslab.combine(["protonet"], protonet={"reduction": "none"})
    with pytest.raises(ValueError, match="must return a scalar"):
        c(*episode())
    with pytest.raises(ValueError, match="not in the combination"):
        losslab.combine(["protonet"], icnn={"k": 3})
    with pytest.raises(ValueError, match="at least one"):
        losslab.combine([])
