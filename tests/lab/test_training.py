"""The one training loop of the lab: fit() on tiny models."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

import losslab
from losslab.lab.training import Batch, build_optimizer, cosine_schedule, default_step, fit


def blobs(n: int = 60, seed: int = 0):
    """Three well-separated 2-d classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    return centres[y] + torch.randn(n, 2, generator=g), y


def batches_of(x, y, size):
    def batches(epoch):
        for i in range(0, x.shape[0], size):
            yield Batch.supervised(x[i:i + size], y[i:i + size])
    return batches


class RecordingProgress:
    def __init__(self):
        self.totals, self.updates, self.postfixes = [], 0, []

    @contextlib.contextmanager
    def bar(self, total, desc):
        self.totals.append((total, desc))
        outer = self

        class _Bar:
            def update(self, n=1):
                outer.updates += n

            def set_postfix(self, **kw):
                outer.postfixes.append(kw)

        yield _Bar()

    def log(self, message):
        pass


def test_a_tiny_model_trains():
    torch.manual_seed(0)
    x, y = blobs()
    model = nn.Linear(2, 3)
    loss_fn = losslab.create("cross_entropy")
    opt = build_optimizer("sgd", model, loss_fn, lr=0.1)
    progress = RecordingProgress()
    res = fit(model, loss_fn, batches_of(x, y, 20), optimizer=opt, epochs=5, steps_per_epoch=3,
              progress=progress, desc="blobs")
    assert res.steps == 15 and len(res.epoch_losses) == 5
    assert res.epoch_losses[-1] < 0.5 * res.epoch_losses[0]
    assert res.train_loss == res.epoch_losses[-1]
    assert res.best_epoch == 5 and res.best_score is None and res.scores == []
    assert res.terms == {} and res.last_terms == {}
    assert res.seconds >= res.eval_seconds == 0.0
    assert float((model(x).argmax(1) == y).float().mean()) > 0.95
    assert progress.totals == [(15, "blobs")] and progress.updates == 15
    assert [p["epoch"] for p in progress.postfixes] == [1, 2, 3, 4, 5]
    assert "val" not in progress.postfixes[-1]


def test_train_loss_is_the_mean_of_the_last_epoch():
    torch.manual_seed(0)
    x, y = blobs(30)
    model = nn.Linear(2, 3)
    seen: list[float] = []

    class Spy(nn.Module):
        def forward(self, logits, target):
            loss = nn.functional.cross_entropy(logits, target)
            seen.append(float(loss.detach()))
            return loss

    opt = build_optimizer("adam", model, Spy(), lr=0.01)
    res = fit(model, Spy(), batches_of(x, y, 10), optimizer=opt, epochs=2, steps_per_epoch=3)
    assert res.epoch_losses == pytest.approx([sum(seen[:3]) / 3, sum(seen[3:]) / 3])


def test_non_finite_loss_stops_before_the_step():
    torch.manual_seed(0)
    x, y = blobs(20)
    model = nn.Linear(2, 3)
    calls = {"n": 0}

    class Explodes(nn.Module):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = nn.functional.cross_entropy(logits, target)
            return loss * float("nan") if calls["n"] == 4 else loss

    opt = build_optimizer("sgd", model, Explodes(), lr=0.1)
    snapshot = {}

    def batches(epoch):
        for i in range(0, 20, 10):
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
            yield Batch.supervised(x[i:i + 10], y[i:i + 10])

    with pytest.raises(FloatingPointError, match=r"tiny: non-finite loss at epoch 2, step 2"):
        fit(model, Explodes(), batches, optimizer=opt, epochs=3, steps_per_epoch=2, desc="tiny")
    # the bad step changed nothing
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])


@pytest.mark.parametrize("keep_best", [True, False])
def test_best_state_is_restored(keep_best):
    torch.manual_seed(0)
    x, y = blobs(30)
    model = nn.Linear(2, 3)
    loss_fn = losslab.create("cross_entropy")
    opt = build_optimizer("sgd", model, loss_fn, lr=0.5)
    scores = iter([10.0, 30.0, 30.0, 20.0])  # best at epoch 2 (a tie later does not replace it)
    states = []

    def evaluate(m):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    progress = RecordingProgress()
    res = fit(model, loss_fn, batches_of(x, y, 10), optimizer=opt, epochs=4,
              steps_per_epoch=3, evaluate=evaluate, keep_best=keep_best, progress=progress)
    assert res.scores == [10.0, 30.0, 30.0, 20.0]
    want = 1 if keep_best else 3  # the epoch whose state the model holds (0-based)
    assert res.best_epoch == want + 1
    assert res.best_score == (30.0 if keep_best else 20.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[want][k])
    assert not torch.equal(states[1]["weight"], states[3]["weight"])  # it did train on
    assert progress.postfixes[-1]["val"] == "20.0"
    assert progress.postfixes[-1]["best"] == "30.0@2"
    assert res.eval_seconds >= 0 and res.train_seconds <= res.seconds


def test_no_finite_score_keeps_the_last_state():
    torch.manual_seed(0)
    x, y = blobs(30)
    model = nn.Linear(2, 3)
    loss_fn = losslab.create("cross_entropy")
    opt = build_optimizer("sgd", model, loss_fn, lr=0.1)
    res = fit(model, loss_fn, batches_of(x, y, 10), optimizer=opt, epochs=2,
              steps_per_epoch=3, evaluate=lambda m: float("nan"))
    assert res.best_epoch == 2 and res.best_score is None


def test_terms_of_a_combined_loss():
    torch.manual_seed(0)
    x, y = blobs(30)
    model = nn.Linear(2, 3)
    loss_fn = losslab.combine(["cross_entropy", "focal"])
    steps = []
    orig = type(loss_fn).forward

    def spy(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        steps.append(dict(self.last_terms))
        return out

    type(loss_fn).forward = spy
    try:
        opt = build_optimizer("sgd", model, loss_fn, lr=0.1)
        res = fit(model, loss_fn, batches_of(x, y, 10), optimizer=opt, epochs=2,
                  steps_per_epoch=3)
    finally:
        type(loss_fn).forward = orig
    assert len(steps) == 6
    assert res.last_terms == steps[-1]
    for k in ("cross_entropy", "focal"):
        assert res.terms[k] == pytest.approx(sum(s[k] for s in steps[3:]) / 3)


@pytest.mark.parametrize(("interval", "factor"), [("epoch", 0.5 ** 2), ("step", 0.5 ** 6)])
def test_scheduler_interval(interval, factor):
    x, y = blobs(30)
    model = nn.Linear(2, 3)
    loss_fn = losslab.create("cross_entropy")
    opt = build_optimizer("sgd", model, loss_fn, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    fit(model, loss_fn, batches_of(x, y, 10), optimizer=opt, scheduler=sched,
        scheduler_interval=interval, epochs=2, steps_per_epoch=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
    with pytest.raises(ValueError, match="scheduler_interval"):
        fit(model, loss_fn, batches_of(x, y, 10), optimizer=opt, scheduler=sched,
            scheduler_interval="batch", epochs=1, steps_per_epoch=3)


def test_episode_batches_and_call_keywords():
    """Batch.loss_args arranges the output (an episode); loss_kwargs reach the loss."""
    torch.manual_seed(0)
    x, y = blobs(12)
    model = nn.Linear(2, 4)
    seen = []

    class EpisodeLoss(nn.Module):
        def forward(self, support, s_lab, query, q_lab, *, scale):
            seen.append((support.shape[0], query.shape[0], scale))
            return losslab.functional.protonet_loss(support, s_lab, query, q_lab) * scale

    order = torch.argsort(y, stable=True)
    xs, ys = x[order], y[order]  # 4 of each class

    def episode(out):
        return out[0::2], ys[0::2], out[1::2], ys[1::2]

    opt = build_optimizer("adam", model, EpisodeLoss(), lr=0.01)
    res = fit(model, EpisodeLoss(), lambda epoch: [Batch(xs, episode, {"scale": 2.0})],
              optimizer=opt, epochs=2, steps_per_epoch=1)
    assert seen == [(6, 6, 2.0), (6, 6, 2.0)] and math.isfinite(res.train_loss)


def test_build_optimizer_groups_and_cosine_schedule():
    model = nn.Linear(2, 3)
    proxy = losslab.create("proxy_anchor", num_classes=3, embedding_dim=3)
    plain = losslab.create("cross_entropy")
    opt = build_optimizer("adam", model, proxy, lr=0.01, loss_lr_mult=100.0)
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(1.0)]
    assert opt.param_groups[1]["params"] == list(proxy.parameters())
    one = build_optimizer("sgd", model, proxy, lr=0.01, weight_decay=1e-4)
    assert len(one.param_groups) == 1 and len(one.param_groups[0]["params"]) == 3
    assert one.param_groups[0]["momentum"] == 0.9
    assert len(build_optimizer("adam", model, plain, lr=0.1, loss_lr_mult=10.0)
               .param_groups) == 1  # no own parameters: one group
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("lbfgs", model, plain, lr=0.1)
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = cosine_schedule(sgd, 4)
    lrs = []
    for _ in range(6):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(sgd, 0)


def test_custom_step_and_epoch_hook():
    torch.manual_seed(0)
    x, y = blobs()
    model = nn.Linear(2, 3)
    loss_fn = losslab.create("cross_entropy")
    opt = build_optimizer("sgd", model, loss_fn, lr=0.1)
    calls, epochs_seen = [], []

    def step(m, lf, batch, optimizer):
        calls.append(batch.inputs.shape[0])
        return default_step(m, lf, batch, optimizer)

    res = fit(model, loss_fn, batches_of(x, y, 20), optimizer=opt, epochs=3, steps_per_epoch=3,
              step=step, on_epoch_start=epochs_seen.append)
    assert calls == [20] * 9 and epochs_seen == [1, 2, 3] and res.steps == 9
    assert res.epoch_losses[-1] < res.epoch_losses[0]

    def bad_step(m, lf, batch, optimizer):
        return torch.tensor(float("nan"))

    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        fit(model, loss_fn, batches_of(x, y, 20), optimizer=opt, epochs=1, steps_per_epoch=3,
            step=bad_step)
