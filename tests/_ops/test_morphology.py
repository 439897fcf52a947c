"""Morphology helpers: brute-force loop oracles for the distance maps, the soft erosion /
dilation / skeleton on 0/1 masks, the tubed skeleton's footprint; the maps' custom operators
(the ``torch.compile`` path) pass ``torch.library.opcheck`` and equal the eager functions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from losslab._ops.morphology import (
    boundary_mask,
    distance_to_boundary,
    distance_to_boundary_op,
    signed_distance,
    signed_distance_op,
    soft_dilate,
    soft_erode,
    soft_skeleton,
    tubed_skeleton,
    tubed_skeleton_op,
)

pytest.importorskip("scipy")


def random_masks(seed: int, shape=(3, 7, 8), p: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) < p
    m[2] = False
    m[2, 1:4, 2:6] = True
    return m


def nearest(pix, others) -> float:
    return min(math.dist(pix, o) for o in others) if others else 0.0


def test_distance_maps_match_brute_force() -> None:
    masks = random_masks(0)
    signed, unsigned = signed_distance(masks), distance_to_boundary(masks)
    for n in range(masks.shape[0]):
        m = masks[n].tolist()
        pix = list(itertools.product(range(len(m)), range(len(m[0]))))
        inside = [q for q in pix if m[q[0]][q[1]]]
        outside = [q for q in pix if not m[q[0]][q[1]]]
        for q in pix:
            if m[q[0]][q[1]]:
                want_s = -(nearest(q, outside) - 1)
                want_u = nearest(q, outside)
            else:
                want_s = want_u = nearest(q, inside)
            assert float(signed[n][q]) == pytest.approx(want_s, abs=1e-12)
            assert float(unsigned[n][q]) == pytest.approx(want_u, abs=1e-12)


def test_maps_without_boundary_are_zero() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1] = True
    assert float(signed_distance(masks).abs().sum()) == 0.0
    assert float(distance_to_boundary(masks).abs().sum()) == 0.0


def loop_erode_dilate(img: list[list[float]]):
    h, w = len(img), len(img[0])
    ero = [[0.0] * w for _ in range(h)]
    dil = [[0.0] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            cross = [img[a][b] for a, b in ((i, j), (i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                     if 0 <= a < h and 0 <= b < w]
            box = [img[a][b] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                   if 0 <= a < h and 0 <= b < w]
            ero[i][j], dil[i][j] = min(cross), max(box)
    return ero, dil


def loop_soft_skeleton(img: list[list[float]], iterations: int) -> list[list[float]]:
    """clDice Algorithm 1 with explicit neighbourhood loops."""
    def open_(x):
        e, _ = loop_erode_dilate(x)
        return loop_erode_dilate(e)[1]

    def relu(v):
        return max(v, 0.0)

    o = open_(img)
    skel = [[relu(a - b) for a, b in zip(r1, r2)] for r1, r2 in zip(img, o)]
    for _ in range(iterations):
        img = loop_erode_dilate(img)[0]
        o = open_(img)
        delta = [[relu(a - b) for a, b in zip(r1, r2)] for r1, r2 in zip(img, o)]
        skel = [[s + relu(d - s * d) for s, d in zip(rs, rd)] for rs, rd in zip(skel, delta)]
    return skel


def test_soft_morphology_matches_neighbourhood_loops() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64)
    for n in range(2):
        img = x[n, 0].tolist()
        ero, dil = loop_erode_dilate(img)
        torch.testing.assert_close(soft_erode(x)[n, 0], torch.tensor(ero, dtype=x.dtype))
        torch.testing.assert_close(soft_dilate(x)[n, 0], torch.tensor(dil, dtype=x.dtype))
        want = torch.tensor(loop_soft_skeleton(img, 3), dtype=x.dtype)
        torch.testing.assert_close(soft_skeleton(x, 3)[n, 0], want)


def test_soft_skeleton_of_a_mask_is_a_subset_of_it_and_3d_works() -> None:
    m = random_masks(2).double().unsqueeze(1)
    s = soft_skeleton(m, 5)
    assert bool(((s == 0) | (s == 1)).all()) and bool((s <= m).all())
    vol = (torch.rand(1, 1, 5, 6, 7, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    assert bool((soft_skeleton(vol, 2) <= vol).all())
    with pytest.raises(ValueError, match="soft morphology"):
        soft_erode(torch.rand(2, 1, 5))


def test_tubed_skeleton_is_the_l1_ball_of_radius_2_around_the_skeleton() -> None:
    pytest.importorskip("skimage")
    from skimage.morphology import skeletonize

    m = torch.zeros(1, 12, 14, dtype=torch.bool)
    m[0, 3:8, 2:12] = True
    bare = torch.from_numpy(skeletonize(m[0].numpy()))
    assert tubed_skeleton(m, tube=False)[0].equal(bare)
    tube = tubed_skeleton(m)[0]
    pts = bare.nonzero().tolist()
    for i, j in itertools.product(range(12), range(14)):
        near = any(abs(i - a) + abs(j - b) <= 2 for a, b in pts)
        assert bool(tube[i, j]) == near


def test_boundary_mask_marks_pixels_with_an_outside_4_neighbour() -> None:
    masks = random_masks(3)
    got = boundary_mask(masks)
    h, w = masks.shape[1:]
    for n, i, j in itertools.product(range(masks.shape[0]), range(h), range(w)):
        m = masks[n]
        nb = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
        out = any(not (0 <= a < h and 0 <= b < w) or not bool(m[a, b]) for a, b in nb)
        assert bool(got[n, i, j]) == (bool(m[i, j]) and out)


def op_masks() -> list[torch.Tensor]:
    """2-D masks with an empty and a full image, a 3-D batch, an empty batch."""
    m = random_masks(4)
    m[0] = False
    m[1] = True
    vol = torch.rand(2, 4, 5, 6, generator=torch.Generator().manual_seed(5)) < 0.5
    return [m, random_masks(6, (3, 9, 10)), vol, torch.zeros(0, 5, 6, dtype=torch.bool)]


@pytest.mark.parametrize("which", ["distance_to_boundary", "signed_distance"])
def test_distance_operators_pass_opcheck_and_equal_the_eager_maps(which: str) -> None:
    op = {"distance_to_boundary": distance_to_boundary_op,
          "signed_distance": signed_distance_op}[which]
    eager = {"distance_to_boundary": distance_to_boundary,
             "signed_distance": signed_distance}[which]
    for m in op_masks():
        torch.library.opcheck(op, (m,))
        out = op(m)
        assert out.dtype == torch.float64 and out.shape == m.shape
        assert torch.equal(out, eager(m))
        assert torch.equal(eager(m, dtype=torch.float32), out.float())


def test_tubed_skeleton_operator_passes_opcheck_and_equals_the_eager_map() -> None:
    pytest.importorskip("skimage")
    for m in op_masks():
        for tube in (True, False):
            torch.library.opcheck(tubed_skeleton_op, (m, tube))
            out = tubed_skeleton_op(m, tube)
            assert out.dtype == torch.bool and out.shape == m.shape
            assert torch.equal(out, tubed_skeleton(m, tube=tube))


@pytest.mark.slow
def test_maps_compile_to_the_operators_without_graph_breaks() -> None:
    pytest.importorskip("skimage")
    m = random_masks(7)

    def maps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (distance_to_boundary(x, dtype=torch.float32), signed_distance(x),
                tubed_skeleton(x))

    torch._dynamo.reset()
    got = torch.compile(maps, fullgraph=True)(m)
    for a, b in zip(got, maps(m), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
