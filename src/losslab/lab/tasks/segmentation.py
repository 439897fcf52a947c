"""Binary segmentation of real glyph shapes on real textures: do topology and boundary losses
improve topology (Betti errors, clDice) over region losses, on thin structures and under
noisy masks?

Per job (loss, setting, seed):

1. **Data** (:func:`losslab.lab.data.segmentation.make_segmentation_data`): ``n_train``
   training and ``n_test`` test images of ``size x size`` pixels, glyphs of the glyph set's
   train classes for training and of its test classes (unseen shapes) for testing, drawn
   with the job's seed (every loss sees the same images at a seed: a paired comparison).
   Settings: ``regular`` (filled glyphs), ``thin`` (glyph skeletons 1-3 px wide), ``noisy``
   (train masks eroded/dilated by 1-2 px at random; exact test masks).
2. **Model**: a small U-Net (:class:`SmallUNet`: two down-sampling levels, ``width`` channels
   at the top, one output logit per pixel: every loss gets the binary single-logit input).
3. **Training**: ``epochs`` epochs of mini-batches of ``batch_size``, Adam with ``lr`` and
   cosine decay.
4. **Evaluation** on the test images, prediction ``logit > 0``: Dice and IoU of the foreground
   (batch-level, :func:`losslab.metrics.dice_score` / :func:`~losslab.metrics.iou_score`),
   clDice (mean over images, :func:`losslab.metrics.cl_dice_score`), the Betti-0 and Betti-1
   errors (mean over images, :func:`losslab.metrics.betti_errors`: the difference of the
   numbers of components / holes, 8-connected foreground), and the **Betti matching error**
   (Stucki et al., arXiv 2211.15272; :func:`losslab.metrics.betti_matching_error`,
   ``construction="T"``: the same 8-connectivity): the bars of the prediction and of the target
   left unmatched by the induced matching of their union, i.e. components and holes that the
   other mask lacks *at the same place* (``betti_matching0``, ``betti_matching1``, and their
   sum ``betti_matching_error``; means over the first ``betti_matching_images`` test images,
   since the persistence is pure Python, 0.2-0.6 s per 40 px image on 2 shared cores).

The loss ``betti_matching`` (the same paper's training loss) is a ``dense`` loss like the others;
``betti_matching+dice_ce`` is the unweighted mean of it and Dice-CE (:mod:`losslab.combine`).
Its persistence costs the same per training image and step, so its jobs are the slow ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from losslab.lab.data.segmentation import SETTINGS, SegmentationData, make_segmentation_data
from losslab.lab.env import resolve_device
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task
from losslab.lab.training import Batch, build_optimizer, cosine_schedule, fit

__all__ = ["PREVIEW_IMAGES", "SegmentationTask", "SmallUNet", "pack_mask", "preview_figure",
           "unpack_mask"]

#: test images whose predictions every seed-0 job records (for :func:`preview_figure`).
PREVIEW_IMAGES = 4


def pack_mask(mask: Tensor) -> str:
    """A 0/1 mask as a hex string of its packed bits (row-major)."""
    import numpy as np

    return np.packbits(mask.reshape(-1).numpy().astype(np.uint8)).tobytes().hex()


def unpack_mask(text: str, shape: tuple[int, ...]) -> Any:
    """Inverse of :func:`pack_mask` (a bool numpy array of ``shape``)."""
    import numpy as np

    n = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n]
    return bits.reshape(shape).astype(bool)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class SmallUNet(nn.Module):
    """U-Net (Ronneberger et al., arXiv 1505.04597) with two pooling levels: widths
    ``w, 2w, 4w``, skip connections by concatenation, transposed-convolution up-sampling,
    ``out_channels`` logits per pixel. Input sides must be divisible by 4."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2 = _block(in_channels, w), _block(w, 2 * w)
        self.mid = _block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, 2), _block(2 * w, w)
        self.head = nn.Conv2d(w, out_channels, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class SegmentationTask(Task):
    name: ClassVar[str] = "segmentation"
    description: ClassVar[str] = (
        "binary segmentation of glyph shapes on textures (regular / thin / noisy masks); "
        "Dice, IoU, clDice, Betti errors"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("setting", ["regular", "thin", "noisy"], "data settings: regular (filled "
               "glyphs), thin (skeletons 1-3 px wide), noisy (perturbed train masks)", str,
               multiple=True, choices=SETTINGS, grid=True),
        Option("n_train", 512, "training images", int),
        Option("n_test", 200, "test images (glyphs of unseen classes)", int),
        Option("size", 40, "image side in pixels (divisible by 4, >= 28 * scale)", int),
        Option("scale", 1, "glyph up-scaling factor (28 px glyphs)", int),
        Option("width", 16, "U-Net channels at the top level", int),
        Option("epochs", 6, "training epochs", int),
        Option("batch_size", 32, "mini-batch size", int),
        Option("lr", 2e-3, "Adam learning rate (cosine decay to 0)", float),
        Option("weight_decay", 0.0, "weight decay", float),
        Option("betti_matching_images", 30, "test images scored by the Betti matching "
               "error (the first ones; 0: not computed)", int),
        Option("eval_batch", 100, "images per forward pass in evaluation", int,
               affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("dice", "Dice (%)", True, ".2f", primary=True),
        ReportColumn("iou", "IoU (%)", True, ".2f", plot=False),
        ReportColumn("cl_dice", "clDice (%)", True, ".2f"),
        ReportColumn("betti0_error", "Betti-0 error", False, ".3f"),
        ReportColumn("betti1_error", "Betti-1 error", False, ".3f", plot=False),
        ReportColumn("betti_matching_error", "Betti matching error", False, ".3f"),
        ReportColumn("betti_matching0", "Betti matching error, dim 0", False, ".3f",
                     plot=False),
        ReportColumn("betti_matching1", "Betti matching error, dim 1", False, ".3f",
                     plot=False),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("setting",)
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("dense",)

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], SegmentationData] = {}

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        names = list(config["setting"])
        if len(set(names)) != len(names):
            raise ValueError(f"setting: repeated value in {names}")
        return [{"setting": s} for s in names]

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return str(setting["setting"])

    def title(self, config: Mapping[str, Any]) -> str:
        return (f"Glyph segmentation on textures: U-Net w={config['width']}, "
                f"{config['n_train']} train / {config['n_test']} test images of "
                f"{config['size']} px, {config['epochs']} epochs Adam lr {config['lr']:g}")

    def validate(self, config: Mapping[str, Any]) -> None:
        for k in ("n_train", "n_test", "epochs", "batch_size", "width", "scale", "eval_batch"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        if config["betti_matching_images"] < 0:
            raise ValueError(f"betti_matching_images must be >= 0, got "
                             f"{config['betti_matching_images']}")
        if config["size"] % 4 or config["size"] < 28 * config["scale"]:
            raise ValueError(f"size must be divisible by 4 and >= 28 * scale, got "
                             f"{config['size']}")
        if not config["lr"] > 0 or config["weight_decay"] < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        self.settings(config)

    def data(self, config: Mapping[str, Any], setting: str, seed: int) -> SegmentationData:
        key = (setting, seed, config["n_train"], config["n_test"], config["size"],
               config["scale"])
        if key not in self._cache:
            self._cache = {key: make_segmentation_data(
                setting, n_train=config["n_train"], n_test=config["n_test"], seed=seed,
                size=config["size"], scale=config["scale"])}
        return self._cache[key]

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.metrics import (
            betti_errors,
            betti_matching_error,
            cl_dice_score,
            dice_score,
            iou_score,
        )

        device = resolve_device(config["device"])
        data = self.data(config, job.setting["setting"], job.seed)
        x_tr = torch.from_numpy(data.x_train).to(device)
        y_tr = torch.from_numpy(data.y_train).to(device)
        n = int(x_tr.shape[0])
        model = SmallUNet(1, 1, config["width"]).to(device)
        loss_fn = job.build_loss(config).to(device)
        opt = build_optimizer("adam", model, loss_fn, lr=config["lr"],
                              weight_decay=config["weight_decay"])
        bs = config["batch_size"]
        steps = math.ceil(n / bs)
        sched = cosine_schedule(opt, config["epochs"] * steps)
        gen = torch.Generator().manual_seed(job.seed * 1000 + 7)

        def minibatches(epoch: int) -> Iterator[Batch]:
            perm = torch.randperm(n, generator=gen).to(device)
            for b in range(steps):
                idx = perm[b * bs:(b + 1) * bs]
                yield Batch.supervised(x_tr[idx], y_tr[idx])

        res = fit(model, loss_fn, minibatches, optimizer=opt, scheduler=sched,
                  scheduler_interval="step", epochs=config["epochs"], steps_per_epoch=steps,
                  progress=progress, desc=f"{job.loss} {job.setting_label} s{job.seed}")

        t_eval = time.perf_counter()
        model.eval()
        x_te = torch.from_numpy(data.x_test)
        with torch.no_grad():
            logits = torch.cat([model(x_te[i:i + config["eval_batch"]].to(device)).cpu()
                                for i in range(0, x_te.shape[0], config["eval_batch"])])
        pred = (logits[:, 0] > 0).long()
        y_te = torch.from_numpy(data.y_test)
        betti = betti_errors(pred, y_te)
        k_bm = min(config["betti_matching_images"], pred.shape[0])
        bm: dict[str, float | None] = dict.fromkeys(
            ("betti_matching_error", "betti_matching0", "betti_matching1"))  # None: not scored
        if k_bm:
            e = betti_matching_error(pred[:k_bm], y_te[:k_bm], construction="T").mean(0)
            bm = {"betti_matching_error": float(e.sum()), "betti_matching0": float(e[0]),
                  "betti_matching1": float(e[1])}
        preview = ([pack_mask(pred[k]) for k in range(min(PREVIEW_IMAGES, pred.shape[0]))]
                   if job.seed == 0 else None)
        return {
            "dice": 100 * float(dice_score(pred, y_te, num_classes=2,
                                           include_background=False)),
            "iou": 100 * float(iou_score(pred, y_te, num_classes=2, include_background=False)),
            "cl_dice": 100 * float(cl_dice_score(pred, y_te).mean()),
            "betti0_error": float(betti[:, 0].mean()),
            "betti1_error": float(betti[:, 1].mean()),
            **bm,
            "fg_fraction_pred": float(pred.double().mean()),
            "fg_fraction_test": float(y_te.double().mean()),
            "train_loss": res.train_loss,
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
            "preview": preview,  # seed 0: packed predictions of the first test images
        }


def preview_figure(run_dir: str, out: str | None = None) -> str:
    """Draw, per setting, the first test images of seed 0, their targets and each loss's
    prediction (recorded by the jobs as ``preview``) into ``<run_dir>/predictions.png``
    (or ``out``); returns the path. The images are rebuilt from the run's config (the data
    are a function of the seed)."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.lab.results import read_rows

    folder = Path(run_dir)
    cfg = json.loads((folder / "config.json").read_text())
    rows = [r for r in read_rows(folder / "results.jsonl")
            if r["seed"] == 0 and r["metrics"].get("preview")]
    settings = [s for s in cfg["setting"] if any(r["setting"]["setting"] == s for r in rows)]
    losses = [name for name in cfg["losses"] if any(r["loss"] == name for r in rows)]
    k = PREVIEW_IMAGES
    fig, axes = plt.subplots(len(settings) * k, 2 + len(losses),
                             figsize=(1.4 * (2 + len(losses)), 1.4 * k * len(settings)),
                             squeeze=False)
    size = int(cfg["size"])
    for si, setting in enumerate(settings):
        data = make_segmentation_data(setting, n_train=1, n_test=int(cfg["n_test"]), seed=0,
                                      size=size, scale=int(cfg["scale"]))
        by_loss = {r["loss"]: r["metrics"]["preview"] for r in rows
                   if r["setting"]["setting"] == setting}
        for i in range(k):
            row = axes[si * k + i]
            row[0].imshow(data.x_test[i, 0], cmap="gray", vmin=0, vmax=1)
            row[1].imshow(data.y_test[i], cmap="gray")
            for j, name in enumerate(losses):
                if name in by_loss and i < len(by_loss[name]):
                    row[2 + j].imshow(unpack_mask(by_loss[name][i], (size, size)), cmap="gray")
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(setting if i == 0 else "", fontsize=7)
    titles = ["image", "target", *losses]
    for ax, t in zip(axes[0], titles):
        ax.set_title(t, fontsize=6)
    fig.tight_layout()
    path = Path(out) if out else folder / "predictions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":  # python -m losslab.lab.tasks.segmentation RUN_DIR
    import sys

    print(preview_figure(sys.argv[1]))
