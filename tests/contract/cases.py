"""Inputs for the contract suite, built per *kind* (see ``losslab.registry.KINDS``).

Every registered loss is called as ``module(*args, **kwargs)`` with the inputs of its kind.
A new kind needs a branch in each function below; a new loss of an existing kind needs
nothing (beyond ``example_hparams`` when it cannot be built without arguments).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from losslab.registry import LossSpec


@dataclass
class Call:
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def float_inputs(self) -> list[Tensor]:
        """The differentiable inputs (labels-like float inputs, e.g. relevance, excluded)."""
        return [a for a in self.args if isinstance(a, Tensor) and a.requires_grad]

    def to(self, dtype: torch.dtype) -> Call:
        def cast(a: Any) -> Any:
            if isinstance(a, Tensor) and a.is_floating_point():
                return a.detach().to(dtype).requires_grad_(a.requires_grad)
            return a


        return Call(tuple(cast(a) for a in self.args), {k: cast(v) for k, v in self.kwargs.items()})


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, g: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# Float inputs that are targets, not predictions: no gradient (kind -> argument positions).
TARGET_ARGS = {"scores": (1,), "bags": (2,), "regression": (1,), "unnormalized": (2,)}


def _logprobs(n: int, g: torch.Generator, dtype: torch.dtype, scale: float) -> Tensor:
    """``[n]`` per-sequence log-probabilities (negative) for the ``preference`` kind."""
    return (-(torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.2) * scale).to(dtype)


def _survival_target(n: int, bins: int, g: torch.Generator, dtype: torch.dtype) -> Tensor:
    """``[n, 2]`` (time bin, event) targets of the ``hazard`` loss, both events and censoring."""
    time = torch.randint(0, bins, (n,), generator=g)
    event = torch.arange(n) % 2
    return torch.stack([time, event], 1).to(dtype)


def _add_time(spec: LossSpec, call: Call, n: int, g: torch.Generator,
              dtype: torch.dtype) -> None:
    """``time=`` ([n] times in [0.05, 0.45], no gradient) for the losses that take it (BFN;
    later times weight the continuous-data loss by up to 1 / sigma_1^2 = 1e6, beyond float16
    gradients: see ``bfn_continuous_loss``)."""
    if "time" in getattr(spec.module, "_call_keywords", ()):
        call.kwargs["time"] = (torch.rand(n, generator=g, dtype=torch.float64) * 0.4
                               + 0.05).to(dtype)


def _finish(spec: LossSpec, call: Call, n: int) -> Call:
    if spec.needs_index:
        call.kwargs["index"] = torch.arange(n)
    for i, a in enumerate(call.args):
        if isinstance(a, Tensor) and a.is_floating_point() and i not in TARGET_ARGS.get(
                spec.kind, ()):
            a.requires_grad_(True)
    return call


def _requires(spec: LossSpec, name: str) -> bool:
    """Whether the loss's function has a required keyword ``name`` (no default)."""
    p = inspect.signature(spec.function).parameters.get(name)
    return p is not None and p.default is inspect.Parameter.empty


def make_call(
    spec: LossSpec, *, dtype: torch.dtype = torch.float64, seed: int = 0, scale: float = 1.0
) -> Call:
    """Small generic inputs of the loss's kind (several classes, >= 2 samples each)."""
    g = _gen(seed)
    k = spec.kind
    C = int(spec.example_hparams.get("num_classes", 4))
    D = int(spec.example_hparams.get("embedding_dim", 5))
    if k == "episode":
        s_lab = torch.tensor([3, 3, 7, 7, 1, 1])
        q_lab = torch.tensor([7, 3, 1, 1, 3])
        call = Call((_randn(6, D, g=g, dtype=dtype, scale=scale), s_lab,
                     _randn(5, D, g=g, dtype=dtype, scale=scale), q_lab))
        return _finish(spec, call, 5)
    if k == "logits":
        n = 6
        target = torch.randint(0, C, (n,), generator=g)
        target[:C] = torch.arange(C)[:n]
        call = Call((_randn(n, C, g=g, dtype=dtype, scale=scale), target))
        if "adv_logits" in inspect.signature(spec.function).parameters:  # adversarial inputs
            call.kwargs["adv_logits"] = call.args[0] + _randn(n, C, g=g, dtype=dtype,
                                                              scale=0.3 * scale)
        _add_time(spec, call, n, g, dtype)
        return _finish(spec, call, n)
    if k == "embeddings":
        n = 8
        labels = torch.arange(n) % C
        call = Call((_randn(n, D, g=g, dtype=dtype, scale=scale), labels))
        return _finish(spec, call, n)
    if k == "paired":
        n = 6
        call = Call((_randn(n, D, g=g, dtype=dtype, scale=scale),
                     _randn(n, D, g=g, dtype=dtype, scale=scale)))
        return _finish(spec, call, n)
    if k == "scores":
        call = Call((_randn(3, 5, g=g, dtype=dtype, scale=scale),
                     torch.randint(0, 3, (3, 5), generator=g).to(dtype)))
        return _finish(spec, call, 3)
    if k == "dense":
        target = torch.randint(0, C, (2, 3, 3), generator=g)
        call = Call((_randn(2, C, 3, 3, g=g, dtype=dtype, scale=scale), target))
        return _finish(spec, call, 2)
    if k == "teacher":
        call = Call((_randn(6, C, g=g, dtype=dtype, scale=scale),
                     _randn(6, C, g=g, dtype=dtype, scale=scale)))
        if _requires(spec, "target"):  # dkd, nd_loss: class ids in [0, C)
            call.kwargs["target"] = torch.tensor([0, 1, 2, 3, 1, 2]) % C
        return _finish(spec, call, 6)
    if k == "bags":
        bag_index = torch.tensor([0, 0, 1, 1, 1, 2])
        base = spec.defaults.get("base")
        if base == "ce":  # logits [N, C] and bag label proportions [B, C]
            props = torch.softmax(_randn(3, C, g=g, dtype=torch.float64), 1).to(dtype)
            call = Call((_randn(6, C, g=g, dtype=dtype, scale=scale), bag_index, props))
        elif base == "bce":  # logits [N] and fractions of positives [B]
            call = Call((_randn(6, g=g, dtype=dtype, scale=scale), bag_index,
                         torch.rand(3, generator=g, dtype=torch.float64).to(dtype)))
        else:
            call = Call((_randn(6, g=g, dtype=dtype, scale=scale), bag_index,
                         _randn(3, g=g, dtype=dtype, scale=scale)))
        return _finish(spec, call, 6)
    if k == "linear":
        V = int(spec.example_hparams.get("vocab_size", 7))
        target = torch.randint(0, V, (6,), generator=g)
        call = Call((_randn(6, 4, g=g, dtype=dtype, scale=scale),
                     _randn(V, 4, g=g, dtype=dtype, scale=scale), target))
        return _finish(spec, call, 6)
    if k == "regression":
        n = 6
        pred = _randn(n, 3, g=g, dtype=dtype, scale=scale)
        if spec.name in ("hazard", "two_term_hazard"):  # (time bin, event), per-bin logits
            target = _survival_target(n, 3, g, dtype)
        elif spec.name == "roma_coarse":  # logits over a 2 x 2 anchor grid, matches in [-1, 1]
            pred = _randn(n, 4, g=g, dtype=dtype, scale=scale)
            target = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
        elif spec.name == "bfn_discretised":  # (mu_x, ln sigma_x) per element; bin centres
            bins = int(spec.example_hparams.get("num_bins", 16))
            pred = _randn(n, 2, 3, g=g, dtype=dtype, scale=scale)
            k = torch.randint(0, bins, (n, 3), generator=g)
            target = ((2 * k + 1).to(torch.float64) / bins - 1).to(dtype)
        elif spec.name == "ordinal":  # ordered categories in [0, K) for K - 1 = 3 thresholds
            target = torch.tensor([0, 1, 2, 3, 1, 2])
        elif spec.name == "rejection_surrogate":  # +1/-1 labels; a bounded rejector's scores
            target = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0]).to(dtype)[:, None].repeat(1, 3)
            pred = pred * 0.1
        elif spec.name == "churn_regret":  # one logit per customer; (churned, CLV)
            pred = _randn(n, g=g, dtype=dtype, scale=scale)
            target = torch.stack([torch.tensor([1.0, 0, 1, 0, 1, 1], dtype=torch.float64),
                                  torch.tensor([250.0, 80, 12, 400, 3, 900],
                                               dtype=torch.float64)], 1).to(dtype)
        else:
            target = _randn(n, 3, g=g, dtype=dtype, scale=scale)
        call = Call((pred, target))
        if "inputs" in getattr(spec.module, "_call_keywords", ()):  # the model's inputs
            call.kwargs["inputs"] = _randn(n, 4, g=g, dtype=dtype, scale=scale)
        if "features" in getattr(spec.module, "_call_keywords", ()):
            call.kwargs["features"] = _randn(n, D, g=g, dtype=dtype,
                                             scale=scale).requires_grad_(True)
        _add_time(spec, call, n, g, dtype)
        return _finish(spec, call, n)
    if k == "preference":
        n = 6
        call = Call((_logprobs(n, g, dtype, scale), _logprobs(n, g, dtype, scale)))
        keywords = getattr(spec.module, "_call_keywords", ())
        if "ref_chosen" in keywords:  # frozen reference model: no gradient
            call.kwargs["ref_chosen"] = _logprobs(n, g, dtype, scale)
            call.kwargs["ref_rejected"] = _logprobs(n, g, dtype, scale)
        if "chosen_length" in keywords:
            call.kwargs["chosen_length"] = torch.tensor([3, 1, 4, 1, 5, 9])
        if "rejected_length" in keywords:
            call.kwargs["rejected_length"] = torch.tensor([2, 6, 5, 3, 5, 8])
        if "chosen_grad_norm" in keywords:  # detached per-pair gradient norms
            call.kwargs["chosen_grad_norm"] = torch.rand(n, generator=g).to(dtype) + 0.5
            call.kwargs["rejected_grad_norm"] = torch.rand(n, generator=g).to(dtype) + 0.5
        return _finish(spec, call, n)
    if k == "tokens":
        V = int(spec.example_hparams.get("vocab_size", 7))
        target = torch.randint(0, V, (2, 5), generator=g)
        call = Call((_randn(2, 5, V, g=g, dtype=dtype, scale=scale), target))
        return _finish(spec, call, 2)
    if k == "weights":  # three layers of different shapes (a conv, a bias-like, a linear)
        call = Call((_randn(3, 2, 2, g=g, dtype=dtype, scale=scale),
                     _randn(7, g=g, dtype=dtype, scale=scale),
                     _randn(4, 5, g=g, dtype=dtype, scale=scale)))
        return _finish(spec, call, 3)
    if k == "unnormalized":  # log f at 6 data points and 8 noise samples, log q of the noise
        call = Call((_randn(6, g=g, dtype=dtype, scale=scale),
                     _randn(8, g=g, dtype=dtype, scale=scale),
                     (-0.5 * _randn(8, g=g, dtype=torch.float64).pow(2) - 1.0).to(dtype)))
        return _finish(spec, call, 6)
    raise AssertionError(f"contract inputs missing for kind {k!r}")


def degenerate_call(spec: LossSpec, case: str, *, dtype: torch.dtype = torch.float64) -> Call:
    """Inputs of one of ``DEGENERATE_CASES`` for the loss's kind."""
    call = make_call(spec, dtype=dtype)
    k = spec.kind
    args = list(call.args)
    if case == "one_class":
        if k == "episode":
            args[1] = torch.zeros_like(args[1])
            args[3] = torch.zeros_like(args[3])
        elif k in ("embeddings", "logits"):
            args[1] = torch.zeros_like(args[1])
        else:
            raise AssertionError(f"no one_class case for kind {k!r}")
    elif case == "no_positives":
        if k != "embeddings":
            raise AssertionError(f"no no_positives case for kind {k!r}")
        args[1] = torch.arange(args[0].shape[0])
    elif case == "all_ignored":
        idx = {"logits": 1, "linear": 2, "dense": 1, "tokens": 1}.get(k)
        if idx is None:
            raise AssertionError(f"no all_ignored case for kind {k!r}")
        args[idx] = torch.full_like(args[idx], -100)
    elif case == "all_masked":  # kind scores: every item is padding
        if k != "scores":
            raise AssertionError(f"no all_masked case for kind {k!r}")
        call.kwargs["mask"] = torch.zeros(args[0].shape, dtype=torch.bool)
    elif case == "no_relevant":  # kind scores: no list has a relevant item
        if k != "scores":
            raise AssertionError(f"no no_relevant case for kind {k!r}")
        args[1] = torch.zeros_like(args[1])
    else:
        raise AssertionError(f"unknown degenerate case {case!r}")
    return Call(tuple(args), call.kwargs)


def bad_calls(spec: LossSpec) -> list[tuple[str, Call]]:
    """Inputs that must raise ``ValueError`` (label, call)."""
    good = make_call(spec, dtype=torch.float32)
    a = list(good.args)
    kw = good.kwargs
    k = spec.kind
    out: list[tuple[str, Call]] = []

    def variant(label: str, i: int, value: Any) -> None:
        b = list(a)
        b[i] = value
        out.append((label, Call(tuple(b), dict(kw))))

    if k == "episode":
        variant("query dim mismatch", 2, torch.randn(5, a[2].shape[1] + 1))
        variant("query class absent from support", 3, torch.tensor([7, 3, 1, 1, 99]))
        variant("integer embeddings", 0, torch.ones(6, a[0].shape[1], dtype=torch.long))
        variant("empty query", 2, torch.randn(0, a[2].shape[1]))
        variant("support labels wrong length", 1, torch.tensor([3, 3, 7]))
        variant("float labels", 1, a[1].float())
    elif k == "logits":
        variant("target out of range", 1, torch.full_like(a[1], a[0].shape[1] + 3))
        variant("target wrong length", 1, a[1][:-1])
        variant("integer logits", 0, torch.ones_like(a[1]).unsqueeze(1).repeat(1, a[0].shape[1]))
    elif k == "embeddings":
        variant("labels wrong length", 1, a[1][:-1])
        variant("1-D embeddings", 0, torch.randn(a[0].shape[0]))
        variant("integer embeddings", 0, torch.ones(a[0].shape, dtype=torch.long))
        variant("float labels", 1, a[1].float())
    elif k == "paired":
        variant("b rows mismatch", 1, a[1][:-1])
        variant("b dim mismatch", 1, torch.randn(a[1].shape[0], a[1].shape[1] + 1))
    elif k == "linear":
        variant("weight dim mismatch", 1, torch.randn(a[1].shape[0], a[1].shape[1] + 1))
        variant("target out of range", 2, torch.full_like(a[2], a[1].shape[0]))
        variant("integer hidden", 0, torch.ones(a[0].shape, dtype=torch.long))
    elif k == "bags":
        variant("bag index out of range", 1, torch.tensor([0, 0, 1, 1, 1, 9]))
    elif k == "teacher":
        variant("teacher shape mismatch", 1, a[1][:, :-1])
    elif k == "scores":
        variant("relevance shape mismatch", 1, a[1][:, :-1])
    elif k == "dense":
        variant("target shape mismatch", 1, a[1][:, :-1])
    elif k == "preference":
        variant("rejected shape mismatch", 1, a[1][:-1])
        variant("2-D chosen", 0, a[0].unsqueeze(1))
        variant("integer chosen", 0, torch.ones(a[0].shape, dtype=torch.long))
        if "ref_chosen" in kw:
            b = dict(kw)
            b.pop("ref_rejected")
            out.append(("ref_chosen without ref_rejected", Call(tuple(a), b)))
        if "chosen_length" in kw:
            b = dict(kw)
            b["chosen_length"] = torch.zeros_like(kw["chosen_length"])
            out.append(("zero chosen_length", Call(tuple(a), b)))
    elif k == "tokens":
        variant("target shape mismatch", 1, a[1][:, :-1])
        variant("target out of range", 1, torch.full_like(a[1], a[0].shape[-1]))
        variant("integer logits", 0, torch.ones(a[0].shape, dtype=torch.long))
        variant("2-D logits", 0, a[0][0])
    elif k == "weights":
        variant("integer weight", 0, torch.ones(3, 4, dtype=torch.long))
        variant("one-element weight", 1, torch.randn(1))
        variant("constant weight", 2, torch.ones(4, 5))
    elif k == "unnormalized":
        variant("noise_log_q length mismatch", 2, a[2][:-1])
        variant("2-D log_density", 0, a[0].unsqueeze(1))
        variant("integer log_density", 0, torch.ones(a[0].shape, dtype=torch.long))
        variant("no noise sample", 1, a[1][:0])
    elif k == "regression":
        variant("target rows mismatch", 1, a[1][:-1])
        variant("integer pred", 0, torch.ones(a[0].shape, dtype=torch.long))
        if a[1].is_floating_point():
            variant("integer target", 1, torch.ones(a[1].shape, dtype=torch.long))
        else:  # ordered categories: out of range, or float
            variant("category out of range", 1, torch.full_like(a[1], a[0].shape[1] + 1))
            variant("float target", 1, a[1].double())
    return out
