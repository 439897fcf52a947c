"""Metrix (embedding mixup): reduces to its base loss, mixes, the mixed part's formula, the
module that wraps a base loss, and the deprecated name ``Metrix``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.losses.metric_learning.metrix import MetrixLoss, metrix_mixed_terms
from losslab.losses.metric_learning.weighted import ms_terms
from tests.losses.metric_learning.common import batch


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
