"""HPM: loop oracles of the reconstruction and loss-prediction terms (fp64), the reference
code's pair classification restated, RankNet equivalence, the stop-gradient and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import hpm_loss, ranknet_loss
from losslab.losses.contrastive_ssl.hpm import hpm_loss_prediction, hpm_patch_loss

close = torch.testing.assert_close
f64 = torch.float64


def batch(n: int = 3, length: int = 6, p: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, length, p, generator=g, dtype=f64)
    target = torch.randn(n, length, p, generator=g, dtype=f64)
    loss_pred = torch.randn(n, length, generator=g, dtype=f64)
    mask = torch.rand(n, length, generator=g) > 0.35
    mask[:, 0] = True
    return pred, target, loss_pred, mask


def test_patch_loss_oracle_with_and_without_norm_pix() -> None:
    pred, target, _, _ = batch()
    for norm in (False, True):
        ref = []
        for pi, ti in zip(pred.tolist(), target.tolist()):
            row = []
            for pp, tt in zip(pi, ti):
                if norm:
                    mu = sum(tt) / len(tt)
                    var = sum((v - mu) ** 2 for v in tt) / (len(tt) - 1)
                    tt = [(v - mu) / math.sqrt(var + 1e-6) for v in tt]
                row.append(sum((a - b) ** 2 for a, b in zip(pp, tt)) / len(tt))
            ref.append(row)
        close(hpm_patch_loss(pred, target, norm_pix=norm), torch.tensor(ref, dtype=f64))


def _relative_oracle(s: list[list[float]], t: list[list[float]], m: list[list[bool]]) -> float:
    """The reference code's pair classification, both orders, as loops."""
    total, valid = 0.0, 0
    for sn, tn, mn in zip(s, t, m):
        for i in range(len(sn)):
            for j in range(len(sn)):
                if not (mn[i] and mn[j]) or tn[i] == tn[j]:
                    continue
                sig = 1 / (1 + math.exp(-(sn[j] - sn[i])))
                total += -math.log(sig) if tn[j] > tn[i] else -math.log(1 - sig)
                valid += 1
    return total / valid


def test_hpm_oracle_relative_and_absolute() -> None:
    pred, target, loss_pred, mask = batch()
    per = hpm_patch_loss(pred, target).tolist()
    m = mask.tolist()
    rec = sum(v for row, mr in zip(per, m) for v, k in zip(row, mr) if k) / mask.sum().item()
    rel = _relative_oracle(loss_pred.tolist(), per, m)
    close(hpm_loss(pred, target, loss_pred=loss_pred, mask=mask, prediction_weight=0.5),
          torch.tensor(rec + 0.5 * rel, dtype=f64))
    # absolute: MSE to the per-image standardised losses of the masked patches
    sq, cnt = 0.0, 0
    for sn, tn, mn in zip(loss_pred.tolist(), per, m):
        vals = [v for v, k in zip(tn, mn) if k]
        mu = sum(vals) / len(vals)
        var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)
        for s, v, k in zip(sn, tn, mn):
            if k:
                sq += (s - (v - mu) / math.sqrt(var + 1e-6)) ** 2
                cnt += 1
    close(hpm_loss(pred, target, loss_pred=loss_pred, mask=mask, form="absolute"),
          torch.tensor(rec + sq / cnt, dtype=f64))
    # without a loss predictor: MAE's reconstruction loss alone
    close(hpm_loss(pred, target, mask=mask), torch.tensor(rec, dtype=f64))


def test_relative_objective_is_ranknet_per_image_and_scale_free() -> None:
    _, _, loss_pred, _ = batch(n=1, length=7, seed=3)
    g = torch.Generator().manual_seed(4)
    patch = torch.rand(1, 7, generator=g, dtype=f64)
    close(hpm_loss_prediction(loss_pred, patch), ranknet_loss(loss_pred, patch))
    # a ranking: any increasing transform of the target losses leaves it unchanged
    close(hpm_loss_prediction(loss_pred, patch), hpm_loss_prediction(loss_pred, patch.exp() * 9))
    # a predictor that orders the patches like their losses, with large gaps, gets ~0
    distinct = torch.randperm(7, generator=g).to(f64).unsqueeze(0)
    assert hpm_loss_prediction(distinct * 1e3, distinct) < 1e-10


def test_prediction_gradient_stops_at_the_reconstruction() -> None:
    pred, target, loss_pred, mask = batch(seed=5)
    pred.requires_grad_(True)
    loss_pred.requires_grad_(True)
    hpm_loss(pred, target, loss_pred=loss_pred, mask=mask, prediction_weight=3.0).backward()
    assert pred.grad is not None
    g_full = pred.grad.clone()
    pred.grad = None
    hpm_loss(pred, target, mask=mask).backward()
    close(g_full, pred.grad)  # the predictor's term does not push the reconstruction
    assert loss_pred.grad is not None and torch.count_nonzero(loss_pred.grad[~mask]) == 0


def test_no_pair_and_empty_mask_are_zero_with_zero_gradient() -> None:
    pred, target, loss_pred, _ = batch(seed=6)
    loss_pred.requires_grad_(True)
    ties = torch.ones(3, 6, dtype=f64)
    out = hpm_loss_prediction(loss_pred, ties)
    out.backward()
    assert out == 0 and loss_pred.grad is not None and torch.count_nonzero(loss_pred.grad) == 0
    none = torch.zeros(3, 6, dtype=torch.bool)
    x = pred.clone().requires_grad_(True)
    out = hpm_loss(x, target, loss_pred=loss_pred, mask=none)
    out.backward()
    assert out == 0 and x.grad is not None and torch.count_nonzero(x.grad) == 0


def test_module_and_bad_inputs() -> None:
    pred, target, loss_pred, mask = batch(seed=7)
    m = losslab.create("hpm", norm_pix=True, prediction_weight=2.0)
    close(m(pred, target, loss_pred=loss_pred, mask=mask),
          hpm_loss(pred, target, loss_pred=loss_pred, mask=mask, norm_pix=True,
                   prediction_weight=2.0))
    with pytest.raises(ValueError, match="mask"):
        hpm_loss(pred, target, mask=mask.float())
    with pytest.raises(ValueError, match="loss_pred"):
        hpm_loss(pred, target, loss_pred=loss_pred[:, :-1])
    with pytest.raises(ValueError, match="norm_pix"):
        hpm_loss(pred[..., 0], target[..., 0], norm_pix=True)
    with pytest.raises(ValueError, match="form"):
        losslab.create("hpm", form="exact")
