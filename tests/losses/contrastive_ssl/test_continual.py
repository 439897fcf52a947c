"""Sy-CON: loop oracle from the formula (fp64), the official MoCo form restated
(``moco_pnr_loss_func``), and its properties (first task = InfoNCE; the current and past
negatives enter symmetrically)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import infonce_loss, sy_con_loss
from tests.losses.contrastive_ssl.common import pairs


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(t * t for t in v))
    return [t / norm for t in v]


def dot(x: list[float], y: list[float]) -> float:
    return sum(p * q for p, q in zip(x, y))


def rows(x: torch.Tensor) -> list[list[float]]:
    return [unit(r) for r in x.detach().tolist()]


def nce(anchor, positive, negatives, tau):
    pos = dot(anchor, positive) / tau
    den = math.exp(pos) + sum(math.exp(dot(anchor, m) / tau) for m in negatives)
    return -pos + math.log(den)


def sy_con_oracle(a, b, past=None, pred=None, queue=None, past_queue=None, tau=0.2, tau_p=0.2):
    ra, rb = rows(a), rows(b)
    rf = rows(past) if past is not None else None
    rp = rows(pred) if pred is not None else ra
    out = []
    for i in range(len(ra)):
        if queue is not None:
            negs = rows(queue) + (rows(past_queue) if past_queue is not None else [])
        else:
            negs = [rb[j] for j in range(len(rb)) if j != i]
            if rf is not None:
                negs += [rf[j] for j in range(len(rf)) if j != i]
        v = nce(ra[i], rb[i], negs, tau)
        if rf is not None:
            v += nce(rp[i], rf[i], negs, tau_p)
        out.append(v)
    return out


def data(n=6, d=4, k=5, seed=0):
    a, b = pairs(n=n, d=d, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    past = (a.detach() + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64))
    pred = (a.detach() + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64))
    queue = torch.randn(k, d, generator=g, dtype=torch.float64)
    past_queue = torch.randn(k, d, generator=g, dtype=torch.float64)
    return a, b, past, pred.requires_grad_(True), queue, past_queue


def test_sy_con_matches_loop_oracle() -> None:
    a, b, past, pred, queue, past_queue = data()
    cases = [{}, {"past": past}, {"past": past, "predicted": pred},
             {"past": past, "predicted": pred, "queue": queue, "past_queue": past_queue},
             {"queue": queue}]
    for kw in cases:
        got = sy_con_loss(a, b, temperature=0.3, past_temperature=0.15, reduction="none", **kw)
        want = sy_con_oracle(a, b, kw.get("past"), kw.get("predicted"), kw.get("queue"),
                             kw.get("past_queue"), 0.3, 0.15)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_sy_con_matches_official_moco_form() -> None:
    """``moco_pnr_loss_func(query1, key1, queue1, distill1, query2, key2, queue2, ...)`` of
    ``csm9493/PNR`` restated: queues as ``[D, K]``, inputs already normalised."""
    a, b, past, pred, queue, past_queue = data(seed=3)
    f = torch.nn.functional
    z, k, fz, p = (f.normalize(t, dim=1) for t in (a, b, past, pred))
    q1, q2 = f.normalize(queue, dim=1).t(), f.normalize(past_queue, dim=1).t()
    bank = torch.cat([q1, q2], 1)
    labels = torch.zeros(len(z), dtype=torch.long)
    logits1 = torch.cat([(z * k).sum(1, keepdim=True), z @ bank], 1) / 0.2
    logits2 = torch.cat([(p * fz).sum(1, keepdim=True), p @ bank], 1) / 0.1
    want = f.cross_entropy(logits1, labels) + f.cross_entropy(logits2, labels)
    got = sy_con_loss(a, b, past=past, predicted=pred, queue=queue, past_queue=past_queue,
                      temperature=0.2, past_temperature=0.1)
    torch.testing.assert_close(got, want)
    for x, y in zip(torch.autograd.grad(got, (a, b, pred)),
                    torch.autograd.grad(want, (a, b, pred))):
        torch.testing.assert_close(x, y)


def test_sy_con_first_task_is_infonce_and_negatives_are_symmetric() -> None:
    a, b, past, pred, queue, past_queue = data()
    torch.testing.assert_close(sy_con_loss(a, b, temperature=0.3),
                               infonce_loss(a, b, temperature=0.3))
    one = sy_con_loss(a, b, past=past, queue=queue, past_queue=past_queue)
    swapped = sy_con_loss(a, b, past=past, queue=past_queue, past_queue=queue)
    torch.testing.assert_close(one, swapped)
    m = losslab.create("sy_con", temperature=0.25).double()
    torch.testing.assert_close(m(a, b, past=past, predicted=pred),
                               sy_con_loss(a, b, past=past, predicted=pred, temperature=0.25))
    assert torch.autograd.gradcheck(
        lambda x, y, q: sy_con_loss(x, y, past=past, predicted=q), (a, b, pred))


def test_sy_con_bad_inputs() -> None:
    a, b, past, _, queue, past_queue = data()
    with pytest.raises(ValueError, match="past must have one row per row of a"):
        sy_con_loss(a, b, past=past[:-1])
    with pytest.raises(ValueError, match="give both queue and past_queue"):
        sy_con_loss(a, b, past=past, queue=queue)
    with pytest.raises(ValueError, match="past_queue needs past"):
        sy_con_loss(a, b, queue=queue, past_queue=past_queue)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        sy_con_loss(a[:1], b[:1])
    with pytest.raises(ValueError, match="takes no index"):
        losslab.create("sy_con")(a, b, index=torch.arange(6))
