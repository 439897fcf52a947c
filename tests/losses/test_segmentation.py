"""Segmentation losses: loop oracles from the papers' formulas (fp64), monai and kornia peers,
and the properties of arXiv 2302.05666 (JML/DML) and arXiv 1705.08790 (Lovász-Softmax)."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import losslab
import losslab.functional as LF
from losslab.functional import (
    dice_loss,
    dice_semimetric_loss,
    focal_tversky_loss,
    jaccard_loss,
    jaccard_metric_loss,
    lovasz_softmax_loss,
    tversky_loss,
)

N, C, H, W = 3, 4, 3, 4


def batch(seed: int = 0, *, ignore: bool = True, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * scale)
    target = torch.randint(0, C - 1, (N, H, W), generator=g)  # class C-1 absent
    if ignore:
        target[0, 0, :2] = -100
        target[2] = -100  # a fully ignored image
        target[2, 1, 1] = 1
    return logits.requires_grad_(True), target


def soft_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    soft = torch.softmax(torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * 2, 1)
    return logits.requires_grad_(True), soft


# --------------------------------------------------------------------------------------------
# Loop oracle: the per-class soft counts written out pixel by pixel
# --------------------------------------------------------------------------------------------


def counts_oracle(logits, target, *, per_image, metric=False, squared=False):
    """{group: {class: (tp, P, Y)}} from explicit loops over pixels (fp64 Python floats)."""
    lg = logits.detach().tolist()
    soft = target.is_floating_point()
    tg = target.tolist()
    groups = {}
    for n in range(N):
        key = n if per_image else 0
        for h in range(H):
            for w in range(W):
                if not soft and tg[n][h][w] == -100:
                    continue
                z = [lg[n][c][h][w] for c in range(C)]
                m = max(z)
                e = [math.exp(v - m) for v in z]
                p = [v / sum(e) for v in e]
                y = ([tg[n][c][h][w] for c in range(C)] if soft
                     else [1.0 if tg[n][h][w] == c else 0.0 for c in range(C)])
                grp = groups.setdefault(key, {c: [0.0, 0.0, 0.0, 0.0] for c in range(C)})
                for c in range(C):
                    acc = grp[c]
                    acc[0] += p[c] * y[c]
                    acc[1] += p[c] ** 2 if squared else p[c]
                    acc[2] += y[c] ** 2 if squared else y[c]
                    acc[3] += abs(p[c] - y[c])
    out = {}
    for key, grp in groups.items():
        out[key] = {}
        for c, (pyc, pc, yc, l1) in grp.items():
            tp = (pc + yc - l1) / 2 if metric else pyc
            out[key][c] = (tp, pc, yc)
    return out


def region_oracle(logits, target, score, *, per_image, classes, metric=False, squared=False,
                  post=lambda v: v):
    """Mean over active classes per group, then mean over groups (the "mean" reduction)."""
    counts = counts_oracle(logits, target, per_image=per_image, metric=metric, squared=squared)
    group_losses, class_losses = [], []
    for _key, cls in sorted(counts.items()):
        losses = [post(1 - score(*cls[c])) for c in range(C)
                  if classes == "all" or cls[c][2] > 0]
        class_losses.extend(losses)
        if losses:
            group_losses.append(sum(losses) / len(losses))
    if per_image:
        return sum(group_losses) / len(group_losses)
    return sum(class_losses) / len(class_losses)


def dice_score(s):
    return lambda tp, p, y: (2 * tp + s) / (p + y + s)


def tversky_score(a, b, s):
    return lambda tp, p, y: (tp + s) / (tp + a * (p - tp) + b * (y - tp) + s)


SETTINGS = list(itertools.product([True, False], ["all", "present"]))


@pytest.mark.parametrize("per_image,classes", SETTINGS)
def test_region_losses_match_loop_oracles(per_image: bool, classes: str) -> None:
    logits, target = batch()
    kw = dict(per_image=per_image, classes=classes)
    s = 0.5  # a visible smoothing term
    cases = [
        (dice_loss(logits, target, smooth=s, **kw), dict(score=dice_score(s))),
        (dice_loss(logits, target, smooth=s, squared_denominator=True, **kw),
         dict(score=dice_score(s), squared=True)),
        (jaccard_loss(logits, target, smooth=s, **kw), dict(score=tversky_score(1, 1, s))),
        (tversky_loss(logits, target, alpha=0.2, beta=0.9, smooth=s, **kw),
         dict(score=tversky_score(0.2, 0.9, s))),
        (focal_tversky_loss(logits, target, alpha=0.2, beta=0.9, gamma=1.5, smooth=s, **kw),
         dict(score=tversky_score(0.2, 0.9, s), post=lambda v: v ** (1 / 1.5))),
        (jaccard_metric_loss(logits, target, smooth=s, **kw),
         dict(score=tversky_score(1, 1, s), metric=True)),
        (dice_semimetric_loss(logits, target, smooth=s, **kw),
         dict(score=dice_score(s), metric=True)),
    ]
    for got, oracle_kw in cases:
        want = region_oracle(logits, target, per_image=per_image, classes=classes, **oracle_kw)
        assert float(got.detach()) == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("per_image", [True, False])
def test_soft_label_losses_match_loop_oracles(per_image: bool) -> None:
    logits, soft = soft_batch()
    kw = dict(per_image=per_image, classes="all", smooth=0.1)
    got = jaccard_metric_loss(logits, soft, **kw)
    want = region_oracle(logits, soft, tversky_score(1, 1, 0.1), per_image=per_image,
                         classes="all", metric=True)
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    got = dice_loss(logits, soft, **kw)
    want = region_oracle(logits, soft, dice_score(0.1), per_image=per_image, classes="all")
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)


def test_reduction_none_shapes_and_ignored_image() -> None:
    logits, target = batch()
    per_img = dice_loss(logits, target, reduction="none")
    assert per_img.shape == (N,)
    # image 2 has a single valid pixel; an image with none is left out of the mean
    target[2] = -100
    per_img = dice_loss(logits, target, reduction="none").detach()
    assert float(per_img[2]) == 0.0
    mean = dice_loss(logits, target).detach()
    torch.testing.assert_close(mean, per_img[:2].mean())
    per_class = jaccard_metric_loss(logits, target, reduction="none").detach()
    assert per_class.shape == (C,)
    assert float(per_class[C - 1]) == 0.0  # absent class, "present" mode
    torch.testing.assert_close(jaccard_metric_loss(logits, target).detach(),
                               per_class[:C - 1].mean())


def test_all_ignored_is_zero_with_zero_gradient() -> None:
    logits, target = batch()
    target[:] = -100
    for fn in (dice_loss, jaccard_loss, tversky_loss, focal_tversky_loss, jaccard_metric_loss,
               dice_semimetric_loss, lovasz_softmax_loss):
        for per_image in (True, False):
            out = fn(logits, target, per_image=per_image)
            assert float(out.detach()) == 0.0
            (g,) = torch.autograd.grad(out, logits)
            assert torch.count_nonzero(g) == 0


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("squared", [False, True])
def test_dice_matches_monai(per_image: bool, squared: bool) -> None:
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = batch(ignore=False)
    peer = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, batch=not per_image,
                                 squared_pred=squared, smooth_nr=1e-5, smooth_dr=1e-5)
    want = peer(logits, target.unsqueeze(1))
    got = dice_loss(logits, target, per_image=per_image, squared_denominator=squared)
    torch.testing.assert_close(got, want)
    jac = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, batch=not per_image,
                                jaccard=True, smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(jaccard_loss(logits, target, per_image=per_image, smooth=0.0),
                               jac(logits, target.unsqueeze(1)))


@pytest.mark.parametrize("per_image", [True, False])
def test_tversky_matches_monai(per_image: bool) -> None:
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = batch(ignore=False)
    peer = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, batch=not per_image,
                                    alpha=0.3, beta=0.7)
    torch.testing.assert_close(tversky_loss(logits, target, per_image=per_image),
                               peer(logits, target.unsqueeze(1)))


@pytest.mark.parametrize("per_image", [True, False])
def test_soft_label_losses_match_monai_soft_label(per_image: bool) -> None:
    monai_losses = pytest.importorskip("monai.losses")
    logits, soft = soft_batch()
    dml = monai_losses.DiceLoss(softmax=True, batch=not per_image, soft_label=True,
                                smooth_nr=1e-3, smooth_dr=1e-3)
    torch.testing.assert_close(
        dice_semimetric_loss(logits, soft, per_image=per_image, classes="all"), dml(logits, soft))
    jml = monai_losses.DiceLoss(softmax=True, batch=not per_image, soft_label=True,
                                jaccard=True, smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(
        jaccard_metric_loss(logits, soft, per_image=per_image, classes="all", smooth=0.0),
        jml(logits, soft))


def kornia_macro_classes(version: str) -> str:
    """Which ``classes=`` option equals ``kornia.losses.dice_loss(average="macro")``: every
    class up to 0.9.0rc1 (its ``test_averaging_macro``), the present classes from 0.9.0."""
    from packaging.version import Version  # a dependency of pytest

    return "present" if Version(version) >= Version("0.9.0") else "all"


def test_dice_matches_kornia_macro() -> None:
    kornia = pytest.importorskip("kornia")
    logits, target = batch()
    target[2, 1, 1] = 0  # kornia's "macro" counts an image without valid pixel as loss 1
    want = kornia.losses.dice_loss(logits, target, average="macro", eps=0.0)
    classes = kornia_macro_classes(kornia.__version__)
    got = dice_loss(logits, target, smooth=0.0, classes=classes, per_image=True)
    torch.testing.assert_close(got, want)
    # the batch has a class absent from every target (C - 1), so the two options differ and
    # the comparison above tells them apart
    other = "all" if classes == "present" else "present"
    assert abs(float(dice_loss(logits, target, smooth=0.0, classes=other)) - float(want)) > 1e-3


def test_dice_reproduces_kornia_macro_test_values() -> None:
    """kornia's ``test_averaging_macro`` case, in closed form (no kornia needed): 2 classes,
    every pixel labelled 0. Its expected value (kornia <= 0.9.0rc1) averages the loss of the
    absent class 1 (loss 1) with class 0's: ``classes="all"``; only class 0 is present."""
    logits = torch.zeros(1, 2, 4, 1, dtype=torch.float64)
    logits[:, 0, 0:3], logits[:, 0, 3:4] = 10.0, 1.0
    logits[:, 1, 0:3], logits[:, 1, 3:4] = 1.0, 10.0
    labels = torch.zeros(1, 4, 1, dtype=torch.int64)
    e1, e10 = math.exp(1.0), math.exp(10.0)
    inter_0 = (3 * e10 + e1) / (e1 + e10)
    loss_0 = 1 - 2 * inter_0 / (4 + inter_0)
    loss_1 = 1.0  # class 1: predicted mass but no target pixel, no intersection
    kw = dict(smooth=0.0, per_image=True)
    torch.testing.assert_close(dice_loss(logits, labels, classes="all", **kw),
                               torch.tensor((loss_0 + loss_1) / 2, dtype=torch.float64))
    torch.testing.assert_close(dice_loss(logits, labels, classes="present", **kw),
                               torch.tensor(loss_0, dtype=torch.float64))
    kornia = pytest.importorskip("kornia")
    want = kornia.losses.dice_loss(logits, labels, average="macro", eps=0.0)
    torch.testing.assert_close(
        dice_loss(logits, labels, classes=kornia_macro_classes(kornia.__version__), **kw), want)


# --------------------------------------------------------------------------------------------
# Properties of JML / DML (arXiv 2302.05666)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_image,classes", SETTINGS)
def test_jml_dml_equal_soft_jaccard_dice_on_hard_labels(per_image: bool, classes: str) -> None:
    logits, target = batch(seed=3)
    kw = dict(per_image=per_image, classes=classes, smooth=0.01)
    torch.testing.assert_close(jaccard_metric_loss(logits, target, **kw),
                               jaccard_loss(logits, target, **kw))
    torch.testing.assert_close(dice_semimetric_loss(logits, target, **kw),
                               dice_loss(logits, target, **kw))


def test_jml_dml_zero_iff_prediction_equals_soft_label() -> None:
    _, soft = soft_batch(seed=5)
    at_label = soft.log().requires_grad_(True)  # softmax(log y) == y
    kw = dict(smooth=0.0, classes="all")
    for fn in (jaccard_metric_loss, dice_semimetric_loss):
        out = fn(at_label, soft, **kw)
        assert abs(float(out)) < 1e-12
        for per_image in (True, False):
            assert abs(float(fn(at_label, soft, per_image=per_image, **kw))) < 1e-12
        off = fn(at_label + 0.3 * torch.randn_like(at_label), soft, **kw)
        assert float(off) > 1e-3
    # the classic soft Jaccard / Dice losses are NOT zero at p == y for soft labels
    assert float(jaccard_loss(at_label, soft, **kw)) > 0.2
    assert float(dice_loss(at_label, soft, **kw)) > 0.1


def test_jml_triangle_inequality_on_soft_vectors() -> None:
    """JML (smooth=0) is a metric on [0, 1]^n (Theorem of arXiv 2302.05666), per class."""
    g = torch.Generator().manual_seed(7)

    def jml(x: torch.Tensor, y: torch.Tensor) -> float:
        a, b, d = x.sum(), y.sum(), (x - y).abs().sum()
        return float(1 - (a + b - d) / (a + b + d))

    for _ in range(200):
        x, y, z = torch.rand(3, 6, generator=g, dtype=torch.float64)
        assert jml(x, z) <= jml(x, y) + jml(y, z) + 1e-12


# --------------------------------------------------------------------------------------------
# Lovász-Softmax (arXiv 1705.08790)
# --------------------------------------------------------------------------------------------


def jaccard_set_loss(mistakes: set[int], fg: set[int]) -> float:
    """Δ_J(M) = |M| / |G ∪ M|."""
    if not mistakes:
        return 0.0
    return len(mistakes) / len(fg | mistakes)


def lovasz_extension_integral(m: list[float], fg: set[int]) -> float:
    """The Lovász extension as ∫_0^1 Δ({i : m_i >= t}) dt (m in [0, 1]^p), independent of the
    sorting formula: Δ is constant between consecutive distinct values of m."""
    levels = sorted(set([0.0, *m]))
    total = 0.0
    for lo, hi in itertools.pairwise(levels):
        total += (hi - lo) * jaccard_set_loss({i for i, v in enumerate(m) if v >= hi}, fg)
    return total


def lovasz_oracle(logits, target, *, per_image, classes):
    lg, tg = logits.detach(), target
    probs = torch.softmax(lg, 1)
    groups = [[n] for n in range(N)] if per_image else [list(range(N))]
    group_losses, class_losses = [], []
    for grp in groups:
        pix = [(n, h, w) for n in grp for h in range(H) for w in range(W)
               if int(tg[n, h, w]) != -100]
        if not pix:
            continue
        losses = []
        for c in range(C):
            fg = {i for i, (n, h, w) in enumerate(pix) if int(tg[n, h, w]) == c}
            if classes == "present" and not fg:
                continue
            m = [abs((1.0 if i in fg else 0.0) - float(probs[n, c, h, w]))
                 for i, (n, h, w) in enumerate(pix)]
            losses.append(lovasz_extension_integral(m, fg))
        class_losses.extend(losses)
        if losses:
            group_losses.append(sum(losses) / len(losses))
    if per_image:
        return sum(group_losses) / len(group_losses)
    return sum(class_losses) / len(class_losses)


@pytest.mark.parametrize("per_image,classes", SETTINGS)
def test_lovasz_matches_integral_definition(per_image: bool, classes: str) -> None:
    logits, target = batch(seed=1)
    got = lovasz_softmax_loss(logits, target, per_image=per_image, classes=classes)
    want = lovasz_oracle(logits, target, per_image=per_image, classes=classes)
    assert float(got.detach()) == pytest.approx(want, rel=1e-10)


def test_lovasz_equals_discrete_jaccard_loss_at_hard_predictions() -> None:
    logits, target = batch(seed=2, ignore=False)
    hard = torch.nn.functional.one_hot(logits.detach().argmax(1), C).permute(0, 3, 1, 2)
    sharp = hard.to(torch.float64) * 200.0  # softmax is one-hot up to exp(-200)
    got = lovasz_softmax_loss(sharp, target, classes="present")
    pred = hard.argmax(1)
    want = []
    for c in range(C):
        gt, pr = target == c, pred == c
        if gt.any():
            want.append(1 - float((gt & pr).sum()) / float((gt | pr).sum()))
    assert float(got) == pytest.approx(sum(want) / len(want), abs=1e-12)


def test_lovasz_rejects_soft_labels_and_bad_shapes() -> None:
    logits, soft = soft_batch()
    with pytest.raises(ValueError, match="soft"):
        lovasz_softmax_loss(logits, soft)
    with pytest.raises(ValueError, match="spatial"):
        dice_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="classes"):
        losslab.create("dice", classes="some")
    with pytest.raises(ValueError, match="alpha"):
        losslab.create("tversky", alpha=-1.0)


def test_focal_tversky_gamma_one_is_tversky_and_gradient_is_finite_at_perfect_fit() -> None:
    logits, target = batch()
    torch.testing.assert_close(focal_tversky_loss(logits, target, gamma=1.0),
                               tversky_loss(logits, target))
    perfect = torch.nn.functional.one_hot(target.clamp_min(0), C).permute(0, 3, 1, 2) * 1e3
    perfect = perfect.to(torch.float64).requires_grad_(True)
    out = focal_tversky_loss(perfect, target, smooth=0.0, classes="present")
    out.backward()
    assert torch.isfinite(perfect.grad).all()


def test_gradcheck_with_ignored_pixels_and_soft_labels() -> None:
    logits, target = batch()
    _, soft = soft_batch()
    for fn in (dice_loss, jaccard_metric_loss, lovasz_softmax_loss, focal_tversky_loss):
        assert torch.autograd.gradcheck(lambda x, f=fn: f(x, target), (logits,), fast_mode=True)
    for fn in (jaccard_metric_loss, dice_semimetric_loss):
        assert torch.autograd.gradcheck(lambda x, f=fn: f(x, soft), (logits,), fast_mode=True)


# --------------------------------------------------------------------------------------------
# Bad input and faults (issue #11)
# --------------------------------------------------------------------------------------------

ALL_DENSE = (dice_loss, jaccard_loss, tversky_loss, focal_tversky_loss, jaccard_metric_loss,
             dice_semimetric_loss, lovasz_softmax_loss)
DENSE_NAMES = ("dice", "jaccard", "tversky", "focal_tversky", "jaccard_metric",
               "dice_semimetric", "lovasz_softmax")


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("fn", ALL_DENSE, ids=lambda f: f.__name__)
def test_nan_logit_gives_nan_not_a_plausible_value(fn, per_image: bool) -> None:
    """Finding 1: a NaN denominator was taken for an empty class (loss 0 or half the value)."""
    logits, target = batch()
    x = logits.detach().clone()
    x[1, 2, 0, 0] = math.nan  # a valid pixel of image 1
    assert torch.isnan(fn(x, target, per_image=per_image))
    for reduction in ("sum", "none"):
        out = fn(x, target, per_image=per_image, reduction=reduction)
        assert torch.isnan(out).any()


@pytest.mark.parametrize("fn", ALL_DENSE, ids=lambda f: f.__name__)
def test_nan_logit_at_an_ignored_pixel_is_left_out_with_finite_gradient(fn) -> None:
    logits, target = batch()
    clean = fn(logits, target).detach()
    x = logits.detach().clone()
    x[0, :, 0, 0] = math.nan  # target[0, 0, 0] is ignore_index
    x.requires_grad_(True)
    out = fn(x, target)
    torch.testing.assert_close(out.detach(), clean)
    out.backward()
    assert torch.isfinite(x.grad).all()
    assert torch.count_nonzero(x.grad[0, :, 0, 0]) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("fn", ALL_DENSE, ids=lambda f: f.__name__)
def test_half_logits_are_computed_and_returned_in_float32(fn, dtype: torch.dtype) -> None:
    """Finding 2: half inputs return float32 (they were cast back to the input dtype)."""
    logits, target = batch(scale=8.0)
    half = logits.detach().to(dtype).requires_grad_(True)
    out = fn(half, target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(half.detach().to(torch.float32), target),
                               rtol=1e-6, atol=1e-6)
    out.backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad).all()
    assert fn(half, target, reduction="none").dtype == torch.float32


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("fn", ALL_DENSE, ids=lambda f: f.__name__)
def test_empty_batch_is_zero_with_zero_gradient(fn, per_image: bool) -> None:
    """Finding 3: N = 0 crashed in reshape (per_image=True); so did an empty spatial size."""
    for shape in ((0, C, H, W), (2, C, 0, W)):
        logits = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        target = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
        out = fn(logits, target, per_image=per_image)
        assert out.shape == () and float(out) == 0.0
        (g,) = torch.autograd.grad(out, logits)
        assert torch.count_nonzero(g) == 0
        assert float(fn(logits, target, per_image=per_image, reduction="sum")) == 0.0
        none = fn(logits, target, per_image=per_image, reduction="none")
        assert none.shape == ((shape[0],) if per_image else (C,))


BAD_HPARAMS = [
    ("dice", "smooth", math.nan), ("dice", "smooth", "0.1"), ("dice", "smooth", -1.0),
    ("dice", "per_image", 1), ("dice", "squared_denominator", None),
    ("dice", "ignore_index", 1.5), ("dice", "ignore_index", "-100"),
    ("jaccard", "classes", None), ("jaccard_metric", "smooth", math.inf),
    ("dice_semimetric", "per_image", "yes"),
    ("tversky", "alpha", math.nan), ("tversky", "beta", -0.5), ("tversky", "beta", "0.7"),
    ("focal_tversky", "gamma", math.nan), ("focal_tversky", "gamma", 0.0),
    ("focal_tversky", "alpha", True),
    ("lovasz_softmax", "per_image", None), ("lovasz_softmax", "ignore_index", math.nan),
]


@pytest.mark.parametrize("name,key,value", BAD_HPARAMS,
                         ids=[f"{n}-{k}={v!r}" for n, k, v in BAD_HPARAMS])
def test_bad_hyperparameters_raise_in_module_and_function(name: str, key: str, value) -> None:
    """Finding 5: NaN, strings, bools-for-numbers and out-of-range values were accepted."""
    with pytest.raises(ValueError, match=key):
        losslab.create(name, **{key: value})
    logits, target = batch()
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(logits, target, **{key: value})


def test_tversky_needs_a_positive_alpha_plus_beta() -> None:
    with pytest.raises(ValueError, match="alpha \\+ beta"):
        losslab.create("tversky", alpha=0.0, beta=0.0)


@pytest.mark.parametrize("fn", ALL_DENSE[:-1], ids=lambda f: f.__name__)
def test_soft_targets_must_be_distributions(fn) -> None:
    """Finding 6: soft targets summing to 2 or holding negative entries were accepted."""
    logits, soft = soft_batch()
    for bad in (soft * 2, soft - 0.5 * soft.amax(1, keepdim=True),
                torch.where(soft > 0.5, math.nan, soft)):
        with pytest.raises(ValueError, match="target"):
            fn(logits, bad)
    # within the tolerance, and targets rounded to a half dtype, are accepted
    fn(logits, soft * (1 + 5e-4))
    for dtype in (torch.float16, torch.bfloat16):
        fn(logits, soft.to(dtype))


def test_target_label_dtypes() -> None:
    """Finding 7 (dense): any integer dtype gives the int64 result, bool is rejected."""
    logits, target = batch()
    t = target.clamp_min(0)
    for fn in ALL_DENSE:
        ref = fn(logits, t)
        for dtype in (torch.int32, torch.uint8, torch.int16):
            torch.testing.assert_close(fn(logits, t.to(dtype)), ref)
        with pytest.raises(ValueError, match="target"):
            fn(logits, t > 0)


def test_degenerate_declarations() -> None:
    """Finding 9: every segmentation loss declares the all-ignored batch as zero (tested
    above); a batch with one class is not degenerate (absent classes count with "all", and the
    present class still has a non-zero loss for a non-perfect prediction)."""
    logits, _ = batch()
    one_class = torch.zeros(N, H, W, dtype=torch.long)
    for name, fn in zip(DENSE_NAMES, ALL_DENSE, strict=True):
        assert losslab.spec(name).degenerate == ("all_ignored",)
        assert float(fn(logits, one_class).detach()) > 0.0


# ---- parity with segmentation-models-pytorch ----
# Parity with segmentation-models-pytorch's losses where the definitions match, values and
# gradients in float64.
#
# smp imports timm and torchvision at package import; its ``losses`` subpackage needs torch only,
# so it is loaded on its own (as ``_smp_losses``) when the package import fails. Where smp's
# definition differs, the test says how, and checks the relation instead:
#
# * Dice, Jaccard: smp aggregates over the batch (``per_image=False``) and gives a class absent
#   from the batch's target loss 0 while still averaging over all ``C`` classes: ``smp =
#   ours(classes="present") * n_present / C``. Its counts are the L1 "metric" counts of arXiv
#   2302.05666, equal to the classic ones for hard labels; with soft labels smp's Dice is our
#   ``dice_semimetric``. smp's ``smooth`` enters the Tversky-form score ``(TP + s) / (TP +
#   FP/2 + FN/2 + s)``, i.e. our Dice with ``smooth = 2 s``.
# * Tversky: smp raises the *class mean* of ``1 - TI`` to ``gamma``; our ``focal_tversky`` raises
#   each class's ``1 - TI`` to ``1/gamma`` (the paper's). They agree on binary inputs.
# * Focal: smp's multiclass focal is a sum of one-vs-rest sigmoid focal terms, not the softmax
#   focal loss; only the binary form is compared (our ``dice_focal`` with ``lambda_dice=0``).
# * SoftBCEWithLogitsLoss: our binary ``dice_ce`` with ``lambda_dice=0`` on smoothed targets
#   ``(1 - e) y + e (1 - y)``; smp's mean with ``ignore_index`` divides by all pixels (ignored
#   ones included), so the comparison is without ignored pixels.
# * Lovasz: smp's weights are computed in float32 (``.float()`` in ``_lovasz_grad``), so that
#   comparison runs in float32 (tolerance 1e-5); the others are float64.

def _smp_losses() -> ModuleType:
    try:
        return importlib.import_module("segmentation_models_pytorch.losses")
    except Exception:  # timm / torchvision missing or incompatible
        pass
    if "_smp_losses" in sys.modules:
        return sys.modules["_smp_losses"]
    found = importlib.util.find_spec("segmentation_models_pytorch")
    if found is None or found.origin is None:
        pytest.skip("segmentation-models-pytorch is not installed")
    folder = Path(found.origin).parent / "losses"
    spec = importlib.util.spec_from_file_location(
        "_smp_losses", folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_smp_losses"] = module
    spec.loader.exec_module(module)
    return module


smp = pytest.fixture(scope="module")(lambda: _smp_losses())


def _both(ours: Any, theirs: Any, logits: torch.Tensor, target: torch.Tensor,
          smp_target: torch.Tensor | None = None, scale: float = 1.0, tol: float = 1e-10
          ) -> None:
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    va = ours(a, target)
    vb = theirs(b, target if smp_target is None else smp_target) * scale
    torch.testing.assert_close(va, vb, rtol=tol, atol=tol * 1e-2)
    va.backward()
    vb.backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=tol * 10, atol=tol * 1e-2)


def _multiclass(seed: int = 0, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, c, 6, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (3, 6, 7), generator=g)
    target[0, 0, :c] = torch.arange(c)  # every class present in the batch
    return logits, target


def _binary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 6, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 2, (3, 6, 7), generator=g)
    return logits, target


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_dice_multiclass(smp: ModuleType, smooth: float) -> None:
    logits, target = _multiclass()
    _both(lambda x, y: LF.dice_loss(x, y, per_image=False, smooth=2 * smooth),
          smp.DiceLoss("multiclass", smooth=smooth), logits, target)


def test_dice_absent_class_and_ignore_index(smp: ModuleType) -> None:
    logits, target = _multiclass(1)
    target[target == 3] = 2  # class 3 absent
    target[1, :2] = -100
    _both(lambda x, y: LF.dice_loss(x, y, per_image=False, smooth=0.0, classes="present"),
          smp.DiceLoss("multiclass", ignore_index=-100), logits, target, scale=4 / 3)


def test_dice_binary_hard_and_soft(smp: ModuleType) -> None:
    logits, target = _binary()
    _both(lambda x, y: LF.dice_loss(x, y, per_image=False, smooth=0.0),
          smp.DiceLoss("binary"), logits, target)
    soft = torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)
    _both(lambda x, y: LF.dice_semimetric_loss(x, y, per_image=False, smooth=0.0),
          smp.DiceLoss("binary"), logits, soft)


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_jaccard_multiclass_and_binary(smp: ModuleType, smooth: float) -> None:
    logits, target = _multiclass(3)
    _both(lambda x, y: LF.jaccard_loss(x, y, per_image=False, smooth=smooth),
          smp.JaccardLoss("multiclass", smooth=smooth), logits, target)
    logits, target = _binary(3)
    _both(lambda x, y: LF.jaccard_loss(x, y, per_image=False, smooth=smooth),
          smp.JaccardLoss("binary", smooth=smooth), logits, target)


def test_jaccard_soft_is_jaccard_metric(smp: ModuleType) -> None:
    logits, _ = _binary(4)
    soft = torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(5),
                      dtype=torch.float64)
    _both(lambda x, y: LF.jaccard_metric_loss(x, y, per_image=False, smooth=0.0),
          smp.JaccardLoss("binary"), logits, soft)


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.5, 0.5), (0.8, 0.2)])
def test_tversky(smp: ModuleType, alpha: float, beta: float) -> None:
    logits, target = _multiclass(6)
    _both(lambda x, y: LF.tversky_loss(x, y, alpha=alpha, beta=beta, per_image=False,
                                       smooth=0.0),
          smp.TverskyLoss("multiclass", alpha=alpha, beta=beta, gamma=1.0), logits, target)


@pytest.mark.parametrize("gamma", [0.75, 2.0])
def test_focal_tversky_binary(smp: ModuleType, gamma: float) -> None:
    logits, target = _binary(7)
    _both(lambda x, y: LF.focal_tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=1 / gamma,
                                             per_image=False, smooth=0.0),
          smp.TverskyLoss("binary", alpha=0.3, beta=0.7, gamma=gamma), logits, target)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz(smp: ModuleType, per_image: bool) -> None:
    # smp computes the Lovasz (Jaccard) weights with .float(): the comparison is in float32
    logits, target = _multiclass(8)
    _both(lambda x, y: LF.lovasz_softmax_loss(x, y, per_image=per_image),
          smp.LovaszLoss("multiclass", per_image=per_image), logits.float(), target, tol=1e-5)
    logits, target = _binary(8)
    _both(lambda x, y: LF.lovasz_hinge_loss(x, y, per_image=per_image),
          smp.LovaszLoss("binary", per_image=per_image), logits.float(), target,
          smp_target=target.unsqueeze(1).float(), tol=1e-5)


def test_binary_focal(smp: ModuleType) -> None:
    logits, target = _binary(9)
    _both(lambda x, y: LF.dice_focal_loss(x, y, lambda_dice=0.0, gamma=2.0),
          smp.FocalLoss("binary", alpha=None, gamma=2.0), logits, target)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_bce(smp: ModuleType, eps: float) -> None:
    logits, target = _binary(10)
    y = target.unsqueeze(1).double()
    smoothed = (1 - eps) * y + eps * (1 - y)
    _both(lambda x, _: LF.dice_ce_loss(x, smoothed, lambda_dice=0.0),
          smp.SoftBCEWithLogitsLoss(smooth_factor=eps if eps else None), logits, target,
          smp_target=y)
