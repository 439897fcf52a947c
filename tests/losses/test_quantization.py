"""VQ commitment loss and the VectorQuantizer layer: the vqtorch computation restated, which
side each term sends its gradient to, the synchronized estimator's gradient, the affine
codebook, and that the synchronized update moves unused-by-the-loss codes with the task."""

from __future__ import annotations

import pytest
import torch

import losslab
from losslab.losses.quantization import (
    VectorQuantizer,
    synchronized_straight_through,
    vq_commitment_loss,
)


def _pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    return z, q


def test_oracle_value_is_the_mse() -> None:
    z, q = _pair()
    want = sum(sum((z[i, d].item() - q[i, d].item()) ** 2 for d in range(4)) / 4
               for i in range(6)) / 6
    for beta in (0.0, 0.95, 1.0):
        assert vq_commitment_loss(z, q, beta=beta).item() == pytest.approx(want, rel=1e-12)


def test_gradients_go_to_the_right_side() -> None:
    z, q = _pair(1)
    z.requires_grad_()
    q.requires_grad_()
    vq_commitment_loss(z, q, beta=0.95).backward()
    mse_grad = 2.0 * (z - q).detach() / (6 * 4)
    torch.testing.assert_close(z.grad, 0.05 * mse_grad)
    torch.testing.assert_close(q.grad, -0.95 * mse_grad)


def test_vqvae_convention() -> None:
    """||sg(z) - q||^2 + 0.25 ||z - sg(q)||^2 = 1.25 * loss(beta=0.8), gradients included."""
    z, q = _pair(2)
    z.requires_grad_()
    q.requires_grad_()
    ours = 1.25 * vq_commitment_loss(z, q, beta=0.8)
    gz, gq = torch.autograd.grad(ours, (z, q))
    vqvae = ((z.detach() - q) ** 2).mean(1).mean() + 0.25 * ((z - q.detach()) ** 2).mean(1).mean()
    hz, hq = torch.autograd.grad(vqvae, (z, q))
    torch.testing.assert_close(gz, hz)
    torch.testing.assert_close(gq, hq)


def test_synchronized_straight_through() -> None:
    z, q = _pair(3)
    z.requires_grad_()
    q.requires_grad_()
    out = synchronized_straight_through(z, q, nu=0.5)
    torch.testing.assert_close(out, q.detach())
    up = torch.randn_like(out)
    gz, gq = torch.autograd.grad(out, (z, q), up)
    torch.testing.assert_close(gz, up)
    torch.testing.assert_close(gq, 0.5 * up)
    plain = synchronized_straight_through(z, q, nu=0.0)
    gz0, gq0 = torch.autograd.grad(plain, (z, q), up, allow_unused=True)
    torch.testing.assert_close(gz0, up)
    assert gq0 is None or gq0.abs().sum() == 0


def test_quantizer_selects_nearest_codes_and_affine_map() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 8, affine_lr=10.0).double()
    with torch.no_grad():
        vq.affine_scale.fill_(0.01)
        vq.affine_bias.fill_(-0.02)
    book = (1.0 + 10.0 * 0.01) * vq.codebook - 0.2
    torch.testing.assert_close(vq.effective_codebook(), book)
    z = torch.randn(3, 5, 4, dtype=torch.float64)
    z_hat, loss, codes = vq(z)
    assert codes.shape == (3, 5)
    nearest = torch.cdist(z.reshape(-1, 4), book).argmin(1).reshape(3, 5)
    assert torch.equal(codes, nearest)
    torch.testing.assert_close(z_hat, book.detach()[codes])
    torch.testing.assert_close(loss, ((z.reshape(-1, 4) - book[codes.reshape(-1)]) ** 2)
                               .mean(1).mean())


def test_sync_update_gives_the_codebook_the_task_gradient() -> None:
    torch.manual_seed(1)
    z = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    for nu, expect in ((0.0, False), (1.0, True)):
        vq = VectorQuantizer(4, 6, sync_nu=nu).double()
        z_hat, _, codes = vq(z)
        task = (z_hat ** 2).sum()  # the task loss only, not the VQ loss
        task.backward()
        used = torch.zeros(6, dtype=torch.bool)
        used[codes] = True
        g = vq.codebook.grad
        moved = g is not None and bool(g[used].abs().sum() > 0)
        assert moved is expect
        if g is not None:
            assert g[~used].abs().sum() == 0


def test_registered_and_bad_input() -> None:
    z, q = _pair()
    torch.testing.assert_close(losslab.create("vq_commitment", beta=0.5)(z, q),
                               vq_commitment_loss(z, q, beta=0.5))
    with pytest.raises(ValueError, match="beta"):
        vq_commitment_loss(z, q, beta=1.5)
    with pytest.raises(ValueError, match="feature_size last"):
        VectorQuantizer(4, 8)(torch.randn(3, 5))
