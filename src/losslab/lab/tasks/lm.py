"""Character-level language modelling on real text: does a loss change what a small causal
transformer memorises, at what cost in perplexity?

Per job (loss, seed), every loss with the same budget:

1. **Data** (:mod:`losslab.lab.data.text`): the corpus (``corpus``: WordNet glosses by default,
   or CPython's pydoc topics) as one stream of character tokens (96 ids), cut into
   non-overlapping windows of ``seq_len + 1`` tokens, drawn with the job seed (the losses of
   a seed see the same windows): ``n_train`` *repeated* windows (the memorisation set),
   ``n_val`` validation windows and ``n_fresh`` *fresh* windows. Every step trains on
   ``batch_size`` repeated windows (an epoch is one seeded shuffle of them; ``epochs`` epochs,
   so each is seen ``epochs`` times -- the goldfish paper's setting of a few documents
   repeated many times, so that plain cross-entropy memorises measurably) plus
   ``fresh_batch`` fresh windows taken in order (each seen about once: the general text that
   keeps the validation perplexity meaningful; ``fresh_batch = 0`` is the pure
   memorisation setting).
2. **Model**: :class:`CharTransformer` (pre-LN causal transformer, learned positions, tied
   input/output embedding), ``d_model`` x ``n_layers`` x ``n_heads``; the initial weights
   depend on the seed only.
3. **Training**: Adam (``lr``, ``weight_decay``), a linear warm-up over ``warmup_steps``
   steps then cosine decay per step (:func:`warmup_cosine_schedule`), ``epochs`` epochs over
   the repeated windows, next-token prediction on ``[batch_size + fresh_batch, seq_len]``
   inputs. The objective of a job (on every token of the batch):

   * a ``logits`` loss (``cross_entropy``, or any classification loss) on the ``B x seq_len``
     tokens;
   * ``cross_entropy@goldfish``: the goldfish loss (Hans et al., arXiv 2406.10209): the CE
     over the tokens that the hashed goldfish mask keeps (``goldfish_k = 4``: about one token
     in four dropped, the same ones at every epoch since the mask hashes the
     ``goldfish_h = 13`` preceding tokens; :func:`losslab.losses.sequence.goldfish_mask` on the
     shifted labels);
   * ``cross_entropy@talr``: CE with ``token_weight=`` TALR weights of the batch's detached
     per-token losses (:func:`losslab.losses.token_weights.talr_weights`, arXiv 2509.20758);
   * ``cross_entropy@reweight``: CE with per-sequence loss-based weights
     (:func:`~losslab.losses.token_weights.loss_reweighting_weights`, ``reweight_strategy``
     LinUpper by default, arXiv 2502.06733) of the detached per-sequence mean losses;
   * a ``teacher`` loss (``kd``, ``dkd``, ``jsd``, ``sinkhorn_kd``): ``CE(student, y) +
     distill_weight * loss(student, teacher)`` (``target=y`` for the losses that require it:
     ``dkd``; ``kd``'s optional hard-label term stays off) with the logits of a teacher: a
     larger :class:`CharTransformer` (``teacher_d_model``, ``teacher_layers``) trained with
     plain CE on the same batches (``teacher_epochs``), once per seed and run: it is saved in
     ``<run folder>/teachers/`` and re-used by every student of that seed, also by a resumed
     run. ``sinkhorn_kd`` (a batch-wise transport between rows) is called per sequence, its
     rows being the sequence's positions; the row-wise losses on all tokens at once.
4. **Evaluation** (the final model): ``val_ppl`` (exp of the mean validation CE per
   character), ``val_acc`` (greedy next-character accuracy, %), ``train_ppl``, and **verbatim
   memorisation** (:func:`verbatim_memorization`, as the goldfish paper measures it): the
   share of training windows whose next ``mem_suffix`` characters greedy decoding reproduces
   exactly from the window's first ``mem_prefix`` characters (``memorized``, %), the mean
   share of those characters matched (``mem_char_match``, %), and the same exact-match share
   on the validation windows (``memorized_val``: what the model reproduces of text it never
   saw -- the floor that predictable English sets).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.lab.data.text import CORPORA, CharVocab, Corpus, load_corpus, split_windows
from losslab.lab.env import resolve_device
from losslab.lab.noise import stream_seed
from losslab.lab.tasks.base import Job, Option, Progress, ReportColumn, Task
from losslab.lab.training import Batch, build_optimizer, fit

__all__ = [
    "VARIANTS",
    "CharTransformer",
    "LMObjective",
    "LMTask",
    "evaluate_lm",
    "greedy_continuation",
    "verbatim_memorization",
    "warmup_cosine_schedule",
]

#: The training variants of ``cross_entropy`` (``cross_entropy@<variant>``).
VARIANTS = ("goldfish", "talr", "reweight")


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A small pre-LN causal transformer: ``forward(ids [N, T]) -> logits [N, T, V]`` with
    ``T <= context``; the output layer is the token embedding (tied)."""

    def __init__(self, vocab_size: int, *, d_model: int, n_layers: int, n_heads: int,
                 context: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.context = context
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        if t > self.context:
            raise ValueError(f"input length {t} exceeds the context {self.context}")
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        for block in self.blocks:
            h = block(h)
        return self.norm(h) @ self.tok.weight.T


@torch.no_grad()
def greedy_continuation(model: nn.Module, prefix: Tensor, steps: int) -> Tensor:
    """``[N, steps]``: the tokens greedy (argmax) decoding appends to ``prefix [N, P]``; the
    model maps ``[N, t]`` ids to ``[N, t, V]`` next-token logits."""
    x = prefix
    for _ in range(steps):
        nxt = model(x)[:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt.to(x.dtype)], dim=1)
    return x[:, prefix.shape[1]:]


@torch.no_grad()
def verbatim_memorization(model: nn.Module, sequences: Tensor, *, prefix: int, suffix: int,
                          batch_size: int = 256) -> tuple[float, float]:
    """Verbatim memorisation of ``sequences [N, L]`` (``L >= prefix + suffix``), as the
    goldfish paper (arXiv 2406.10209) measures it: prompt the model with the first ``prefix``
    tokens of each sequence, decode ``suffix`` tokens greedily, compare with the true next
    ``suffix`` tokens.

    Returns ``(exact, match)``: the share of sequences reproduced exactly (all ``suffix``
    tokens) and the mean share of continuation tokens equal to the truth position by position,
    both in ``[0, 1]``. The model is put in eval mode.
    """
    if prefix < 1 or suffix < 1:
        raise ValueError(f"prefix and suffix must be >= 1, got {prefix} and {suffix}")
    if sequences.ndim != 2 or sequences.shape[1] < prefix + suffix:
        raise ValueError(f"sequences must be [N, L] with L >= prefix + suffix = "
                         f"{prefix + suffix}, got {tuple(sequences.shape)}")
    n = sequences.shape[0]
    if n == 0:
        return 0.0, 0.0
    model.eval()
    exact = match = 0.0
    for start in range(0, n, batch_size):
        seq = sequences[start:start + batch_size]
        got = greedy_continuation(model, seq[:, :prefix], suffix)
        same = got == seq[:, prefix:prefix + suffix]
        exact += float(same.all(1).sum())
        match += float(same.double().mean(1).sum())
    return exact / n, match / n


@torch.no_grad()
def evaluate_lm(model: nn.Module, windows: Tensor, *, batch_size: int = 256
                ) -> tuple[float, float]:
    """``(mean CE per token, next-token accuracy)`` of ``windows [N, T + 1]`` (inputs
    ``[:, :-1]``, targets ``[:, 1:]``)."""
    model.eval()
    nll = correct = 0.0
    count = 0
    for start in range(0, windows.shape[0], batch_size):
        w = windows[start:start + batch_size]
        logits = model(w[:, :-1])
        y = w[:, 1:]
        nll += float(F.cross_entropy(logits.flatten(0, 1), y.reshape(-1), reduction="sum"))
        correct += float((logits.argmax(-1) == y).sum())
        count += y.numel()
    return nll / max(count, 1), correct / max(count, 1)


class LMObjective(nn.Module):
    """The training objective of a job: ``forward(logits [B, T, V], target [B, T],
    teacher_logits [B, T, V] | None)``, see the module docstring."""

    def __init__(self, loss: nn.Module, kind: str, variant: str | None, *, goldfish_k: int = 4,
                 goldfish_h: int = 13, reweight_strategy: str = "linupper",
                 distill_weight: float = 1.0, per_sequence: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.kind = kind
        self.variant = variant
        self.goldfish_k, self.goldfish_h = goldfish_k, goldfish_h
        self.reweight_strategy = reweight_strategy
        self.distill_weight = distill_weight
        self.per_sequence = per_sequence
        self.needs_target = kind == "teacher" and _requires_target(loss)
        self.kept = 0.0  # share of tokens in the loss at the last call (goldfish < 1)

    def forward(self, logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None
                ) -> Tensor:
        from losslab.losses.sequence import goldfish_mask
        from losslab.losses.token_weights import (
            loss_reweighting_weights,
            sample_to_token_weight,
            talr_weights,
        )

        b, t, v = logits.shape
        flat, y = logits.reshape(b * t, v), target.reshape(b * t)
        self.kept = 1.0
        if self.kind == "teacher":
            if teacher_logits is None:
                raise ValueError("a teacher loss needs teacher_logits")
            ce = F.cross_entropy(flat, y)
            if self.per_sequence:
                d = torch.stack([self._distill(logits[i], teacher_logits[i], target[i])
                                 for i in range(b)]).mean()
            else:
                d = self._distill(flat, teacher_logits.reshape(b * t, v), y)
            return ce + self.distill_weight * d
        if self.variant is None:
            return self.loss(flat, y)
        if self.variant == "goldfish":
            keep = goldfish_mask(target, k=self.goldfish_k, h=self.goldfish_h).reshape(-1)
            self.kept = float(keep.double().mean())
            return self.loss(flat[keep], y[keep])
        per_tok = F.cross_entropy(flat.detach(), y, reduction="none")
        if self.variant == "talr":
            w = talr_weights(per_tok)
        elif self.variant == "reweight":
            sw = loss_reweighting_weights(per_tok.view(b, t).mean(1),
                                          strategy=self.reweight_strategy)
            w = sample_to_token_weight(sw, target).reshape(-1)
        else:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        return self.loss(flat, y, token_weight=w)

    def _distill(self, s: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.needs_target:
            return self.loss(s, t, target=y)
        return self.loss(s, t)


def _requires_target(loss: nn.Module) -> bool:
    """Whether the functional form of a registered loss has a required ``target=`` (dkd)."""
    import inspect

    fn = getattr(type(loss), "function", None)
    if fn is None:
        return False
    p = inspect.signature(fn).parameters.get("target")
    return p is not None and p.default is inspect.Parameter.empty


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                           warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up of the learning rate over the first ``warmup_steps`` optimizer steps
    (factor ``(step + 1) / warmup_steps``), times the cosine decay to 0 over ``total_steps``
    (:func:`losslab.lab.training.cosine_schedule`'s factor); ``warmup_steps = 0``: cosine only."""
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"total_steps must be >= 1 and warmup_steps >= 0, got {total_steps} "
                         f"and {warmup_steps}")

    def factor(step: int) -> float:
        warm = 1.0 if step >= warmup_steps else (step + 1) / warmup_steps
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (parallel workers wait for the one training a teacher)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - windows: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _BarsOnly:
    """The teacher's progress: bars and log lines, but no curves of the student's row."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner

    def bar(self, total: int, desc: str) -> Any:
        return self.inner.bar(total, desc)

    def log(self, message: str) -> None:
        self.inner.log(message)


_TEACHER_KEYS = ("corpus", "data_dir", "seq_len", "n_train", "n_val", "n_fresh", "fresh_batch",
                 "teacher_d_model",
                 "teacher_layers", "n_heads", "teacher_epochs", "batch_size", "lr",
                 "warmup_steps",
                 "weight_decay", "mem_prefix", "mem_suffix")


class LMTask(Task):
    name: ClassVar[str] = "lm"
    description: ClassVar[str] = (
        "character-level LM on real text (WordNet glosses): validation perplexity, accuracy "
        "and verbatim memorisation of the repeated training windows"
    )
    options: ClassVar[tuple[Option, ...]] = (
        Option("corpus", "wordnet", "text: wordnet (glosses of the Debian package "
               "wordnet-base, fetched without root when missing) or pydoc (ships with Python)",
               str, choices=CORPORA),
        Option("data_dir", "", "folder of the WordNet data.* files (empty: the system "
               "install, else the cache)"),
        Option("cache_dir", ".cache", "where wordnet-base is fetched and unpacked", str,
               affects_results=False),
        Option("seq_len", 64, "tokens (characters) per training input", int),
        Option("n_train", 16, "repeated training windows (every epoch: the memorisation set)",
               int),
        Option("n_val", 256, "validation windows", int),
        Option("n_fresh", 4800, "fresh training windows (each seen about once)", int),
        Option("d_model", 64, "student width", int),
        Option("n_layers", 2, "student layers", int),
        Option("n_heads", 4, "attention heads (student and teacher)", int),
        Option("epochs", 300, "epochs over the repeated windows", int),
        Option("batch_size", 8, "repeated windows per step", int),
        Option("fresh_batch", 8, "fresh windows per step (0: repeated windows only)", int),
        Option("lr", 3e-3, "Adam learning rate (cosine decay to 0)", float),
        Option("warmup_steps", 100, "linear learning-rate warm-up steps (then the cosine "
               "decay; without it a seed in three stalled at the unigram loss)", int),
        Option("weight_decay", 0.0, "weight decay", float),
        Option("goldfish_k", 4, "goldfish: drop about 1 in k tokens", int),
        Option("goldfish_h", 13, "goldfish: tokens of context hashed", int),
        Option("reweight_strategy", "linupper", "loss-based reweighting: linupper, quadratic "
               "or extremes", str, choices=("linupper", "quadratic", "extremes")),
        Option("distill_weight", 1.0, "students: CE + distill_weight x distillation loss",
               float),
        Option("teacher_d_model", 80, "teacher width", int),
        Option("teacher_layers", 3, "teacher layers", int),
        Option("teacher_epochs", 600, "teacher epochs (plain CE)", int),
        Option("mem_prefix", 32, "memorisation: prompt length P (characters)", int),
        Option("mem_suffix", 32, "memorisation: continuation S that must match exactly", int),
        Option("eval_batch", 256, "windows per evaluation batch", int, affects_results=False),
    )
    metrics: ClassVar[tuple[ReportColumn, ...]] = (
        ReportColumn("memorized", "Memorised (%)", False, ".1f", primary=True),
        ReportColumn("mem_char_match", "Continuation chars matched (%)", False, ".1f"),
        ReportColumn("val_ppl", "Val perplexity", False, ".3f"),
        ReportColumn("val_acc", "Val accuracy (%)", True, ".2f", plot=False),
        ReportColumn("memorized_val", "Val windows reproduced (%)", False, ".1f", plot=False),
    )
    loss_kinds: ClassVar[tuple[str, ...] | None] = ("logits", "teacher")
    loss_variants: ClassVar[tuple[str, ...]] = VARIANTS

    def __init__(self) -> None:
        self._teachers: dict[str, CharTransformer] = {}

    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"corpus": config["corpus"]}]

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        labels = {"wordnet": "WordNet glosses", "pydoc": "pydoc topics"}
        return labels.get(str(setting["corpus"]), str(setting["corpus"]))

    def title(self, config: Mapping[str, Any]) -> str:
        return (f"Char LM ({config['corpus']}): {config['n_layers']}x{config['d_model']} "
                f"transformer, {config['n_train']} windows of {config['seq_len']} x "
                f"{config['epochs']} epochs; memorisation P={config['mem_prefix']}, "
                f"S={config['mem_suffix']}; teacher {config['teacher_layers']}x"
                f"{config['teacher_d_model']}")

    def validate(self, config: Mapping[str, Any]) -> None:
        from losslab.registry import spec

        for k in ("seq_len", "n_train", "n_val", "d_model", "n_layers", "n_heads", "epochs",
                  "batch_size", "goldfish_k", "goldfish_h", "teacher_d_model",
                  "teacher_layers", "teacher_epochs", "mem_prefix", "mem_suffix",
                  "eval_batch"):
            if config[k] < 1:
                raise ValueError(f"{k} must be >= 1, got {config[k]}")
        if config["n_fresh"] < 0 or config["fresh_batch"] < 0 or config["warmup_steps"] < 0:
            raise ValueError("n_fresh, fresh_batch and warmup_steps must be >= 0")
        if not config["lr"] > 0 or config["weight_decay"] < 0 or config["distill_weight"] < 0:
            raise ValueError("lr must be > 0, weight_decay and distill_weight >= 0")
        if config["mem_prefix"] + config["mem_suffix"] > config["seq_len"] + 1:
            raise ValueError(f"mem_prefix + mem_suffix must be <= seq_len + 1 = "
                             f"{config['seq_len'] + 1} (a training window), got "
                             f"{config['mem_prefix'] + config['mem_suffix']}")
        for d in ("d_model", "teacher_d_model"):
            if config[d] % config["n_heads"]:
                raise ValueError(f"{d} ({config[d]}) must be a multiple of n_heads "
                                 f"({config['n_heads']})")
        for s in config["losses"]:
            job = Job("lm", s, {}, "", 0, "")
            kind = spec(job.loss_names[0]).kind
            if job.variant is not None:
                if kind != "logits":
                    raise ValueError(f"loss {s!r}: variants apply to logits losses")
                if job.variant in ("talr", "reweight"):
                    loss = job.build_loss(config)
                    if "token_weight" not in getattr(type(loss), "_call_keywords", ()):
                        raise ValueError(f"loss {s!r}: {job.variant} needs a loss that takes "
                                         "token_weight= (cross_entropy)")
        corpus = self.corpus(config)  # fail before the first job (fetches wordnet-base)
        n_windows = len(corpus.tokens) // (config["seq_len"] + 1)
        if config["n_train"] + config["n_val"] + config["n_fresh"] > n_windows:
            raise ValueError(f"n_train + n_val + n_fresh exceeds the {n_windows} windows of "
                             "the corpus")

    def corpus(self, config: Mapping[str, Any]) -> Corpus:
        return load_corpus(config["corpus"], data_dir=config["data_dir"] or None,
                           cache_dir=config["cache_dir"])

    def _model(self, config: Mapping[str, Any], *, teacher: bool) -> CharTransformer:
        return CharTransformer(
            CharVocab.size, d_model=config["teacher_d_model" if teacher else "d_model"],
            n_layers=config["teacher_layers" if teacher else "n_layers"],
            n_heads=config["n_heads"], context=config["seq_len"])

    def _train(self, model: nn.Module, objective: LMObjective, train: np.ndarray,
               fresh: np.ndarray, config: Mapping[str, Any], seed: int, epochs: int,
               device: torch.device, progress: Any, desc: str,
               teacher: nn.Module | None = None) -> Any:
        n, bsz = len(train), min(config["batch_size"], len(train))
        fb = config["fresh_batch"] if len(fresh) else 0
        steps = math.ceil(n / bsz)
        rng = np.random.default_rng(stream_seed(seed, 3))
        data = torch.as_tensor(train, device=device)
        pool = torch.as_tensor(fresh, device=device)
        cursor = [0]

        def batches(epoch: int) -> Iterator[Batch]:
            perm = torch.as_tensor(rng.permutation(n), device=device)
            for i in range(steps):
                w = data[perm[i * bsz:(i + 1) * bsz]]
                if fb:
                    at = (cursor[0] + torch.arange(fb, device=device)) % len(pool)
                    cursor[0] += fb
                    w = torch.cat([w, pool[at]])
                x, y = w[:, :-1], w[:, 1:]
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x)
                yield Batch(x, lambda out, y=y, t=t_logits: (out, y, t))

        opt = build_optimizer("adam", model, objective, lr=config["lr"],
                              weight_decay=config["weight_decay"])
        sched = warmup_cosine_schedule(opt, epochs * steps, config["warmup_steps"])
        return fit(model, objective, batches, optimizer=opt, scheduler=sched,
                   scheduler_interval="step", epochs=epochs, steps_per_epoch=steps,
                   progress=progress, desc=desc)

    def teacher(self, config: Mapping[str, Any], seed: int, train: np.ndarray,
                val: np.ndarray, fresh: np.ndarray, device: torch.device, progress: Progress
                ) -> tuple[CharTransformer, dict[str, Any]]:
        """The teacher of ``seed`` (see the module docstring): from memory, else from
        ``<run_dir>/teachers/``, else trained (and saved there) under a file lock."""
        ident = {k: config[k] for k in _TEACHER_KEYS}
        key = hashlib.sha1(json.dumps({**ident, "seed": seed}, sort_keys=True).encode()
                           ).hexdigest()[:12]
        model = self._model(config, teacher=True).to(device)
        run_dir = config.get("run_dir")
        path = Path(run_dir) / "teachers" / f"teacher-s{seed}-{key}.pt" if run_dir else None
        lock = (contextlib.nullcontext() if path is None
                else _file_lock(path.with_suffix(".lock")))
        with lock:
            if key in self._teachers:
                model.load_state_dict(self._teachers[key].state_dict())
                info = dict(getattr(self._teachers[key], "info", {}))
            elif path is not None and path.is_file():
                saved = torch.load(path, map_location=device, weights_only=True)
                model.load_state_dict(saved["state"])
                info = json.loads(path.with_suffix(".json").read_text())
            else:
                torch.manual_seed(stream_seed(seed, 5))
                model = self._model(config, teacher=True).to(device)
                objective = LMObjective(nn.CrossEntropyLoss(), "logits", None)
                res = self._train(model, objective, train, fresh, config, stream_seed(seed, 6),
                                  config["teacher_epochs"], device, _BarsOnly(progress),
                                  f"teacher s{seed}")
                vt = torch.as_tensor(val, device=device)
                nll, _ = evaluate_lm(model, vt, batch_size=config["eval_batch"])
                mem, _ = verbatim_memorization(
                    model, torch.as_tensor(train, device=device), prefix=config["mem_prefix"],
                    suffix=config["mem_suffix"], batch_size=config["eval_batch"])
                info = {"teacher_val_ppl": math.exp(nll), "teacher_memorized": 100.0 * mem,
                        "teacher_seconds": round(res.seconds, 2)}
                if path is not None:
                    tmp = path.with_name(path.name + ".tmp")
                    torch.save({"state": model.state_dict(), "config": ident}, tmp)
                    path.with_suffix(".json").write_text(json.dumps(info) + "\n")
                    os.replace(tmp, path)
            model.info = info  # type: ignore[attr-defined]
            self._teachers[key] = model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, info

    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        from losslab.registry import spec

        device = resolve_device(config["device"])
        seed = job.seed
        corpus = self.corpus(config)
        train, val, fresh = split_windows(corpus.tokens, config["seq_len"] + 1,
                                          config["n_train"], config["n_val"], seed,
                                          config["n_fresh"])
        kind = spec(job.loss_names[0]).kind
        teacher, extra = None, {}
        if kind == "teacher":
            teacher, extra = self.teacher(config, seed, train, val, fresh, device, progress)
        torch.manual_seed(stream_seed(seed, 2))  # the same initial student for every loss
        model = self._model(config, teacher=False).to(device)
        objective = LMObjective(
            job.build_loss(config), kind, job.variant, goldfish_k=config["goldfish_k"],
            goldfish_h=config["goldfish_h"], reweight_strategy=config["reweight_strategy"],
            distill_weight=config["distill_weight"],
            per_sequence=job.loss_names[0] == "sinkhorn_kd").to(device)
        res = self._train(model, objective, train, fresh, config, seed, config["epochs"],
                          device, progress, f"{job.loss} s{seed}", teacher=teacher)
        t_eval = time.perf_counter()
        tt, vt = torch.as_tensor(train, device=device), torch.as_tensor(val, device=device)
        eb = config["eval_batch"]
        val_nll, val_acc = evaluate_lm(model, vt, batch_size=eb)
        train_nll, _ = evaluate_lm(model, tt, batch_size=eb)
        P, S = config["mem_prefix"], config["mem_suffix"]
        mem, match = verbatim_memorization(model, tt, prefix=P, suffix=S, batch_size=eb)
        mem_val, _ = verbatim_memorization(model, vt, prefix=P, suffix=S, batch_size=eb)
        out: dict[str, Any] = {
            "memorized": 100.0 * mem,
            "mem_char_match": 100.0 * match,
            "val_ppl": math.exp(val_nll),
            "val_acc": 100.0 * val_acc,
            "memorized_val": 100.0 * mem_val,
            "train_ppl": math.exp(train_nll),
            "train_loss": res.train_loss,
            "tokens_kept": objective.kept,
            "n_params": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(res.seconds, 2),
            "eval_seconds": round(time.perf_counter() - t_eval, 2),
            **extra,
        }
        return out

