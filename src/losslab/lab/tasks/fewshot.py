"""Few-shot classification, the protocol of SuSana Distancia (Mendez-Ruiz et al., arXiv
2305.09062; core-papers-spec.md §1.6-1.8 of the losslab research notes).

Per job (loss, setting ``{way, shot, train_way}``, seed):

1. Episodic training: ``epochs`` x ``episodes_per_epoch`` episodes of ``train_way`` classes,
   ``shot`` support and ``train_query`` query images per class, sampled from the train split
   with ``numpy.random.default_rng([seed, 0])``. Support and query go through the backbone in
   one forward; the loss is called as ``loss(support_emb, support_labels, query_emb,
   query_labels)`` (``a+b`` specs: the mean of the terms, as the paper). Adam (``lr``,
   ``weight_decay``), StepLR (``lr_step`` epochs, ``lr_gamma``).
2. Validation after every epoch on ``val_episodes`` ``way``-way episodes of the val split
   (a fixed set of episodes per seed, ``default_rng([seed, 1])``, so that epochs are compared
   on the same episodes); the state with the best mean val accuracy is kept in memory and
   restored for the test (``val_episodes = 0``: the last state).
3. Test on ``test_episodes`` ``way``-way ``shot``-shot ``query``-query episodes
   (``default_rng([seed, 2])``: the same episodes for every loss at a given seed, a paired
   comparison), with ProtoNet's nearest-prototype rule (squared euclidean). Reported:
   ``test_acc`` = mean episode accuracy (%) and ``test_ci95`` = ``1.96 * std / sqrt(episodes)``
   (the paper's convention, :func:`losslab.metrics.mean_confidence_interval`).
4. ``icnn``: the ICNN score (:func:`losslab.metrics.icnn_score`, ``k = icnn_k``) of the test
   embeddings of a fixed sample of ``icnn_classes`` test classes x ``icnn_per_class`` images
   (drawn with ``default_rng([seed, 3])``; classes with fewer images are not drawn). Higher
   is better: tight, separated classes.

Evaluation embeds each needed image once (the backbone is in eval mode, so an image's embedding
does not depend on its episode) and then scores all episodes from those embeddings; this is
exactly the per-episode evaluation, only faster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from losslab.lab.backbones import BACKBONES, build_backbone
from losslab.lab.data import FEWSHOT_DATASETS, FewShotDataset, load_fewshot_dataset
from losslab.lab.env import resolve_device
from losslab.lab.episodes import EpisodeBatch, EpisodeSampler, embed, prototype_accuracy
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task
from losslab.lab.training import Batch, build_optimizer, fit

__all__ = ["FewShotTask"]


class FewShotTask(Task):
    name: ClassVar[str] = "fewshot"
    description: ClassVar[str] = (
        "episodic few-shot classification (ProtoNet evaluation), the SuSana Distancia protocol"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("dataset", "glyphs", "dataset name", str, choices=FEWSHOT_DATASETS),
        Option("data_root", "", "dataset folder (or a glyphs .npz); empty: the shipped glyphs"),
        Option("image_size", 0, "image side in pixels (0: 84 for RGB sets, 28 for grey)", int),
        Option("preload", "auto", "load images into memory: auto (splits up to 1 GiB), yes, no",
               str, choices=("auto", "yes", "no"), affects_results=False),
        Option("backbone", "conv4", "embedding network", str, choices=BACKBONES),
        Option("flatten", False, "conv4: flatten the last feature map (original ProtoNet, "
               "1600-d at 84x84) instead of global average pooling (64-d, the paper's code)",
               bool),
        Option("way", [5], "classes per validation/test episode: one value for all shots, or "
               "one per value of --shots", int, multiple=True, grid=True),
        Option("shots", [1, 5], "support images per class; one setting per value", int,
               multiple=True, grid=True),
        Option("train_way", [30, 20], "classes per training episode: one value for all shots, "
               "or one per value of --shots (paper: 30 for 1-shot, 20 for 5-shot)", int,
               multiple=True, grid=True),
        Option("query", 15, "query images per class in validation/test episodes", int),
        Option("train_query", 15, "query images per class in training episodes", int),
        Option("epochs", 200, "training epochs", int),
        Option("episodes_per_epoch", 100, "training episodes per epoch", int),
        Option("lr", 1e-3, "Adam learning rate", float),
        Option("weight_decay", 0.0, "Adam weight decay", float),
        Option("lr_step", 20, "StepLR: epochs between learning-rate decays", int),
        Option("lr_gamma", 0.5, "StepLR: decay factor", float),
        Option("val_episodes", 500, "validation episodes per epoch (0: no validation, keep the "
               "last state)", int),
        Option("test_episodes", 1000, "test episodes", int),
        Option("icnn_classes", 50, "ICNN score: test classes sampled", int),
        Option("icnn_per_class", 20, "ICNN score: images per sampled class", int),
        Option("icnn_k", 4, "ICNN score: neighbours k", int),
        Option("eval_batch", 512, "images per forward pass when embedding for evaluation", int,
               affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("test_acc", "Accuracy (%)", True, ".2f", episode_ci="test_ci95",
                     primary=True),
        ReportColumn("icnn", "ICNN score", True, ".3f"),
    )
    setting_columns: ClassVar[tuple[str, ...]] = ("way", "shot", "train_way")
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("episode",)

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], FewShotDataset] = {}

    # -- grid -------------------------------------------------------------------------------

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        shots = list(config["shots"])
        per_shot = {}
        for key in ("way", "train_way"):
            raw = config[key]
            values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
            if len(values) == 1:
                values = values * len(shots)
            if len(values) != len(shots):
                raise ValueError(
                    f"{key}: give one value or one per shot ({len(shots)}), got {values}"
                )
            per_shot[key] = values
        return [{"way": int(w), "shot": int(s), "train_way": int(t)}
                for s, w, t in zip(shots, per_shot["way"], per_shot["train_way"])]

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return f"{setting['way']}-way {setting['shot']}-shot"

    def title(self, config: Mapping[str, Any]) -> str:
        bb = config["backbone"] + (" (flatten)" if config["flatten"] else "")
        return (
            f"Few-shot on {config['dataset']}: {bb}, {config['epochs']}x"
            f"{config['episodes_per_epoch']} train episodes, {config['test_episodes']} test "
            "episodes"
        )

    def validate(self, config: Mapping[str, Any]) -> None:
        positive = ("query", "train_query", "epochs", "episodes_per_epoch",
                    "test_episodes", "icnn_k", "eval_batch", "lr_step")
        for k in positive:
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        for k in ("val_episodes", "icnn_classes", "icnn_per_class", "weight_decay"):
            if config[k] < 0:
                raise ValueError(f"{k} must be >= 0, got {config[k]}")
        if config["lr"] <= 0 or not 0 < config["lr_gamma"] <= 1:
            raise ValueError("lr must be > 0 and lr_gamma in (0, 1]")
        if any(s < 1 for s in config["shots"]) or any(t < 2 for t in config["train_way"]):
            raise ValueError("shots must be >= 1 and train_way >= 2")
        ways = config["way"] if isinstance(config["way"], (list, tuple)) else [config["way"]]
        if any(w < 2 for w in ways):
            raise ValueError(f"way must be >= 2 (classes per episode), got {list(ways)}")
        if config["flatten"] and config["backbone"] != "conv4":
            raise ValueError("flatten applies to the conv4 backbone only")
        self.settings(config)
        self.dataset(config)  # fail before the first job if the data is missing

    # -- data -------------------------------------------------------------------------------

    def dataset(self, config: Mapping[str, Any]) -> FewShotDataset:
        key = (config["dataset"], config["data_root"], config["image_size"], config["preload"])
        if key not in self._cache:
            self._cache[key] = load_fewshot_dataset(
                config["dataset"], config["data_root"] or None,
                image_size=config["image_size"], preload=config["preload"],
            )
        return self._cache[key]

    # -- one job ----------------------------------------------------------------------------

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.metrics import icnn_score, mean_confidence_interval

        device = resolve_device(config["device"])
        data = self.dataset(config)
        train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
        way, shot, tw = job.setting["way"], job.setting["shot"], job.setting["train_way"]
        seed = job.seed
        tq, q = config["train_query"], config["query"]

        # data: seeded episode streams (0 train, 1 val, 2 test, 3 the ICNN sample)
        train_sampler = EpisodeSampler(train.labels, way=tw, shot=shot, query=tq,
                                       rng=np.random.default_rng([seed, 0]))
        val_eps = None
        if config["val_episodes"] > 0:
            val_eps = EpisodeSampler(val.labels, way=way, shot=shot, query=q,
                                     rng=np.random.default_rng([seed, 1])
                                     ).sample(config["val_episodes"])
        test_eps = EpisodeSampler(test.labels, way=way, shot=shot, query=q,
                                  rng=np.random.default_rng([seed, 2])
                                  ).sample(config["test_episodes"])
        icnn_idx, icnn_lab = self._icnn_sample(test.labels, config, seed)

        # model, loss, optimizer
        model = build_backbone(config["backbone"], data.channels,
                               flatten=config["flatten"]).to(device)
        loss_fn = job.build_loss(config).to(device)
        opt = build_optimizer("adam", model, loss_fn, lr=config["lr"],
                              weight_decay=config["weight_decay"])
        sched = torch.optim.lr_scheduler.StepLR(opt, config["lr_step"], config["lr_gamma"])

        # one episode per step: support and query through the backbone in one forward
        s_lab = torch.arange(tw, device=device).repeat_interleave(shot)
        q_lab = torch.arange(tw, device=device).repeat_interleave(tq)
        n_s = tw * shot

        def episode_args(emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return emb[:n_s], s_lab, emb[n_s:], q_lab

        def episodes(epoch: int) -> Iterator[Batch]:
            for _ in range(config["episodes_per_epoch"]):
                ep = train_sampler.sample(1)
                idx = np.concatenate([ep.support[0], ep.query[0]])
                yield Batch(train.batch(idx).to(device, non_blocking=True), episode_args)

        def val_accuracy(m: torch.nn.Module) -> float:
            assert val_eps is not None
            return float(self._evaluate(m, val, val_eps, device, config).mean())

        res = fit(model, loss_fn, episodes, optimizer=opt, scheduler=sched,
                  epochs=config["epochs"], steps_per_epoch=config["episodes_per_epoch"],
                  evaluate=val_accuracy if val_eps is not None else None, progress=progress,
                  desc=f"{job.loss} {job.setting_label} s{seed}")

        # metrics: test episodes and the ICNN score of the test embeddings
        t_eval = time.perf_counter()
        extra = np.asarray(icnn_idx, dtype=np.int64)
        accs, emb_all, row_of = self._evaluate(model, test, test_eps, device, config,
                                               extra=extra, return_emb=True)
        acc_mean, acc_ci = mean_confidence_interval(accs)
        icnn = float("nan")
        if icnn_idx.size >= 3 and np.unique(icnn_lab).size >= 2:
            e = emb_all[torch.as_tensor(row_of[icnn_idx], device=emb_all.device)]
            icnn = icnn_score(e.double(), torch.as_tensor(icnn_lab, device=e.device),
                              k=config["icnn_k"])
        return {
            "test_acc": acc_mean,
            "test_ci95": acc_ci,
            "icnn": icnn,
            "val_acc": res.best_score if val_eps is not None else None,
            "best_epoch": res.best_epoch,
            "train_loss": res.train_loss,
            "train_terms": res.terms,
            "embedding_dim": int(emb_all.shape[1]),
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
        }

    @staticmethod
    def _icnn_sample(
        labels: np.ndarray, config: Mapping[str, Any], seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        per = config["icnn_per_class"]
        rng = np.random.default_rng([seed, 3])
        classes, counts = np.unique(labels, return_counts=True)
        eligible = classes[counts >= per]
        if per < 1 or config["icnn_classes"] < 1 or eligible.size < 2:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        chosen = rng.choice(eligible, min(config["icnn_classes"], eligible.size), replace=False)
        idx = [rng.choice(np.flatnonzero(labels == c), per, replace=False) for c in chosen]
        return np.concatenate(idx), np.repeat(chosen, per)

    @staticmethod
    def _evaluate(
        model: torch.nn.Module, split, episodes: EpisodeBatch, device: torch.device,
        config: Mapping[str, Any], *, extra: np.ndarray | None = None, return_emb: bool = False,
    ) -> Any:
        parts = [episodes.support.ravel(), episodes.query.ravel()]
        if extra is not None:
            parts.append(extra)
        needed = np.unique(np.concatenate(parts))
        row_of = np.full(len(split), -1, dtype=np.int64)
        row_of[needed] = np.arange(needed.size)
        emb = embed(model, split.batch, needed, device, config["eval_batch"])
        accs = prototype_accuracy(emb, row_of, episodes)
        return (accs, emb, row_of) if return_emb else accs
