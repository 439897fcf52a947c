"""Calibration: the CA loss against a loop oracle, and temperature scaling against a scalar
minimiser and by its effect on ECE."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import ca_loss
from losslab.losses.calibration import TemperatureScaling, fit_temperature
from losslab.metrics import adaptive_calibration_error, expected_calibration_error


def test_ca_loss_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (20,), generator=g)
    ref = []
    for row, t in zip(z.tolist(), y.tolist()):
        e = [math.exp(v) for v in row]
        p = [v / sum(e) for v in e]
        top = max(range(5), key=lambda k: p[k])
        c = p[top]
        ref.append(-math.log(c) if top == t else -math.log(1 - c))
    torch.testing.assert_close(ca_loss(z, y, reduction="none"),
                               torch.tensor(ref, dtype=torch.float64))


def test_ca_loss_lowers_confidence_of_a_narrow_miss_where_ce_raises_it() -> None:
    """The paper's motivating case: wrong prediction, true class at ~0.4. Sharpening the
    logits (T < 1) raises CE's wish; CA prefers a softer (lower-confidence) output."""
    z = torch.tensor([[0.2, 0.0, -2.0]], dtype=torch.float64)  # predicts 0; true class 1
    y = torch.tensor([1])
    t = torch.ones((), dtype=torch.float64, requires_grad=True)
    ca_loss(z / t, y).backward()
    assert t.grad is not None and float(t.grad) < 0  # increasing T lowers the CA loss
    # a correct, confident sample wants a sharper output: increasing T raises the loss
    t2 = torch.ones((), dtype=torch.float64, requires_grad=True)
    ca_loss(z / t2, torch.tensor([0])).backward()
    assert t2.grad is not None and float(t2.grad) > 0
    # masked classes: finite everywhere
    zm = torch.tensor([[3.0, -math.inf, -math.inf]], requires_grad=True)
    out = ca_loss(zm, torch.tensor([0]))
    out.backward()
    assert torch.isfinite(out) and zm.grad is not None and torch.isfinite(zm.grad).all()


def overconfident(n: int = 3000, c: int = 5, seed: int = 0):
    """Logits whose true temperature is 2: labels drawn from softmax(z / 2), model emits z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 4
    y = torch.multinomial(torch.softmax(z / 2, 1), 1, generator=g).squeeze(1)
    return z, y


def test_fit_temperature_matches_a_scalar_minimiser_and_lowers_ece() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    z, y = overconfident()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    ref = math.exp(optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded",
                                            options={"xatol": 1e-10}).x)
    t = fit_temperature(z, y)
    assert t == pytest.approx(ref, rel=1e-4)
    assert 1.6 < t < 2.4  # recovers the true temperature 2
    scaler = TemperatureScaling().fit(z, y)
    before = expected_calibration_error(torch.softmax(z, 1), y)
    after = expected_calibration_error(torch.softmax(scaler(z), 1), y)
    assert after < 0.5 * before
    assert adaptive_calibration_error(torch.softmax(scaler(z), 1), y) < \
        adaptive_calibration_error(torch.softmax(z, 1), y)
    # accuracy preserving
    assert torch.equal(scaler(z).argmax(1), z.argmax(1))


def test_fit_temperature_by_ca_and_bad_input() -> None:
    z, y = overconfident(seed=1)
    t = fit_temperature(z, y, loss="ca")
    after = expected_calibration_error(torch.softmax(z / t, 1), y)
    assert t > 1 and after < expected_calibration_error(torch.softmax(z, 1), y)
    with pytest.raises(ValueError, match="loss"):
        fit_temperature(z, y, loss="mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaling(0.0)
    assert "ca" in losslab.available("calibration")
