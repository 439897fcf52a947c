"""Segmentation metrics: loop oracles, torchmetrics (Dice/IoU) and monai (HD95) peers, Betti
numbers of shapes with known topology."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losslab.metrics.segmentation import (
    betti_errors,
    betti_numbers,
    boundary_f_score,
    cl_dice_score,
    dice_score,
    hausdorff_95,
    iou_score,
)

pytest.importorskip("scipy")
pytest.importorskip("skimage")


def maps(seed: int = 0, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(0, c, (2, 6, 7), generator=g)
    t = torch.randint(0, c - 1, (2, 6, 7), generator=g)  # class c-1 only predicted
    t[0, 0] = -100
    return p, t


def counts(p, t, c):
    tp, fp, fn = [0] * c, [0] * c, [0] * c
    for a, b in zip(p.reshape(-1).tolist(), t.reshape(-1).tolist()):
        if b == -100:
            continue
        if a == b:
            tp[a] += 1
        else:
            fp[a] += 1
            fn[b] += 1
    return tp, fp, fn


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_and_iou_match_loop_oracle(include_background: bool) -> None:
    p, t = maps()
    tp, fp, fn = counts(p, t, 4)
    first = 0 if include_background else 1
    ks = range(first, 4)
    dice = [2 * tp[k] / (2 * tp[k] + fp[k] + fn[k]) for k in ks if 2 * tp[k] + fp[k] + fn[k]]
    iou = [tp[k] / (tp[k] + fp[k] + fn[k]) for k in ks if tp[k] + fp[k] + fn[k]]
    kw = {"num_classes": 4, "include_background": include_background}
    assert float(dice_score(p, t, **kw)) == pytest.approx(sum(dice) / len(dice), rel=1e-12)
    assert float(iou_score(p, t, **kw)) == pytest.approx(sum(iou) / len(iou), rel=1e-12)
    s_tp = sum(tp[k] for k in ks)
    s_all = sum(tp[k] + fp[k] + fn[k] for k in ks)
    assert float(iou_score(p, t, average="micro", **kw)) == pytest.approx(s_tp / s_all)
    per = iou_score(p, t, average="none", **kw)
    assert per.shape == (4 - first,)


def test_dice_and_iou_match_torchmetrics() -> None:
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    p, t = maps(1, c=3)
    t[1, 0, 0] = 2  # every class present
    for avg in ("macro", "micro"):
        ref = tmf.multiclass_jaccard_index(p, t, 3, average=avg, ignore_index=-100)
        assert float(iou_score(p, t, num_classes=3, average=avg)) == pytest.approx(float(ref),
                                                                                rel=1e-6)
    ref = tmf.multiclass_f1_score(p, t, 3, average="macro", ignore_index=-100)
    assert float(dice_score(p, t, num_classes=3)) == pytest.approx(float(ref), rel=1e-6)


def test_dice_iou_bad_input() -> None:
    p, t = maps()
    with pytest.raises(ValueError, match="num_classes"):
        dice_score(p, t, num_classes=0)
    with pytest.raises(ValueError, match="pred"):
        dice_score(p, t, num_classes=2)
    with pytest.raises(ValueError, match="average"):
        iou_score(p, t, num_classes=4, average="weighted")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        iou_score(p[:, :3], t, num_classes=4)
    with pytest.raises(ValueError, match="integer"):
        iou_score(p.double(), t, num_classes=4)


def two_shapes():
    p = torch.zeros(2, 14, 15, dtype=torch.long)
    t = torch.zeros(2, 14, 15, dtype=torch.long)
    p[0, 3:9, 2:12] = 1
    t[0, 4:10, 3:13] = 1
    p[1, 5:13, 5:9] = 1
    t[1, 2:12, 6:10] = 1
    t[1, 6:8, 7:9] = 0  # a hole
    return p, t


def boundary_pixels(m):
    h, w = m.shape
    out = []
    for i, j in itertools.product(range(h), range(w)):
        if not m[i, j]:
            continue
        nb = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
        if any(not (0 <= a < h and 0 <= b < w) or not m[a, b] for a, b in nb):
            out.append((i, j))
    return out


def directed(a, b):
    return [min(math.dist(x, y) for y in b) for x in a]


def test_hausdorff_95_and_boundary_f_match_brute_force() -> None:
    p, t = two_shapes()
    hd, bf = hausdorff_95(p, t), boundary_f_score(p, t, tolerance=1.5)
    for n in range(2):
        bp, bt = boundary_pixels(p[n] > 0), boundary_pixels(t[n] > 0)
        d_pt, d_tp = directed(bp, bt), directed(bt, bp)

        def pct(v):  # numpy's default linear interpolation, written out
            s = sorted(v)
            r = 0.95 * (len(s) - 1)
            lo = math.floor(r)
            return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (r - lo)

        assert float(hd[n]) == pytest.approx(max(pct(d_pt), pct(d_tp)), rel=1e-12)
        prec = sum(d <= 1.5 for d in d_pt) / len(d_pt)
        rec = sum(d <= 1.5 for d in d_tp) / len(d_tp)
        assert float(bf[n]) == pytest.approx(2 * prec * rec / (prec + rec), rel=1e-12)


def test_hausdorff_95_matches_monai_and_edge_cases() -> None:
    mm = pytest.importorskip("monai.metrics")
    p, t = two_shapes()

    def oh(x):
        return torch.nn.functional.one_hot(x, 2).permute(0, 3, 1, 2)

    ref = mm.compute_hausdorff_distance(oh(p), oh(t), percentile=95)[:, 0].double()
    torch.testing.assert_close(hausdorff_95(p, t), ref)
    empty = torch.zeros_like(p)
    assert hausdorff_95(empty, empty).tolist() == [0.0, 0.0]
    assert all(math.isnan(v) for v in hausdorff_95(p, empty).tolist())
    assert boundary_f_score(empty, empty).tolist() == [1.0, 1.0]
    assert boundary_f_score(p, empty).tolist() == [0.0, 0.0]
    assert boundary_f_score(t, t).tolist() == [1.0, 1.0]


def test_cl_dice_score_matches_skeleton_loop_and_is_one_on_identical_masks() -> None:
    from skimage.morphology import skeletonize

    p, t = two_shapes()
    got = cl_dice_score(p, t)
    for n in range(2):
        pm, tm = (p[n] > 0).numpy(), (t[n] > 0).numpy()
        sp, st = skeletonize(pm), skeletonize(tm)
        tprec = (sp & tm).sum() / sp.sum()
        tsens = (st & pm).sum() / st.sum()
        assert float(got[n]) == pytest.approx(2 * tprec * tsens / (tprec + tsens), rel=1e-12)
    assert cl_dice_score(t, t).tolist() == [1.0, 1.0]


def test_betti_numbers_of_known_shapes() -> None:
    m = torch.zeros(4, 9, 9, dtype=torch.bool)
    m[0, 2:7, 2:7] = True
    m[0, 4, 4] = False  # a ring: one component, one hole
    m[1, 1:3, 1:3] = True
    m[1, 5:8, 5:8] = True  # two blobs, no hole
    m[2, 0, 0] = m[2, 1, 1] = m[2, 2, 2] = True  # a diagonal line: 8-connected, one component
    m[3, :, 4] = True  # a line across the image cuts the background, but encloses nothing
    assert betti_numbers(m).tolist() == [[1, 1], [2, 0], [1, 0], [1, 0]]
    vol = torch.zeros(2, 7, 7, 7, dtype=torch.bool)
    vol[0, 1:6, 1:6, 1:6] = True
    vol[0, 3, 3, 3] = False  # a hollow cube: one cavity
    vol[1, 2:5, 1:6, 1:6] = True
    vol[1, 2:5, 3, 3] = False  # a block pierced by a tunnel: one handle
    assert betti_numbers(vol).tolist() == [[1, 0, 1], [1, 1, 0]]


def test_betti_errors() -> None:
    p, t = two_shapes()
    assert betti_errors(p, t).tolist() == [[0.0, 0.0], [0.0, 1.0]]
    broken = t.clone()
    broken[1, 5, :] = 0  # split image 1's target into two components
    assert betti_errors(broken, t)[1, 0].item() == 1.0
