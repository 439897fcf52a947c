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


# ---- sparse autoencoders: reconstruction, aux-k, aux-Zipf ------------------------------------
# Oracles: the normalised MSE and the aux-k reconstruction written with Python loops (top-k of
# the dead latents' pre-activations per row, decoded, normalised MSE against the residual), as
# the official openai/sparse_autoencoder code computes them.

from losslab.losses.quantization import (  # noqa: E402
    LatentUsage,
    aux_zipf_weights,
    sae_aux_loss,
    sae_reconstruction_loss,
)


def _sae(seed: int = 0, n: int = 5, f: int = 8, d: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, f, generator=g, dtype=torch.float64),
            torch.randn(f, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def test_sae_reconstruction_is_the_normalised_mse() -> None:
    _, _, x = _sae()
    x_hat = x + 0.3 * torch.randn(5, 3, dtype=torch.float64)
    n, d = x.shape
    mean = [sum(x[i, j].item() for i in range(n)) / n for j in range(d)]
    mse = sum((x_hat[i, j].item() - x[i, j].item()) ** 2 for i in range(n) for j in range(d))
    var = sum((x[i, j].item() - mean[j]) ** 2 for i in range(n) for j in range(d))
    assert sae_reconstruction_loss(x_hat, x).item() == pytest.approx(mse / var, rel=1e-12)
    # predicting the batch mean scores 1; a fixed scale multiplies the MSE
    assert sae_reconstruction_loss(x.mean(0).expand_as(x), x).item() == pytest.approx(1.0)
    assert sae_reconstruction_loss(x_hat, x, scale=2.0).item() == pytest.approx(
        2 * mse / (n * d), rel=1e-12)
    const = torch.ones(4, 3, dtype=torch.float64)  # no variance: the plain MSE
    assert sae_reconstruction_loss(const * 1.5, const).item() == pytest.approx(0.25)
    assert losslab.spec("sae_reconstruction").family == "quantization-compression"


def test_aux_k_oracle_and_gradient_reaches_only_the_dead_latents() -> None:
    z, w, e = _sae(1)
    dead = torch.tensor([True, False, True, True, False, False, True, False])
    k = 2
    e_hat = []
    for row in z.tolist():
        cand = sorted((v, j) for j, v in enumerate(row) if dead[j])[::-1][:k]
        vec = [0.0] * 3
        for v, j in cand:
            for c in range(3):
                vec[c] += max(v, 0.0) * w[j, c].item()
        e_hat.append(vec)
    e_list = e.tolist()
    mean = [sum(r[c] for r in e_list) / 5 for c in range(3)]
    num = sum((e_hat[i][c] - e_list[i][c]) ** 2 for i in range(5) for c in range(3))
    den = sum((e_list[i][c] - mean[c]) ** 2 for i in range(5) for c in range(3))
    zz = z.clone().requires_grad_(True)
    out = sae_aux_loss(zz, w, e, dead=dead, k_aux=k)
    assert out.item() == pytest.approx(num / den, rel=1e-12)
    out.backward()
    assert zz.grad is not None and torch.all(zz.grad[:, ~dead] == 0)


def test_aux_k_is_zero_without_dead_latents_and_when_they_explain_the_residual() -> None:
    z, w, e = _sae(2)
    zz = z.clone().requires_grad_(True)
    out = sae_aux_loss(zz, w, e, dead=torch.zeros(8, dtype=torch.bool))
    out.backward()
    assert out.item() == 0 and zz.grad is not None and torch.all(zz.grad == 0)
    dead = torch.zeros(8, dtype=torch.bool)
    dead[:2] = True
    pos = z.abs()  # ReLU passes them; two dead latents, k_aux = 2: both always selected
    exact = pos[:, :2] @ w[:2]
    assert sae_aux_loss(pos, w, exact, dead=dead, k_aux=2).item() == pytest.approx(0, abs=1e-24)


def test_aux_zipf_weights_and_its_aux_k_special_case() -> None:
    freq = torch.tensor([0.4, 0.2, 0.0, 0.1, 0.0], dtype=torch.float64)
    total = float(freq.sum())
    harmonic = sum(1 / r for r in range(1, 6))
    ranks = {0: 1, 1: 2, 3: 3, 2: 4, 4: 5}  # ties at 0: lower index first
    ref = [min(max(1 - float(freq[j]) / (total / ranks[j] / harmonic), 0.0), 1.0)
           for j in range(5)]
    torch.testing.assert_close(aux_zipf_weights(freq), torch.tensor(ref, dtype=torch.float64))
    assert torch.all(aux_zipf_weights(torch.zeros(4, dtype=torch.float64)) == 1)
    # live latents at or above their Zipf share: only the dead ones are candidates -> aux-k
    f = 6
    live = torch.tensor([1 / r for r in range(1, 5)], dtype=torch.float64) * 10
    freq = torch.cat([live, torch.zeros(2, dtype=torch.float64)])
    w8 = aux_zipf_weights(freq)
    assert torch.all(w8[:4] == 0) and torch.all(w8[4:] == 1)
    z, dec, e = _sae(3, f=f)
    torch.testing.assert_close(sae_aux_loss(z, dec, e, frequency=freq, k_aux=3),
                               sae_aux_loss(z, dec, e, dead=freq == 0, k_aux=3))
    with pytest.raises(ValueError, match="exactly one"):
        sae_aux_loss(z, dec, e)


def test_latent_usage_tracks_dead_latents_and_frequency() -> None:
    usage = LatentUsage(3, dead_after=4, momentum=0.5)
    acts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])  # latent 0 fires once
    usage.update(acts)
    assert usage.tokens_since_fired.tolist() == [0, 2, 2]
    usage.update(torch.zeros(3, 3))
    assert usage.tokens_since_fired.tolist() == [3, 5, 5]
    assert usage.dead.tolist() == [False, True, True]
    torch.testing.assert_close(usage.frequency, torch.tensor([0.125, 0.0, 0.0]))
    state = usage.state_dict()
    assert set(state) == {"tokens_since_fired", "frequency"}
