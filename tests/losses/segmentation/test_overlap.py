"""Binary (single-logit, sigmoid) inputs of the overlap losses, their soft-label behaviour, 3-D
inputs, and the Lovász hinge (arXiv 1705.08790): loop oracles in fp64, monai and kornia peers. The
multi-class tests of these losses are in ``tests/losses/test_segmentation.py``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losslab.functional import (
    dice_loss,
    dice_semimetric_loss,
    focal_tversky_loss,
    jaccard_loss,
    jaccard_metric_loss,
    lovasz_hinge_loss,
    lovasz_softmax_loss,
    tversky_loss,
)

N, H, W = 3, 4, 5
REGION = (dice_loss, jaccard_loss, tversky_loss, focal_tversky_loss, jaccard_metric_loss,
          dice_semimetric_loss)


def binary_batch(seed: int = 0, *, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, 1, H, W, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 2, (N, H, W), generator=g)
    target[1] = 0  # an image without foreground
    if ignore:
        target[0, 0, :3] = -100
    return logits.requires_grad_(True), target


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def binary_counts(logits, target, *, per_image: bool):
    """{group: (sum p y, sum p, sum y, sum |p - y|)} over non-ignored pixels, by loops."""
    z = logits.detach()[:, 0].tolist()
    soft = target.is_floating_point()
    t = (target[:, 0] if soft else target).tolist()
    out: dict[int, list[float]] = {}
    for n in range(len(z)):
        acc = out.setdefault(n if per_image else 0, [0.0, 0.0, 0.0, 0.0])
        for h in range(len(z[n])):
            for w in range(len(z[n][h])):
                if not soft and t[n][h][w] == -100:
                    continue
                p = sig(z[n][h][w])
                y = float(t[n][h][w])
                acc[0] += p * y
                acc[1] += p
                acc[2] += y
                acc[3] += abs(p - y)
    return out


def binary_oracle(logits, target, score, *, per_image: bool, classes: str, metric: bool = False):
    vals = []
    for tpy, pc, yc, l1 in binary_counts(logits, target, per_image=per_image).values():
        if classes == "present" and yc <= 0:
            continue
        tp = (pc + yc - l1) / 2 if metric else tpy
        vals.append(score(tp, pc, yc))
    return sum(vals) / len(vals)


S = 1e-5


def dice_l(tp, pc, yc, s=S):
    return 1 - (2 * tp + s) / (pc + yc + s)


def tversky_l(tp, pc, yc, a=0.3, b=0.7, s=S):
    return 1 - (tp + s) / (tp + a * (pc - tp) + b * (yc - tp) + s)


def jacc_l(tp, pc, yc, s=S):
    return 1 - (tp + s) / (pc + yc - tp + s)


CASES = [
    (dice_loss, dice_l, {}, False),
    (jaccard_loss, jacc_l, {}, False),
    (tversky_loss, tversky_l, {}, False),
    (focal_tversky_loss, lambda tp, pc, yc: tversky_l(tp, pc, yc) ** 0.75, {}, False),
    (jaccard_metric_loss, lambda tp, pc, yc: jacc_l(tp, pc, yc, 1e-3), {}, True),
    (dice_semimetric_loss, lambda tp, pc, yc: dice_l(tp, pc, yc, 1e-3), {}, True),
]


@pytest.mark.parametrize("per_image,classes", list(itertools.product([True, False],
                                                                     ["all", "present"])))
@pytest.mark.parametrize("fn,score,kw,metric", CASES, ids=[c[0].__name__ for c in CASES])
def test_binary_single_logit_matches_sigmoid_loop_oracle(fn, score, kw, metric, per_image,
                                                         classes) -> None:
    logits, target = binary_batch()
    got = fn(logits, target, per_image=per_image, classes=classes, **kw)
    want = binary_oracle(logits, target, score, per_image=per_image, classes=classes,
                         metric=metric)
    assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("fn,score,kw,metric", CASES, ids=[c[0].__name__ for c in CASES])
def test_binary_soft_labels_match_loop_oracle(fn, score, kw, metric) -> None:
    logits, _ = binary_batch()
    soft = torch.rand(N, 1, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = fn(logits, soft, per_image=True, classes="all")
    want = binary_oracle(logits, soft, score, per_image=True, classes="all", metric=metric)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_binary_soft_labels_metric_losses_vanish_at_the_label_classic_ones_do_not() -> None:
    """What each loss does with soft labels (arXiv 2302.05666, Theorem 3.4 / section 3): the
    L1-count losses are 0 at p = y; the classic soft Dice/Jaccard/Tversky are not."""
    y = torch.rand(2, 1, 4, 4, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    logits = torch.logit(y).requires_grad_(True)
    for fn in (jaccard_metric_loss, dice_semimetric_loss):
        assert float(fn(logits, y, smooth=0.0)) == pytest.approx(0.0, abs=1e-12)
    for fn in (dice_loss, jaccard_loss, tversky_loss):
        assert float(fn(logits, y, smooth=0.0)) > 0.05


def test_binary_dice_and_tversky_match_monai_sigmoid() -> None:
    monai = pytest.importorskip("monai.losses")
    logits, target = binary_batch(ignore=False)
    y = target.unsqueeze(1).double()
    for per_image in (True, False):
        want = monai.DiceLoss(sigmoid=True, batch=not per_image)(logits, y)
        torch.testing.assert_close(dice_loss(logits, target, per_image=per_image), want)
        want = monai.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7,
                                 batch=not per_image)(logits, y)
        torch.testing.assert_close(tversky_loss(logits, target, per_image=per_image), want)
    soft = torch.rand_like(logits.detach())
    want = monai.DiceLoss(sigmoid=True, soft_label=True, smooth_nr=1e-3, smooth_dr=1e-3,
                          batch=True)(logits, soft)
    torch.testing.assert_close(dice_semimetric_loss(logits, soft, classes="all"), want)


def test_binary_targets_are_validated() -> None:
    logits, target = binary_batch()
    with pytest.raises(ValueError, match="target"):
        dice_loss(logits, torch.full_like(target, 2))
    with pytest.raises(ValueError, match="target"):
        dice_loss(logits, torch.rand(N, 1, H, W, dtype=torch.float64) + 1.0)
    with pytest.raises(ValueError, match="target"):
        dice_loss(logits, torch.rand(N, 2, H, W, dtype=torch.float64))
    with pytest.raises(ValueError, match="soft"):
        lovasz_hinge_loss(logits, torch.rand(N, 1, H, W, dtype=torch.float64))


def test_binary_all_ignored_is_zero_with_zero_gradient_and_3d_inputs_work() -> None:
    logits, target = binary_batch()
    for fn in (*REGION, lovasz_hinge_loss, lovasz_softmax_loss):
        out = fn(logits, torch.full_like(target, -100))
        (g,) = torch.autograd.grad(out, logits)
        assert float(out) == 0.0 and float(g.abs().sum()) == 0.0
    vol = torch.randn(2, 3, 3, 4, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 3, 4, 5))
    flat = dice_loss(vol.reshape(2, 3, 3, 20), t.reshape(2, 3, 20))
    torch.testing.assert_close(dice_loss(vol, t), flat)


def test_binary_gradcheck() -> None:
    logits, target = binary_batch()
    soft = torch.rand(N, 1, H, W, dtype=torch.float64)
    for fn in (dice_loss, focal_tversky_loss, lovasz_hinge_loss):
        assert torch.autograd.gradcheck(lambda x, f=fn: f(x, target), (logits,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: jaccard_metric_loss(x, soft), (logits,),
                                    fast_mode=True)


# --------------------------------------------------------------------------------------------
# Lovász hinge
# --------------------------------------------------------------------------------------------


def jaccard_set_loss(mistakes: frozenset[int], fg: frozenset[int]) -> float:
    """Delta_J(M) = |M| / |fg ∪ M| (eq. 8 of the paper), 0 for M empty."""
    if not mistakes:
        return 0.0
    return len(mistakes) / len(fg | mistakes)


def lovasz_extension(m: list[float], fg: frozenset[int]) -> float:
    """The Lovász extension as an integral over thresholds (Lovász 1983): for m >= 0,
    f(m) = ∫_0^∞ Delta({i : m_i > t}) dt, evaluated exactly on the sorted values."""
    levels = sorted(set(m) | {0.0})
    total = 0.0
    for lo, hi in itertools.pairwise(levels):
        total += (hi - lo) * jaccard_set_loss(frozenset(i for i, v in enumerate(m) if v > lo), fg)
    return total


def hinge_oracle(logits, target, *, per_image: bool, classes: str) -> float:
    z = logits.detach()[:, 0].reshape(logits.shape[0], -1).tolist()
    t = target.reshape(target.shape[0], -1).tolist()
    groups: dict[int, tuple[list[float], set[int]]] = {}
    for n in range(len(z)):
        m, fg = groups.setdefault(n if per_image else 0, ([], set()))
        for zi, ti in zip(z[n], t[n]):
            if ti == -100:
                continue
            s = 2.0 * ti - 1.0
            if ti == 1:
                fg.add(len(m))
            m.append(max(0.0, 1.0 - zi * s))
    vals = [lovasz_extension(m, frozenset(fg)) for m, fg in groups.values()
            if m and (classes == "all" or fg)]
    return sum(vals) / len(vals)


@pytest.mark.parametrize("per_image,classes", list(itertools.product([True, False],
                                                                     ["all", "present"])))
def test_lovasz_hinge_matches_integral_definition(per_image: bool, classes) -> None:
    logits, target = binary_batch()
    got = lovasz_hinge_loss(logits, target, per_image=per_image, classes=classes)
    assert float(got) == pytest.approx(hinge_oracle(logits, target, per_image=per_image,
                                                    classes=classes), rel=1e-10)


def test_lovasz_hinge_at_unit_margin_predictions_is_twice_the_jaccard_loss() -> None:
    """Logits z in {-1, +1}: hinge errors are 0 (correct) or 2 (mistake), and the Lovász
    extension is positively homogeneous and equals Delta_J on indicator vectors (paper,
    section 3.1), so the loss is 2 * (1 - IoU) of the thresholded prediction."""
    _, target = binary_batch(ignore=False)
    z = torch.where(torch.rand(N, 1, H, W, generator=torch.Generator().manual_seed(5)) > 0.5,
                    1.0, -1.0).double()
    got = lovasz_hinge_loss(z, target, reduction="none")
    for n in range(N):
        gt, pr = target[n] == 1, z[n, 0] > 0
        union = float((gt | pr).sum())
        want = 0.0 if union == 0 else 1 - float((gt & pr).sum()) / union
        if float((gt != pr).sum()) == 0:
            want = 0.0
        assert float(got[n]) == pytest.approx(2 * want, abs=1e-12)


def test_lovasz_hinge_multichannel_is_one_vs_rest_of_the_binary_hinge() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    per_class = [lovasz_hinge_loss(logits[:, c:c + 1], (target == c).long(), reduction="none")
                 for c in range(3)]
    want = torch.stack(per_class, 1).mean(1)
    torch.testing.assert_close(lovasz_hinge_loss(logits, target, reduction="none"), want)


def _multiclass_batch(seed: int = 3, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, c, H, W, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (N, H, W), generator=g)
    return logits.requires_grad_(True), target


def _same_value_and_grad(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> None:
    (g_ours,) = torch.autograd.grad(ours, x, retain_graph=True)
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_tversky_matches_kornia_per_image_present_classes() -> None:
    """kornia.losses.tversky_loss: softmax, per image and class, the mean over the classes
    present in the image's target, then over images, no smoothing in the numerator (its eps
    only in the denominator: 0 here); ignored pixels out of every count."""
    kornia = pytest.importorskip("kornia")
    logits, target = _multiclass_batch()
    target[0, 0, :2] = -100
    for alpha, beta in ((0.3, 0.7), (0.5, 0.5), (0.9, 0.1)):
        ours = tversky_loss(logits, target, alpha=alpha, beta=beta, smooth=0.0, per_image=True,
                            classes="present")
        ref = kornia.losses.tversky_loss(logits, target, alpha, beta, eps=0.0, ignore_index=-100)
        _same_value_and_grad(ours, ref, logits)


def test_lovasz_hinge_matches_kornia_per_image() -> None:
    """kornia.losses.lovasz_hinge_loss ([B, 1, H, W] logits): Berman's per-image hinge,
    averaged over the images, every image counted (also the one without foreground)."""
    kornia = pytest.importorskip("kornia")
    logits, target = binary_batch(4, ignore=False)
    ours = lovasz_hinge_loss(logits, target, per_image=True)
    ref = kornia.losses.lovasz_hinge_loss(logits, target)
    _same_value_and_grad(ours, ref, logits)


def test_lovasz_softmax_matches_kornia_per_image_all_classes() -> None:
    """kornia.losses.lovasz_softmax_loss: per image and class (every class, also absent ones:
    their Lovász extension is the sum of their probabilities' errors), the mean over both."""
    kornia = pytest.importorskip("kornia")
    logits, target = _multiclass_batch(5)
    target[1][target[1] == 2] = 0  # class 2 absent from image 1
    ours = lovasz_softmax_loss(logits, target, per_image=True, classes="all")
    ref = kornia.losses.lovasz_softmax_loss(logits, target)
    _same_value_and_grad(ours, ref, logits)
