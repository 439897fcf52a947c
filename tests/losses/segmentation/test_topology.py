"""Skeleton Recall (arXiv 2404.03010) and clDice (arXiv 2003.07311): loop oracles in fp64,
the monai peer for clDice, the properties the papers state, what each does with soft labels."""

from __future__ import annotations

import itertools

import pytest
import torch

from losslab.functional import cl_dice_loss, skeleton_recall_loss
from tests._ops.test_morphology import loop_soft_skeleton
from tests.losses.segmentation.common import assert_compiled_equals_eager

pytest.importorskip("scipy")


def thin_batch(seed: int = 0, *, c: int = 3):
    """Lines of classes 1..c-1 on background, random logits."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 10, 12, dtype=torch.long)
    target[0, 2:4, 1:11] = 1
    target[0, 5:9, 6] = c - 1
    target[1, 1:9, 3:5] = 1
    target[1, 8, 0:12] = c - 1
    logits = torch.randn(2, c, 10, 12, generator=g, dtype=torch.float64)
    return logits.requires_grad_(True), target


def skeleton_recall_oracle(logits, target, *, smooth: float, per_image: bool) -> float:
    """Tubed skeleton from scikit-image's skeleton and an explicit L1 ball of radius 2 (the
    cross footprint dilated twice), recall by loops over pixels."""
    from skimage.morphology import skeletonize

    n_img, c, h, w = logits.shape
    p = torch.softmax(logits.detach(), 1)
    sums = {}
    for n in range(n_img):
        t = target[n]
        skel = skeletonize(((t > 0) & (t != -100)).numpy())
        pts = [(i, j) for i in range(h) for j in range(w) if skel[i, j]]
        for k in range(1, c):
            inter = gt = 0.0
            for i, j in itertools.product(range(h), range(w)):
                if int(t[i, j]) != k:
                    continue
                if any(abs(i - a) + abs(j - b) <= 2 for a, b in pts):
                    inter += float(p[n, k, i, j])
                    gt += 1.0
            key = (n, k) if per_image else (0, k)
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += inter
            acc[1] += gt
    per = {key: 1 - (a + smooth) / (b + smooth) for key, (a, b) in sums.items()}
    return sum(per.values()) / len(per)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("smooth", [1.0, 1e-3])
def test_skeleton_recall_matches_loop_oracle(per_image: bool, smooth: float) -> None:
    pytest.importorskip("skimage")
    logits, target = thin_batch()
    got = skeleton_recall_loss(logits, target, smooth=smooth, per_image=per_image)
    want = skeleton_recall_oracle(logits, target, smooth=smooth, per_image=per_image)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_skeleton_recall_is_a_recall() -> None:
    """Only missed skeleton pixels cost: a prediction that covers the target (and more) has
    loss ~0, one that misses half of a line has a positive loss; absent classes count 0."""
    pytest.importorskip("skimage")
    _, target = thin_batch()
    over = torch.full((2, 3, 10, 12), -20.0, dtype=torch.float64)
    over[:, 1] = 0.0  # class 1 fills the background too: many false positives
    over[:, 1][target == 1] = 20.0
    over[:, 2][target == 2] = 40.0
    assert float(skeleton_recall_loss(over, target, smooth=0.0)) < 1e-8
    miss = over.clone()
    miss[0, 1, :, 6:] = -20.0  # half of image 0's class-1 line lost
    assert float(skeleton_recall_loss(miss, target, smooth=0.0, reduction="none")[0]) > 0.1
    binary = skeleton_recall_loss(over[:, 2:3] - 20, (target == 2).long(), smooth=0.0)
    assert float(binary) < 1e-8


def test_skeleton_recall_rejects_soft_labels_and_ignores_pixels() -> None:
    logits, target = thin_batch()
    with pytest.raises(ValueError, match="soft"):
        skeleton_recall_loss(logits, torch.softmax(logits.detach(), 1))
    out = skeleton_recall_loss(logits, torch.full_like(target, -100))
    (g,) = torch.autograd.grad(out, logits)
    assert float(out) == 0.0 and float(g.abs().sum()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize(("kw", "sigmoid"), [
    pytest.param({"per_image": True}, False, id="per-image-softmax"),
    pytest.param({"per_image": False, "tube": False, "reduction": "sum"}, True,
                 id="batch-sigmoid-bare"),
])
def test_skeleton_recall_compiled_equals_eager(kw: dict, sigmoid: bool) -> None:
    """torch.compile(fullgraph=True): the tubed skeleton is the custom operator
    losslab::tubed_skeleton, same value and gradient (with ignored pixels)."""
    pytest.importorskip("skimage")

    logits, target = thin_batch(5)
    target[0, 2, 1:4] = -100
    if sigmoid:
        logits, target = logits[:, 1:2], torch.where(target == 2, 0, target)
    _, g_eager = assert_compiled_equals_eager("skeleton_recall", logits, target, **kw)
    assert float(g_eager.abs().sum()) > 0


def cl_dice_oracle(logits, target, *, smooth: float, iterations: int, per_image: bool,
                   include_background: bool = False) -> float:
    p = torch.softmax(logits.detach(), 1)
    y = torch.nn.functional.one_hot(target, p.shape[1]).permute(0, 3, 1, 2).double()
    first = 0 if include_background else 1
    groups: dict[int, list[float]] = {}
    for n in range(p.shape[0]):
        acc = groups.setdefault(n if per_image else 0, [0.0, 0.0, 0.0, 0.0])
        for k in range(first, p.shape[1]):
            sp = loop_soft_skeleton(p[n, k].tolist(), iterations)
            sy = loop_soft_skeleton(y[n, k].tolist(), iterations)
            for i, j in itertools.product(range(p.shape[2]), range(p.shape[3])):
                acc[0] += sp[i][j] * float(y[n, k, i, j])
                acc[1] += sp[i][j]
                acc[2] += sy[i][j] * float(p[n, k, i, j])
                acc[3] += sy[i][j]
    vals = []
    for a, b, c, d in groups.values():
        tprec, tsens = (a + smooth) / (b + smooth), (c + smooth) / (d + smooth)
        vals.append(1 - 2 * tprec * tsens / (tprec + tsens))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("per_image,include_background",
                         [(False, False), (True, False), (True, True)])
def test_cl_dice_matches_loop_oracle(per_image: bool, include_background: bool) -> None:
    logits, target = thin_batch()
    got = cl_dice_loss(logits, target, per_image=per_image,
                       include_background=include_background)
    want = cl_dice_oracle(logits, target, smooth=1.0, iterations=3, per_image=per_image,
                          include_background=include_background)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_cl_dice_matches_monai_per_image() -> None:
    monai = pytest.importorskip("monai.losses")
    logits, target = thin_batch()
    p = torch.softmax(logits, 1)
    y = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double()
    # monai adds `smooth` (> 0 required) to the harmonic mean's denominator: make it vanish
    want = monai.SoftclDiceLoss(smooth=1e-300, include_background=False)(p, y)
    torch.testing.assert_close(cl_dice_loss(logits, target, per_image=True), want)
    zb, tb = logits[:, 1:2], (target == 1).long()
    want = monai.SoftclDiceLoss(smooth=1e-300, sigmoid=True)(zb, tb.unsqueeze(1).double())
    torch.testing.assert_close(cl_dice_loss(zb, tb, per_image=True), want)


def test_cl_dice_is_zero_for_a_perfect_mask_and_penalises_a_broken_line() -> None:
    """Paper, section 3: clDice = 1 for a prediction equal to the target; cutting a thin line
    (one pixel gap) lowers topology sensitivity far more than it lowers volumetric Dice."""
    _, target = thin_batch()
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double() * 60 - 30
    assert float(cl_dice_loss(perfect, target, smooth=0.0)) == pytest.approx(0.0, abs=1e-9)
    broken = perfect.clone()
    broken[1, :, 8, 5:7] = torch.tensor([30.0, -30.0, -30.0]).reshape(3, 1)  # gap in class 2
    assert float(cl_dice_loss(broken, target, smooth=0.0, reduction="none")[0]) > 0.0


def test_cl_dice_soft_labels_are_not_minimised_at_the_label() -> None:
    """Soft labels are accepted; the loss at p = y is positive (soft skeletons of soft maps),
    so a soft target is not a minimiser: pair cl_dice with a soft-label-exact region loss."""
    g = torch.Generator().manual_seed(4)
    y = torch.softmax(torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2, 1)
    assert float(cl_dice_loss(torch.log(y), y, smooth=0.0)) > 0.01


def test_cl_dice_gradcheck_3d_and_bad_dims() -> None:
    logits, target = thin_batch()
    small = logits[:, :, :6, :6].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: cl_dice_loss(x, target[:, :6, :6]), (small,),
                                    fast_mode=True)
    vol = torch.randn(1, 2, 4, 5, 6, dtype=torch.float64)
    t = torch.randint(0, 2, (1, 4, 5, 6))
    assert torch.isfinite(cl_dice_loss(vol, t))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        cl_dice_loss(torch.randn(2, 2, 7), torch.randint(0, 2, (2, 7)))
