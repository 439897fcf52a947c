"""CoCa: loop oracle from the formula (fp64), open_clip's CoCaLoss restated, the paper's
weights, padding and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import clip_loss, coca_loss
from tests.losses.contrastive_ssl.common import pairs


def captions(n: int = 7, t: int = 5, v: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, v, (n, t), generator=g)
    target[0, 3:] = 0  # padding
    target[4, 1:] = 0
    return logits, target


def test_coca_matches_loop_oracle() -> None:
    a, b = pairs()
    logits, target = captions()
    A = torch.nn.functional.normalize(a.detach(), dim=1).tolist()
    B = torch.nn.functional.normalize(b.detach(), dim=1).tolist()
    n, tau = 7, 0.1
    s = [[sum(p * q for p, q in zip(A[i], B[j])) / tau for j in range(n)] for i in range(n)]
    con = 0.0
    for i in range(n):
        con += -s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n)))
        con += -s[i][i] + math.log(sum(math.exp(s[j][i]) for j in range(n)))
    con /= 2 * n
    L, T = logits.detach().tolist(), target.tolist()
    cap, count = 0.0, 0
    for i in range(n):
        for t in range(len(T[i])):
            if T[i][t] == 0:
                continue
            row = L[i][t]
            cap += -row[T[i][t]] + math.log(sum(math.exp(x) for x in row))
            count += 1
    expected = 1.0 * con + 2.0 * cap / count
    got = coca_loss(a, b, caption_logits=logits, caption_target=target, temperature=tau)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-12)
    m = losslab.create("coca", temperature=tau)
    torch.testing.assert_close(m(a, b, caption_logits=logits, caption_target=target), got)


def test_coca_matches_open_clip_formula_restated() -> None:
    """open_clip 3.3.0 ``CoCaLoss.forward``: ``clip_loss = ClipLoss(image, text, logit_scale)
    * clip_loss_weight``; ``caption_loss = CrossEntropyLoss(ignore_index=pad_id)(logits.permute
    (0, 2, 1), labels) * caption_loss_weight`` (defaults in its training script: caption 2,
    contrastive 1), with the features L2-normalised by the model; the returned pair is summed
    by the trainer."""
    a, b = pairs()
    logits, target = captions()
    fa = torch.nn.functional.normalize(a, dim=-1)
    fb = torch.nn.functional.normalize(b, dim=-1)
    scale = 1 / 0.07
    li = scale * fa @ fb.t()
    labels = torch.arange(7)
    clip = (torch.nn.functional.cross_entropy(li, labels)
            + torch.nn.functional.cross_entropy(li.t(), labels)) / 2
    cap = torch.nn.CrossEntropyLoss(ignore_index=0)(logits.permute(0, 2, 1), target)
    restated = clip * 1.0 + cap * 2.0
    ours = coca_loss(a, b, caption_logits=logits, caption_target=target)
    torch.testing.assert_close(ours, restated)
    for x, y in zip(torch.autograd.grad(ours, (a, b, logits)),
                    torch.autograd.grad(restated, (a, b, logits))):
        torch.testing.assert_close(x, y)


def test_coca_terms_and_weights() -> None:
    a, b = pairs()
    logits, target = captions()
    # without captions, or with caption_weight 0, it is the CLIP loss
    torch.testing.assert_close(coca_loss(a, b), clip_loss(a, b))
    torch.testing.assert_close(
        coca_loss(a, b, caption_logits=logits, caption_target=target, caption_weight=0.0),
        clip_loss(a, b))
    only_cap = coca_loss(a, b, caption_logits=logits, caption_target=target,
                         contrastive_weight=0.0, caption_weight=1.0)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), target.reshape(-1),
                                            ignore_index=0)
    torch.testing.assert_close(only_cap, ref)
    # padding is ignored: changing padded logits changes nothing
    shifted = logits.detach().clone()
    shifted[0, 3:] += 5.0
    torch.testing.assert_close(
        coca_loss(a, b, caption_logits=shifted, caption_target=target).detach(),
        coca_loss(a, b, caption_logits=logits, caption_target=target).detach())
    all_pad = torch.zeros_like(target)
    out = coca_loss(a, b, caption_logits=logits, caption_target=all_pad,
                    contrastive_weight=0.0)
    (g,) = torch.autograd.grad(out, logits)
    assert float(out.detach()) == 0.0 and float(g.abs().sum()) == 0.0


def test_coca_bad_inputs() -> None:
    a, b = pairs()
    logits, target = captions()
    with pytest.raises(ValueError, match="given together"):
        coca_loss(a, b, caption_logits=logits)
    with pytest.raises(ValueError, match=r"caption_logits must have shape \[7, T, V\]"):
        coca_loss(a, b, caption_logits=logits[:3], caption_target=target[:3])
    with pytest.raises(ValueError, match="caption_target must be an integer tensor"):
        coca_loss(a, b, caption_logits=logits, caption_target=target.double())
    with pytest.raises(ValueError, match="token ids in"):
        coca_loss(a, b, caption_logits=logits, caption_target=target + 20)
    with pytest.raises(ValueError, match="caption_weight"):
        losslab.create("coca", caption_weight=-1.0)
    with pytest.raises(ValueError, match="index"):
        losslab.create("coca")(a, b, index=torch.arange(7))
