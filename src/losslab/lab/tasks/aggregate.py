"""Learning from aggregate labels: instance-level accuracy from bag-level supervision.

The setting of Javanmard et al. (arXiv 2401.11081) and of learning from label proportions
(EasyLLP, arXiv 2302.03115): the train set is cut into random disjoint bags of ``bag_size``
instances (:func:`losslab.losses.aggregate.random_bags`, seeded per job seed), and only each
bag's aggregate response is observed -- the label proportions of a bag (``problem =
"classification"``: Fashion-MNIST, as the noisy task finds or fetches it) or the bag mean of a
real target (``problem = "regression"``: a table of :mod:`losslab.lab.data.tabular`). With
``epsilon > 0`` the responses get the paper's Laplace mechanism
(:func:`losslab.losses.aggregate.laplace_bag_targets`, epsilon-label-DP; label proportions are
then projected back onto the simplex, a post-processing that keeps the privacy guarantee). The
noise and the bags depend on the seed only, never on the loss (a paired comparison).

Per job (loss, setting ``{bag_size, epsilon}``, seed): a model (``mlp``/``cnn`` classifier,
or an MLP regressor) is trained on mini-batches of whole bags (``bags_per_step`` bags per
step, bag ids renumbered within the batch) with Adam and cosine decay, and evaluated on the
clean, instance-labelled test split: ``test_error`` (% misclassified) and ``test_aux`` (NLL)
(classification), or the test MSE divided by the train target variance (``test_error``, 1 =
predicting the mean) and the MAE in target units (``test_aux``) (regression).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from losslab.lab.backbones import CLASSIFIERS, build_classifier
from losslab.lab.data.classification import (
    CLASSIFICATION_DATASETS,
    ClassificationData,
    load_classification_data,
    stratified_subset,
)
from losslab.lab.data.tabular import REGRESSION_DATASETS, RegressionData, load_regression_data
from losslab.lab.env import resolve_device
from losslab.lab.noise import stream_seed
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task
from losslab.lab.training import Batch, build_optimizer, cosine_schedule, fit

__all__ = ["AggregateTask", "bag_responses"]

PROBLEMS = ("classification", "regression")


def _project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v[B, C]`` onto the probability simplex."""
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def bag_responses(labels: Tensor, bag_index: Tensor, *, epsilon: float, bound: float,
                  seed: int, proportions: bool) -> Tensor:
    """The observed bag responses: means of ``labels[N, ...]`` per bag (label proportions of
    one-hot labels when ``proportions``), with the Laplace mechanism when ``epsilon > 0``
    (noise drawn from ``stream_seed(seed, 1)``; proportions projected onto the simplex)."""
    from losslab.losses.aggregate import bag_means, laplace_bag_targets

    n_bags = int(bag_index.max()) + 1
    if epsilon <= 0:
        return bag_means(labels, bag_index, n_bags)
    g = torch.Generator().manual_seed(stream_seed(seed, 1))
    noisy = laplace_bag_targets(labels, bag_index, epsilon=epsilon, bound=bound, generator=g)
    return _project_simplex(noisy) if proportions else noisy


class AggregateTask(Task):
    name: ClassVar[str] = "aggregate"
    description: ClassVar[str] = (
        "learning from bag-level responses (label proportions of Fashion-MNIST, or bag means "
        "of a real regression target), with or without Laplace noise; instance-level test error"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("problem", "classification", "classification (label proportions) or regression "
               "(bag means of a real target)", str, choices=PROBLEMS),
        Option("dataset", "fashion_mnist", "classification dataset", str,
               choices=CLASSIFICATION_DATASETS),
        Option("data_dir", "", "classification dataset folder (see the noisy task)",
               affects_results=False),
        Option("table", "housing", "regression table (problem = regression)", str,
               choices=REGRESSION_DATASETS),
        Option("bag_size", [8, 16, 32, 64], "bag sizes, one setting per value", int,
               multiple=True, grid=True),
        Option("epsilon", [0.0, 1.0], "Laplace-mechanism epsilon per setting (0: exact "
               "responses)", float, multiple=True, grid=True),
        Option("bound", 3.0, "regression: responses truncated to [-bound, bound] (standardised "
               "units) before the Laplace noise; classification uses 1", float),
        Option("model", "mlp", "classifier: mlp or cnn", str, choices=CLASSIFIERS),
        Option("train_subset", 6000, "class-stratified train subset (0: all)", int),
        Option("hidden", 64, "regression MLP width", int),
        Option("epochs", 5, "training epochs", int),
        Option("bags_per_step", 8, "bags per optimizer step (at least one)", int),
        Option("min_batch", 256, "more bags per step until a step holds this many instances",
               int),
        Option("lr", 1e-3, "Adam learning rate (cosine decay to 0)", float),
        Option("weight_decay", 0.0, "weight decay", float),
        Option("test_fraction", 0.25, "regression: clean test fraction", float),
        Option("eval_batch", 2000, "instances per forward pass in evaluation", int,
               affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("test_error", "Instance test error (%; regression: MSE / Var y)", False,
                     ".3f", primary=True),
        ReportColumn("test_aux", "Test NLL (regression: MAE, target units)", False, ".3f",
                     plot=False),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("bag_size", "epsilon")
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("bags",)
    line_x: ClassVar[str | None] = "bag_size"
    line_x_label: ClassVar[str] = "bag size"

    def __init__(self) -> None:
        self._cls: dict[tuple[str, str], ClassificationData] = {}
        self._reg: dict[str, RegressionData] = {}

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = [{"bag_size": int(k), "epsilon": float(e)} for e in config["epsilon"]
               for k in config["bag_size"]]
        keys = [(s["bag_size"], s["epsilon"]) for s in out]
        if len(set(keys)) != len(keys):
            raise ValueError("bag_size / epsilon: repeated setting")
        return out

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        eps = float(setting["epsilon"])
        return f"k={setting['bag_size']}" + (f" eps={eps:g}" if eps > 0 else "")

    def title(self, config: Mapping[str, Any]) -> str:
        what = (f"label proportions of {config['dataset']} ({config['model']})"
                if config["problem"] == "classification"
                else f"bag means of {config['table']} (MLP {config['hidden']})")
        return f"Aggregate labels: {what}, {config['epochs']} epochs Adam lr {config['lr']:g}"

    def validate(self, config: Mapping[str, Any]) -> None:
        for k in ("epochs", "bags_per_step", "hidden", "eval_batch"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        for k in config["bag_size"]:
            if k < 1:
                raise ValueError(f"bag_size must be >= 1, got {k}")
        for e in config["epsilon"]:
            if e < 0:
                raise ValueError(f"epsilon must be >= 0 (0: no noise), got {e}")
        if not config["lr"] > 0 or config["bound"] <= 0:
            raise ValueError("lr and bound must be > 0")
        self.settings(config)
        self._data(config)

    def _data(self, config: Mapping[str, Any]) -> ClassificationData | RegressionData:
        if config["problem"] == "classification":
            key = (config["dataset"], config["data_dir"])
            if key not in self._cls:
                self._cls[key] = load_classification_data(config["dataset"],
                                                          config["data_dir"] or None)
            return self._cls[key]
        if config["table"] not in self._reg:
            self._reg[config["table"]] = load_regression_data(config["table"])
        return self._reg[config["table"]]

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.losses.aggregate import random_bags

        device = resolve_device(config["device"])
        data = self._data(config)
        seed = job.seed
        classification = isinstance(data, ClassificationData)
        if isinstance(data, ClassificationData):
            sub = stratified_subset(data.y_train, config["train_subset"], seed=[seed, 0])
            x_tr = data.x_train[torch.as_tensor(sub)]
            y_inst = torch.as_tensor(data.y_train[sub])
            labels = torch.nn.functional.one_hot(y_inst, data.num_classes).double()
            x_te, y_te = data.x_test, data.y_test
            model: nn.Module = build_classifier(config["model"], data.channels, data.image_size,
                                                data.num_classes)
            center, scale = 0.0, 1.0
        else:
            n = len(data.y)
            perm = np.random.default_rng([seed, 0]).permutation(n)
            n_test = max(1, round(config["test_fraction"] * n))
            test, train = perm[:n_test], perm[n_test:]
            mu, sd = data.x[train].mean(0), data.x[train].std(0)
            sd = np.where(sd > 0, sd, 1.0)
            x_tr = torch.as_tensor((data.x[train] - mu) / sd, dtype=torch.float32)
            x_te = torch.as_tensor((data.x[test] - mu) / sd, dtype=torch.float32)
            y = data.y.astype(np.float64)
            center, scale = float(y[train].mean()), float(y[train].std()) or 1.0
            labels = torch.as_tensor((y[train] - center) / scale)
            y_te = torch.as_tensor(y[test])
            h = config["hidden"]
            model = nn.Sequential(nn.Linear(data.num_features, h), nn.ReLU(), nn.Linear(h, h),
                                  nn.ReLU(), nn.Linear(h, 1), nn.Flatten(0))
        model = model.to(device)
        n_train = int(x_tr.shape[0])
        g_bags = torch.Generator().manual_seed(stream_seed(seed, 2))
        bag_index = random_bags(n_train, job.setting["bag_size"], generator=g_bags)
        bound = config["bound"] if not classification else 1.0
        targets = bag_responses(labels, bag_index, epsilon=job.setting["epsilon"], bound=bound,
                                seed=seed, proportions=classification).float()
        n_bags = int(targets.shape[0])
        members = [torch.nonzero(bag_index == b).flatten() for b in range(n_bags)]
        x_tr, targets = x_tr.to(device), targets.to(device)

        loss_fn = job.build_loss(config).to(device)
        opt = build_optimizer("adam", model, loss_fn, lr=config["lr"],
                              weight_decay=config["weight_decay"])
        per_step = max(config["bags_per_step"],
                       math.ceil(config["min_batch"] / job.setting["bag_size"]))
        steps = math.ceil(n_bags / per_step)
        sched = cosine_schedule(opt, config["epochs"] * steps)
        gen = torch.Generator().manual_seed(stream_seed(seed, 3))

        def minibatches(epoch: int) -> Iterator[Batch]:
            order = torch.randperm(n_bags, generator=gen)
            for s in range(steps):
                chosen = order[s * per_step:(s + 1) * per_step]
                idx = torch.cat([members[int(b)] for b in chosen])
                local = torch.cat([torch.full((len(members[int(b)]),), j, dtype=torch.long)
                                   for j, b in enumerate(chosen)]).to(device)
                t = targets[chosen.to(device)]
                yield Batch(x_tr[idx.to(device)], lambda out, li=local, tt=t: (out, li, tt))

        res = fit(model, loss_fn, minibatches, optimizer=opt, scheduler=sched,
                  scheduler_interval="step", epochs=config["epochs"], steps_per_epoch=steps,
                  progress=progress, desc=f"{job.loss} {job.setting_label} s{seed}")

        t_eval = time.perf_counter()
        model.eval()
        with torch.no_grad():
            bs = config["eval_batch"]
            out = torch.cat([model(x_te[i:i + bs].to(device)).cpu()
                             for i in range(0, x_te.shape[0], bs)]).double()
        if classification:
            err = float((out.argmax(1) != y_te).double().mean() * 100)
            aux = float(torch.nn.functional.cross_entropy(out, y_te))
        else:
            pred = out * scale + center
            err = float((pred - y_te).pow(2).mean()) / (scale * scale)  # in train variances
            aux = float((pred - y_te).abs().mean())
        return {
            "test_error": err,
            "test_aux": aux,
            "n_train": n_train,
            "n_bags": n_bags,
            "n_test": int(x_te.shape[0]),
            "train_loss": res.train_loss,
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
        }
