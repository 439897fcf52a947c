"""Deep-metric-learning retrieval: train an embedding on the train classes, retrieve images of
unseen test classes.

Per job (loss, setting ``{m, batch_size}``, seed):

1. Training: ``epochs`` x ``batches_per_epoch`` batches of ``batch_size // m`` classes x ``m``
   images of the train split (:class:`losslab.lab.samplers.MPerClassSampler`, seeded with
   ``numpy.random.default_rng([seed, 0])``), the same budget (number of batches, images per
   batch) for every loss. The network is the backbone (Conv-4: 64-d global average pool) with
   an optional linear embedding head (``embedding_dim``; 0: none) and, by default, an L2
   normalisation of its output (``normalize``): cosine losses see unit vectors and euclidean
   losses chordal distances, as in the DML literature. Adam (``lr``, ``weight_decay``); a
   loss's own parameters (proxies of Proxy-Anchor, class weights of ArcFace) get
   ``lr * proxy_lr_mult`` (100, Proxy-Anchor's setting). Proxy losses are built with
   ``num_classes`` = the number of train classes and ``embedding_dim`` = the output dimension
   (train labels are remapped to ``0..C-1``).
2. Loss call by kind: ``embeddings`` losses get ``loss(emb, labels)``; ``episode`` losses
   (``proto_triplet``, ``protonet``) are used as metric losses by splitting each m-per-class
   batch per class into a support half (the first ``m // 2`` images of each class) and a query
   half (the rest): ``loss(support, support_labels, query, query_labels)`` with batch-local
   class indices. ``m >= 2`` is then required.
3. Evaluation on the test split (classes never seen in training): every test image is a query
   against all the others (:func:`losslab.metrics.retrieval.retrieval_metrics`, exact, chunked):
   MAP@R, R-precision and P@1 (%), cosine ranking when ``normalize`` else euclidean.

Datasets: :mod:`losslab.lab.data.retrieval` (glyphs by default; CUB-200, Cars196, Stanford
Online Products from disk).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from losslab.lab.backbones import BACKBONES, EmbeddingNet, build_backbone, embedding_dim
from losslab.lab.data.retrieval import RETRIEVAL_DATASETS, load_retrieval_dataset
from losslab.lab.env import resolve_device
from losslab.lab.episodes import embed
from losslab.lab.samplers import MPerClassSampler
from losslab.lab.tasks.base import (
    Job,
    Option,
    Progress,
    ReportColumn,
    Task,
    build_loss,
    parse_loss_spec,
)
from losslab.lab.training import Batch, build_optimizer, fit

__all__ = ["RetrievalTask"]


class RetrievalTask(Task):
    name: ClassVar[str] = "retrieval"
    description: ClassVar[str] = (
        "metric learning: train on the train classes, retrieve unseen test classes "
        "(MAP@R, R-precision, P@1)"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("dataset", "glyphs", "dataset name", str, choices=RETRIEVAL_DATASETS),
        Option("data_root", "", "dataset folder (or a glyphs .npz); empty: the shipped glyphs"),
        Option("image_size", 0, "image side in pixels (0: 84 for RGB sets, 28 for grey)", int),
        Option("preload", "auto", "load images into memory: auto (up to 1 GiB), yes, no", str,
               choices=("auto", "yes", "no"), affects_results=False),
        Option("backbone", "conv4", "embedding network", str, choices=BACKBONES),
        Option("embedding_dim", 64, "linear embedding head on the backbone (0: no head)", int),
        Option("normalize", True, "L2-normalise the embeddings", bool),
        Option("m", 4, "images per class in a training batch", int, grid=True),
        Option("batch_size", 64, "images per training batch (a multiple of m)", int, grid=True),
        Option("epochs", 10, "training epochs", int),
        Option("batches_per_epoch", 50, "training batches per epoch", int),
        Option("lr", 1e-3, "Adam learning rate", float),
        Option("weight_decay", 0.0, "Adam weight decay", float),
        Option("proxy_lr_mult", 100.0, "learning-rate multiplier of the loss's own parameters "
               "(proxies / class weights)", float),
        Option("eval_batch", 512, "images per forward pass when embedding for evaluation", int,
               affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("map_at_r", "MAP@R (%)", True, ".2f", primary=True),
        ReportColumn("r_precision", "R-precision (%)", True, ".2f"),
        ReportColumn("precision_at_1", "P@1 (%)", True, ".2f"),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("m", "batch_size")
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("embeddings", "episode")

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], dict[str, Any]] = {}

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"m": int(config["m"]), "batch_size": int(config["batch_size"])}]

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return f"{setting['batch_size'] // setting['m']}x{setting['m']} per batch"

    def title(self, config: Mapping[str, Any]) -> str:
        head = f" + {config['embedding_dim']}-d head" if config["embedding_dim"] else ""
        return (f"Retrieval on {config['dataset']} (unseen test classes): {config['backbone']}"
                f"{head}, {config['epochs']}x{config['batches_per_epoch']} batches")

    def validate(self, config: Mapping[str, Any]) -> None:
        for k in ("m", "batch_size", "epochs", "batches_per_epoch", "eval_batch"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        if config["batch_size"] % config["m"]:
            raise ValueError(f"batch_size ({config['batch_size']}) must be a multiple of m "
                             f"({config['m']})")
        if config["embedding_dim"] < 0 or config["lr"] <= 0 or config["proxy_lr_mult"] <= 0:
            raise ValueError("embedding_dim must be >= 0, lr and proxy_lr_mult > 0")
        from losslab.registry import spec

        for s in config["losses"]:  # the kinds are checked by the config (``loss_kinds``)
            kinds = {spec(n).kind for n in parse_loss_spec(s)}
            if kinds == {"episode"} and config["m"] < 2:
                raise ValueError(f"loss {s!r} (episode kind) needs m >= 2 (support and query "
                                 "halves per class)")
        data = self.dataset(config)  # fail before the first job if the data is missing
        n_cls = np.unique(data["train"].labels).size
        if config["batch_size"] // config["m"] > n_cls:
            raise ValueError(f"batch_size // m exceeds the {n_cls} train classes")

    def dataset(self, config: Mapping[str, Any]) -> dict[str, Any]:
        key = (config["dataset"], config["data_root"], config["image_size"], config["preload"])
        if key not in self._cache:
            self._cache[key] = load_retrieval_dataset(
                config["dataset"], config["data_root"] or None, image_size=config["image_size"],
                preload=config["preload"])
        return self._cache[key]

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.metrics.retrieval import retrieval_metrics
        from losslab.registry import spec

        device = resolve_device(config["device"])
        data = self.dataset(config)
        train, test = data["train"], data["test"]
        classes, y_train = np.unique(train.labels, return_inverse=True)
        m, bs = job.setting["m"], job.setting["batch_size"]

        # model: backbone + optional head + optional L2 normalisation
        backbone = build_backbone(config["backbone"], train.channels)
        feat = embedding_dim(backbone, train.channels, train.image_size)
        out_dim = config["embedding_dim"] or feat
        model = EmbeddingNet(backbone, feat, config["embedding_dim"], config["normalize"])
        model = model.to(device)

        # loss (proxy losses sized to the train classes and the output), optimizer
        names = job.loss_names
        hp = {k: dict(v) for k, v in (config.get("loss_hparams") or {}).items()}
        for n in names:
            if "num_classes" in spec(n).example_hparams:
                hp.setdefault(n, {}).setdefault("num_classes", int(classes.size))
                hp[n].setdefault("embedding_dim", int(out_dim))
        loss_fn = build_loss(job.loss, hp).to(device)
        opt = build_optimizer("adam", model, loss_fn, lr=config["lr"],
                              weight_decay=config["weight_decay"],
                              loss_lr_mult=config["proxy_lr_mult"])

        # data: m-per-class batches; episode losses see each class split in support / query
        sampler = MPerClassSampler(y_train, m=m, batch_size=bs,
                                   rng=np.random.default_rng([job.seed, 0]))
        n_cls, half = bs // m, m // 2
        local = torch.arange(n_cls, device=device)
        s_lab, q_lab = local.repeat_interleave(half), local.repeat_interleave(m - half)
        in_class = torch.arange(bs, device=device) % m
        s_rows, q_rows = torch.where(in_class < half)[0], torch.where(in_class >= half)[0]

        def support_query(emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return emb[s_rows], s_lab, emb[q_rows], q_lab

        episodic = spec(names[0]).kind == "episode"
        bpe = config["batches_per_epoch"]

        def batches(epoch: int) -> Iterator[Batch]:
            for idx in sampler.batches(bpe):
                x = train.batch(idx).to(device, non_blocking=True)
                if episodic:
                    yield Batch(x, support_query)
                else:
                    yield Batch.supervised(x, torch.as_tensor(y_train[idx], device=device))

        res = fit(model, loss_fn, batches, optimizer=opt, epochs=config["epochs"],
                  steps_per_epoch=bpe, progress=progress, desc=f"{job.loss} s{job.seed}")

        # metrics: every test image a query against all the others
        t_eval = time.perf_counter()
        emb_test = embed(model, test.batch, np.arange(len(test)), device, config["eval_batch"])
        ret = retrieval_metrics(
            emb_test, torch.as_tensor(test.labels, device=emb_test.device),
            metrics=("map_at_r", "r_precision", "precision_at_1"),
            metric="cosine" if config["normalize"] else "euclidean")
        return {
            "map_at_r": 100.0 * ret["map_at_r"],
            "r_precision": 100.0 * ret["r_precision"],
            "precision_at_1": 100.0 * ret["precision_at_1"],
            "train_loss": res.train_loss,
            "embedding_dim": int(emb_test.shape[1]),
            "test_images": len(test),
            "test_classes": int(np.unique(test.labels).size),
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
        }
