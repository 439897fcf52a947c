"""The registry surface: create, available, spec, KIND_CALLS."""

from __future__ import annotations

import pytest
import torch

import losslab


def test_registry_surface() -> None:
    few = losslab.available(family="few-shot")
    assert few == sorted(few) and {"icnn", "proto_triplet", "protonet"} <= set(few)
    assert "protonet" in losslab.available(kind="episode")
    s = losslab.spec("proto_triplet")
    assert (s.name, s.family, s.kind, s.arxiv) == ("proto_triplet", "few-shot", "episode",
                                                   "2305.09062")
    assert dict(s.defaults) == {"margin": 0.5, "eps": 1e-6, "reduction": "mean"}
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        losslab.spec("nope")
    with pytest.raises(ValueError, match="family must be one of"):
        losslab.available(family="vision")
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        losslab.create("protonet", margin=1.0)
    with pytest.raises(TypeError):
        losslab.ProtoTripletLoss(0.5)  # hyperparameters are keyword-only


def test_deprecated_names_warn_and_work() -> None:
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.warns(DeprecationWarning, match="z_loss"):
        old = losslab.functional.z_loss_loss(x, t)
    torch.testing.assert_close(old, losslab.functional.z_loss(x, t))
    with pytest.warns(DeprecationWarning, match="anyloss"):
        losslab.functional.anyloss_loss(x, t)
    with pytest.warns(DeprecationWarning, match="MetrixLoss"):
        assert losslab.Metrix is losslab.MetrixLoss
    assert losslab.registry.function_name("z_loss") == "z_loss"
    assert losslab.registry.function_name("triplet") == "triplet_loss"
