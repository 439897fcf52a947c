"""Dice + CE and Dice + focal: loop oracles (fp64), monai peers, soft-label behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.functional import dice_ce_loss, dice_focal_loss, dice_loss

N, C, H, W = 3, 4, 3, 4


def batch(seed: int = 0, *, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (N, H, W), generator=g)
    if ignore:
        target[0, 0, :2] = -100
    return logits.requires_grad_(True), target


def pixel_oracle(logits, target, gamma: float, *, per_image: bool):
    """Per group: mean over non-ignored pixels of -sum_k y_k (1 - p_k)^gamma log p_k."""
    lg = logits.detach()
    soft = target.is_floating_point()
    sums: dict[int, list[float]] = {}
    for n in range(lg.shape[0]):
        acc = sums.setdefault(n if per_image else 0, [0.0, 0.0])
        for h in range(lg.shape[2]):
            for w in range(lg.shape[3]):
                z = [float(lg[n, c, h, w]) for c in range(lg.shape[1])]
                if lg.shape[1] == 1:
                    p1 = 1 / (1 + math.exp(-z[0]))
                    p = [p1, 1 - p1]
                    y1 = float(target[n, 0, h, w]) if soft else float(target[n, h, w])
                    y = [y1, 1 - y1]
                    if not soft and int(target[n, h, w]) == -100:
                        continue
                else:
                    if not soft and int(target[n, h, w]) == -100:
                        continue
                    m = max(z)
                    e = [math.exp(v - m) for v in z]
                    p = [v / sum(e) for v in e]
                    y = ([float(target[n, c, h, w]) for c in range(len(z))] if soft
                         else [float(int(target[n, h, w]) == c) for c in range(len(z))])
                acc[0] += -sum(yk * (1 - pk) ** gamma * math.log(pk) for yk, pk in zip(y, p))
                acc[1] += 1
    return {k: s / c for k, (s, c) in sums.items()}


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_dice_focal_and_dice_ce_match_loop_oracles(per_image: bool, gamma: float) -> None:
    """Hard labels: the Dice term is the classic soft Dice (tested against its own loop oracle
    in tests/losses/test_segmentation.py), the pixel term the loop above."""
    logits, target = batch()
    dice = dice_loss(logits, target, per_image=per_image, reduction="none")
    if not per_image:
        dice = dice.mean().reshape(1)
    pix = pixel_oracle(logits, target, gamma, per_image=per_image)
    want = [float(dice[g]) + 0.5 * pix[g] for g in sorted(pix)]
    got = dice_focal_loss(logits, target, gamma=gamma, lambda_focal=0.5, per_image=per_image,
                          reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-10)
    if gamma == 0.0:
        torch.testing.assert_close(
            dice_ce_loss(logits, target, lambda_ce=0.5, per_image=per_image, reduction="none"),
            got)


@pytest.mark.parametrize("per_image", [True, False])
def test_binary_single_logit_matches_loop_oracle(per_image: bool) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(N, 1, H, W, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N, H, W), generator=g)
    target[1, 0, 0] = -100
    for gamma in (0.0, 2.0):
        dice = dice_loss(logits, target, per_image=per_image, reduction="none")
        pix = pixel_oracle(logits, target, gamma, per_image=per_image)
        want = [float(dice[g]) + pix[g] for g in sorted(pix)]
        got = dice_focal_loss(logits, target, gamma=gamma, per_image=per_image,
                              reduction="none")
        assert got.tolist() == pytest.approx(want, rel=1e-10)


def test_match_monai() -> None:
    monai = pytest.importorskip("monai.losses")
    logits, target = batch(ignore=False)
    t = target.unsqueeze(1)
    for per_image in (True, False):
        want = monai.DiceCELoss(softmax=True, to_onehot_y=True, batch=not per_image)(logits, t)
        torch.testing.assert_close(dice_ce_loss(logits, target, per_image=per_image), want)
    zb = logits[:, :1].detach()
    tb = (target > 1).long()
    for per_image in (True, False):
        want = monai.DiceCELoss(sigmoid=True, batch=not per_image)(zb, tb.unsqueeze(1).double())
        torch.testing.assert_close(dice_ce_loss(zb, tb, per_image=per_image), want)
        want = monai.DiceFocalLoss(sigmoid=True, gamma=2.0, batch=not per_image)(
            zb, tb.unsqueeze(1).double())
        # monai's focal term runs partly in float32 (relative gap ~1e-8)
        torch.testing.assert_close(dice_focal_loss(zb, tb, per_image=per_image), want,
                                   rtol=1e-6, atol=1e-7)


def _soft(seed: int, shape: tuple[int, ...], binary: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if binary:
        return torch.rand(shape, generator=g, dtype=torch.float64) * 0.8 + 0.1
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)


@pytest.mark.parametrize("binary", [False, True])
def test_dice_ce_is_minimised_at_the_soft_label(binary: bool) -> None:
    """Soft labels: both terms are minimised at p = y (the Dice semimetric is 0 there, CE is a
    proper scoring rule), so every perturbation of the logits increases the loss; the classic
    soft Dice + CE (monai's DiceCE) is not minimised there."""
    y = _soft(0, (2, 1 if binary else C, 4, 4), binary)
    at = torch.logit(y) if binary else torch.log(y)
    base = float(dice_ce_loss(at, y, smooth=0.0))
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        moved = at + 0.05 * torch.randn(at.shape, generator=g, dtype=torch.float64)
        assert float(dice_ce_loss(moved, y, smooth=0.0)) > base
    grad_dir = at.clone().requires_grad_(True)
    classic = dice_loss(grad_dir, y, smooth=0.0)
    (g_classic,) = torch.autograd.grad(classic, grad_dir)
    assert float(g_classic.abs().max()) > 1e-3  # the classic Dice still pushes away from y


def test_dice_focal_soft_labels_are_the_expectation_of_hard_labels() -> None:
    """The focal term is linear in the target: with the Dice term off, a mixture of two
    targets gives the mixture of their losses; a soft label is the y-weighted average of the
    hard-label losses, pixel by pixel (the loop oracle)."""
    logits, _ = batch(ignore=False)
    y1, y2 = _soft(2, (N, C, H, W), False), _soft(3, (N, C, H, W), False)
    a = 0.3
    mix = dice_focal_loss(logits, a * y1 + (1 - a) * y2, lambda_dice=0.0)
    want = (a * dice_focal_loss(logits, y1, lambda_dice=0.0)
            + (1 - a) * dice_focal_loss(logits, y2, lambda_dice=0.0))
    torch.testing.assert_close(mix, want)
    pix = pixel_oracle(logits, y1, 2.0, per_image=True)
    assert float(dice_focal_loss(logits, y1, lambda_dice=0.0)) == pytest.approx(
        sum(pix.values()) / len(pix), rel=1e-10)


def test_all_ignored_zero_and_gradcheck() -> None:
    logits, target = batch()
    for fn in (dice_ce_loss, dice_focal_loss):
        out = fn(logits, torch.full_like(target, -100))
        (g,) = torch.autograd.grad(out, logits)
        assert float(out) == 0.0 and float(g.abs().sum()) == 0.0
        assert torch.autograd.gradcheck(lambda x, f=fn: f(x, target), (logits,), fast_mode=True)
    with pytest.raises(ValueError, match="gamma"):
        dice_focal_loss(logits, target, gamma=-1.0)
    with pytest.raises(ValueError, match="lambda_ce"):
        dice_ce_loss(logits, target, lambda_ce=math.nan)
