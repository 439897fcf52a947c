"""betti_matching (arXiv 2211.15272): the loss from its formula over the matching (loops,
float64), hand-made images whose matching is known, where the gradient goes, the sublevel /
both / multi-class forms, and the Betti matching error metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import losslab
from losslab._ops.persistence import betti_match
from losslab.losses.segmentation.betti import betti_matching_loss
from losslab.metrics import betti_errors, betti_matching_error
from tests.losses.segmentation.common import assert_compiled_equals_eager


def disk(n: int, center: tuple[int, int], r: float, hole: float | None = None) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    d = (y - center[0]) ** 2 + (x - center[1]) ** 2
    m = d <= r * r
    if hole is not None:
        m &= d > hole * hole
    return m.astype(np.int64)


def logits_of(p: np.ndarray) -> torch.Tensor:
    q = torch.tensor(p, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.logit(q)[None, None].requires_grad_(True)


def oracle(p: np.ndarray, g: np.ndarray, construction: str = "V") -> float:
    """The paper's loss written out over the matching, one bar at a time."""
    matches, vp, _, vg, _ = betti_match(p, g, construction)  # type: ignore[arg-type]
    total = 0.0
    for m in matches:
        def bar(vals: np.ndarray, birth: np.ndarray, death: np.ndarray, k: int
                ) -> tuple[float, float]:
            b = float(vals[birth[k]])
            d = float(vals[death[k]]) if death[k] >= 0 else 0.0
            return b, d
        for kp, kg in zip(m.matched_p.tolist(), m.matched_g.tolist(), strict=True):
            b0, d0 = bar(vp, m.bars_p.birth, m.bars_p.death, kp)
            b1, d1 = bar(vg, m.bars_g.birth, m.bars_g.death, kg)
            total += 2 * ((b0 - b1) ** 2 + (d0 - d1) ** 2)
        for kp in m.unmatched_p.tolist():
            b, d = bar(vp, m.bars_p.birth, m.bars_p.death, kp)
            total += (b - d) ** 2
        for kg in m.unmatched_g.tolist():
            b, d = bar(vg, m.bars_g.birth, m.bars_g.death, kg)
            total += (b - d) ** 2
    return total


def test_loss_equals_the_formula_over_the_matching() -> None:
    rng = np.random.default_rng(0)
    for trial in range(6):
        g = (rng.random((9, 11)) > 0.55).astype(np.int64)
        p = rng.random((9, 11)) if trial % 2 else np.clip(g + rng.normal(0, 0.3, g.shape),
                                                          0.01, 0.99)
        logits = logits_of(p)
        probs = torch.sigmoid(logits).detach()[0, 0].numpy()
        for construction in ("V", "T"):
            got = betti_matching_loss(logits, torch.tensor(g)[None], construction=construction)
            assert got.item() == pytest.approx(oracle(probs, g.astype(float), construction),
                                               rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("pred", "target", "value"), [
    (disk(16, (5, 5), 3), disk(16, (5, 5), 3) + disk(16, (11, 11), 3), 1.0),  # a lost blob
    (disk(16, (5, 5), 3) + disk(16, (11, 11), 3), disk(16, (5, 5), 3), 1.0),  # a spurious one
    (disk(16, (8, 8), 6), disk(16, (8, 8), 6, 3), 1.0),  # a ring predicted as a disk
    (disk(20, (6, 6), 5, 2), disk(20, (13, 13), 5, 2), 2.0),  # the hole elsewhere
    (disk(16, (8, 8), 6, 3), disk(16, (8, 8), 6, 3), 0.0),
])
def test_binary_cases_known_by_hand(pred: np.ndarray, target: np.ndarray, value: float) -> None:
    loss = betti_matching_loss(logits_of(pred.astype(float)), torch.tensor(target)[None])
    assert loss.item() == pytest.approx(value, abs=1e-9)


def test_right_betti_numbers_in_the_wrong_place_still_cost() -> None:
    # the paper's point: Betti number error 0, Betti matching error 2
    a, b = disk(20, (6, 6), 5, 2), disk(20, (13, 13), 5, 2)
    pa, pb = torch.tensor(a)[None], torch.tensor(b)[None]
    assert betti_errors(pa, pb).sum().item() == 0
    assert betti_matching_error(pa, pb).tolist() == [[0.0, 2.0]]


def test_gradient_reaches_only_birth_and_death_pixels() -> None:
    rng = np.random.default_rng(3)
    g = disk(12, (6, 6), 4, 1)
    p = np.clip(g * 0.7 + rng.random(g.shape) * 0.3, 0.01, 0.99)
    logits = logits_of(p)
    betti_matching_loss(logits, torch.tensor(g)[None]).backward()
    assert logits.grad is not None
    touched = set(np.flatnonzero(logits.grad[0, 0].numpy().ravel() != 0).tolist())
    matches, _, crit_p, _, _ = betti_match(torch.sigmoid(logits).detach()[0, 0].numpy(),
                                           g.astype(float))
    ends: set[int] = set()
    for m in matches:
        ends |= set(crit_p[m.bars_p.birth].tolist())
        ends |= set(crit_p[m.bars_p.death[m.bars_p.death >= 0]].tolist())
    assert touched and touched <= ends


def test_gradient_step_removes_a_spurious_component() -> None:
    g = disk(12, (4, 4), 3)
    p = 0.95 * g + 0.02
    p[9, 9] = 0.6  # a spurious dot
    logits = logits_of(p)
    loss = betti_matching_loss(logits, torch.tensor(g)[None])
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, 0, 9, 9] > 0  # gradient descent lowers the dot's probability
    with torch.no_grad():
        lower = betti_matching_loss(logits - 1.0 * logits.grad, torch.tensor(g)[None])
    assert lower < loss


def test_sublevel_is_superlevel_of_complements_and_both_is_the_sum() -> None:
    rng = np.random.default_rng(4)
    g = (rng.random((8, 8)) > 0.5).astype(np.int64)
    p = rng.uniform(0.05, 0.95, (8, 8))
    sub = betti_matching_loss(logits_of(p), torch.tensor(g)[None], filtration="sublevel")
    assert sub.item() == pytest.approx(oracle(1 - torch.sigmoid(logits_of(p)).detach()[0, 0]
                                              .numpy(), 1 - g.astype(float)), rel=1e-10)
    sup = betti_matching_loss(logits_of(p), torch.tensor(g)[None])
    both = betti_matching_loss(logits_of(p), torch.tensor(g)[None], filtration="both")
    assert both.item() == pytest.approx(sub.item() + sup.item(), rel=1e-12)


def test_softmax_input_is_the_mean_over_foreground_classes() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 7, 8))
    got = betti_matching_loss(logits, target, reduction="none")
    probs = logits.softmax(1).numpy()
    for n in range(2):
        ref = np.mean([oracle(probs[n, k], (target[n] == k).double().numpy())
                       for k in (1, 2)])
        assert got[n].item() == pytest.approx(ref, rel=1e-12)
    with_bg = betti_matching_loss(logits, target, include_background=True, reduction="none")
    ref0 = oracle(probs[0, 0], (target[0] == 0).double().numpy())
    assert with_bg[0].item() == pytest.approx((2 * got[0].item() + ref0) / 3, rel=1e-12)


def test_soft_target_and_identity() -> None:
    g = disk(10, (5, 5), 3, 1)
    assert betti_matching_loss(logits_of(g.astype(float)), torch.tensor(g)[None]).item() \
        == pytest.approx(0.0, abs=1e-9)
    soft = torch.tensor(0.8 * g + 0.1, dtype=torch.float64)[None, None]
    loss = betti_matching_loss(logits_of(soft[0, 0].numpy()), soft)
    assert loss.item() == pytest.approx(0.0, abs=1e-9)  # p == y: every bar matched to itself


def test_ignored_pixels_get_no_gradient() -> None:
    rng = np.random.default_rng(5)
    g = torch.tensor(disk(10, (5, 5), 3))
    g[0, :] = -100
    logits = logits_of(rng.uniform(0.1, 0.9, (10, 10)))
    betti_matching_loss(logits, g[None]).backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0, 0, 0] == 0)


def test_registered_and_rejects_3d() -> None:
    loss = losslab.create("betti_matching")
    assert losslab.spec("betti_matching").arxiv == "2211.15272"
    with pytest.raises(ValueError, match="2-D"):
        loss(torch.randn(1, 1, 3, 3, 3), torch.zeros(1, 3, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="filtration"):
        betti_matching_loss(torch.randn(1, 1, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long),
                            filtration="up")


def test_betti_matching_error_cases() -> None:
    one = disk(16, (5, 5), 3)
    two = one + disk(16, (11, 11), 3)
    ring, full = disk(16, (8, 8), 6, 3), disk(16, (8, 8), 6)
    pred = torch.tensor(np.stack([one, full, ring, np.zeros_like(one)]))
    tgt = torch.tensor(np.stack([two, ring, ring, one]))
    assert betti_matching_error(pred, tgt).tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0],
                                                         [1.0, 0.0]]
    # the features at one place: equal to the Betti number error
    assert torch.equal(betti_matching_error(pred[:3], tgt[:3]), betti_errors(pred[:3], tgt[:3]))
    with pytest.raises(ValueError, match="2-D"):
        betti_matching_error(torch.zeros(1, 2, 3, 3, dtype=torch.long),
                             torch.zeros(1, 2, 3, 3, dtype=torch.long))


def _compile_cases() -> list:
    rng = np.random.default_rng(9)
    g = torch.tensor(np.stack([disk(9, (4, 4), 3, 1), disk(9, (3, 5), 2)]))
    g[1, 0, :4] = -100
    sig = logits_of(np.clip(rng.random((9, 9)), 0.02, 0.98)).detach().repeat(2, 1, 1, 1)
    sig = sig + torch.tensor(rng.normal(0, 0.5, sig.shape))
    torch.manual_seed(1)
    soft = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    t3 = torch.randint(0, 3, (2, 6, 7))
    t3[0, 2, 3] = -100
    return [
        pytest.param(sig, g, {}, id="sigmoid-ignored"),
        pytest.param(soft, t3, {"filtration": "both", "construction": "T",
                                "include_background": True, "reduction": "none"},
                     id="softmax-both-T-background"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("logits", "target", "kw"), _compile_cases())
def test_compiled_equals_eager(logits: torch.Tensor, target: torch.Tensor, kw: dict) -> None:
    """torch.compile(fullgraph=True): the persistence and matching of every map in the
    operator losslab::betti_match_terms (terms padded to the static bound), the values
    gathered in the graph; same value and gradient as the eager loop."""
    eager, g_eager = assert_compiled_equals_eager("betti_matching", logits, target, **kw)
    assert float(g_eager.abs().sum()) > 0 and float(eager.sum()) > 0
