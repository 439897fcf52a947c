"""The loss registry: one :class:`LossSpec` per loss, filled in by :func:`register`.

Every loss in losslab is a pair (functional form, ``nn.Module`` shell) living in its family
module. The module class is decorated with :func:`register`, which records where the loss comes
from (paper, arXiv id), how it is called (its *kind*) and its defaults, and completes the shell:
``__init__`` from the function's keyword-only hyperparameters and ``forward`` from the kind's
call adapter (:data:`KIND_CALLS`). ``create``, ``available`` and ``spec`` read the registry; the
contract test suite runs over it.

This module imports no loss: the package ``losslab`` imports :mod:`losslab.losses`, whose family
modules register themselves (as timm's model registry is filled).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from losslab._core import LossModule

__all__ = [
    "DEGENERATE_CASES",
    "FAMILIES",
    "FAMILY_MODULES",
    "KINDS",
    "KIND_CALLS",
    "LossSpec",
    "available",
    "create",
    "register",
    "spec",
]

#: The call signature of each kind (see DESIGN.md). The contract suite builds inputs per kind.
#: ``indices=`` (embeddings kind) are miner tuples (pairs or triplets of row indices);
#: ``index=`` (any kind, losses with ``needs_index``) are the dataset ids of the batch's samples,
#: used to address per-sample state. ``time=`` (logits and regression kinds, losses of
#: time-indexed generative processes such as Bayesian Flow Networks) is the per-sample time
#: ``t`` in [0, 1] at which the model's output was computed. ``weights`` kind: a model's
#: weight tensors, one positional argument per layer (weight regularisers such as EQ-Net's WDR).
#: ``unnormalized`` kind: an unnormalised model's log-density ``log f(x)`` at N data points and
#: at M noise samples ``y ~ q``, with the noise's normalised log-density ``log q(y)``.
KINDS: Mapping[str, str] = MappingProxyType(
    {
        "logits": "(logits[N,C,...], target[N,...] int or probs[N,C,...], *, time=None)",
        "embeddings": "(embeddings[N,D], labels[N], *, ref_embeddings=None, ref_labels=None, "
        "indices=None)",
        "episode": "(support[Ns,D], support_labels[Ns], query[Nq,D], query_labels[Nq])",
        "paired": "(a[N,D], b[N,D])",
        "scores": "(scores[Q,L], relevance[Q,L], *, mask=None, log_q=None)",
        "dense": "(logits[N,C,*spatial], target)",
        "teacher": "(student_logits, teacher_logits, *, target=None)",
        "bags": "(pred[N,...], bag_index[N], bag_target[B,...])",
        "linear": "(hidden[N,d], weight[V,d], target[N], *, bias=None)",
        "regression": "(pred[N,...], target[N,...], *, features=None, weights=None, "
        "inputs=None, time=None)",
        "preference": "(policy_chosen[N], policy_rejected[N], *, ref_chosen=None, "
        "ref_rejected=None, chosen_length=None, rejected_length=None, reference_point=None, "
        "chosen_grad_norm=None, rejected_grad_norm=None)",
        "tokens": "(logits[N,T,V], target[N,T], *, token_weight=None)",
        "weights": "(*weights)",
        "unnormalized": "(log_density[N], noise_log_density[M], noise_log_q[M])",
    }
)

#: Families follow the seed catalog (catalog.tsv, column ``family``).
FAMILIES: tuple[str, ...] = (
    "classification",
    "robust-noisy",
    "calibration",
    "metric-learning",
    "few-shot",
    "contrastive-ssl",
    "ranking-recsys",
    "segmentation",
    "distillation",
    "aggregate-labels",
    "regression",
    "sequence-lm",
    "lm-tokens",
    "preference",
    "quantization-compression",
    "generative",
)

#: Where each family lives: a module (or package) of ``losslab.losses``. The layout test checks
#: that every registered loss is defined there.
FAMILY_MODULES: Mapping[str, str] = MappingProxyType(
    {
        "classification": "losslab.losses.classification",
        "robust-noisy": "losslab.losses.robust",
        "calibration": "losslab.losses.calibration",
        "metric-learning": "losslab.losses.metric_learning",
        "few-shot": "losslab.losses.fewshot",
        "contrastive-ssl": "losslab.losses.contrastive_ssl",
        "ranking-recsys": "losslab.losses.ranking",
        "segmentation": "losslab.losses.segmentation",
        "distillation": "losslab.losses.distillation",
        "aggregate-labels": "losslab.losses.aggregate",
        "regression": "losslab.losses.regression",
        "sequence-lm": "losslab.losses.sequence",
        "lm-tokens": "losslab.losses.tokens",
        "preference": "losslab.losses.preference",
        "quantization-compression": "losslab.losses.quantization",
        "generative": "losslab.losses.generative",
    }
)

#: Degenerate batches a loss may declare (see ``LossSpec.degenerate``).
DEGENERATE_CASES: tuple[str, ...] = ("one_class", "no_positives", "all_ignored", "all_masked",
                                     "no_relevant")

Kind = Literal[
    "logits", "embeddings", "episode", "paired", "scores", "dense", "teacher", "bags", "linear",
    "regression", "preference", "tokens", "weights", "unnormalized",
]


@dataclass(frozen=True)
class LossSpec:
    """What the library knows about one loss.

    Attributes:
        name: snake_case registry name (``create(name)``); the functional twin is
            ``losslab.functional.<name>_loss``.
        family: one of :data:`FAMILIES`.
        kind: the call signature, one of :data:`KINDS`.
        paper: title of the paper that defines the loss.
        arxiv: arXiv id of that paper ("" when it has none).
        peers: other libraries with the same definition, as ``"package.Symbol"`` strings.
        defaults: keyword-only hyperparameters of the module and their defaults (read from
            the module's ``__init__``).
        summary: the formula in one line, for ``losslab info``.
        function: the functional form.
        module: the ``nn.Module`` shell.
        reduction: what ``reduction="none"`` returns, e.g. ``"per query"``; ``None`` when the
            loss is defined on a whole set and takes no ``reduction``.
        needs_index: the loss keeps per-sample state and takes ``index=`` (dataset ids).
        example_hparams: hyperparameters needed to build a small instance (e.g. the number of
            classes of a proxy loss); used by ``losslab info`` and the contract suite.
        surrogate_gradient: why the backward pass is deliberately not the derivative of the
            value (e.g. the paper treats adaptive weights as constants); ``None`` for losses
            whose gradient is exact (checked by ``gradcheck`` in the contract suite).
        degenerate: the degenerate batches the loss defines as a zero loss with zero gradient,
            checked by the contract suite: ``"one_class"`` (every label equal),
            ``"no_positives"`` (every label distinct), ``"all_ignored"`` (every target equal
            to ``ignore_index``).
        half_input_scale: the largest input scale at which the contract suite asks float16
            gradients to be finite (default 30). Lower only for a loss of high polynomial
            degree in its inputs whose true gradient exceeds float16's range (65504) there,
            with the arithmetic in its docstring.
    """

    name: str
    family: str
    kind: str
    paper: str
    arxiv: str
    peers: tuple[str, ...]
    defaults: Mapping[str, Any]
    summary: str
    function: Callable[..., torch.Tensor] = field(repr=False, compare=False)
    module: type[torch.nn.Module] = field(repr=False, compare=False)
    reduction: str | None = "per sample"
    needs_index: bool = False
    example_hparams: Mapping[str, Any] = field(default_factory=dict)
    degenerate: tuple[str, ...] = ()
    surrogate_gradient: str | None = None
    half_input_scale: float = 30.0

    @property
    def function_name(self) -> str:
        """Name of the functional twin in ``losslab.functional`` (:func:`function_name`)."""
        return function_name(self.name)


def function_name(name: str) -> str:
    """The functional twin of loss ``name``: ``<name>_loss``, or ``name`` itself when it
    already ends in ``loss`` (``z_loss``, ``anyloss``), so that no word is doubled."""
    return name if name.endswith("loss") else f"{name}_loss"


_REGISTRY: dict[str, LossSpec] = {}

M = TypeVar("M", bound=type[torch.nn.Module])


def _keyword_defaults(module: type[torch.nn.Module]) -> dict[str, Any]:
    """Keyword-only parameters of ``module.__init__`` and their defaults (``...``: required)."""
    out: dict[str, Any] = {}
    for p in inspect.signature(module.__init__).parameters.values():
        if p.name == "self":
            continue
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"{module.__name__}.__init__: hyperparameter {p.name!r} must be keyword-only"
            )
        out[p.name] = ... if p.default is inspect.Parameter.empty else p.default
    return out


# --------------------------------------------------------------------------------------------
# Per-kind call adapters: the ``forward`` of every generated module shell.
# --------------------------------------------------------------------------------------------


def _call(self: LossModule, *inputs: Any, **keywords: Any) -> Any:
    """Call the functional twin with the inputs, the call-time keywords it accepts (others must
    be left at None) and the module's hyperparameters."""
    accepted = type(self)._call_keywords
    passed = {}
    for k, v in keywords.items():
        if k in accepted:
            passed[k] = v
        elif v is not None:
            raise ValueError(f"{self.spec.name} takes no {k}= argument")
    return type(self).function(*inputs, **passed, **self.call_kwargs())


def _forward_logits(self: LossModule, logits: Tensor, target: Tensor, *,
                    index: Tensor | None = None, token_weight: Tensor | None = None,
                    time: Tensor | None = None) -> Tensor:
    return _call(self, logits, target, index=index, token_weight=token_weight, time=time)


def _forward_embeddings(self: LossModule, embeddings: Tensor, labels: Tensor, *,
                        ref_embeddings: Tensor | None = None, ref_labels: Tensor | None = None,
                        indices: Any = None, index: Tensor | None = None) -> Tensor:
    return _call(self, embeddings, labels, ref_embeddings=ref_embeddings, ref_labels=ref_labels,
                 indices=indices, index=index)


def _forward_episode(self: LossModule, support: Tensor, support_labels: Tensor, query: Tensor,
                     query_labels: Tensor) -> Tensor:
    return _call(self, support, support_labels, query, query_labels)


def _forward_paired(self: LossModule, a: Tensor, b: Tensor, *,
                    index: Tensor | None = None) -> Tensor:
    return _call(self, a, b, index=index)


def _forward_scores(self: LossModule, scores: Tensor, relevance: Tensor, *,
                    mask: Tensor | None = None, log_q: Tensor | None = None) -> Tensor:
    return _call(self, scores, relevance, mask=mask, log_q=log_q)


def _forward_dense(self: LossModule, logits: Tensor, target: Tensor) -> Tensor:
    return _call(self, logits, target)


def _forward_teacher(self: LossModule, student_logits: Tensor, teacher_logits: Tensor, *,
                     target: Tensor | None = None) -> Tensor:
    return _call(self, student_logits, teacher_logits, target=target)


def _forward_bags(self: LossModule, pred: Tensor, bag_index: Tensor, bag_target: Tensor) -> Tensor:
    return _call(self, pred, bag_index, bag_target)


def _forward_linear(self: LossModule, hidden: Tensor, weight: Tensor, target: Tensor, *,
                    bias: Tensor | None = None, class_weight: Tensor | None = None,
                    token_weight: Tensor | None = None, return_lse: bool = False) -> Any:
    return _call(self, hidden, weight, target, bias=bias, class_weight=class_weight,
                 token_weight=token_weight, return_lse=return_lse)


def _forward_regression(self: LossModule, pred: Tensor, target: Tensor, *,
                        features: Tensor | None = None, weights: Tensor | None = None,
                        inputs: Tensor | None = None, time: Tensor | None = None) -> Tensor:
    return _call(self, pred, target, features=features, weights=weights, inputs=inputs,
                 time=time)


def _forward_preference(self: LossModule, policy_chosen: Tensor, policy_rejected: Tensor, *,
                        ref_chosen: Tensor | None = None, ref_rejected: Tensor | None = None,
                        chosen_length: Tensor | None = None,
                        rejected_length: Tensor | None = None,
                        reference_point: Tensor | float | None = None,
                        chosen_grad_norm: Tensor | None = None,
                        rejected_grad_norm: Tensor | None = None) -> Tensor:
    return _call(self, policy_chosen, policy_rejected, ref_chosen=ref_chosen,
                 ref_rejected=ref_rejected, chosen_length=chosen_length,
                 rejected_length=rejected_length, reference_point=reference_point,
                 chosen_grad_norm=chosen_grad_norm, rejected_grad_norm=rejected_grad_norm)


def _forward_tokens(self: LossModule, logits: Tensor, target: Tensor, *,
                    token_weight: Tensor | None = None) -> Tensor:
    return _call(self, logits, target, token_weight=token_weight)
def _forward_weights(self: LossModule, *weights: Tensor) -> Tensor:
    return _call(self, *weights)


def _forward_unnormalized(self: LossModule, log_density: Tensor, noise_log_density: Tensor,
                          noise_log_q: Tensor) -> Tensor:
    return _call(self, log_density, noise_log_density, noise_log_q)


@dataclass(frozen=True)
class KindCall:
    """How a kind is called: the ``forward`` of its generated shells and the keyword-only
    parameters of the function that are call-time inputs rather than hyperparameters."""

    forward: Callable[..., Any]
    keywords: frozenset[str]


def _kind_call(forward: Callable[..., Any]) -> KindCall:
    params = inspect.signature(forward).parameters.values()
    return KindCall(forward, frozenset(
        p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY))


#: kind -> its call adapter (the ``forward`` installed by :func:`register`).
KIND_CALLS: Mapping[str, KindCall] = MappingProxyType({
    "logits": _kind_call(_forward_logits),
    "embeddings": _kind_call(_forward_embeddings),
    "episode": _kind_call(_forward_episode),
    "paired": _kind_call(_forward_paired),
    "scores": _kind_call(_forward_scores),
    "dense": _kind_call(_forward_dense),
    "teacher": _kind_call(_forward_teacher),
    "bags": _kind_call(_forward_bags),
    "linear": _kind_call(_forward_linear),
    "regression": _kind_call(_forward_regression),
    "preference": _kind_call(_forward_preference),
    "tokens": _kind_call(_forward_tokens),
    "weights": _kind_call(_forward_weights),
    "unnormalized": _kind_call(_forward_unnormalized),
})


def register(
    name: str,
    *,
    family: str,
    kind: Kind,
    paper: str,
    arxiv: str,
    summary: str,
    peers: tuple[str, ...] = (),
    reduction: str | None = "per sample",
    needs_index: bool = False,
    example_hparams: Mapping[str, Any] | None = None,
    degenerate: tuple[str, ...] = (),
    surrogate_gradient: str | None = None,
    half_input_scale: float = 30.0,
) -> Callable[[M], M]:
    """Class decorator that registers a :class:`~losslab._core.LossModule` loss under ``name``.

    The functional twin is the class's ``function`` (``class X(LossModule, function=f)``),
    named ``<name>_loss`` (:func:`function_name`). Unless the class writes them, ``__init__`` is
    generated from the function's keyword-only hyperparameters and ``forward`` is the kind's
    adapter (:data:`KIND_CALLS`).
    """
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"loss name must be a snake_case identifier, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    bad = set(degenerate) - set(DEGENERATE_CASES)
    if bad:
        raise ValueError(f"degenerate cases must be among {DEGENERATE_CASES}, got {sorted(bad)}")

    def decorate(module: M) -> M:
        if name in _REGISTRY and _REGISTRY[name].module is not module:
            raise ValueError(f"loss {name!r} is already registered")
        if not (isinstance(module, type) and issubclass(module, LossModule)):
            raise TypeError(f"{name}: a registered loss must subclass LossModule")
        fn = module.__dict__.get("function")
        if fn is None:
            raise TypeError(f"{module.__name__}: declare the functional twin, "
                            f"class {module.__name__}(LossModule, function={function_name(name)})")
        fn = getattr(fn, "__func__", fn)
        if fn.__name__ != function_name(name):
            raise ValueError(
                f"the functional twin of {name!r} must be named {function_name(name)}, "
                f"got {fn.__name__}")
        call = KIND_CALLS[kind]
        accepted = {p.name for p in inspect.signature(fn).parameters.values()}
        module._call_keywords = frozenset(call.keywords & accepted)  # type: ignore[attr-defined]
        module.generate_init(call.keywords)
        if module.forward is torch.nn.Module.forward:
            module.forward = call.forward  # type: ignore[method-assign]
        s = LossSpec(
            name=name,
            family=family,
            kind=kind,
            paper=paper,
            arxiv=arxiv,
            peers=tuple(peers),
            defaults=MappingProxyType(_keyword_defaults(module)),
            summary=summary,
            function=fn,
            module=module,
            reduction=reduction,
            needs_index=needs_index,
            example_hparams=MappingProxyType(dict(example_hparams or {})),
            degenerate=tuple(degenerate),
            surrogate_gradient=surrogate_gradient,
            half_input_scale=float(half_input_scale),
        )
        _REGISTRY[name] = s
        module.spec = s
        return module

    return decorate


def spec(name: str) -> LossSpec:
    """The :class:`LossSpec` of a registered loss."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available(family: str | None = None, *, kind: str | None = None) -> list[str]:
    """Sorted names of the registered losses, optionally of one family and/or kind."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family) and (kind is None or s.kind == kind)
    )


def create(name: str, **hparams: Any) -> torch.nn.Module:
    """Build the ``nn.Module`` of a registered loss with keyword hyperparameters."""
    s = spec(name)
    unknown = sorted(set(hparams) - set(s.defaults))
    if unknown:
        raise ValueError(
            f"{name}: unknown hyperparameter(s) {unknown}; accepted: {sorted(s.defaults)}"
        )
    missing = sorted(k for k, v in s.defaults.items() if v is ... and k not in hparams)
    if missing:
        raise ValueError(f"{name}: missing required hyperparameter(s) {missing}")
    return s.module(**hparams)
